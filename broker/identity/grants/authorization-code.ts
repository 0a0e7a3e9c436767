/**
 * The authorization_code grant, Bastion's part: the token carries exactly
 * what the user approved on the consent page moments before (the library
 * has already checked the code, PKCE, redirect URI, client and replay).
 *
 * @example
 *   issueFromConsent(ctx, record);
 */
import type { GrantRecord } from '../grant-records.ts';
import { decideIssuance } from '../issuance.ts';

export function issueFromConsent(ctx: object, record: GrantRecord): void {
  decideIssuance(ctx, { cap: record.consented, ttlMs: record.ttlMs });
}
