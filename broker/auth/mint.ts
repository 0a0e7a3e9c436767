/**
 * Signs capability tokens. Used by `bastion token mint` (demos, tests) with
 * the dev key; production tokens come from the organisation's issuer.
 *
 * @example
 *   const token = await mintToken({ key: dev.privateJwk, issuer: dev.issuer,
 *     audience: 'http://127.0.0.1:8080/mcp', sub: 'agent:ci', cap: [{ tool: 'demo__*' }], ttlMs: 300_000 });
 */
import { randomUUID } from 'node:crypto';
import { importJWK, SignJWT, type JWK } from 'jose';
import type { Capability } from '../policy/schema.ts';

export interface MintOptions {
  key: JWK;
  issuer: string;
  audience: string;
  sub: string;
  cap: Capability[];
  ttlMs: number;
  tokenType?: string;
  jti?: string;
  /** Milliseconds since the epoch; injected in tests. */
  now?: number;
}

export async function mintToken(options: MintOptions): Promise<string> {
  const alg = options.key.alg ?? (options.key.crv === 'P-256' ? 'ES256' : 'EdDSA');
  const key = await importJWK(options.key, alg);
  const iat = Math.floor((options.now ?? Date.now()) / 1000);
  return new SignJWT({ cap: options.cap })
    .setProtectedHeader({ alg, typ: options.tokenType ?? 'bastion-cap+jwt', ...(options.key.kid ? { kid: options.key.kid } : {}) })
    .setIssuer(options.issuer)
    .setSubject(options.sub)
    .setAudience(options.audience)
    .setIssuedAt(iat)
    .setExpirationTime(iat + Math.max(1, Math.floor(options.ttlMs / 1000)))
    .setJti(options.jti ?? randomUUID())
    .sign(key);
}
