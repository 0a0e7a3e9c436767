/**
 * A load balancer without session affinity, as a deployment puts in front of
 * replicas: every HTTP request goes to the next target in turn (or where
 * `route` sends it), bodies and event streams passed through untouched. It
 * records which target served each request, so a test can show that no
 * request needed the replica an earlier one landed on.
 */
import { createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Routed {
  target: number;
  method?: string;
  /** The JSON-RPC body carried a requestState (a 2026-07-28 retry). */
  retry: boolean;
  tool?: string;
}

export interface RoundRobin {
  /** The balancer's MCP endpoint. */
  url: string;
  /** Every request so far, in arrival order. */
  routed: Routed[];
  /** Overrides the turn for a request: return a target index, or undefined to take the next in turn. */
  route: ((request: Omit<Routed, 'target'>) => number | undefined) | undefined;
  close(): Promise<void>;
}

export async function startRoundRobin(targets: string[]): Promise<RoundRobin> {
  let turn = 0;
  const balancer: RoundRobin = { url: '', routed: [], route: undefined, close: async () => undefined };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      let parsed: { method?: string; params?: { name?: string; requestState?: unknown } } = {};
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch {
        // not JSON: routed in turn like anything else
      }
      const about = { ...(parsed.method ? { method: parsed.method } : {}), retry: parsed.params?.requestState !== undefined, ...(parsed.params?.name ? { tool: parsed.params.name } : {}) };
      const target = balancer.route?.(about) ?? turn++ % targets.length;
      balancer.routed.push({ target, ...about });
      const upstream = new URL(req.url ?? '/', targets[target]);
      const headers: IncomingHttpHeaders = { ...req.headers, host: upstream.host };
      const forward = httpRequest(upstream, { method: req.method, headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      forward.on('error', () => {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      });
      res.on('close', () => forward.destroy());
      forward.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  balancer.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`;
  balancer.close = async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return balancer;
}
