/**
 * Approval pickup for 2026-07-28 agents: a call that waits for humans is not
 * held on one HTTP response. Bastion parks it (owner PICKUP_OWNER: no process
 * holds it), watches it for a bounded hold, and if approvers have not decided
 * by then answers `input_required` with a `requestState` only: a ticket
 * sealed by Bastion (broker/server/request-state.ts, purpose `approval`),
 * naming the parked record and its call hash, bound to the principal, the
 * tool and the arguments' hash, expiring with the approval request (plus
 * PICKUP_GRACE_MS once approved). The agent's retry of the same call presents
 * it, on any replica; the record in the state store says what happens next,
 * and claimForExecution (approved → dispatched, compare-and-set) lets exactly
 * one retry run the tool.
 *
 * @example
 *   const tickets = new PickupTickets(RequestStateSealer.fromSecret(secret, 'approval'));
 *   const state = await tickets.issue({ approval_id, call_hash }, binding, expiresAt);
 *   const ticket = await tickets.redeem(state, binding);   // throws the approve-stage Denial
 */
import { Denial, type DenialCode } from '../errors.ts';
import type { RequestStateRefusalCode, RequestStateSealer, StateBinding } from '../server/request-state.ts';
import { PICKUP_GRACE_MS } from './record.ts';

/** What an approval pickup's requestState carries (sealed: the agent can neither read nor change it). */
export interface PickupTicket {
  approval_id: string;
  call_hash: string;
}

const REFUSALS: Record<RequestStateRefusalCode, DenialCode> = {
  BASTION_STATE_MALFORMED: 'BASTION_APPROVAL_STATE_INVALID',
  BASTION_STATE_TAMPERED: 'BASTION_APPROVAL_STATE_INVALID',
  BASTION_STATE_OTHER_PRINCIPAL: 'BASTION_APPROVAL_STATE_INVALID',
  BASTION_STATE_OTHER_CALL: 'BASTION_APPROVAL_STATE_INVALID',
  BASTION_STATE_EXPIRED: 'BASTION_APPROVAL_TIMEOUT',
};

export class PickupTickets {
  private readonly sealer: RequestStateSealer;
  private readonly now: () => number;

  constructor(sealer: RequestStateSealer, now: () => number = Date.now) {
    this.sealer = sealer;
    this.now = now;
  }

  /** Seals a ticket for the record expiring at `expiresAt`; valid until then plus the pickup grace. */
  issue(ticket: PickupTicket, binding: StateBinding, expiresAt: number): Promise<string> {
    return this.sealer.seal(ticket, binding, Math.max(1, expiresAt + PICKUP_GRACE_MS - this.now()));
  }

  /**
   * Whether `state` is an approval pickup at all (sealed under this purpose's key), whoever it is
   * bound to: a requestState slot shared with other continuations (an upstream's relayed
   * input_required) is routed here when true, and every refusal then comes from redeem().
   */
  async recognizes(state: unknown, binding: StateBinding): Promise<boolean> {
    const opened = await this.sealer.open(state, binding);
    return opened.ok || (opened.refusal.code !== 'BASTION_STATE_TAMPERED' && opened.refusal.code !== 'BASTION_STATE_MALFORMED');
  }

  /** Opens a ticket the agent brought back for `binding`; a refusal is the approve-stage Denial, its reason saying what to do. */
  async redeem(state: unknown, binding: StateBinding): Promise<PickupTicket> {
    const opened = await this.sealer.open<PickupTicket>(state, binding);
    if (!opened.ok) throw new Denial('approve', REFUSALS[opened.refusal.code], `${opened.refusal.code}: ${opened.refusal.message}`);
    const { approval_id, call_hash } = opened.payload ?? ({} as Partial<PickupTicket>);
    if (typeof approval_id !== 'string' || typeof call_hash !== 'string') {
      throw new Denial('approve', 'BASTION_APPROVAL_STATE_INVALID', 'requestState is not an approval pickup; retry the call without requestState');
    }
    return { approval_id, call_hash };
  }
}
