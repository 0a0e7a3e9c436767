/**
 * Two real Bastion processes behind one real Redis, as a deployment with a
 * load balancer runs them: same resource identifier, same trusted issuer,
 * separate state folders and ports. An approval given on one replica
 * releases the call parked on the other, exactly once; a single-use token
 * and a revocation hold across replicas; with Redis gone every request that
 * needs state is refused, and service resumes when Redis is back, without
 * restarting Bastion.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import type { JWK } from 'jose';
import type { AuditRecord } from '../../broker/audit/chain.ts';
import { verifyAuditFile } from '../../broker/audit/verify.ts';
import { generateSigningKey } from '../../broker/auth/keys.ts';
import { mintToken } from '../../broker/auth/mint.ts';
import type { Capability } from '../../broker/policy/schema.ts';
import { ROOT } from '../helpers/broker.ts';
import { approverToken, eventually, signInApprover, type ApproverClient } from '../helpers/approver.ts';
import { MCP_HEADERS, openSession, post, toolCall } from '../helpers/http.ts';
import { startRedis, until, type RedisServer } from '../helpers/redis.ts';
import { denialOf, MODERN, modernCall } from '../helpers/modern.ts';
import { startRoundRobin } from '../helpers/round-robin.ts';
import { readJsonLines, startReplica, type Replica } from './replica.ts';

const ISSUER = 'https://issuer.replicas.test';
const RESOURCE = 'http://bastion.replicas.test/mcp';

let dir: string;
let redis: RedisServer;
let key: JWK;
let callLog: string;
let a: Replica;
let b: Replica;
const clients: Client[] = [];
/** Replicas a single test starts; stopped after the suite even when the test fails. */
const extras: Replica[] = [];

const mint = (sub: string, cap: Capability[], extra: { use?: 'once' } = {}) =>
  mintToken({ key, issuer: ISSUER, audience: RESOURCE, sub, cap, ttlMs: 300_000, ...extra });

async function connect(replica: Replica, token: string): Promise<Client> {
  const client = new Client({ name: 'replica-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(replica.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  clients.push(client);
  return client;
}

const approver = async (replica: Replica, sub: string): Promise<ApproverClient> =>
  signInApprover(replica.url, await approverToken(key, ISSUER, RESOURCE, sub), sub);

const upstreamCalls = (tool: string) => readJsonLines<{ tool: string }>(callLog).then((calls) => calls.filter((c) => c.tool === tool).length);

/** Rejects when `promise` has not settled after `ms` (a bound, so a broken bus fails instead of hanging). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`gave up waiting for ${what}`)), ms)));
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/** A raw initialize with `token`, as a load balancer would route it to `replica`. */
const initialize = (replica: Replica, token: string) =>
  post(
    replica.url,
    { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } },
    { authorization: `Bearer ${token}` },
  );

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-replicas-'));
  callLog = path.join(dir, 'upstream-calls.jsonl');
  const issuerKey = await generateSigningKey('EdDSA');
  key = issuerKey.privateJwk;
  const jwksFile = path.join(dir, 'issuer-jwks.json');
  await writeFile(jwksFile, JSON.stringify(issuerKey.jwks));
  redis = await startRedis();
  const common = { dir, redisUrl: redis.url, resource: RESOURCE, issuer: ISSUER, jwksFile, callLog };
  [a, b] = await Promise.all([startReplica({ ...common, name: 'replica-a' }), startReplica({ ...common, name: 'replica-b' })]);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  await Promise.all([a?.stop(), b?.stop(), ...extras.map((r) => r.stop())]);
  await redis?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('two replicas, one Redis', () => {
  it('one token works on both replicas (same resource, same issuer)', async () => {
    const token = await mint('agent:both', [{ tool: 'rec__echo' }]);
    for (const replica of [a, b]) {
      const client = await connect(replica, token);
      const result = (await client.callTool({ name: 'rec__echo', arguments: { text: replica.name } })) as CallToolResult;
      expect(result.content).toEqual([{ type: 'text', text: `echo: ${replica.name}` }]);
    }
  });

  it("an approval given on B's page releases the call parked on A, by pub/sub, and it runs exactly once", async () => {
    const before = await upstreamCalls('wipe');
    const agent = await connect(a, await mint('agent:cross-replica', [{ tool: 'rec__wipe' }]));
    const result = agent.callTool({ name: 'rec__wipe', arguments: {} }) as Promise<CallToolResult>;
    result.catch(() => undefined);

    const alice = await approver(b, 'approver:alice');
    const parked = await eventually(async () => (await alice.pending()).find((c) => c.principal.sub === 'agent:cross-replica'), "A's parked call on B's page");
    expect(parked).toMatchObject({ tool: 'rec__wipe', status: 'pending', owner_alive: true });
    expect(await upstreamCalls('wipe')).toBe(before);

    const decision = await alice.decide(parked.id, 'approve', 'cross-replica', parked.call_hash);
    expect(decision).toMatchObject({ status: 200, body: { status: 'approved' } });
    // progress_every is 10 minutes, so nothing on A re-reads the record on a timer:
    // only the message B published through Redis can wake the waiting call.
    const outcome = await within(result, 15_000, 'the call parked on A to be released');
    expect(outcome.content).toEqual([{ type: 'text', text: 'wiped' }]);
    expect(await upstreamCalls('wipe')).toBe(before + 1);

    // Once: neither replica accepts the approval again, and the record says executed.
    const bob = await approver(a, 'approver:bob');
    expect((await bob.decide(parked.id, 'approve', '', parked.call_hash)).status).toBe(409);
    expect((await alice.decide(parked.id, 'approve', '', parked.call_hash)).status).toBe(409);
    expect((await bob.history()).find((c) => c.id === parked.id)?.status).toBe('executed');
    expect(await upstreamCalls('wipe')).toBe(before + 1);

    // Each replica audits what it did: A the request and the execution, B the approval.
    const onA = (await readJsonLines<AuditRecord>(a.auditFile)).filter((r) => r.detail?.approval_id === parked.id).map((r) => r.event);
    const onB = (await readJsonLines<AuditRecord>(b.auditFile)).filter((r) => r.detail?.approval_id === parked.id).map((r) => r.event);
    expect(onA).toEqual(expect.arrayContaining(['approval.requested', 'approval.executed', 'tools/call']));
    expect(onB).toEqual(['approval.approved']);
    // Every record names the replica that wrote it.
    expect(new Set((await readJsonLines<AuditRecord>(a.auditFile)).map((r) => r.replica))).toEqual(new Set(['replica-a']));
    expect(new Set((await readJsonLines<AuditRecord>(b.auditFile)).map((r) => r.replica))).toEqual(new Set(['replica-b']));
  });

  it('2026-07-28 requests round-robin across both replicas with no affinity: list, call, flow, and a call parked on A, approved on B, picked up on B', async () => {
    const balancer = await startRoundRobin([a.url, b.url]);
    const token = await mint('agent:stateless', [{ tool: 'rec__echo' }, { tool: 'rec__inject' }, { tool: 'rec__wipe' }]);
    const client = new Client({ name: 'stateless', version: '1.0.0' }, { versionNegotiation: { mode: { pin: MODERN } }, inputRequired: { maxRounds: 10_000 } });
    await client.connect(new StreamableHTTPClientTransport(new URL(balancer.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    clients.push(client);
    try {
      expect(client.getProtocolEra()).toBe('modern');
      // Lists and calls in turn: each replica answers some, none needs another's memory.
      const lists = [await client.listTools(), await client.listTools()].map((l) => l.tools.map((t) => t.name).sort());
      expect(lists[0]).toEqual(['rec__echo', 'rec__inject', 'rec__wipe']);
      expect(lists[1]).toEqual(lists[0]);
      for (const text of ['one', 'two', 'three']) {
        const echoed = (await client.callTool({ name: 'rec__echo', arguments: { text } })) as CallToolResult;
        expect(echoed.content).toEqual([{ type: 'text', text: `echo: ${text}` }]);
      }
      expect(new Set(balancer.routed.filter((r) => r.method === 'tools/call').map((r) => r.target))).toEqual(new Set([0, 1]));
      expect(new Set(balancer.routed.filter((r) => r.method === 'tools/list').map((r) => r.target))).toEqual(new Set([0, 1]));

      // What one replica recorded in the agent's flow, the other shows the same (the flow lives in Redis).
      await client.callTool({ name: 'rec__inject', arguments: {} });
      const flows = await Promise.all(
        [a, b].map(async (replica) => {
          const operator = await mint('operator:flows', [{ tool: 'bastion:flows' }]);
          const response = await fetch(new URL(`/admin/flows?iss=${encodeURIComponent(ISSUER)}&sub=agent:stateless`, replica.origin), { headers: { authorization: `Bearer ${operator}` } });
          return ((await response.json()) as { flow: { labels: Record<string, unknown>; sources: unknown[] } | null }).flow;
        }),
      );
      expect(flows[0]?.labels).toHaveProperty('untrusted');
      expect(flows[1]).toEqual(flows[0]);

      // A parked call: the first request lands on A, every retry on B; the approver uses B's page.
      const before = await upstreamCalls('wipe');
      balancer.route = ({ tool, retry }) => (tool === 'rec__wipe' ? (retry ? 1 : 0) : undefined);
      const result = client.callTool({ name: 'rec__wipe', arguments: {} }) as Promise<CallToolResult>;
      result.catch(() => undefined);
      const alice = await approver(b, 'approver:alice');
      const parked = await eventually(async () => (await alice.pending()).find((c) => c.principal.sub === 'agent:stateless'), 'the stateless call on B\'s page');
      expect(parked).toMatchObject({ owner: 'pickup', owner_alive: true });
      // The agent keeps coming back to B while nobody has decided; nothing runs.
      await eventually(async () => (balancer.routed.filter((r) => r.tool === 'rec__wipe' && r.retry).length >= 2 ? true : undefined), 'two retries on B');
      expect(await upstreamCalls('wipe')).toBe(before);
      expect((await alice.decide(parked.id, 'approve', 'stateless', parked.call_hash)).status).toBe(200);
      expect((await within(result, 30_000, 'the pickup on B')).content).toEqual([{ type: 'text', text: 'wiped' }]);
      expect(await upstreamCalls('wipe')).toBe(before + 1);
      const wipes = balancer.routed.filter((r) => r.tool === 'rec__wipe');
      expect(wipes[0]).toMatchObject({ target: 0, retry: false });
      expect(wipes.slice(1).every((r) => r.target === 1 && r.retry)).toBe(true);

      // A parked it (and no process of A answers for it); B dispatched and executed it.
      const onA = (await readJsonLines<AuditRecord>(a.auditFile)).filter((r) => r.detail?.approval_id === parked.id).map((r) => r.event);
      const onB = (await readJsonLines<AuditRecord>(b.auditFile)).filter((r) => r.detail?.approval_id === parked.id).map((r) => r.event);
      expect(onA).toEqual(expect.arrayContaining(['approval.requested']));
      expect(onA).not.toContain('approval.dispatched');
      expect(onB).toEqual(expect.arrayContaining(['approval.approved', 'approval.dispatched', 'approval.executed', 'tools/call']));
      expect((await alice.history()).find((c) => c.id === parked.id)).toMatchObject({ status: 'executed', owner: expect.stringMatching(/^replica-b#/) });
    } finally {
      await balancer.close();
    }
  });

  it('the same pickup presented on both replicas at once runs the tool once; the other gets the approval already used', async () => {
    const before = await upstreamCalls('wipe');
    const token = await mint('agent:both-at-once', [{ tool: 'rec__wipe' }]);
    const first = await modernCall(a.url, token, { name: 'rec__wipe' });
    const requestState = first.message.result?.requestState as string;
    expect(first.message.result).toMatchObject({ resultType: 'input_required' });
    const alice = await approver(b, 'approver:alice');
    const parked = await eventually(async () => (await alice.pending()).find((c) => c.principal.sub === 'agent:both-at-once'), 'the parked call');
    await alice.decide(parked.id, 'approve', 'once', parked.call_hash);
    const answers = await Promise.all([a, b].map((replica) => modernCall(replica.url, token, { name: 'rec__wipe', requestState })));
    expect(answers.filter((x) => x.message.result?.content?.[0]?.text === 'wiped')).toHaveLength(1);
    expect(answers.map(denialOf).filter(Boolean)).toEqual([expect.objectContaining({ code: 'BASTION_APPROVAL_INVALID' })]);
    expect(await upstreamCalls('wipe')).toBe(before + 1);
    // Another principal's replay on either replica is refused too.
    const thief = await mint('agent:thief', [{ tool: 'rec__wipe' }]);
    expect(denialOf(await modernCall(b.url, thief, { name: 'rec__wipe', requestState }))).toMatchObject({ code: 'BASTION_APPROVAL_STATE_INVALID' });
    expect(await upstreamCalls('wipe')).toBe(before + 1);
  });

  it('an approver sign-in link used on one replica is refused on the other', async () => {
    const link = await approverToken(key, ISSUER, RESOURCE, 'approver:carol');
    const login = (replica: Replica) =>
      fetch(`${replica.origin}/approvals/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: link }) });
    expect((await login(a)).status).toBe(200);
    const again = await login(b);
    expect(again.status).toBe(401);
    expect(((await again.json()) as { error: string }).error).toContain('already used');
  });

  it('a single-use token used on A is refused on B (and on A) with BASTION_TOKEN_REPLAYED', async () => {
    const once = await mint('agent:once', [{ tool: 'rec__echo' }], { use: 'once' });
    expect((await initialize(a, once)).status).toBe(200);
    for (const replica of [b, a]) {
      const replay = await initialize(replica, once);
      expect(replay.status, replica.name).toBe(401);
      expect(replay.json, replica.name).toMatchObject({ code: 'BASTION_TOKEN_REPLAYED', stage: 'authenticate' });
    }
  });

  it('a revocation made on A is enforced on B, for new requests and for a session B already serves', async () => {
    const token = await mint('agent:to-revoke', [{ tool: 'rec__echo' }]);
    const onB = await connect(b, token);
    expect(((await onB.callTool({ name: 'rec__echo', arguments: { text: 'before' } })) as CallToolResult).isError).toBeFalsy();
    const echoes = await upstreamCalls('echo');

    const admin = await mint('operator', [{ tool: 'bastion:revoke' }]);
    const revoked = await fetch(new URL('/admin/revoke', a.url), {
      method: 'POST',
      headers: { ...MCP_HEADERS, authorization: `Bearer ${admin}` },
      body: JSON.stringify({ sub: 'agent:to-revoke' }),
    });
    expect(revoked.status).toBe(200);

    await expect(onB.callTool({ name: 'rec__echo', arguments: { text: 'after' } })).rejects.toThrow();
    const fresh = await initialize(b, token);
    expect(fresh.status).toBe(401);
    expect(fresh.json).toMatchObject({ code: 'BASTION_TOKEN_REVOKED' });
    expect(await upstreamCalls('echo')).toBe(echoes);
  });

  it("a replica killed with SIGKILL and restarted with the same replica_id fences its predecessor at once; another live replica's parked call is untouched", async () => {
    const common = { dir, redisUrl: redis.url, resource: RESOURCE, issuer: ISSUER, jwksFile: path.join(dir, 'issuer-jwks.json'), callLog };
    const k = await startReplica({ ...common, name: 'replica-k' });
    extras.push(k);
    const before = await upstreamCalls('wipe');
    const orphan = (await connect(k, await mint('agent:orphaned-on-k', [{ tool: 'rec__wipe' }]))).callTool({ name: 'rec__wipe', arguments: {} });
    orphan.catch(() => undefined);
    const live = (await connect(b, await mint('agent:live-on-b', [{ tool: 'rec__wipe' }]))).callTool({ name: 'rec__wipe', arguments: {} }) as Promise<CallToolResult>;
    live.catch(() => undefined);
    const alice = await approver(a, 'approver:alice-fencing');
    const onK = await eventually(async () => (await alice.pending()).find((c) => c.principal.sub === 'agent:orphaned-on-k'), "the call parked on K");
    const onB = await eventually(async () => (await alice.pending()).find((c) => c.principal.sub === 'agent:live-on-b'), 'the call parked on B');
    expect(onK.owner).toBe('replica-k#1');

    await k.kill();
    const restarted = await startReplica({ ...common, name: 'replica-k' });
    extras.push(restarted);

    // At once, though the dead process's heartbeat is still in Redis: its epoch is behind.
    const shown = await alice.pending();
    expect(shown.find((c) => c.id === onK.id)).toMatchObject({ status: 'pending', owner_alive: false });
    expect(shown.find((c) => c.id === onB.id)).toMatchObject({ status: 'pending', owner_alive: true });
    expect((await alice.decide(onK.id, 'approve', 'fine', onK.call_hash)).body).toMatchObject({ status: 'abandoned' });

    // B's call was neither swept by the restarted replica nor marked abandoned: approved, it runs once.
    expect((await alice.decide(onB.id, 'approve', 'fine', onB.call_hash)).body).toMatchObject({ status: 'approved' });
    expect((await within(live, 15_000, "B's call to run")).content).toEqual([{ type: 'text', text: 'wiped' }]);
    expect(await upstreamCalls('wipe')).toBe(before + 1);
    expect((await alice.history()).find((c) => c.id === onK.id)).toMatchObject({ status: 'abandoned' });
    expect((await alice.history()).find((c) => c.id === onB.id)).toMatchObject({ status: 'executed' });
    await restarted.stop();
  });

  it('Redis stopped: every authenticated request on both replicas is refused (503, BASTION_STATE_UNAVAILABLE), nothing reaches the upstream; Redis back: service resumes without restarting Bastion', async () => {
    const steady = await mint('agent:steady', [{ tool: 'rec__*' }]);
    const agent = await connect(a, steady);
    expect(((await agent.callTool({ name: 'rec__echo', arguments: { text: 'up' } })) as CallToolResult).isError).toBeFalsy();
    const sessionOnB = await openSession(b.url, steady);
    const alice = await approver(b, 'approver:alice-outage');
    // A third replica that re-reads parked calls every 200 ms, with a call parked on it.
    const c = await startReplica({ dir, redisUrl: redis.url, resource: RESOURCE, issuer: ISSUER, jwksFile: path.join(dir, 'issuer-jwks.json'), callLog, name: 'replica-c', progressEvery: '200ms' });
    extras.push(c);
    const parkedOnC = (await connect(c, await mint('agent:parked-on-c', [{ tool: 'rec__wipe' }]))).callTool({ name: 'rec__wipe', arguments: {} }, {
      onprogress: () => undefined,
      resetTimeoutOnProgress: true,
    }) as Promise<CallToolResult>;
    parkedOnC.catch(() => undefined);
    await eventually(async () => (await alice.pending()).find((p) => p.principal.sub === 'agent:parked-on-c'), 'the call parked on C');
    const before = (await readJsonLines(callLog)).length;
    const wipesBefore = await upstreamCalls('wipe');
    const readiness = async (replica: Replica) => (await fetch(`${replica.origin}/readyz`)).status;
    expect(await readiness(a)).toBe(200);

    await redis.kill();
    // A load balancer takes both replicas out of rotation.
    await until(async () => (await readiness(a)) === 503 && (await readiness(b)) === 503, 'both replicas to report not ready');

    // New sessions, with plain and single-use tokens, on both replicas.
    const once = await mint('agent:once-outage', [{ tool: 'rec__echo' }], { use: 'once' });
    for (const replica of [a, b]) {
      for (const token of [steady, once]) {
        const refused = await initialize(replica, token);
        expect(refused.status, replica.name).toBe(503);
        expect(refused.json, replica.name).toMatchObject({ code: 'BASTION_STATE_UNAVAILABLE', stage: 'authenticate' });
      }
    }
    // Tool calls on sessions opened before the outage: plain, and one that would need approval.
    await expect(agent.callTool({ name: 'rec__echo', arguments: { text: 'down' } })).rejects.toThrow();
    await expect(agent.callTool({ name: 'rec__wipe', arguments: {} })).rejects.toThrow();
    const raw = await post(b.url, toolCall('rec__echo', { text: 'down' }), { authorization: `Bearer ${steady}`, 'mcp-session-id': sessionOnB });
    expect(raw.status).toBe(503);
    expect(raw.json).toMatchObject({ code: 'BASTION_STATE_UNAVAILABLE' });
    // Operators cannot act either (the admin's own token needs state), and the approval page shows nothing.
    const admin = await mint('operator', [{ tool: 'bastion:revoke' }]);
    const revoke = await fetch(new URL('/admin/revoke', a.url), {
      method: 'POST',
      headers: { ...MCP_HEADERS, authorization: `Bearer ${admin}` },
      body: JSON.stringify({ sub: 'agent:anyone' }),
    });
    expect(revoke.status).toBe(503);
    const pending = await fetch(`${b.origin}/approvals/api/pending`, { headers: { cookie: alice.cookie } });
    expect(pending.status).toBe(503);
    expect((await readJsonLines(callLog)).length).toBe(before);
    // C re-read its parked call many times while Redis was gone, and is still alive.
    let alive = 0;
    await until(async () => ((await fetch(`${c.origin}/healthz`)).status === 200 ? ++alive : (alive = 0)) >= 10, 'C to stay up through the outage', 100, 100);

    await redis.restart();
    await until(async () => (await initialize(a, steady)).status === 200 && (await initialize(b, steady)).status === 200, 'both replicas to serve again', 400);
    await until(async () => (await readiness(a)) === 200 && (await readiness(b)) === 200, 'both replicas to report ready again');
    // The session opened before the outage works again; nothing was restarted.
    const after = (await agent.callTool({ name: 'rec__echo', arguments: { text: 'back' } })) as CallToolResult;
    expect(after.content).toEqual([{ type: 'text', text: 'echo: back' }]);
    const onB = await post(b.url, toolCall('rec__echo', { text: 'back on b' }), { authorization: `Bearer ${steady}`, 'mcp-session-id': sessionOnB });
    expect(onB.status).toBe(200);
    expect(JSON.stringify(onB.json)).toContain('echo: back on b');
    // The restarted Redis is empty: C's parked call lost its record and is refused, never run.
    expect((await within(parkedOnC, 15_000, "C's parked call to end"))._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_APPROVAL_INVALID' });
    expect(await upstreamCalls('wipe')).toBe(wipesBefore);
    await c.stop();
  });

  it("each replica's audit file is an intact hash chain; `bastion audit verify` checks them all at once", async () => {
    await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
    await Promise.all([a.stop(), b.stop()]);
    for (const replica of [a, b]) {
      const report = await verifyAuditFile(replica.auditFile);
      expect(report, replica.name).toMatchObject({ ok: true });
    }
    const { stdout } = await promisify(execFile)(process.execPath, [path.join(ROOT, 'broker/cli.ts'), 'audit', 'verify', a.auditFile, b.auditFile]);
    expect(stdout.split('\n').filter((line) => line.includes('records, head'))).toHaveLength(2);
  });
});
