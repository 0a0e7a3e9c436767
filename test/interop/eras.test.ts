/**
 * The agent on the stateless 2026-07-28 revision (pinned) through Bastion,
 * against the same agent talking 2025-11-25 straight to server-everything
 * (which speaks only that revision): the request/response features give the
 * same results whichever era the agent speaks to Bastion. Server-to-client
 * requests (sampling, elicitation) the server sends mid-call reach the 2026
 * agent as input_required results: Bastion holds the server's request and
 * delivers the agent's answer from its retry (era translation, README).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateTaskResultSchema, TaskPayloadSchema } from '../../broker/tasks/schemas.ts';
import { byKey, EVERYTHING_BIN, expectEquivalent, openPair, stdioUpstream, type Pair } from './harness.ts';

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
    pair = await openPair(CONNECTOR, stdioUpstream(EVERYTHING_BIN), { era: '2026-07-28' });
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

  it('a tool that requires a task (no tasks in 2026-07-28): Bastion runs the task and answers its result, as the 2025 agent gets it with tasks/result', async () => {
    const args = { topic: 'across eras' };
    // Both at once: the task's stages take seconds either way.
    const [direct, via] = await Promise.all([
      pair.direct.client
        .request({ method: 'tools/call', params: { name: 'simulate-research-query', arguments: args, task: {} } }, CreateTaskResultSchema)
        .then((created) => pair.direct.client.request({ method: 'tasks/result', params: { taskId: created.task.taskId } }, TaskPayloadSchema, { timeout: 120_000 })),
      pair.bastion.client.callTool({ name: pair.bastion.tool('simulate-research-query'), arguments: args }, { timeout: 120_000 }),
    ]);
    expect(via.isError ?? false).toBe(false);
    expect(via.content).toEqual(direct.content);
    // Tasks are not advertised to a 2026-07-28 agent (the SDK has no 2026 tasks extension).
    expect(pair.bastion.client.getServerCapabilities()?.tasks).toBeUndefined();
  });

  it('resources, templates and reads: the same', async () => {
    const [direct, via] = await pair.both(async (side) => ({
      resources: byKey((await side.client.listResources()).resources, (r) => r.uri),
      templates: byKey((await side.client.listResourceTemplates()).resourceTemplates, (t) => t.uriTemplate),
      read: await side.client.readResource({ uri: 'demo://resource/dynamic/text/4' }),
    }));
    expectSameAcrossEras(direct, via);
  });

  it('sampling and elicitation asked mid-call by the 2025 server: held, answered by the 2026 agent, the same results', async () => {
    const [direct, via] = await pair.both(async (side) => ({
      sampled: await side.client.callTool({ name: side.tool('trigger-sampling-request'), arguments: { prompt: 'Name a prime number', maxTokens: 50 } }),
      elicited: await side.client.callTool({ name: side.tool('trigger-elicitation-request'), arguments: {} }),
    }));
    expect(JSON.stringify(direct.sampled)).toContain('sampled: ');
    expect(JSON.stringify(direct.elicited)).toContain('Ada Lovelace');
    expectSameAcrossEras(direct, via);
    expect(pair.bastion.observed.sampling.at(-1)).toEqual(pair.direct.observed.sampling.at(-1));
    expect(pair.bastion.observed.elicitations.at(-1)).toEqual(pair.direct.observed.elicitations.at(-1));
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
