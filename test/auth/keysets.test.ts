/**
 * Issuer keys: JWKS files rotate without a restart; JWKS URLs are fetched,
 * cached, refreshed on an unknown kid, and a flood of random kids cannot
 * make Bastion hammer the issuer.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JWK } from 'jose';
import { generateSigningKey, type Jwks } from '../../broker/auth/keys.ts';
import { issuerKeys } from '../../broker/auth/keysets.ts';
import { mintToken } from '../../broker/auth/mint.ts';
import { createTokenVerifier } from '../../broker/auth/verify.ts';
import { Denial } from '../../broker/errors.ts';
import { ROOT } from '../helpers/broker.ts';

const ISSUER = 'https://issuer.example';
const AUDIENCE = 'http://127.0.0.1:8080/mcp';

const verifierFor = (keys: ReturnType<typeof issuerKeys>) =>
  createTokenVerifier({ issuers: [keys], audience: AUDIENCE, algorithms: ['EdDSA', 'ES256'], tokenType: 'bastion-cap+jwt', maxTtlMs: 900_000, clockSkewMs: 30_000 });
const tokenFrom = (key: JWK, kid = key.kid) => mintToken({ key: { ...key, kid }, issuer: ISSUER, audience: AUDIENCE, sub: 'agent:k', cap: [], ttlMs: 60_000 });
const codeOf = (promise: Promise<unknown>) => promise.then(() => 'accepted', (error: unknown) => (error instanceof Denial ? error.code : String(error)));

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-keys-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('bastion keys generate', () => {
  it('writes a private key (0600) and a public JWKS for EdDSA and ES256', async () => {
    for (const alg of ['EdDSA', 'ES256']) {
      const out = path.join(dir, alg);
      const { stdout } = await promisify(execFile)(process.execPath, [path.join(ROOT, 'broker/cli.ts'), 'keys', 'generate', '--alg', alg, '--out', out]);
      const privateJwk = JSON.parse(await readFile(path.join(out, 'signing-key.json'), 'utf8')) as JWK;
      const jwks = JSON.parse(await readFile(path.join(out, 'jwks.json'), 'utf8')) as Jwks;
      expect(stdout).toContain(`kid ${privateJwk.kid}`);
      expect(privateJwk.d).toBeDefined();
      expect(jwks.keys[0]!.d).toBeUndefined();
      expect(jwks.keys[0]!.kid).toBe(privateJwk.kid);
      const { stat } = await import('node:fs/promises');
      expect((await stat(path.join(out, 'signing-key.json'))).mode & 0o777).toBe(0o600);
      const keys = issuerKeys({ issuer: ISSUER, jwks_file: path.join(out, 'jwks.json') });
      expect(await codeOf(verifierFor(keys).verify(await tokenFrom(privateJwk)))).toBe('accepted');
    }
  });
});

describe('JWKS file', () => {
  it('picks up a rotated key without a restart, and refuses a key that is not in it', async () => {
    const first = await generateSigningKey();
    const second = await generateSigningKey();
    const file = path.join(dir, 'rotating.json');
    await writeFile(file, JSON.stringify(first.jwks));
    const keys = issuerKeys({ issuer: ISSUER, jwks_file: file }, { minRefreshMs: 0 });
    const verifier = verifierFor(keys);
    expect(await codeOf(verifier.verify(await tokenFrom(first.privateJwk)))).toBe('accepted');
    expect(await codeOf(verifier.verify(await tokenFrom(second.privateJwk)))).toBe('BASTION_TOKEN_KEY_UNKNOWN');
    await writeFile(file, JSON.stringify({ keys: [...first.jwks.keys, ...second.jwks.keys] }));
    expect(await codeOf(verifier.verify(await tokenFrom(second.privateJwk)))).toBe('accepted');
    // Removing a key from the file retires it.
    await writeFile(file, JSON.stringify(second.jwks));
    expect(await codeOf(verifier.verify(await tokenFrom(first.privateJwk)))).toBe('BASTION_TOKEN_KEY_UNKNOWN');
  });

  it('re-reads at most once per refresh interval under a flood of unknown kids', async () => {
    const key = await generateSigningKey();
    const file = path.join(dir, 'flood.json');
    await writeFile(file, JSON.stringify(key.jwks));
    const keys = issuerKeys({ issuer: ISSUER, jwks_file: file }, { minRefreshMs: 60_000 });
    const verifier = verifierFor(keys);
    expect(await codeOf(verifier.verify(await tokenFrom(key.privateJwk)))).toBe('accepted');
    const flood = await Promise.all(Array.from({ length: 50 }, async () => codeOf(verifier.verify(await tokenFrom(key.privateJwk, crypto.randomUUID())))));
    expect(new Set(flood)).toEqual(new Set(['BASTION_TOKEN_KEY_UNKNOWN']));
    expect(keys.loads).toBe(1);
  });
});

describe('JWKS URL', () => {
  let server: Server;
  let served: Jwks;
  let hits = 0;
  let url: string;

  beforeAll(async () => {
    server = createServer((_req, res) => {
      hits++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(served));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  it('fetches once, caches, and bounds refreshes under a flood of random kids', async () => {
    const key = await generateSigningKey();
    served = key.jwks;
    hits = 0;
    const keys = issuerKeys({ issuer: ISSUER, jwks_url: url }, { minRefreshMs: 60_000 });
    const verifier = verifierFor(keys);
    expect(await codeOf(verifier.verify(await tokenFrom(key.privateJwk)))).toBe('accepted');
    expect(await codeOf(verifier.verify(await tokenFrom(key.privateJwk)))).toBe('accepted');
    const flood = await Promise.all(Array.from({ length: 100 }, async () => codeOf(verifier.verify(await tokenFrom(key.privateJwk, crypto.randomUUID())))));
    expect(flood.every((code) => code === 'BASTION_TOKEN_KEY_UNKNOWN')).toBe(true);
    expect(hits).toBe(1);
  });

  it('refreshes on an unknown kid once the interval has passed (rotation at the issuer)', async () => {
    const oldKey = await generateSigningKey();
    const newKey = await generateSigningKey();
    served = oldKey.jwks;
    hits = 0;
    const keys = issuerKeys({ issuer: ISSUER, jwks_url: url }, { minRefreshMs: 50 });
    const verifier = verifierFor(keys);
    expect(await codeOf(verifier.verify(await tokenFrom(oldKey.privateJwk)))).toBe('accepted');
    served = newKey.jwks;
    await new Promise((resolve) => setTimeout(resolve, 120));
    expect(await codeOf(verifier.verify(await tokenFrom(newKey.privateJwk)))).toBe('accepted');
    expect(hits).toBe(2);
  });
});
