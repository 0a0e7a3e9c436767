/**
 * server-filesystem called directly and through Bastion. It has no HTTP
 * mode (stdio only). Both sides work on the same directories, so read-only
 * results and idempotent writes compare as they are; roots from the agent
 * replace the directories the server may touch, so they are tested too.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, byKey, eventually, expectEquivalent, FILESYSTEM_BIN, openPair, stdioUpstream, type Pair } from './harness.ts';

const CONNECTOR = 'fs';
let dir: string;
let projectA: string;
let projectB: string;
let pair: Pair;

const text = (result: unknown) => JSON.stringify(result);

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-interop-fs-'));
  projectA = path.join(dir, 'project-a');
  projectB = path.join(dir, 'project-b');
  await mkdir(path.join(projectA, 'src'), { recursive: true });
  await mkdir(projectB);
  await writeFile(path.join(projectA, 'README.md'), '# Project A\n\nA small project.\n');
  await writeFile(path.join(projectA, 'src', 'main.ts'), 'export const answer = 42;\n');
  await writeFile(path.join(projectB, 'notes.txt'), 'project b notes\n');
  // The server starts with project A as its directory; the agent's roots say the same.
  const agent = new Agent();
  agent.roots = [{ uri: pathToFileURL(projectA).href, name: 'project-a' }];
  pair = await openPair(CONNECTOR, stdioUpstream(FILESYSTEM_BIN, [projectA]), {
    agent,
    // write_file is destructive (high risk: approval by default); the operator lowers it for this connector.
    connectorExtra: { tools: { write_file: { risk: 'low' } } },
  });
});

afterAll(async () => {
  await pair?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('server-filesystem over stdio (no HTTP mode): direct and through Bastion', () => {
  it('capabilities and instructions: what the server offers', () => {
    expect(pair.bastion.client.getServerCapabilities()).toEqual(pair.direct.client.getServerCapabilities());
    // The server sends no instructions: Bastion adds only its own sentence.
    expect(pair.direct.client.getInstructions()).toBeUndefined();
    expect(pair.bastion.client.getInstructions()).not.toContain('upstream server');
  });

  it('tools/list: the same tools and descriptors', async () => {
    const [direct, via] = await pair.both(async (side) => ({ tools: byKey((await side.client.listTools()).tools, (t) => t.name) }));
    expect(direct.tools.map((t) => t.name)).toContain('read_text_file');
    expectEquivalent(direct, { tools: byKey(via.tools, (t) => t.name.replace(`${CONNECTOR}__`, '')) }, CONNECTOR);
  });

  it('tools/call: reads, listings, search and file info, structured content included', async () => {
    const calls: [string, Record<string, unknown>][] = [
      ['list_allowed_directories', {}],
      ['read_text_file', { path: path.join(projectA, 'README.md') }],
      ['read_text_file', { path: path.join(projectA, 'README.md'), head: 1 }],
      ['read_multiple_files', { paths: [path.join(projectA, 'README.md'), path.join(projectA, 'src', 'main.ts')] }],
      ['list_directory', { path: projectA }],
      ['list_directory_with_sizes', { path: projectA, sortBy: 'name' }],
      ['directory_tree', { path: projectA }],
      ['search_files', { path: projectA, pattern: '**/*.ts' }],
      ['get_file_info', { path: path.join(projectA, 'src', 'main.ts') }],
    ];
    for (const [name, args] of calls) {
      const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool(name), arguments: args }));
      expect(direct.isError ?? false, `${name}: ${text(direct)}`).toBe(false);
      expectEquivalent(direct, via, CONNECTOR);
    }
  });

  it('a write, then reading it back', async () => {
    const file = path.join(projectA, 'written.txt');
    const [direct, via] = await pair.both(async (side) => [
      await side.client.callTool({ name: side.tool('write_file'), arguments: { path: file, content: 'same bytes either way\n' } }),
      await side.client.callTool({ name: side.tool('read_text_file'), arguments: { path: file } }),
    ]);
    expect(text(direct[1])).toContain('same bytes either way');
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('refusals: a path outside the allowed directories fails the same way', async () => {
    const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool('read_text_file'), arguments: { path: path.join(projectB, 'notes.txt') } }));
    expect(direct.isError).toBe(true);
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('roots changes: the new roots replace the allowed directories', async () => {
    pair.agent.roots = [{ uri: pathToFileURL(projectB).href, name: 'project-b' }];
    await pair.both((side) => side.client.sendRootsListChanged());
    const [direct, via] = await pair.both(async (side) => {
      let result: unknown;
      const moved = await eventually(async () => {
        result = await side.client.callTool({ name: side.tool('list_allowed_directories'), arguments: {} });
        return text(result).includes('project-b');
      });
      expect(moved, `${side.kind}: ${text(result)}`).toBe(true);
      return [result, await side.client.callTool({ name: side.tool('read_text_file'), arguments: { path: path.join(projectB, 'notes.txt') } })];
    });
    expect(text(direct[1])).toContain('project b notes');
    expectEquivalent(direct, via, CONNECTOR);
  });
});
