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
  /** RFC 8693 delegation chain, nearest actor outermost. */
  act?: { sub: string; act?: unknown };
  /** Binds the token to a key (`cnf.jkt`): requests then need DPoP proofs. */
  jkt?: string;
  /** Single-use token: refused on its second presentation. */
  use?: 'once';
  /** Absolute expiry in seconds, when it must not exceed another token's (delegation). */
  exp?: number;
}

export async function mintToken(options: MintOptions): Promise<string> {
  const alg = options.key.alg ?? (options.key.crv === 'P-256' ? 'ES256' : 'EdDSA');
  const key = await importJWK(options.key, alg);
  const iat = Math.floor((options.now ?? Date.now()) / 1000);
  const claims: Record<string, unknown> = { cap: options.cap };
  if (options.act) claims.act = options.act;
  if (options.jkt) claims.cnf = { jkt: options.jkt };
  if (options.use) claims.use = options.use;
  return new SignJWT(claims)
    .setProtectedHeader({ alg, typ: options.tokenType ?? 'bastion-cap+jwt', ...(options.key.kid ? { kid: options.key.kid } : {}) })
    .setIssuer(options.issuer)
    .setSubject(options.sub)
    .setAudience(options.audience)
    .setIssuedAt(iat)
    .setExpirationTime(Math.min(options.exp ?? Infinity, iat + Math.max(1, Math.floor(options.ttlMs / 1000))))
    .setJti(options.jti ?? randomUUID())
    .sign(key);
}
