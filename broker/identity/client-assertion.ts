/**
 * Client assertions (private_key_jwt, RFC 7523 §2.2) as Bastion takes them,
 * on top of what the library checks (alg among the allowed, signature by
 * the client's registered key, iss = sub = client_id, exp present, jti
 * present, an audience that includes this server). These steps run in the
 * library's assertJwtClientAuthClaimsAndHeader hook, after the signature:
 *
 *   checkAssertionAudience   aud exactly one value, this server's issuer or token endpoint
 *                            (an assertion for several parties could be replayed at another) → invalid_client
 *   checkAssertionLifetime   iat present and not in the future, exp − iat at most 5 minutes → invalid_client
 *   checkAssertionSingleUse  its jti claimed once in the state store (a compare-and-set, shared by
 *                            replicas), until it expires → invalid_client
 *
 * @example
 *   assertJwtClientAuthClaimsAndHeader: checkClientAssertion({ state, issuer, tokenEndpoint, clockSkewMs }),
 */
import { createHash } from 'node:crypto';
import { errors, type KoaContextWithOIDC } from 'oidc-provider';
import type { StateStore } from '../state/store.ts';
import { refusal } from './headless-token.ts';

/** Longest lifetime (exp − iat) of a client assertion accepted. */
export const MAX_ASSERTION_LIFETIME_S = 300;
const ASSERTIONS = 'oauth:client-assertion';

export interface ClientAssertionOptions {
  state: StateStore;
  issuer: string;
  tokenEndpoint: string;
  clockSkewMs: number;
  now?: () => number;
}

export function checkClientAssertion(options: ClientAssertionOptions) {
  const now = options.now ?? Date.now;
  const skewS = Math.floor(options.clockSkewMs / 1000);
  return async (_ctx: KoaContextWithOIDC, claims: Record<string, unknown>): Promise<void> => {
    // checkAssertionAudience
    const aud = Array.isArray(claims.aud) && claims.aud.length === 1 ? claims.aud[0] : claims.aud;
    if (aud !== options.issuer && aud !== options.tokenEndpoint) {
      throw refusal(errors.InvalidClientAuth, `the client assertion's aud must be exactly ${options.issuer} (or ${options.tokenEndpoint}), and nothing else`);
    }
    // checkAssertionLifetime
    const { iat, exp, jti, iss } = claims;
    const nowS = Math.floor(now() / 1000);
    if (typeof iat !== 'number' || !Number.isSafeInteger(iat) || typeof exp !== 'number' || !Number.isSafeInteger(exp)) {
      throw refusal(errors.InvalidClientAuth, 'the client assertion needs integer iat and exp');
    }
    if (iat > nowS + skewS) throw refusal(errors.InvalidClientAuth, 'the client assertion was issued in the future');
    if (exp - iat > MAX_ASSERTION_LIFETIME_S) throw refusal(errors.InvalidClientAuth, `the client assertion may live at most ${MAX_ASSERTION_LIFETIME_S} s (exp − iat is ${exp - iat} s)`);
    // checkAssertionSingleUse
    const key = createHash('sha256').update(`${String(iss)}\n${String(jti)}`).digest('base64url');
    const ttlMs = Math.max(1000, (exp + skewS) * 1000 - now());
    if (!(await options.state.claim(ASSERTIONS, key, ttlMs))) throw refusal(errors.InvalidClientAuth, 'this client assertion was presented before: each jti works once');
  };
}
