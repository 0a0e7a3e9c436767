/**
 * The agent connections of a connector (connectors/agent-sessions.ts), against
 * the real recording fixture over stdio (one child process per connection; it
 * records its pid with every call): bounds per principal and per connector
 * refuse clearly and are audited, idle connections close, a session's
 * connection (and its child process) ends with the session, and isolation
 * mode `principal` shares one connection among a principal's sessions only.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { RECORDING_UPSTREAM, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { alive, connectAgent, EVERYTHING, eventually, textOf, type Agent } from './helpers.ts';

let t: TestBroker | undefined;

afterEach(async () => {
  await t?.close();
  t = undefined;
});

async function brokerWith(isolation: Record<string, unknown>): Promise<TestBroker> {
  t = await startTestBroker({}, { isolation });
  return t;
}

const agent = async (broker: TestBroker, sub: string) => connectAgent(broker.url, await broker.mint({ sub }));
const echo = (a: Agent, text = 'hi') => a.client.callTool({ name: 'rec__echo', arguments: { text } }) as Promise<CallToolResult>;
const connections = (broker: TestBroker) => broker.broker.connectors[0]!.agentConnections();
const connectionOf = (broker: TestBroker, a: Agent) => connections(broker).find((c) => c.sessions.includes(a.transport.sessionId!));

describe('agent connections: bounds', () => {
  it('a principal at max_per_principal is refused with BASTION_UPSTREAM_SESSIONS_FULL, audited, and nothing reaches the upstream', async () => {
    const broker = await brokerWith({ max: 4, max_per_principal: 1 });
    const first = await agent(broker, 'agent:p');
    const second = await agent(broker, 'agent:p');
    expect(textOf(await echo(first))).toBe('echo: hi');
    const mark = await broker.auditMark();

    const refused = await echo(second, 'refused');
    expect(refused.isError).toBe(true);
    expect(textOf(refused)).toContain('BASTION_UPSTREAM_SESSIONS_FULL');
    expect(textOf(refused)).toContain('limit 1');
    const calls = await broker.auditSince(mark, 'tools/call');
    expect(calls.map((r) => [r.outcome, r.denial?.code])).toEqual([['denied', 'BASTION_UPSTREAM_SESSIONS_FULL']]);
    const connects = await broker.auditSince(mark, 'upstream/connect');
    expect(connects).toHaveLength(1);
    expect(connects[0]).toMatchObject({ outcome: 'denied', session: second.transport.sessionId, principal: { sub: 'agent:p' }, detail: { connector: 'rec' } });
    expect((await broker.upstreamCalls()).map((c) => c.args)).toEqual([{ text: 'hi' }]);

    // Another principal is not starved by p.
    const other = await agent(broker, 'agent:q');
    expect(textOf(await echo(other))).toBe('echo: hi');
  });

  it('a connector at max refuses every further principal, naming the connector limit', async () => {
    const broker = await brokerWith({ max: 2, max_per_principal: 2 });
    const [a, b, c] = [await agent(broker, 'agent:a'), await agent(broker, 'agent:b'), await agent(broker, 'agent:c')];
    expect(textOf(await echo(a))).toBe('echo: hi');
    expect(textOf(await echo(b))).toBe('echo: hi');
    const refused = await echo(c);
    expect(refused.isError).toBe(true);
    expect(textOf(refused)).toMatch(/BASTION_UPSTREAM_SESSIONS_FULL.*connector rec holds 2 agent connections \(limit 2\)/s);
    expect(connections(broker)).toHaveLength(2);

    // When a session closes its place is free again.
    await a.leave();
    await eventually(() => connections(broker).length === 1, 'the closed session\'s connection to go');
    expect(textOf(await echo(c))).toBe('echo: hi');
  });
});

describe('agent connections: lifetime', () => {
  it('each session gets its own upstream process, opened on first need and stopped when the session closes', async () => {
    const broker = await brokerWith({});
    const a = await agent(broker, 'agent:a');
    const b = await agent(broker, 'agent:a');
    expect(connections(broker)).toEqual([]);
    await echo(a);
    await echo(b);
    const [pidA, pidB] = (await broker.upstreamCalls()).map((c) => (c as unknown as { pid: number }).pid);
    expect(pidA).not.toBe(pidB);
    expect(connectionOf(broker, a)?.pid).toBe(pidA);
    expect(alive(pidA!)).toBe(true);

    await a.leave();
    await eventually(() => !alive(pidA!), "the closed session's upstream process to exit");
    expect(connectionOf(broker, b)?.pid).toBe(pidB);
    expect(connections(broker)).toHaveLength(1);
    expect(alive(pidB!)).toBe(true);
  });

  it('an idle connection is closed (its process stops), and the next call opens a new one', async () => {
    const broker = await brokerWith({ idle: '300ms' });
    const a = await agent(broker, 'agent:a');
    await echo(a, 'one');
    const first = connectionOf(broker, a)!.pid!;
    await eventually(() => connections(broker).length === 0 && !alive(first), 'the idle connection to close');
    expect(textOf(await echo(a, 'two'))).toBe('echo: two');
    const pids = (await broker.upstreamCalls()).map((c) => (c as unknown as { pid: number }).pid);
    expect(pids[0]).toBe(first);
    expect(pids[1]).not.toBe(first);
  });

  it('a subscribed connection is not idle: it outlives the idle time while the subscription lasts, and closes after', async () => {
    const broker = await startTestBroker({
      connectors: [{ name: 'every', transport: 'stdio', command: process.execPath, args: [EVERYTHING, 'stdio'], timeout: '30s', isolation: { idle: '300ms' } }],
    });
    t = broker;
    const a = await connectAgent(broker.url, await broker.mint({ sub: 'agent:a', cap: [{ tool: '*' }] }));
    const uri = 'demo://resource/static/document/architecture.md';
    await a.client.subscribeResource({ uri });
    const pid = connectionOf(broker, a)!.pid!;
    await a.client.callTool({ name: 'every__toggle-subscriber-updates', arguments: {} });
    // Updates come about every 5 s, far beyond the 300 ms idle time: each proves the connection stayed.
    await eventually(() => a.updates.length >= 2, 'two resource updates');
    expect(connectionOf(broker, a)?.pid).toBe(pid);
    await a.client.unsubscribeResource({ uri });
    await eventually(() => connections(broker).length === 0 && !alive(pid), 'the connection to close once idle');
  });
});

describe("agent connections: descriptors in the agent's own upstream session", () => {
  it('a tool whose descriptor changed in one session only is refused for that session (audited), and still served to others', async () => {
    const broker = await brokerWith({});
    const a = await agent(broker, 'agent:a');
    const b = await agent(broker, 'agent:b');
    expect(textOf(await echo(a))).toBe('echo: hi');
    expect(textOf(await a.client.callTool({ name: 'rec__mutate-here', arguments: {} }))).toBe('mutated here');
    const mark = await broker.auditMark();
    await eventually(async () => {
      const r = (await a.client.callTool({ name: 'rec__mutable', arguments: {} })) as CallToolResult;
      return r.isError === true && textOf(r).includes('BASTION_TOOL_QUARANTINED');
    }, "alice's call to the tool changed in her session to be refused");
    const refused = (await broker.auditSince(mark, 'tools/call')).at(-1);
    expect(refused).toMatchObject({ outcome: 'denied', tool: 'rec__mutable', denial: { code: 'BASTION_TOOL_QUARANTINED' } });
    expect(refused!.denial!.reason).toContain("different descriptor in this agent's upstream session");
    expect((await broker.upstreamCalls()).filter((c) => c.tool === 'mutable')).toEqual([]);

    // The server as a whole did not change: the catalog still lists the pinned tool, and bob calls it.
    expect((await b.client.listTools()).tools.map((tool) => tool.name)).toContain('rec__mutable');
    expect(textOf(await b.client.callTool({ name: 'rec__mutable', arguments: {} }))).toBe('invoices: none');
  });
});

describe('agent connections: isolation mode principal', () => {
  it("a principal's sessions share one connection, another principal gets its own, and it ends with the principal's last session", async () => {
    const broker = await brokerWith({ mode: 'principal' });
    const [p1, p2, q] = [await agent(broker, 'agent:p'), await agent(broker, 'agent:p'), await agent(broker, 'agent:q')];
    await echo(p1);
    await echo(p2);
    await echo(q);
    const [pid1, pid2, pidQ] = (await broker.upstreamCalls()).map((c) => (c as unknown as { pid: number }).pid);
    expect(pid2).toBe(pid1);
    expect(pidQ).not.toBe(pid1);
    expect(connections(broker)).toHaveLength(2);
    expect(connectionOf(broker, p1)?.sessions.sort()).toEqual([p1.transport.sessionId, p2.transport.sessionId].sort());

    await p1.leave();
    await eventually(() => !connectionOf(broker, p2)?.sessions.includes(p1.transport.sessionId!) || false, "p1 to leave p's connection");
    expect(alive(pid1!)).toBe(true);
    await echo(p2, 'still');
    expect((await broker.upstreamCalls()).at(-1)).toMatchObject({ args: { text: 'still' }, pid: pid1 });

    await p2.leave();
    await eventually(() => !alive(pid1!), "p's upstream process to exit with its last session");
    expect(alive(pidQ!)).toBe(true);
  });
});
