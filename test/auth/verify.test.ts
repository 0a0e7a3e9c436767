/**
 * Stage 1, authenticate, as a unit: createTokenVerifier with keys generated
 * here and an injected clock. One test per way a token can be wrong, each
 * asserting the exact Denial code; the accepted cases prove the verifier is
 * not simply refusing everything.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { base64url, createLocalJWKSet, exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { createTokenVerifier, MAX_TOKEN_BYTES, type Principal, type TokenVerifier } from '../../broker/auth/verify.ts';
import { Denial } from '../../broker/errors.ts';

const ISSUER = 'https://issuer.test';
const AUDIENCE = 'https://bastion.test/mcp';
const TYP = 'bastion-cap+jwt';
/** The injected clock: a fixed instant, in ms and in seconds. */
const NOW_MS = 1_800_000_000_000;
const NOW = NOW_MS / 1000;
const MAX_TTL_S = 900;
const SKEW_S = 30;

interface TestKey {
  privateKey: CryptoKey;
  publicJwk: JWK;
  kid: string;
  alg: string;
}

let ed: TestKey;
let es: TestKey;
let es384: TestKey;
let rs: TestKey;
let verifier: TokenVerifier;

async function makeKey(alg: 'EdDSA' | 'ES256' | 'ES384' | 'RS256', kid: string): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, alg === 'EdDSA' ? { crv: 'Ed25519', extractable: true } : { extractable: true });
  return { privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg }, kid, alg };
}

/** The trusted issuer, its keys served from a local JWKS (no I/O). */
function trusted(keys: TestKey[]) {
  return { issuer: ISSUER, getKey: createLocalJWKSet({ keys: keys.map((k) => k.publicJwk) }), loads: 1 };
}

beforeAll(async () => {
  [ed, es, es384, rs] = await Promise.all([
    makeKey('EdDSA', 'ed-1'),
    makeKey('ES256', 'es-1'),
    makeKey('ES384', 'es384-1'),
    makeKey('RS256', 'rs-1'),
  ]);
  verifier = createTokenVerifier({
    // The ES384 and RS256 keys are trusted on purpose: their tokens must be
    // refused by the algorithm allow-list, not for want of a key.
    issuers: [trusted([ed, es, es384, rs])],
    audience: AUDIENCE,
    algorithms: ['EdDSA', 'ES256'],
    tokenType: TYP,
    maxTtlMs: MAX_TTL_S * 1000,
    clockSkewMs: SKEW_S * 1000,
    now: () => NOW_MS,
  });
});

function claims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const base: Record<string, unknown> = {
    iss: ISSUER,
    sub: 'agent:unit',
    aud: AUDIENCE,
    iat: NOW,
    exp: NOW + 300,
    jti: randomUUID(),
    cap: [{ tool: 'rec__*' }],
  };
  const merged = { ...base, ...overrides };
  // `undefined` means "leave the claim out".
  return Object.fromEntries(Object.entries(merged).filter(([, v]) => v !== undefined));
}

/** Signs `payload` with `key`; header fields may be overridden or removed (undefined). */
async function sign(
  payload: Record<string, unknown> = claims(),
  header: Record<string, unknown> = {},
  key: TestKey = ed,
  signOptions: Parameters<SignJWT['sign']>[1] = undefined,
): Promise<string> {
  const protectedHeader = Object.fromEntries(
    Object.entries({ alg: key.alg, typ: TYP, kid: key.kid, ...header }).filter(([, v]) => v !== undefined),
  );
  return new SignJWT(payload).setProtectedHeader(protectedHeader as { alg: string }).sign(key.privateKey, signOptions);
}

const b64json = (value: unknown) => base64url.encode(JSON.stringify(value));

async function refusal(token: string | undefined): Promise<Denial> {
  const error = await verifier.verify(token).then(
    (principal) => new Error(`expected a refusal, got principal ${principal.sub}`),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(Denial);
  const denial = error as Denial;
  expect(denial.stage).toBe('authenticate');
  return denial;
}

async function expectCode(token: string | undefined, code: string): Promise<Denial> {
  const denial = await refusal(token);
  expect(denial.code).toBe(code);
  return denial;
}

describe('accepted tokens', () => {
  it('an EdDSA token yields the principal', async () => {
    const jti = randomUUID();
    const token = await sign(claims({ jti, sub: 'agent:ed' }));
    const principal = await verifier.verify(token);
    expect(principal).toMatchObject<Partial<Principal>>({
      sub: 'agent:ed',
      iss: ISSUER,
      act: [],
      cap: [{ tool: 'rec__*' }],
      jti,
      exp: NOW + 300,
      anonymous: false,
      tokenHash: `sha256:${createHash('sha256').update(token).digest('hex')}`,
    });
  });

  it('an ES256 (P-256) token is accepted', async () => {
    const principal = await verifier.verify(await sign(claims({ sub: 'agent:es' }), {}, es));
    expect(principal.sub).toBe('agent:es');
  });

  it('tokenHash is the sha256 of the token and never the token itself', async () => {
    const token = await sign();
    const principal = await verifier.verify(token);
    expect(principal.tokenHash).toBe(`sha256:${createHash('sha256').update(token).digest('hex')}`);
    const serialized = JSON.stringify(principal);
    expect(serialized).not.toContain(token);
    for (const part of token.split('.')) expect(serialized).not.toContain(part);
  });

  it('an aud array of exactly our audience is accepted', async () => {
    const principal = await verifier.verify(await sign(claims({ aud: [AUDIENCE] })));
    expect(principal.sub).toBe('agent:unit');
  });

  it('a missing cap claim means no capabilities', async () => {
    const principal = await verifier.verify(await sign(claims({ cap: undefined })));
    expect(principal.cap).toEqual([]);
  });

  it('capabilities with argument constraints survive verification intact', async () => {
    const cap = [{ tool: 'rec__transfer', args: { amount: { min: 0, max: 100 }, to: { enum: ['alice', 'bob'] } } }];
    expect((await verifier.verify(await sign(claims({ cap })))).cap).toEqual(cap);
  });

  it('exp in the past but within the 30 s skew is accepted', async () => {
    const principal = await verifier.verify(await sign(claims({ iat: NOW - 300, exp: NOW - 20 })));
    expect(principal.exp).toBe(NOW - 20);
  });

  it('iat and nbf slightly in the future (within skew) are accepted', async () => {
    const principal = await verifier.verify(await sign(claims({ iat: NOW + 10, nbf: NOW + 10, exp: NOW + 310 })));
    expect(principal.sub).toBe('agent:unit');
  });

  it('a lifetime of exactly max_ttl is accepted', async () => {
    const principal = await verifier.verify(await sign(claims({ exp: NOW + MAX_TTL_S })));
    expect(principal.exp).toBe(NOW + MAX_TTL_S);
  });

  it('the act chain is flattened, outermost (current) actor first', async () => {
    const act = { sub: 'agent:orchestrator', act: { sub: 'agent:planner', act: { sub: 'user:alice' } } };
    const principal = await verifier.verify(await sign(claims({ act })));
    expect(principal.act).toEqual([{ sub: 'agent:orchestrator' }, { sub: 'agent:planner' }, { sub: 'user:alice' }]);
  });

  it('extra members of an act link are dropped from the chain', async () => {
    const act = { sub: 'agent:a', client_id: 'x', act: { sub: 'agent:b', iss: 'y' } };
    const principal = await verifier.verify(await sign(claims({ act })));
    expect(principal.act).toEqual([{ sub: 'agent:a' }, { sub: 'agent:b' }]);
  });
});

describe('missing, oversized and malformed tokens', () => {
  it('no token', async () => {
    await expectCode(undefined, 'BASTION_TOKEN_MISSING');
  });

  it('an empty token', async () => {
    await expectCode('', 'BASTION_TOKEN_MISSING');
  });

  it('a token over 8 KB is refused before parsing', async () => {
    // Garbage of 8 KB + 1: parsing would say MALFORMED, so TOO_LARGE proves the size check came first.
    await expectCode('x'.repeat(MAX_TOKEN_BYTES + 1), 'BASTION_TOKEN_TOO_LARGE');
    // The same garbage at the limit is parsed (and found malformed).
    await expectCode('x'.repeat(MAX_TOKEN_BYTES), 'BASTION_TOKEN_MALFORMED');
  });

  it('a validly signed token over 8 KB is refused', async () => {
    const token = await sign(claims({ padding: 'p'.repeat(MAX_TOKEN_BYTES) }));
    expect(token.length).toBeGreaterThan(MAX_TOKEN_BYTES);
    await expectCode(token, 'BASTION_TOKEN_TOO_LARGE');
  });

  it('not three parts', async () => {
    const [h, p, s] = (await sign()).split('.') as [string, string, string];
    await expectCode(`${h}.${p}`, 'BASTION_TOKEN_MALFORMED');
    await expectCode(`${h}.${p}.${s}.${s}`, 'BASTION_TOKEN_MALFORMED');
    await expectCode('just-one-part', 'BASTION_TOKEN_MALFORMED');
  });

  it('bad base64 in the header', async () => {
    const [, p, s] = (await sign()).split('.') as [string, string, string];
    await expectCode(`!!!*.${p}.${s}`, 'BASTION_TOKEN_MALFORMED');
  });

  it('bad base64 in the payload', async () => {
    const [h, , s] = (await sign()).split('.') as [string, string, string];
    await expectCode(`${h}.%%%^.${s}`, 'BASTION_TOKEN_MALFORMED');
  });

  it('a header that is not JSON', async () => {
    const [, p, s] = (await sign()).split('.') as [string, string, string];
    await expectCode(`${base64url.encode('{"alg":"EdDSA",')}.${p}.${s}`, 'BASTION_TOKEN_MALFORMED');
  });

  it('a payload that is not JSON', async () => {
    const [h, , s] = (await sign()).split('.') as [string, string, string];
    await expectCode(`${h}.${base64url.encode('not json at all')}.${s}`, 'BASTION_TOKEN_MALFORMED');
  });

  it('a payload that is JSON but not an object', async () => {
    const [h, , s] = (await sign()).split('.') as [string, string, string];
    await expectCode(`${h}.${b64json(['iss', ISSUER])}.${s}`, 'BASTION_TOKEN_MALFORMED');
  });

  it('a signature that is not base64url', async () => {
    const [h, p] = (await sign()).split('.') as [string, string, string];
    await expectCode(`${h}.${p}.***`, 'BASTION_TOKEN_MALFORMED');
  });
});

describe('algorithm', () => {
  it('alg: none', async () => {
    const token = `${b64json({ alg: 'none', typ: TYP, kid: ed.kid })}.${b64json(claims())}.`;
    await expectCode(token, 'BASTION_TOKEN_ALG_REFUSED');
  });

  it('a missing alg', async () => {
    const [, p, s] = (await sign()).split('.') as [string, string, string];
    await expectCode(`${b64json({ typ: TYP, kid: ed.kid })}.${p}.${s}`, 'BASTION_TOKEN_ALG_REFUSED');
  });

  it('HS256 with the public key as the HMAC secret', async () => {
    for (const secret of [JSON.stringify(ed.publicJwk), ed.publicJwk.x!, JSON.stringify(es.publicJwk)]) {
      const token = await new SignJWT(claims())
        .setProtectedHeader({ alg: 'HS256', typ: TYP, kid: ed.kid })
        .sign(new TextEncoder().encode(secret));
      await expectCode(token, 'BASTION_TOKEN_ALG_REFUSED');
    }
  });

  it('ES384 (not on the allow-list, although its key is trusted)', async () => {
    await expectCode(await sign(claims(), {}, es384), 'BASTION_TOKEN_ALG_REFUSED');
  });

  it('RS256 (not on the allow-list, although its key is trusted)', async () => {
    await expectCode(await sign(claims(), {}, rs), 'BASTION_TOKEN_ALG_REFUSED');
  });

  it('an EdDSA signature relabelled ES256 does not verify', async () => {
    // The key lookup then finds no P-256 key under the Ed25519 kid.
    const [, p, s] = (await sign()).split('.') as [string, string, string];
    const denial = await refusal(`${b64json({ alg: 'ES256', typ: TYP, kid: ed.kid })}.${p}.${s}`);
    expect(['BASTION_TOKEN_KEY_UNKNOWN', 'BASTION_TOKEN_SIGNATURE_INVALID']).toContain(denial.code);
  });
});

describe('typ', () => {
  it('a wrong typ (plain JWT)', async () => {
    await expectCode(await sign(claims(), { typ: 'JWT' }), 'BASTION_TOKEN_TYPE_REFUSED');
  });

  it('another token type (an access token)', async () => {
    await expectCode(await sign(claims(), { typ: 'at+jwt' }), 'BASTION_TOKEN_TYPE_REFUSED');
  });

  it('a missing typ', async () => {
    await expectCode(await sign(claims(), { typ: undefined }), 'BASTION_TOKEN_TYPE_REFUSED');
  });
});

describe('refused header parameters', () => {
  let server: Server;
  let hits = 0;
  let base: string;

  beforeAll(async () => {
    server = createServer((_req, res) => {
      hits++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [ed.publicJwk] }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('jku (and nothing is fetched from it)', async () => {
    await expectCode(await sign(claims(), { jku: `${base}/jwks.json` }), 'BASTION_TOKEN_HEADER_REFUSED');
    expect(hits).toBe(0);
  });

  it('x5u (and nothing is fetched from it)', async () => {
    await expectCode(await sign(claims(), { x5u: `${base}/cert.pem` }), 'BASTION_TOKEN_HEADER_REFUSED');
    expect(hits).toBe(0);
  });

  it('jwk (an embedded key, even the trusted one)', async () => {
    const { kid: _kid, alg: _alg, ...jwk } = ed.publicJwk;
    await expectCode(await sign(claims(), { jwk }), 'BASTION_TOKEN_HEADER_REFUSED');
  });

  it('x5c', async () => {
    await expectCode(await sign(claims(), { x5c: ['MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA'] }), 'BASTION_TOKEN_HEADER_REFUSED');
  });

  it('cty: JWT (a nested token)', async () => {
    await expectCode(await sign(claims(), { cty: 'JWT' }), 'BASTION_TOKEN_HEADER_REFUSED');
  });

  it('an unknown crit extension', async () => {
    const token = await sign(claims(), { crit: ['urn:example:ext'], 'urn:example:ext': true }, ed, { crit: { 'urn:example:ext': true } });
    await expectCode(token, 'BASTION_TOKEN_HEADER_REFUSED');
  });

  it('no jku/x5u fetch happened across the whole suite', () => {
    expect(hits).toBe(0);
  });
});

describe('key and issuer', () => {
  it('an unknown kid', async () => {
    await expectCode(await sign(claims(), { kid: 'nope' }), 'BASTION_TOKEN_KEY_UNKNOWN');
  });

  it('no kid', async () => {
    await expectCode(await sign(claims(), { kid: undefined }), 'BASTION_TOKEN_KEY_UNKNOWN');
  });

  it('the trusted kid with a key nobody trusts', async () => {
    const stranger = await makeKey('EdDSA', ed.kid);
    await expectCode(await sign(claims(), {}, stranger), 'BASTION_TOKEN_SIGNATURE_INVALID');
  });

  it('a payload changed after signing', async () => {
    const [h, , s] = (await sign(claims({ cap: [{ tool: 'rec__echo' }] }))).split('.') as [string, string, string];
    await expectCode(`${h}.${b64json(claims({ cap: [{ tool: '*' }] }))}.${s}`, 'BASTION_TOKEN_SIGNATURE_INVALID');
  });

  it('an untrusted iss', async () => {
    await expectCode(await sign(claims({ iss: 'https://evil.example' })), 'BASTION_TOKEN_ISSUER_UNTRUSTED');
  });

  it('a missing iss', async () => {
    await expectCode(await sign(claims({ iss: undefined })), 'BASTION_TOKEN_ISSUER_UNTRUSTED');
  });

  it('an iss that differs only in a trailing slash', async () => {
    await expectCode(await sign(claims({ iss: `${ISSUER}/` })), 'BASTION_TOKEN_ISSUER_UNTRUSTED');
  });
});

describe('audience', () => {
  it('a wrong aud', async () => {
    await expectCode(await sign(claims({ aud: 'https://other.test/mcp' })), 'BASTION_TOKEN_AUDIENCE_INVALID');
  });

  it('an aud array containing ours plus another', async () => {
    await expectCode(await sign(claims({ aud: [AUDIENCE, 'https://other.test/mcp'] })), 'BASTION_TOKEN_AUDIENCE_INVALID');
  });

  it('an aud array of ours twice', async () => {
    await expectCode(await sign(claims({ aud: [AUDIENCE, AUDIENCE] })), 'BASTION_TOKEN_AUDIENCE_INVALID');
  });

  it('a missing aud', async () => {
    await expectCode(await sign(claims({ aud: undefined })), 'BASTION_TOKEN_AUDIENCE_INVALID');
  });

  it('an aud that is a prefix of ours', async () => {
    await expectCode(await sign(claims({ aud: 'https://bastion.test' })), 'BASTION_TOKEN_AUDIENCE_INVALID');
  });
});

describe('required claims', () => {
  for (const claim of ['exp', 'iat', 'jti', 'sub']) {
    it(`a missing ${claim}`, async () => {
      await expectCode(await sign(claims({ [claim]: undefined })), 'BASTION_TOKEN_CLAIM_INVALID');
    });
  }

  it('an empty sub', async () => {
    await expectCode(await sign(claims({ sub: '' })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('a non-string jti', async () => {
    await expectCode(await sign(claims({ jti: 42 })), 'BASTION_TOKEN_CLAIM_INVALID');
  });
});

describe('time', () => {
  it('exp in the past beyond the 30 s skew', async () => {
    await expectCode(await sign(claims({ iat: NOW - 300, exp: NOW - SKEW_S - 1 })), 'BASTION_TOKEN_EXPIRED');
  });

  it('exp long past', async () => {
    await expectCode(await sign(claims({ iat: NOW - 3600, exp: NOW - 3000 })), 'BASTION_TOKEN_EXPIRED');
  });

  it('nbf in the future beyond skew', async () => {
    await expectCode(await sign(claims({ nbf: NOW + SKEW_S + 60 })), 'BASTION_TOKEN_NOT_YET_VALID');
  });

  it('iat in the future beyond skew', async () => {
    await expectCode(await sign(claims({ iat: NOW + SKEW_S + 60, exp: NOW + SKEW_S + 120 })), 'BASTION_TOKEN_NOT_YET_VALID');
  });

  it('a lifetime over max_ttl', async () => {
    const denial = await expectCode(await sign(claims({ exp: NOW + MAX_TTL_S + 1 })), 'BASTION_TOKEN_LIFETIME_TOO_LONG');
    expect(denial.reason).toContain(`${MAX_TTL_S + 1}s`);
  });

  it('a lifetime over max_ttl hidden behind an old iat', async () => {
    await expectCode(await sign(claims({ iat: NOW - 86_400, exp: NOW + 60 })), 'BASTION_TOKEN_LIFETIME_TOO_LONG');
  });

  it('a non-integer exp', async () => {
    await expectCode(await sign(claims({ exp: NOW + 300.5 })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('a non-integer exp near 1.5e9 (1.5e9 + 0.5 against a clock at 1.5e9)', async () => {
    const at1_5e9 = createTokenVerifier({
      issuers: [trusted([ed])],
      audience: AUDIENCE,
      algorithms: ['EdDSA'],
      tokenType: TYP,
      maxTtlMs: MAX_TTL_S * 1000,
      clockSkewMs: SKEW_S * 1000,
      now: () => 1.5e9 * 1000,
    });
    const denial = await at1_5e9.verify(await sign(claims({ iat: 1.5e9, exp: 1.5e9 + 0.5 }))).catch((e: unknown) => e);
    expect(denial).toBeInstanceOf(Denial);
    expect((denial as Denial).code).toBe('BASTION_TOKEN_CLAIM_INVALID');
    // The same clock accepts a well-formed token, so the refusal is about the fraction.
    expect((await at1_5e9.verify(await sign(claims({ iat: 1.5e9, exp: 1.5e9 + 60 })))).exp).toBe(1.5e9 + 60);
  });

  it('a string exp', async () => {
    await expectCode(await sign(claims({ exp: String(NOW + 300) })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('a string iat', async () => {
    await expectCode(await sign(claims({ iat: String(NOW) })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('a string nbf', async () => {
    await expectCode(await sign(claims({ nbf: String(NOW) })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('a fractional iat', async () => {
    await expectCode(await sign(claims({ iat: NOW - 0.5 })), 'BASTION_TOKEN_CLAIM_INVALID');
  });
});

describe('cap', () => {
  it('an unknown constraint key', async () => {
    const denial = await expectCode(
      await sign(claims({ cap: [{ tool: 'rec__echo', args: { text: { regex: '.*' } } }] })),
      'BASTION_TOKEN_CLAIM_INVALID',
    );
    expect(denial.reason).toContain('cap');
  });

  it('an empty constraint', async () => {
    await expectCode(await sign(claims({ cap: [{ tool: 'rec__echo', args: { text: {} } }] })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('cap that is not an array', async () => {
    await expectCode(await sign(claims({ cap: { tool: 'rec__*' } })), 'BASTION_TOKEN_CLAIM_INVALID');
    await expectCode(await sign(claims({ cap: 'rec__*' })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('an unknown member of a grant', async () => {
    await expectCode(await sign(claims({ cap: [{ tool: 'rec__echo', scope: 'all' }] })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('a grant without a tool', async () => {
    await expectCode(await sign(claims({ cap: [{ args: {} }] })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('more than 64 grants', async () => {
    const cap = Array.from({ length: 65 }, (_, i) => ({ tool: `t${i}` }));
    await expectCode(await sign(claims({ cap })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('an act link without sub', async () => {
    await expectCode(await sign(claims({ act: { sub: 'agent:a', act: { client_id: 'x' } } })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it.each([
    ['a string', 'agent:a'],
    ['an array', [{ sub: 'agent:a' }]],
    ['a nested array', { sub: 'agent:a', act: [{ sub: 'agent:b' }] }],
    ['a numeric sub', { sub: 7 }],
  ])('an act that is %s', async (_name, act) => {
    await expectCode(await sign(claims({ act })), 'BASTION_TOKEN_CLAIM_INVALID');
  });

  it('an act chain deeper than 16 actors, refused whole rather than cut to 16 (actors beyond would escape separation of duties)', async () => {
    let act: { sub: string; act?: unknown } | undefined;
    for (let i = 17; i >= 1; i--) act = act ? { sub: `agent:${i}`, act } : { sub: `agent:${i}` };
    await expectCode(await sign(claims({ act })), 'BASTION_TOKEN_CLAIM_INVALID');
  });
});
