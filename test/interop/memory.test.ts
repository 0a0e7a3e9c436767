/**
 * server-memory (a knowledge graph in a JSON file) called directly and
 * through Bastion. It has no HTTP mode (stdio only). Each side has its own
 * graph file, and both run the same steps from empty, so every result must
 * be the same. The server offers tools and one resource (the graph), no
 * prompts, completions or logging: Bastion must not advertise those.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { byKey, eventually, expectEquivalent, MEMORY_BIN, openPair, stdioUpstream, type Pair } from './harness.ts';

const CONNECTOR = 'memory';
let dir: string;
let pair: Pair;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-interop-memory-'));
  pair = await openPair(CONNECTOR, stdioUpstream(MEMORY_BIN, [], { MEMORY_FILE_PATH: path.join(dir, 'bastion.jsonl') }), {
    directUpstream: stdioUpstream(MEMORY_BIN, [], { MEMORY_FILE_PATH: path.join(dir, 'direct.jsonl') }),
    // delete_* tools are destructive (high risk: approval by default); the operator lowers them for this connector.
    connectorExtra: { tools: { delete_entities: { risk: 'low' }, delete_observations: { risk: 'low' }, delete_relations: { risk: 'low' } } },
  });
});

afterAll(async () => {
  await pair?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('server-memory over stdio (no HTTP mode): direct and through Bastion', () => {
  it('capabilities: what the server offers and nothing more', () => {
    const direct = pair.direct.client.getServerCapabilities()!;
    const through = pair.bastion.client.getServerCapabilities()!;
    // No prompts, completions or logging: Bastion must not advertise them on the server's behalf.
    expect(Object.keys(through).sort()).toEqual(Object.keys(direct).sort());
    expect(through).not.toHaveProperty('prompts');
    expect(through).not.toHaveProperty('completions');
    expect(through).not.toHaveProperty('logging');
    // Bastion announces list changes whatever the upstream says: its own catalog changes (README).
    expect(through.tools).toEqual({ ...direct.tools, listChanged: true });
  });

  it('prompts (not offered) and resources: the same lists', async () => {
    const [direct, via] = await pair.both(async (side) => [
      await side.client.listPrompts().then((r) => r.prompts, (error: Error) => `${error.constructor.name}: ${error.message}`),
      await side.client.listResources().then((r) => r.resources, (error: Error) => `${error.constructor.name}: ${error.message}`),
      await side.client.listResourceTemplates().then((r) => r.resourceTemplates, (error: Error) => `${error.constructor.name}: ${error.message}`),
    ]);
    expect(direct[0]).toEqual([]);
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('tools/list: the same tools and descriptors', async () => {
    const [direct, via] = await pair.both(async (side) => ({ tools: byKey((await side.client.listTools()).tools, (t) => t.name) }));
    expect(direct.tools.length).toBe(9);
    expectEquivalent(direct, { tools: byKey(via.tools, (t) => t.name.replace(`${CONNECTOR}__`, '')) }, CONNECTOR);
  });

  it('subscriptions: a change to the graph notifies the subscriber', async () => {
    const uri = 'memory://knowledge-graph';
    await pair.both((side) => side.client.subscribeResource({ uri }));
    await pair.both((side) => side.client.callTool({ name: side.tool('create_entities'), arguments: { entities: [{ name: 'Probe', entityType: 'test', observations: [] }] } }));
    expect(await eventually(() => pair.direct.observed.updated.includes(uri) && pair.bastion.observed.updated.includes(uri))).toBe(true);
    const [direct, via] = await pair.both(async (side) => {
      await side.client.callTool({ name: side.tool('delete_entities'), arguments: { entityNames: ['Probe'] } });
      return side.client.readResource({ uri });
    });
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('tools/call: building, querying and pruning a graph, structured content included', async () => {
    const steps: [string, Record<string, unknown>][] = [
      ['create_entities', { entities: [
        { name: 'Ada', entityType: 'person', observations: ['wrote the first program'] },
        { name: 'Analytical Engine', entityType: 'machine', observations: ['designed by Babbage'] },
      ] }],
      ['create_relations', { relations: [{ from: 'Ada', to: 'Analytical Engine', relationType: 'programmed' }] }],
      ['add_observations', { observations: [{ entityName: 'Ada', contents: ['born 1815'] }] }],
      ['read_graph', {}],
      ['search_nodes', { query: 'Babbage' }],
      ['open_nodes', { names: ['Ada'] }],
      ['delete_observations', { deletions: [{ entityName: 'Ada', observations: ['born 1815'] }] }],
      ['delete_relations', { relations: [{ from: 'Ada', to: 'Analytical Engine', relationType: 'programmed' }] }],
      ['delete_entities', { entityNames: ['Analytical Engine'] }],
      ['read_graph', {}],
    ];
    const uri = 'memory://knowledge-graph';
    for (const [name, args] of steps) {
      const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool(name), arguments: args }));
      expect(direct.isError ?? false, `${name}: ${JSON.stringify(direct)}`).toBe(false);
      expectEquivalent(direct, via, CONNECTOR);
    }
    const [direct, via] = await pair.both((side) => side.client.readResource({ uri }));
    expect(JSON.stringify(direct)).toContain('Ada');
    expectEquivalent(direct, via, CONNECTOR);
  });
});
