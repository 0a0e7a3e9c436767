/**
 * The verified-token cache (verify.ts): a token presented again skips the
 * signature and claim checks, but a remembered token never outlives its
 * `exp`, dies with its signing key, and never lets a revoked, replayed or
 * unproven token through (those checks run on every request in
 * authenticate.ts).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLocalJWKSet, type JWK } from 'jose';
import { createAuthenticator } from '../../broker/auth/authenticate.ts';
import { generateSigningKey } from '../../broker/auth/keys.ts';
import { issuerKeys, type IssuerKeys } from '../../broker/auth/keysets.ts';
import { mintToken } from '../../broker/auth/mint.ts';
import { revoke } from '../../broker/auth/revocation.ts';
import { createTokenVerifier, type VerifierOptions } from '../../broker/auth/verify.ts';
import { Denial } from '../../broker/errors.ts';
import { openEmbeddedState } from '../../broker/state/embedded.ts';
import type { StateStore } from '../../broker/state/store.ts';

const ISSUER = 'https://issuer.cache.test';
const AUDIENCE = 'https://bastion.test/mcp';
const NOW_MS = 1_800_000_000_000;

let dir: string;
let key: { privateJwk: JWK; jwks: { keys: JWK[] } };
let state: StateStore;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-token-cache-'));
  key = await generateSigningKey();
  state = await openEmbeddedState(path.join(dir, 'state.db'));
});
afterAll(async () => {
  await state?.close();
  await rm(dir, { recursive: true, force: true });
});

const localKeys = (): IssuerKeys => ({ issuer: ISSUER, getKey: createLocalJWKSet(key.jwks), loads: 1 });

function verifierWith(options: Partial<VerifierOptions> = {}) {
  return createTokenVerifier({
    issuers: [localKeys()],
    audience: AUDIENCE,
    algorithms: ['EdDSA', 'ES256'],
    tokenType: 'bastion-cap+jwt',
    maxTtlMs: 900_000,
    clockSkewMs: 30_000,
    now: () => NOW_MS,
    ...options,
  });
}

const token = (options: { sub?: string; ttlMs?: number; use?: 'once' } = {}) =>
  mintToken({ key: key.privateJwk, issuer: ISSUER, audience: AUDIENCE, sub: options.sub ?? 'agent:cache', cap: [{ tool: 'rec__*' }], ttlMs: options.ttlMs ?? 300_000, now: NOW_MS, ...(options.use ? { use: options.use } : {}) });

const codeOf = (promise: Promise<unknown>) => promise.then(() => 'accepted', (error: unknown) => (error instanceof Denial ? error.code : String(error)));

describe('hits', () => {
  it('answers a token presented again with the principal it verified (the same frozen object)', async () => {
    const verifier = verifierWith();
    const t = await token();
    const first = await verifier.verify(t);
    const second = await verifier.verify(t);
    expect(second).toBe(first);
    expect(Object.isFrozen(first)).toBe(true);
    expect(Object.isFrozen(first.cap[0])).toBe(true);
    expect(first.tokenHash).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  // One agent service, many sessions, one credential: requests of one turn present the same token together.
  it('answers many requests presenting one remembered token at once from the cache, none verified afresh', async () => {
    const verifier = verifierWith();
    const t = await token({ sub: 'agent:shared' });
    const first = await verifier.verify(t);
    const together = await Promise.all(Array.from({ length: 16 }, () => verifier.verify(t)));
    for (const principal of together) expect(principal).toBe(first);
  });

  it('verifies a new token presented by many requests at once once, for all of them', async () => {
    const verifier = verifierWith();
    const t = await token({ sub: 'agent:shared-cold' });
    const together = await Promise.all(Array.from({ length: 16 }, () => verifier.verify(t)));
    for (const principal of together) expect(principal).toBe(together[0]);
    expect(await verifier.verify(t)).toBe(together[0]);
  });

  it('refuses every request of a bad token presented together, each with its code', async () => {
    const verifier = verifierWith();
    const forged = `${(await token()).slice(0, -4)}AAAA`;
    const codes = await Promise.all(Array.from({ length: 4 }, () => codeOf(verifier.verify(forged))));
    expect(codes).toEqual(Array(4).fill('BASTION_TOKEN_SIGNATURE_INVALID'));
  });

  it('is off with cacheEntries: 0', async () => {
    const verifier = verifierWith({ cacheEntries: 0 });
    const t = await token();
    expect(await verifier.verify(t)).not.toBe(await verifier.verify(t));
  });

  it('is bounded, evicting the least recently used token', async () => {
    const verifier = verifierWith({ cacheEntries: 2 });
    const [a, b, c] = await Promise.all([token({ sub: 'agent:a' }), token({ sub: 'agent:b' }), token({ sub: 'agent:c' })]);
    const pa = await verifier.verify(a);
    const pb = await verifier.verify(b);
    expect(await verifier.verify(a)).toBe(pa); // a is now the most recent
    await verifier.verify(c); // evicts b
    expect(await verifier.verify(a)).toBe(pa);
    expect(await verifier.verify(b)).not.toBe(pb);
  });
});

describe('what the cache must never do', () => {
  it('never answers past exp, even inside the clock-skew allowance', async () => {
    let now = NOW_MS;
    const verifier = verifierWith({ now: () => now });
    const t = await token({ ttlMs: 60_000 });
    const first = await verifier.verify(t);
    now = first.exp * 1000 + 10_000; // within the 30 s skew: verified afresh, still accepted
    const again = await verifier.verify(t);
    expect(again).not.toBe(first);
    now = first.exp * 1000 + 31_000;
    expect(await codeOf(verifier.verify(t))).toBe('BASTION_TOKEN_EXPIRED');
  });

  it('drops a remembered token as soon as its key leaves the JWKS file', async () => {
    const file = path.join(dir, 'jwks.json');
    await writeFile(file, JSON.stringify(key.jwks));
    const verifier = verifierWith({ issuers: [issuerKeys({ issuer: ISSUER, jwks_file: file }, { minRefreshMs: 0 })] });
    const t = await token();
    expect(await codeOf(verifier.verify(t))).toBe('accepted');
    expect(await codeOf(verifier.verify(t))).toBe('accepted');
    const other = await generateSigningKey();
    await writeFile(file, JSON.stringify(other.jwks));
    expect(await codeOf(verifier.verify(t))).toBe('BASTION_TOKEN_KEY_UNKNOWN');
  });

  it('does not skip revocation: a cached token revoked between requests is refused', async () => {
    const authenticator = createAuthenticator({ verifier: verifierWith(), state, algorithms: ['EdDSA'], dpopMaxAgeMs: 60_000, clockSkewMs: 30_000, now: () => NOW_MS });
    const t = await token({ sub: 'agent:revoked-later' });
    const principal = await authenticator.authenticate({ token: t, transport: 'http' });
    expect((await authenticator.authenticate({ token: t, transport: 'http' })).jti).toBe(principal.jti);
    await revoke(state, { jti: principal.jti, iss: principal.iss }, 900_000);
    expect(await codeOf(authenticator.authenticate({ token: t, transport: 'http' }))).toBe('BASTION_TOKEN_REVOKED');
  });

  it('does not skip single use: a cached single-use token is refused the second time', async () => {
    const authenticator = createAuthenticator({ verifier: verifierWith(), state, algorithms: ['EdDSA'], dpopMaxAgeMs: 60_000, clockSkewMs: 30_000, now: () => NOW_MS });
    const t = await token({ sub: 'agent:once', use: 'once' });
    expect(await codeOf(authenticator.authenticate({ token: t, transport: 'http' }))).toBe('accepted');
    expect(await codeOf(authenticator.authenticate({ token: t, transport: 'http' }))).toBe('BASTION_TOKEN_REPLAYED');
  });

  it('does not cache refusals: a bad token is refused with its code every time', async () => {
    const verifier = verifierWith();
    const t = await token();
    const forged = `${t.slice(0, -4)}AAAA`;
    expect(await codeOf(verifier.verify(forged))).toBe('BASTION_TOKEN_SIGNATURE_INVALID');
    expect(await codeOf(verifier.verify(forged))).toBe('BASTION_TOKEN_SIGNATURE_INVALID');
  });
});
