/**
 * The embedded state store (the default): in memory, made durable by a
 * journal on local disk. Every mutation is appended and fdatasync'ed before
 * the operation resolves (mutations made in one event-loop turn, or while a
 * sync is in flight, share one sync), so a
 * killed broker loses nothing it acknowledged. On open the journal is
 * replayed and rewritten without expired entries, so it stays small.
 *
 * Single-process: one broker owns one state folder. Replicas use Redis.
 *
 * @example
 *   const state = await openEmbeddedState('.bastion/state.jsonl');
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdir, open, readFile, rename, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { StateUnavailable, type StateStore } from './store.ts';

interface Entry {
  value: string;
  /** Epoch ms; absent: never expires. */
  expiresAt?: number;
}

type JournalLine = { op: 'set'; ns: string; key: string; value: string; exp?: number } | { op: 'del'; ns: string; key: string };

const COMPACT_AFTER_LINES = 50_000;

export async function openEmbeddedState(file: string, now: () => number = Date.now): Promise<StateStore> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const data = new Map<string, Map<string, Entry>>();
  const space = (ns: string) => {
    let map = data.get(ns);
    if (!map) data.set(ns, (map = new Map()));
    return map;
  };

  const apply = (line: JournalLine) => {
    if (line.op === 'set') space(line.ns).set(line.key, { value: line.value, ...(line.exp !== undefined ? { expiresAt: line.exp } : {}) });
    else space(line.ns).delete(line.key);
  };

  // Replay; a torn last line (a crash mid-append) was never acknowledged, so it is dropped.
  try {
    const text = await readFile(file, 'utf8');
    for (const raw of text.split('\n')) {
      if (!raw) continue;
      try {
        apply(JSON.parse(raw) as JournalLine);
      } catch {
        break;
      }
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }

  const live = (entry: Entry | undefined): entry is Entry => entry !== undefined && (entry.expiresAt === undefined || entry.expiresAt > now());

  /** Rewrites the journal as a snapshot of live entries (atomic rename). */
  async function snapshot(): Promise<void> {
    const lines: string[] = [];
    for (const [ns, map] of data) {
      for (const [key, entry] of map) {
        if (live(entry)) lines.push(JSON.stringify({ op: 'set', ns, key, value: entry.value, ...(entry.expiresAt !== undefined ? { exp: entry.expiresAt } : {}) }));
        else map.delete(key);
      }
    }
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, lines.length ? `${lines.join('\n')}\n` : '', { mode: 0o600 });
    await rename(tmp, file);
    journalLines = lines.length;
  }

  let journalLines = 0;
  await snapshot();
  let handle: FileHandle = await open(file, 'a', 0o600);
  let failure: Error | undefined;
  let queue: { line: JournalLine; resolve: () => void; reject: (e: Error) => void }[] = [];
  let writing = false;

  async function flush(): Promise<void> {
    writing = true;
    while (queue.length) {
      const batch = queue;
      queue = [];
      try {
        if (failure) throw failure;
        await handle.write(batch.map((b) => `${JSON.stringify(b.line)}\n`).join(''));
        await handle.datasync();
        journalLines += batch.length;
        batch.forEach((b) => b.resolve());
      } catch (error) {
        failure ??= new StateUnavailable(`state journal unavailable: ${(error as Error).message}`);
        batch.forEach((b) => b.reject(failure!));
      }
    }
    if (journalLines > COMPACT_AFTER_LINES && !failure) {
      await handle.close();
      await snapshot();
      handle = await open(file, 'a', 0o600);
    }
    writing = false;
    // Writes made while the journal was compacted queued behind it: flush them now, or they would wait forever.
    if (queue.length) void flush();
  }

  /** Applies in memory at once (so concurrent callers see it), then waits for durability. */
  function persist(line: JournalLine): Promise<void> {
    if (failure) return Promise.reject(failure);
    apply(line);
    return new Promise((resolve, reject) => {
      queue.push({ line, resolve, reject });
      if (writing) return;
      writing = true;
      // Mutations made in the same event-loop turn share one write and one sync (group commit):
      // a flow's new segment and the core that lists it cost one fdatasync, not two.
      setImmediate(() => void flush());
    });
  }

  const read = (ns: string, key: string) => {
    const entry = data.get(ns)?.get(key);
    return live(entry) ? entry : undefined;
  };
  const setLine = (ns: string, key: string, value: string, ttlMs?: number): JournalLine => ({
    op: 'set',
    ns,
    key,
    value,
    ...(ttlMs !== undefined ? { exp: now() + ttlMs } : {}),
  });

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
    async claim(ns, key, ttlMs) {
      if (read(ns, key)) return false;
      await persist(setLine(ns, key, '1', ttlMs));
      return true;
    },
    async get(ns, key) {
      if (failure) throw failure;
      return read(ns, key)?.value;
    },
    async set(ns, key, value, ttlMs) {
      await persist(setLine(ns, key, value, ttlMs));
    },
    async delete(ns, key) {
      const existed = read(ns, key) !== undefined;
      if (existed) await persist({ op: 'del', ns, key });
      return existed;
    },
    async compareAndSet(ns, key, expected, next, ttlMs) {
      if (read(ns, key)?.value !== expected) return false;
      await persist(setLine(ns, key, next, ttlMs));
      return true;
    },
    async entries(ns) {
      if (failure) throw failure;
      const map = data.get(ns);
      if (!map) return [];
      return [...map].filter(([, entry]) => live(entry)).map(([key, entry]) => [key, entry.value]);
    },
    async ready() {
      return failure === undefined;
    },
    async close() {
      while (writing || queue.length) await new Promise((r) => setTimeout(r, 5));
      await handle.close();
    },
  };
}
