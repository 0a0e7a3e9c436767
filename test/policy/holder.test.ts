/**
 * PolicyHolder: hot reload of Rego directories (real opa build and opa test)
 * and of compiled modules with data, under load, and every way a new policy
 * is refused while the old one stays in force.
 */
import { copyFileSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PolicyHolder, type ReloadEvent } from '../../broker/policy/holder.ts';
import type { Decision } from '../../broker/policy/schema.ts';
import { capturingLogger, COMPILED, copyDefaultPolicy, input, tempDir, waitFor } from './helpers.ts';

const { dir: work, cleanup } = tempDir('bastion-holder-');
afterAll(cleanup);

const holders: PolicyHolder[] = [];
afterEach(async () => {
  await Promise.all(holders.splice(0).map((holder) => holder.close()));
});

async function open(options: Parameters<typeof PolicyHolder.open>[0]): Promise<PolicyHolder> {
  const holder = await PolicyHolder.open(options);
  holders.push(holder);
  return holder;
}

function events(holder: PolicyHolder): ReloadEvent[] {
  const seen: ReloadEvent[] = [];
  holder.onReload((event) => seen.push(event));
  return seen;
}

const WRITE = input({ tool: 'demo__write_file' });
const SITE_RULE = 'package bastion.site.load\n\ndeny contains "writes are frozen" if input.tool.name == "demo__write_file"\n';

describe('a Rego directory source', () => {
  let dir: string;
  beforeAll(() => {
    dir = path.join(work, 'rego');
    copyDefaultPolicy(dir);
  });
  afterEach(() => {
    rmSync(path.join(dir, 'site.rego'), { force: true });
    rmSync(path.join(dir, 'broken.rego'), { force: true });
    rmSync(path.join(dir, 'site_test.rego'), { force: true });
  });

  it('is built with the real opa into the same module as policies/build.sh', async () => {
    const holder = await open({ source: { kind: 'rego', dir }, log: capturingLogger().log, watch: false });
    expect(holder.revision).toBe(`sha256:${createHash('sha256').update(readFileSync(COMPILED)).digest('hex')}`);
    expect(holder.current().decide(WRITE).allow).toBe(true);
  });

  it('swaps atomically under load: 2,000 decisions across a swap, each one policy\'s answer, none failing', async () => {
    const holder = await open({ source: { kind: 'rego', dir }, log: capturingLogger().log, debounceMs: 20 });
    const before = holder.current().decide(WRITE);
    const seen = events(holder);
    const answers: Decision[] = [];
    let swappedAt = -1;
    for (let i = 0; answers.length < 2000 || swappedAt === -1; i++) {
      if (i === 200) writeFileSync(path.join(dir, 'site.rego'), SITE_RULE);
      answers.push(holder.current().decide(WRITE)); // throws (and fails the test) if any decision fails
      if (swappedAt === -1 && seen.some((e) => e.changed)) swappedAt = answers.length;
      if (i % 20 === 0) await new Promise((resolve) => setImmediate(resolve)); // let the build and fs events run
      if (i > 200_000) throw new Error('no swap happened');
    }
    const after = { allow: false, approval: before.approval, reasons: ['site load: writes are frozen'], obligations: before.obligations };
    const firstAfter = answers.findIndex((answer) => !answer.allow);
    expect(firstAfter).toBeGreaterThan(200);
    expect(answers.slice(0, firstAfter).every((answer) => JSON.stringify(answer) === JSON.stringify(before))).toBe(true);
    expect(answers.slice(firstAfter).every((answer) => JSON.stringify(answer) === JSON.stringify(after))).toBe(true);
    expect(answers.length - firstAfter).toBeGreaterThan(0);
    expect(seen.filter((e) => e.changed)).toHaveLength(1);
    expect(seen.find((e) => e.changed)).toMatchObject({ ok: true, trigger: 'watch', revision: holder.revision });
    expect(holder.generation).toBe(1);
  });

  it('lets a call that started under the old policy finish under it', async () => {
    const holder = await open({ source: { kind: 'rego', dir }, log: capturingLogger().log, watch: false });
    const inFlight = holder.current();
    writeFileSync(path.join(dir, 'site.rego'), SITE_RULE);
    const event = await holder.reload();
    expect(event).toMatchObject({ ok: true, changed: true, previous: inFlight.revision });
    expect(inFlight.decide(WRITE).allow).toBe(true);
    expect(holder.current().decide(WRITE).allow).toBe(false);
  });

  it('keeps the old policy when the new Rego does not compile, and says why', async () => {
    const { log, lines } = capturingLogger();
    const holder = await open({ source: { kind: 'rego', dir }, log, watch: false });
    const revision = holder.revision;
    writeFileSync(path.join(dir, 'broken.rego'), 'package bastion.site.broken\n\ndeny contains "x" if {\n');
    const event = await holder.reload();
    expect(event).toMatchObject({ ok: false, changed: false, revision });
    expect(event.error).toMatch(/opa build failed[\s\S]*broken\.rego/);
    expect(holder.revision).toBe(revision);
    expect(holder.current().decide(WRITE).allow).toBe(true);
    expect(lines().some((line) => line.msg === 'new policy refused; the previous policy stays in force' && String(line.err).includes('broken.rego'))).toBe(true);
  });

  it('keeps the old policy when the directory\'s own opa test fails', async () => {
    const holder = await open({ source: { kind: 'rego', dir }, log: capturingLogger().log, watch: false });
    const revision = holder.revision;
    writeFileSync(path.join(dir, 'site.rego'), SITE_RULE);
    writeFileSync(path.join(dir, 'site_test.rego'), 'package bastion.site.load_test\n\nimport data.bastion\n\ntest_writes_allowed if bastion.allow with input as {"version": 1, "principal": {"sub": "a", "iss": "i", "act": [], "cap": [{"tool": "*"}], "anonymous": false}, "tool": {"name": "demo__write_file", "connector": "demo", "risk": "low", "descriptor_hash": ""}, "arguments": {}, "context": {"time": "2026-01-05T10:00:00Z", "transport": "http", "session": "s", "method": "tools/call"}}\n');
    const event = await holder.reload();
    expect(event.ok).toBe(false);
    expect(event.error).toMatch(/opa test failed[\s\S]*test_writes_allowed/);
    expect(holder.revision).toBe(revision);
    expect(holder.current().decide(WRITE).allow).toBe(true);

    rmSync(path.join(dir, 'site_test.rego'));
    expect(await holder.reload()).toMatchObject({ ok: true, changed: true });
    expect(holder.current().decide(WRITE).allow).toBe(false);
  });

  it('refuses to start on a directory that does not build', async () => {
    const bad = path.join(work, 'bad-start');
    copyDefaultPolicy(bad);
    writeFileSync(path.join(bad, 'broken.rego'), 'package bastion\n\nallow if {\n');
    await expect(PolicyHolder.open({ source: { kind: 'rego', dir: bad }, log: capturingLogger().log })).rejects.toThrow(/opa build failed/);
  });

  it('coalesces reload requests that arrive while one is running', async () => {
    const holder = await open({ source: { kind: 'rego', dir }, log: capturingLogger().log, watch: false });
    const seen = events(holder);
    const results = await Promise.all([holder.reload('a'), holder.reload('b'), holder.reload('c'), holder.reload('d')]);
    expect(results.every((result) => result.ok && !result.changed)).toBe(true);
    expect(seen.length).toBeLessThanOrEqual(2);
  });
});

describe('a compiled module with a data file', () => {
  let wasm: string;
  let data: string;
  beforeAll(() => {
    wasm = path.join(work, 'wasm', 'policy.wasm');
    data = path.join(work, 'wasm', 'data.json');
    copyDefaultPolicy(path.join(work, 'wasm'));
    copyFileSync(COMPILED, wasm);
    writeFileSync(data, '{}');
  });

  it('reloads when the data changes, and data.bastion.tool_risk overrides the risk', async () => {
    const holder = await open({ source: { kind: 'wasm', path: wasm, dataFile: data }, log: capturingLogger().log, debounceMs: 20 });
    const seen = events(holder);
    expect(holder.current().decide(input()).approval.required).toBe(false);
    // Replaced by rename, as deploy tools do.
    writeFileSync(`${data}.new`, JSON.stringify({ bastion: { tool_risk: { demo__read_file: 'high' } } }));
    renameSync(`${data}.new`, data);
    await waitFor(() => seen.some((event) => event.changed));
    expect(holder.current().decide(input()).approval).toEqual({ required: true, quorum: 1, reason: 'demo__read_file is a high-risk tool' });
  });

  it('keeps the old module when the new file is not a policy', async () => {
    const holder = await open({ source: { kind: 'wasm', path: wasm, dataFile: data }, log: capturingLogger().log, watch: false });
    const revision = holder.revision;
    const good = readFileSync(wasm);
    writeFileSync(wasm, 'not wasm');
    try {
      const event = await holder.reload();
      expect(event).toMatchObject({ ok: false, revision });
      expect(event.error).toMatch(/not a loadable OPA WASM module/);
      writeFileSync(data, '[1, 2]');
      writeFileSync(wasm, good);
      expect((await holder.reload()).error).toMatch(/data .* must be a JSON object/);
      expect(holder.current().decide(input()).allow).toBe(true);
    } finally {
      writeFileSync(wasm, good);
      writeFileSync(data, '{}');
    }
  });

  it('will not pretend a bare module is signed', async () => {
    await expect(
      PolicyHolder.open({ source: { kind: 'wasm', path: wasm }, log: capturingLogger().log, verification: { required: true } }),
    ).rejects.toThrow(/signatures are required.*bare wasm file/);
  });
});
