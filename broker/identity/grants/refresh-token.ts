/**
 * The refresh_token grant, Bastion's part: the capabilities are decided
 * again, by the grants policy in force now, for the identity as the IdP sees
 * it now (its own refresh token yields a fresh ID token with the current
 * groups). The result is narrowed to what the user consented to: a refresh
 * can lose tools, never gain them (more needs a new sign-in and consent).
 * A user the IdP refuses, or whom the policy now grants nothing, loses the
 * whole token family.
 *
 * The library has already checked the token, its client binding, expiry and
 * DPoP binding; reuse of a rotated token is refused (and the family
 * revoked) by the library after this step, which skips consumed tokens.
 *
 * @example
 *   await reissueOnRefresh(ctx, grantId, record, { policy, records, upstream, maxTtlMs });
 */
import { errors } from 'oidc-provider';
import { grantProblem } from '../../auth/attenuate.ts';
import type { PolicyEngine } from '../../policy/engine.ts';
import type { Capability } from '../../policy/schema.ts';
import type { GrantRecord, GrantRecords } from '../grant-records.ts';
import { decideGrant, GrantRefusal } from '../grants.ts';
import { decideIssuance } from '../issuance.ts';
import { UpstreamRefusal, type UpstreamIdp } from '../upstream.ts';

export interface RefreshDeps {
  policy: () => PolicyEngine;
  records: GrantRecords;
  upstream: () => Promise<UpstreamIdp>;
  maxTtlMs: number;
  /** How long a family lives from its sign-in (identity.refresh_max_age). */
  familyMaxAgeMs: number;
  /** Ends the token family (the grant and everything issued from it). */
  revokeFamily: (grantId: string) => Promise<void>;
  /** Told what the refresh decided, for the audit trail. */
  onRefreshed: (record: GrantRecord, cap: Capability[], dropped: Capability[]) => void;
}

/** The grants of `decided` that some consented grant covers (and the rest). */
function withinConsent(consented: Capability[], decided: Capability[]): { kept: Capability[]; dropped: Capability[] } {
  const kept: Capability[] = [];
  const dropped: Capability[] = [];
  for (const cap of decided) (consented.some((parent) => grantProblem(parent, cap) === undefined) ? kept : dropped).push(cap);
  return { kept, dropped };
}

export async function reissueOnRefresh(ctx: object, grantId: string, record: GrantRecord, deps: RefreshDeps): Promise<void> {
  let current = record;
  if (record.upstreamRefreshToken) {
    try {
      const now = await (await deps.upstream()).refreshIdentity(record.upstreamRefreshToken, record.identity.sub);
      current = { ...record, identity: now.identity, upstreamRefreshToken: now.upstreamRefreshToken };
    } catch (error) {
      if (!(error instanceof UpstreamRefusal)) throw error;
      if (error.code !== 'idp_unreachable') await deps.revokeFamily(grantId);
      throw new errors.InvalidGrant(`the identity provider no longer vouches for this user: ${error.message}`);
    }
  }
  let cap: Capability[];
  let ttlMs: number;
  try {
    ({ cap, ttlMs } = decideGrant(deps.policy(), { version: 1, identity: current.identity, client: current.client, scopes: current.scopes, grant_type: 'refresh_token', context: { time: new Date().toISOString() } }, deps.maxTtlMs));
  } catch (error) {
    if (!(error instanceof GrantRefusal)) throw error;
    if (error.code === 'BASTION_GRANT_DENIED') await deps.revokeFamily(grantId);
    throw new errors.InvalidGrant(`${error.code === 'BASTION_GRANT_DENIED' ? 'the grants policy no longer grants this user anything' : 'the grants policy failed'}: ${error.reason}`);
  }
  const { kept, dropped } = withinConsent(current.consented, cap);
  if (kept.length === 0) {
    await deps.revokeFamily(grantId);
    throw new errors.InvalidGrant('nothing the grants policy allows now was consented to; sign in again');
  }
  if (current !== record) await deps.records.put(grantId, current, Math.max(1000, record.signedInAt + deps.familyMaxAgeMs - Date.now()));
  deps.onRefreshed(current, kept, dropped);
  decideIssuance(ctx, { cap: kept, ttlMs });
}
