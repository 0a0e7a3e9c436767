/**
 * Human approval through the real front door: an agent's high-risk call is
 * parked, approvers decide through the page's API, and the call runs once
 * or never. Every abuse the threat model names is tried here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { approverToken, eventually, signInApprover, type ApproverClient } from '../helpers/approver.ts';
import { MCP_HEADERS } from '../helpers/http.ts';

let t: TestBroker;
let alice: ApproverClient;
let bob: ApproverClient;

const approver = async (sub: string, roles: string[] = []) => {
  const key = t.broker.devKey!;
  return signInApprover(t.url, await approverToken(key.privateJwk, key.issuer, t.door.resource, sub, roles), sub);
};

beforeAll(async () => {
  t = await startTestBroker({ approvals: { progress_every: '100ms' } });
  alice = await approver('approver:alice');
  bob = await approver('approver:bob');
});
afterAll(async () => {
  await t?.close();
});

/** Starts a wipe call for `sub` and returns its pending promise and its parked record. */
async function parkWipe(sub: string, token?: string, options: { signal?: AbortSignal; onprogress?: (p: { progress: number; message?: string }) => void } = {}) {
  const client = await t.connect(token ?? (await t.mint({ sub, cap: [{ tool: 'rec__wipe' }] })));
  const result = client.callTool({ name: 'rec__wipe', arguments: {} }, {
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onprogress ? { onprogress: options.onprogress, resetTimeoutOnProgress: true } : {}),
  }) as Promise<CallToolResult>;
  result.catch(() => undefined);
  const parked = await eventually(async () => (await alice.pending()).find((c) => c.principal.sub === sub), `a parked call for ${sub}`);
  return { result, parked, client };
}

const wipes = async () => (await t.upstreamCalls()).filter((c) => c.tool === 'wipe').length;

describe('approve and deny', () => {
  it('an approved call runs exactly once and the agent gets its result; progress arrives while it waits', async () => {
    const before = await wipes();
    const progress: string[] = [];
    const { result, parked } = await parkWipe('agent:approve-me', undefined, { onprogress: (p) => progress.push(p.message ?? '') });
    expect(parked).toMatchObject({ tool: 'rec__wipe', risk: 'high', quorum: 1, status: 'pending' });
    expect(await wipes()).toBe(before);
    await eventually(async () => (progress.length > 0 ? true : undefined), 'a progress notification');
    expect(progress[0]).toContain('waiting for human approval');
    const decision = await alice.decide(parked.id, 'approve', 'ok', parked.call_hash);
    expect(decision).toMatchObject({ status: 200, body: { status: 'approved' } });
    expect((await result).content).toEqual([{ type: 'text', text: 'wiped' }]);
    expect(await wipes()).toBe(before + 1);
    const done = (await alice.history()).find((c) => c.id === parked.id);
    expect(done.status).toBe('executed');
    expect(done.decisions[0].jws.split('.')).toHaveLength(3);
    const events = (await t.auditRecords()).filter((r) => r.detail?.approval_id === parked.id).map((r) => r.event);
    expect(events).toEqual(expect.arrayContaining(['approval.requested', 'approval.approved', 'approval.executed', 'tools/call']));
  });

  it('a denied call never runs and the agent learns who denied it and why', async () => {
    const before = await wipes();
    const { result, parked } = await parkWipe('agent:deny-me');
    expect((await bob.decide(parked.id, 'deny', '', parked.call_hash)).status).toBe(400);
    expect((await bob.decide(parked.id, 'deny', 'not during the freeze', parked.call_hash)).status).toBe(200);
    const outcome = await result;
    expect(outcome._meta?.['bastion/denial']).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_DENIED' });
    expect(JSON.stringify(outcome.content)).toContain('approver:bob: not during the freeze');
    expect(await wipes()).toBe(before);
  });
});

describe('abuse', () => {
  it('self-approval is refused, also through the delegation chain', async () => {
    const { result, parked } = await parkWipe('agent:selfish');
    const self = await approver('agent:selfish');
    expect((await self.decide(parked.id, 'approve', '', parked.call_hash)).status).toBe(403);

    const boss = await t.mint({ sub: 'agent:boss', cap: [{ tool: 'rec__*' }] });
    const delegated = await fetch(new URL('/token/delegate', t.url), {
      method: 'POST',
      headers: { ...MCP_HEADERS, authorization: `Bearer ${boss}` },
      body: JSON.stringify({ sub: 'agent:minion', cap: [{ tool: 'rec__wipe' }] }),
    });
    const child = ((await delegated.json()) as { access_token: string }).access_token;
    const minion = await parkWipe('agent:minion', child);
    expect(minion.parked.principal.act).toEqual([{ sub: 'agent:boss' }]);
    const bossApprover = await approver('agent:boss');
    expect((await bossApprover.decide(minion.parked.id, 'approve', '', minion.parked.call_hash)).status).toBe(403);
    // Clean up: deny both so the calls end.
    await alice.decide(parked.id, 'deny', 'test over', parked.call_hash);
    await alice.decide(minion.parked.id, 'deny', 'test over', minion.parked.call_hash);
    expect((await result).isError).toBe(true);
  });

  it('an approval is bound to the call hash it was shown', async () => {
    const { result, parked } = await parkWipe('agent:swap');
    const forged = await alice.decide(parked.id, 'approve', '', 'sha256:0000');
    expect(forged.status).toBe(409);
    expect((await alice.pending()).some((c) => c.id === parked.id)).toBe(true);
    await alice.decide(parked.id, 'deny', 'done', parked.call_hash);
    await result;
  });

  it('an approval cannot be replayed for a second identical call', async () => {
    const before = await wipes();
    const first = await parkWipe('agent:twice');
    await alice.decide(first.parked.id, 'approve', '', first.parked.call_hash);
    await first.result;
    expect((await alice.decide(first.parked.id, 'approve', '', first.parked.call_hash)).status).toBe(409);
    const second = await parkWipe('agent:twice');
    expect(second.parked.id).not.toBe(first.parked.id);
    expect(second.parked.call_hash).toBe(first.parked.call_hash);
    expect((await bob.decide(first.parked.id, 'approve', '', first.parked.call_hash)).status).toBe(409);
    expect((await alice.pending()).some((c) => c.id === second.parked.id)).toBe(true);
    await alice.decide(second.parked.id, 'deny', 'once is enough', second.parked.call_hash);
    expect((await second.result).isError).toBe(true);
    expect(await wipes()).toBe(before + 1);
  });

  it('the same approver cannot vote twice', async () => {
    const { result, parked } = await parkWipe('agent:dup');
    expect((await alice.decide(parked.id, 'deny', 'no', parked.call_hash)).status).toBe(200);
    expect((await alice.decide(parked.id, 'approve', '', parked.call_hash)).status).toBe(409);
    await result;
  });

  it('state-changing requests without the CSRF token, from another origin, or without a session are refused', async () => {
    const { result, parked } = await parkWipe('agent:csrf');
    expect((await alice.decide(parked.id, 'approve', '', parked.call_hash, {})).status).toBe(403);
    expect((await alice.decide(parked.id, 'approve', '', parked.call_hash, { 'x-csrf-token': 'guess' })).status).toBe(403);
    expect((await alice.decide(parked.id, 'approve', '', parked.call_hash, { 'x-csrf-token': alice.csrf, origin: 'http://evil.example' })).status).toBe(403);
    const anonymous = await fetch(new URL(`/approvals/api/${parked.id}/decision`, t.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-csrf-token': alice.csrf },
      body: JSON.stringify({ decision: 'approve', reason: '', call_hash: parked.call_hash }),
    });
    expect(anonymous.status).toBe(401);
    expect((await alice.pending()).find((c) => c.id === parked.id)?.status).toBe('pending');
    await alice.decide(parked.id, 'deny', 'done', parked.call_hash);
    await result;
  });

  it('sign-in refuses agent tokens, reused sign-in links and other audiences', async () => {
    const login = (token: string) =>
      fetch(new URL('/approvals/login', t.url), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) });
    expect((await login(await t.mint({ sub: 'agent:sneaky', cap: [{ tool: '*' }] }))).status).toBe(401);
    const key = t.broker.devKey!;
    const link = await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:carol');
    expect((await login(link)).status).toBe(200);
    expect((await login(link)).status).toBe(401);
    expect((await login(await approverToken(key.privateJwk, key.issuer, 'http://elsewhere/mcp', 'approver:dave'))).status).toBe(401);
    expect((await login(await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:eve', [], 3600))).status).toBe(401);
  });

  it('the page is served with a strict CSP and no inline script', async () => {
    const response = await fetch(new URL('/approvals', t.url));
    const csp = response.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("default-src 'none'");
    expect(csp).not.toContain('unsafe-inline');
    const html = await response.text();
    expect(html).not.toMatch(/<script>(?!<\/script>)/);
    expect(html).not.toMatch(/\son[a-z]+=/i);
  });
});

describe('time and cancellation', () => {
  it('a call whose approval request expires is refused, and a late approval does nothing', async () => {
    const slow = await startTestBroker({ approvals: { timeout: '1s' } });
    try {
      const key = slow.broker.devKey!;
      const late = await signInApprover(slow.url, await approverToken(key.privateJwk, key.issuer, slow.door.resource, 'approver:late'), 'approver:late');
      const client = await slow.connect(await slow.mint({ sub: 'agent:patient', cap: [{ tool: 'rec__wipe' }] }));
      const pending = client.callTool({ name: 'rec__wipe', arguments: {} }) as Promise<CallToolResult>;
      const parked = await eventually(async () => (await late.pending())[0], 'the parked call');
      const result = await pending;
      expect(result._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_APPROVAL_TIMEOUT' });
      expect((await late.decide(parked.id, 'approve', '', parked.call_hash)).status).toBe(409);
      expect((await slow.upstreamCalls()).filter((c) => c.tool === 'wipe')).toHaveLength(0);
    } finally {
      await slow.close();
    }
  });

  it('cancelling the request on the agent side withdraws the approval request', async () => {
    const controller = new AbortController();
    const { result, parked } = await parkWipe('agent:quitter', undefined, { signal: controller.signal });
    controller.abort();
    await expect(result).rejects.toThrow();
    const withdrawn = await eventually(async () => (await alice.history()).find((c) => c.id === parked.id && c.status === 'withdrawn'), 'withdrawal');
    expect(withdrawn.outcome).toContain('cancelled');
    expect((await alice.decide(parked.id, 'approve', '', parked.call_hash)).status).toBe(409);
    // The call's own record says the agent cancelled it while it waited.
    const record = await eventually(async () => (await t.auditRecords()).find((r) => r.event === 'tools/call' && r.principal?.sub === 'agent:quitter'), 'the call record');
    expect(record).toMatchObject({ tool: 'rec__wipe', outcome: 'denied', denial: { stage: 'approve', code: 'BASTION_CANCELLED' } });
    // It waited without a progress token: the record says what the client should do instead.
    expect(record.denial?.reason).toContain('sent no progressToken');
  });

  it('a token revoked while its call waits stops the call even after approval', async () => {
    const before = await wipes();
    const { result, parked } = await parkWipe('agent:revoked-while-waiting');
    const admin = await t.mint({ sub: 'operator', cap: [{ tool: 'bastion:revoke' }] });
    await fetch(new URL('/admin/revoke', t.url), { method: 'POST', headers: { ...MCP_HEADERS, authorization: `Bearer ${admin}` }, body: JSON.stringify({ sub: 'agent:revoked-while-waiting' }) });
    await alice.decide(parked.id, 'approve', '', parked.call_hash);
    expect((await result)._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_TOKEN_REVOKED' });
    expect(await wipes()).toBe(before);
    // Approved, then refused by the re-check: the record says it will not run, not "approved" for good.
    const record = (await alice.history()).find((c) => c.id === parked.id);
    expect(record).toMatchObject({ status: 'abandoned', outcome: expect.stringContaining('revoked') });
    expect((await t.auditRecords()).filter((r) => r.detail?.approval_id === parked.id).map((r) => r.event)).toContain('approval.abandoned');
  });
});
