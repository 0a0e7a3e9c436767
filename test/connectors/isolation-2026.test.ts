/**
 * isolation.test.ts again, with both agents on the stateless 2026-07-28
 * revision (real v2 SDK clients pinned to it). A 2026 request has no session:
 * it runs on its principal's own upstream connection (keyed by principal and
 * by what the request declares), so what the upstream keeps per client still
 * never crosses from one principal to the other.
 *
 * What 2026-07-28 does not have, and so is not tested here as it is in 2025:
 * - roots/list as a server-to-client request: roots reach an upstream that
 *   speaks 2026 as the calling agent's inputResponses, bound to its call
 *   (tested below, and for forged or replayed state in request-state.test.ts);
 *   a 2025 upstream (server-everything) gets none from a 2026 agent, and its
 *   connection declares no roots (interop/capabilities.test.ts);
 * - logging/setLevel: each request asks for log messages with its own `_meta`
 *   log level, so a level is per request by construction (tested below);
 * - log messages outside a request: there is no stream to carry them (the
 *   listen stream carries list changes and resource updates only), so an
 *   upstream's log message outside any of the principal's calls goes nowhere;
 * - resources/subscribe: updates come on a subscriptions/listen stream that
 *   names the resources; Bastion subscribes the principal's own upstream
 *   connection for it, and its updates reach that principal's streams only
 *   (tested below).
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, ProtocolError, StreamableHTTPClientTransport, type LoggingMessageNotification } from '@modelcontextprotocol/client';
import { ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { MODERN } from '../helpers/modern.ts';
import { EVERYTHING, eventually, textOf } from './helpers.ts';

const MODERN_UPSTREAM = path.join(ROOT, 'test/fixtures/modern-upstream.ts');
const LOG_LEVEL = 'io.modelcontextprotocol/logLevel';

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker({
    connectors: [
      { name: 'every', transport: 'stdio', command: process.execPath, args: [EVERYTHING, 'stdio'], timeout: '30s' },
      { name: 'modern', transport: 'stdio', command: process.execPath, args: [MODERN_UPSTREAM], timeout: '20s', protocol: '2026-07-28' },
    ],
  });
});

afterAll(async () => {
  await t?.close();
});

interface ModernAgent {
  client: Client;
  logs: LoggingMessageNotification['params'][];
}

let pair = 0;
const clients: Client[] = [];
afterAll(async () => Promise.all(clients.map((c) => c.close().catch(() => undefined))));

/** A 2026-07-28 agent that answers roots with its own. */
async function modernAgent(sub: string, roots: string[] = []): Promise<ModernAgent> {
  const client = new Client({ name: 'isolation-2026', version: '1.0.0' }, { capabilities: { roots: {} }, versionNegotiation: { mode: { pin: MODERN } } });
  const logs: ModernAgent['logs'] = [];
  client.setRequestHandler('roots/list', async () => ({ roots: roots.map((uri) => ({ uri, name: path.basename(uri) })) }));
  client.setNotificationHandler('notifications/message', async (notification) => void logs.push(notification.params));
  const token = await t.mint({ sub, cap: [{ tool: '*' }] });
  await client.connect(new StreamableHTTPClientTransport(new URL(t.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  expect(client.getNegotiatedProtocolVersion()).toBe(MODERN);
  clients.push(client);
  return { client, logs };
}

/** Alice and Bob, new principals for each test (flow state follows a principal). */
async function twoAgents(aliceRoots: string[] = [], bobRoots: string[] = []): Promise<[ModernAgent, ModernAgent]> {
  pair += 1;
  return [await modernAgent(`agent:alice26-${pair}`, aliceRoots), await modernAgent(`agent:bob26-${pair}`, bobRoots)];
}

/** Simulated log messages of server-everything. */
const simulated = (agent: ModernAgent) => agent.logs.filter((log) => /level[- ]message/i.test(String(log.data)));

describe('2026-07-28 agents on one connector see only their own upstream state', () => {
  it("roots: with both calls in flight at once, each upstream call gets its own agent's roots", async () => {
    const [alice, bob] = await twoAgents(['file:///home/alice/project'], ['file:///home/bob/secret']);
    const [a, b] = await Promise.all([
      alice.client.callTool({ name: 'modern__where', arguments: {} }),
      bob.client.callTool({ name: 'modern__where', arguments: {} }),
    ]);
    expect(textOf(a)).toContain('roots: file:///home/alice/project');
    expect(textOf(a)).not.toContain('bob');
    expect(textOf(b)).toContain('roots: file:///home/bob/secret');
    expect(textOf(b)).not.toContain('alice');
  });

  it('session resources: a resource the upstream made for alice is listed to and readable by alice, and neither for bob', async () => {
    const [alice, bob] = await twoAgents();
    const made = await alice.client.callTool({
      name: 'every__gzip-file-as-resource',
      arguments: { name: 'alice26.txt.gz', data: 'data:text/plain;base64,' + Buffer.from('alice only').toString('base64'), outputType: 'resourceLink' },
    });
    const uri = (made.content as { type: string; uri?: string }[]).find((c) => c.type === 'resource_link')?.uri;
    expect(uri).toBe('demo://resource/session/alice26.txt.gz');
    await eventually(async () => (await alice.client.readResource({ uri: uri! }).catch(() => undefined)) !== undefined, 'alice reading her session resource');
    expect((await alice.client.listResources()).resources.map((r) => r.uri)).toContain(uri);

    // Bob has an upstream connection of his own too (the call opens it), and it never made that resource.
    await bob.client.callTool({ name: 'every__echo', arguments: { message: 'hi' } });
    expect((await bob.client.listResources()).resources.map((r) => r.uri)).not.toContain(uri);
    const theirs = await bob.client.readResource({ uri: uri! }).then(
      () => 'read',
      (error: unknown) => error,
    );
    expect(theirs).toBeInstanceOf(ProtocolError);
    expect((theirs as ProtocolError).message).toMatch(/unknown resource/);
  });

  it("log stream: alice's upstream log messages reach her own call, never bob's call running meanwhile", async () => {
    const [alice, bob] = await twoAgents();
    // Her call asks for logs: the server's first message comes at once, within her call.
    await alice.client.callTool({ name: 'every__toggle-simulated-logging', arguments: {}, _meta: { [LOG_LEVEL]: 'debug' } });
    expect(simulated(alice).length).toBeGreaterThanOrEqual(1);
    // Alice's upstream logs every 5 s from now on; bob's 7 s call (asking for every level) spans at least one.
    const long = await bob.client.callTool({ name: 'every__trigger-long-running-operation', arguments: { duration: 7, steps: 2 }, _meta: { [LOG_LEVEL]: 'debug' } });
    expect(long.isError).toBeFalsy();
    expect(simulated(bob)).toEqual([]);
  });

  it('log level: each request carries its own; a call that asks for none gets none, the next that asks gets them', async () => {
    const [, bob] = await twoAgents();
    // Turning simulated logging on sends one message at once, within the call.
    await bob.client.callTool({ name: 'every__toggle-simulated-logging', arguments: {} });
    expect(bob.logs).toEqual([]);
    await bob.client.callTool({ name: 'every__toggle-simulated-logging', arguments: {} });
    await bob.client.callTool({ name: 'every__toggle-simulated-logging', arguments: {}, _meta: { [LOG_LEVEL]: 'debug' } });
    expect(simulated(bob).length).toBeGreaterThanOrEqual(1);
    await bob.client.callTool({ name: 'every__toggle-simulated-logging', arguments: {} });
  });

  it("subscriptions: updates alice's upstream session sends reach her listen stream only, though bob listens to the same resource", async () => {
    const [alice, bob] = await twoAgents();
    const uri = 'demo://resource/static/document/architecture.md';
    const updates: Record<'alice' | 'bob', string[]> = { alice: [], bob: [] };
    alice.client.setNotificationHandler('notifications/resources/updated', async (n) => void updates.alice.push(n.params.uri));
    bob.client.setNotificationHandler('notifications/resources/updated', async (n) => void updates.bob.push(n.params.uri));
    const theirs = await bob.client.listen({ resourceSubscriptions: [uri] });
    const hers = await alice.client.listen({ resourceSubscriptions: [uri], toolsListChanged: true });
    try {
      expect(hers.honoredFilter).toEqual({ resourceSubscriptions: [uri], toolsListChanged: true });
      // Her upstream session (the one her calls use) sends updates for what it is subscribed to, every 5 s.
      await alice.client.callTool({ name: 'every__toggle-subscriber-updates', arguments: {} });
      await eventually(() => updates.alice.length >= 2, 'two updates on alice\'s listen stream');
      expect(updates.alice.every((u) => u === uri)).toBe(true);
      expect(updates.bob).toEqual([]);
    } finally {
      await hers.close();
      await theirs.close();
    }
    // The upstream subscriptions end with the streams (else the connections would never be idle).
    const subscribedBy = (who: string) => t.broker.connectors[0]!.agentConnections().filter((c) => c.owner.sub.startsWith(who) && c.subscriptions.length > 0);
    await eventually(() => subscribedBy(`agent:alice26-${pair}`).length === 0 && subscribedBy(`agent:bob26-${pair}`).length === 0, 'the upstream subscriptions to end');
  });

  it('subscriptions: a listen stream naming a resource policy does not let the principal see is refused, audited, and subscribes nothing', async () => {
    const client = new Client({ name: 'isolation-2026', version: '1.0.0' }, { versionNegotiation: { mode: { pin: MODERN } } });
    const token = await t.mint({ sub: `agent:narrow26-${++pair}`, cap: [{ tool: 'every__echo' }] });
    await client.connect(new StreamableHTTPClientTransport(new URL(t.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    clients.push(client);
    const mark = await t.auditMark();
    const outcome = await client.listen({ resourceSubscriptions: ['demo://resource/static/document/architecture.md'] }).then(
      () => 'opened',
      (error: Error) => error.message,
    );
    expect(outcome).toMatch(/BASTION_POLICY_DENIED/);
    const records = await t.auditSince(mark, 'subscriptions/listen');
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ outcome: 'denied', protocol: MODERN, denial: { code: 'BASTION_POLICY_DENIED' } });
  });
});
