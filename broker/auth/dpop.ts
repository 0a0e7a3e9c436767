/**
 * Proof-of-possession (RFC 9449 shape). A token whose `cnf.jkt` names a key
 * is useless without that key: every HTTP request must carry a `DPoP` header,
 * a fresh JWT signed by the key, binding the request method and URL and the
 * hash of the access token. A stolen token, a replayed proof, a proof for
 * another URL or method, or one signed by another key is refused.
 *
 * @example
 *   await verifyDpopProof({ proof: req.headers.dpop, method: 'POST', url, accessToken, jkt, state });
 */
import { createHash } from 'node:crypto';
import { calculateJwkThumbprint, decodeProtectedHeader, importJWK, jwtVerify, type JWK } from 'jose';
import { Denial, type DenialCode } from '../errors.ts';
import type { StateStore } from '../state/store.ts';

export interface DpopCheck {
  proof: string | undefined;
  method: string;
  /** The URL the client addressed, as the broker publishes it. */
  url: string;
  accessToken: string;
  /** The token's `cnf.jkt`. */
  jkt: string;
  state: StateStore;
  algorithms: string[];
  /** How old a proof may be. */
  maxAgeMs: number;
  clockSkewMs: number;
  now?: () => number;
}

const deny = (code: DenialCode, reason: string) => new Denial('authenticate', code, reason);

/** The `ath` claim: base64url SHA-256 of the access token. */
export function accessTokenHash(token: string): string {
  return createHash('sha256').update(token).digest('base64url');
}

/** htu comparison ignores query and fragment, as RFC 9449 requires. */
export function normalizeHtu(url: string): string {
  const parsed = new URL(url);
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
}

export async function verifyDpopProof(check: DpopCheck): Promise<void> {
  if (!check.proof) throw deny('BASTION_DPOP_MISSING', 'this token is bound to a key: send a DPoP proof with every request');
  if (check.proof.length > 4096) throw deny('BASTION_DPOP_INVALID', 'DPoP proof is too large');
  let header;
  try {
    header = decodeProtectedHeader(check.proof);
  } catch {
    throw deny('BASTION_DPOP_INVALID', 'DPoP proof is not a JWS');
  }
  if (header.typ !== 'dpop+jwt') throw deny('BASTION_DPOP_INVALID', 'DPoP proof typ must be dpop+jwt');
  if (typeof header.alg !== 'string' || !check.algorithms.includes(header.alg)) {
    throw deny('BASTION_DPOP_INVALID', `DPoP proof algorithm ${String(header.alg)} is not allowed`);
  }
  const jwk = header.jwk as JWK | undefined;
  if (!jwk || typeof jwk !== 'object' || 'd' in jwk) throw deny('BASTION_DPOP_INVALID', 'DPoP proof must carry a public jwk');
  if ((await calculateJwkThumbprint(jwk)) !== check.jkt) {
    throw deny('BASTION_DPOP_INVALID', 'DPoP proof is signed by a key other than the one the token is bound to');
  }
  let payload;
  try {
    const key = await importJWK(jwk, header.alg);
    ({ payload } = await jwtVerify(check.proof, key, { typ: 'dpop+jwt', algorithms: check.algorithms }));
  } catch {
    throw deny('BASTION_DPOP_INVALID', 'DPoP proof signature is invalid');
  }
  const nowSeconds = (check.now ?? Date.now)() / 1000;
  const skew = check.clockSkewMs / 1000;
  const { htm, htu, iat, jti, ath } = payload as Record<string, unknown>;
  if (htm !== check.method) throw deny('BASTION_DPOP_INVALID', `DPoP proof is for method ${String(htm)}, not ${check.method}`);
  if (typeof htu !== 'string' || normalizeHtu(htu) !== normalizeHtu(check.url)) {
    throw deny('BASTION_DPOP_INVALID', `DPoP proof is for ${String(htu)}, not ${normalizeHtu(check.url)}`);
  }
  if (typeof iat !== 'number' || !Number.isFinite(iat)) throw deny('BASTION_DPOP_INVALID', 'DPoP proof has no iat');
  if (iat > nowSeconds + skew) throw deny('BASTION_DPOP_INVALID', 'DPoP proof iat is in the future');
  if (iat < nowSeconds - check.maxAgeMs / 1000 - skew) throw deny('BASTION_DPOP_INVALID', 'DPoP proof is stale');
  if (ath !== accessTokenHash(check.accessToken)) throw deny('BASTION_DPOP_INVALID', 'DPoP proof ath does not match the access token');
  if (typeof jti !== 'string' || jti.length === 0 || jti.length > 256) throw deny('BASTION_DPOP_INVALID', 'DPoP proof needs a jti');
  // A proof is single-use within its freshness window.
  const fresh = await check.state.claim('dpop-jti', `${check.jkt} ${jti}`, check.maxAgeMs + 2 * check.clockSkewMs);
  if (!fresh) throw deny('BASTION_DPOP_REPLAYED', 'DPoP proof was already used');
}
