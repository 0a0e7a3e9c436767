/**
 * Client side of proof-of-possession: a `fetch` that signs a fresh DPoP
 * proof for every request, for the MCP SDK's Streamable HTTP transport.
 *
 * @example
 *   const key = await generateDpopKey();
 *   const transport = new StreamableHTTPClientTransport(new URL(url), {
 *     fetch: dpopFetch(key, token),
 *     requestInit: { headers: { Authorization: `DPoP ${token}` } },
 *   });
 *   // mint the token with cnf: { jkt: key.jkt }
 */
import { randomUUID } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { accessTokenHash, normalizeHtu } from './dpop.ts';

export interface DpopKey {
  privateKey: CryptoKey;
  publicJwk: JWK;
  /** JWK thumbprint: the value for the token's `cnf.jkt`. */
  jkt: string;
  alg: 'EdDSA' | 'ES256';
}

export async function generateDpopKey(alg: 'EdDSA' | 'ES256' = 'EdDSA'): Promise<DpopKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, alg === 'EdDSA' ? { crv: 'Ed25519' } : {});
  const publicJwk = await exportJWK(publicKey);
  return { privateKey, publicJwk, jkt: await calculateJwkThumbprint(publicJwk), alg };
}

/** Signs one proof for `method` and `url`, bound to `accessToken`. */
export function signDpopProof(key: DpopKey, method: string, url: string, accessToken: string, iat = Math.floor(Date.now() / 1000)): Promise<string> {
  return new SignJWT({ htm: method, htu: normalizeHtu(url), iat, jti: randomUUID(), ath: accessTokenHash(accessToken) })
    .setProtectedHeader({ alg: key.alg, typ: 'dpop+jwt', jwk: key.publicJwk })
    .sign(key.privateKey);
}

/** A fetch that adds a fresh DPoP proof header to every request. */
export function dpopFetch(key: DpopKey, accessToken: string, inner: typeof fetch = fetch): typeof fetch {
  return async (input, init) => {
    const url = input instanceof Request ? input.url : input.toString();
    const method = (init?.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
    headers.set('DPoP', await signDpopProof(key, method, url, accessToken));
    return inner(input, { ...init, headers });
  };
}
