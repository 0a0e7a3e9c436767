/**
 * The approval desk on its own (real embedded state store, real signing):
 * quorum, one denial ending it, exactly-once consumption, parked calls whose
 * broker process is gone (restarted, fenced, or of another live replica),
 * and the sweeper that brings every record to a terminal state.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { compactVerify, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { ApprovalDesk, stateBus, type Approver, type ParkRequest } from '../../broker/approvals/desk.ts';
import { callHash, PICKUP_GRACE_MS, PICKUP_OWNER } from '../../broker/approvals/record.ts';
import type { AuditEvent } from '../../broker/audit/chain.ts';
import { Denial } from '../../broker/errors.ts';
import { createLogger } from '../../broker/log.ts';
import { openEmbeddedState } from '../../broker/state/embedded.ts';
import type { StateStore } from '../../broker/state/store.ts';
import { eventually } from '../helpers/approver.ts';

let dir: string;
let state: StateStore;
let key: JWK;
let publicKey: CryptoKey;
let audit: AuditEvent[];

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-desk-'));
  state = await openEmbeddedState(path.join(dir, 'state.db'));
  const pair = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  key = { ...(await exportJWK(pair.privateKey)), alg: 'EdDSA', kid: 'broker' };
  publicKey = pair.publicKey;
  audit = [];
});
afterEach(async () => {
  await state.close();
  await rm(dir, { recursive: true, force: true });
});

const desk = (replica?: string) =>
  new ApprovalDesk({ state, bus: stateBus(state), audit: async (e) => void audit.push(e), log: createLogger('silent'), signingKey: key, ...(replica ? { replica } : {}) });

const request = (quorum = 1): ParkRequest => {
  const args = { path: '/prod/db' };
  return {
    call_hash: callHash({ iss: 'i', sub: 'agent:a' }, 'db__drop', args, 'sha256:d'),
    principal: { sub: 'agent:a', iss: 'i', act: [] },
    tool: 'db__drop',
    connector: 'db',
    risk: 'high',
    descriptor_hash: 'sha256:d',
    arguments: args,
    reasons: ['destructive'],
    approval_reason: 'drops a database',
    quorum,
    roles: [],
    timeoutMs: 60_000,
  };
};
const person = (sub: string, roles: string[] = []): Approver => ({ sub, roles, authTime: new Date().toISOString() });

/** Parks `req` on `d` and has alice approve it; resolves once the waiter has the approved record. */
async function parkApproved(d: ApprovalDesk, req: ParkRequest = request()) {
  const waiting = d.park(req);
  const parked = await eventually(async () => (await d.pending()).find((c) => c.tool === req.tool), 'parked');
  await d.decide(person('alice'), parked.id, 'approve', '', parked.call_hash);
  await waiting;
  return parked;
}

describe('quorum', () => {
  it('a quorum of 2 needs two distinct approvers', async () => {
    const d = desk();
    const waiting = d.park(request(2));
    const parked = await eventually(async () => (await d.pending())[0], 'parked');
    expect((await d.decide(person('alice'), parked.id, 'approve', '', parked.call_hash)).status).toBe('pending');
    await expect(d.decide(person('alice'), parked.id, 'approve', '', parked.call_hash)).rejects.toMatchObject({ status: 409 });
    expect((await d.get(parked.id))?.status).toBe('pending');
    expect((await d.decide(person('bob'), parked.id, 'approve', 'fine', parked.call_hash)).status).toBe('approved');
    const approved = await waiting;
    expect(approved.decisions.map((x) => x.approver)).toEqual(['alice', 'bob']);
    // Each decision carries broker-signed evidence binding approver, time and call hash.
    const { payload } = await compactVerify(approved.decisions[1]!.jws, publicKey);
    expect(JSON.parse(new TextDecoder().decode(payload))).toMatchObject({ approver: 'bob', call_hash: parked.call_hash, decision: 'approve', reason: 'fine' });
    await d.stop();
  });

  it('one denial ends it, even after approvals', async () => {
    const d = desk();
    const waiting = d.park(request(3));
    const parked = await eventually(async () => (await d.pending())[0], 'parked');
    await d.decide(person('alice'), parked.id, 'approve', '', parked.call_hash);
    await d.decide(person('bob'), parked.id, 'deny', 'wrong database', parked.call_hash);
    await expect(waiting).rejects.toMatchObject({ code: 'BASTION_APPROVAL_DENIED', reason: 'denied by bob: wrong database' });
    await expect(d.decide(person('carol'), parked.id, 'approve', '', parked.call_hash)).rejects.toMatchObject({ status: 409 });
    await d.stop();
  });

  it('roles the policy asks for are enforced', async () => {
    const d = desk();
    const waiting = d.park({ ...request(1), roles: ['dba'] });
    const parked = await eventually(async () => (await d.pending())[0], 'parked');
    await expect(d.decide(person('alice', ['ops']), parked.id, 'approve', '', parked.call_hash)).rejects.toMatchObject({ status: 403 });
    await d.decide(person('bob', ['dba']), parked.id, 'approve', '', parked.call_hash);
    await waiting;
    expect(audit).toContainEqual(expect.objectContaining({ event: 'approval.vote-refused', detail: expect.objectContaining({ approver: 'alice', approver_roles: ['ops'] }) }));
    await d.stop();
  });

  it('a call that asks for a recent sign-in refuses an older one (401, sign in again) and counts a fresh one', async () => {
    const d = desk();
    const waiting = d.park({ ...request(1), max_auth_age_s: 300 });
    const parked = await eventually(async () => (await d.pending())[0], 'parked');
    const stale = { ...person('alice'), authTime: new Date(Date.now() - 3_600_000).toISOString() };
    await expect(d.decide(stale, parked.id, 'approve', '', parked.call_hash)).rejects.toMatchObject({ status: 401, reauthenticateWithinS: 300, message: expect.stringMatching(/within the last 300 s/) });
    await expect(d.decide({ ...person('alice'), authTime: 'not a time' }, parked.id, 'approve', '', parked.call_hash)).rejects.toMatchObject({ status: 401 });
    expect((await d.get(parked.id))?.decisions).toEqual([]);
    expect(audit).toContainEqual(expect.objectContaining({ event: 'approval.vote-refused', detail: expect.objectContaining({ approver: 'alice', auth_time: stale.authTime }) }));
    await d.decide(person('alice'), parked.id, 'approve', '', parked.call_hash);
    expect((await waiting).decisions.map((decision) => decision.auth_time)).toHaveLength(1);
    await d.stop();
  });
});

describe('exactly once', () => {
  it('an approval is consumed by one hand-over to the executor only, for its own hash; the record then says what came back', async () => {
    const d = desk();
    const parked = await parkApproved(d);
    const other = callHash({ iss: 'i', sub: 'agent:a' }, 'db__drop', { path: '/prod/other' }, 'sha256:d');
    await expect(d.claimForExecution(parked.id, other)).rejects.toBeInstanceOf(Denial);
    const claims = await Promise.allSettled([d.claimForExecution(parked.id, parked.call_hash), d.claimForExecution(parked.id, parked.call_hash)]);
    expect(claims.filter((c) => c.status === 'fulfilled')).toHaveLength(1);
    // Handed over, nothing more is known yet.
    expect((await d.get(parked.id))?.status).toBe('dispatched');
    await d.settle(parked.id, 'executed', 'the upstream answered');
    expect(await d.get(parked.id)).toMatchObject({ status: 'executed', outcome: 'the upstream answered' });
    expect(audit.map((e) => e.event)).toEqual(['approval.requested', 'approval.approved', 'approval.dispatched', 'approval.executed']);
    await d.stop();
  });
});

describe('owners that are gone', () => {
  it('a restarted process of the same replica fences its predecessor at once, though its heartbeat is still fresh: approving marks the call abandoned', async () => {
    // The predecessor beats (start) and is then "killed": it never stops, its heartbeat key lives on.
    const gone = desk('replica-a');
    await gone.start();
    void gone.park(request()).catch(() => undefined);
    const parked = await eventually(async () => (await gone.pending())[0], 'parked');
    expect(parked.owner).toBe('replica-a#1');

    const restarted = desk('replica-a');
    await restarted.start();
    expect(restarted.owner).toBe('replica-a#2');
    expect((await restarted.pending()).map((c) => c.id)).toEqual([parked.id]);
    expect(await restarted.ownerIsAlive(parked)).toBe(false);
    const decided = await restarted.decide(person('alice'), parked.id, 'approve', '', parked.call_hash);
    expect(decided.status).toBe('abandoned');
    await expect(restarted.claimForExecution(parked.id, parked.call_hash)).rejects.toBeInstanceOf(Denial);
    expect(audit.map((e) => e.event)).toContain('approval.abandoned');
    await Promise.all([gone.stop(), restarted.stop()]);
  });

  it('a fenced predecessor that is still running runs nothing, even an approval it already holds', async () => {
    const old = desk('replica-z');
    const parked = await parkApproved(old);
    const successor = desk('replica-z');
    await successor.start();
    await expect(old.claimForExecution(parked.id, parked.call_hash)).rejects.toMatchObject({ code: 'BASTION_APPROVAL_INVALID', reason: expect.stringContaining('newer broker process') });
    // The successor's first sweep settled it: approved, and its owner is fenced.
    expect(await successor.get(parked.id)).toMatchObject({ status: 'abandoned', outcome: expect.stringContaining('will not run') });
    await Promise.all([old.stop(), successor.stop()]);
  });

  it('a store that forgot the epochs (a Redis restarted empty) fences nobody: the live process claims its epoch back and runs its approved call', async () => {
    const d = desk('replica-f');
    const parked = await parkApproved(d);
    expect(await state.delete('approval-epochs', 'replica-f')).toBe(true);
    await d.claimForExecution(parked.id, parked.call_hash);
    expect((await d.get(parked.id))?.status).toBe('dispatched');
    expect(await state.get('approval-epochs', 'replica-f')).toBe('1');
    await d.stop();
  });

  it("another replica's live calls are neither shown as disconnected nor swept", async () => {
    const other = desk('replica-b');
    const waiting = other.park(request());
    waiting.catch(() => undefined);
    const parked = await eventually(async () => (await other.pending())[0], 'parked');
    const me = desk('replica-a');
    await me.start();
    await me.sweep();
    expect(await me.ownerIsAlive(parked)).toBe(true);
    expect((await me.decide(person('alice'), parked.id, 'approve', '', parked.call_hash)).status).toBe('approved');
    await me.sweep();
    expect((await waiting).status).toBe('approved');
    expect((await me.get(parked.id))?.status).toBe('approved');
    await Promise.all([other.stop(), me.stop()]);
  });

  it('with the embedded store (this process alone, under the state folder lock) every other owner is dead, whatever its heartbeat', async () => {
    const other = desk('replica-b');
    void other.park(request()).catch(() => undefined);
    const parked = await eventually(async () => (await other.pending())[0], 'parked');
    const sole = new ApprovalDesk({ state, bus: stateBus(state), audit: async (e) => void audit.push(e), log: createLogger('silent'), signingKey: key, replica: 'local', soleState: true });
    await sole.start();
    expect(await sole.ownerIsAlive(parked)).toBe(false);
    await Promise.all([other.stop(), sole.stop()]);
  });
});

describe('every record ends in a terminal state', () => {
  it('the sweeper settles what a dead owner left: approved → abandoned, dispatched → interrupted, pending → listed until it expires, then expired', async () => {
    let clock = Date.now();
    const at = (replica: string) =>
      new ApprovalDesk({ state, bus: stateBus(state), audit: async (e) => void audit.push(e), log: createLogger('silent'), signingKey: key, replica, now: () => clock });
    const dead = at('replica-a');
    const approvedWait = dead.park(request());
    const dispatchedWait = dead.park({ ...request(), tool: 'db__dump' });
    void dead.park({ ...request(), tool: 'db__wait' }).catch(() => undefined);
    const parked = await eventually(async () => ((await dead.pending()).length === 3 ? dead.pending() : undefined), 'three parked');
    const byTool = (tool: string) => parked.find((c) => c.tool === tool)!;
    await dead.decide(person('alice'), byTool('db__drop').id, 'approve', '', byTool('db__drop').call_hash);
    await dead.decide(person('alice'), byTool('db__dump').id, 'approve', '', byTool('db__dump').call_hash);
    await approvedWait;
    await dispatchedWait;
    await dead.claimForExecution(byTool('db__dump').id, byTool('db__dump').call_hash);
    // The process dies here (no stop, no settle); a new one of the same replica starts and sweeps.
    const restarted = at('replica-a');
    await restarted.start();
    expect((await restarted.get(byTool('db__drop').id))?.status).toBe('abandoned');
    expect(await restarted.get(byTool('db__dump').id)).toMatchObject({ status: 'interrupted', outcome: expect.stringContaining('whether the tool ran is unknown') });
    expect((await restarted.get(byTool('db__wait').id))?.status).toBe('pending');
    clock += 61_000;
    await restarted.sweep();
    expect(await restarted.get(byTool('db__wait').id)).toMatchObject({ status: 'expired', outcome: expect.stringContaining('agent connection was already gone') });
    const swept = audit.filter((e) => e.detail?.swept_by === 'replica-a#2').map((e) => e.event).sort();
    expect(swept).toEqual(['approval.abandoned', 'approval.expired', 'approval.interrupted']);
    await Promise.all([dead.stop(), restarted.stop()]);
  });

  it('an approval and a cancellation that cross leave the record abandoned, never approved for good', async () => {
    const d = desk();
    const controller = new AbortController();
    const waiting = d.park(request(), { signal: controller.signal });
    const parked = await eventually(async () => (await d.pending())[0], 'parked');
    // Another replica wrote the approval, and its wake-up message was lost (pub/sub across a reconnect).
    const text = (await state.get('approvals', parked.id))!;
    expect(await state.compareAndSet('approvals', parked.id, text, JSON.stringify({ ...JSON.parse(text), status: 'approved' }))).toBe(true);
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'BASTION_APPROVAL_WITHDRAWN' });
    expect(await d.get(parked.id)).toMatchObject({ status: 'abandoned', outcome: expect.stringContaining('cancelled the call before it ran') });
    await d.stop();
  });
});

describe('pickup calls (2026-07-28 agents that come back)', () => {
  it('nobody owns a pickup call: any replica may approve it (never "disconnected"), the sweeper expires it pending and abandons it approved only after the pickup grace', async () => {
    let clock = Date.now();
    const at = (replica: string) =>
      new ApprovalDesk({ state, bus: stateBus(state), audit: async (e) => void audit.push(e), log: createLogger('silent'), signingKey: key, replica, now: () => clock });
    const parker = at('replica-a');
    const other = at('replica-b');
    await other.start();
    const waiting = await parker.submit(request(), { pickup: true });
    const approved = await parker.submit({ ...request(), tool: 'db__dump' }, { pickup: true });
    // The parking process goes away at once: the calls are not its to lose.
    await parker.stop();
    expect(waiting.owner).toBe(PICKUP_OWNER);
    expect(await other.ownerIsAlive(waiting)).toBe(true);
    expect((await other.decide(person('alice'), approved.id, 'approve', '', approved.call_hash)).status).toBe('approved');

    await other.sweep();
    expect((await other.get(waiting.id))?.status).toBe('pending');
    clock += 61_000; // past expiry, within the grace
    await other.sweep();
    expect((await other.get(waiting.id))?.status).toBe('expired');
    expect((await other.get(approved.id))?.status).toBe('approved');
    clock += PICKUP_GRACE_MS;
    await other.sweep();
    expect(await other.get(approved.id)).toMatchObject({ status: 'abandoned' });
    await other.stop();
  });

  it('hold returns a pending record when the hold ends, the decided one as soon as it is decided, and the claimant becomes the owner', async () => {
    const d = desk('replica-c');
    const parked = await d.submit(request(), { pickup: true });
    expect(await d.hold(parked.id, 50)).toMatchObject({ status: 'pending' });
    const holding = d.hold(parked.id, 600_000);
    await d.decide(person('alice'), parked.id, 'approve', '', parked.call_hash);
    expect(await holding).toMatchObject({ status: 'approved' });
    await d.claimForExecution(parked.id, parked.call_hash);
    expect(await d.get(parked.id)).toMatchObject({ status: 'dispatched', owner: d.owner });
    await expect(d.claimForExecution(parked.id, parked.call_hash)).rejects.toMatchObject({ code: 'BASTION_APPROVAL_INVALID' });
    await d.settle(parked.id, 'executed', 'the upstream answered');
    await d.stop();
  });
});
