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
 * The connection opened here is the catalog connection: it lists and keeps
 * the catalog fresh and serves no agent (it answers roots/list with no roots
 * and refuses sampling and elicitation). Every agent request goes through the
 * agent's own upstream connection (agent-sessions.ts), so what the upstream
 * keeps per client, and sends back, belongs to exactly one agent.
 *
 * @example
 *   const demo = new Connector(config, { log, onListChanged });
 *   await demo.start();
 *   const result = await demo.callTool('read_file', { path: '/srv/a' }, call);
 */
import { getDefaultEnvironment, StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { Client, StreamableHTTPClientTransport, ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/client';
import type { ClientCapabilities, Transport, CallToolResult, LoggingLevel, Prompt, Resource, ResourceTemplateType, ServerCapabilities, Tool } from '@modelcontextprotocol/client';
import { fetchWithOwnSignal } from './fetch.ts';
import type { ConnectorConfig } from '../broker/config.ts';
import type { Logger } from '../broker/log.ts';
import { linearSchemaValidator, toolSchemaProblems } from '../sandboxes/schema-patterns.ts';
import type { Denial } from '../broker/errors.ts';
import { AgentSessions, closeUpstreamClient, RELAYABLE_CAPABILITIES, type AgentChannel, type AgentConnectionInfo, type CallOrigin, type CreatedTask, type ToolCallOptions, type UpstreamInputRequired } from './agent-sessions.ts';

export type { AgentChannel, AgentOwner, CallOrigin, CreatedTask, UpstreamInputRequired } from './agent-sessions.ts';
export { isInputRequired, relayedCapabilities, TaskConnectionGone } from './agent-sessions.ts';

export type ConnectorStatus = 'starting' | 'ready' | 'down' | 'stopped';

/** A tool call's options (agent-sessions.ts) and the agent it is made for. */
export interface CallOptions extends ToolCallOptions {
  origin: CallOrigin;
}

export interface ConnectorEvents {
  log: Logger;
  /** A catalog changed (after the connector refreshed it). */
  onListChanged?: (connector: Connector, kind: 'tools' | 'resources' | 'prompts') => void | Promise<void>;
  onStatus?: (connector: Connector, status: ConnectorStatus) => void;
  /** The live agent session with this id (for what its upstream connection sends outside a request). */
  agentChannel?: (sessionId: string) => AgentChannel | undefined;
  /** An agent connection was refused (isolation bounds): for the audit trail. */
  onAgentRefused?: (connector: Connector, origin: CallOrigin, denial: Denial) => void;
  /** Bastion's id for an upstream task on one agent connection (undefined: not one Bastion knows). */
  taskIdFor?: (connector: Connector, connection: string, upstreamId: string) => string | undefined;
}

export interface Catalog {
  tools: Tool[];
  resources: Resource[];
  resourceTemplates: ResourceTemplateType[];
  prompts: Prompt[];
}

const EMPTY_CATALOG: Catalog = { tools: [], resources: [], resourceTemplates: [], prompts: [] };
const BACKOFF_MIN_MS = 250;

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
  /** Every agent's own upstream connection. */
  private readonly agents: AgentSessions;
  private protocolValue: string | undefined;
  private backoffMs = BACKOFF_MIN_MS;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private startPromise: Promise<void> | undefined;
  /** Settles when the latest announced tools change has been re-listed (and re-pinned). */
  private toolsSettled: Promise<void> = Promise.resolve();
  lastError: string | undefined;

  constructor(config: ConnectorConfig, events: ConnectorEvents) {
    this.config = config;
    this.events = events;
    this.agents = new AgentSessions({
      connector: config.name,
      isolation: config.isolation,
      timeoutMs: config.timeout,
      log: events.log,
      client: (capabilities) => this.newClient(capabilities),
      transport: () => this.makeTransport(),
      // Known from the catalog connection, which negotiates as every agent connection does.
      upstreamModern: () => this.protocolValue === '2026-07-28',
      channel: (sessionId) => events.agentChannel?.(sessionId),
      refused: (origin, denial) => events.onAgentRefused?.(this, origin, denial),
      catalogTool: (name) => this.catalogValue.tools.find((tool) => tool.name === name),
      // A change announced on an agent's connection may be the server's: the catalog re-lists (and re-pins).
      toolsChanged: () => this.catalogChanged('tools'),
      taskIdFor: (connection, upstreamId) => events.taskIdFor?.(this, connection, upstreamId),
    });
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
    await Promise.all([closeUpstreamClient(client), this.agents.stop()]);
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

  /**
   * A client as every connection to this upstream is made. The catalog's declares all Bastion
   * relays (it lists the widest catalog, for pins and policy); each agent's declares what that agent
   * declared, within the same (agent-sessions.ts relayedCapabilities).
   */
  private newClient(capabilities: ClientCapabilities = RELAYABLE_CAPABILITIES): Client {
    return new Client(
      { name: 'bastion', version: '0.1.0' },
      // The SDK validates results against the upstream's output schemas: patterns there run on RE2.
      {
        capabilities: structuredClone(capabilities),
        jsonSchemaValidator: linearSchemaValidator,
        versionNegotiation: NEGOTIATION[this.config.protocol ?? '2025-11-25'],
      },
    );
  }

  private async connect(): Promise<void> {
    if (this.statusValue === 'stopped') return;
    this.setStatus('starting');
    const client = this.newClient();
    this.installCatalogHandlers(client);
    client.onclose = () => {
      if (this.client !== client) return;
      this.client = undefined;
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

  /** The catalog connection serves no agent: it reveals no roots, relays nothing, and logs what it is told. */
  private installCatalogHandlers(client: Client): void {
    const noAgent = (method: string) => {
      throw new ProtocolError(ProtocolErrorCode.InvalidRequest, `Bastion's catalog connection to ${this.name} serves no agent; ${method} is relayed only on an agent's own connection`);
    };
    client.setRequestHandler('sampling/createMessage', () => noAgent('sampling/createMessage'));
    client.setRequestHandler('elicitation/create', () => noAgent('elicitation/create'));
    client.setRequestHandler('roots/list', () => ({ roots: [] }));
    client.setNotificationHandler('notifications/message', async (notification) => {
      this.events.log.info({ connector: this.name, upstream: notification.params }, 'upstream log message');
    });
    client.setNotificationHandler('notifications/tools/list_changed', () => this.catalogChanged('tools'));
    client.setNotificationHandler('notifications/resources/list_changed', () => this.catalogChanged('resources'));
    client.setNotificationHandler('notifications/prompts/list_changed', () => this.catalogChanged('prompts'));
  }

  /** Re-lists one catalog list (and, for tools, re-pins); calls wait for a tools change to settle. */
  private catalogChanged(kind: 'tools' | 'resources' | 'prompts'): Promise<void> {
    const settled = this.refresh(kind)
      .catch((error: Error) => {
        this.events.log.warn({ connector: this.name, err: error.message }, `refreshing ${kind} failed`);
      })
      // Each agent's own list (what tools/list shows it) follows the server's.
      .then(() => (kind === 'tools' ? this.agents.relistTools() : undefined))
      .then(() => this.events.onListChanged?.(this, kind));
    if (kind === 'tools') this.toolsSettled = settled;
    return settled;
  }

  private requireClient(): Client {
    if (!this.client || this.statusValue !== 'ready') {
      throw new ConnectorUnavailable(this.name, this.lastError);
    }
    return this.client;
  }

  /** Runs `operation` on the agent's own upstream connection (opened on first need, within bounds). */
  withOrigin<T>(origin: CallOrigin, operation: (client: Client) => Promise<T>): Promise<T> {
    this.requireClient();
    return this.agents.run(origin, (client) => operation(client));
  }

  /** Calls an upstream tool by its upstream (un-namespaced) name, on the agent's own connection. */
  callTool(name: string, args: Record<string, unknown>, options: CallOptions): Promise<CallToolResult | UpstreamInputRequired> {
    this.requireClient();
    const { origin, ...rest } = options;
    return this.agents.callTool(origin, name, args, rest);
  }

  /** Whether the upstream (as of its last handshake) accepts task-augmented tools/call. */
  get offersToolTasks(): boolean {
    return this.knownCapabilities?.tasks?.requests?.tools?.call !== undefined;
  }

  /** Whether the upstream answers tasks/cancel (2025-11-25 `tasks.cancel`). */
  get offersTaskCancel(): boolean {
    return this.knownCapabilities?.tasks?.cancel !== undefined;
  }

  /** A task-augmented tools/call on the agent's own connection: the upstream task and the connection holding it. */
  createTask(name: string, args: Record<string, unknown>, task: { ttl?: number }, options: { origin: CallOrigin; signal?: AbortSignal; holdMaxMs: number }): Promise<CreatedTask> {
    this.requireClient();
    return this.agents.createTask(options.origin, name, args, task, options.holdMaxMs, options.signal);
  }

  /** A tasks/* request on the connection that holds the task (never a new one); TaskConnectionGone when it closed. */
  onTaskConnection<T>(connection: string, origin: CallOrigin, operation: (client: Client) => Promise<T>): Promise<T> {
    return this.agents.onTaskConnection(connection, origin, operation);
  }

  /** resources/subscribe on the agent's own upstream session. */
  subscribe(origin: CallOrigin, uri: string): Promise<void> {
    this.requireClient();
    return this.agents.subscribe(origin, uri);
  }

  unsubscribe(origin: CallOrigin, uri: string): Promise<void> {
    return this.agents.unsubscribe(origin, uri);
  }

  /** logging/setLevel for the agent's own upstream connection (now, if open; else when it opens). */
  setLoggingLevel(origin: CallOrigin, level: LoggingLevel): Promise<void> {
    return this.agents.setLoggingLevel(origin, level);
  }

  /** notifications/roots/list_changed from an agent session, to its own upstream connection. */
  rootsChanged(sessionId: string): Promise<void> {
    return this.agents.rootsChanged(sessionId);
  }

  /** Whether the agent's own upstream session lists `uri` (a resource made for that session). */
  listsForAgent(origin: CallOrigin, uri: string): boolean {
    return this.agents.lists(origin, uri);
  }

  /** What the agent's own open upstream session lists beyond the catalog (resources made for that session). */
  resourcesForAgent(origin: CallOrigin): Resource[] {
    const catalog = new Set(this.catalogValue.resources.map((r) => r.uri));
    return this.agents.listed(origin).filter((r) => !catalog.has(r.uri));
  }

  /**
   * The upstream names of the tools the agent's own upstream session offers, where they may differ
   * from the catalog's (agent-sessions.ts toolNames); undefined: the catalog's list holds.
   */
  toolsForAgent(origin: CallOrigin): Promise<Set<string> | undefined> {
    this.requireClient();
    return this.agents.toolNames(origin);
  }

  /** The agent session closed: its upstream connection here closes (and a stdio child stops). */
  release(sessionId: string): Promise<void> {
    return this.agents.release(sessionId);
  }

  /** The agent connections open now. */
  agentConnections(): AgentConnectionInfo[] {
    return this.agents.list();
  }
}

/** Thrown when a call targets a connector that is not connected. */
export class ConnectorUnavailable extends Error {
  override readonly name = 'ConnectorUnavailable';
  constructor(connector: string, cause: string | undefined) {
    super(`connector ${connector} is unavailable${cause ? ` (${cause})` : ''}`);
  }
}
