/**
 * The bare pass-through proxy: the floor for any MCP broker. The same SDK,
 * the same transports and the same shape as Bastion (Streamable HTTP front
 * door with one SDK Server per session, one shared SDK Client to the
 * upstream, requests admitted in per-turn cohorts as Bastion's front door
 * admits them), and nothing else: no token, no policy, no limits, no
 * filters, no audit. Whatever Bastion costs beyond this is the price of its
 * checks.
 *
 *   node bench/proxy.ts --upstream http://127.0.0.1:N/mcp [--port P]
 *       prints `listening http://127.0.0.1:P/mcp`
 */
import { parseArgs } from 'node:util';
import { Server } from '@modelcontextprotocol/server';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { cohortGate } from '../broker/server/cohort.ts';
import { fetchWithOwnSignal } from '../connectors/fetch.ts';
import { runAsChild, serveSessions, type Served } from './lib/serve.ts';

/** Starts the proxy in this process, connected to `upstream`. */
export async function serveProxy(upstream: string, port = 0): Promise<Served & { upstream: Client }> {
  const client = new Client({ name: 'bench-proxy', version: '1.0.0' });
  // The same fetch as Bastion's connectors (connectors/fetch.ts), so transport tuning is not counted as a check's cost.
  await client.connect(new StreamableHTTPClientTransport(new URL(upstream), { fetch: fetchWithOwnSignal }));
  const { tools } = await client.listTools();

  const served = await serveSessions(() => {
    const server = new Server({ name: 'bench-proxy', version: '1.0.0' }, { capabilities: { tools: {} } });
    server.setRequestHandler('tools/list', async () => ({ tools }));
    server.setRequestHandler('tools/call', async (request, ctx) =>
      (await client.callTool(request.params, { signal: ctx.mcpReq.signal })) as CallToolResult,
    );
    return server;
  }, port, { admit: cohortGate() });
  return {
    ...served,
    upstream: client,
    async close() {
      await served.close();
      await client.close();
    },
  };
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { upstream: { type: 'string' }, port: { type: 'string', default: '0' } } });
  if (!values.upstream) {
    process.stderr.write('usage: node bench/proxy.ts --upstream <url> [--port N]\n');
    process.exit(2);
  }
  await runAsChild(() => serveProxy(values.upstream!, Number(values.port)));
}
