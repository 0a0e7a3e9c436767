/**
 * The embedded store's data: one SQLite database (node:sqlite) in WAL mode.
 * Entries live on disk, not in the broker's memory; SQLite keeps a small page
 * cache. The writer (embedded-writer.ts, a worker thread) runs every change;
 * the broker's thread reads through its own read-only connection, so a read
 * never waits behind a write's fsync and only ever sees committed data.
 *
 * Strings are stored encoded (encoding.ts), so keys that are not well-formed
 * UTF-16 stay distinct. Expiry is a column: reads skip expired rows, and
 * `sweep` deletes them in bounded batches.
 *
 * @example
 *   const table = new EntryTable(openEntryDatabase(file, 'writer'));
 *   table.set({ ns: 'pins', key: 'k', value: 'v', now: Date.now() });
 */
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { decode, encode, entryBytes } from './encoding.ts';
import type { Quota, QuotaOutcome } from './store.ts';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS entries (
  ns TEXT NOT NULL,
  key TEXT NOT NULL,
  expires_at INTEGER,
  value TEXT NOT NULL,
  PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS quota_usage (ns TEXT PRIMARY KEY, keys INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
`;

/**
 * Opens the database. The writer creates the schema and asks for WAL with
 * synchronous=FULL: a commit returns only once its WAL frames are on stable
 * storage, as the journal's fdatasync did, so an acknowledged write survives
 * kill -9 and a power cut. The reader is read-only.
 */
export function openEntryDatabase(file: string, role: 'writer' | 'reader'): DatabaseSync {
  const db = new DatabaseSync(file, { readOnly: role === 'reader', timeout: 5000 });
  try {
    if (role === 'writer') {
      const mode = (db.prepare('PRAGMA journal_mode = WAL').get() as { journal_mode: string }).journal_mode;
      if (mode !== 'wal') throw new Error(`state database ${file} cannot use WAL (journal_mode is ${mode})`);
      db.exec('PRAGMA synchronous = FULL');
      db.exec(SCHEMA);
    }
  } catch (error) {
    db.close();
    throw error;
  }
  return db;
}

interface Row {
  value: string;
  expires_at: number | null;
}

const live = (row: Row | undefined, now: number): row is Row => row !== undefined && (row.expires_at === null || row.expires_at > now);

interface Target {
  ns: string;
  key: string;
  now: number;
}

/** Every change the writer runs; `id` pairs the reply with its request. */
export type WriteRequest = { id: number } & (
  | ({ op: 'claim'; expiresAt: number } & Target)
  | ({ op: 'set'; value: string; expiresAt?: number | undefined } & Target)
  | ({ op: 'delete' } & Target)
  | ({ op: 'compareAndSet'; expectAbsent: boolean; expected: string; next: string; expiresAt?: number | undefined } & Target)
  | ({ op: 'setWithinQuota'; value: string; quota: Quota } & Target)
  | ({ op: 'deleteWithinQuota' } & Target)
);

export type WriteReply = { id: number; ok: true; value: unknown } | { id: number; ok: false; message: string };

/** Rows deleted per sweep, so one sweep never holds the writer long. */
export const SWEEP_BATCH = 1000;

export class EntryTable {
  private readonly db: DatabaseSync;
  private readonly statements = new Map<string, StatementSync>();

  constructor(db: DatabaseSync) {
    this.db = db;
  }

  /** Statements are prepared once, on first use (the reader never prepares a write). */
  private statement(sql: string): StatementSync {
    let prepared = this.statements.get(sql);
    if (!prepared) this.statements.set(sql, (prepared = this.db.prepare(sql)));
    return prepared;
  }

  private row(ns: string, key: string): Row | undefined {
    return this.statement('SELECT value, expires_at FROM entries WHERE ns = ? AND key = ?').get(encode(ns), encode(key)) as Row | undefined;
  }

  private put(ns: string, key: string, value: string, expiresAt: number | undefined): void {
    this.statement('INSERT INTO entries (ns, key, expires_at, value) VALUES (?, ?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET expires_at = excluded.expires_at, value = excluded.value').run(
      encode(ns),
      encode(key),
      expiresAt ?? null,
      encode(value),
    );
  }

  private remove(ns: string, key: string): void {
    this.statement('DELETE FROM entries WHERE ns = ? AND key = ?').run(encode(ns), encode(key));
  }

  get(ns: string, key: string, now: number): string | undefined {
    const row = this.row(ns, key);
    return live(row, now) ? decode(row.value) : undefined;
  }

  entries(ns: string, now: number): [string, string][] {
    const rows = this.statement('SELECT key, value FROM entries WHERE ns = ? AND (expires_at IS NULL OR expires_at > ?)').all(encode(ns), now) as { key: string; value: string }[];
    return rows.map((row) => [decode(row.key), decode(row.value)]);
  }

  /** Runs one change; the caller wraps it in a savepoint, so a failure leaves nothing half-done. */
  apply(request: WriteRequest): unknown {
    const { ns, key, now } = request;
    switch (request.op) {
      case 'claim':
        if (live(this.row(ns, key), now)) return false;
        this.put(ns, key, '1', request.expiresAt);
        return true;
      case 'set':
        this.put(ns, key, request.value, request.expiresAt);
        return null;
      case 'delete': {
        const existed = live(this.row(ns, key), now);
        this.remove(ns, key);
        return existed;
      }
      case 'compareAndSet': {
        const row = this.row(ns, key);
        const current = live(row, now) ? decode(row.value) : undefined;
        if (request.expectAbsent ? current !== undefined : current !== request.expected) return false;
        this.put(ns, key, request.next, request.expiresAt);
        return true;
      }
      case 'setWithinQuota':
        return this.setWithinQuota(ns, key, request.value, request.quota, now);
      case 'deleteWithinQuota':
        return this.deleteWithinQuota(ns, key, now);
    }
  }

  /** The namespace's usage, counted from its live entries the first time it is asked for. */
  private usage(ns: string, now: number): { keys: number; bytes: number } {
    const stored = this.statement('SELECT keys, bytes FROM quota_usage WHERE ns = ?').get(encode(ns)) as { keys: number; bytes: number } | undefined;
    if (stored) return stored;
    const counted = { keys: 0, bytes: 0 };
    for (const [key, value] of this.entries(ns, now)) {
      counted.keys += 1;
      counted.bytes += entryBytes(key, value);
    }
    this.saveUsage(ns, counted);
    return counted;
  }

  private saveUsage(ns: string, usage: { keys: number; bytes: number }): void {
    this.statement('INSERT INTO quota_usage (ns, keys, bytes) VALUES (?, ?, ?) ON CONFLICT (ns) DO UPDATE SET keys = excluded.keys, bytes = excluded.bytes').run(
      encode(ns),
      usage.keys,
      usage.bytes,
    );
  }

  private setWithinQuota(ns: string, key: string, value: string, quota: Quota, now: number): QuotaOutcome {
    const usage = this.usage(ns, now);
    const row = this.row(ns, key);
    const old = live(row, now) ? entryBytes(key, decode(row.value)) : undefined;
    const keys = usage.keys + (old === undefined ? 1 : 0);
    const bytes = usage.bytes - (old ?? 0) + entryBytes(key, value);
    if (keys > quota.maxKeys) return { stored: false, exceeded: 'keys', ...usage };
    if (bytes > quota.maxBytes) return { stored: false, exceeded: 'bytes', ...usage };
    this.put(ns, key, value, undefined);
    this.saveUsage(ns, { keys, bytes });
    return { stored: true, keys, bytes };
  }

  private deleteWithinQuota(ns: string, key: string, now: number): boolean {
    const usage = this.usage(ns, now);
    const row = this.row(ns, key);
    this.remove(ns, key);
    if (!live(row, now)) return false;
    this.saveUsage(ns, { keys: usage.keys - 1, bytes: usage.bytes - entryBytes(key, decode(row.value)) });
    return true;
  }

  /** Drops every namespace's kept usage, so each is counted from its entries on next use. */
  forgetUsage(): void {
    this.statement('DELETE FROM quota_usage').run();
  }

  /** Deletes up to SWEEP_BATCH expired rows; the number deleted. */
  sweep(now: number): number {
    return Number(
      this.statement('DELETE FROM entries WHERE (ns, key) IN (SELECT ns, key FROM entries WHERE expires_at <= ? LIMIT ?)').run(now, SWEEP_BATCH).changes,
    );
  }

  meta(name: string): string | undefined {
    return (this.statement('SELECT value FROM meta WHERE name = ?').get(name) as { value: string } | undefined)?.value;
  }

  setMeta(name: string, value: string): void {
    this.statement('INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value').run(name, value);
  }
}
