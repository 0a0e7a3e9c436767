/**
 * Moves a state journal (`state.jsonl`, the embedded store before it was a
 * SQLite database) into the database, so a deployment keeps its pins,
 * approvals, revocations and plugin data across the upgrade.
 *
 * The journal is replayed as its store did (a torn last line, never
 * acknowledged, is dropped; expired entries are skipped), its live entries
 * are written in one transaction together with the journal's hash, and only
 * then is the file renamed aside (`state.jsonl.imported`). A crash before the
 * rename leaves a journal whose hash the database already holds: the next
 * open only renames it.
 *
 * @example
 *   importJournal(db, table, '.bastion/state.jsonl', Date.now());
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync } from 'node:fs';
import type { DatabaseSync } from 'node:sqlite';
import type { EntryTable } from './entry-table.ts';

type JournalLine = { op: 'set'; ns: string; key: string; value: string; exp?: number } | { op: 'del'; ns: string; key: string };

/** The live entries a journal holds, as its store would have replayed them. */
export function replayJournal(text: string, now: number): Map<string, Map<string, { value: string; expiresAt?: number }>> {
  const data = new Map<string, Map<string, { value: string; expiresAt?: number }>>();
  for (const raw of text.split('\n')) {
    if (!raw) continue;
    let line: JournalLine;
    try {
      line = JSON.parse(raw) as JournalLine;
    } catch {
      break;
    }
    let space = data.get(line.ns);
    if (!space) data.set(line.ns, (space = new Map()));
    if (line.op === 'set') space.set(line.key, { value: line.value, ...(line.exp !== undefined ? { expiresAt: line.exp } : {}) });
    else space.delete(line.key);
  }
  for (const space of data.values()) {
    for (const [key, entry] of space) if (entry.expiresAt !== undefined && entry.expiresAt <= now) space.delete(key);
  }
  return data;
}

const IMPORTED = 'imported_journal_sha256';

/** Imports `journal` if it exists; returns the number of entries imported (0 when there was nothing new). */
export function importJournal(db: DatabaseSync, table: EntryTable, journal: string, now: number): number {
  if (!existsSync(journal)) return 0;
  const bytes = readFileSync(journal);
  const hash = createHash('sha256').update(bytes).digest('hex');
  let imported = 0;
  if (table.meta(IMPORTED) !== hash) {
    db.exec('BEGIN IMMEDIATE');
    try {
      let id = 0;
      for (const [ns, space] of replayJournal(bytes.toString('utf8'), now)) {
        for (const [key, entry] of space) {
          table.apply({ id: ++id, op: 'set', ns, key, value: entry.value, expiresAt: entry.expiresAt, now });
          imported++;
        }
      }
      // Imported entries may land in namespaces under a quota: their usage is counted again on next use.
      table.forgetUsage();
      table.setMeta(IMPORTED, hash);
      db.exec('COMMIT');
    } catch (error) {
      db.exec('ROLLBACK');
      throw error;
    }
  }
  let aside = `${journal}.imported`;
  if (existsSync(aside)) aside = `${journal}.imported-${now}`;
  renameSync(journal, aside);
  return imported;
}
