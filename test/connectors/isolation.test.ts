/**
 * Two agents with different principals on one connector to a real server
 * nobody here wrote (`@modelcontextprotocol/server-everything`, stdio): what
 * the upstream keeps per client (roots, session resources, log level and log
 * stream, subscriptions) never crosses from one to the other. With one shared
 * upstream connection every test here failed: agent B got agent A's roots, read
 * A's session resource, and received A's log messages and resource updates.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProtocolError, ProtocolErrorCode, type CreateMessageRequest } from '@modelcontextprotocol/client';
import { z } from 'zod';
import { CreateTaskResultSchema, TaskPayloadSchema, TaskResultSchema, TaskSchema } from '../../broker/tasks/schemas.ts';
import type { CallOrigin } from '../../connectors/upstream.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { freePort } from '../helpers/spawn.ts';
import { connectAgent, EVERYTHING, eventually, textOf, type Agent, type AgentOptions } from './helpers.ts';

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker({
    connectors: [{ name: 'every', transport: 'stdio', command: process.execPath, args: [EVERYTHING, 'stdio'], timeout: '30s' }],
  });
});

afterAll(async () => {
  await t?.close();
});

let pair = 0;
/** Alice and Bob, new principals for each test: flow state follows a principal across sessions (an earlier test's untrusted content would park a later call for approval). */
async function twoAgents(a: AgentOptions = {}, b: AgentOptions = {}): Promise<[Agent & { sub: string }, Agent & { sub: string }]> {
  const cap = [{ tool: '*' }];
  pair += 1;
  const [alice, bob] = [`agent:alice-${pair}`, `agent:bob-${pair}`];
  return [
    Object.assign(await connectAgent(t.url, await t.mint({ sub: alice, cap }), a), { sub: alice }),
    Object.assign(await connectAgent(t.url, await t.mint({ sub: bob, cap }), b), { sub: bob }),
  ];
}

/** Simulated log messages of server-everything (not the ones it sends about roots or subscriptions). */
const simulated = (agent: Agent) => agent.logs.filter((log) => /level[- ]message/i.test(String(log.data)));

describe('agents on one connector see only their own upstream state', () => {
  it('roots: each agent gets its own roots from get-roots-list, never the other agent\'s', async () => {
    const [alice, bob] = await twoAgents({ roots: ['file:///home/alice/project'] }, { roots: ['file:///home/bob/secret'] });
    try {
      const a = textOf(await alice.client.callTool({ name: 'every__get-roots-list', arguments: {} }));
      const b = textOf(await bob.client.callTool({ name: 'every__get-roots-list', arguments: {} }));
      expect(a).toContain('file:///home/alice/project');
      expect(a).not.toContain('bob');
      expect(b).toContain('file:///home/bob/secret');
      expect(b).not.toContain('alice');

      // A roots change from alice reaches her upstream session (it asks again), and still not bob's.
      alice.setRoots(['file:///home/alice/other']);
      await alice.client.sendRootsListChanged();
      await eventually(
        async () => textOf(await alice.client.callTool({ name: 'every__get-roots-list', arguments: {} })).includes('file:///home/alice/other'),
        "alice's changed roots upstream",
      );
      const again = textOf(await bob.client.callTool({ name: 'every__get-roots-list', arguments: {} }));
      expect(again).toContain('file:///home/bob/secret');
      expect(again).not.toContain('alice');
    } finally {
      await alice.leave();
      await bob.leave();
    }
  });

  it('session resources: a resource the upstream made for alice is listed to and readable by alice, and neither for bob', async () => {
    const [alice, bob] = await twoAgents();
    try {
      const made = await alice.client.callTool({
        name: 'every__gzip-file-as-resource',
        arguments: { name: 'alice-private.txt.gz', data: 'data:text/plain;base64,' + Buffer.from('alice only').toString('base64'), outputType: 'resourceLink' },
      });
      const link = (made.content as { type: string; uri?: string }[]).find((c) => c.type === 'resource_link');
      expect(link?.uri).toBe('demo://resource/session/alice-private.txt.gz');
      const uri = link!.uri!;
      // Her upstream session announces it; once Bastion has listed it, she can read it.
      await eventually(async () => (await alice.client.readResource({ uri }).catch(() => undefined)) !== undefined, 'alice reading her session resource');
      const mine = await alice.client.readResource({ uri });
      expect(mine.contents[0]?.uri).toBe(uri);
      // Listed to her as the server lists it to her session directly, and never to bob.
      expect((await alice.client.listResources()).resources.map((r) => r.uri)).toContain(uri);
      expect((await bob.client.listResources()).resources.map((r) => r.uri)).not.toContain(uri);

      const theirs = await bob.client.readResource({ uri }).then(
        () => 'read',
        (error: unknown) => error,
      );
      expect(theirs).toBeInstanceOf(ProtocolError);
      expect((theirs as ProtocolError).message).toMatch(/unknown resource/);
    } finally {
      await alice.leave();
      await bob.leave();
    }
  });

  it('log stream: log messages from alice\'s upstream session reach alice only, outside any call', async () => {
    const [alice, bob] = await twoAgents();
    try {
      await alice.client.setLoggingLevel('debug');
      await bob.client.setLoggingLevel('debug');
      // Both have upstream sessions; only alice's logs.
      await bob.client.callTool({ name: 'every__echo', arguments: { message: 'hi' } });
      await alice.client.callTool({ name: 'every__toggle-simulated-logging', arguments: {} });
      // The first comes at once, the next about 5 s later: the second arrives outside any call.
      await eventually(() => simulated(alice).length >= 2, 'two simulated log messages at alice');
      expect(simulated(bob)).toEqual([]);
    } finally {
      await alice.leave();
      await bob.leave();
    }
  });

  it('log level: logging/setLevel from one agent applies to its own upstream session only', async () => {
    const [alice, bob] = await twoAgents();
    try {
      // Over one shared upstream session the later setLevel (bob's) would silence alice too.
      await alice.client.setLoggingLevel('debug');
      await bob.client.setLoggingLevel('emergency');
      await alice.client.callTool({ name: 'every__toggle-simulated-logging', arguments: {} });
      await bob.client.callTool({ name: 'every__toggle-simulated-logging', arguments: {} });
      // Random levels, one message every 5 s each: alice, at debug, soon gets one below emergency.
      await eventually(() => simulated(alice).some((log) => log.level !== 'emergency'), 'a non-emergency message at alice', 55_000);
      expect(simulated(bob).every((log) => log.level === 'emergency')).toBe(true);
    } finally {
      await alice.leave();
      await bob.leave();
    }
  });

  it('subscriptions: updates alice turned on for her subscription never reach bob, though he subscribed to the same resource', async () => {
    const [alice, bob] = await twoAgents();
    const uri = 'demo://resource/static/document/architecture.md';
    try {
      await alice.client.subscribeResource({ uri });
      await bob.client.subscribeResource({ uri });
      await alice.client.callTool({ name: 'every__toggle-subscriber-updates', arguments: {} });
      await eventually(() => alice.updates.filter((u) => u === uri).length >= 2, 'two updates at alice');
      expect(bob.updates).toEqual([]);

      // Unsubscribing ends alice's upstream subscription: no update for her after the next tick.
      await alice.client.unsubscribeResource({ uri });
      const seen = alice.updates.length;
      await bob.client.callTool({ name: 'every__toggle-subscriber-updates', arguments: {} });
      await eventually(() => bob.updates.length >= 2, 'bob\'s own updates once he turned them on');
      expect(alice.updates.length).toBe(seen);
    } finally {
      await alice.leave();
      await bob.leave();
    }
  });

  it('sampling: with both agents\' calls in flight at once, each sampling request goes to the agent whose call made it', async () => {
    // Each answer waits until the other agent's request has arrived too: both calls are surely in flight together.
    const arrived: Record<string, () => void> = {};
    const both = { alice: new Promise<void>((resolve) => (arrived.alice = resolve)), bob: new Promise<void>((resolve) => (arrived.bob = resolve)) };
    const answer = (me: 'alice' | 'bob', other: 'alice' | 'bob') => async (request: CreateMessageRequest) => {
      arrived[me]!();
      await both[other];
      const asked = JSON.stringify(request.params.messages);
      return { role: 'assistant' as const, model: `${me}-model`, content: { type: 'text' as const, text: `${me} answers ${asked.includes(me) ? 'its own prompt' : 'a stranger'}` } };
    };
    const [alice, bob] = await twoAgents({ sampling: answer('alice', 'bob') }, { sampling: answer('bob', 'alice') });
    try {
      const [a, b] = await Promise.all([
        alice.client.callTool({ name: 'every__trigger-sampling-request', arguments: { prompt: 'from alice' } }),
        bob.client.callTool({ name: 'every__trigger-sampling-request', arguments: { prompt: 'from bob' } }),
      ]);
      expect(a.isError).toBeFalsy();
      expect(b.isError).toBeFalsy();
      expect(textOf(a)).toContain('alice answers its own prompt');
      expect(textOf(b)).toContain('bob answers its own prompt');
    } finally {
      await alice.leave();
      await bob.leave();
    }
  });
});

describe('the same over Streamable HTTP: each agent holds its own upstream MCP session', () => {
  let upstream: ChildProcess | undefined;
  let h: TestBroker | undefined;

  afterAll(async () => {
    await h?.close();
    upstream?.kill('SIGTERM');
  });

  it("roots: over one HTTP connector, each agent's upstream session asks that agent for its roots", async () => {
    const port = await freePort();
    upstream = spawn(process.execPath, [EVERYTHING, 'streamableHttp'], { env: { ...process.env, PORT: String(port) }, stdio: ['ignore', 'ignore', 'pipe'] });
    let said = '';
    upstream.stderr!.on('data', (chunk: Buffer) => void (said += chunk.toString('utf8')));
    await eventually(() => said.includes('listening on port'), 'server-everything listening over HTTP');
    h = await startTestBroker({ connectors: [{ name: 'every', transport: 'http', url: `http://127.0.0.1:${port}/mcp`, timeout: '30s' }] });
    const cap = [{ tool: '*' }];
    const alice = await connectAgent(h.url, await h.mint({ sub: 'agent:alice-http', cap }), { roots: ['file:///home/alice/http'] });
    const bob = await connectAgent(h.url, await h.mint({ sub: 'agent:bob-http', cap }), { roots: ['file:///home/bob/http'] });
    const a = textOf(await alice.client.callTool({ name: 'every__get-roots-list', arguments: {} }));
    const b = textOf(await bob.client.callTool({ name: 'every__get-roots-list', arguments: {} }));
    expect(a).toContain('file:///home/alice/http');
    expect(a).not.toContain('bob');
    expect(b).toContain('file:///home/bob/http');
    expect(b).not.toContain('alice');
    expect(h.broker.connectors[0]!.agentConnections()).toHaveLength(2);
    await alice.leave();
    await eventually(() => h!.broker.connectors[0]!.agentConnections().length === 1, "alice's upstream session to end with hers");
    await bob.leave();
  });
});

/** Task requests as a 2025-11-25 client makes them (the v2 client has no task helpers; broker/tasks/schemas.ts). */
const ListTasks = z.looseObject({ tasks: z.array(TaskSchema) });
const createTask = (agent: Agent, name: string, args: Record<string, unknown>) =>
  agent.client.request({ method: 'tools/call', params: { name, arguments: args, task: { ttl: 120_000 } } }, CreateTaskResultSchema);
const taskRequest = (agent: Agent, method: 'tasks/get' | 'tasks/result' | 'tasks/cancel', taskId: string) =>
  agent.client.request({ method, params: { taskId } }, method === 'tasks/result' ? TaskPayloadSchema : TaskResultSchema, { timeout: 120_000 });
const listTasks = async (agent: Agent) => (await agent.client.request({ method: 'tasks/list', params: {} }, ListTasks)).tasks.map((task) => task.taskId);
/** A refusal as the agent sees it, with the id it named replaced, so two refusals can be compared. */
const refusalOf = async (request: Promise<unknown>, id: string) => {
  const error = await request.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ProtocolError);
  return { code: (error as ProtocolError).code, message: (error as ProtocolError).message.replaceAll(id, '<id>'), data: (error as ProtocolError).data };
};

describe("tasks: each agent's tasks are its own", () => {
  it('neither agent can get, fetch the result of, cancel or list the other\'s task; a foreign id is answered as an unknown one', async () => {
    const [alice, bob] = await twoAgents();
    try {
      const statuses = { alice: [] as { taskId: string; status: string }[], bob: [] as { taskId: string; status: string }[] };
      alice.client.setNotificationHandler('notifications/tasks/status', { params: TaskSchema }, (params) => void statuses.alice.push(params));
      bob.client.setNotificationHandler('notifications/tasks/status', { params: TaskSchema }, (params) => void statuses.bob.push(params));
      const mark = await t.auditMark();
      const mine = (await createTask(alice, 'every__simulate-research-query', { topic: 'alice only' })).task.taskId;
      const his = (await createTask(bob, 'every__simulate-research-query', { topic: 'bob only' })).task.taskId;
      expect(mine).not.toBe(his);
      const unknown = `bastion-task-${'A'.repeat(22)}`;
      for (const method of ['tasks/get', 'tasks/result', 'tasks/cancel'] as const) {
        const foreign = await refusalOf(taskRequest(bob, method, mine), mine);
        expect(foreign.code).toBe(ProtocolErrorCode.InvalidParams);
        // No existence oracle: exactly what an id that never existed gets.
        expect(foreign).toEqual(await refusalOf(taskRequest(bob, method, unknown), unknown));
      }
      expect(await listTasks(alice)).toEqual([mine]);
      expect(await listTasks(bob)).toEqual([his]);
      // Bob's cancel changed nothing: alice's task ran on and completed.
      const result = await taskRequest(alice, 'tasks/result', mine);
      expect(textOf(result)).toContain('alice only');
      expect((await taskRequest(alice, 'tasks/get', mine)).status).toBe('completed');
      // Status notifications reach the owner only, under Bastion's id (never the upstream's).
      await eventually(() => statuses.alice.some((s) => s.taskId === mine && s.status === 'completed'), "alice's completed-status notification");
      expect(statuses.alice.every((s) => s.taskId === mine)).toBe(true);
      await eventually(() => statuses.bob.some((s) => s.taskId === his), "bob's status notifications for his own task");
      expect(statuses.bob.every((s) => s.taskId === his)).toBe(true);
      // Every refusal is on the record, and says (to the operator only) that the id was another principal's.
      const refused = (await t.auditSince(mark)).filter((r) => r.event.startsWith('tasks/') && r.outcome === 'denied');
      expect(refused).toHaveLength(6);
      expect(refused.every((r) => r.principal?.sub === bob.sub && r.denial?.code === 'BASTION_TASK_UNKNOWN')).toBe(true);
      expect(refused.filter((r) => r.detail?.foreign === true).map((r) => r.event)).toEqual(['tasks/get', 'tasks/result', 'tasks/cancel']);
    } finally {
      await alice.leave();
      await bob.leave();
    }
  });

  it('a task-augmented call that policy denies creates nothing upstream and is refused as a JSON-RPC error, audited', async () => {
    pair += 1;
    const sub = `agent:carol-${pair}`;
    const carol = Object.assign(await connectAgent(t.url, await t.mint({ sub, cap: [{ tool: 'every__echo' }] })), { sub });
    try {
      // An allowed call first, so carol's own upstream connection exists and can be asked what tasks it holds.
      await carol.client.callTool({ name: 'every__echo', arguments: { message: 'hello' } });
      const mark = await t.auditMark();
      const refused = await refusalOf(createTask(carol, 'every__simulate-research-query', { topic: 'not allowed' }), '');
      expect(refused.code).toBe(ProtocolErrorCode.InvalidRequest);
      expect(refused.data).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });
      const [record] = await t.auditSince(mark, 'tools/call');
      expect(record).toMatchObject({ outcome: 'denied', tool: 'every__simulate-research-query', denial: { code: 'BASTION_POLICY_DENIED' }, detail: { task: { requested: true } } });
      const connector = t.broker.connectors[0]!;
      const own = connector.agentConnections().find((c) => c.owner.sub === sub)!;
      expect(own).toBeDefined();
      const upstream = await connector.onTaskConnection(own.key, probeOrigin(sub), (client) => client.request({ method: 'tasks/list', params: {} }, ListTasks));
      expect(upstream.tasks).toEqual([]);
      expect(await listTasks(carol)).toEqual([]);
    } finally {
      await carol.leave();
    }
  });
});

/** An origin for asking an agent's upstream connection directly (nothing is relayed to anyone). */
function probeOrigin(sub: string): CallOrigin {
  return {
    sessionId: 'probe',
    owner: { iss: 'probe', sub },
    stateless: true,
    sendRequest: async () => {
      throw new Error('nothing is relayed to a probe');
    },
    sendNotification: async () => undefined,
  };
}
