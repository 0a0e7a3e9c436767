/**
 * Tasks through Bastion against a real task-capable server
 * (`@modelcontextprotocol/server-everything`, stdio): approval comes before
 * the upstream task exists (a denied call makes none); a call without a task
 * to a tool that requires one runs as a task, and cancelling the call cancels
 * that task; an agent connection holding a task does not idle out under it;
 * a task dies with the agent session that made it, and is then answered as
 * unknown, never reached through a new connection.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/client';
import { z } from 'zod';
import { CreateTaskResultSchema, TaskPayloadSchema, TaskResultSchema, TaskSchema } from '../../broker/tasks/schemas.ts';
import type { CallOrigin } from '../../connectors/upstream.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { SAMPLES } from '../filters/samples.ts';
import { approverToken, signInApprover, type ApproverClient } from '../helpers/approver.ts';
import { connectAgent, EVERYTHING, eventually, textOf, type Agent } from '../connectors/helpers.ts';

const RESEARCH = 'simulate-research-query';
const ListTasks = z.looseObject({ tasks: z.array(TaskSchema) });

let t: TestBroker;
let approver: ApproverClient;

beforeAll(async () => {
  const everything = { transport: 'stdio', command: process.execPath, args: [EVERYTHING, 'stdio'], timeout: '30s' };
  t = await startTestBroker({
    // One live task per principal: the bound is reached (and refused) with one call.
    tasks: { max_per_principal: 1 },
    connectors: [
      // Idle agent connections close after a second: unless they hold a task.
      { name: 'every', ...everything, isolation: { idle: '1s' } },
      // The same server, its research tool high-risk: every call of it waits for a human.
      { name: 'gated', ...everything, tools: { [RESEARCH]: { risk: 'high' } } },
    ],
  });
  const key = t.broker.devKey!;
  approver = await signInApprover(t.url, await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:erin'), 'approver:erin');
});

afterAll(async () => {
  await t?.close();
});

let agents = 0;
async function agent(cap = [{ tool: '*' }]): Promise<Agent & { sub: string; token: string }> {
  agents += 1;
  const sub = `agent:tasks-${agents}`;
  const token = await t.mint({ sub, cap });
  return Object.assign(await connectAgent(t.url, token), { sub, token });
}

const connector = (name: string) => t.broker.connectors.find((c) => c.name === name)!;
const connectionOf = (name: string, sub: string) => connector(name).agentConnections().find((c) => c.owner.sub === sub);
/** What the agent's own upstream connection holds, asked directly (nothing relayed to anyone). */
async function upstreamTasks(name: string, sub: string) {
  const own = connectionOf(name, sub);
  if (!own) return [];
  const origin: CallOrigin = { sessionId: 'probe', owner: { iss: 'probe', sub }, stateless: true, sendRequest: async () => ({}), sendNotification: async () => undefined };
  return (await connector(name).onTaskConnection(own.key, origin, (client) => client.request({ method: 'tasks/list', params: {} }, ListTasks))).tasks;
}
const createTask = (who: Agent, name: string, args: Record<string, unknown>) =>
  who.client.request({ method: 'tools/call', params: { name, arguments: args, task: { ttl: 120_000 } } }, CreateTaskResultSchema, { timeout: 120_000 });
const pendingFor = (sub: string) =>
  eventually(async () => (await approver.pending()).some((c) => c.principal.sub === sub), `a parked call for ${sub}`).then(async () => (await approver.pending()).find((c) => c.principal.sub === sub));

describe('approval comes before the task', () => {
  it('nothing exists upstream while the call waits; once approved the agent gets its task, and its result is filtered and audited', async () => {
    const alice = await agent();
    try {
      const mark = await t.auditMark();
      const created = createTask(alice, `gated__${RESEARCH}`, { topic: 'approved research' });
      const parked = await pendingFor(alice.sub);
      // Not a task, not even a connection: the upstream has seen nothing of this call.
      expect(connectionOf('gated', alice.sub)).toBeUndefined();
      expect(await approver.decide(parked.id, 'approve', 'fine', parked.call_hash)).toMatchObject({ status: 200 });
      const { task } = await created;
      expect(task.taskId).toMatch(/^bastion-task-/);
      expect((await upstreamTasks('gated', alice.sub)).map((u) => u.taskId)).not.toContain(task.taskId);
      expect(await upstreamTasks('gated', alice.sub)).toHaveLength(1);
      const result = await alice.client.request({ method: 'tasks/result', params: { taskId: task.taskId } }, TaskPayloadSchema, { timeout: 120_000 });
      expect(textOf(result)).toContain('approved research');
      const [call] = await t.auditSince(mark, 'tools/call');
      expect(call).toMatchObject({ outcome: 'ok', detail: { approval_id: parked.id, task: { id: task.taskId, status: 'working' } } });
      const [fetched] = await t.auditSince(mark, 'tasks/result');
      expect(fetched).toMatchObject({ outcome: 'ok', tool: `gated__${RESEARCH}`, args_hash: call!.args_hash, detail: { task: task.taskId, result_bytes: expect.any(Number) } });
      expect((await approver.history()).find((c) => c.id === parked.id)).toMatchObject({ status: 'executed' });
    } finally {
      await alice.leave();
    }
  });

  it('a denied call creates no task: the agent gets a JSON-RPC error naming the denial', async () => {
    const bob = await agent();
    try {
      const created = createTask(bob, `gated__${RESEARCH}`, { topic: 'denied research' });
      const refused = created.catch((error: unknown) => error);
      const parked = await pendingFor(bob.sub);
      expect(await approver.decide(parked.id, 'deny', 'not today', parked.call_hash)).toMatchObject({ status: 200 });
      const error = await refused;
      expect(error).toBeInstanceOf(ProtocolError);
      expect((error as ProtocolError).code).toBe(ProtocolErrorCode.InvalidRequest);
      expect((error as ProtocolError).data).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_DENIED' });
      expect(connectionOf('gated', bob.sub)).toBeUndefined();
      expect((await bob.client.request({ method: 'tasks/list', params: {} }, ListTasks)).tasks).toEqual([]);
    } finally {
      await bob.leave();
    }
  });
});

describe('tasks/result is decided again', () => {
  it('the same principal with a token that no longer covers the tool gets a denial instead of the result, audited; tasks/get still answers', async () => {
    const henry = await agent();
    // Another session of henry's, on a token that covers only echo (its capabilities narrowed since).
    const narrowed = await connectAgent(t.url, await t.mint({ sub: henry.sub, cap: [{ tool: 'every__echo' }] }));
    try {
      const { task } = await createTask(henry, `every__${RESEARCH}`, { topic: 'withheld' });
      const mark = await t.auditMark();
      const result = await narrowed.client.request({ method: 'tasks/result', params: { taskId: task.taskId } }, TaskPayloadSchema, { timeout: 120_000 });
      expect(result).toMatchObject({ isError: true, _meta: { 'bastion/denial': { stage: 'authorize', code: 'BASTION_POLICY_DENIED' } } });
      expect(textOf(result)).not.toContain('withheld');
      const [record] = await t.auditSince(mark, 'tasks/result');
      expect(record).toMatchObject({ outcome: 'denied', principal: { sub: henry.sub }, denial: { code: 'BASTION_POLICY_DENIED' }, detail: { task: task.taskId } });
      expect((await narrowed.client.request({ method: 'tasks/get', params: { taskId: task.taskId } }, TaskResultSchema)).taskId).toBe(task.taskId);
      // With the tool still granted, the result is there.
      expect(textOf(await henry.client.request({ method: 'tasks/result', params: { taskId: task.taskId } }, TaskPayloadSchema, { timeout: 120_000 }))).toContain('withheld');
    } finally {
      await narrowed.leave();
      await henry.leave();
    }
  });
});

describe("a principal's tasks are bounded", () => {
  it('over its bound, a task-augmented call is refused at the limit stage before anything is made upstream; another principal is not affected', async () => {
    const frank = await agent();
    const gina = await agent();
    try {
      const first = await createTask(frank, `every__${RESEARCH}`, { topic: 'the one allowed' });
      const refused = await createTask(frank, `every__${RESEARCH}`, { topic: 'one too many' }).catch((error: unknown) => error);
      expect(refused).toBeInstanceOf(ProtocolError);
      expect((refused as ProtocolError).data).toMatchObject({ stage: 'limit', code: 'BASTION_TASKS_FULL' });
      expect((await upstreamTasks('every', frank.sub)).length).toBe(1);
      expect((await frank.client.request({ method: 'tasks/list', params: {} }, ListTasks)).tasks.map((task) => task.taskId)).toEqual([first.task.taskId]);
      expect((await createTask(gina, `every__${RESEARCH}`, { topic: 'her own' })).task.taskId).toMatch(/^bastion-task-/);
    } finally {
      await frank.leave();
      await gina.leave();
    }
  });
});

describe('tools that require a task, for agents that ask for none', () => {
  it('cancelling the call cancels the task Bastion made for it, and the call is audited as cancelled', async () => {
    const carol = await agent();
    try {
      const mark = await t.auditMark();
      const abort = new AbortController();
      const call = carol.client.callTool({ name: `every__${RESEARCH}`, arguments: { topic: 'never finished' } }, { signal: abort.signal }).catch((error: unknown) => error);
      await eventually(async () => (await upstreamTasks('every', carol.sub)).some((u) => u.status === 'working'), 'the upstream task Bastion made');
      abort.abort('the user changed their mind');
      await call;
      await eventually(async () => (await upstreamTasks('every', carol.sub)).every((u) => u.status === 'cancelled'), 'the upstream task cancelled');
      await eventually(async () => (await t.auditSince(mark, 'tools/call')).some((r) => r.denial?.code === 'BASTION_CANCELLED'), 'the cancelled call on record');
    } finally {
      await carol.leave();
    }
  });
});

describe('a task lives as long as the agent session that made it', () => {
  it('its agent connection does not idle out under it (idle: 1s), polled at longer gaps than that until the task completes; its result is filtered', async () => {
    const dave = await agent();
    try {
      // The topic carries a (fake) credential, which the report repeats: its result is filtered like any call's.
      const { task } = await createTask(dave, `every__${RESEARCH}`, { topic: `slow and steady ${SAMPLES.awsAccessKey}` });
      const mark = await t.auditMark();
      let status = task.status;
      while (status !== 'completed') {
        // Longer than the idle close: without the hold, the next request would find the task gone.
        await new Promise((resolve) => setTimeout(resolve, 1500));
        status = (await dave.client.request({ method: 'tasks/get', params: { taskId: task.taskId } }, TaskResultSchema)).status;
        expect(['working', 'completed']).toContain(status);
      }
      const report = textOf(await dave.client.request({ method: 'tasks/result', params: { taskId: task.taskId } }, TaskPayloadSchema));
      expect(report).toContain('slow and steady [REDACTED:aws_access_key]');
      expect(report).not.toContain(SAMPLES.awsAccessKey);
      const [fetched] = await t.auditSince(mark, 'tasks/result');
      expect(fetched).toMatchObject({ outcome: 'ok', detail: { redactions: { aws_access_key: expect.any(Number) } } });
    } finally {
      await dave.leave();
    }
  });

  it('when that session ends, the task is gone: another session of the same principal is answered as for an unknown task', async () => {
    const erin = await agent();
    const { task } = await createTask(erin, `every__${RESEARCH}`, { topic: 'orphaned' });
    await erin.leave();
    await eventually(() => connectionOf('every', erin.sub) === undefined, "erin's upstream connection closed with her session");
    const again = await connectAgent(t.url, erin.token);
    try {
      const error = await again.client.request({ method: 'tasks/get', params: { taskId: task.taskId } }, TaskResultSchema).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ProtocolError);
      expect((error as ProtocolError).message).toBe('Failed to retrieve task: Task not found');
      // No connection was opened to look for it.
      expect(connectionOf('every', erin.sub)).toBeUndefined();
      expect((await again.client.request({ method: 'tasks/list', params: {} }, ListTasks)).tasks).toEqual([]);
    } finally {
      await again.leave();
    }
  });
});
