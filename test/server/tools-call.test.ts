/**
 * tools/call end to end: a real SDK client over Streamable HTTP, the real
 * front door, token verifier, compiled policy and a real stdio upstream.
 * Every refusal must name its stage and code, leave the upstream untouched
 * and leave an audit record.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { base64url, generateKeyPair, importJWK, SignJWT } from 'jose';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { mintToken } from '../../broker/auth/mint.ts';
import { readJwksFile } from '../../broker/auth/keys.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { openSession, post, toolCall } from '../helpers/http.ts';

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker();
});
afterAll(async () => {
  await t?.close();
});

function denialOf(result: CallToolResult): { stage: string; code: string; reason: string } {
  expect(result.isError).toBe(true);
  return result._meta?.['bastion/denial'] as { stage: string; code: string; reason: string };
}

describe('allowed calls', () => {
  it('returns the upstream result and audits it', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:allowed' }));
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'hello' } })) as CallToolResult;
    expect(result.isError).toBeFalsy();
    expect(result.content).toEqual([{ type: 'text', text: 'echo: hello' }]);
    expect((await t.upstreamCalls()).filter((c) => c.args.text === 'hello')).toHaveLength(1);
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:allowed' && r.event === 'tools/call');
    expect(record).toMatchObject({ tool: 'rec__echo', outcome: 'ok', decision: { allow: true } });
    expect(record?.args_hash).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(JSON.stringify(record)).not.toContain('hello'); // arguments are hashed, never stored
  });

  it('lists only the tools the token names', async () => {
    const client = await t.connect(await t.mint({ cap: [{ tool: 'rec__echo' }, { tool: 'rec__tr*' }] }));
    const { tools } = await client.listTools();
    expect(tools.map((tool) => tool.name).sort()).toEqual(['rec__echo', 'rec__transfer']);
  });

  it('relays progress notifications from the upstream', async () => {
    const client = await t.connect(await t.mint());
    const seen: number[] = [];
    const result = await client.callTool({ name: 'rec__progress', arguments: { steps: 3 } }, {
      onprogress: (p) => seen.push(p.progress),
    });
    expect(result.isError).toBeFalsy();
    expect(seen).toEqual([1, 2, 3]);
  });
});

describe('refused by policy or resolution (upstream never called)', () => {
  async function refusedCall(cap: { tool: string; args?: Record<string, unknown> }[], name: string, args: Record<string, unknown>) {
    const sub = `agent:refused-${Math.random().toString(36).slice(2)}`;
    const client = await t.connect(await t.mint({ sub, cap: cap as never }));
    const before = (await t.upstreamCalls()).length;
    const outcome = await client.callTool({ name, arguments: args }).then(
      (result) => ({ result: result as CallToolResult, error: undefined }),
      (error: Error & { code?: number; data?: unknown }) => ({ result: undefined, error }),
    );
    expect((await t.upstreamCalls()).length).toBe(before);
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === sub && r.event === 'tools/call');
    return { ...outcome, record };
  }

  it('unknown tool: a protocol error, distinct from a policy denial', async () => {
    const { error, record } = await refusedCall([{ tool: '*' }], 'rec__nope', {});
    expect(error?.code).toBe(-32602);
    expect(error?.message).toContain('Unknown tool: rec__nope');
    expect(error?.data).toMatchObject({ stage: 'resolve', code: 'BASTION_TOOL_UNKNOWN' });
    expect(record?.denial).toMatchObject({ stage: 'resolve', code: 'BASTION_TOOL_UNKNOWN' });
  });

  it('missing capability', async () => {
    const { result, record } = await refusedCall([{ tool: 'rec__echo' }], 'rec__transfer', { amount: 1, to: 'x' });
    const denial = denialOf(result!);
    expect(denial).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });
    expect(denial.reason).toContain('rec__transfer');
    expect(record?.denial?.code).toBe('BASTION_POLICY_DENIED');
  });

  it('argument outside its constraint', async () => {
    const { result, record } = await refusedCall(
      [{ tool: 'rec__transfer', args: { amount: { max: 100 } } }],
      'rec__transfer',
      { amount: 5000, to: 'mallory' },
    );
    const denial = denialOf(result!);
    expect(denial.code).toBe('BASTION_POLICY_DENIED');
    expect(denial.reason).toContain('amount');
    expect(record?.decision).toMatchObject({ allow: false });
  });

  it('a high-risk tool needs approval; with approvals disabled that is a refusal, never an allow (fail closed)', async () => {
    const closed = await startTestBroker({ approvals: { enabled: false } });
    try {
      const sub = 'agent:no-approvals';
      const client = await closed.connect(await closed.mint({ sub, cap: [{ tool: 'rec__wipe' }] }));
      const result = (await client.callTool({ name: 'rec__wipe', arguments: {} })) as CallToolResult;
      expect(denialOf(result)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_REQUIRED' });
      expect(await closed.upstreamCalls()).toEqual([]);
      const record = (await closed.auditRecords()).find((r) => r.principal?.sub === sub && r.event === 'tools/call');
      expect(record?.decision).toMatchObject({ allow: true, approval_required: true });
    } finally {
      await closed.close();
    }
  });

  it('a result larger than the policy cap is withheld', async () => {
    const sub = 'agent:big';
    const client = await t.connect(await t.mint({ sub }));
    const result = (await client.callTool({ name: 'rec__big', arguments: { bytes: 2_000_000 } })) as CallToolResult;
    expect(denialOf(result)).toMatchObject({ stage: 'filter', code: 'BASTION_RESULT_TOO_LARGE' });
    expect(JSON.stringify(result).length).toBeLessThan(10_000);
  });
});

describe('refused at authentication (HTTP 401, upstream never called, audited)', () => {
  let sessionId: string;
  let devKid: string;

  beforeAll(async () => {
    sessionId = await openSession(t.url, await t.mint({ sub: 'agent:session-owner' }));
    devKid = t.broker.devKey!.privateJwk.kid!;
  });

  const payload = () => {
    const now = Math.floor(Date.now() / 1000);
    return { iss: t.broker.devKey!.issuer, sub: 'agent:session-owner', aud: t.door.resource, iat: now, exp: now + 300, jti: crypto.randomUUID(), cap: [{ tool: '*' }] };
  };
  const unsigned = (header: object, body: object, signature = '') =>
    `${base64url.encode(JSON.stringify(header))}.${base64url.encode(JSON.stringify(body))}.${signature}`;

  async function expectRefused(token: string, code: string) {
    const before = (await t.upstreamCalls()).length;
    const marker = `marker-${Math.random().toString(36).slice(2)}`;
    const response = await post(t.url, toolCall('rec__echo', { text: marker }), {
      authorization: `Bearer ${token}`,
      'mcp-session-id': sessionId,
    });
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toMatch(/^Bearer /);
    expect(response.json).toMatchObject({ code, stage: 'authenticate' });
    expect(response.json.error_description).toEqual(expect.any(String));
    expect((await t.upstreamCalls()).length).toBe(before);
    const records = await t.auditRecords();
    expect(records.at(-1)).toMatchObject({ outcome: 'denied', tool: 'rec__echo', denial: { stage: 'authenticate', code } });
  }

  it('no token', async () => {
    const response = await post(t.url, toolCall('rec__echo', { text: 'x' }), { 'mcp-session-id': sessionId });
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toBe(
      `Bearer realm="bastion", resource_metadata="${new URL(t.url).origin}/.well-known/oauth-protected-resource/mcp"`,
    );
    expect((await t.auditRecords()).at(-1)?.denial?.code).toBe('BASTION_TOKEN_MISSING');
  });

  it('expired token', async () => {
    const key = t.broker.devKey!;
    const token = await mintToken({ key: key.privateJwk, issuer: key.issuer, audience: t.door.resource, sub: 'agent:session-owner', cap: [{ tool: '*' }], ttlMs: 60_000, now: Date.now() - 10 * 60_000 });
    await expectRefused(token, 'BASTION_TOKEN_EXPIRED');
  });

  it('wrong audience', async () => {
    const key = t.broker.devKey!;
    const token = await mintToken({ key: key.privateJwk, issuer: key.issuer, audience: 'http://other-broker.example/mcp', sub: 'agent:session-owner', cap: [{ tool: '*' }], ttlMs: 60_000 });
    await expectRefused(token, 'BASTION_TOKEN_AUDIENCE_INVALID');
  });

  it('an audience array that merely contains ours', async () => {
    const key = await importJWK(t.broker.devKey!.privateJwk, 'EdDSA');
    const token = await new SignJWT({ ...payload(), aud: [t.door.resource, 'http://other.example'] })
      .setProtectedHeader({ alg: 'EdDSA', typ: 'bastion-cap+jwt', kid: devKid })
      .sign(key);
    await expectRefused(token, 'BASTION_TOKEN_AUDIENCE_INVALID');
  });

  it('wrong issuer (a key nobody trusts)', async () => {
    const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const token = await new SignJWT({ ...payload(), iss: 'https://evil.example' })
      .setProtectedHeader({ alg: 'EdDSA', typ: 'bastion-cap+jwt', kid: 'evil' })
      .sign(privateKey);
    await expectRefused(token, 'BASTION_TOKEN_ISSUER_UNTRUSTED');
  });

  it('the trusted issuer name signed with another key under the trusted kid', async () => {
    const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const token = await new SignJWT(payload()).setProtectedHeader({ alg: 'EdDSA', typ: 'bastion-cap+jwt', kid: devKid }).sign(privateKey);
    await expectRefused(token, 'BASTION_TOKEN_SIGNATURE_INVALID');
  });

  it('alg: none', async () => {
    await expectRefused(unsigned({ alg: 'none', typ: 'bastion-cap+jwt', kid: devKid }, payload()), 'BASTION_TOKEN_ALG_REFUSED');
  });

  it('HS256 signed with the public key as the secret', async () => {
    const jwks = await readJwksFile(t.broker.devKey!.jwksFile);
    const publicJwk = jwks.keys[0]!;
    for (const secret of [JSON.stringify(publicJwk), publicJwk.x!]) {
      const token = await new SignJWT(payload())
        .setProtectedHeader({ alg: 'HS256', typ: 'bastion-cap+jwt', kid: devKid })
        .sign(new TextEncoder().encode(secret));
      await expectRefused(token, 'BASTION_TOKEN_ALG_REFUSED');
    }
  });

  it('tampered signature', async () => {
    const token = await t.mint({ sub: 'agent:session-owner' });
    const [h, p, s] = token.split('.') as [string, string, string];
    const flipped = `${s.slice(0, 10)}${s[10] === 'A' ? 'B' : 'A'}${s.slice(11)}`;
    await expectRefused(`${h}.${p}.${flipped}`, 'BASTION_TOKEN_SIGNATURE_INVALID');
  });

  it('tampered payload (capabilities widened after signing)', async () => {
    const token = await t.mint({ sub: 'agent:session-owner', cap: [{ tool: 'rec__nothing' }] });
    const [h, , s] = token.split('.') as [string, string, string];
    await expectRefused(`${h}.${base64url.encode(JSON.stringify(payload()))}.${s}`, 'BASTION_TOKEN_SIGNATURE_INVALID');
  });

  it('a valid token of another principal cannot drive this session', async () => {
    const response = await post(t.url, toolCall('rec__echo', { text: 'hijack' }), {
      authorization: `Bearer ${await t.mint({ sub: 'agent:intruder' })}`,
      'mcp-session-id': sessionId,
    });
    expect(response.status).toBe(403);
    expect((await t.upstreamCalls()).some((c) => c.args.text === 'hijack')).toBe(false);
  });

  it('the legitimate owner still gets through afterwards', async () => {
    const response = await post(t.url, toolCall('rec__echo', { text: 'owner-ok' }), {
      authorization: `Bearer ${await t.mint({ sub: 'agent:session-owner' })}`,
      'mcp-session-id': sessionId,
    });
    expect(response.status).toBe(200);
    expect(response.json.result.content[0].text).toBe('echo: owner-ok');
  });
});

describe('refused at the front door (audited too)', () => {
  it('a foreign Origin, a malformed body and an unknown session each leave an audit record', async () => {
    const token = await t.mint({ sub: 'agent:front-door' });
    const foreign = await post(t.url, toolCall('rec__echo', { text: 'x' }), { authorization: `Bearer ${token}`, origin: 'http://evil.example' });
    expect(foreign.status).toBe(403);
    expect((await t.auditRecords()).at(-1)).toMatchObject({ outcome: 'denied', denial: { stage: 'admit', code: 'BASTION_ORIGIN_REFUSED' } });
    const malformed = await post(t.url, '{"jsonrpc": "2.0", "id": 1, "method": ', { authorization: `Bearer ${token}` });
    expect(malformed.status).toBe(400);
    expect((await t.auditRecords()).at(-1)).toMatchObject({ denial: { stage: 'admit', code: 'BASTION_REQUEST_INVALID' } });
    const unknown = await post(t.url, toolCall('rec__echo', { text: 'x' }), { authorization: `Bearer ${token}`, 'mcp-session-id': 'no-such-session' });
    expect(unknown.status).toBe(404);
    expect((await t.auditRecords()).at(-1)).toMatchObject({ tool: 'rec__echo', denial: { stage: 'admit', code: 'BASTION_SESSION_INVALID' } });
  });
});
