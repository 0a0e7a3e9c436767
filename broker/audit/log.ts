/**
 * Stage 8, audit: appends hash-chained records to a file.
 *
 * Appends are group-committed: records appended in the same event-loop
 * turn, or while a write is in flight, are written together, in one write.
 * `append` resolves only once its record is durable, so no call is
 * acknowledged before its evidence exists.
 * What durable means is the operator's choice (`audit.durability`):
 *
 *   disk     (default) on stable storage: one O_DSYNC write (write +
 *            fdatasync where the platform has no O_DSYNC) per group;
 *   process  handed to the kernel (a plain write(2) on this thread, like
 *            Redis's appendfsync everysec): survives the broker crashing or
 *            being killed, not a power cut or kernel crash; fdatasync follows
 *            within `syncIntervalMs` (1 s), bounding what such a crash loses.
 *
 * A failed write or sync poisons the log: every later append rejects, and
 * the pipeline fails closed.
 *
 * @example
 *   const audit = await openAuditLog('.bastion/audit.jsonl');
 *   await audit.append({ event: 'tools/call', outcome: 'ok', tool: 'demo__echo' });
 */
import { constants, writeSync } from 'node:fs';
import { mkdir, open, readFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { metrics } from '../metrics.ts';
import { GENESIS_HASH, seal, type AuditEvent, type AuditRecord } from './chain.ts';

export interface AuditLog {
  readonly file: string;
  append(event: AuditEvent): Promise<AuditRecord>;
  close(): Promise<void>;
}

interface Pending {
  event: AuditEvent;
  resolve: (record: AuditRecord) => void;
  reject: (error: Error) => void;
}

/** Writes all of `bytes` (a short write is retried; a write that makes no progress is an error). */
function writeAllSync(fd: number, bytes: Buffer): void {
  let offset = 0;
  while (offset < bytes.byteLength) {
    const written = writeSync(fd, bytes, offset);
    if (written <= 0) throw new Error(`short write: ${offset} of ${bytes.byteLength} bytes (disk full?)`);
    offset += written;
  }
}

/** Reads the chain head (last seq and hash) so a restart continues the chain. */
async function readHead(file: string): Promise<{ seq: number; hash: string }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { seq: 0, hash: GENESIS_HASH };
    throw error;
  }
  if (text.length === 0) return { seq: 0, hash: GENESIS_HASH };
  if (!text.endsWith('\n')) {
    // Do not move the file aside: its signed checkpoints would then report every record as removed.
    throw new Error(
      `audit file ${file} ends with a partial record (a write cut short, e.g. by a crash); run \`bastion audit recover ${file}\` to keep the torn bytes as evidence, cut them off and continue the chain with a signed recovery record`,
    );
  }
  const lines = text.trimEnd().split('\n');
  const last = JSON.parse(lines[lines.length - 1] ?? '') as Partial<AuditRecord>;
  if (typeof last.seq !== 'number' || typeof last.hash !== 'string') {
    throw new Error(`audit file ${file}: last record has no seq/hash; run \`bastion audit verify ${file}\``);
  }
  return { seq: last.seq, hash: last.hash };
}

export type AuditDurability = 'disk' | 'process';

export interface AuditLogOptions {
  now?: () => Date;
  /** Written into every record (config replica_id). */
  replica?: string | undefined;
  /** Default 'disk'; see the module comment. */
  durability?: AuditDurability;
  /** With durability 'process': the longest a written record waits for fdatasync. Default 1,000 ms. */
  syncIntervalMs?: number;
}

export async function openAuditLog(file: string, options: AuditLogOptions = {}): Promise<AuditLog> {
  const { now = () => new Date(), replica, durability = 'disk', syncIntervalMs = 1000 } = options;
  await mkdir(path.dirname(file), { recursive: true });
  let { seq, hash } = await readHead(file);
  // O_DSYNC: each write returns only once its data (and the size change) is on stable storage, the
  // guarantee write + fdatasync gives, in one syscall and one thread-pool round trip instead of two.
  const dsync = durability === 'disk' && constants.O_DSYNC !== undefined;
  const flags = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | (dsync ? constants.O_DSYNC : 0);
  const handle: FileHandle = await open(file, flags, 0o600);
  let queue: Pending[] = [];
  let writing = false;
  let failure: Error | undefined;
  // durability 'process': the pending background fdatasync, if one is scheduled.
  let syncTimer: NodeJS.Timeout | undefined;
  let syncing: Promise<void> = Promise.resolve();

  function syncSoon(): void {
    if (syncTimer || failure) return;
    syncTimer = setTimeout(() => {
      syncTimer = undefined;
      syncing = handle.datasync().catch((error: Error) => {
        failure = new Error(`audit log unavailable: fdatasync failed: ${error.message}`);
      });
    }, syncIntervalMs);
    syncTimer.unref();
  }

  async function flush(): Promise<void> {
    writing = true;
    while (queue.length > 0) {
      const batch = queue;
      queue = [];
      if (failure) {
        for (const p of batch) p.reject(failure);
        continue;
      }
      const sealed = batch.map((p) => {
        const next = seal(replica === undefined ? p.event : { ...p.event, replica }, seq + 1, hash, now());
        seq = next.record.seq;
        hash = next.record.hash;
        return next;
      });
      const records = sealed.map((s) => s.record);
      try {
        const started = performance.now();
        const bytes = Buffer.from(sealed.map((s) => `${s.line}\n`).join(''));
        if (durability === 'process') {
          // Copying a few KiB into the page cache is cheaper done here than handed to libuv's thread pool.
          writeAllSync(handle.fd, bytes);
          syncSoon();
        } else {
          const { bytesWritten } = await handle.write(bytes);
          if (bytesWritten !== bytes.byteLength) throw new Error(`short write: ${bytesWritten} of ${bytes.byteLength} bytes (disk full?)`);
          if (!dsync) await handle.datasync();
        }
        metrics.auditCommitted(records.length, (performance.now() - started) / 1000);
        batch.forEach((p, i) => p.resolve(records[i]!));
      } catch (error) {
        failure = new Error(`audit log unavailable: ${(error as Error).message}`);
        for (const p of batch) p.reject(failure);
      }
    }
    writing = false;
  }

  return {
    file,
    append(event) {
      if (failure) return Promise.reject(failure);
      return new Promise<AuditRecord>((resolve, reject) => {
        queue.push({ event, resolve, reject });
        if (writing) return;
        // Group commit per event-loop turn: the write starts after this turn's I/O callbacks have
        // run, so the calls they finished share it (and are answered together).
        writing = true;
        setImmediate(() => void flush());
      });
    },
    async close() {
      while (writing || queue.length > 0) await new Promise((r) => setTimeout(r, 5));
      clearTimeout(syncTimer);
      await syncing;
      if (durability === 'process' && !failure) await handle.datasync().catch(() => undefined);
      await handle.close();
    },
  };
}
