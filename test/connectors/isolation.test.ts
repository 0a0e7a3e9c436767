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
import { ProtocolError, type CreateMessageRequest } from '@modelcontextprotocol/client';
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
async function twoAgents(a: AgentOptions = {}, b: AgentOptions = {}): Promise<[Agent, Agent]> {
  const cap = [{ tool: '*' }];
  pair += 1;
  return [
    await connectAgent(t.url, await t.mint({ sub: `agent:alice-${pair}`, cap }), a),
    await connectAgent(t.url, await t.mint({ sub: `agent:bob-${pair}`, cap }), b),
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
