/**
 * Signed checkpoints of the audit chain. The hash chain proves that no
 * record inside the file was edited, but whoever can write the file can cut
 * its tail off, or rewrite the tail and re-chain it. A checkpoint is a JWS
 * (EdDSA, key held by the broker) over `{file, seq, head, time}`: "record
 * `seq` of `file` had hash `head` at `time`". Checkpoints are appended to a
 * sidecar, `<audit file>.checkpoints.jsonl`, every N records and at least
 * every 60 s while records arrive. Given the public key, the verifier proves
 * a truncation (a checkpoint names a record the file no longer has) or a
 * rewrite (record `seq`'s hash is not the signed head).
 *
 * What it cannot prove: records written after the last checkpoint, or a
 * sidecar that was itself cut short together with the audit file. Ship the
 * sidecar (or just its last line) off the machine to close that gap.
 *
 * @example
 *   const checkpoints = await AuditCheckpointer.open({ auditFile, key: privateJwk, kid });
 *   const audit = withCheckpoints(await openAuditLog(auditFile), checkpoints);
 *   // later, offline:
 *   const report = await verifyCheckpoints(auditFile, checkpointsFileFor(auditFile), jwks);
 */
import { mkdir, open, readFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { CompactSign, compactVerify, createLocalJWKSet, importJWK, type CryptoKey, type JSONWebKeySet, type JWK, type KeyObject } from 'jose';
import { recordHash, type AuditRecord } from './chain.ts';
import type { AuditLog } from './log.ts';

/** JOSE `typ` of a checkpoint, so no other token signed with the same key can pass for one. */
export const CHECKPOINT_TYPE = 'bastion-audit-checkpoint+jws';

export interface CheckpointClaims {
  /** The audit file's base name: the checkpoint survives moving the directory, not renaming the file. */
  file: string;
  seq: number;
  /** The `hash` of record `seq`. */
  head: string;
  time: string;
}

/** `<audit>.checkpoints.jsonl`. */
export function checkpointsFileFor(auditFile: string): string {
  return `${auditFile}.checkpoints.jsonl`;
}

export interface CheckpointerOptions {
  auditFile: string;
  /** Ed25519 private key: a JWK (with `d`) or a key object. */
  key: JWK | CryptoKey | KeyObject;
  /** Names the key in the JWS header, so a JWKS with several keys (rotation) can verify. */
  kid: string;
  /** Checkpoint after this many new records (default 1000). */
  every?: number;
  /** …and after this long with unsigned records (default 60 s). */
  intervalMs?: number;
  now?: () => Date;
}

/**
 * Writes checkpoints as the audit log grows. `observe` is cheap and
 * synchronous; signing and the sidecar append happen in the background,
 * one at a time. Failures are reported through `lastError` and retried at
 * the next trigger: a checkpoint is extra evidence, and its absence must
 * not stop the broker from serving (the audit log itself fails closed).
 */
export class AuditCheckpointer {
  readonly file: string;
  readonly #auditName: string;
  readonly #handle: FileHandle;
  readonly #key: CryptoKey | KeyObject | Uint8Array;
  readonly #kid: string;
  readonly #every: number;
  readonly #now: () => Date;
  readonly #timer: NodeJS.Timeout;
  #latest: { seq: number; head: string } | undefined;
  #signedSeq: number;
  /** The seq a checkpoint is being signed for (so arrivals meanwhile do not ask for another). */
  #claimedSeq: number;
  #writing: Promise<void> | undefined;
  #lastError: Error | undefined;

  private constructor(options: CheckpointerOptions, handle: FileHandle, key: CryptoKey | KeyObject | Uint8Array, signedSeq: number) {
    this.file = checkpointsFileFor(options.auditFile);
    this.#auditName = path.basename(options.auditFile);
    this.#handle = handle;
    this.#key = key;
    this.#kid = options.kid;
    this.#every = options.every ?? 1000;
    this.#now = options.now ?? (() => new Date());
    this.#signedSeq = signedSeq;
    this.#claimedSeq = signedSeq;
    this.#timer = setInterval(() => void this.checkpoint(), options.intervalMs ?? 60_000);
    this.#timer.unref();
  }

  static async open(options: CheckpointerOptions): Promise<AuditCheckpointer> {
    const key = isJwk(options.key) ? await importJWK(options.key, 'EdDSA') : options.key;
    const file = checkpointsFileFor(options.auditFile);
    await mkdir(path.dirname(file), { recursive: true });
    const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return '';
      throw error;
    });
    // Appending after a torn line would glue the next checkpoint to it, and that line would never verify.
    if (text.length > 0 && !text.endsWith('\n')) {
      throw new Error(`checkpoint file ${file} ends with a partial line (a write cut short); run \`bastion audit recover ${options.auditFile}\` to keep it as evidence and cut it off`);
    }
    const signedSeq = lastCheckpointSeq(text);
    const handle = await open(file, 'a', 0o600);
    return new AuditCheckpointer(options, handle, key, signedSeq);
  }

  /** Call after each durable append (or batch): remembers the head and checkpoints every N records. */
  observe(record: Pick<AuditRecord, 'seq' | 'hash'>): void {
    if (this.#latest && record.seq <= this.#latest.seq) return;
    this.#latest = { seq: record.seq, head: record.hash };
    if (record.seq - this.#claimedSeq >= this.#every) void this.checkpoint();
  }

  /** The last checkpoint failure, if the most recent attempt failed. */
  get lastError(): Error | undefined {
    return this.#lastError;
  }

  /** Signs the latest head now, if it is not signed yet. Resolves when the line is durable. */
  async checkpoint(): Promise<void> {
    while (this.#writing) await this.#writing;
    const latest = this.#latest;
    if (!latest || latest.seq <= this.#signedSeq) return;
    this.#claimedSeq = latest.seq;
    this.#writing = this.#write(latest).finally(() => {
      this.#writing = undefined;
    });
    await this.#writing;
  }

  async #write(latest: { seq: number; head: string }): Promise<void> {
    try {
      const claims: CheckpointClaims = { file: this.#auditName, seq: latest.seq, head: latest.head, time: this.#now().toISOString() };
      const jws = await new CompactSign(new TextEncoder().encode(JSON.stringify(claims)))
        .setProtectedHeader({ alg: 'EdDSA', typ: CHECKPOINT_TYPE, kid: this.#kid })
        .sign(this.#key);
      await this.#handle.write(`${JSON.stringify({ seq: claims.seq, head: claims.head, time: claims.time, jws })}\n`);
      await this.#handle.datasync();
      this.#signedSeq = latest.seq;
      this.#lastError = undefined;
    } catch (error) {
      this.#claimedSeq = this.#signedSeq; // retried at the next trigger
      this.#lastError = error instanceof Error ? error : new Error(String(error));
    }
  }

  /** Writes a final checkpoint for the latest record and closes the sidecar. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.checkpoint();
    await this.#handle.close();
  }
}

function isJwk(key: CheckpointerOptions['key']): key is JWK {
  return typeof (key as JWK).kty === 'string';
}

function lastCheckpointSeq(text: string): number {
  const lines = text.trimEnd().split('\n');
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      const { seq } = JSON.parse(lines[i]!) as { seq?: unknown };
      if (typeof seq === 'number') return seq;
    } catch {
      // a torn last line: look further back
    }
  }
  return 0;
}

/**
 * An AuditLog that tells the checkpointer about every record it made durable.
 *
 * @example
 *   const audit = withCheckpoints(await openAuditLog(file), checkpointer);
 */
export function withCheckpoints(audit: AuditLog, checkpointer: AuditCheckpointer): AuditLog {
  return {
    file: audit.file,
    async append(event) {
      const record = await audit.append(event);
      checkpointer.observe(record);
      return record;
    },
    async close() {
      await audit.close();
      await checkpointer.close();
    },
  };
}

export type CheckpointProblem =
  | 'CHECKPOINT_MALFORMED'
  | 'CHECKPOINT_SIGNATURE_INVALID'
  | 'CHECKPOINT_OTHER_FILE'
  | 'CHECKPOINT_OUT_OF_ORDER'
  | 'AUDIT_TRUNCATED'
  | 'AUDIT_REWRITTEN';

export type CheckpointReport =
  | {
      ok: true;
      checkpoints: number;
      /** The highest record vouched for by a checkpoint (0 when there is none). */
      signedSeq: number;
      /** Records in the audit file; those after signedSeq are not covered by any checkpoint yet. */
      records: number;
    }
  | { ok: false; checkpoints: number; line: number; code: CheckpointProblem; problem: string };

/**
 * Checks every checkpoint in `checkpointsFile` against `auditFile` with the
 * public keys in `jwks`. Reports the first checkpoint that is forged, out of
 * order, or contradicted by the audit file (truncated or rewritten).
 *
 * @example
 *   const report = await verifyCheckpoints('.bastion/audit.jsonl', '.bastion/audit.jsonl.checkpoints.jsonl', jwks);
 *   if (!report.ok) console.error(`checkpoint line ${report.line}: ${report.problem}`);
 */
export async function verifyCheckpoints(auditFile: string, checkpointsFile: string, jwks: JSONWebKeySet): Promise<CheckpointReport> {
  const records = completeLines(await readFile(auditFile, 'utf8'));
  const lines = completeLines(await readFile(checkpointsFile, 'utf8'));
  const keys = createLocalJWKSet(jwks);
  const auditName = path.basename(auditFile);
  let previousSeq = 0;
  let previousTime = '';
  for (let i = 0; i < lines.length; i++) {
    const line = i + 1;
    const fail = (code: CheckpointProblem, problem: string): CheckpointReport => ({ ok: false, checkpoints: i, line, code, problem });
    let outer: { seq?: unknown; head?: unknown; time?: unknown; jws?: unknown };
    try {
      outer = JSON.parse(lines[i]!) as typeof outer;
    } catch {
      return fail('CHECKPOINT_MALFORMED', 'not valid JSON');
    }
    if (typeof outer.jws !== 'string') return fail('CHECKPOINT_MALFORMED', 'no jws');
    let claims: CheckpointClaims;
    try {
      const { payload, protectedHeader } = await compactVerify(outer.jws, keys, { algorithms: ['EdDSA'] });
      if (protectedHeader.typ !== CHECKPOINT_TYPE) throw new Error(`typ ${JSON.stringify(protectedHeader.typ)} is not ${CHECKPOINT_TYPE}`);
      claims = JSON.parse(new TextDecoder().decode(payload)) as CheckpointClaims;
    } catch (error) {
      return fail('CHECKPOINT_SIGNATURE_INVALID', `signature does not verify: ${(error as Error).message}`);
    }
    if (typeof claims.seq !== 'number' || !Number.isInteger(claims.seq) || claims.seq < 1 || typeof claims.head !== 'string' || typeof claims.time !== 'string') {
      return fail('CHECKPOINT_MALFORMED', 'signed claims lack seq, head or time');
    }
    if (outer.seq !== claims.seq || outer.head !== claims.head || outer.time !== claims.time) {
      return fail('CHECKPOINT_MALFORMED', 'the line\'s seq/head/time differ from what its signature covers');
    }
    if (claims.file !== auditName) return fail('CHECKPOINT_OTHER_FILE', `checkpoint is for ${JSON.stringify(claims.file)}, not ${JSON.stringify(auditName)}`);
    if (claims.seq < previousSeq || claims.time < previousTime) {
      return fail('CHECKPOINT_OUT_OF_ORDER', `checkpoint for record ${claims.seq} at ${claims.time} follows one for record ${previousSeq} at ${previousTime}`);
    }
    previousSeq = claims.seq;
    previousTime = claims.time;
    if (claims.seq > records.length) {
      return fail(
        'AUDIT_TRUNCATED',
        `checkpoint signed at ${claims.time} vouches for record ${claims.seq}, but the audit file ends at record ${records.length} (records were removed)`,
      );
    }
    let record: AuditRecord;
    try {
      record = JSON.parse(records[claims.seq - 1]!) as AuditRecord;
    } catch {
      return fail('AUDIT_REWRITTEN', `record ${claims.seq} is not valid JSON any more`);
    }
    let actual: string;
    try {
      actual = recordHash(record);
    } catch {
      actual = '(unhashable)';
    }
    if (record.seq !== claims.seq || record.hash !== claims.head || actual !== claims.head) {
      return fail('AUDIT_REWRITTEN', `record ${claims.seq} does not have the hash signed at ${claims.time} (the chain up to it was rewritten)`);
    }
  }
  return { ok: true, checkpoints: lines.length, signedSeq: previousSeq, records: records.length };
}

/** Lines that end in "\n"; a torn last line is not a record (verifyAuditFile reports it). */
function completeLines(text: string): string[] {
  const lines = text.split('\n');
  lines.pop();
  return lines;
}
