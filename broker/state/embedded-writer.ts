/**
 * The embedded store's writer: a worker thread that owns the database's one
 * write connection, so no fsync ever blocks the broker's event loop.
 *
 * Group commit: every change that arrives while a transaction is open joins
 * it, each in a savepoint of its own (a failed change leaves nothing
 * half-done); the transaction commits on the next turn of the worker's loop,
 * and only then are its changes acknowledged. With synchronous=FULL, what was
 * acknowledged is on stable storage.
 *
 * Started by embedded.ts with workerData {file, journal, now}; it answers
 * {ready: true} once the database is open and any old journal imported.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { EntryTable, openEntryDatabase, SWEEP_BATCH, type WriteReply, type WriteRequest } from './entry-table.ts';
import { importJournal } from './journal-import.ts';

export interface WriterData {
  file: string;
  /** An old state journal to import on open (state.jsonl beside the database). */
  journal: string;
  now: number;
}

export type WriterMessage = WriteRequest | { op: 'close' };

/** Expired rows are swept this often (by the requests' clock), in batches of SWEEP_BATCH per commit until none is left. */
const SWEEP_EVERY_MS = 60_000;

const port = parentPort!;
const { file, journal, now: openedAt } = workerData as WriterData;
try {
  const db = openEntryDatabase(file, 'writer');
  const table = new EntryTable(db);
  const imported = importJournal(db, table, journal, openedAt);
  while (table.sweep(openedAt) > 0);
  serve(db, table);
  port.postMessage({ ready: true, imported });
} catch (error) {
  port.postMessage({ ready: false, message: (error as Error).message });
  port.close();
}

function serve(db: ReturnType<typeof openEntryDatabase>, table: EntryTable): void {
  let batch: WriteReply[] | undefined;
  let latest = openedAt;
  let sweptAt = openedAt;

  const commit = () => {
    const replies = batch ?? [];
    batch = undefined;
    try {
      // A full batch means more may be waiting: the next commit sweeps again, until the backlog is gone.
      if (latest - sweptAt >= SWEEP_EVERY_MS && table.sweep(latest) < SWEEP_BATCH) sweptAt = latest;
      db.exec('COMMIT');
      port.postMessage(replies);
    } catch (error) {
      if (db.isTransaction) db.exec('ROLLBACK');
      const message = `state database commit failed: ${(error as Error).message}`;
      port.postMessage(replies.map((reply): WriteReply => ({ id: reply.id, ok: false, message })));
    }
  };

  port.on('message', (message: WriterMessage) => {
    if (message.op === 'close') {
      if (batch) commit();
      db.close();
      port.close();
      return;
    }
    latest = Math.max(latest, message.now);
    try {
      if (!batch) {
        db.exec('BEGIN IMMEDIATE');
        batch = [];
        setImmediate(commit);
      }
    } catch (error) {
      port.postMessage([{ id: message.id, ok: false, message: `state database unavailable: ${(error as Error).message}` }]);
      return;
    }
    db.exec('SAVEPOINT change');
    try {
      batch.push({ id: message.id, ok: true, value: table.apply(message) });
      db.exec('RELEASE change');
    } catch (error) {
      db.exec('ROLLBACK TO change');
      db.exec('RELEASE change');
      batch.push({ id: message.id, ok: false, message: `state database write failed: ${(error as Error).message}` });
    }
  });
}
