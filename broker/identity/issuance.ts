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
import type { Capability } from '../policy/schema.ts';

export interface Issuance {
  cap: Capability[];
  ttlMs: number;
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
