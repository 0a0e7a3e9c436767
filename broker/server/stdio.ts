/**
 * The stdio front door (`bastion stdio`): an MCP client spawns Bastion and
 * speaks JSON-RPC over stdin/stdout. The agent's capability token comes from
 * the BASTION_TOKEN environment variable and is re-verified on every request,
 * so an expired or revoked token stops the session's next call.
 *
 * @example
 *   BASTION_TOKEN=$(bastion token mint --sub agent:x --cap 'demo__*') bastion stdio
 */
import { randomUUID } from 'node:crypto';
import { StdioServerTransport } from '@modelcontextprotocol/server/stdio';
import type { Broker } from '../broker.ts';
import { createAgentServer } from './session.ts';

export async function serveStdio(broker: Broker, token: string | undefined, resource: string): Promise<void> {
  const authenticator = broker.authenticatorFor(resource);
  const server = createAgentServer(broker, {
    id: randomUUID(),
    transport: 'stdio',
    principal: async () =>
      token === undefined && broker.anonymous ? broker.anonymous : authenticator.authenticate({ token, transport: 'stdio' }),
  });
  const closed = new Promise<void>((resolve) => {
    // After the agent server's own cleanup (it leaves broker.sessions), not instead of it.
    const leave = server.onclose;
    server.onclose = () => {
      leave?.();
      resolve();
    };
  });
  await server.connect(new StdioServerTransport());
  // MCP stdio shutdown begins with the client closing our stdin. The SDK's StdioServerTransport does
  // not listen for 'end', so the process lingered (kept alive by its upstream connectors) until the
  // client gave up and sent SIGTERM, skipping broker.stop(). End the session when stdin ends.
  process.stdin.once('end', () => void server.close());
  // SIGTERM and SIGINT end the session the same way, so the caller's shutdown (broker.stop) stops the
  // upstream processes; by default they would kill Bastion and leave its upstreams running (parent 1).
  // The listeners stay: a second signal during the shutdown must not cut it short either.
  const end = () => void server.close();
  process.on('SIGTERM', end);
  process.on('SIGINT', end);
  await closed;
}
