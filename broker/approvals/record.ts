/**
 * A parked call: what approvers see and decide on, stored behind the state
 * interface so it survives a restart. The record is bound to one exact call
 * by `call_hash`; an approval is for that hash and nothing else.
 *
 * @example
 *   const hash = callHash({ iss, sub }, 'demo__delete_file', { path: '/srv/tmp/x' }, 'sha256:…');
 */
import { z } from 'zod';
import { canonicalJson, sha256 } from '../audit/chain.ts';
import { FlowExplanationSchema } from '../flows/explain.ts';

export const APPROVALS = 'approvals';

/**
 * The life of a record; each state says only what is known.
 *
 *   pending ──▶ approved ──▶ dispatched ──▶ executed     the upstream answered (a result, or a tool error)
 *      │           │             │      └──▶ failed       the executor threw (unreachable, timed out, refused)
 *      │           │             └─────────▶ interrupted  the broker stopped before an answer: whether the tool ran is unknown
 *      │           └───────────────────────▶ abandoned    approved, but nothing will run it (agent gone, re-check refused)
 *      └──▶ denied | expired | withdrawn | abandoned
 *
 * pending, approved and dispatched are not terminal: the owner settles them,
 * or the sweeper does once the owner is gone (desk.ts).
 */
export const ApprovalStatus = z.enum(['pending', 'approved', 'dispatched', 'executed', 'failed', 'interrupted', 'denied', 'expired', 'withdrawn', 'abandoned']);
export type ApprovalStatus = z.infer<typeof ApprovalStatus>;

/**
 * The owner of a call parked for a 2026-07-28 agent that comes back for it (pickup.ts): no
 * process holds its connection, any replica may pick it up, and it is waited for until it
 * expires (pending) or until PICKUP_GRACE_MS after that (approved, not yet picked up).
 */
export const PICKUP_OWNER = 'pickup';
/** How long an approved pickup call stays claimable after its approval request expired. */
export const PICKUP_GRACE_MS = 10 * 60_000;

export const OPEN_STATUSES: ReadonlySet<ApprovalStatus> = new Set(['pending', 'approved', 'dispatched']);

export const ApproverDecisionSchema = z.strictObject({
  approver: z.string(),
  decision: z.enum(['approve', 'deny']),
  reason: z.string(),
  at: z.string(),
  /** When the approver authenticated (their session start). */
  auth_time: z.string(),
  /** Broker-signed JWS over approver, auth_time, call_hash, decision, reason: evidence that outlives the log. */
  jws: z.string(),
});
export type ApproverDecision = z.infer<typeof ApproverDecisionSchema>;

export const ParkedCallSchema = z.strictObject({
  id: z.string(),
  call_hash: z.string(),
  status: ApprovalStatus,
  principal: z.strictObject({ sub: z.string(), iss: z.string(), act: z.array(z.strictObject({ sub: z.string() })) }),
  tool: z.string(),
  connector: z.string(),
  risk: z.enum(['low', 'medium', 'high']),
  descriptor_hash: z.string(),
  /** Shown to approvers exactly as the agent sent them; attacker-controlled text. */
  arguments: z.record(z.string(), z.unknown()),
  reasons: z.array(z.string()),
  approval_reason: z.string(),
  quorum: z.number().int().min(1),
  /** Approver roles the policy asked for; empty: any approver. */
  roles: z.array(z.string()),
  /** The policy asked for a recent sign-in: a vote counts only from an approver who authenticated at most this long ago. */
  max_auth_age_s: z.number().int().min(1).optional(),
  /** When a flow rule asked for the approval: which earlier results made this call suspect, and how. Attacker-controlled text. */
  flow: FlowExplanationSchema.optional(),
  created_at: z.string(),
  expires_at: z.string(),
  /** The broker process holding the agent's connection (`replica#epoch`, owners.ts); gone means the call can never run. */
  owner: z.string(),
  decisions: z.array(ApproverDecisionSchema),
  /** Why the record left `pending` (who denied, timeout, agent gone). */
  outcome: z.string().optional(),
});
export type ParkedCall = z.infer<typeof ParkedCallSchema>;

/** The hash an approval is bound to: principal, tool, arguments and the tool's descriptor. */
export function callHash(principal: { iss: string; sub: string }, tool: string, args: Record<string, unknown>, descriptorHash: string): string {
  return sha256(canonicalJson({ principal: { iss: principal.iss, sub: principal.sub }, tool, arguments: args, descriptor_hash: descriptorHash }));
}

export function parseParkedCall(text: string): ParkedCall {
  return ParkedCallSchema.parse(JSON.parse(text));
}
