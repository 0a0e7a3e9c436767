/**
 * The grants policy adapter against the real compiled policy (policies/grants.rego
 * in policies/compiled/policy.wasm) and against policies built here that fail or
 * answer garbage: every failure is a refusal, never a token.
 * Requires the toolchain (opa on PATH) for the hostile policies.
 */
import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { decideGrant, GrantRefusal, type GrantsInput } from '../../broker/identity/grants.ts';
import { createPolicyEngine, loadPolicy } from '../../broker/policy/engine.ts';
import { COMPILED, compileRego, tempDir } from '../policy/helpers.ts';

const MAX_TTL = 15 * 60_000;

function signIn(groups: string[], overrides: Partial<GrantsInput> = {}): GrantsInput {
  return {
    version: 1,
    identity: { iss: 'https://idp.example', sub: 'alice', email: 'alice@example.com', groups, claims: {} },
    client: { id: 'https://client.example/cimd.json', registration: 'metadata_document' },
    scopes: [],
    grant_type: 'authorization_code',
    context: { time: '2026-01-01T00:00:00.000Z' },
    ...overrides,
  };
}

describe('decideGrant with the default policy', async () => {
  const engine = await loadPolicy(COMPILED);

  it('maps groups to capabilities, with the policy lifetime capped by max_ttl', () => {
    const grant = decideGrant(engine, signIn(['engineering']), MAX_TTL);
    expect(grant.cap).toEqual([{ tool: 'demo__read_file', args: { path: { path_prefix: '/srv/' } } }]);
    expect(grant.ttlMs).toBe(900_000);
    expect(decideGrant(engine, signIn(['engineering']), 60_000).ttlMs).toBe(60_000);
    expect(grant.approval).toEqual({ required: false, reason: '' });
  });

  it('refuses an identity none of whose groups grants anything', () => {
    expect(() => decideGrant(engine, signIn(['marketing']), MAX_TTL)).toThrow(
      expect.objectContaining({ code: 'BASTION_GRANT_DENIED', reason: 'no group of this identity is granted any tool' }),
    );
  });

  it('never grants more for what the client asks', () => {
    const grant = decideGrant(engine, signIn(['engineering'], { scopes: ['*', 'sre', 'demo__*'] }), MAX_TTL);
    expect(grant.cap).toEqual([{ tool: 'demo__read_file', args: { path: { path_prefix: '/srv/' } } }]);
  });

  it.each([
    ['a group that is not a string', { ...signIn([]), identity: { ...signIn([]).identity, groups: [7] } }],
    ['an unknown field', { ...signIn(['sre']), extra: true }],
    ['a missing subject', { ...signIn(['sre']), identity: { iss: 'https://idp.example', groups: ['sre'], claims: {} } }],
    ['an unknown grant type', { ...signIn(['sre']), grant_type: 'password' }],
  ])('refuses malformed input (%s) before evaluation', (_name, input) => {
    expect(() => decideGrant(engine, input as GrantsInput, MAX_TTL)).toThrow(expect.objectContaining({ code: 'BASTION_GRANT_POLICY_ERROR' }));
  });
});

describe('decideGrant with a policy that fails', () => {
  const work = tempDir('bastion-grants-');
  afterAll(work.cleanup);
  const DECISION = `decision := {"allow": false, "approval": {"required": false, "quorum": 1, "reason": ""}, "reasons": [], "obligations": {"redact": [], "max_result_bytes": 1}}`;
  const source = (grants: string) => `package bastion\n\n${DECISION}\n\n${grants}\n`;
  const build = (name: string, grants: string) => createPolicyEngine({ wasm: compileRego(work.dir, name, source(grants)), source: name });
  const buildBoth = (name: string, grants: string) =>
    createPolicyEngine({ wasm: compileRego(work.dir, name, source(grants), { extra: ['-e', 'bastion/grants'] }), source: name });

  it('refuses when the module has no grants entrypoint', async () => {
    const engine = await build('none', '');
    expect(() => decideGrant(engine, signIn(['sre']), MAX_TTL)).toThrow(expect.objectContaining({ code: 'BASTION_GRANT_POLICY_ERROR', reason: expect.stringContaining('has no bastion/grants entrypoint') }));
  });

  it.each([
    ['garbage', `grants := "everything"`, 'grants policy result is malformed'],
    ['an extra field', `grants := {"allow": true, "cap": [{"tool": "*"}], "ttl_s": 60, "approval": {"required": false, "reason": ""}, "reasons": [], "admin": true}`, 'grants policy result is malformed'],
    ['a malformed capability', `grants := {"allow": true, "cap": [{"tool": ""}], "ttl_s": 60, "approval": {"required": false, "reason": ""}, "reasons": []}`, 'grants policy result is malformed'],
    ['a missing lifetime', `grants := {"allow": true, "cap": [{"tool": "*"}], "approval": {"required": false, "reason": ""}, "reasons": []}`, 'grants policy result is malformed'],
    ["no result", `grants := {"allow": true} if input.never`, 'is undefined for this input'],
    ['conflicting values (a runtime error)', `grants := 1 if input.version == 1\n\ngrants := 2 if input.scopes == []`, 'policy evaluation failed'],
  ])('refuses a policy that answers %s', async (name, grants, reason) => {
    const engine = await buildBoth(name.replace(/\W+/g, '-'), grants);
    let refusal: unknown;
    try {
      decideGrant(engine, signIn(['sre']), MAX_TTL);
    } catch (error) {
      refusal = error;
    }
    expect(refusal).toBeInstanceOf(GrantRefusal);
    expect(refusal).toMatchObject({ code: 'BASTION_GRANT_POLICY_ERROR', reason: expect.stringContaining(reason) });
  });

  it('refuses allow with an empty capability list', async () => {
    const engine = await buildBoth('empty', `grants := {"allow": true, "cap": [], "ttl_s": 60, "approval": {"required": false, "reason": ""}, "reasons": []}`);
    expect(() => decideGrant(engine, signIn(['sre']), MAX_TTL)).toThrow(expect.objectContaining({ code: 'BASTION_GRANT_DENIED' }));
  });
});

it('the committed module carries both entrypoints', async () => {
  const engine = await createPolicyEngine({ wasm: readFileSync(COMPILED), source: COMPILED });
  expect(() => engine.evaluateGrants(signIn(['sre']))).not.toThrow();
});
