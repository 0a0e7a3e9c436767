/**
 * A grant the grants policy marks `approval.required` waits for a human:
 * after the user consents, it is parked on the approval desk like a
 * high-risk tool call (shown on /approvals as `oauth:grant`, with the
 * client, its redirect URI and the exact capabilities as arguments), and the
 * user's browser waits on a page that reloads itself. An approval is bound to
 * the hash of exactly that grant and consumed once; a denial, a timeout, or
 * approvals switched off end the authorization with access_denied. The user
 * asking can never approve their own grant (the desk's separation of duties).
 *
 * @example
 *   const id = await askApprover(desk, request, { timeoutMs });
 *   const state = await approvalOf(desk, id, hash);   // 'pending' | 'approved' | { refused }
 */
import type { ApprovalDesk } from '../approvals/desk.ts';
import type { Denial } from '../errors.ts';
import { callHash } from '../approvals/record.ts';
import type { Capability } from '../policy/schema.ts';
import type { GrantIdentity, GrantsInput } from './grants.ts';

export const GRANT_TOOL = 'oauth:grant';
const GRANT_DESCRIPTOR = 'sha256:oauth-grant';

export interface GrantApprovalRequest {
  identity: GrantIdentity;
  client: GrantsInput['client'];
  cap: Capability[];
  reason: string;
  reasons: string[];
}

/** What the approval is bound to: the user, the client, where the code goes, and the capabilities. */
function bound(request: GrantApprovalRequest) {
  const principal = { sub: request.identity.sub, iss: request.identity.iss };
  const args = { client_id: request.client.id, client_name: request.client.name ?? null, redirect_uri: request.client.redirect_uri ?? null, cap: request.cap };
  return { principal, args, hash: callHash(principal, GRANT_TOOL, args, GRANT_DESCRIPTOR) };
}

/** Parks the grant for an approver; returns the approval id and the hash it is bound to. */
export async function askApprover(desk: ApprovalDesk, request: GrantApprovalRequest, options: { timeoutMs: number }): Promise<{ id: string; hash: string }> {
  const { principal, args, hash } = bound(request);
  const call = await desk.submit({
    call_hash: hash,
    principal: { ...principal, act: [] },
    tool: GRANT_TOOL,
    connector: 'oauth',
    risk: 'high',
    descriptor_hash: GRANT_DESCRIPTOR,
    arguments: args,
    reasons: request.reasons,
    approval_reason: request.reason,
    quorum: 1,
    roles: [],
    timeoutMs: options.timeoutMs,
  });
  return { id: call.id, hash };
}

export type GrantApprovalState = 'pending' | 'approved' | { refused: string };

/** Where the grant's approval stands; an approval is consumed the first time it is seen approved. */
export async function approvalOf(desk: ApprovalDesk, id: string, hash: string): Promise<GrantApprovalState> {
  const call = await desk.get(id);
  if (!call) return { refused: 'the approval request disappeared' };
  if (call.status === 'pending') return 'pending';
  if (call.status === 'approved') {
    try {
      // approved → dispatched (once, same hash) → executed: the grant is issued by the caller right after.
      await desk.claimForExecution(id, hash);
      await desk.settle(id, 'executed', 'the grant was issued');
      return 'approved';
    } catch (error) {
      return { refused: (error as Denial).reason ?? (error as Error).message };
    }
  }
  return { refused: call.status === 'denied' ? `an approver denied the grant: ${call.outcome ?? ''}` : `the grant approval is ${call.status}` };
}
