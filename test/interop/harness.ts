/**
 * The interoperability harness: real reference servers from npm as Bastion
 * upstreams, and one agent (the official v2 TypeScript client, always with
 * the same options and handlers) that connects either straight to a server
 * or through Bastion, so a test asks both the same thing and compares.
 *
 * `expectEquivalent` is the one comparison. It removes only what Bastion
 * documents as different (README, "Interoperability"): the `connector__`
 * namespace on tool and prompt names in lists; and it masks times of day,
 * which some servers put in results (their clock moves between the two
 * calls). Everything else must be equal.
 *
 * @example
 *   const pair = await openPair(agent, upstream, broker, 'everything');
 *   const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool('echo'), arguments: { message: 'hi' } }));
 *   expectEquivalent(direct, via, 'everything');
 */
import path from 'node:path';
import { Client, StreamableHTTPClientTransport, type ClientCapabilities, type Transport } from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { expect } from 'vitest';
import { ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { freePort, spawnCollecting } from '../helpers/spawn.ts';

const SERVERS = path.join(ROOT, 'node_modules/@modelcontextprotocol');
export const EVERYTHING_BIN = path.join(SERVERS, 'server-everything/dist/index.js');
export const FILESYSTEM_BIN = path.join(SERVERS, 'server-filesystem/dist/index.js');
export const MEMORY_BIN = path.join(SERVERS, 'server-memory/dist/index.js');
const SEPARATOR = '__';

/** How to reach one upstream: a process to spawn on stdio, or a Streamable HTTP URL. */
export type Upstream =
  | { transport: 'stdio'; command: string; args: string[]; env: Record<string, string> }
  | { transport: 'http'; url: string };

export function stdioUpstream(bin: string, args: string[] = [], env: Record<string, string> = {}): Upstream {
  return { transport: 'stdio', command: process.execPath, args: [bin, ...args], env };
}

/** Bastion's connector config for an upstream. */
export function connectorConfig(name: string, upstream: Upstream, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return upstream.transport === 'stdio'
    ? { name, transport: 'stdio', command: upstream.command, args: upstream.args, env: upstream.env, timeout: '60s', ...extra }
    : { name, transport: 'http', url: upstream.url, timeout: '60s', ...extra };
}

/** server-everything over `transport`: a stdio command, or a started HTTP server (close() stops it; a no-op for stdio). */
export async function everythingOver(transport: 'stdio' | 'http'): Promise<{ upstream: Upstream; close(): Promise<void> }> {
  if (transport === 'http') return startEverythingHttp();
  return { upstream: stdioUpstream(EVERYTHING_BIN), close: async () => undefined };
}

/** server-everything in its Streamable HTTP mode (`index.js streamableHttp`, port from PORT). */
export async function startEverythingHttp(): Promise<{ upstream: Upstream; close(): Promise<void> }> {
  const port = await freePort();
  const spawned = spawnCollecting(process.execPath, [EVERYTHING_BIN, 'streamableHttp'], { env: { ...process.env, PORT: String(port) } });
  if (!(await spawned.waitFor((_out, err) => err.includes('listening on port'), 30_000))) {
    spawned.child.kill();
    throw new Error(`server-everything (streamableHttp) did not start: ${spawned.stderr()}`);
  }
  return {
    upstream: { transport: 'http', url: `http://127.0.0.1:${port}/mcp` },
    async close() {
      spawned.child.kill('SIGTERM');
      await spawned.exited;
    },
  };
}

/** The agent's protocol era: the 2025 session handshake, or pinned to the stateless 2026-07-28 revision. */
export type Era = 'legacy' | '2026-07-28';

/** What a client was sent besides responses. */
export interface Observed {
  logs: { level: string; logger?: string; data: unknown }[];
  updated: string[];
  sampling: unknown[];
  elicitations: unknown[];
  rootsRequests: number;
}

/** One way to the server: its client, what it observed, and how it names a tool or prompt. */
export interface Side {
  kind: 'direct' | 'bastion';
  client: Client;
  observed: Observed;
  /** The name an upstream tool or prompt has on this side (namespaced through Bastion). */
  tool(name: string): string;
}

/**
 * The agent: one set of client options and handlers for every connection.
 * By default it declares everything Bastion relays (sampling, elicitation in
 * form and URL mode, roots with list changes); capabilities.test.ts gives it
 * less, to see a server that registers tools by client capability offer the
 * same set both ways. Its handlers answer deterministically from the request,
 * so answers can be compared.
 */
export class Agent {
  roots: { uri: string; name?: string }[] = [];
  private readonly clients: Client[] = [];
  /** What the agent declares; the handlers of what it does not declare are not installed. */
  readonly capabilities: ClientCapabilities;

  constructor(capabilities: ClientCapabilities = { sampling: {}, elicitation: { form: {}, url: {} }, roots: { listChanged: true } }) {
    this.capabilities = capabilities;
  }

  async open(kind: Side['kind'], transport: Transport, prefix: string, era: Era = 'legacy'): Promise<Side> {
    const client = new Client(
      { name: 'interop-agent', version: '1.0.0' },
      {
        capabilities: structuredClone(this.capabilities),
        ...(era === 'legacy' ? {} : { versionNegotiation: { mode: { pin: era } } }),
      },
    );
    const observed: Observed = { logs: [], updated: [], sampling: [], elicitations: [], rootsRequests: 0 };
    const declared = this.capabilities;
    if (declared.sampling) client.setRequestHandler('sampling/createMessage', async (request) => {
      observed.sampling.push(request.params);
      const first = request.params.messages[0]?.content;
      const text = first && !Array.isArray(first) && first.type === 'text' ? first.text : '';
      return { model: 'interop-model', role: 'assistant', stopReason: 'endTurn', content: { type: 'text', text: `sampled: ${text}` } };
    });
    if (declared.elicitation) client.setRequestHandler('elicitation/create', async (request) => {
      observed.elicitations.push(request.params);
      if (request.params.mode === 'url') return { action: 'accept' };
      return { action: 'accept', content: { name: 'Ada Lovelace', check: true, firstLine: 'It was a dark night', integer: 7, number: 3.5, email: 'ada@example.com' } };
    });
    if (declared.roots) client.setRequestHandler('roots/list', async () => {
      observed.rootsRequests++;
      return { roots: this.roots };
    });
    client.setNotificationHandler('notifications/message', (notification) => {
      observed.logs.push(notification.params as Observed['logs'][number]);
    });
    client.setNotificationHandler('notifications/resources/updated', (notification) => {
      observed.updated.push(notification.params.uri);
    });
    await client.connect(transport);
    this.clients.push(client);
    return { kind, client, observed, tool: (name) => `${prefix}${name}` };
  }

  /** Straight to the server: its own stdio process, or its own HTTP session. */
  direct(upstream: Upstream): Promise<Side> {
    const transport =
      upstream.transport === 'stdio'
        ? new StdioClientTransport({ command: upstream.command, args: upstream.args, env: { ...(process.env as Record<string, string>), ...upstream.env }, stderr: 'pipe' })
        : new StreamableHTTPClientTransport(new URL(upstream.url));
    return this.open('direct', transport, '');
  }

  /** Through Bastion's front door with a capability token, in the given protocol era. */
  through(url: string, token: string, connector: string, era: Era = 'legacy'): Promise<Side> {
    const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } });
    return this.open('bastion', transport, `${connector}${SEPARATOR}`, era);
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close().catch(() => undefined)));
  }
}

/** The same agent connected straight to one upstream and through Bastion to it. */
export interface Pair {
  agent: Agent;
  broker: TestBroker;
  direct: Side;
  bastion: Side;
  /** Runs the same steps on each side (direct first), returning [direct, through Bastion]. */
  both<T>(steps: (side: Side) => Promise<T>): Promise<[T, T]>;
  close(): Promise<void>;
}

/**
 * Starts a broker with the upstream as its only connector (`connector`) and
 * a token allowing everything, and connects the agent both ways. `connect`
 * lets a test shape the direct side's upstream (its own stdio process) apart
 * from Bastion's, e.g. a separate data file.
 */
export async function openPair(
  connector: string,
  upstream: Upstream,
  options: { directUpstream?: Upstream; connectorExtra?: Record<string, unknown>; agent?: Agent; era?: Era } = {},
): Promise<Pair> {
  const agent = options.agent ?? new Agent();
  const broker = await startTestBroker({ connectors: [connectorConfig(connector, upstream, options.connectorExtra)] });
  try {
    const direct = await agent.direct(options.directUpstream ?? upstream);
    const bastion = await agent.through(broker.url, await broker.mint({ sub: 'agent:interop', cap: [{ tool: '*' }] }), connector, options.era);
    return {
      agent,
      broker,
      direct,
      bastion,
      async both(steps) {
        const first = await steps(direct);
        return [first, await steps(bastion)];
      },
      async close() {
        await agent.close();
        await broker.close();
      },
    };
  } catch (error) {
    await agent.close();
    await broker.close();
    throw error;
  }
}

/**
 * Removes what Bastion deliberately changes: the `connector__` prefix on the
 * names in `tools` and `prompts` lists. A name without the prefix is left as
 * is, so one Bastion failed to namespace still shows up as a difference.
 */
export function normalise<T>(value: T, connector: string): T {
  const prefix = `${connector}${SEPARATOR}`;
  const unprefix = (item: unknown) => {
    if (item === null || typeof item !== 'object' || !('name' in item) || typeof item.name !== 'string') return item;
    return item.name.startsWith(prefix) ? { ...item, name: item.name.slice(prefix.length) } : item;
  };
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  const out: Record<string, unknown> = { ...(value as Record<string, unknown>) };
  for (const key of ['tools', 'prompts']) if (Array.isArray(out[key])) out[key] = (out[key] as unknown[]).map(unprefix);
  return out as T;
}

/** The one comparison: through Bastion, less its documented differences (and the server's clock), equals direct. */
export function expectEquivalent<T>(direct: T, bastion: T, connector: string): void {
  expect(withoutClock(normalise(bastion, connector))).toEqual(withoutClock(direct));
}

/**
 * Replaces times of day ("1:13:59 PM") in every string: some results carry
 * the server's clock (server-everything's dynamic resources), which moves
 * between the direct call and the one through Bastion. Not a Bastion difference.
 */
export function withoutClock<T>(value: T): T {
  const mask = (text: string) => text.replace(/\b\d{1,2}:\d{2}:\d{2}\s?[AP]M\b/g, '<time>');
  return JSON.parse(JSON.stringify(value), (key, v: unknown) => {
    if (typeof v !== 'string') return v;
    // A blob is base64: its text (server-everything's dynamic blobs are text) is masked inside.
    if (key === 'blob') return Buffer.from(mask(Buffer.from(v, 'base64').toString('latin1')), 'latin1').toString('base64');
    return mask(v);
  }) as T;
}

/** Sorts a list by a key, for lists whose order neither side promises. */
export function byKey<T>(items: T[], key: (item: T) => string): T[] {
  return [...items].sort((a, b) => key(a).localeCompare(key(b)));
}

/** Polls until `check` holds; false when `timeoutMs` passes first. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return true;
}
