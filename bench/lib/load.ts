/**
 * The load generator: N agents, each an SDK Client over Streamable HTTP
 * (with its own session in 2025-11-25; pinned to 2026-07-28, where every
 * request stands alone, for a target of that era), each calling one tool in
 * a closed loop (the next call starts when the previous one answered), as
 * an agent does.
 *
 * @example
 *   const agents = await connectAgents(target, 16);
 *   const run = await drive(agents, target.tool, { durationMs: 30_000 });
 *   await disconnect(agents);
 */
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';

/** The protocol revisions a target is measured in. */
export type Era = '2025-11-25' | '2026-07-28';

export interface Target {
  /** direct | proxy | bastion (2025-11-25); the same with `, 2026-07-28` */
  name: string;
  /** The revision its agents speak (default 2025-11-25: initialize and a session). */
  protocol?: Era;
  url: string;
  tool: string;
  /** A bearer token for agent `i`; absent for targets that take none. */
  token?: (agent: number) => Promise<string>;
}

export interface Agent {
  client: Client;
  transport: StreamableHTTPClientTransport;
}

export interface Run {
  agents: number;
  seconds: number;
  calls: number;
  /** Calls that failed or came back with isError (any is a bug in the setup). */
  errors: number;
  firstError?: string;
  /** Per-call latency in milliseconds, in completion order. */
  latencies: number[];
}

/** The arguments every benchmark call sends: small, like most tool calls. */
export const ECHO_ARGUMENTS = { text: 'benchmark call: the quick brown fox jumps over the lazy dog' };

export async function connectAgents(target: Target, n: number): Promise<Agent[]> {
  const agents: Agent[] = [];
  // A few at a time: 64 simultaneous initializes would measure connection setup, not calls.
  for (let i = 0; i < n; i++) {
    const headers: Record<string, string> = target.token ? { Authorization: `Bearer ${await target.token(i)}` } : {};
    const transport = new StreamableHTTPClientTransport(new URL(target.url), { requestInit: { headers } });
    const modern = target.protocol === '2026-07-28';
    const client = new Client({ name: `bench-agent-${i}`, version: '1.0.0' }, modern ? { versionNegotiation: { mode: { pin: '2026-07-28' } } } : {});
    await client.connect(transport);
    agents.push({ client, transport });
  }
  return agents;
}

/** Ends every agent's session (DELETE; a 2026-07-28 agent has none), so the server under test does not carry them into the next run. */
export async function disconnect(agents: Agent[]): Promise<void> {
  await Promise.all(
    agents.map(async ({ client, transport }) => {
      await transport.terminateSession().catch(() => undefined);
      await client.close().catch(() => undefined);
    }),
  );
}

/**
 * Runs every agent in a closed loop until the time is up or `calls` calls
 * have been made in total. With `pauseMs`, each agent waits that long before
 * each call (not counted in its latency), as an agent thinking between calls.
 */
export async function drive(
  agents: Agent[],
  tool: string,
  until: { durationMs: number } | { calls: number },
  options: { pauseMs?: number; arguments?: Record<string, unknown> } = {},
): Promise<Run> {
  const { pauseMs = 0, arguments: args = ECHO_ARGUMENTS } = options;
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let remaining = 'calls' in until ? until.calls : Number.POSITIVE_INFINITY;
  const deadline = 'durationMs' in until ? performance.now() + until.durationMs : Number.POSITIVE_INFINITY;
  const started = performance.now();

  const loop = async ({ client }: Agent) => {
    while (remaining > 0 && performance.now() < deadline) {
      remaining--;
      if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
      const t0 = performance.now();
      try {
        const result = (await client.callTool({ name: tool, arguments: args })) as CallToolResult;
        latencies.push(performance.now() - t0);
        if (result.isError) {
          errors++;
          firstError ??= JSON.stringify(result.content).slice(0, 300);
        }
      } catch (error) {
        errors++;
        firstError ??= (error as Error).message;
      }
    }
  };
  await Promise.all(agents.map(loop));
  const seconds = (performance.now() - started) / 1000;
  return { agents: agents.length, seconds, calls: latencies.length, errors, ...(firstError ? { firstError } : {}), latencies };
}
