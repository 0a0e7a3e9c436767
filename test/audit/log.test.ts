/**
 * Stage 8, audit: the append-only, hash-chained log. The chain must survive
 * a restart, stay intact under concurrent appends (group commit), fail
 * closed once a write fails, and never hold a token or argument values.
 */
import { constants } from 'node:fs';
import { mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/server';
import fc from 'fast-check';
import { canonicalJson, GENESIS_HASH, recordHash, seal, type AuditEvent, type AuditRecord } from '../../broker/audit/chain.ts';
import { openAuditLog } from '../../broker/audit/log.ts';
import { verifyAuditFile } from '../../broker/audit/verify.ts';
import { metrics } from '../../broker/metrics.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-audit-log-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function readRecords(file: string): Promise<AuditRecord[]> {
  const text = await readFile(file, 'utf8');
  return text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as AuditRecord);
}

function expectChained(records: AuditRecord[]): void {
  let prev = GENESIS_HASH;
  records.forEach((record, i) => {
    expect(record.seq).toBe(i + 1);
    expect(record.prev).toBe(prev);
    expect(record.hash).toBe(recordHash(record));
    prev = record.hash;
  });
}

describe('seal', () => {
  // seal joins the stored line from members canonicalized once; it must be exactly what a
  // JCS implementation makes of the whole record, or other verifiers would disagree.
  it('writes the RFC 8785 form of the record, and hashes it without the hash member', () => {
    const text = fc.string({ unit: 'binary', maxLength: 12 });
    const event = fc.record(
      {
        event: text,
        outcome: fc.constantFrom('ok', 'denied', 'error', 'info'),
        tool: fc.option(text, { nil: undefined }),
        session: fc.option(text, { nil: undefined }),
        latency_ms: fc.option(fc.double({ noNaN: true, noDefaultInfinity: true }), { nil: undefined }),
        detail: fc.option(fc.dictionary(text, fc.jsonValue({ maxDepth: 3 })), { nil: undefined }),
        // Keys that sort differently by code unit than by code point or locale.
        'ｚ': fc.option(text, { nil: undefined }),
        '\u{1F600}': fc.option(text, { nil: undefined }),
        Z: fc.option(text, { nil: undefined }),
      },
      { requiredKeys: ['event', 'outcome'] },
    ) as fc.Arbitrary<AuditEvent>;
    fc.assert(
      fc.property(event, fc.integer({ min: 1 }), fc.date({ noInvalidDate: true, min: new Date(0), max: new Date(4e12) }), (e, seq, time) => {
        const { record, line } = seal(e, seq, GENESIS_HASH, time);
        expect(line).toBe(canonicalJson(record));
        expect(record.hash).toBe(recordHash(record));
        expect(JSON.parse(line)).toEqual(JSON.parse(JSON.stringify(record)));
      }),
      { numRuns: 300 },
    );
  });
});

describe('openAuditLog', () => {
  it('starts a new file at seq 1 from the genesis hash', async () => {
    const file = path.join(dir, 'fresh', 'audit.jsonl');
    const log = await openAuditLog(file);
    const record = await log.append({ event: 'test', outcome: 'info' });
    await log.close();
    expect(record).toMatchObject({ seq: 1, prev: GENESIS_HASH, event: 'test', outcome: 'info' });
    expect(record.hash).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(await readRecords(file)).toEqual([record]);
  });

  it('continues the chain across a close and reopen (seq continues, prev links)', async () => {
    const file = path.join(dir, 'reopen.jsonl');
    const first = await openAuditLog(file);
    const a = await first.append({ event: 'one', outcome: 'ok' });
    const b = await first.append({ event: 'two', outcome: 'denied' });
    await first.close();

    const second = await openAuditLog(file);
    const c = await second.append({ event: 'three', outcome: 'ok' });
    await second.close();

    const third = await openAuditLog(file);
    const d = await third.append({ event: 'four', outcome: 'error' });
    await third.close();

    expect([a.seq, b.seq, c.seq, d.seq]).toEqual([1, 2, 3, 4]);
    expect(c.prev).toBe(b.hash);
    expect(d.prev).toBe(c.hash);
    const records = await readRecords(file);
    expect(records.map((r) => r.event)).toEqual(['one', 'two', 'three', 'four']);
    expectChained(records);
    expect(await verifyAuditFile(file)).toEqual({ ok: true, records: 4, head: d.hash, recoveries: [] });
  });

  it('200 concurrent appends produce one valid chain with unique seqs', async () => {
    const file = path.join(dir, 'concurrent.jsonl');
    const log = await openAuditLog(file);
    const appended = await Promise.all(
      Array.from({ length: 200 }, (_, i) => log.append({ event: 'burst', outcome: 'ok', detail: { i } })),
    );
    await log.close();

    expect(new Set(appended.map((r) => r.seq)).size).toBe(200);
    expect(appended.map((r) => r.seq).sort((x, y) => x - y)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    const records = await readRecords(file);
    expect(records).toHaveLength(200);
    expectChained(records);
    // Every caller got back exactly the record that was written under its seq.
    for (const record of appended) expect(records[record.seq - 1]).toEqual(record);
    // And every event is in the file once.
    expect(new Set(records.map((r) => (r.detail as { i: number }).i)).size).toBe(200);
    expect((await verifyAuditFile(file)).ok).toBe(true);
  });

  /** Group commits so far in this process (the count of the audit sync histogram). */
  async function commits(): Promise<number> {
    const metric = await metrics.registry.getSingleMetric('bastion_audit_sync_seconds')!.get();
    return metric.values.find((v) => (v as { metricName?: string }).metricName === 'bastion_audit_sync_seconds_count')?.value ?? 0;
  }

  it('records appended in one event-loop turn share one write (group commit), in either durability', async () => {
    for (const durability of ['disk', 'process'] as const) {
      const file = path.join(dir, `turn-${durability}.jsonl`);
      const log = await openAuditLog(file, { durability });
      const before = await commits();
      const appended = await Promise.all(Array.from({ length: 20 }, (_, i) => log.append({ event: 'turn', outcome: 'ok', detail: { i } })));
      expect((await commits()) - before, durability).toBe(1);
      expect((await readRecords(file)).map((r) => r.seq)).toEqual(appended.map((r) => r.seq));
      await log.close();
    }
  });

  it('a record is in the file when append resolves', async () => {
    const file = path.join(dir, 'durable.jsonl');
    const log = await openAuditLog(file);
    const record = await log.append({ event: 'durable', outcome: 'ok' });
    const onDisk = await readRecords(file);
    await log.close();
    expect(onDisk.at(-1)).toEqual(record);
  });

  /** The open flags of this process's descriptor for `file`, from /proc (Linux). */
  async function openFlags(file: string): Promise<number> {
    for (const fd of await readdir('/proc/self/fd')) {
      const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
      if (target !== file) continue;
      const info = await readFile(`/proc/self/fdinfo/${fd}`, 'utf8');
      return Number.parseInt(/^flags:\s+([0-7]+)$/m.exec(info)![1]!, 8);
    }
    throw new Error(`${file} is not open`);
  }

  it('durability disk writes with O_DSYNC; durability process hands records to the kernel and syncs later', async () => {
    const diskFile = path.join(dir, 'disk.jsonl');
    const disk = await openAuditLog(diskFile);
    expect((await openFlags(diskFile)) & constants.O_DSYNC).toBe(constants.O_DSYNC);
    await disk.close();

    const file = path.join(dir, 'process.jsonl');
    const log = await openAuditLog(file, { durability: 'process', syncIntervalMs: 10 });
    expect((await openFlags(file)) & constants.O_DSYNC).toBe(0);
    const first = await log.append({ event: 'one', outcome: 'ok' });
    // In the file (the kernel has it) as soon as append resolves, like the disk mode.
    expect((await readRecords(file)).at(-1)).toEqual(first);
    await new Promise((resolve) => setTimeout(resolve, 30)); // a background fdatasync ran
    const appended = await Promise.all(Array.from({ length: 50 }, (_, i) => log.append({ event: 'burst', outcome: 'ok', detail: { i } })));
    await log.close();
    const records = await readRecords(file);
    expect(records).toHaveLength(51);
    expectChained(records);
    for (const record of appended) expect(records[record.seq - 1]).toEqual(record);
    await expect(log.append({ event: 'late', outcome: 'ok' })).rejects.toThrow(/audit log unavailable/);
  });

  it('time comes from the injected clock and is covered by the hash', async () => {
    const file = path.join(dir, 'clock.jsonl');
    const fixed = new Date('2030-01-02T03:04:05.678Z');
    const log = await openAuditLog(file, { now: () => fixed });
    const record = await log.append({ event: 'clocked', outcome: 'ok' });
    await log.close();
    expect(record.time).toBe('2030-01-02T03:04:05.678Z');
    expect(recordHash({ ...record, time: '2030-01-02T03:04:05.679Z' })).not.toBe(record.hash);
  });

  it('undefined members are dropped, not written as null', async () => {
    const file = path.join(dir, 'undefined.jsonl');
    const log = await openAuditLog(file);
    await log.append({ event: 'sparse', outcome: 'ok', tool: undefined, session: undefined });
    await log.close();
    const text = await readFile(file, 'utf8');
    expect(text).not.toContain('tool');
    expect(text).not.toContain('null');
    expect((await verifyAuditFile(file)).ok).toBe(true);
  });

  it('refuses to reopen a file that ends with a partial record', async () => {
    const file = path.join(dir, 'partial.jsonl');
    const log = await openAuditLog(file);
    await log.append({ event: 'whole', outcome: 'ok' });
    await log.close();
    await writeFile(file, `${await readFile(file, 'utf8')}{"seq":2,"ev`);
    // The refusal names the way forward (not "move it aside", which would orphan the checkpoints).
    await expect(openAuditLog(file)).rejects.toThrow(`run \`bastion audit recover ${file}\``);
    await expect(openAuditLog(file)).rejects.not.toThrow(/move it aside/);
  });

  it('a failed write poisons the log: every later append fails too (fail closed)', async () => {
    const file = path.join(dir, 'poisoned.jsonl');
    const log = await openAuditLog(file);
    await log.append({ event: 'before', outcome: 'ok' });
    await log.close(); // the file handle is gone: the next write fails
    await expect(log.append({ event: 'lost', outcome: 'ok' })).rejects.toThrow(/audit log unavailable/);
    await expect(log.append({ event: 'also lost', outcome: 'ok' })).rejects.toThrow(/audit log unavailable/);
    expect((await readRecords(file)).map((r) => r.event)).toEqual(['before']);
  });
});

describe('what a broker writes to the audit log', () => {
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker();
  });
  afterAll(async () => {
    await t?.close();
  });

  it('never contains the raw token or argument values', async () => {
    const secret = `sk_live_${'9'.repeat(8)}_SECRET_${Math.random().toString(36).slice(2)}`;
    const token = await t.mint({ sub: 'agent:audit-secrets', cap: [{ tool: 'rec__echo' }, { tool: 'rec__transfer', args: { amount: { max: 10 } } }] });
    const client = await t.connect(token);

    const ok = (await client.callTool({ name: 'rec__echo', arguments: { text: secret } })) as CallToolResult;
    expect(ok.content).toEqual([{ type: 'text', text: `echo: ${secret}` }]);
    const refused = (await client.callTool({ name: 'rec__transfer', arguments: { amount: 7777.125, to: secret } })) as CallToolResult;
    expect(refused.isError).toBe(true);

    const text = await readFile(path.join(t.dir, 'audit.jsonl'), 'utf8');
    const mine = (await t.auditRecords()).filter((r) => r.principal?.sub === 'agent:audit-secrets');
    expect(mine.map((r) => [r.tool, r.outcome])).toEqual(
      expect.arrayContaining([
        ['rec__echo', 'ok'],
        ['rec__transfer', 'denied'],
      ]),
    );
    for (const record of mine) {
      expect(record.args_hash).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(record.principal?.token_hash).toMatch(/^sha256:[0-9a-f]{64}$/);
    }
    expect(text).not.toContain(secret);
    expect(text).not.toContain('7777.125');
    expect(text).not.toContain(token);
    // Not even one segment of the token (its payload or signature) is stored.
    for (const segment of token.split('.')) expect(text).not.toContain(segment);
    expect((await verifyAuditFile(path.join(t.dir, 'audit.jsonl'))).ok).toBe(true);
  });
});
