/**
 * Each agent's upstream connection declares the client capabilities the agent
 * itself declared (within what Bastion relays), so a server that offers tools
 * by capability (server-everything registers get-roots-list, the sampling and
 * elicitation triggers only for a client that can answer them) offers an agent
 * through Bastion what it would offer that agent directly. Before, every agent
 * saw the tools Bastion's own full declaration unlocked, and calling them failed.
 *
 * 2026-07-28: server-everything speaks only 2025-11-25; Bastion translates its
 * mid-call requests into input_required for a 2026 agent (README, era
 * translation), so a 2026 agent's declaration (its request `_meta`) counts as a
 * 2025 agent's initialize does.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClientCapabilities } from '@modelcontextprotocol/client';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { Agent, connectorConfig, EVERYTHING_BIN, stdioUpstream, type Era } from './harness.ts';

const CONNECTOR = 'everything';
const upstream = stdioUpstream(EVERYTHING_BIN);
const FULL: ClientCapabilities = { sampling: {}, elicitation: { form: {}, url: {} }, roots: { listChanged: true } };
const CONDITIONAL = ['get-roots-list', 'trigger-sampling-request', 'trigger-elicitation-request'];

let broker: TestBroker;
const agents: Agent[] = [];
let serial = 0;

beforeAll(async () => {
  broker = await startTestBroker({ connectors: [connectorConfig(CONNECTOR, upstream)] });
});
afterAll(async () => {
  await Promise.all(agents.map((a) => a.close()));
  await broker?.close();
});

/** The names server-everything lists to a client declaring `capabilities`: directly, or through Bastion in `era`. */
async function toolNames(capabilities: ClientCapabilities, how: 'direct' | Era): Promise<string[]> {
  const agent = new Agent(capabilities);
  agents.push(agent);
  const side =
    how === 'direct'
      ? await agent.direct(upstream)
      : await agent.through(broker.url, await broker.mint({ sub: `agent:caps-${++serial}`, cap: [{ tool: '*' }] }), CONNECTOR, how);
  const { tools } = await side.client.listTools();
  const prefix = how === 'direct' ? '' : `${CONNECTOR}__`;
  return tools.map((t) => (t.name.startsWith(prefix) ? t.name.slice(prefix.length) : `(not namespaced) ${t.name}`)).sort();
}

describe('tools offered by client capability: the same through Bastion as directly', () => {
  const directly: Record<string, string[]> = {};

  beforeAll(async () => {
    directly.none = await toolNames({}, 'direct');
    directly.roots = await toolNames({ roots: {} }, 'direct');
    directly.full = await toolNames(FULL, 'direct');
  });

  it('the server really offers tools by capability (else this file proves nothing)', () => {
    for (const name of CONDITIONAL) {
      expect(directly.full).toContain(name);
      expect(directly.none).not.toContain(name);
    }
    expect(directly.roots).toContain('get-roots-list');
    expect(directly.roots).not.toContain('trigger-sampling-request');
  });

  it('2025-11-25: an agent declaring nothing, only roots, or everything sees exactly what it sees directly', async () => {
    expect(await toolNames({}, 'legacy')).toEqual(directly.none);
    expect(await toolNames({ roots: {} }, 'legacy')).toEqual(directly.roots);
    expect(await toolNames(FULL, 'legacy')).toEqual(directly.full);
  });

  it('2025-11-25: what Bastion does not relay is not declared upstream (tasks), so it unlocks nothing', async () => {
    // server-everything's async sampling tool needs sampling and client tasks; Bastion relays no tasks.
    const withTasks = await toolNames({ ...FULL, tasks: { requests: { sampling: { createMessage: {} } } } } as ClientCapabilities, 'legacy');
    expect(withTasks).toEqual(directly.full);
  });

  it('2026-07-28: an agent behind this 2025-11-25 server declaring nothing, only roots, or everything sees exactly what a 2025 client declaring the same sees directly', async () => {
    expect(await toolNames({}, '2026-07-28')).toEqual(directly.none);
    expect(await toolNames({ roots: {} }, '2026-07-28')).toEqual(directly.roots);
    expect(await toolNames(FULL, '2026-07-28')).toEqual(directly.full);
  });
});
