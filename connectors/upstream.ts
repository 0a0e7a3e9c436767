/**
 * A connector: one upstream MCP server (stdio or Streamable HTTP) reached
 * through the SDK's Client, with its catalog (tools, resources, prompts)
 * cached and kept fresh by list_changed notifications.
 *
 * A connector that fails marks only itself down and reconnects with
 * exponential backoff; the broker and the other connectors keep serving.
 * Upstream credentials come from config (env for stdio, headers for HTTP);
 * nothing the agent sent is ever forwarded as a credential.
 *
 * Server-to-client requests (sampling, elicitation, roots) and logging are
 * relayed to the agent whose call is in flight on this connector. When calls
 * from several agents are in flight at once, such a request cannot be
 * attributed with certainty and is refused rather than sent to the wrong agent.
 *
 * @example
 *   const demo = new Connector(config, { log, onListChanged });
 *   await demo.start();
 *   const result = await demo.callTool('read_file', { path: '/srv/a' }, call);
 */
import { getDefaultEnvironment, StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { Client, StreamableHTTPClientTransport, ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/client';
import type { Transport, CallToolResult, Notification, Prompt, Request, Resource, ResourceTemplateType, Result, ServerCapabilities, Tool } from '@modelcontextprotocol/client';
import { fetchWithOwnSignal } from './fetch.ts';
import { stopProcessTree } from './process-tree.ts';
import type { ConnectorConfig } from '../broker/config.ts';
import type { Logger } from '../broker/log.ts';
import { linearSchemaValidator, toolSchemaProblems } from '../sandboxes/schema-patterns.ts';

export type ConnectorStatus = 'starting' | 'ready' | 'down' | 'stopped';

/** The agent side of one in-flight call: where relayed traffic must go. */
export interface CallOrigin {
  sessionId: string;
  sendRequest: (request: Request) => Promise<Result>;
  sendNotification: (notification: Notification) => Promise<void>;
}

export interface CallOptions {
  origin: CallOrigin;
  signal?: AbortSignal;
  onprogress?: (progress: { progress: number; total?: number; message?: string }) => void;
}

export interface ConnectorEvents {
  log: Logger;
  /** A catalog changed (after the connector refreshed it). */
  onListChanged?: (connector: Connector, kind: 'tools' | 'resources' | 'prompts') => void | Promise<void>;
  /** An upstream resource changed; the front door forwards it to subscribers. */
  onResourceUpdated?: (connector: Connector, uri: string) => void;
  onStatus?: (connector: Connector, status: ConnectorStatus) => void;
}

export interface Catalog {
  tools: Tool[];
  resources: Resource[];
  resourceTemplates: ResourceTemplateType[];
  prompts: Prompt[];
}

const EMPTY_CATALOG: Catalog = { tools: [], resources: [], resourceTemplates: [], prompts: [] };
/** Within an MCP client's 2 s grace for `bastion stdio`, with the rest of the broker's shutdown. */
const STOP_SCHEDULE = { termAfterMs: 400, killAfterMs: 900 };
const BACKOFF_MIN_MS = 250;
/** How long after forwarding a roots change an upstream's roots/list is still attributed to the agent that changed them. */
const ROOTS_CHANGE_WINDOW_MS = 2_000;

/** The SDK's version negotiation for each `protocol` setting (config.ts). */
const NEGOTIATION = {
  auto: { mode: 'auto' },
  '2025-11-25': { mode: 'legacy' },
  '2026-07-28': { mode: { pin: '2026-07-28' } },
} as const;
const BACKOFF_MAX_MS = 30_000;

/** Pages through a list method until the upstream stops returning a cursor. */
async function listAll<T>(page: (cursor?: string) => Promise<{ items: T[]; nextCursor?: string | undefined }>): Promise<T[]> {
  const items: T[] = [];
  let cursor: string | undefined;
  for (let pages = 0; pages < 100; pages++) {
    const result = await page(cursor);
    items.push(...result.items);
    if (!result.nextCursor) break;
    cursor = result.nextCursor;
  }
  return items;
}

export class Connector {
  readonly config: ConnectorConfig;
  private readonly events: ConnectorEvents;
  private client: Client | undefined;
  private statusValue: ConnectorStatus = 'starting';
  private catalogValue: Catalog = EMPTY_CATALOG;
  private capabilities: ServerCapabilities = {};
  /** Whether the upstream ever completed a handshake: until then its capabilities are unknown, not absent. */
  private handshakeDone = false;
  private instructionsValue: string | undefined;
  private protocolValue: string | undefined;
  private readonly inflight = new Map<number, CallOrigin>();
  /** Progress listeners by the token Bastion sent upstream. */
  private readonly progress = new Map<string, NonNullable<CallOptions['onprogress']>>();
  /** Forwarded roots changes waiting for the upstream to ask for the new roots. */
  private readonly rootsWaiters = new Set<() => void>();
  private nextCallId = 1;
  private backoffMs = BACKOFF_MIN_MS;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private startPromise: Promise<void> | undefined;
  /** Settles when the latest announced tools change has been re-listed (and re-pinned). */
  private toolsSettled: Promise<void> = Promise.resolve();
  lastError: string | undefined;

  constructor(config: ConnectorConfig, events: ConnectorEvents) {
    this.config = config;
    this.events = events;
  }

  get name(): string {
    return this.config.name;
  }

  get status(): ConnectorStatus {
    return this.statusValue;
  }

  get catalog(): Catalog {
    return this.catalogValue;
  }

  /** Waits for an announced catalog change to be processed, so a call never runs against a stale descriptor. */
  catalogSettled(): Promise<void> {
    return this.toolsSettled;
  }

  get serverCapabilities(): ServerCapabilities {
    return this.capabilities;
  }

  /** What the upstream said in its last handshake; undefined before the first. */
  get knownCapabilities(): ServerCapabilities | undefined {
    return this.handshakeDone ? this.capabilities : undefined;
  }

  /** The upstream's `instructions` from its last handshake, as it sent them (unchecked). */
  get instructions(): string | undefined {
    return this.instructionsValue;
  }

  /** The MCP revision negotiated with the upstream on the current connection (none before the first). */
  get protocol(): string | undefined {
    return this.protocolValue;
  }

  /** Connects once; resolves when connected or failed (a failure schedules a retry). */
  start(): Promise<void> {
    this.startPromise ??= this.connect();
    return this.startPromise;
  }

  async stop(): Promise<void> {
    this.setStatus('stopped');
    clearTimeout(this.reconnectTimer);
    const client = this.client;
    this.client = undefined;
    // A stdio upstream (and what it started) is signalled on Bastion's schedule, not the SDK's slower one.
    const pid = client?.transport instanceof StdioClientTransport ? client.transport.pid : null;
    const stopping = pid ? stopProcessTree(pid, STOP_SCHEDULE) : undefined;
    const closing = client?.close().catch(() => undefined);
    // The SDK's close waits for the pipes to close; once the processes are stopped, not for long.
    await (stopping ? Promise.race([closing, stopping.then(() => new Promise((resolve) => setTimeout(resolve, 250)))]) : closing);
  }

  private setStatus(status: ConnectorStatus): void {
    if (this.statusValue === status) return;
    this.statusValue = status;
    this.events.onStatus?.(this, status);
  }

  private makeTransport(): Transport {
    const config = this.config;
    if (config.transport === 'stdio') {
      const transport = new StdioClientTransport({
        command: config.command,
        args: config.args,
        env: { ...getDefaultEnvironment(), ...config.env },
        ...(config.cwd ? { cwd: config.cwd } : {}),
        stderr: 'pipe',
      });
      transport.stderr?.on('data', (chunk: Buffer) => {
        this.events.log.debug({ connector: config.name, stderr: chunk.toString('utf8').slice(0, 2000) }, 'upstream stderr');
      });
      return transport;
    }
    return new StreamableHTTPClientTransport(new URL(config.url), { requestInit: { headers: config.headers }, fetch: fetchWithOwnSignal });
  }

  private async connect(): Promise<void> {
    if (this.statusValue === 'stopped') return;
    this.setStatus('starting');
    const client = new Client(
      { name: 'bastion', version: '0.1.0' },
      // The SDK validates results against the upstream's output schemas: patterns there run on RE2.
      {
        capabilities: { sampling: {}, elicitation: { form: {}, url: {} }, roots: { listChanged: true } },
        jsonSchemaValidator: linearSchemaValidator,
        versionNegotiation: NEGOTIATION[this.config.protocol ?? '2025-11-25'],
      },
    );
    this.installRelays(client);
    client.onclose = () => {
      if (this.client !== client) return;
      this.client = undefined;
      this.failInflight();
      if (this.statusValue !== 'stopped') {
        this.events.log.warn({ connector: this.name }, 'upstream connection closed');
        this.scheduleReconnect();
      }
    };
    client.onerror = (error) => {
      this.events.log.debug({ connector: this.name, err: error.message }, 'upstream transport error');
    };
    try {
      await client.connect(this.makeTransport(), { timeout: this.config.timeout });
      this.client = client;
      this.capabilities = client.getServerCapabilities() ?? {};
      this.instructionsValue = client.getInstructions();
      this.handshakeDone = true;
      this.protocolValue = client.getNegotiatedProtocolVersion();
      // 2026-07-28 sends list changes only on a stream asked for; they reach the same handlers as 2025's.
      if (client.getProtocolEra() === 'modern') await this.listen(client);
      await this.refresh('tools');
      await this.refresh('resources');
      await this.refresh('prompts');
      this.backoffMs = BACKOFF_MIN_MS;
      this.lastError = undefined;
      this.setStatus('ready');
      this.events.log.info({ connector: this.name, protocol: this.protocolValue, tools: this.catalogValue.tools.length }, 'connector ready');
    } catch (error) {
      this.lastError = (error as Error).message;
      this.events.log.warn({ connector: this.name, err: this.lastError }, 'connector failed to start');
      this.client = undefined;
      await client.close().catch(() => undefined);
      this.scheduleReconnect();
    }
  }

  /** Opens the subscriptions/listen stream for the lists this upstream says can change. */
  private async listen(client: Client): Promise<void> {
    const { tools, prompts, resources } = this.capabilities;
    const filter = {
      ...(tools?.listChanged ? { toolsListChanged: true } : {}),
      ...(prompts?.listChanged ? { promptsListChanged: true } : {}),
      ...(resources?.listChanged ? { resourcesListChanged: true } : {}),
    };
    if (Object.keys(filter).length === 0) return;
    await client.listen(filter, { timeout: this.config.timeout });
  }

  private scheduleReconnect(): void {
    if (this.statusValue === 'stopped') return;
    this.setStatus('down');
    clearTimeout(this.reconnectTimer);
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.reconnectTimer = setTimeout(() => void this.connect(), delay);
    this.reconnectTimer.unref();
  }

  private failInflight(): void {
    // The SDK rejects pending requests on close; nothing else to release here.
    this.inflight.clear();
  }

  /** Re-reads one catalog list from the upstream. */
  async refresh(kind: 'tools' | 'resources' | 'prompts'): Promise<void> {
    const client = this.client;
    if (!client) return;
    const caps = this.capabilities;
    const next = { ...this.catalogValue };
    if (kind === 'tools') {
      next.tools = caps.tools
        ? this.withEvaluableSchemas(
            await listAll(async (cursor) => {
              const r = await client.listTools(cursor ? { cursor } : {});
              return { items: r.tools, nextCursor: r.nextCursor };
            }),
          )
        : [];
    } else if (kind === 'resources') {
      next.resources = caps.resources
        ? await listAll(async (cursor) => {
            const r = await client.listResources(cursor ? { cursor } : {});
            return { items: r.resources, nextCursor: r.nextCursor };
          })
        : [];
      next.resourceTemplates = caps.resources
        ? await listAll(async (cursor) => {
            const r = await client.listResourceTemplates(cursor ? { cursor } : {});
            return { items: r.resourceTemplates, nextCursor: r.nextCursor };
          }).catch(() => [])
        : [];
    } else {
      next.prompts = caps.prompts
        ? await listAll(async (cursor) => {
            const r = await client.listPrompts(cursor ? { cursor } : {});
            return { items: r.prompts, nextCursor: r.nextCursor };
          })
        : [];
    }
    this.catalogValue = next;
  }

  /**
   * Drops (and logs) each tool whose schemas hold a pattern Bastion cannot
   * evaluate in linear time (a backreference, lookaround): its results could
   * not be validated safely, so it is refused at load rather than at a call.
   */
  private withEvaluableSchemas(tools: Tool[]): Tool[] {
    return tools.filter((tool) => {
      const problems = toolSchemaProblems(tool);
      if (problems.length === 0) return true;
      this.events.log.error(
        { connector: this.name, tool: tool.name, problems: problems.slice(0, 10) },
        `tool ${tool.name} of connector ${this.name} refused: ${problems[0]!.where}: ${problems[0]!.message}`,
      );
      return false;
    });
  }

  /** The single agent with calls in flight here, or undefined when none or ambiguous. */
  private currentOrigin(): CallOrigin | undefined {
    let origin: CallOrigin | undefined;
    for (const candidate of this.inflight.values()) {
      if (origin && origin.sessionId !== candidate.sessionId) return undefined;
      origin ??= candidate;
    }
    return origin;
  }

  private installRelays(client: Client): void {
    const relayRequest = async (request: Request): Promise<Result> => {
      const origin = this.currentOrigin();
      if (!origin) {
        throw new ProtocolError(
          ProtocolErrorCode.InvalidRequest,
          `Bastion cannot attribute ${request.method} to exactly one agent call in flight on connector ${this.name}`,
        );
      }
      return origin.sendRequest(request);
    };
    client.setRequestHandler('sampling/createMessage', (request) => relayRequest(request) as never);
    client.setRequestHandler('elicitation/create', (request) => relayRequest(request) as never);
    client.setRequestHandler('roots/list', (request) => {
      const relayed = relayRequest(request);
      for (const wake of this.rootsWaiters) wake();
      return relayed as never;
    });

    client.setNotificationHandler('notifications/message', async (notification) => {
      const origin = this.currentOrigin();
      if (origin) await origin.sendNotification(notification).catch(() => undefined);
      else this.events.log.info({ connector: this.name, upstream: notification.params }, 'upstream log message');
    });
    // The SDK's own onprogress drops a progress notification that arrives in the
    // same read as the response (its handler runs a microtask after the response
    // unregisters it), so Bastion routes progress by its own tokens.
    client.setNotificationHandler('notifications/progress', async (notification) => {
      const { progressToken, ...progress } = notification.params;
      this.progress.get(String(progressToken))?.(progress);
    });
    client.setNotificationHandler('notifications/resources/updated', async (notification) => {
      this.events.onResourceUpdated?.(this, notification.params.uri);
    });
    const onListChanged = (kind: 'tools' | 'resources' | 'prompts') => () => {
      const settled = this.refresh(kind)
        .catch((error: Error) => {
          this.events.log.warn({ connector: this.name, err: error.message }, `refreshing ${kind} failed`);
        })
        .then(() => this.events.onListChanged?.(this, kind));
      if (kind === 'tools') this.toolsSettled = settled;
      return settled;
    };
    client.setNotificationHandler('notifications/tools/list_changed', onListChanged('tools'));
    client.setNotificationHandler('notifications/resources/list_changed', onListChanged('resources'));
    client.setNotificationHandler('notifications/prompts/list_changed', onListChanged('prompts'));
  }

  private requireClient(): Client {
    if (!this.client || this.statusValue !== 'ready') {
      throw new ConnectorUnavailable(this.name, this.lastError);
    }
    return this.client;
  }

  /** Runs `operation` with `origin` registered as the owner of relayed traffic. */
  async withOrigin<T>(origin: CallOrigin, operation: (client: Client) => Promise<T>): Promise<T> {
    const client = this.requireClient();
    const id = this.nextCallId++;
    this.inflight.set(id, origin);
    try {
      return await operation(client);
    } finally {
      this.inflight.delete(id);
    }
  }

  /**
   * Passes an agent's `notifications/roots/list_changed` upstream. An
   * upstream answers it by asking for the roots (roots/list), outside any
   * call: for a short window, or until it asks, that request is attributed
   * to this agent as if one of its calls were in flight. A connector that is
   * not connected has no roots to refresh.
   */
  async rootsChanged(origin: CallOrigin): Promise<void> {
    if (!this.client || this.statusValue !== 'ready') return;
    await this.withOrigin(origin, async (client) => {
      let wake = () => {};
      const asked = new Promise<void>((resolve) => (wake = resolve));
      this.rootsWaiters.add(wake);
      const timer = setTimeout(wake, ROOTS_CHANGE_WINDOW_MS);
      try {
        await client.sendRootsListChanged();
        await asked;
      } finally {
        clearTimeout(timer);
        this.rootsWaiters.delete(wake);
      }
    });
  }

  /** Calls an upstream tool by its upstream (un-namespaced) name. */
  callTool(name: string, args: Record<string, unknown>, options: CallOptions): Promise<CallToolResult> {
    return this.withOrigin(options.origin, async (client) => {
      const token = options.onprogress ? `bastion-${this.nextCallId++}` : undefined;
      if (token) this.progress.set(token, options.onprogress!);
      try {
        const result = await client.callTool(
          { name, arguments: args, ...(token ? { _meta: { progressToken: token } } : {}) },
          { timeout: this.config.timeout, ...(options.signal ? { signal: options.signal } : {}) },
        );
        return result as CallToolResult;
      } finally {
        if (token) this.progress.delete(token);
      }
    });
  }
}

/** Thrown when a call targets a connector that is not connected. */
export class ConnectorUnavailable extends Error {
  override readonly name = 'ConnectorUnavailable';
  constructor(connector: string, cause: string | undefined) {
    super(`connector ${connector} is unavailable${cause ? ` (${cause})` : ''}`);
  }
}
