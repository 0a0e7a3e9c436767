/**
 * Attenuated delegation: a delegated token can never do what its parent
 * could not. A property test checks this against the real compiled policy;
 * end-to-end tests drive POST /token/delegate on a real broker.
 */
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeJwt } from 'jose';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { attenuationProblem, globCovers } from '../../broker/auth/attenuate.ts';
import { loadPolicy, type PolicyEngine } from '../../broker/policy/engine.ts';
import type { Capability, Constraint, PolicyInput } from '../../broker/policy/schema.ts';
import { ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { MCP_HEADERS } from '../helpers/http.ts';

describe('glob inclusion', () => {
  it.each([
    ['*', 'fs__read_file', true],
    ['fs__*', 'fs__read_*', true],
    ['fs__read_*', 'fs__*', false],
    ['fs__read_file', 'fs__read_file', true],
    ['fs__read_file', 'fs__read_*', false],
    ['*_file', 'fs__*_file', true],
    ['a*b', 'a*', false],
    ['a*', 'a*b*', true],
  ])('%s covers %s: %s', (parent, child, expected) => {
    expect(globCovers(parent, child)).toBe(expected);
  });
});

describe('property: a delegated token is never able to call a tool or argument its parent could not', () => {
  let policy: PolicyEngine;
  beforeAll(async () => {
    policy = await loadPolicy(path.join(ROOT, 'policies/compiled/policy.wasm'));
  });

  const tools = ['fs__read_file', 'fs__write_file', 'fs__delete', 'pay__refund', 'pay__charge'];
  const globs = [...tools, 'fs__*', 'pay__*', '*', 'fs__read_*', '*_file', 'pay__re*'];
  const paths = ['/srv', '/srv/', '/srv/app', '/srv/app/', '/etc', '/srv/app/x'];
  const constraint: fc.Arbitrary<Constraint> = fc.oneof(
    fc.record({ path_prefix: fc.constantFrom(...paths) }),
    fc.record({ min: fc.integer({ min: -10, max: 100 }) }),
    fc.record({ max: fc.integer({ min: -10, max: 100 }) }),
    fc.record({ min: fc.integer({ min: 0, max: 50 }), max: fc.integer({ min: 50, max: 100 }) }),
    fc.record({ enum: fc.uniqueArray(fc.constantFrom('EUR', 'USD', 'GBP'), { minLength: 1 }) }),
    fc.record({ eq: fc.constantFrom('EUR', 7) }),
    fc.record({ prefix: fc.constantFrom('/srv', '/srv/a', 'E') }),
    fc.record({ max_length: fc.integer({ min: 0, max: 12 }) }),
    fc.record({ pattern: fc.constantFrom('[a-z/]+', '/srv/.*') }),
  );
  const capability: fc.Arbitrary<Capability> = fc.record(
    {
      tool: fc.constantFrom(...globs),
      args: fc.dictionary(fc.constantFrom('path', 'amount', 'currency'), constraint, { maxKeys: 2 }),
    },
    { requiredKeys: ['tool'] },
  );
  const argValue = fc.oneof(
    fc.constantFrom(...paths, '/srv/app/../../etc/passwd', '/srv//x', '/srv-x', 'EUR', 'USD', 'GBP', 'abc'),
    fc.integer({ min: -20, max: 120 }),
  );
  const call = fc.record({
    tool: fc.constantFrom(...tools),
    args: fc.dictionary(fc.constantFrom('path', 'amount', 'currency'), argValue, { maxKeys: 3 }),
  });

  const allows = (cap: Capability[], c: { tool: string; args: Record<string, unknown> }) => {
    const input: PolicyInput = {
      version: 1,
      principal: { sub: 's', iss: 'i', act: [], cap, anonymous: false },
      tool: { name: c.tool, connector: c.tool.split('__')[0]!, risk: 'low', descriptor_hash: 'sha256:x' },
      arguments: c.args as PolicyInput['arguments'],
      context: { time: '2026-11-24T10:00:00.000Z', transport: 'http', session: 's', method: 'tools/call' },
    };
    return policy.decide(input).allow;
  };

  it('holds for random parents, requests and calls (evaluated by the compiled Rego)', () => {
    let accepted = 0;
    fc.assert(
      fc.property(fc.array(capability, { minLength: 1, maxLength: 3 }), fc.array(capability, { minLength: 1, maxLength: 3 }), fc.array(call, { minLength: 1, maxLength: 8 }), (parent, child, calls) => {
        if (attenuationProblem(parent, child) !== undefined) return true;
        accepted++;
        for (const c of calls) {
          if (allows(child, c)) expect(allows(parent, c), `${JSON.stringify({ parent, child, c })}`).toBe(true);
        }
        return true;
      }),
      { numRuns: 1500 },
    );
    // The property is only meaningful if delegation is often accepted.
    expect(accepted).toBeGreaterThan(100);
  });
});

describe('POST /token/delegate', () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker();
  });
  afterAll(async () => {
    await t?.close();
  });

  async function delegateWith(token: string, body: unknown) {
    const response = await fetch(new URL('/token/delegate', t.url), { method: 'POST', headers: { ...MCP_HEADERS, authorization: `Bearer ${token}` }, body: JSON.stringify(body) });
    return { status: response.status, body: (await response.json()) as Record<string, any> };
  }

  it('mints a narrower, shorter-lived token that records the chain and works only within its grant', async () => {
    const parent = await t.mint({ sub: 'agent:parent', cap: [{ tool: 'rec__*' }], ttlMs: 300_000 });
    const { status, body } = await delegateWith(parent, { sub: 'agent:child', cap: [{ tool: 'rec__transfer', args: { amount: { max: 10 } } }], ttl: '1m' });
    expect(status).toBe(200);
    const child = body.access_token as string;
    const claims = decodeJwt(child);
    expect(claims.act).toEqual({ sub: 'agent:parent' });
    expect(claims.exp! - claims.iat!).toBeLessThanOrEqual(60);
    expect(claims.exp!).toBeLessThanOrEqual(decodeJwt(parent).exp!);

    const client = await t.connect(child);
    const { tools } = await client.listTools();
    expect(tools.map((tool) => tool.name)).toEqual(['rec__transfer']);
    const ok = (await client.callTool({ name: 'rec__transfer', arguments: { amount: 5, to: 'bob' } })) as CallToolResult;
    expect(ok.isError).toBeFalsy();
    const over = (await client.callTool({ name: 'rec__transfer', arguments: { amount: 50, to: 'bob' } })) as CallToolResult;
    expect(over._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_POLICY_DENIED' });
    const other = (await client.callTool({ name: 'rec__echo', arguments: { text: 'x' } })) as CallToolResult;
    expect(other._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_POLICY_DENIED' });
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:child' && r.tool === 'rec__transfer');
    expect(record?.principal?.iss).toBe('urn:bastion:delegation');
  });

  it('refuses a capability wider than the parent (tool glob or argument bound)', async () => {
    const parent = await t.mint({ sub: 'agent:narrow', cap: [{ tool: 'rec__transfer', args: { amount: { max: 10 } } }] });
    const wider = await delegateWith(parent, { sub: 'agent:greedy', cap: [{ tool: 'rec__*' }] });
    expect(wider.status).toBe(403);
    expect(wider.body.code).toBe('BASTION_DELEGATION_REFUSED');
    const unbounded = await delegateWith(parent, { sub: 'agent:greedy', cap: [{ tool: 'rec__transfer' }] });
    expect(unbounded.status).toBe(403);
    expect(unbounded.body.error_description).toContain('amount');
    const higher = await delegateWith(parent, { sub: 'agent:greedy', cap: [{ tool: 'rec__transfer', args: { amount: { max: 1000 } } }] });
    expect(higher.status).toBe(403);
    expect((await t.auditRecords()).at(-1)).toMatchObject({ event: 'token/delegate', outcome: 'denied' });
  });

  it('chains: a delegate can delegate further, never wider, and the chain nests', async () => {
    const root = await t.mint({ sub: 'agent:root', cap: [{ tool: 'rec__*' }] });
    const mid = (await delegateWith(root, { sub: 'agent:mid', cap: [{ tool: 'rec__e*' }] })).body.access_token as string;
    const leaf = await delegateWith(mid, { sub: 'agent:leaf', cap: [{ tool: 'rec__echo' }] });
    expect(leaf.status).toBe(200);
    expect(decodeJwt(leaf.body.access_token).act).toEqual({ sub: 'agent:mid', act: { sub: 'agent:root' } });
    const escalate = await delegateWith(mid, { sub: 'agent:leaf', cap: [{ tool: 'rec__transfer' }] });
    expect(escalate.status).toBe(403);
  });

  it('a * holder cannot mint an operator grant (bastion:revoke) by delegation; only the same literal grant covers it', async () => {
    const wildcard = await t.mint({ sub: 'agent:wild-delegator', cap: [{ tool: '*' }] });
    const escalation = await delegateWith(wildcard, { sub: 'agent:fake-operator', cap: [{ tool: 'bastion:revoke' }] });
    expect(escalation.status).toBe(403);
    expect(escalation.body.error_description).toContain('operator grant');
    const operator = await t.mint({ sub: 'operator:ops', cap: [{ tool: 'bastion:revoke' }] });
    expect((await delegateWith(operator, { sub: 'operator:deputy', cap: [{ tool: 'bastion:revoke' }] })).status).toBe(200);
  });

  it('refuses a ttl over the cap and malformed requests', async () => {
    const parent = await t.mint({ sub: 'agent:p2' });
    expect((await delegateWith(parent, { sub: 'agent:c', cap: [{ tool: 'rec__echo' }], ttl: '2h' })).status).toBe(403);
    expect((await delegateWith(parent, { sub: 'agent:c', cap: [] })).status).toBe(403);
    expect((await delegateWith(parent, { sub: 'agent:c', cap: [{ tool: 'rec__echo' }], extra: 1 })).status).toBe(403);
  });

  it('refuses without a valid parent token', async () => {
    const response = await fetch(new URL('/token/delegate', t.url), { method: 'POST', headers: MCP_HEADERS, body: JSON.stringify({ sub: 'x', cap: [{ tool: '*' }] }) });
    expect(response.status).toBe(401);
  });

  it('revoking the parent subject stops its delegates too', async () => {
    const parent = await t.mint({ sub: 'agent:doomed' });
    const child = (await delegateWith(parent, { sub: 'agent:doomed-child', cap: [{ tool: 'rec__echo' }] })).body.access_token as string;
    const admin = await t.mint({ sub: 'operator', cap: [{ tool: 'bastion:revoke' }] });
    const revoked = await fetch(new URL('/admin/revoke', t.url), { method: 'POST', headers: { ...MCP_HEADERS, authorization: `Bearer ${admin}` }, body: JSON.stringify({ sub: 'agent:doomed' }) });
    expect(revoked.status).toBe(200);
    const response = await fetch(t.url, {
      method: 'POST',
      headers: { ...MCP_HEADERS, authorization: `Bearer ${child}` },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }),
    });
    expect(response.status).toBe(401);
    expect(((await response.json()) as { code: string }).code).toBe('BASTION_TOKEN_REVOKED');
  });
});
