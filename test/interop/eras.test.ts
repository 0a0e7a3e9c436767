/**
 * The agent on the stateless 2026-07-28 revision (pinned) through Bastion,
 * against the same agent talking 2025-11-25 straight to server-everything
 * (which speaks only that revision): the request/response features give the
 * same results whichever era the agent speaks to Bastion. Server-to-client
 * requests (sampling, elicitation, roots) reach a 2026 agent only as
 * input_required results, which Bastion does not translate from a 2025 server
 * (README): the agent here declares none of them, as its upstream connection
 * then does (capabilities.test.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, byKey, EVERYTHING_BIN, expectEquivalent, openPair, stdioUpstream, type Pair } from './harness.ts';

const CONNECTOR = 'everything';

/**
 * What differs between the eras on the wire, not through Bastion: a 2026-07-28
 * result names its server in `_meta["io.modelcontextprotocol/serverInfo"]` and
 * carries cache hints (`ttlMs`, `cacheScope`; Bastion's are private, 0 ms,
 * README), and a 2026-07-28 tool has no `execution` (tasks are not in that
 * revision). Removed from both sides, anywhere in a result.
 */
function acrossEras<T>(value: T): T {
  const walk = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(walk);
    if (node === null || typeof node !== 'object') return node;
    const out: Record<string, unknown> = {};
    for (const [key, child] of Object.entries(node)) {
      if (key === 'ttlMs' || key === 'cacheScope' || key === 'execution') continue;
      if (key === '_meta' && child && typeof child === 'object') {
        const { 'io.modelcontextprotocol/serverInfo': _server, ...rest } = child as Record<string, unknown>;
        if (Object.keys(rest).length > 0) out[key] = walk(rest);
        continue;
      }
      out[key] = walk(child);
    }
    return out;
  };
  return walk(value) as T;
}

const expectSameAcrossEras = <T>(direct: T, via: T) => expectEquivalent(acrossEras(direct), acrossEras(via), CONNECTOR);

describe('server-everything, the agent pinned to 2026-07-28 through Bastion', () => {
  let pair: Pair;

  beforeAll(async () => {
    // It declares none of sampling, elicitation, roots: behind a 2025-11-25 server Bastion relays none
    // of them to a 2026 agent, so its upstream connection declares none (capabilities.test.ts).
    pair = await openPair(CONNECTOR, stdioUpstream(EVERYTHING_BIN), { era: '2026-07-28', agent: new Agent({}) });
  });
  afterAll(async () => pair?.close());

  it('speaks 2026-07-28 to Bastion and 2025-11-25 to the server', () => {
    expect(pair.bastion.client.getNegotiatedProtocolVersion()).toBe('2026-07-28');
    expect(pair.direct.client.getNegotiatedProtocolVersion()).not.toBe('2026-07-28');
  });

  it('tools/list: the same tools and descriptors', async () => {
    const [direct, via] = await pair.both(async (side) => ({ tools: byKey((await side.client.listTools()).tools, (t) => t.name.replace(`${CONNECTOR}__`, '')) }));
    expect(direct.tools.length).toBeGreaterThan(10);
    expectSameAcrossEras(direct, via);
  });

  it('tools/call and structured content: the same results', async () => {
    const calls: [string, Record<string, unknown>][] = [
      ['echo', { message: 'hello from 2026' }],
      ['get-sum', { a: 1, b: 2 }],
      ['get-structured-content', { location: 'New York' }],
      ['get-resource-links', { count: 2 }],
    ];
    for (const [name, args] of calls) {
      const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool(name), arguments: args }));
      expect(direct.isError ?? false, name).toBe(false);
      expectSameAcrossEras(direct, via);
    }
  });

  it('resources, templates and reads: the same', async () => {
    const [direct, via] = await pair.both(async (side) => ({
      resources: byKey((await side.client.listResources()).resources, (r) => r.uri),
      templates: byKey((await side.client.listResourceTemplates()).resourceTemplates, (t) => t.uriTemplate),
      read: await side.client.readResource({ uri: 'demo://resource/dynamic/text/4' }),
    }));
    expectSameAcrossEras(direct, via);
  });

  it('prompts and completions: the same', async () => {
    const [direct, via] = await pair.both(async (side) => ({
      prompts: byKey((await side.client.listPrompts()).prompts, (p) => p.name.replace(`${CONNECTOR}__`, '')),
      prompt: await side.client.getPrompt({ name: side.tool('args-prompt'), arguments: { city: 'Porto' } }),
      completion: await side.client.complete({ ref: { type: 'ref/prompt', name: side.tool('completable-prompt') }, argument: { name: 'department', value: 'E' } }),
    }));
    expect(direct.completion.completion.values).toEqual(['Engineering']);
    expectSameAcrossEras(direct, via);
  });
});
