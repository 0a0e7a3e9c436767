/**
 * Connectors negotiate the MCP revision with each upstream when their config
 * says `protocol: auto`: 2026-07-28 with one that offers it (the SDK's
 * server/discover probe), 2025-11-25 with one that does not. Without the
 * setting an HTTP connector negotiates (the probe is one request) and a stdio
 * connector speaks 2025-11-25 (its probe would start a second process). The
 * outcome is per connector, shown by /readyz and in each call's audit record.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createMcpHandler, McpServer } from '@modelcontextprotocol/server';
import { toNodeHandler } from '@modelcontextprotocol/node';
import { z } from 'zod';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { ROOT, RECORDING_UPSTREAM, startTestBroker, type TestBroker } from '../helpers/broker.ts';

const MODERN_UPSTREAM = path.join(ROOT, 'test/fixtures/modern-upstream.ts');

let t: TestBroker;

let growDir: string;
let web: HttpServer;

/** A Streamable HTTP upstream serving both revisions (the SDK's per-request entry, 2025 stateless beside it). */
async function bothErasOverHttp(): Promise<string> {
  const handler = createMcpHandler(() => {
    const server = new McpServer({ name: 'web-upstream', version: '1.0.0' });
    server.registerTool('echo', { description: 'Echoes its text and the revision it was asked in.', inputSchema: z.object({ text: z.string() }) }, async (args) => ({
      content: [{ type: 'text', text: `echo: ${args.text} (${server.server.getNegotiatedProtocolVersion() ?? 'unknown'})` }],
    }));
    return server;
  });
  web = createServer(toNodeHandler(handler));
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(web.address() as AddressInfo).port}/mcp`;
}

beforeAll(async () => {
  growDir = await mkdtemp(path.join(tmpdir(), 'bastion-grow-'));
  const url = await bothErasOverHttp();
  t = await startTestBroker({
    connectors: [
      // A 2025-only upstream: the probe falls back.
      { name: 'rec', transport: 'stdio', command: process.execPath, args: [RECORDING_UPSTREAM], timeout: '20s', protocol: 'auto' },
      // Growing is the server's: the agent's own upstream process and the catalog's both follow GROW_FILE.
      { name: 'modern', transport: 'stdio', command: process.execPath, args: [MODERN_UPSTREAM], timeout: '20s', protocol: 'auto', env: { GROW_FILE: path.join(growDir, 'grown') } },
      // The same both-eras upstream without the setting: over stdio, 2025-11-25, no probe.
      { name: 'pinned', transport: 'stdio', command: process.execPath, args: [MODERN_UPSTREAM], timeout: '20s' },
      // A both-eras upstream over HTTP without the setting: negotiated.
      { name: 'web', transport: 'http', url, timeout: '20s' },
    ],
  });
});

afterAll(async () => {
  await t.close();
  await rm(growDir, { recursive: true, force: true });
  web?.closeAllConnections();
  await new Promise((resolve) => web?.close(resolve));
});

describe('connectors negotiate the revision per upstream', () => {
  it('auto: 2026-07-28 with an upstream that offers it, 2025-11-25 with one that does not; the default negotiates over HTTP and speaks 2025-11-25 over stdio; /readyz shows each', async () => {
    expect((t.broker.config.connectors ?? []).map((c) => [c.name, c.protocol])).toEqual([
      ['rec', 'auto'],
      ['modern', 'auto'],
      ['pinned', '2025-11-25'],
      ['web', 'auto'],
    ]);
    const byName = Object.fromEntries(t.broker.connectors.map((c) => [c.name, c.protocol]));
    expect(byName).toEqual({ rec: '2025-11-25', modern: '2026-07-28', pinned: '2025-11-25', web: '2026-07-28' });
    const ready = (await (await fetch(new URL('/readyz', t.url))).json()) as { connectors: Record<string, string>; protocols: Record<string, string> };
    expect(ready.connectors).toEqual({ rec: 'ready', modern: 'ready', pinned: 'ready', web: 'ready' });
    expect(ready.protocols).toEqual({ rec: '2025-11-25', modern: '2026-07-28', pinned: '2025-11-25', web: '2026-07-28' });
  });

  it('a call through each connector reaches its upstream in that revision, and the audit record names it', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:negotiation', cap: [{ tool: 'modern__echo' }, { tool: 'pinned__echo' }, { tool: 'web__echo' }] }));
    const mark = await t.auditMark();
    const modern = (await client.callTool({ name: 'modern__echo', arguments: { text: 'a' } })) as CallToolResult;
    const pinned = (await client.callTool({ name: 'pinned__echo', arguments: { text: 'b' } })) as CallToolResult;
    const web = (await client.callTool({ name: 'web__echo', arguments: { text: 'c' } })) as CallToolResult;
    expect(modern.content).toEqual([{ type: 'text', text: 'echo: a (2026-07-28)' }]);
    expect(pinned.content).toEqual([{ type: 'text', text: 'echo: b (2025-11-25)' }]);
    expect(web.content).toEqual([{ type: 'text', text: 'echo: c (2026-07-28)' }]);
    const records = await t.auditSince(mark, 'tools/call');
    expect(records.map((r) => r.detail?.connector)).toEqual([
      { name: 'modern', protocol: '2026-07-28' },
      { name: 'pinned', protocol: '2025-11-25' },
      { name: 'web', protocol: '2026-07-28' },
    ]);
  });

  it("a 2026-07-28 upstream's list change arrives on the connector's listen stream and reaches agents", async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:grower', cap: [{ tool: 'modern__*' }] }));
    expect((await client.listTools()).tools.map((tool) => tool.name)).not.toContain('modern__grown_1');
    await client.callTool({ name: 'modern__grow', arguments: {} });
    await vi.waitFor(async () => expect((await client.listTools()).tools.map((tool) => tool.name)).toContain('modern__grown_1'), { timeout: 30_000, interval: 200 });
  });
});
