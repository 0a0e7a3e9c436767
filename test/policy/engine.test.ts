/**
 * The policy engine against the real compiled policy (policies/compiled/policy.wasm),
 * and against small bad policies compiled here with the real `opa` CLI.
 * Requires the toolchain: bash .ci/toolchain exec npx vitest run test/policy
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPolicy as loadWasmSdk } from '@open-policy-agent/opa-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Denial } from '../../broker/errors.ts';
import { loadPolicy, type PolicyEngine } from '../../broker/policy/engine.ts';
import type { Capability, PolicyInput } from '../../broker/policy/schema.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const WASM = path.join(ROOT, 'policies/compiled/policy.wasm');

function input(overrides: {
  cap?: Capability[];
  tool?: string;
  risk?: PolicyInput['tool']['risk'];
  args?: PolicyInput['arguments'];
  method?: PolicyInput['context']['method'];
} = {}): PolicyInput {
  return {
    version: 1,
    principal: { sub: 'agent:ci-bot', iss: 'https://issuer.example', act: [], cap: overrides.cap ?? [], anonymous: false },
    tool: { name: overrides.tool ?? 'demo__read_file', connector: 'demo', risk: overrides.risk ?? 'low', descriptor_hash: 'sha256:00' },
    arguments: overrides.args ?? {},
    context: { time: '2026-01-01T00:00:00Z', transport: 'http', session: 's-1', method: overrides.method ?? 'tools/call' },
  };
}

function expectPolicyError(run: () => unknown, reason: RegExp): void {
  let thrown: unknown;
  try {
    run();
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(Denial);
  const denial = thrown as Denial;
  expect(denial.stage).toBe('authorize');
  expect(denial.code).toBe('BASTION_POLICY_ERROR');
  expect(denial.reason).toMatch(reason);
}

let engine: PolicyEngine;

beforeAll(async () => {
  engine = await loadPolicy(WASM);
});

describe('default policy', () => {
  it('allows a call a capability covers', () => {
    const decision = engine.decide(
      input({ cap: [{ tool: 'demo__read_*', args: { path: { path_prefix: '/srv/' } } }], args: { path: '/srv/app/config.yaml' } }),
    );
    expect(decision).toEqual({
      allow: true,
      approval: { required: false, quorum: 1, reason: '' },
      reasons: ['capability 0 (demo__read_*) allows demo__read_file'],
      obligations: { redact: [], max_result_bytes: 1048576 },
    });
  });

  it('denies an unnamed tool and says so', () => {
    const decision = engine.decide(input({ cap: [{ tool: 'demo__read_*' }], tool: 'demo__delete_file' }));
    expect(decision.allow).toBe(false);
    expect(decision.reasons).toEqual(['no capability names tool demo__delete_file']);
  });

  it('denies a path traversal, naming the argument and the constraint', () => {
    const decision = engine.decide(
      input({ cap: [{ tool: 'demo__read_file', args: { path: { path_prefix: '/srv/' } } }], args: { path: '/srv/../etc/passwd' } }),
    );
    expect(decision.allow).toBe(false);
    expect(decision.reasons).toEqual([
      "capability 0: argument path: must stay under /srv/ without '..' or '.' segments, '//', backslashes or NUL bytes",
    ]);
  });

  it('denies a missing constrained argument', () => {
    const decision = engine.decide(input({ cap: [{ tool: '*', args: { path: { prefix: '/srv/' } } }], args: {} }));
    expect(decision.allow).toBe(false);
    expect(decision.reasons).toEqual(['capability 0: argument path: missing (this capability constrains it, so it is required)']);
  });

  it('allows a high-risk tool subject to approval', () => {
    const decision = engine.decide(input({ cap: [{ tool: 'demo__delete_file' }], tool: 'demo__delete_file', risk: 'high' }));
    expect(decision.allow).toBe(true);
    expect(decision.approval).toEqual({ required: true, quorum: 1, reason: 'demo__delete_file is a high-risk tool' });
  });

  it('lists a named tool without judging argument constraints', () => {
    const cap: Capability[] = [{ tool: 'demo__read_file', args: { path: { path_prefix: '/srv/' } } }];
    const listed = engine.decide(input({ cap, method: 'tools/list' }));
    expect(listed.allow).toBe(true);
    expect(listed.reasons).toEqual(['capability 0 (demo__read_file) lists demo__read_file']);
    expect(engine.decide(input({ cap, tool: 'demo__delete_file', method: 'tools/list' })).allow).toBe(false);
  });

  // The Rego unit tests run on Go OPA; these pin the same answers in the WASM
  // build, where regex, string and number builtins are separate C code.
  it.each([
    ['glob regex syntax is literal', { tool: 'demo__read.file' }, {}, false],
    ['glob pieces in order', { tool: 'd*o__r*d_f*e' }, {}, true],
    ['newline injection against a pattern', { tool: '*', args: { x: { pattern: '[a-z]+' } } }, { x: 'abc\nrm' }, false],
    ['pattern that would escape its anchors', { tool: '*', args: { x: { pattern: 'a)|(.*' } } }, { x: 'zzz' }, false],
    ['double slash', { tool: '*', args: { x: { path_prefix: '/srv/' } } }, { x: '/srv//x' }, false],
    ['NUL byte in a path', { tool: '*', args: { x: { path_prefix: '/srv/' } } }, { x: '/srv/a\u0000b' }, false],
    ['segment-aware path prefix', { tool: '*', args: { x: { path_prefix: '/srv' } } }, { x: '/srv-secrets/k' }, false],
    ['max_length counts code points', { tool: '*', args: { x: { max_length: 3 } } }, { x: 'äöü' }, true],
    ['amount above max', { tool: '*', args: { x: { min: 0, max: 100 } } }, { x: 100.5 }, false],
    ['enum miss', { tool: '*', args: { x: { enum: ['a', 'b'] } } }, { x: 'c' }, false],
    ['eq on structured values', { tool: '*', args: { x: { eq: { a: [1, null] } } } }, { x: { a: [1, null] } }, true],
  ] satisfies [string, Capability, PolicyInput['arguments'], boolean][])('%s', (_name, cap, args, allow) => {
    expect(engine.decide(input({ cap: [cap], args })).allow).toBe(allow);
  });

  it('renders constraint values in reasons the same way opa test does', () => {
    const decision = engine.decide(
      input({ cap: [{ tool: '*', args: { n: { min: 0.5, max: 1.5 }, s: { enum: ['a', 1, null] } } }], args: { n: 2, s: 'z' } }),
    );
    expect(decision.reasons).toEqual(['capability 0: argument n: must be a number <= 1.5', 'capability 0: argument s: must be one of ["a",1,null]']);
  });

  it('needs no builtins implemented in JavaScript, so Go OPA and the broker run the same code', async () => {
    const sdk = await loadWasmSdk(readFileSync(WASM));
    const exports = (sdk.wasmInstance as unknown as { exports: Record<string, (addr?: number) => number> }).exports;
    const start = exports.opa_json_dump!(exports.builtins!());
    const memory = new Uint8Array(sdk.mem.buffer);
    let end = start;
    while (memory[end] !== 0) end++;
    expect(JSON.parse(new TextDecoder().decode(memory.subarray(start, end)))).toEqual({});
  });

  it('reports its revision as the sha256 of the wasm file', () => {
    expect(engine.revision).toBe(`sha256:${createHash('sha256').update(readFileSync(WASM)).digest('hex')}`);
  });
});

describe('malformed input fails closed', () => {
  it('refuses a missing field', () => {
    const { context: _context, ...rest } = input({ cap: [{ tool: '*' }] });
    expectPolicyError(() => engine.decide(rest as PolicyInput), /^invalid policy input: context: /);
  });

  it('refuses a field of the wrong type', () => {
    const bad = { ...input({ cap: [{ tool: '*' }] }), arguments: ['not', 'an', 'object'] };
    expectPolicyError(() => engine.decide(bad as unknown as PolicyInput), /^invalid policy input: arguments: /);
  });

  it('refuses an unknown risk level instead of guessing', () => {
    const good = input({ cap: [{ tool: '*' }] });
    const bad = { ...good, tool: { ...good.tool, risk: 'extreme' } };
    expectPolicyError(() => engine.decide(bad as unknown as PolicyInput), /^invalid policy input: tool\.risk: /);
  });

  it('refuses unknown keys', () => {
    const bad = { ...input(), extra: true };
    expectPolicyError(() => engine.decide(bad as PolicyInput), /^invalid policy input: \(root\): /);
  });

  it('refuses a malformed capability', () => {
    const bad = input({ cap: [{ tool: '*', args: { x: {} } }] });
    expectPolicyError(() => engine.decide(bad), /^invalid policy input: principal\.cap\.0\.args\.x: /);
  });

  it('refuses arguments nested too deeply to validate', () => {
    let nested: PolicyInput['arguments'][string] = [];
    for (let depth = 0; depth < 200_000; depth++) nested = [nested];
    expectPolicyError(() => engine.decide(input({ cap: [{ tool: '*' }], args: { x: nested } })), /^invalid policy input: /);
  });

  it('refuses values JSON cannot carry', () => {
    expectPolicyError(() => engine.decide(input({ cap: [{ tool: '*' }], args: { n: Number.NaN } })), /^invalid policy input: arguments\.n: /);
  });
});

describe('bad policies fail closed', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'bastion-policy-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Compiles Rego source with the real opa CLI into a policy.wasm; returns its path. */
  function compile(name: string, rego: string, entrypoint = 'bastion/decision'): string {
    const src = path.join(dir, name);
    execFileSync('mkdir', ['-p', src]);
    writeFileSync(path.join(src, 'policy.rego'), rego);
    const bundle = path.join(dir, `${name}.tar.gz`);
    execFileSync('opa', ['build', '-t', 'wasm', '-e', entrypoint, '-o', bundle, src], { stdio: 'pipe' });
    const wasm = path.join(dir, `${name}.wasm`);
    writeFileSync(wasm, execFileSync('tar', ['-xzPf', bundle, '-O', '/policy.wasm']));
    return wasm;
  }

  const VALID = '{"allow": true, "approval": {"required": false, "quorum": 1, "reason": ""}, "reasons": [], "obligations": {"redact": [], "max_result_bytes": 1}}';

  it('denies when the decision lacks a field', async () => {
    const bad = await loadPolicy(
      compile('no-approval', 'package bastion\n\ndecision := {"allow": true, "reasons": [], "obligations": {"redact": [], "max_result_bytes": 1}}\n'),
    );
    expectPolicyError(() => bad.decide(input()), /^policy decision is malformed: approval: /);
  });

  it('denies when the decision has a field of the wrong type', async () => {
    const bad = await loadPolicy(compile('string-allow', `package bastion\n\ndecision := object.union(${VALID}, {"allow": "yes"})\n`));
    expectPolicyError(() => bad.decide(input()), /^policy decision is malformed: allow: /);
  });

  it('denies an obligation the broker does not know', async () => {
    const bad = await loadPolicy(
      compile('extra-obligation', `package bastion\n\ndecision := object.union(${VALID}, {"obligations": {"redact": [], "max_result_bytes": 1, "notify": "x"}})\n`),
    );
    expectPolicyError(() => bad.decide(input()), /^policy decision is malformed: obligations: /);
  });

  it('denies when the policy produces no decision', async () => {
    const bad = await loadPolicy(compile('undefined', `package bastion\n\ndecision := ${VALID} if input.version == 99\n`));
    expectPolicyError(() => bad.decide(input()), /^policy produced no decision/);
  });

  it('denies when evaluation aborts, and keeps working afterwards', async () => {
    // Two values for one complete rule is a runtime conflict: the WASM module aborts.
    const engineWithConflict = await loadPolicy(
      compile(
        'conflict',
        `package bastion\n\ndecision := ${VALID} if input.tool.name == "ok"\n\ndecision := 1 if input.tool.name == "boom"\n\ndecision := 2 if input.tool.name == "boom"\n`,
      ),
    );
    expectPolicyError(() => engineWithConflict.decide(input({ tool: 'boom' })), /^policy evaluation failed: .*conflict/);
    expect(engineWithConflict.decide(input({ tool: 'ok' })).allow).toBe(true);
    expectPolicyError(() => engineWithConflict.decide(input({ tool: 'boom' })), /^policy evaluation failed: /);
    expect(engineWithConflict.decide(input({ tool: 'ok' })).allow).toBe(true);
  });

  it('refuses at load a module without the bastion/decision entrypoint', async () => {
    const wasm = compile('other-entrypoint', `package other\n\nanswer := ${VALID}\n`, 'other/answer');
    await expect(loadPolicy(wasm)).rejects.toThrow(/has no bastion\/decision entrypoint \(found: other\/answer\)/);
  });

  it('refuses at load a file that is not WebAssembly', async () => {
    const file = path.join(dir, 'not.wasm');
    writeFileSync(file, 'package bastion\n');
    await expect(loadPolicy(file)).rejects.toThrow(/is not a loadable OPA WASM module/);
  });
});
