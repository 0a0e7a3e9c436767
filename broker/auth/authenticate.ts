/**
 * Stage 1 as the front door runs it: verify the token (verify.ts), then the
 * checks that need state or the request itself: revocation, proof of
 * possession, single use. Order matters: a stolen single-use token sent
 * without its key's proof must not burn the token for its owner.
 *
 * @example
 *   const principal = await authenticator.authenticate({ token, transport: 'http', method: 'POST', url, dpop });
 */
import { Denial } from '../errors.ts';
import type { StateStore } from '../state/store.ts';
import { verifyDpopProof } from './dpop.ts';
import { revocationOf } from './revocation.ts';
import type { Principal, TokenVerifier } from './verify.ts';

export interface RequestEvidence {
  token: string | undefined;
  transport: 'http' | 'stdio';
  /** HTTP only: what the DPoP proof must bind. */
  method?: string;
  url?: string;
  dpop?: string | undefined;
}

export interface Authenticator {
  authenticate(evidence: RequestEvidence): Promise<Principal>;
}

export interface AuthenticatorOptions {
  verifier: TokenVerifier;
  state: StateStore;
  algorithms: string[];
  dpopMaxAgeMs: number;
  clockSkewMs: number;
  now?: () => number;
}

/** Runs a state operation; a failing store is a denial, never a pass. */
async function fromState<T>(operation: () => Promise<T>): Promise<T> {
  try {
    return await operation();
  } catch (error) {
    throw new Denial('authenticate', 'BASTION_STATE_UNAVAILABLE', `state store unavailable: ${(error as Error).message}`);
  }
}

export function createAuthenticator(options: AuthenticatorOptions): Authenticator {
  const now = options.now ?? Date.now;
  return {
    async authenticate(evidence) {
      const principal = await options.verifier.verify(evidence.token);
      const revoked = await fromState(() => revocationOf(options.state, principal));
      if (revoked) throw new Denial('authenticate', 'BASTION_TOKEN_REVOKED', revoked);
      if (principal.jkt) {
        if (evidence.transport !== 'http' || !evidence.method || !evidence.url) {
          throw new Denial('authenticate', 'BASTION_DPOP_MISSING', 'key-bound tokens need DPoP proofs, which only the HTTP transport carries');
        }
        const { method, url } = evidence;
        const proofCheck = verifyDpopProof({
          proof: evidence.dpop,
          method,
          url,
          accessToken: evidence.token!,
          jkt: principal.jkt,
          state: options.state,
          algorithms: options.algorithms,
          maxAgeMs: options.dpopMaxAgeMs,
          clockSkewMs: options.clockSkewMs,
          now,
        });
        // Denials pass through; anything else came from the state store.
        await proofCheck.catch((error: unknown) => {
          if (error instanceof Denial) throw error;
          return fromState(() => Promise.reject(error));
        });
      }
      if (principal.singleUse) {
        const ttlMs = Math.max(1000, principal.exp * 1000 - now() + options.clockSkewMs);
        const first = await fromState(() => options.state.claim('token-jti', `${principal.iss}|${principal.jti}`, ttlMs));
        if (!first) throw new Denial('authenticate', 'BASTION_TOKEN_REPLAYED', 'this single-use token was already presented');
      }
      return principal;
    },
  };
}
