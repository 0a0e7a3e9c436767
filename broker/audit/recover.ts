/**
 * `bastion audit recover`: the way forward from a torn audit tail. A broker
 * that dies in the middle of a write (kill -9, a crash, a full disk) can
 * leave the file ending in a partial record; the broker then refuses to
 * start, because appending after it would break the chain. Moving the file
 * aside is no answer: the signed checkpoints still vouch for its records, so
 * the new chain would be reported as truncated for good.
 *
 * Recovery, in place:
 *   1. the records before the torn bytes must verify (otherwise this is not
 *      a torn write, and nothing is changed);
 *   2. the torn bytes are kept, byte for byte, as evidence in a side file
 *      `<file>.torn-after-<seq>` (mode 0600, synced);
 *   3. the file is cut back to its last whole record;
 *   4. a recovery record (`audit.recovered`) is appended to the chain, with
 *      the torn bytes' length and SHA-256, the evidence file's name, and a
 *      JWS by the checkpoint key over all of it and the record's place in
 *      the chain; a checkpoint is signed for it.
 * The checkpoint sidecar's own torn tail (a checkpoint line cut short) is
 * kept and cut the same way. `bastion audit verify` reports the recovery as
 * such, and fails if its signature does not verify.
 *
 * @example
 *   const result = await recoverAuditFile('.bastion/audit.jsonl', { key: privateJwk });
 *   // { records: 42, recovered: { seq: 43, tornBytes: 117, evidenceFile: '.bastion/audit.jsonl.torn-after-42', … } }
 */
import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { CompactSign, compactVerify, createLocalJWKSet, importJWK, type JSONWebKeySet, type JWK } from 'jose';
import { GENESIS_HASH, seal, type AuditRecord } from './chain.ts';
import { AuditCheckpointer, checkpointsFileFor } from './checkpoint.ts';
import { RECOVERY_EVENT, verifyAuditText } from './verify.ts';

/** JOSE `typ` of a recovery attestation, so no checkpoint (same key) can pass for one, or the reverse. */
export const RECOVERY_TYPE = 'bastion-audit-recovery+jws';

/** What the recovery JWS attests, and what the record's detail repeats. */
export interface RecoveryClaims {
  file: string;
  /** The recovery record's own seq and prev: where in the chain it stands. */
  seq: number;
  prev: string;
  torn_bytes: number;
  torn_sha256: string;
  /** The side file holding the torn bytes (its base name, beside the audit file). */
  evidence_file: string;
  time: string;
}

export interface RecoveryResult {
  /** Whole records in the file before recovery. */
  records: number;
  /** Present when the audit file had a torn tail: the recovery record and where the bytes went. */
  recovered?: { seq: number; tornBytes: number; tornSha256: string; evidenceFile: string };
  /** Present when the checkpoint sidecar had a torn last line: where it went. */
  checkpointEvidenceFile?: string;
}

export class RecoveryRefused extends Error {
  override readonly name = 'RecoveryRefused';
}

/** Splits file contents at the byte after the last line feed: whole lines, then a torn tail (maybe empty). */
function splitTorn(bytes: Buffer): { whole: Buffer; torn: Buffer } {
  const end = bytes.lastIndexOf(0x0a) + 1;
  return { whole: bytes.subarray(0, end), torn: bytes.subarray(end) };
}

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/** Writes `bytes` to a new side file `<base>`, `<base>.2`, … (never over earlier evidence) and syncs it. */
async function keepEvidence(base: string, bytes: Buffer): Promise<string> {
  for (let n = 1; ; n++) {
    const file = n === 1 ? base : `${base}.${n}`;
    try {
      const handle = await open(file, 'wx', 0o600);
      try {
        await handle.writeFile(bytes);
        await handle.sync();
      } finally {
        await handle.close();
      }
      return file;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || n >= 1000) throw error;
    }
  }
}

/** Cuts `file` back to `length` bytes and, when given, appends `line`; synced before it returns. */
async function cutAndAppend(file: string, length: number, line?: string): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await handle.truncate(length);
    if (line !== undefined) await handle.write(line, length, 'utf8');
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export interface RecoverOptions {
  /** The checkpoint private key (Ed25519 JWK), as the broker signs checkpoints with. */
  key: JWK;
  now?: () => Date;
}

export async function recoverAuditFile(file: string, options: RecoverOptions): Promise<RecoveryResult> {
  const bytes = await readFile(file);
  const { whole, torn } = splitTorn(bytes);
  const report = verifyAuditText(whole.toString('utf8'));
  if (!report.ok) {
    throw new RecoveryRefused(
      `${file}: record ${report.line} does not verify (${report.problem}); recover only cuts off a torn last record, and the records before it must be intact. Nothing was changed.`,
    );
  }
  const sidecar = checkpointsFileFor(file);
  const sidecarBytes = await readFile(sidecar).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  const sidecarTorn = sidecarBytes ? splitTorn(sidecarBytes) : undefined;
  const result: RecoveryResult = { records: report.records };
  if (torn.length === 0 && !sidecarTorn?.torn.length) return result;

  const key = await importJWK(options.key, 'EdDSA');
  const kid = options.key.kid ?? 'audit';
  // The sidecar first: the checkpoint for the recovery record is appended to it below.
  if (sidecarTorn && sidecarTorn.torn.length > 0) {
    result.checkpointEvidenceFile = await keepEvidence(`${sidecar}.torn`, sidecarTorn.torn);
    await cutAndAppend(sidecar, sidecarTorn.whole.length);
  }
  if (torn.length === 0) return result;

  const last = report.records > 0 ? (JSON.parse(whole.toString('utf8').trimEnd().split('\n').at(-1)!) as AuditRecord) : undefined;
  const seq = (last?.seq ?? 0) + 1;
  const prev = last?.hash ?? GENESIS_HASH;
  const evidenceFile = await keepEvidence(`${file}.torn-after-${seq - 1}`, torn);
  const time = (options.now ?? (() => new Date()))();
  const claims: RecoveryClaims = {
    file: path.basename(file),
    seq,
    prev,
    torn_bytes: torn.length,
    torn_sha256: sha256(torn),
    evidence_file: path.basename(evidenceFile),
    time: time.toISOString(),
  };
  const jws = await new CompactSign(new TextEncoder().encode(JSON.stringify(claims))).setProtectedHeader({ alg: 'EdDSA', typ: RECOVERY_TYPE, kid }).sign(key);
  const { record, line } = seal(
    {
      event: RECOVERY_EVENT,
      outcome: 'info',
      detail: { torn_bytes: claims.torn_bytes, torn_sha256: claims.torn_sha256, evidence_file: claims.evidence_file, jws },
    },
    seq,
    prev,
    time,
  );
  await cutAndAppend(file, whole.length, `${line}\n`);
  // A checkpoint for the recovery record, so cutting it off later shows too.
  const checkpointer = await AuditCheckpointer.open({ auditFile: file, key: options.key, kid });
  checkpointer.observe(record);
  await checkpointer.close();
  if (checkpointer.lastError) throw new Error(`recovered, but the checkpoint for record ${seq} failed: ${checkpointer.lastError.message}`);
  result.recovered = { seq, tornBytes: torn.length, tornSha256: claims.torn_sha256, evidenceFile };
  return result;
}

/**
 * Checks a recovery record: its JWS verifies with the checkpoint keys in
 * `jwks`, and says what the record says, where the record stands. Also
 * reports whether the evidence file is still there with the attested bytes.
 */
export async function verifyRecovery(
  auditFile: string,
  record: AuditRecord,
  jwks: JSONWebKeySet,
): Promise<{ ok: true; claims: RecoveryClaims; evidence: 'present' | 'missing' | 'altered' } | { ok: false; problem: string }> {
  const detail = record.detail ?? {};
  if (typeof detail.jws !== 'string') return { ok: false, problem: 'the recovery record carries no signature' };
  let claims: RecoveryClaims;
  try {
    const { payload, protectedHeader } = await compactVerify(detail.jws, createLocalJWKSet(jwks), { algorithms: ['EdDSA'] });
    if (protectedHeader.typ !== RECOVERY_TYPE) throw new Error(`typ ${JSON.stringify(protectedHeader.typ)} is not ${RECOVERY_TYPE}`);
    claims = JSON.parse(new TextDecoder().decode(payload)) as RecoveryClaims;
  } catch (error) {
    return { ok: false, problem: `the recovery signature does not verify: ${(error as Error).message}` };
  }
  const expected = {
    file: path.basename(auditFile),
    seq: record.seq,
    prev: record.prev,
    torn_bytes: detail.torn_bytes,
    torn_sha256: detail.torn_sha256,
    evidence_file: detail.evidence_file,
    time: record.time,
  };
  for (const [field, value] of Object.entries(expected)) {
    if (claims[field as keyof RecoveryClaims] !== value) return { ok: false, problem: `the recovery record's ${field} differs from what its signature covers` };
  }
  const evidence = await readFile(path.join(path.dirname(auditFile), path.basename(claims.evidence_file))).then(
    (bytes) => (sha256(bytes) === claims.torn_sha256 && bytes.length === claims.torn_bytes ? ('present' as const) : ('altered' as const)),
    () => 'missing' as const,
  );
  return { ok: true, claims, evidence };
}
