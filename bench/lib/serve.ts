/**
 * Serves MCP servers over Streamable HTTP on one endpoint in both protocol
 * eras, as Bastion's front door does: 2025-11-25 with one SDK Server and
 * transport per session (the SDK's examples' way), 2026-07-28 through the
 * SDK's per-request entry (`createMcpHandler`, a fresh Server per request).
 * Requests are told apart with the SDK's own classifier, as Bastion's
 * broker/server/eras.ts does. Shared by the benchmark upstream and the bare
 * proxy so both use exactly the same front-door machinery.
 *
 * @example
 *   const { url } = await serveSessions(() => makeServer(), 0);
 */
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Request, Response } from 'express';
import { NodeStreamableHTTPServerTransport, toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpExpressApp } from '@modelcontextprotocol/express';
import { classifyInboundRequest, createMcpHandler, isInitializeRequest } from '@modelcontextprotocol/server';
import type { Server } from '@modelcontextprotocol/server';

export interface Served {
  url: string;
  close(): Promise<void>;
}

function jsonRpcError(res: Response, status: number, code: number, message: string): void {
  if (!res.headersSent) res.status(status).json({ jsonrpc: '2.0', error: { code, message }, id: null });
}

export interface ServeOptions {
  /** Awaited before each request is handled (the proxy passes Bastion's per-turn admission, broker/server/cohort.ts). */
  admit?: () => Promise<void>;
}

/** Whether a request speaks 2026-07-28 (a `_meta` envelope claim), by the SDK's classifier. Everything else goes the 2025 way. */
function isModern(req: Request): boolean {
  if (req.method !== 'POST') return false;
  const header = (name: string) => {
    const value = req.headers[name];
    return Array.isArray(value) ? value.join(', ') : value;
  };
  const outcome = classifyInboundRequest({
    httpMethod: req.method,
    protocolVersionHeader: header('mcp-protocol-version'),
    mcpMethodHeader: header('mcp-method'),
    mcpNameHeader: header('mcp-name'),
    body: req.body,
  });
  // A rejection other than a non-JSON-RPC body is the modern path's to answer (as createMcpHandler routes it).
  return outcome.kind === 'reject' ? outcome.rung !== 'jsonrpc-shape' : outcome.kind !== 'legacy';
}

export async function serveSessions(makeServer: () => Server, port: number, options: ServeOptions = {}): Promise<Served> {
  const app = createMcpExpressApp({ host: '127.0.0.1' });
  const sessions = new Map<string, NodeStreamableHTTPServerTransport>();
  const { admit } = options;
  const modern = toNodeHandler(createMcpHandler(() => makeServer(), { legacy: 'reject' }));

  app.all('/mcp', async (req: Request, res: Response) => {
    if (admit) await admit();
    if (isModern(req)) {
      await modern(req as Parameters<typeof modern>[0], res, req.body);
      return;
    }
    const id = req.headers['mcp-session-id'];
    if (typeof id === 'string') {
      const transport = sessions.get(id);
      if (!transport) return jsonRpcError(res, 404, -32001, 'Session not found');
      await transport.handleRequest(req, res, req.body);
      return;
    }
    if (req.method !== 'POST' || !isInitializeRequest(req.body)) return jsonRpcError(res, 400, -32000, 'Bad Request: no session');
    const server = makeServer();
    const transport: NodeStreamableHTTPServerTransport = new NodeStreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (sessionId) => void sessions.set(sessionId, transport),
    });
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
      void server.close().catch(() => undefined);
    };
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  });

  const http = await new Promise<ReturnType<typeof app.listen>>((resolve, reject) => {
    const listening = app.listen(port, '127.0.0.1', (error?: Error) => (error ? reject(error) : resolve(listening)));
  });
  return {
    url: `http://127.0.0.1:${(http.address() as AddressInfo).port}/mcp`,
    async close() {
      for (const transport of sessions.values()) await transport.close().catch(() => undefined);
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    },
  };
}

/** Runs `serve` as a command-line child: prints `listening <url>` and exits cleanly on SIGTERM/SIGINT. */
export async function runAsChild(serve: () => Promise<Served>): Promise<void> {
  const served = await serve();
  process.stdout.write(`listening ${served.url}\n`);
  const stop = () => void served.close().finally(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
