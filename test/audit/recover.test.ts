/**
 * `bastion audit recover`: a process writing the audit trail dies with
 * SIGKILL in the middle of a record (test/fixtures/torn-audit-writer.ts).
 * The broker refuses to start on the torn file and names the command; the
 * command keeps the torn bytes as evidence, cuts them off and appends a
 * signed recovery record; `audit verify` then reports a recovery, not a
 * truncation, and the broker starts and continues the chain. What is not a
 * torn write (an edited record before the tail, a forged recovery record) is
 * refused or reported, and nothing is changed.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { canonicalJson, recordHash, type AuditRecord } from '../../broker/audit/chain.ts';
import { AuditCheckpointer, checkpointsFileFor, verifyCheckpoints } from '../../broker/audit/checkpoint.ts';
import { openAuditLog } from '../../broker/audit/log.ts';
import { recoverAuditFile } from '../../broker/audit/recover.ts';
import { verifyAuditFile } from '../../broker/audit/verify.ts';
import { readJwksFile } from '../../broker/auth/keys.ts';
import { ROOT } from '../helpers/broker.ts';
import { spawnCollecting } from '../helpers/spawn.ts';

const run = promisify(execFile);
const CLI = path.join(ROOT, 'broker/cli.ts');
const WRITER = path.join(ROOT, 'test/fixtures/torn-audit-writer.ts');

let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'bastion-recover-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function cli(cwd: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { cwd });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A state folder whose audit file a killed writer left torn; returns the folder and the torn bytes. */
async function tornStateDir(name: string, records = 5): Promise<{ cwd: string; stateDir: string; file: string; torn: Buffer }> {
  const cwd = path.join(work, name);
  const stateDir = path.join(cwd, '.bastion');
  const writer = spawnCollecting(process.execPath, [WRITER, stateDir, String(records)]);
  const exit = await writer.exited;
  expect(exit, writer.stderr()).toEqual({ code: null, signal: 'SIGKILL' });
  const torn = Buffer.from(writer.stdout().trim(), 'base64');
  const file = path.join(stateDir, 'audit.jsonl');
  expect((await readFile(file)).subarray(-torn.length).equals(torn)).toBe(true);
  return { cwd, stateDir, file, torn };
}

const jwksOf = (stateDir: string) => readJwksFile(path.join(stateDir, 'audit-checkpoint-jwks.json'));

describe('a torn audit tail, from a writer killed mid-record', () => {
  let cwd: string;
  let stateDir: string;
  let file: string;
  let torn: Buffer;

  beforeAll(async () => {
    ({ cwd, stateDir, file, torn } = await tornStateDir('killed'));
  });

  it('the broker refuses to start and points at `bastion audit recover FILE`', async () => {
    const started = spawnCollecting(process.execPath, [CLI, 'start', '--port', '0'], { cwd });
    const exit = await started.exited;
    expect(exit.code).toBe(1);
    // The path as configured (state_dir .bastion by default).
    expect(started.stderr()).toContain('run `bastion audit recover .bastion/audit.jsonl`');
    expect(started.stdout()).not.toContain('listening');
  });

  it('verify reports the partial record and names the command too', async () => {
    const verify = await cli(cwd, 'audit', 'verify', file);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toContain('last record is incomplete');
    expect(verify.stdout).toContain('bastion audit recover FILE');
  });

  it('recover keeps the torn bytes as evidence, cuts them off and appends a signed recovery record', async () => {
    const before = await readFile(file);
    const recovered = await cli(cwd, 'audit', 'recover', file);
    expect(recovered.code, recovered.stderr).toBe(0);
    const evidenceFile = `${file}.torn-after-5`;
    expect(recovered.stdout).toContain(`${torn.length} torn bytes after record 5 kept in ${evidenceFile}`);
    expect(recovered.stdout).toContain('recovery record 6 appended');
    // The evidence is the torn bytes, byte for byte, readable by the owner only.
    expect((await readFile(evidenceFile)).equals(torn)).toBe(true);
    // The whole records are untouched; one recovery record follows them.
    const after = await readFile(file);
    const whole = before.subarray(0, before.length - torn.length);
    expect(after.subarray(0, whole.length).equals(whole)).toBe(true);
    const last = JSON.parse(after.toString('utf8').trimEnd().split('\n').at(-1)!) as AuditRecord;
    expect(last).toMatchObject({ seq: 6, event: 'audit.recovered', outcome: 'info', detail: { torn_bytes: torn.length, evidence_file: 'audit.jsonl.torn-after-5' } });
  });

  it('verify reports a recovery, not an error, and the checkpoints still hold (no AUDIT_TRUNCATED)', async () => {
    const verify = await cli(cwd, 'audit', 'verify', file);
    expect(verify.code, verify.stdout).toBe(0);
    expect(verify.stdout).toContain(`${file}: OK, 6 records`);
    expect(verify.stdout).toMatch(new RegExp(`RECOVERED at record 6: ${torn.length} torn bytes after record 5 were cut off \\(kept in audit\\.jsonl\\.torn-after-5, sha256:[0-9a-f]{64}\\); signed by the checkpoint key`));
    expect(verify.stdout).not.toContain('AUDIT_TRUNCATED');
    expect(await verifyCheckpoints(file, checkpointsFileFor(file), await jwksOf(stateDir))).toMatchObject({ ok: true, signedSeq: 6, records: 6 });
  });

  it('the broker then starts and continues the chain after the recovery record', async () => {
    const started = spawnCollecting(process.execPath, [CLI, 'start', '--port', '0'], { cwd });
    expect(await started.waitFor((out) => /Bastion is listening at/.test(out), 120_000), started.stderr()).toBe(true);
    started.child.kill('SIGTERM');
    expect((await started.exited).code).toBe(0);
    const report = await verifyAuditFile(file);
    expect(report).toMatchObject({ ok: true });
    expect(report.ok && report.records).toBeGreaterThan(6);
    const verify = await cli(cwd, 'audit', 'verify', file);
    expect(verify.code, verify.stdout).toBe(0);
    expect(verify.stdout).toContain('RECOVERED at record 6');
  });

  it('recover on a file that ends with a whole record changes nothing', async () => {
    const before = await readFile(file);
    const again = await cli(cwd, 'audit', 'recover', file);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('nothing to recover');
    expect((await readFile(file)).equals(before)).toBe(true);
  });
});

describe('what recover refuses, and what verify catches', () => {
  it('a file whose records before the torn tail do not verify is not a torn write: refused, nothing changed', async () => {
    const { cwd, file } = await tornStateDir('edited', 3);
    const text = await readFile(file, 'utf8');
    const edited = text.replace('rec__call1', 'rec__callX');
    await writeFile(file, edited);
    const refused = await cli(cwd, 'audit', 'recover', file);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('record 2 does not verify (hash does not match the record content');
    expect(refused.stderr).toContain('Nothing was changed');
    expect(await readFile(file, 'utf8')).toBe(edited);
    expect((await readdir(path.dirname(file))).filter((name) => name.includes('.torn'))).toEqual([]);
  });

  it('without the checkpoint key it says where to give it', async () => {
    const { cwd, file, stateDir } = await tornStateDir('no-key', 2);
    await rm(path.join(stateDir, 'audit-checkpoint-signing-key.json'));
    const refused = await cli(cwd, 'audit', 'recover', file);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('--key FILE');
  });

  it('a recovery record signed with another key, or edited after signing, fails verify', async () => {
    const { cwd, file } = await tornStateDir('forged', 2);
    const pair = await generateKeyPair('EdDSA', { extractable: true });
    const otherKey: JWK = { ...(await exportJWK(pair.privateKey)), kid: 'attacker' };
    const forgedCopy = path.join(work, 'forged-copy');
    await cp(path.dirname(file), forgedCopy, { recursive: true });
    // Signed by someone without the checkpoint key.
    await recoverAuditFile(path.join(forgedCopy, 'audit.jsonl'), { key: otherKey });
    const forged = await cli(cwd, 'audit', 'verify', path.join(forgedCopy, 'audit.jsonl'));
    expect(forged.code).toBe(1);
    expect(forged.stdout).toContain('BROKEN at line 3: recovery record: the recovery signature does not verify');

    // Genuine, then its torn byte count edited and the record re-sealed to keep the chain whole.
    const recovered = await cli(cwd, 'audit', 'recover', file);
    expect(recovered.code, recovered.stderr).toBe(0);
    const lines = (await readFile(file, 'utf8')).trimEnd().split('\n');
    const record = JSON.parse(lines.at(-1)!) as AuditRecord;
    const { hash: _old, ...unsealed } = { ...record, detail: { ...record.detail, torn_bytes: 1 } };
    lines[lines.length - 1] = canonicalJson({ ...unsealed, hash: recordHash(unsealed) });
    await writeFile(file, `${lines.join('\n')}\n`);
    const edited = await cli(cwd, 'audit', 'verify', file);
    expect(edited.code).toBe(1);
    expect(edited.stdout).toContain("recovery record: the recovery record's torn_bytes differs from what its signature covers");
  });

  it('a torn checkpoint line: the broker refuses to append after it, recover keeps it as evidence and cuts it off', async () => {
    const dir = path.join(work, 'torn-checkpoint');
    const pair = await generateKeyPair('EdDSA', { extractable: true });
    const key: JWK = { ...(await exportJWK(pair.privateKey)), kid: 'audit-1' };
    const file = path.join(dir, 'audit.jsonl');
    const audit = await openAuditLog(file);
    const record = await audit.append({ event: 'whole', outcome: 'ok' });
    await audit.close();
    const checkpointer = await AuditCheckpointer.open({ auditFile: file, key, kid: 'audit-1' });
    checkpointer.observe(record);
    await checkpointer.close();
    const sidecar = checkpointsFileFor(file);
    const line = await readFile(sidecar, 'utf8');
    await writeFile(sidecar, `${line}${line.slice(0, 40)}`);
    await expect(AuditCheckpointer.open({ auditFile: file, key, kid: 'audit-1' })).rejects.toThrow(`run \`bastion audit recover ${file}\``);

    const result = await recoverAuditFile(file, { key });
    expect(result).toEqual({ records: 1, checkpointEvidenceFile: `${sidecar}.torn` });
    expect(await readFile(`${sidecar}.torn`, 'utf8')).toBe(line.slice(0, 40));
    expect(await readFile(sidecar, 'utf8')).toBe(line);
  });
});

describe('bastion audit recover --help', () => {
  it('explains the steps and the key', async () => {
    const help = await cli(ROOT, 'audit', 'recover', '--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('usage: bastion audit recover FILE [--key FILE]');
    expect(help.stdout).toMatch(/Do not move the file\s+aside/);
    expect((await cli(ROOT, 'help')).stdout).toContain('audit recover');
  });
});
