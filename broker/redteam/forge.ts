/**
 * Forged capability tokens, each wrong in exactly one way, for the token
 * classes of the corpus. They are built the way an attacker would: from the
 * issuer's public key and the broker's published metadata, never from
 * anything only the issuer holds (except `expired` and `wrong_audience`,
 * which are stolen genuine tokens: correctly signed, used out of place).
 *
 * @example
 *   const token = await forgeToken('alg_none', { issuer, audience, sub: 'agent:x', cap: [{ tool: '*' }], tokenType });
 */
import { randomUUID } from 'node:crypto';
import { base64url, generateKeyPair, importJWK, SignJWT, type CryptoKey } from 'jose';
import type { Capability } from '../policy/schema.ts';
import type { RedteamIssuer } from './target.ts';

export type Forgery = 'alg_none' | 'wrong_key' | 'tampered_cap' | 'expired' | 'wrong_audience' | 'hs256_public_key';

export interface ForgeOptions {
  issuer: RedteamIssuer;
  audience: string;
  tokenType: string;
  sub: string;
  cap: Capability[];
  /** tampered_cap: what the payload claims after the swap. */
  claimedCap?: Capability[];
  ttlMs: number;
}

const encode = (value: object) => base64url.encode(JSON.stringify(value));

export async function forgeToken(forgery: Forgery, options: ForgeOptions): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const kid = options.issuer.privateJwk.kid!;
  const claims = {
    iss: options.issuer.issuer,
    sub: options.sub,
    aud: options.audience,
    iat: now,
    exp: now + Math.max(1, Math.floor(options.ttlMs / 1000)),
    jti: randomUUID(),
    cap: options.cap,
  };
  const header = { alg: 'EdDSA', typ: options.tokenType, kid };
  const sign = async (payload: object, key?: CryptoKey) =>
    new SignJWT(payload as Record<string, unknown>).setProtectedHeader(header).sign(key ?? (await importJWK(options.issuer.privateJwk, 'EdDSA')));

  switch (forgery) {
    case 'alg_none':
      return `${encode({ alg: 'none', typ: options.tokenType, kid })}.${encode(claims)}.`;
    case 'wrong_key': {
      // The attacker's own key, presented under the issuer's kid.
      const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
      return sign(claims, privateKey);
    }
    case 'tampered_cap': {
      const genuine = await sign(claims);
      const [head, , signature] = genuine.split('.');
      return `${head}.${encode({ ...claims, cap: options.claimedCap ?? [{ tool: '*' }] })}.${signature}`;
    }
    case 'expired':
      return sign({ ...claims, iat: now - 600, exp: now - 300 });
    case 'wrong_audience':
      return sign({ ...claims, aud: 'https://another-service.example/mcp' });
    case 'hs256_public_key': {
      // Algorithm confusion: an HMAC keyed with the (public) verification key.
      const secret = new TextEncoder().encode(String(options.issuer.publicJwk.x));
      return new SignJWT(claims).setProtectedHeader({ alg: 'HS256', typ: options.tokenType, kid }).sign(secret);
    }
  }
}
