/**
 * Pickup tickets on their own (broker/approvals/pickup.ts over the real
 * request-state sealer): what a ticket binds, and how a ticket is told apart
 * from another continuation sealed by the same broker for another purpose.
 */
import { describe, expect, it } from 'vitest';
import { PickupTickets } from '../../broker/approvals/pickup.ts';
import { PICKUP_GRACE_MS } from '../../broker/approvals/record.ts';
import { RequestStateSealer } from '../../broker/server/request-state.ts';

const SECRET = 'a shared secret of at least thirty-two bytes, for tests';
const binding = { iss: 'https://issuer', sub: 'agent:a', tool: 'rec__wipe', arguments: { path: '/x' } };

describe('pickup tickets', () => {
  it('a ticket opens for its binding until its record expires plus the grace, then not', async () => {
    let now = 1_000_000;
    const tickets = new PickupTickets(RequestStateSealer.fromSecret(SECRET, 'approval', { now: () => now }), () => now);
    const state = await tickets.issue({ approval_id: 'id-1', call_hash: 'h' }, binding, now + 60_000);
    expect(await tickets.redeem(state, binding)).toEqual({ approval_id: 'id-1', call_hash: 'h' });
    now += 60_000 + PICKUP_GRACE_MS - 1;
    expect(await tickets.redeem(state, binding)).toEqual({ approval_id: 'id-1', call_hash: 'h' });
    now += 1;
    await expect(tickets.redeem(state, binding)).rejects.toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_TIMEOUT' });
  });

  it('recognizes its own tickets, whoever presents them, and not a continuation sealed for another purpose', async () => {
    const tickets = new PickupTickets(RequestStateSealer.fromSecret(SECRET, 'approval'));
    const other = RequestStateSealer.fromSecret(SECRET, 'mrtr');
    const ticket = await tickets.issue({ approval_id: 'id-2', call_hash: 'h' }, binding, Date.now() + 60_000);
    const foreign = await other.seal({ c: 'rec' }, binding, 60_000);
    expect(await tickets.recognizes(ticket, binding)).toBe(true);
    expect(await tickets.recognizes(ticket, { ...binding, sub: 'agent:thief' })).toBe(true);
    await expect(tickets.redeem(ticket, { ...binding, sub: 'agent:thief' })).rejects.toMatchObject({ code: 'BASTION_APPROVAL_STATE_INVALID' });
    expect(await tickets.recognizes(foreign, binding)).toBe(false);
    expect(await tickets.recognizes('garbage', binding)).toBe(false);
    await expect(tickets.redeem(foreign, binding)).rejects.toMatchObject({ code: 'BASTION_APPROVAL_STATE_INVALID', reason: expect.stringContaining('BASTION_STATE_TAMPERED') });
  });
});
