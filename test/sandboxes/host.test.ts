/**
 * PluginHost as a tool source: the example plugins end to end, the
 * Connector-shaped surface the registry consumes, load failures (pin
 * mismatch, broken scripts) that mark only that plugin down, and an
 * informal measure of cold-start and warm-call cost (printed, not asserted).
 */
import { appendFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SandboxError } from '../../sandboxes/errors.ts';
import { CAPABILITIES_META, PluginHost } from '../../sandboxes/host.ts';
import { pluginHash } from '../../sandboxes/pin.ts';
import { SandboxPool } from '../../sandboxes/pool.ts';
import { capturingLog, EXAMPLES_DIR, HOSTILE_DIR, pluginCopy, removePluginCopies, quietLog, sandboxCode, textOf, valueOf } from './helpers.ts';

const log = quietLog();
const TEXT_UTILS = path.join(EXAMPLES_DIR, 'text-utils');
const HTTP_GET = path.join(EXAMPLES_DIR, 'http-get');
let pool: SandboxPool;
let textUtils: PluginHost;

beforeAll(async () => {
  pool = new SandboxPool({ log, size: 2 });
  textUtils = new PluginHost({ dir: TEXT_UTILS, hash: await pluginHash(TEXT_UTILS), pool, log, tools: { json_format: { risk: 'low' } } });
  await textUtils.start();
  expect(textUtils.lastError).toBeUndefined();
});

afterAll(async () => {
  await removePluginCopies();
  await pool.stop();
});

describe('the text-utils example', () => {
  it('looks like a connector to the registry', () => {
    expect(textUtils.name).toBe('text-utils');
    expect(textUtils.status).toBe('ready');
    expect(textUtils.config).toEqual({ name: 'text-utils', namespace: true, tools: { json_format: { risk: 'low' } } });
    expect(textUtils.catalog.tools.map((t) => t.name)).toEqual(['word_count', 'slugify', 'json_format']);
    const wordCount = textUtils.catalog.tools[0]!;
    expect(wordCount.annotations).toEqual({ readOnlyHint: true, openWorldHint: false });
    expect(wordCount.inputSchema).toMatchObject({ type: 'object', required: ['text'] });
    expect(wordCount.outputSchema).toMatchObject({ type: 'object' });
    expect(textUtils.catalog).toMatchObject({ resources: [], resourceTemplates: [], prompts: [] });
    expect(textUtils.limits).toEqual({ memory_mb: 16, cpu_ms: 250, wall_ms: 2000, max_result_bytes: 262_144 });
  });

  it('returns JSON text, and structuredContent for tools with an output schema', async () => {
    const count = await textUtils.callTool('word_count', { text: 'one two\nthree' });
    expect(count.isError).toBeUndefined();
    expect(count.structuredContent).toEqual({ words: 3, characters: 13, lines: 2 });
    expect(JSON.parse(textOf(count))).toEqual(count.structuredContent);
    expect(count._meta?.[CAPABILITIES_META]).toEqual([]);
    expect(valueOf(await textUtils.callTool('slugify', { text: 'Crème Brûlée: A History!', max_length: 12 }))).toEqual({ slug: 'creme-brulee' });
    const formatted = await textUtils.callTool('json_format', { json: '{"a":[1,2]}', indent: 0 });
    expect(formatted.structuredContent).toBeUndefined();
    expect(valueOf(formatted)).toEqual({ formatted: '{"a":[1,2]}' });
  });

  it('reports a plugin error as an isError result with its code', async () => {
    const result = await textUtils.callTool('json_format', { json: '{' });
    expect(result.isError).toBe(true);
    expect(sandboxCode(result)).toBe('SANDBOX_PLUGIN_ERROR');
    expect(textOf(result)).toMatch(/not a JSON document/);
  });

  it('checks arguments against the input schema before running anything', async () => {
    for (const args of [{}, { text: 7 }, { text: 'x', extra: true }]) {
      const result = await textUtils.callTool('word_count', args);
      expect(sandboxCode(result)).toBe('SANDBOX_INVALID_ARGUMENTS');
    }
  });

  it('answers an unknown tool with SANDBOX_UNKNOWN_TOOL', async () => {
    expect(sandboxCode(await textUtils.callTool('nope', {}))).toBe('SANDBOX_UNKNOWN_TOOL');
  });

  it('serves many concurrent calls', async () => {
    const texts = Array.from({ length: 40 }, (_, i) => 'word '.repeat(i + 1).trim());
    const results = await Promise.all(texts.map((text) => textUtils.callTool('word_count', { text })));
    expect(results.map((r) => (r.structuredContent as { words: number }).words)).toEqual(texts.map((_, i) => i + 1));
  });
});

describe('the http-get example', () => {
  let server: http.Server;
  let origin: string;

  beforeAll(async () => {
    server = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('a page'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('fetches through the host, logs, and records both uses', async () => {
    // The example's manifest names public origins; a copy names the test server's.
    const copy = await pluginCopy(HTTP_GET, (m) => {
      m.capabilities.fetch.origins = [origin];
    });
    const captured = capturingLog();
    const host = new PluginHost({ dir: copy.dir, hash: copy.hash, pool, log: captured.log, grants: { fetch: { origins: [origin] }, log: true } });
    await host.start();
    expect(host.lastError).toBeUndefined();
    const result = await host.callTool('get', { url: `${origin}/page` });
    expect(result.structuredContent).toEqual({ status: 200, url: `${origin}/page`, content_type: 'text/plain', body: 'a page', truncated: false });
    expect(result._meta?.[CAPABILITIES_META]).toEqual([
      { cap: 'fetch', method: 'GET', url: `${origin}/page`, outcome: 'ok', status: 200, bytes: 6 },
      { cap: 'log', level: 'info', outcome: 'ok' },
    ]);
    expect(captured.lines).toContainEqual(expect.objectContaining({ plugin: 'http-get', msg: `GET ${origin}/page -> 200` }));
    await host.stop();
  });
});

describe('loading', () => {
  it('refuses a plugin whose script changed after pinning, naming it and both hashes; others keep working', async () => {
    const copy = await pluginCopy(TEXT_UTILS);
    await appendFile(path.join(copy.dir, 'main.js'), '\ntools.word_count = () => ({ words: -1, characters: 0, lines: 0 });\n');
    const changed = await pluginHash(copy.dir);
    const host = new PluginHost({ dir: copy.dir, hash: copy.hash, pool, log });
    await host.start();
    expect(host.status).toBe('down');
    expect(host.lastError).toContain('plugin text-utils');
    expect(host.lastError).toContain(`expected ${copy.hash}`);
    expect(host.lastError).toContain(`found ${changed}`);
    await expect(host.callTool('word_count', { text: 'a' })).rejects.toMatchObject({ code: 'SANDBOX_UNAVAILABLE' });
    expect(valueOf(await textUtils.callTool('word_count', { text: 'a' }))).toEqual({ words: 1, characters: 1, lines: 1 });
  });

  it('marks a plugin with a syntax error down', async () => {
    const copy = await pluginCopy(TEXT_UTILS);
    await writeFile(path.join(copy.dir, 'main.js'), 'tools.word_count = (args => {');
    const host = new PluginHost({ dir: copy.dir, hash: await pluginHash(copy.dir), pool, log });
    await host.start();
    expect(host.status).toBe('down');
    expect(host.lastError).toMatch(/Unexpected end of input \[plugin:\/\/\/text-utils\/main.js/);
  });

  it('marks a plugin whose script does not define every tool down', async () => {
    const copy = await pluginCopy(TEXT_UTILS);
    await writeFile(path.join(copy.dir, 'main.js'), 'tools.word_count = () => ({});');
    const host = new PluginHost({ dir: copy.dir, hash: await pluginHash(copy.dir), pool, log });
    await host.start();
    expect(host.status).toBe('down');
    expect(host.lastError).toMatch(/does not define tools\.slugify, tools\.json_format/);
  });

  it('marks a plugin whose top level loops forever down', async () => {
    const copy = await pluginCopy(TEXT_UTILS);
    await writeFile(path.join(copy.dir, 'main.js'), 'for (;;) {}');
    const host = new PluginHost({ dir: copy.dir, hash: await pluginHash(copy.dir), pool, log });
    await host.start();
    expect(host.status).toBe('down');
    expect(host.lastError).toMatch(/timed out/);
  });

  it('caps the manifest limits with the host limits', async () => {
    const host = new PluginHost({ dir: HOSTILE_DIR, hash: await pluginHash(HOSTILE_DIR), pool, log, maxLimits: { memory_mb: 8, wall_ms: 500 } });
    await host.start();
    expect(host.limits).toEqual({ memory_mb: 8, cpu_ms: 250, wall_ms: 500, max_result_bytes: 4096 });
    await host.stop();
  });

  it('a stopped plugin throws SANDBOX_UNAVAILABLE, as an unavailable connector does', async () => {
    const host = new PluginHost({ dir: TEXT_UTILS, hash: await pluginHash(TEXT_UTILS), pool, log, name: 'text-utils-2' });
    await host.start();
    expect(host.status).toBe('ready');
    await host.stop();
    expect(host.status).toBe('stopped');
    const error = await host.callTool('word_count', { text: 'a' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SandboxError);
    expect((error as SandboxError).code).toBe('SANDBOX_UNAVAILABLE');
  });
});

describe('cost (informal; printed, never asserted)', () => {
  it('measures a cold start and warm calls', async () => {
    const coldPool = new SandboxPool({ log, size: 1 });
    let t = performance.now();
    await coldPool.start();
    const poolStartMs = performance.now() - t;
    const host = new PluginHost({ dir: TEXT_UTILS, hash: await pluginHash(TEXT_UTILS), pool: coldPool, log });
    t = performance.now();
    await host.start();
    const loadMs = performance.now() - t;
    t = performance.now();
    await host.callTool('word_count', { text: 'first call' });
    const firstCallMs = performance.now() - t;
    const n = 200;
    t = performance.now();
    for (let i = 0; i < n; i++) await host.callTool('word_count', { text: 'warm call' });
    const warmMs = (performance.now() - t) / n;
    t = performance.now();
    await Promise.all(Array.from({ length: n }, () => host.callTool('word_count', { text: 'parallel call' })));
    const parallelMs = (performance.now() - t) / n;
    console.log(
      `sandbox cost: process start ${poolStartMs.toFixed(1)} ms; plugin load (pin check, compile, first isolate) ${loadMs.toFixed(1)} ms; ` +
        `first call ${firstCallMs.toFixed(2)} ms; warm call ${warmMs.toFixed(2)} ms sequential, ${parallelMs.toFixed(2)} ms/call with ${n} in flight`,
    );
    await coldPool.stop();
    expect(host.status).toBe('ready');
  });
});
