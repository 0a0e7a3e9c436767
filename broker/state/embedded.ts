/**
 * The embedded state store (the default): a SQLite database on local disk
 * (node:sqlite, WAL mode, synchronous=FULL), no server to run. Entries live in
 * the database, not in the broker's memory.
 *
 * Changes go to a writer thread (embedded-writer.ts) that commits them in
 * groups and acknowledges each only once its commit is on stable storage, so
 * a killed broker (kill -9, or a power cut) loses nothing it acknowledged.
 * Reads use a read-only connection on the broker's thread and see committed
 * data only. Claims and compare-and-sets are decided by the writer, one at a
 * time, so they are atomic. Rate buckets, concurrency slots and pub/sub stay
 * in memory: they need no durability, and a restart resets them safely.
 *
 * An old state journal (`state.jsonl` beside the database) is imported on
 * first open and renamed aside (journal-import.ts).
 *
 * Single-process: one broker owns one state folder (lock.ts). Replicas use Redis.
 *
 * @example
 *   const state = await openEmbeddedState('.bastion/state.db');
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { checkTtl } from './encoding.ts';
import { EntryTable, openEntryDatabase, type WriteReply, type WriteRequest } from './entry-table.ts';
import type { WriterData, WriterMessage } from './embedded-writer.ts';
import { StateUnavailable, type QuotaOutcome, type StateStore } from './store.ts';

/** The database file of a state folder. */
export const STATE_DATABASE = 'state.db';

/** A change, without the id and clock the store adds. */
type Change = WriteRequest extends infer R ? (R extends WriteRequest ? Omit<R, 'id' | 'now'> : never) : never;

/** Starts the writer thread and waits until it has opened the database (and imported an old journal). */
async function startWriter(file: string, now: number): Promise<Worker> {
  const data: WriterData = { file, journal: path.join(path.dirname(file), 'state.jsonl'), now };
  const writer = new Worker(new URL('./embedded-writer.ts', import.meta.url), { workerData: data });
  let settle: { message: (m: { ready: boolean; message?: string }) => void; error: (e: Error) => void; exit: (code: number) => void } | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      settle = {
        message: (m) => (m.ready ? resolve() : reject(new Error(m.message))),
        error: reject,
        exit: (code) => reject(new Error(`the state writer exited with code ${code}`)),
      };
      writer.once('message', settle.message).once('error', settle.error).once('exit', settle.exit);
    });
  } catch (error) {
    await writer.terminate();
    throw new StateUnavailable(`cannot open state database ${file}: ${(error as Error).message}`);
  } finally {
    if (settle) writer.off('message', settle.message).off('error', settle.error).off('exit', settle.exit);
  }
  return writer;
}

export async function openEmbeddedState(file: string, now: () => number = Date.now): Promise<StateStore> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  // Created here so the database (and its -wal and -shm files, which copy its mode) is private.
  await (await open(file, 'a', 0o600)).close();
  const writer = await startWriter(file, now());
  let reader: EntryTable;
  let readerDb: ReturnType<typeof openEntryDatabase>;
  try {
    readerDb = openEntryDatabase(file, 'reader');
    reader = new EntryTable(readerDb);
  } catch (error) {
    await writer.terminate();
    throw new StateUnavailable(`cannot open state database ${file}: ${(error as Error).message}`);
  }

  let failure: StateUnavailable | undefined;
  let closed = false;
  /** The last write failed (e.g. a full disk): not ready until one succeeds. */
  let writesFailing = false;
  let nextId = 0;
  const pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  // The writer keeps the process alive only while a change waits for it.
  writer.unref();

  const fail = (error: StateUnavailable) => {
    failure ??= error;
    for (const waiter of pending.values()) waiter.reject(failure);
    pending.clear();
  };
  writer.on('message', (replies: WriteReply[]) => {
    for (const reply of replies) {
      const waiter = pending.get(reply.id);
      if (!waiter) continue;
      pending.delete(reply.id);
      writesFailing = !reply.ok;
      if (reply.ok) waiter.resolve(reply.value);
      else waiter.reject(new StateUnavailable(reply.message));
    }
    if (pending.size === 0) writer.unref();
  });
  const exited = new Promise<void>((resolve) => writer.once('exit', () => resolve()));
  writer.on('error', (error) => fail(new StateUnavailable(`state writer failed: ${error.message}`)));
  writer.on('exit', (code) => fail(new StateUnavailable(closed ? 'the state store is closed' : `the state writer exited with code ${code}`)));

  function write<T>(change: Change): Promise<T> {
    if (failure) return Promise.reject(failure);
    if (closed) return Promise.reject(new StateUnavailable('the state store is closed'));
    const id = ++nextId;
    return new Promise<T>((resolve, reject) => {
      pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      writer.ref();
      writer.postMessage({ ...change, id, now: now() } as WriterMessage);
    });
  }

  function read<T>(query: (at: number) => T): T {
    if (failure) throw failure;
    if (closed) throw new StateUnavailable('the state store is closed');
    try {
      return query(now());
    } catch (error) {
      throw new StateUnavailable(`state database unavailable: ${(error as Error).message}`);
    }
  }

  const expiry = (ttlMs: number | undefined) => {
    const ttl = checkTtl(ttlMs);
    return ttl === undefined ? undefined : now() + ttl;
  };

  // Rate counters and slots live in memory only: a restart resets them, which is safe.
  const buckets = new Map<string, { tokens: number; at: number }>();
  const slots = new Map<string, Map<string, number>>();
  const channels = new EventEmitter();
  channels.setMaxListeners(0);

  return {
    async takeTokens(key, bucket, cost = 1) {
      if (failure) throw failure;
      const at = now();
      const current = buckets.get(key) ?? { tokens: bucket.capacity, at };
      const tokens = Math.min(bucket.capacity, current.tokens + ((at - current.at) / 1000) * bucket.refillPerSecond);
      if (tokens >= cost) {
        buckets.set(key, { tokens: tokens - cost, at });
        return { allowed: true, retryAfterMs: 0 };
      }
      buckets.set(key, { tokens, at });
      const retryAfterMs = bucket.refillPerSecond > 0 ? Math.ceil(((cost - tokens) / bucket.refillPerSecond) * 1000) : Number.POSITIVE_INFINITY;
      return { allowed: false, retryAfterMs };
    },
    async acquireSlot(key, limit, leaseMs) {
      if (failure) throw failure;
      const held = slots.get(key) ?? new Map<string, number>();
      for (const [slot, expires] of held) if (expires <= now()) held.delete(slot);
      if (held.size >= limit) return undefined;
      const slot = randomUUID();
      held.set(slot, now() + leaseMs);
      slots.set(key, held);
      return slot;
    },
    async releaseSlot(key, slot) {
      slots.get(key)?.delete(slot);
    },
    async publish(channel, message) {
      if (failure) throw failure;
      channels.emit(channel, message);
    },
    subscribe(channel, handler) {
      channels.on(channel, handler);
      return () => channels.off(channel, handler);
    },
    claim(ns, key, ttlMs) {
      return write<boolean>({ op: 'claim', ns, key, expiresAt: expiry(ttlMs)! });
    },
    async get(ns, key) {
      return read((at) => reader.get(ns, key, at));
    },
    async set(ns, key, value, ttlMs) {
      await write({ op: 'set', ns, key, value, expiresAt: expiry(ttlMs) });
    },
    delete(ns, key) {
      return write<boolean>({ op: 'delete', ns, key });
    },
    compareAndSet(ns, key, expected, next, ttlMs) {
      return write<boolean>({ op: 'compareAndSet', ns, key, expectAbsent: expected === undefined, expected: expected ?? '', next, expiresAt: expiry(ttlMs) });
    },
    async entries(ns) {
      return read((at) => reader.entries(ns, at));
    },
    setWithinQuota(ns, key, value, quota) {
      return write<QuotaOutcome>({ op: 'setWithinQuota', ns, key, value, quota });
    },
    deleteWithinQuota(ns, key) {
      return write<boolean>({ op: 'deleteWithinQuota', ns, key });
    },
    async ready() {
      if (failure || closed || writesFailing) return false;
      try {
        return read(() => readerDb.prepare('SELECT 1 AS ok').get()) !== undefined;
      } catch {
        return false;
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      // A writer that already died has nothing left to commit; otherwise it commits what it holds, then exits.
      writer.ref();
      writer.postMessage({ op: 'close' } satisfies WriterMessage);
      await exited;
      readerDb.close();
    },
  };
}
