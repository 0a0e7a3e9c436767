/**
 * Signed audit checkpoints against the real audit log: written every N
 * records and on a timer, and a verifier that proves a truncated or a
 * rewritten (re-chained) tail that the hash chain alone cannot see.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalJson, seal, type AuditRecord } from '../../broker/audit/chain.ts';
import { AuditCheckpointer, checkpointsFileFor, verifyCheckpoints, withCheckpoints } from '../../broker/audit/checkpoint.ts';
import { openAuditLog } from '../../broker/audit/log.ts';
import { verifyAuditFile } from '../../broker/audit/verify.ts';

const work = mkdtempSync(path.join(tmpdir(), 'bastion-checkpoint-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

let privateJwk: JWK;
let jwks: { keys: JWK[] };
let otherPrivate: JWK;

beforeAll(async () => {
  const pair = await generateKeyPair('EdDSA', { extractable: true });
  privateJwk = { ...(await exportJWK(pair.privateKey)), kid: 'audit-1' };
  jwks = { keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'audit-1', alg: 'EdDSA' }] };
  const other = await generateKeyPair('EdDSA', { extractable: true });
  otherPrivate = { ...(await exportJWK(other.privateKey)), kid: 'audit-1' };
});

/** An audit file with `count` records and checkpoints every `every`; returns its path. */
async function auditWithCheckpoints(name: string, count: number, every: number): Promise<string> {
  const file = path.join(work, name, 'audit.jsonl');
  const checkpointer = await AuditCheckpointer.open({ auditFile: file, key: privateJwk, kid: 'audit-1', every });
  const audit = withCheckpoints(await openAuditLog(file), checkpointer);
  for (let i = 0; i < count; i++) await audit.append({ event: 'tools/call', outcome: 'ok', tool: `demo__t${i}` });
  await audit.close();
  return file;
}

function checkpointSeqs(file: string): number[] {
  return readFileSync(checkpointsFileFor(file), 'utf8')
    .trim()
    .split('\n')
    .map((line) => (JSON.parse(line) as { seq: number }).seq);
}

function records(file: string): AuditRecord[] {
  return readFileSync(file, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as AuditRecord);
}

function writeRecords(file: string, list: AuditRecord[]): void {
  writeFileSync(file, list.map((record) => `${canonicalJson(record)}\n`).join(''));
}

describe('writing checkpoints', () => {
  it('signs the head every N records and once more on close', async () => {
    const file = await auditWithCheckpoints('every', 12, 5);
    // A checkpoint signs the latest head when it gets to write: while the previous one is still
    // being synced (a slow disk, a loaded machine), records 11 and 12 may already be in. So the
    // second one vouches for record 10 or a later one; what holds is the spacing and the last.
    const seqs = checkpointSeqs(file);
    expect(seqs[0]).toBe(5);
    expect(seqs.at(-1)).toBe(12);
    for (let i = 1; i < seqs.length - 1; i++) expect(seqs[i]! - seqs[i - 1]!).toBeGreaterThanOrEqual(5);
    expect(await verifyCheckpoints(file, checkpointsFileFor(file), jwks)).toEqual({ ok: true, checkpoints: seqs.length, signedSeq: 12, records: 12 });
  });

  it('signs on a timer when records trickle in, and continues after a restart', async () => {
    const file = path.join(work, 'timer', 'audit.jsonl');
    const checkpointer = await AuditCheckpointer.open({ auditFile: file, key: privateJwk, kid: 'audit-1', every: 1000, intervalMs: 20 });
    const audit = withCheckpoints(await openAuditLog(file), checkpointer);
    await audit.append({ event: 'tools/call', outcome: 'ok' });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(checkpointSeqs(file)).toEqual([1]);
    await audit.append({ event: 'tools/call', outcome: 'ok' });
    await audit.close();
    expect(checkpointSeqs(file)).toEqual([1, 2]);

    const reopened = await AuditCheckpointer.open({ auditFile: file, key: privateJwk, kid: 'audit-1', every: 2 });
    const again = withCheckpoints(await openAuditLog(file), reopened);
    await again.append({ event: 'tools/call', outcome: 'ok' });
    await again.append({ event: 'tools/call', outcome: 'ok' });
    await again.close();
    expect(checkpointSeqs(file)).toEqual([1, 2, 4]);
    expect((await verifyCheckpoints(file, checkpointsFileFor(file), jwks)).ok).toBe(true);
  });
});

describe('verifying checkpoints', () => {
  it('proves a truncated tail', async () => {
    const file = await auditWithCheckpoints('truncated', 12, 5);
    writeRecords(file, records(file).slice(0, 8));
    expect((await verifyAuditFile(file)).ok).toBe(true); // the chain alone cannot tell
    const report = await verifyCheckpoints(file, checkpointsFileFor(file), jwks);
    expect(report).toMatchObject({ ok: false, line: 2, code: 'AUDIT_TRUNCATED' });
    // The second checkpoint vouches for record 10 or later (see above), never for one kept.
    const second = checkpointSeqs(file)[1]!;
    expect(second).toBeGreaterThanOrEqual(10);
    expect(report.ok === false && report.problem).toMatch(new RegExp(`vouches for record ${second}, but the audit file ends at record 8`));
  });

  it('proves a rewritten tail, even when re-chained consistently', async () => {
    const file = await auditWithCheckpoints('rewritten', 12, 5);
    const list = records(file);
    // Rewrite records 7..12 with different content and a valid chain.
    const rewritten = list.slice(0, 6);
    for (let seq = 7; seq <= 12; seq++) {
      const { seq: _s, time, prev: _p, hash: _h, ...event } = list[seq - 1]!;
      rewritten.push(seal({ ...event, tool: 'demo__innocent' }, seq, rewritten[seq - 2]!.hash, new Date(time)).record);
    }
    writeRecords(file, rewritten);
    expect((await verifyAuditFile(file)).ok).toBe(true);
    expect(await verifyCheckpoints(file, checkpointsFileFor(file), jwks)).toMatchObject({ ok: false, line: 2, code: 'AUDIT_REWRITTEN' });
  });

  it('refuses a forged checkpoint and one edited outside its signature', async () => {
    const file = await auditWithCheckpoints('forged', 6, 5);
    const sidecar = checkpointsFileFor(file);
    const lines = readFileSync(sidecar, 'utf8').trim().split('\n');

    const forger = await AuditCheckpointer.open({ auditFile: path.join(work, 'forger', 'audit.jsonl'), key: otherPrivate, kid: 'audit-1', every: 1 });
    forger.observe({ seq: 6, hash: records(file)[5]!.hash });
    await forger.close();
    const forged = readFileSync(checkpointsFileFor(path.join(work, 'forger', 'audit.jsonl')), 'utf8');
    writeFileSync(sidecar, `${lines[0]}\n${forged}`);
    expect(await verifyCheckpoints(file, sidecar, jwks)).toMatchObject({ ok: false, line: 2, code: 'CHECKPOINT_SIGNATURE_INVALID' });

    const edited = { ...(JSON.parse(lines[1]!) as Record<string, unknown>), seq: 3 };
    writeFileSync(sidecar, `${lines[0]}\n${JSON.stringify(edited)}\n`);
    expect(await verifyCheckpoints(file, sidecar, jwks)).toMatchObject({ ok: false, line: 2, code: 'CHECKPOINT_MALFORMED' });
  });

  it('refuses checkpoints of another audit file', async () => {
    const a = await auditWithCheckpoints('a', 5, 5);
    const renamed = path.join(work, 'a', 'renamed.jsonl');
    writeFileSync(renamed, readFileSync(a));
    expect(await verifyCheckpoints(renamed, checkpointsFileFor(a), jwks)).toMatchObject({ ok: false, code: 'CHECKPOINT_OTHER_FILE' });
  });
});
