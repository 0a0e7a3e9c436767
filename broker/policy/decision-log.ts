/**
 * Decision logs, one JSON line per policy decision, in the spirit of OPA's:
 * `decision_id`, `path`, the `input` (with configured fields erased), the
 * `result`, the policy `revision` (and `bundle_revision`), a `timestamp`,
 * and `erased`, the pointers that were removed.
 *
 * Logging never holds up a decision: `record()` only queues a reference
 * and returns the id; masking, serializing and writing happen later, in
 * batches. When the queue is full (the destination is slower than the
 * decisions), records are dropped and counted, never waited for. The audit
 * log, not this one, is the evidence that must not be lost.
 *
 * @example
 *   const decisions = await DecisionLog.open({ destination: { file: '.bastion/decisions.jsonl' }, mask: ['/input/arguments/password'] });
 *   const decisionId = decisions.record({ input, result: decision, revision: engine.revision });
 *   audit.append({ ..., decision_id: decisionId });
 */
import { randomUUID } from 'node:crypto';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log.ts';
import type { Decision, PolicyInput } from './schema.ts';

export const DECISION_PATH = 'bastion/decision';

/** Where records go. A sink resolves once its text is written. */
export type DecisionLogDestination =
  | { file: string }
  | { stream: 'stdout' | 'stderr' }
  | { sink: { write(text: string): Promise<void> } };

export interface DecisionLogOptions {
  destination: DecisionLogDestination;
  /**
   * JSON pointers to erase, rooted at the record: `/input/arguments/password`,
   * `/input/principal/cap`, `/result/reasons`. `~1` is "/", `~0` is "~".
   */
  mask?: string[] | undefined;
  /** Erase every argument (`/input/arguments`). */
  maskArguments?: boolean | undefined;
  /** Records waiting to be written before new ones are dropped (default 10,000). */
  maxQueued?: number | undefined;
  log?: Logger | undefined;
  now?: () => number;
}

/** What the pipeline hands over for one decision. */
export interface DecisionEntry {
  input: PolicyInput;
  /** The decision, when there was one. */
  result?: Decision | undefined;
  /** Why there was no decision (a policy error is a denial). */
  error?: string | undefined;
  revision: string;
  bundleRevision?: string | undefined;
  /** Supply one to correlate with something else; otherwise a UUID is made. */
  decisionId?: string | undefined;
}

/** One line of the decision log. */
export interface DecisionRecord {
  decision_id: string;
  path: typeof DECISION_PATH;
  input?: unknown;
  result?: Decision;
  error?: string;
  revision: string;
  bundle_revision?: string;
  timestamp: string;
  erased?: string[];
}

interface Queued {
  id: string;
  at: number;
  entry: DecisionEntry;
}

const BATCH = 512;

function parsePointer(pointer: string): string[] {
  if (!/^\/(input|result)(\/|$)/.test(pointer)) {
    throw new Error(`decision log mask ${JSON.stringify(pointer)} must be a JSON pointer under /input or /result`);
  }
  return pointer
    .slice(1)
    .split('/')
    .map((segment) => segment.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/**
 * Removes the value at `segments` from a copy of `root` (copying only along
 * the path, so the caller's objects are never touched). Returns the new root
 * and whether anything was there.
 */
function erase(root: unknown, segments: string[]): { value: unknown; erased: boolean } {
  if (root === null || typeof root !== 'object' || Array.isArray(root)) return { value: root, erased: false };
  const [head, ...rest] = segments as [string, ...string[]];
  const record = root as Record<string, unknown>;
  if (!Object.hasOwn(record, head)) return { value: root, erased: false };
  const copy = { ...record };
  if (rest.length === 0) {
    delete copy[head];
    return { value: copy, erased: true };
  }
  const inner = erase(record[head], rest);
  if (!inner.erased) return { value: root, erased: false };
  copy[head] = inner.value;
  return { value: copy, erased: true };
}

export class DecisionLog {
  readonly #write: (text: string) => Promise<void>;
  readonly #close: () => Promise<void>;
  readonly #masks: { pointer: string; segments: string[] }[];
  readonly #maxQueued: number;
  readonly #log: Logger | undefined;
  readonly #now: () => number;
  #queue: Queued[] = [];
  #draining: Promise<void> | undefined;
  #closed = false;
  #written = 0;
  #dropped = 0;
  #failed = 0;
  #warned = false;

  private constructor(options: DecisionLogOptions, write: (text: string) => Promise<void>, close: () => Promise<void>) {
    this.#write = write;
    this.#close = close;
    const pointers = [...(options.maskArguments ? ['/input/arguments'] : []), ...(options.mask ?? [])];
    this.#masks = pointers.map((pointer) => ({ pointer, segments: parsePointer(pointer) }));
    this.#maxQueued = options.maxQueued ?? 10_000;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
  }

  /** Opens the destination (a file is created with mode 0600 and appended to). */
  static async open(options: DecisionLogOptions): Promise<DecisionLog> {
    const { destination } = options;
    // Validate masks before opening anything.
    for (const pointer of options.mask ?? []) parsePointer(pointer);
    if ('file' in destination) {
      await mkdir(path.dirname(destination.file), { recursive: true });
      const handle: FileHandle = await open(destination.file, 'a', 0o600);
      return new DecisionLog(options, async (text) => void (await handle.write(text)), () => handle.close());
    }
    if ('stream' in destination) {
      const stream = destination.stream === 'stdout' ? process.stdout : process.stderr;
      const write = (text: string) => new Promise<void>((resolve, reject) => stream.write(text, (error) => (error ? reject(error) : resolve())));
      return new DecisionLog(options, write, async () => undefined);
    }
    return new DecisionLog(options, (text) => destination.sink.write(text), async () => undefined);
  }

  /**
   * Queues one decision and returns its id. Synchronous, constant time, never
   * throws and never waits: a full queue drops the record and counts it.
   */
  record(entry: DecisionEntry): string {
    const id = entry.decisionId ?? randomUUID();
    if (this.#closed || this.#queue.length >= this.#maxQueued) {
      this.#dropped++;
      return id;
    }
    this.#queue.push({ id, at: this.#now(), entry });
    this.#draining ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.#drain());
    return id;
  }

  /** Counters since open: records written, dropped because the queue was full (or the log closed), and failed to serialize or write. */
  get stats(): { written: number; dropped: number; failed: number; queued: number } {
    return { written: this.#written, dropped: this.#dropped, failed: this.#failed, queued: this.#queue.length };
  }

  /** The record for one entry, masked (exported for `bastion policy eval` and tests through `format`). */
  format(id: string, at: number, entry: DecisionEntry): DecisionRecord {
    let document: Record<string, unknown> = { input: entry.input, ...(entry.result ? { result: entry.result } : {}) };
    const erased: string[] = [];
    for (const mask of this.#masks) {
      const outcome = erase(document, mask.segments);
      if (outcome.erased) {
        document = outcome.value as Record<string, unknown>;
        erased.push(mask.pointer);
      }
    }
    return {
      decision_id: id,
      path: DECISION_PATH,
      ...(document.input !== undefined ? { input: document.input } : {}),
      ...(document.result !== undefined ? { result: document.result as Decision } : {}),
      ...(entry.error !== undefined ? { error: entry.error } : {}),
      revision: entry.revision,
      ...(entry.bundleRevision !== undefined ? { bundle_revision: entry.bundleRevision } : {}),
      timestamp: new Date(at).toISOString(),
      ...(erased.length > 0 ? { erased } : {}),
    };
  }

  /** Resolves once everything queued so far has been written (or has failed). */
  async flush(): Promise<void> {
    while (this.#draining) await this.#draining;
  }

  /** Flushes, then closes the destination; later records are dropped. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.flush();
    await this.#close();
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, BATCH);
        const lines: string[] = [];
        for (const item of batch) {
          try {
            lines.push(`${JSON.stringify(this.format(item.id, item.at, item.entry))}\n`);
          } catch (error) {
            this.#failed++;
            this.#warn('a decision log record could not be serialized', error);
          }
        }
        if (lines.length === 0) continue;
        try {
          await this.#write(lines.join(''));
          this.#written += lines.length;
        } catch (error) {
          this.#failed += lines.length;
          this.#warn('the decision log destination failed; records lost', error);
        }
      }
    } finally {
      this.#draining = undefined;
    }
  }

  #warn(message: string, error: unknown): void {
    if (this.#warned) return;
    this.#warned = true; // once: a broken destination must not flood the operational log
    this.#log?.warn({ err: (error as Error).message }, message);
  }
}
