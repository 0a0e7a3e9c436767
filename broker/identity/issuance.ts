/**
 * Between a grant module and the library's token signing: the grant module
 * (grants/*.ts) decides what the access token being issued in this request
 * carries; oidc-provider's token hooks (ttl, extraTokenClaims) read it. No
 * decision, no token: a request that reaches signing without one fails.
 *
 * @example
 *   decideIssuance(ctx, { cap, ttlMs });          // in a grant module
 *   const { cap } = issuanceOf(ctx);              // in extraTokenClaims
 */
import type { ActClaim } from '../auth/act.ts';
import type { Capability } from '../policy/schema.ts';

export interface Issuance {
  cap: Capability[];
  ttlMs: number;
  /** The delegation chain the token records (RFC 8693 §4.1), when someone acts for its subject. */
  act?: ActClaim;
  /** What the grant module wants in the token's audit record (never a token or secret). */
  audit?: Record<string, unknown>;
}

const decided = new WeakMap<object, Issuance>();

export function decideIssuance(ctx: object, issuance: Issuance): void {
  decided.set(ctx, issuance);
}

export function issuanceOf(ctx: object | undefined): Issuance {
  const issuance = ctx ? decided.get(ctx) : undefined;
  // A programming error, never a client's: the token endpoint answers server_error and issues nothing.
  if (!issuance) throw new Error('no grant module decided what this access token carries');
  return issuance;
}

/** The issuance decided in this request, if any (for the audit record of a grant that ended). */
export function issuanceIfAny(ctx: object | undefined): Issuance | undefined {
  return ctx ? decided.get(ctx) : undefined;
}
