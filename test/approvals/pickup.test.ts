/**
 * Human approval for 2026-07-28 agents (approvals/pickup.ts): a call that
 * waits for approvers answers `input_required` with a sealed requestState
 * after a bounded hold, and the agent's retry picks the approval up. The
 * real v2 client pinned to 2026-07-28 retries on its own; raw requests
 * present what an SDK client never would: another principal's ticket, a
 * ticket for other arguments, one already used, one past its expiry (an
 * injected clock), a denied one. The tool runs once, however often the
 * agent comes back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { PICKUP_GRACE_MS } from '../../broker/approvals/record.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { approverToken, eventually, signInApprover, type ApproverClient } from '../helpers/approver.ts';
import { denialOf, MODERN, modernCall } from '../helpers/modern.ts';

let t: TestBroker;
let alice: ApproverClient;
/** The injected clock's offset from wall time: moved forward to expire tickets without waiting. */
let skew = 0;

beforeAll(async () => {
  t = await startTestBroker({ approvals: { pickup_hold: '200ms', progress_every: '10m' } }, {}, { now: () => Date.now() + skew });
  const key = t.broker.devKey!;
  alice = await signInApprover(t.url, await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:alice'), 'approver:alice');
});
afterAll(async () => {
  await t?.close();
});

const wipes = async () => (await t.upstreamCalls()).filter((c) => c.tool === 'wipe').length;
const pendingFor = (sub: string) => eventually(async () => (await alice.pending()).find((c) => c.principal.sub === sub), `a parked call for ${sub}`);

/** A first raw call that parks `rec__wipe` and comes back with its pickup ticket. */
async function park(sub: string): Promise<{ token: string; requestState: string; parked: any }> {
  const token = await t.mint({ sub, cap: [{ tool: 'rec__wipe' }] });
  const first = await modernCall(t.url, token, { name: 'rec__wipe' });
  expect(first.message.result).toMatchObject({ resultType: 'input_required', requestState: expect.any(String) });
  expect(first.message.result.inputRequests).toBeUndefined();
  return { token, requestState: first.message.result.requestState, parked: await pendingFor(sub) };
}

describe('2026-07-28 agents come back for their approval', () => {
  it('the real v2 client pinned to 2026-07-28 retries with the pickup until approved; the tool runs once', async () => {
    const before = await wipes();
    const token = await t.mint({ sub: 'agent:pickup-sdk', cap: [{ tool: 'rec__wipe' }] });
    const client = new Client({ name: 'pickup-test', version: '1.0.0' }, { versionNegotiation: { mode: { pin: MODERN } }, inputRequired: { maxRounds: 10_000 } });
    await client.connect(new StreamableHTTPClientTransport(new URL(t.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    try {
      const mark = await t.auditMark();
      const result = client.callTool({ name: 'rec__wipe', arguments: {} }) as Promise<CallToolResult>;
      result.catch(() => undefined);
      const parked = await pendingFor('agent:pickup-sdk');
      // Nobody holds the call: any replica may serve the agent's return.
      expect(parked.owner).toBe('pickup');
      // The client keeps coming back (bounded holds), and nothing has run.
      await eventually(async () => ((await t.auditSince(mark, 'tools/call')).filter((r) => r.detail?.pickup === 'input_required').length >= 2 ? true : undefined), 'two pickup answers');
      expect(await wipes()).toBe(before);

      expect(await alice.decide(parked.id, 'approve', 'fine', parked.call_hash)).toMatchObject({ status: 200, body: { status: 'approved' } });
      expect((await result).content).toEqual([{ type: 'text', text: 'wiped' }]);
      expect(await wipes()).toBe(before + 1);
      const done = (await alice.history()).find((c) => c.id === parked.id);
      expect(done).toMatchObject({ status: 'executed' });
      const records = await t.auditSince(mark, 'tools/call');
      expect(records.at(-1)).toMatchObject({ outcome: 'ok', protocol: MODERN, detail: { approval_id: parked.id } });
      expect(records.filter((r) => r.outcome === 'info').every((r) => r.detail?.approval_id === parked.id)).toBe(true);
    } finally {
      await client.close();
    }
  });

  it('a client that declares the tasks extension gets the pickup too: the installed SDK has no 2026 tasks extension, and Bastion advertises none', async () => {
    const token = await t.mint({ sub: 'agent:pickup-tasks', cap: [{ tool: 'rec__wipe' }] });
    const answer = await modernCall(t.url, token, { name: 'rec__wipe', capabilities: { extensions: { 'io.modelcontextprotocol/tasks': {} } } });
    expect(answer.message.result).toMatchObject({ resultType: 'input_required', requestState: expect.any(String) });
    const client = new Client({ name: 'pickup-discover', version: '1.0.0' }, { versionNegotiation: { mode: { pin: MODERN } } });
    await client.connect(new StreamableHTTPClientTransport(new URL(t.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    try {
      const capabilities = client.getServerCapabilities() as Record<string, unknown> | undefined;
      expect(capabilities).toHaveProperty('tools');
      expect(capabilities).not.toHaveProperty('tasks');
      expect((capabilities?.extensions as Record<string, unknown> | undefined)?.['io.modelcontextprotocol/tasks']).toBeUndefined();
    } finally {
      await client.close();
    }
  });

  it('a 2025-era session on the same broker keeps the held response: no input_required, the result arrives on the request that parked it', async () => {
    const before = await wipes();
    const client = await t.connect(await t.mint({ sub: 'agent:pickup-legacy', cap: [{ tool: 'rec__wipe' }] }));
    expect(client.getProtocolEra()).toBe('legacy');
    const mark = await t.auditMark();
    const result = client.callTool({ name: 'rec__wipe', arguments: {} }) as Promise<CallToolResult>;
    result.catch(() => undefined);
    const parked = await pendingFor('agent:pickup-legacy');
    expect(parked.owner).not.toBe('pickup');
    await alice.decide(parked.id, 'approve', 'held', parked.call_hash);
    expect((await result).content).toEqual([{ type: 'text', text: 'wiped' }]);
    expect(await wipes()).toBe(before + 1);
    const records = (await t.auditSince(mark, 'tools/call')).filter((r) => r.principal?.sub === 'agent:pickup-legacy');
    expect(records.map((r) => r.outcome)).toEqual(['ok']);
  });

  it('two retries with the same ticket at once: one runs the tool, the other is told the approval was used; a replay after that too', async () => {
    const before = await wipes();
    const { token, requestState, parked } = await park('agent:pickup-twice');
    await alice.decide(parked.id, 'approve', 'once', parked.call_hash);
    const answers = await Promise.all([1, 2].map(() => modernCall(t.url, token, { name: 'rec__wipe', requestState })));
    const ran = answers.filter((a) => a.message.result?.content?.[0]?.text === 'wiped');
    const refused = answers.filter((a) => denialOf(a));
    expect(ran).toHaveLength(1);
    expect(refused).toHaveLength(1);
    expect(denialOf(refused[0]!)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_INVALID' });
    expect(await wipes()).toBe(before + 1);

    const replay = await modernCall(t.url, token, { name: 'rec__wipe', requestState });
    expect(denialOf(replay)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_INVALID', reason: expect.stringContaining('executed') });
    expect(await wipes()).toBe(before + 1);
  });

  it("another principal presenting the ticket is refused and audited; the owner's pickup still works", async () => {
    const before = await wipes();
    const { token, requestState, parked } = await park('agent:pickup-owner');
    const thief = await t.mint({ sub: 'agent:pickup-thief', cap: [{ tool: 'rec__wipe' }] });
    const mark = await t.auditMark();
    const stolen = await modernCall(t.url, thief, { name: 'rec__wipe', requestState });
    // A state that fails its checks is a JSON-RPC error (invalid params), as for a multi-round-trip state.
    expect(stolen.message.result).toBeUndefined();
    expect(stolen.message.error?.code).toBe(-32602);
    expect(denialOf(stolen)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_STATE_INVALID', reason: expect.stringContaining('BASTION_STATE_OTHER_PRINCIPAL') });
    const audited = (await t.auditSince(mark, 'tools/call')).find((r) => r.principal?.sub === 'agent:pickup-thief');
    expect(audited).toMatchObject({ outcome: 'denied', denial: { code: 'BASTION_APPROVAL_STATE_INVALID' } });

    await alice.decide(parked.id, 'approve', 'ok', parked.call_hash);
    // The thief's attempt parked nothing of the owner's and used nothing of it.
    expect(await wipes()).toBe(before);
    const picked = await modernCall(t.url, token, { name: 'rec__wipe', requestState });
    expect(picked.message.result.content).toEqual([{ type: 'text', text: 'wiped' }]);
    expect(await wipes()).toBe(before + 1);
  });

  it('a ticket presented with other arguments is refused, and the approved call does not run for them', async () => {
    const before = await wipes();
    const { token, requestState, parked } = await park('agent:pickup-args');
    await alice.decide(parked.id, 'approve', 'for {} only', parked.call_hash);
    const other = await modernCall(t.url, token, { name: 'rec__wipe', arguments: { everything: true }, requestState });
    expect(denialOf(other)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_STATE_INVALID', reason: expect.stringContaining('BASTION_STATE_OTHER_CALL') });
    expect(await wipes()).toBe(before);
  });

  it('a tampered or foreign requestState is refused before anything is parked for it', async () => {
    const { token, requestState } = await park('agent:pickup-tamper');
    const tampered = requestState.slice(0, -4) + (requestState.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    for (const state of [tampered, 'not-a-bastion-state']) {
      const answer = await modernCall(t.url, token, { name: 'rec__wipe', requestState: state });
      expect(denialOf(answer)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_STATE_INVALID' });
    }
    expect((await alice.pending()).filter((c) => c.principal.sub === 'agent:pickup-tamper')).toHaveLength(1);
  });

  it("a denied approval's pickup gives the denial, and the tool never runs", async () => {
    const before = await wipes();
    const { token, requestState, parked } = await park('agent:pickup-denied');
    await alice.decide(parked.id, 'deny', 'not today', parked.call_hash);
    const answer = await modernCall(t.url, token, { name: 'rec__wipe', requestState });
    expect(denialOf(answer)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_DENIED', reason: expect.stringContaining('not today') });
    expect(await wipes()).toBe(before);
  });

  it('a ticket past its expiry (injected clock) is refused, even for an approved call', async () => {
    const before = await wipes();
    const { token, requestState, parked } = await park('agent:pickup-late');
    await alice.decide(parked.id, 'approve', 'too late', parked.call_hash);
    skew = Date.parse(parked.expires_at) - Date.now() + PICKUP_GRACE_MS + 1_000;
    try {
      const answer = await modernCall(t.url, token, { name: 'rec__wipe', requestState });
      expect(denialOf(answer)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_TIMEOUT', reason: expect.stringContaining('BASTION_STATE_EXPIRED') });
    } finally {
      skew = 0;
    }
    expect(await wipes()).toBe(before);
  });
});
