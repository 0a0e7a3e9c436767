/**
 * The token layer end to end, as an attacker meets it: every row is a real
 * HTTP request to a real broker, asserting the exact refusal, that the
 * upstream never ran, and that the refusal was audited.
 */
import { createPrivateKey, sign as cryptoSign } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { base64url, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { dpopFetch, generateDpopKey, signDpopProof, type DpopKey } from '../../broker/auth/dpop-client.ts';
import { mintToken } from '../../broker/auth/mint.ts';
import { readJwksFile } from '../../broker/auth/keys.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { MCP_HEADERS, post, toolCall } from '../helpers/http.ts';

let t: TestBroker;
let devKey: JWK;
let kid: string;
/** A local server standing in for "elsewhere": any fetch to it is counted. */
let elsewhere: Server;
let elsewhereHits = 0;
let elsewhereUrl: string;

beforeAll(async () => {
  t = await startTestBroker();
  devKey = t.broker.devKey!.privateJwk;
  kid = devKey.kid!;
  elsewhere = createServer((_req, res) => {
    elsewhereHits++;
    res.end('{"keys":[]}');
  });
  await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
  elsewhereUrl = `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/jwks.json`;
});
afterAll(async () => {
  await t?.close();
  await new Promise((resolve) => elsewhere?.close(resolve));
});

const nowS = () => Math.floor(Date.now() / 1000);
const claims = (over: Record<string, unknown> = {}) => ({
  iss: t.broker.devKey!.issuer,
  sub: 'agent:table',
  aud: t.door.resource,
  iat: nowS(),
  exp: nowS() + 120,
  jti: crypto.randomUUID(),
  cap: [{ tool: 'rec__*' }],
  ...over,
});
async function signed(payload: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  const key = await importJWK(devKey, 'EdDSA');
  return new SignJWT(payload).setProtectedHeader({ alg: 'EdDSA', typ: 'bastion-cap+jwt', kid, ...header } as never).sign(key);
}
/** Signs any header, even ones jose refuses to produce (e.g. unknown crit). */
function signRaw(header: object, payload: object): string {
  const input = `${base64url.encode(JSON.stringify(header))}.${base64url.encode(JSON.stringify(payload))}`;
  const signature = cryptoSign(null, Buffer.from(input), createPrivateKey({ key: devKey as import('node:crypto').JsonWebKey, format: 'jwk' }));
  return `${input}.${base64url.encode(signature)}`;
}
const raw = (header: object, payload: object, signature = 'c2ln') =>
  `${base64url.encode(JSON.stringify(header))}.${base64url.encode(JSON.stringify(payload))}.${signature}`;

/** Initializes with `token` (+ headers) and expects the exact refusal; nothing may reach the upstream. */
async function expectRefused(token: string, code: string, headers: Record<string, string> = {}) {
  const before = (await t.upstreamCalls()).length;
  const marker = crypto.randomUUID();
  const response = await post(t.url, toolCall('rec__echo', { text: marker }), { authorization: `Bearer ${token}`, 'mcp-session-id': 'none', ...headers });
  expect(response.status, response.text).toBe(401);
  expect(response.json.code).toBe(code);
  expect(response.headers.get('www-authenticate')).toContain('resource_metadata=');
  expect((await t.upstreamCalls()).length).toBe(before);
  const last = (await t.auditRecords()).at(-1);
  expect(last).toMatchObject({ outcome: 'denied', tool: 'rec__echo', denial: { stage: 'authenticate', code } });
}

async function connect(token: string, options: { dpop?: DpopKey; scheme?: string } = {}): Promise<Client> {
  const client = new Client({ name: 'tokens-test', version: '1' });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(t.url), {
      requestInit: { headers: { Authorization: `${options.scheme ?? 'Bearer'} ${token}` } },
      ...(options.dpop ? { fetch: dpopFetch(options.dpop, token) } : {}),
    }),
  );
  return client;
}

describe('refusal table: the token itself', () => {
  it('alg none', () => expectRefused(raw({ alg: 'none', typ: 'bastion-cap+jwt', kid }, claims(), ''), 'BASTION_TOKEN_ALG_REFUSED'));

  it('HS256 signed with the public key as the secret', async () => {
    const publicJwk = (await readJwksFile(t.broker.devKey!.jwksFile)).keys[0]!;
    const token = await new SignJWT(claims()).setProtectedHeader({ alg: 'HS256', typ: 'bastion-cap+jwt', kid }).sign(new TextEncoder().encode(publicJwk.x!));
    await expectRefused(token, 'BASTION_TOKEN_ALG_REFUSED');
  });

  it('an algorithm outside the allow-list (ES384)', async () => {
    const { privateKey } = await generateKeyPair('ES384');
    const token = await new SignJWT(claims()).setProtectedHeader({ alg: 'ES384', typ: 'bastion-cap+jwt', kid }).sign(privateKey);
    await expectRefused(token, 'BASTION_TOKEN_ALG_REFUSED');
  });

  it('unknown kid', async () => expectRefused(await signed(claims(), { kid: 'no-such-key' }), 'BASTION_TOKEN_KEY_UNKNOWN'));

  for (const header of ['jku', 'x5u'] as const) {
    it(`${header} pointing elsewhere is refused and never fetched`, async () => {
      const before = elsewhereHits;
      await expectRefused(await signed(claims(), { [header]: elsewhereUrl }), 'BASTION_TOKEN_HEADER_REFUSED');
      expect(elsewhereHits).toBe(before);
    });
  }

  it('an embedded jwk header is refused (the key must come from the issuer)', async () => {
    const { privateKey, publicKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
    const { exportJWK } = await import('jose');
    const token = await new SignJWT(claims()).setProtectedHeader({ alg: 'EdDSA', typ: 'bastion-cap+jwt', kid, jwk: await exportJWK(publicKey) }).sign(privateKey);
    await expectRefused(token, 'BASTION_TOKEN_HEADER_REFUSED');
  });

  it('unknown crit header', () =>
    expectRefused(signRaw({ alg: 'EdDSA', typ: 'bastion-cap+jwt', kid, crit: ['urn:x'], 'urn:x': true }, claims()), 'BASTION_TOKEN_HEADER_REFUSED'));

  it('a correctly signed token is accepted by the same path (the rows above fail for their own reason)', async () => {
    const response = await post(
      t.url,
      { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } },
      { authorization: `Bearer ${signRaw({ alg: 'EdDSA', typ: 'bastion-cap+jwt', kid }, claims())}` },
    );
    expect(response.status).toBe(200);
  });

  it('missing exp', async () => {
    const { exp: _exp, ...rest } = claims();
    await expectRefused(await signed(rest), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('expired exp', async () => expectRefused(await signed(claims({ iat: nowS() - 600, exp: nowS() - 300 })), 'BASTION_TOKEN_EXPIRED'));

  it('future nbf', async () => expectRefused(await signed(claims({ nbf: nowS() + 300 })), 'BASTION_TOKEN_NOT_YET_VALID'));

  it('future iat', async () => expectRefused(await signed(claims({ iat: nowS() + 300, exp: nowS() + 400 })), 'BASTION_TOKEN_NOT_YET_VALID'));

  it('lifetime over the cap', async () => expectRefused(await signed(claims({ exp: nowS() + 24 * 3600 })), 'BASTION_TOKEN_LIFETIME_TOO_LONG'));

  it('wrong aud', async () => expectRefused(await signed(claims({ aud: 'http://127.0.0.1:1/mcp' })), 'BASTION_TOKEN_AUDIENCE_INVALID'));

  it('wrong iss', async () => expectRefused(await signed(claims({ iss: 'https://issuer.example' })), 'BASTION_TOKEN_ISSUER_UNTRUSTED'));

  it('missing jti', async () => {
    const { jti: _jti, ...rest } = claims();
    await expectRefused(await signed(rest), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('malformed base64', () => expectRefused('e!!.e!!.e!!', 'BASTION_TOKEN_MALFORMED'));

  it('a token over 8 KB is refused before parsing', () => expectRefused(`${'a'.repeat(9000)}.b.c`, 'BASTION_TOKEN_TOO_LARGE'));

  it('a 64 KB token is refused by the HTTP layer (431) before reaching Bastion', async () => {
    const before = (await t.upstreamCalls()).length;
    const response = await post(t.url, toolCall('rec__echo', { text: 'x' }), { authorization: `Bearer ${'a'.repeat(65_536)}` });
    expect(response.status).toBe(431);
    expect((await t.upstreamCalls()).length).toBe(before);
  });

  it('a nested JWT', async () => {
    const inner = await signed(claims());
    const key = await importJWK(devKey, 'EdDSA');
    const { CompactSign } = await import('jose');
    const nested = await new CompactSign(new TextEncoder().encode(inner)).setProtectedHeader({ alg: 'EdDSA', typ: 'bastion-cap+jwt', kid, cty: 'JWT' }).sign(key);
    await expectRefused(nested, 'BASTION_TOKEN_HEADER_REFUSED');
  });

  it('an invalid cap claim', async () => expectRefused(await signed(claims({ cap: [{ tool: 'rec__*', args: { x: { nope: 1 } } }] })), 'BASTION_TOKEN_CLAIM_INVALID'));
});

describe('single use (jti replay)', () => {
  it('a use:once token works once and is refused on its second presentation', async () => {
    const token = await mintToken({ key: devKey, issuer: t.broker.devKey!.issuer, audience: t.door.resource, sub: 'agent:once', cap: [{ tool: 'rec__*' }], ttlMs: 60_000, use: 'once' });
    const init = await post(
      t.url,
      { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } },
      { authorization: `Bearer ${token}` },
    );
    expect(init.status).toBe(200);
    await expectRefused(token, 'BASTION_TOKEN_REPLAYED');
  });
});

describe('revocation', () => {
  async function revokeVia(body: object): Promise<number> {
    const admin = await t.mint({ sub: 'operator:ops', cap: [{ tool: 'bastion:revoke' }] });
    const response = await fetch(new URL('/admin/revoke', t.url), { method: 'POST', headers: { ...MCP_HEADERS, authorization: `Bearer ${admin}` }, body: JSON.stringify(body) });
    return response.status;
  }

  it('revoking a jti stops that token at once, and only that token', async () => {
    const jti = crypto.randomUUID();
    const token = await mintToken({ key: devKey, issuer: t.broker.devKey!.issuer, audience: t.door.resource, sub: 'agent:rev-jti', cap: [{ tool: 'rec__*' }], ttlMs: 60_000, jti });
    const client = await connect(token);
    expect((await client.callTool({ name: 'rec__echo', arguments: { text: 'before' } })).isError).toBeFalsy();
    expect(await revokeVia({ jti, iss: t.broker.devKey!.issuer })).toBe(200);
    await expectRefused(token, 'BASTION_TOKEN_REVOKED');
    const sibling = await mintToken({ key: devKey, issuer: t.broker.devKey!.issuer, audience: t.door.resource, sub: 'agent:rev-jti', cap: [{ tool: 'rec__*' }], ttlMs: 60_000 });
    const other = await connect(sibling);
    expect((await other.callTool({ name: 'rec__echo', arguments: { text: 'sibling' } })).isError).toBeFalsy();
    await client.close();
    await other.close();
  });

  it('revoking a sub stops all its tokens', async () => {
    const token = await t.mint({ sub: 'agent:rev-sub' });
    expect(await revokeVia({ sub: 'agent:rev-sub' })).toBe(200);
    await expectRefused(token, 'BASTION_TOKEN_REVOKED');
    await expectRefused(await t.mint({ sub: 'agent:rev-sub' }), 'BASTION_TOKEN_REVOKED');
  });

  it('revocation needs the literal bastion:revoke grant; a * glob does not confer it', async () => {
    const wildcard = await t.mint({ sub: 'agent:wild', cap: [{ tool: '*' }] });
    const response = await fetch(new URL('/admin/revoke', t.url), { method: 'POST', headers: { ...MCP_HEADERS, authorization: `Bearer ${wildcard}` }, body: JSON.stringify({ sub: 'agent:victim' }) });
    expect(response.status).toBe(403);
    const victim = await connect(await t.mint({ sub: 'agent:victim' }));
    expect((await victim.callTool({ name: 'rec__echo', arguments: { text: 'still here' } })).isError).toBeFalsy();
    await victim.close();
  });
});

describe('proof of possession (DPoP)', () => {
  let key: DpopKey;
  let token: string;

  beforeAll(async () => {
    key = await generateDpopKey();
    token = await mintToken({ key: devKey, issuer: t.broker.devKey!.issuer, audience: t.door.resource, sub: 'agent:bound', cap: [{ tool: 'rec__*' }], ttlMs: 120_000, jkt: key.jkt });
  });

  it('the owner of the key calls tools through the SDK transport with the client helper', async () => {
    const client = await connect(token, { dpop: key, scheme: 'DPoP' });
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'bound' } })) as CallToolResult;
    expect(result.content).toEqual([{ type: 'text', text: 'echo: bound' }]);
    await client.close();
  });

  it('proof missing (a stolen token alone is useless)', () => expectRefused(token, 'BASTION_DPOP_MISSING'));

  it('proof for another URL', async () =>
    expectRefused(token, 'BASTION_DPOP_INVALID', { dpop: await signDpopProof(key, 'POST', 'http://127.0.0.1:1/mcp', token) }));

  it('proof for another method', async () => expectRefused(token, 'BASTION_DPOP_INVALID', { dpop: await signDpopProof(key, 'GET', t.url, token) }));

  it('stale proof', async () =>
    expectRefused(token, 'BASTION_DPOP_INVALID', { dpop: await signDpopProof(key, 'POST', t.url, token, nowS() - 600) }));

  it('replayed proof', async () => {
    const proof = await signDpopProof(key, 'POST', t.url, token);
    const first = await post(
      t.url,
      { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } },
      { authorization: `DPoP ${token}`, dpop: proof },
    );
    expect(first.status).toBe(200);
    await expectRefused(token, 'BASTION_DPOP_REPLAYED', { dpop: proof });
  });

  it('proof signed by another key', async () => {
    const thief = await generateDpopKey();
    await expectRefused(token, 'BASTION_DPOP_INVALID', { dpop: await signDpopProof(thief, 'POST', t.url, token) });
  });

  it('proof with a wrong ath (made for another token)', async () => {
    const other = await t.mint();
    await expectRefused(token, 'BASTION_DPOP_INVALID', { dpop: await signDpopProof(key, 'POST', t.url, other) });
  });
});

describe('OAuth protected-resource metadata (RFC 9728)', () => {
  it('is served at the root and the path-suffixed form', async () => {
    for (const path of ['/.well-known/oauth-protected-resource', '/.well-known/oauth-protected-resource/mcp']) {
      const response = await fetch(new URL(path, t.url));
      expect(response.status).toBe(200);
      const body = (await response.json()) as Record<string, unknown>;
      expect(body.resource).toBe(t.door.resource);
      expect(body.dpop_signing_alg_values_supported).toEqual(['EdDSA', 'ES256']);
    }
  });
});
