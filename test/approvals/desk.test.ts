/**
 * The approval desk on its own (real embedded state store, real signing):
 * quorum, one denial ending it, exactly-once consumption, and a parked call
 * whose agent is gone.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { compactVerify, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { ApprovalDesk, stateBus, type Approver, type ParkRequest } from '../../broker/approvals/desk.ts';
import { callHash } from '../../broker/approvals/record.ts';
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

const desk = (owner?: string) =>
  new ApprovalDesk({ state, bus: stateBus(state), audit: async (e) => void audit.push(e), log: createLogger('silent'), signingKey: key, ...(owner ? { owner } : {}) });

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
    await d.stop();
  });
});

describe('exactly once', () => {
  it('an approval is consumed by one execution only, and only for its own hash', async () => {
    const d = desk();
    const waiting = d.park(request());
    const parked = await eventually(async () => (await d.pending())[0], 'parked');
    await d.decide(person('alice'), parked.id, 'approve', '', parked.call_hash);
    await waiting;
    const other = callHash({ iss: 'i', sub: 'agent:a' }, 'db__drop', { path: '/prod/other' }, 'sha256:d');
    await expect(d.claimForExecution(parked.id, other)).rejects.toBeInstanceOf(Denial);
    const claims = await Promise.allSettled([d.claimForExecution(parked.id, parked.call_hash), d.claimForExecution(parked.id, parked.call_hash)]);
    expect(claims.filter((c) => c.status === 'fulfilled')).toHaveLength(1);
    expect((await d.get(parked.id))?.status).toBe('executed');
    await d.stop();
  });

  it('a parked call whose broker process is gone is listed, and approving it marks it abandoned instead of running it', async () => {
    const gone = desk('process-that-died');
    void gone.park(request()).catch(() => undefined);
    const parked = await eventually(async () => (await gone.pending())[0], 'parked');
    // A new process (a restart) sees the same state; the old owner never beats again.
    const restarted = desk('process-after-restart');
    await restarted.start();
    expect((await restarted.pending()).map((c) => c.id)).toEqual([parked.id]);
    expect(await restarted.ownerIsAlive(parked)).toBe(false);
    const decided = await restarted.decide(person('alice'), parked.id, 'approve', '', parked.call_hash);
    expect(decided.status).toBe('abandoned');
    await expect(restarted.claimForExecution(parked.id, parked.call_hash)).rejects.toBeInstanceOf(Denial);
    expect(audit.map((e) => e.event)).toContain('approval.abandoned');
    await restarted.stop();
  });
});
