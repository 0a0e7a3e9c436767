/**
 * External data for the policy: passed to the WASM module with setData,
 * part of the revision, kept across the fresh instance made after an
 * abort, and refused at load when it is not a JSON object.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createPolicyEngine, loadPolicy } from '../../broker/policy/engine.ts';
import { PolicyHolder } from '../../broker/policy/holder.ts';
import { capturingLogger, COMPILED, compileRego, copyDefaultPolicy, input, tempDir } from './helpers.ts';

const { dir: work, cleanup } = tempDir('bastion-data-');
afterAll(cleanup);

const wasm = readFileSync(COMPILED);
const data = (value: unknown) => Buffer.from(JSON.stringify(value));

describe('data.bastion.tool_risk', () => {
  it('overrides the risk the broker derived, in both directions', async () => {
    const engine = await createPolicyEngine({
      wasm,
      data: data({ bastion: { tool_risk: { demo__read_file: 'high', demo__delete_file: 'low' } } }),
      source: 'test',
    });
    expect(engine.decide(input()).approval).toEqual({ required: true, quorum: 1, reason: 'demo__read_file is a high-risk tool' });
    expect(engine.decide(input({ tool: 'demo__delete_file', risk: 'high' })).approval.required).toBe(false);
    expect(engine.decide(input({ tool: 'demo__other', risk: 'high' })).approval.required).toBe(true);
  });

  it('treats an unknown risk level from data as high', async () => {
    const engine = await createPolicyEngine({ wasm, data: data({ bastion: { tool_risk: { demo__read_file: 'none' } } }), source: 'test' });
    expect(engine.decide(input()).approval.reason).toBe('demo__read_file has an unrecognised risk level and is treated as high-risk');
  });

  it('comes from the data.json of a Rego directory, as opa build merges it', async () => {
    const dir = path.join(work, 'rego');
    copyDefaultPolicy(dir);
    // A tool the directory's own tests do not use, so they still pass with this data.
    writeFileSync(path.join(dir, 'data.json'), JSON.stringify({ bastion: { tool_risk: { crm__export_contacts: 'high' } } }));
    const holder = await PolicyHolder.open({ source: { kind: 'rego', dir }, log: capturingLogger().log, watch: false });
    try {
      expect(holder.current().decide(input({ tool: 'crm__export_contacts' })).approval.required).toBe(true);
      expect(holder.current().decide(input()).approval.required).toBe(false);
    } finally {
      await holder.close();
    }
  });
});

describe('data and the engine', () => {
  it('is part of the revision; empty data is no data', async () => {
    const bare = await loadPolicy(COMPILED);
    const empty = await createPolicyEngine({ wasm, data: data({}), source: 'test' });
    const a = await createPolicyEngine({ wasm, data: data({ bastion: { tool_risk: { x: 'low' } } }), source: 'test' });
    const b = await createPolicyEngine({ wasm, data: data({ bastion: { tool_risk: { x: 'high' } } }), source: 'test' });
    expect(empty.revision).toBe(bare.revision);
    expect(new Set([bare.revision, a.revision, b.revision]).size).toBe(3);
  });

  it('survives the fresh instance made after an evaluation aborts', async () => {
    const VALID = '{"allow": true, "approval": {"required": false, "quorum": 1, "reason": ""}, "reasons": [data.bastion.message], "obligations": {"redact": [], "max_result_bytes": 1}}';
    const module = compileRego(
      work,
      'abort',
      `package bastion\n\ndecision := ${VALID} if input.tool.name == "ok"\n\ndecision := 1 if input.tool.name == "boom"\n\ndecision := 2 if input.tool.name == "boom"\n`,
    );
    const engine = await createPolicyEngine({ wasm: module, data: data({ bastion: { message: 'from data' } }), source: 'abort' });
    expect(engine.decide(input({ tool: 'ok' })).reasons).toEqual(['from data']);
    expect(() => engine.decide(input({ tool: 'boom' }))).toThrow(/policy evaluation failed/);
    expect(engine.decide(input({ tool: 'ok' })).reasons).toEqual(['from data']);
  });

  it.each([
    ['not JSON', Buffer.from('{"bastion":')],
    ['an array', data([1, 2])],
    ['a string', data('bastion')],
  ])('refuses data that is %s at load', async (_what, bytes) => {
    await expect(createPolicyEngine({ wasm, data: bytes, source: 'bad-data' })).rejects.toThrow(/policy data for bad-data/);
  });

  it('denies an input over the size limit before evaluating it', async () => {
    const engine = await createPolicyEngine({ wasm, source: 'test' }, { maxInputBytes: 4096 });
    expect(engine.decide(input({ args: { x: 'a'.repeat(1000) } })).allow).toBe(true);
    expect(() => engine.decide(input({ args: { x: 'a'.repeat(5000) } }))).toThrow(/exceeds the 4096-byte limit/);
  });

  it('counts the size in UTF-8 bytes, not characters', async () => {
    const engine = await createPolicyEngine({ wasm, source: 'test' }, { maxInputBytes: 4096 });
    // 1,500 characters, 4,500 bytes: under the limit as text, over it as UTF-8.
    expect(() => engine.decideTrusted(input({ args: { x: '\u20ac'.repeat(1500) } }))).toThrow(/input of \d+ bytes exceeds the 4096-byte limit/);
    expect(engine.decideTrusted(input({ args: { x: '\u20ac'.repeat(1000) } })).allow).toBe(true);
  });

  it('gives the same decisions with and without validating the input, across memory growth', async () => {
    const engine = await createPolicyEngine({ wasm, source: 'test' }, { maxInputBytes: 16 * 1024 * 1024 });
    const cases = [input(), input({ tool: 'nope' }), input({ args: { x: 'y'.repeat(1024 * 1024) } }), input({ args: { x: 'z' } })];
    for (const each of cases) expect(engine.decideTrusted(each)).toEqual(engine.decide(each));
  });

  it('denies when the input does not fit the memory cap, and recovers', async () => {
    const engine = await createPolicyEngine({ wasm, source: 'test' }, { maxMemoryPages: 16, maxInputBytes: 16 * 1024 * 1024 });
    expect(() => engine.decide(input({ args: { x: 'a'.repeat(2 * 1024 * 1024) } }))).toThrow(/policy evaluation failed/);
    expect(engine.decide(input()).allow).toBe(true);
  });
});
