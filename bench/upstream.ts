/**
 * The benchmark upstream: an MCP server over Streamable HTTP with one tool,
 * `echo` (read-only, so Bastion rates it low risk and needs no approval).
 * It does as little as an MCP server can, so what the benchmark measures is
 * the path in front of it.
 *
 *   node bench/upstream.ts [--port N]    prints `listening http://127.0.0.1:N/mcp`
 */
import { parseArgs } from 'node:util';
import { Server, ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/server';
import type { Tool } from '@modelcontextprotocol/server';
import { runAsChild, serveSessions, type Served } from './lib/serve.ts';

export const ECHO_TOOL: Tool = {
  name: 'echo',
  description: 'Returns its text unchanged.',
  inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] },
  annotations: { readOnlyHint: true },
};

function echoServer(): Server {
  const server = new Server({ name: 'bench-upstream', version: '1.0.0' }, { capabilities: { tools: {} } });
  server.setRequestHandler('tools/list', async () => ({ tools: [ECHO_TOOL] }));
  server.setRequestHandler('tools/call', async (request) => {
    if (request.params.name !== 'echo') throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
    return { content: [{ type: 'text', text: String(request.params.arguments?.text ?? '') }] };
  });
  return server;
}

/** Starts the upstream in this process. */
export function serveUpstream(port = 0): Promise<Served> {
  return serveSessions(echoServer, port);
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { port: { type: 'string', default: '0' } } });
  await runAsChild(() => serveUpstream(Number(values.port)));
}
