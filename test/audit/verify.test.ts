/**
 * `verifyAuditFile` and `bastion audit verify`: an intact file passes; every
 * kind of tampering is reported at the line where the chain first breaks,
 * by the library and by the CLI (exit 1, line named).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, type ExpectStatic } from 'vitest';
import { canonicalJson, recordHash, type AuditRecord } from '../../broker/audit/chain.ts';
import { openAuditLog } from '../../broker/audit/log.ts';
import { verifyAuditFile } from '../../broker/audit/verify.ts';
import { ROOT } from '../helpers/broker.ts';

const run = promisify(execFile);
const CLI = path.join(ROOT, 'broker/cli.ts');

let dir: string;
let intactFile: string;
/** The intact file's lines, without their newlines. */
let lines: string[];
let records: AuditRecord[];

const N = 6;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-audit-verify-'));
  intactFile = path.join(dir, 'intact.jsonl');
  const log = await openAuditLog(intactFile);
  const outcomes = ['ok', 'denied', 'denied', 'ok', 'error', 'ok'] as const;
  for (let i = 0; i < N; i++) {
    await log.append({
      event: 'tools/call',
      outcome: outcomes[i]!,
      tool: `rec__tool${i}`,
      principal: { sub: `agent:${i}`, iss: 'urn:bastion:dev' },
      ...(outcomes[i] === 'denied' ? { denial: { stage: 'authorize', code: 'BASTION_POLICY_DENIED', reason: 'no' } } : {}),
    });
  }
  await log.close();
  const text = await readFile(intactFile, 'utf8');
  lines = text.split('\n').slice(0, -1);
  records = lines.map((line) => JSON.parse(line) as AuditRecord);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let counter = 0;
async function writeVariant(text: string): Promise<string> {
  const file = path.join(dir, `variant-${++counter}.jsonl`);
  await writeFile(file, text);
  return file;
}
const joined = (ls: string[]) => `${ls.join('\n')}\n`;

/** A record re-sealed by a forger who knows the format: canonical, with a hash that matches its content. */
function forge(record: Omit<AuditRecord, 'hash'>): string {
  const unsealed = { ...record } as AuditRecord;
  delete (unsealed as Partial<AuditRecord>).hash;
  return canonicalJson({ ...unsealed, hash: recordHash(unsealed) });
}

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { cwd: ROOT });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Both the library and the CLI must report `line` with a problem matching `problem`. */
async function expectBroken(expect: ExpectStatic, text: string, line: number, problem: RegExp): Promise<void> {
  const file = await writeVariant(text);
  const report = await verifyAuditFile(file);
  expect(report.ok).toBe(false);
  if (report.ok) return;
  expect(report.line).toBe(line);
  expect(report.problem).toMatch(problem);
  expect(report.records).toBe(line - 1);

  const { code, stdout } = await cli('audit', 'verify', file);
  expect(code).toBe(1);
  expect(stdout).toContain(`BROKEN at line ${line}:`);
  expect(stdout).toMatch(problem);
}

describe('an intact file', () => {
  it('verifies in the library', async () => {
    expect(await verifyAuditFile(intactFile)).toEqual({ ok: true, records: N, head: records[N - 1]!.hash, recoveries: [] });
  });

  it('verifies with the CLI: exit 0, record count and head', async () => {
    const { code, stdout } = await cli('audit', 'verify', intactFile);
    expect(code).toBe(0);
    expect(stdout).toContain(`OK, ${N} records, head ${records[N - 1]!.hash}`);
  });

  it('a relative FILE is resolved against the working directory', async () => {
    const { code, stdout } = await cli('audit', 'verify', path.relative(ROOT, intactFile));
    expect(code).toBe(0);
    expect(stdout).toContain(`${intactFile}: OK`);
  });

  it('an empty file is an intact, empty chain', async () => {
    expect(await verifyAuditFile(await writeVariant(''))).toMatchObject({ ok: true, records: 0 });
  });
});

// Concurrent: each case spawns the CLI; they share only the read-only intact lines.
describe.concurrent('tampering is reported at its line', () => {
  it('an edited field (outcome denied → ok)', async ({ expect }) => {
    expect(lines[1]).toContain('"outcome":"denied"');
    const edited = [...lines];
    edited[1] = edited[1]!.replace('"outcome":"denied"', '"outcome":"ok"');
    await expectBroken(expect, joined(edited), 2, /hash does not match the record content/);
  });

  it('an edited time', async ({ expect }) => {
    const edited = [...lines];
    const record = records[3]!;
    const earlier = new Date(Date.parse(record.time) - 1000).toISOString();
    edited[3] = edited[3]!.replace(`"time":"${record.time}"`, `"time":"${earlier}"`);
    expect(edited[3]).not.toBe(lines[3]);
    await expectBroken(expect, joined(edited), 4, /hash does not match the record content/);
  });

  it('an edited record whose hash was recomputed breaks the next link', async ({ expect }) => {
    const edited = [...lines];
    edited[2] = forge({ ...records[2]!, outcome: 'ok', denial: undefined });
    await expectBroken(expect, joined(edited), 4, /prev does not match the hash of record 3/);
  });

  it('a deleted middle line', async ({ expect }) => {
    await expectBroken(expect, joined([...lines.slice(0, 2), ...lines.slice(3)]), 3, /sequence number 4 where 3 was expected/);
  });

  it('a deleted first line', async ({ expect }) => {
    await expectBroken(expect, joined(lines.slice(1)), 1, /sequence number 2 where 1 was expected/);
  });

  it('two swapped lines', async ({ expect }) => {
    const swapped = [...lines];
    [swapped[2], swapped[3]] = [swapped[3]!, swapped[2]!];
    await expectBroken(expect, joined(swapped), 3, /sequence number 4 where 3 was expected/);
  });

  it('an inserted forged line with a recomputed hash but a wrong prev', async ({ expect }) => {
    // Appended at the end with the right seq, canonical, self-consistent hash, but chained to record 5, not 6.
    const forged = forge({ ...records[N - 1]!, seq: N + 1, prev: records[N - 2]!.hash, event: 'forged', outcome: 'ok' });
    await expectBroken(expect, joined([...lines, forged]), N + 1, /prev does not match/);
  });

  it('a forged line inserted in the middle, renumbered and re-hashed', async ({ expect }) => {
    // A forger takes record 3's place with a correct prev; the original record 3 then sits at line 4.
    const forged = forge({ ...records[2]!, event: 'forged', outcome: 'ok', denial: undefined });
    await expectBroken(expect, joined([...lines.slice(0, 2), forged, ...lines.slice(2)]), 4, /sequence number 3 where 4 was expected/);
  });

  it('a truncated last line (no newline)', async ({ expect }) => {
    const text = joined(lines);
    await expectBroken(expect, text.slice(0, text.length - 20), N, /last record is incomplete/);
  });

  it('a missing final newline', async ({ expect }) => {
    await expectBroken(expect, lines.join('\n'), N, /last record is incomplete/);
  });

  it('non-JSON garbage in place of a record', async ({ expect }) => {
    const garbled = [...lines];
    garbled[1] = 'this is {not json';
    await expectBroken(expect, joined(garbled), 2, /not valid JSON/);
  });

  it('a garbage line inserted between records', async ({ expect }) => {
    await expectBroken(expect, joined([...lines.slice(0, 4), '\u0000\u0001garbage', ...lines.slice(4)]), 5, /not valid JSON/);
  });

  it('a JSON value that is not an object', async ({ expect }) => {
    const garbled = [...lines];
    garbled[0] = '42';
    await expectBroken(expect, joined(garbled), 1, /not a JSON object/);
  });

  it('a record rewritten in non-canonical form (same content, same hash)', async ({ expect }) => {
    const rewritten = [...lines];
    rewritten[4] = JSON.stringify(records[4], null, 0).replace('{', '{ ');
    expect(JSON.parse(rewritten[4]!)).toEqual(records[4]);
    await expectBroken(expect, joined(rewritten), 5, /not in canonical form/);
  });
});

describe('the CLI around verify', () => {
  it('a missing file exits 1 with a message', async () => {
    const { code, stderr } = await cli('audit', 'verify', path.join(dir, 'does-not-exist.jsonl'));
    expect(code).toBe(1);
    expect(stderr).toContain('audit verify');
    expect(stderr).toContain('does-not-exist.jsonl');
  });

  it('no FILE is a usage error (exit 2)', async () => {
    const { code, stderr } = await cli('audit', 'verify');
    expect(code).toBe(2);
    expect(stderr).toContain('at least one FILE');
  });
});
