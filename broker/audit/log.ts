/**
 * Stage 8, audit: appends hash-chained records to a file.
 *
 * Appends are group-committed: records that arrive while a write is in
 * flight are written together and made durable at once (one O_DSYNC write;
 * write + fdatasync where the platform has no O_DSYNC). `append`
 * resolves only after its record is on disk, so no call is acknowledged
 * before its evidence exists. A failed write poisons the log: every later
 * append rejects, and the pipeline fails closed.
 *
 * @example
 *   const audit = await openAuditLog('.bastion/audit.jsonl');
 *   await audit.append({ event: 'tools/call', outcome: 'ok', tool: 'demo__echo' });
 */
import { constants } from 'node:fs';
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
    throw new Error(`audit file ${file} ends with a partial record; run \`bastion audit verify ${file}\` and move it aside`);
  }
  const lines = text.trimEnd().split('\n');
  const last = JSON.parse(lines[lines.length - 1] ?? '') as Partial<AuditRecord>;
  if (typeof last.seq !== 'number' || typeof last.hash !== 'string') {
    throw new Error(`audit file ${file}: last record has no seq/hash; run \`bastion audit verify ${file}\``);
  }
  return { seq: last.seq, hash: last.hash };
}

export async function openAuditLog(file: string, now: () => Date = () => new Date(), replica?: string): Promise<AuditLog> {
  await mkdir(path.dirname(file), { recursive: true });
  let { seq, hash } = await readHead(file);
  // O_DSYNC: each write returns only once its data (and the size change) is on stable storage, the
  // guarantee write + fdatasync gives, in one syscall and one thread-pool round trip instead of two.
  const dsync = constants.O_DSYNC !== undefined;
  const handle: FileHandle = await open(file, dsync ? constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC : 'a', 0o600);
  let queue: Pending[] = [];
  let writing = false;
  let failure: Error | undefined;

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
        await handle.write(sealed.map((s) => `${s.line}\n`).join(''));
        if (!dsync) await handle.datasync();
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
        if (!writing) void flush();
      });
    },
    async close() {
      while (writing || queue.length > 0) await new Promise((r) => setTimeout(r, 5));
      await handle.close();
    },
  };
}
