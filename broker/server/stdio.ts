/**
 * The stdio front door (`bastion stdio`): an MCP client spawns Bastion and
 * speaks JSON-RPC over stdin/stdout. The agent's capability token comes from
 * the BASTION_TOKEN environment variable and is re-verified on every request,
 * so an expired or revoked token stops the session's next call.
 *
 * Both protocol eras: the SDK's `serveStdio` lets the opening exchange pick
 * the connection's era (an `initialize` for 2025-11-25, a `server/discover`
 * or any request with a `_meta` envelope for 2026-07-28) and pins one agent
 * server to the connection; a 2026 client's probe may build and discard one
 * more.
 *
 * @example
 *   BASTION_TOKEN=$(bastion token mint --sub agent:x --cap 'demo__*') bastion stdio
 */
import { randomUUID } from 'node:crypto';
import { serveStdio as serveStdioEntry, StdioServerTransport } from '@modelcontextprotocol/server/stdio';
import type { Principal } from '../auth/verify.ts';
import type { Broker } from '../broker.ts';
import { createAgentServer } from './session.ts';

export async function serveStdio(broker: Broker, token: string | undefined, resource: string): Promise<void> {
  const authenticator = broker.authenticatorFor(resource);
  const principal = async (): Promise<Principal> =>
    token === undefined && broker.anonymous ? broker.anonymous : authenticator.authenticate({ token, transport: 'stdio' });
  const wire = new StdioServerTransport();
  const handle = serveStdioEntry(
    async ({ era }) => {
      // A 2026 connection's discovery shows what the token may see; a token that does not hold shows nothing.
      const viewer = era === 'modern' ? await principal().catch(() => null) : undefined;
      return createAgentServer(broker, { id: randomUUID(), transport: 'stdio', ...(viewer !== undefined ? { viewer } : {}), principal });
    },
    { transport: wire, onerror: (error) => broker.log.debug({ err: error.message }, 'stdio: message not served') },
  );
  const closed = new Promise<void>((resolve) => {
    // After the entry's own cleanup (it closes the pinned agent server), not instead of it.
    const leave = wire.onclose;
    wire.onclose = () => {
      leave?.();
      resolve();
    };
  });
  // MCP stdio shutdown begins with the client closing our stdin. The SDK's StdioServerTransport does
  // not listen for 'end', so the process lingered (kept alive by its upstream connectors) until the
  // client gave up and sent SIGTERM, skipping broker.stop(). End the connection when stdin ends.
  process.stdin.once('end', () => void handle.close());
  // SIGTERM and SIGINT end the connection the same way, so the caller's shutdown (broker.stop) stops the
  // upstream processes; by default they would kill Bastion and leave its upstreams running (parent 1).
  // The listeners stay: a second signal during the shutdown must not cut it short either.
  const end = () => void handle.close();
  process.on('SIGTERM', end);
  process.on('SIGINT', end);
  await closed;
}
