/**
 * Upstream connections that belong to agents, never to a connector as a whole.
 *
 * An MCP server keeps state per client connection: the roots it asked for,
 * the log level, resource subscriptions, resources it made for that session,
 * the sampling and elicitation requests it sends back. One shared connection
 * would hand agent A's state to agent B. So each agent session (isolation mode
 * `session`) or each principal (mode `principal`) gets its own connection,
 * opened on its first need, bounded per connector and per principal, closed
 * when idle and torn down (for stdio: the child process stopped) when the
 * agent session closes. Whatever the upstream sends on a connection goes to
 * the agent that owns it, and only there.
 *
 * The connector's catalog (tool, resource and prompt lists for policy and
 * pins) still comes from its own catalog connection (upstream.ts).
 *
 * @example
 *   const sessions = new AgentSessions({ connector: 'fs', isolation, log, client, transport, channel, refused });
 *   const result = await sessions.callTool(origin, 'read_file', { path: '/srv/a' }, {});
 *   sessions.release(sessionId);   // the agent session closed
 */
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { ProtocolError, ProtocolErrorCode, SdkError, SdkErrorCode, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { CLIENT_CAPABILITIES_META_KEY } from '@modelcontextprotocol/client';
import type { CallToolResult, Client, ClientCapabilities, LoggingLevel, Notification, Request, Resource, Result, Tool, Transport } from '@modelcontextprotocol/client';
import canonicalizeModule from 'canonicalize';
import type { IsolationConfig } from '../broker/config.ts';
import { Denial } from '../broker/errors.ts';
import type { Logger } from '../broker/log.ts';
import { stopProcessTree } from './process-tree.ts';
import { compileSchema } from '../sandboxes/schema-patterns.ts';
import { CreateTaskResultSchema, isTerminal, RELATED_TASK, TaskPayloadSchema, TaskResultSchema, type UpstreamTask } from '../broker/tasks/schemas.ts';

/** Who a request comes from: the key of its upstream connection. */
export interface AgentOwner {
  iss: string;
  sub: string;
}

/** The agent side of one in-flight request: where relayed traffic must go. */
export interface CallOrigin {
  sessionId: string;
  owner: AgentOwner;
  /**
   * A request without a session (protocol 2026-07-28): it uses its principal's connection
   * whatever the isolation mode, and leaves nothing keyed by its one-off id behind.
   */
  stateless?: boolean;
  /**
   * What the agent declared it can do (its `initialize`, or a 2026-07-28 request's `_meta`): its
   * upstream connection declares the part Bastion relays, so the upstream offers it what it would
   * offer the agent directly. Absent: everything Bastion relays (callers that are not an agent).
   */
  capabilities?: ClientCapabilities;
  /**
   * A 2026-07-28 subscriptions/listen stream (it has no session): where updates of the resources
   * it subscribes to go. `sessionId` then names the stream.
   */
  updates?: (uri: string) => void;
  sendRequest: (request: Request) => Promise<Result>;
  sendNotification: (notification: Notification) => Promise<void>;
}

/** The client capabilities Bastion can relay to an agent (and declares on its catalog connection). */
export const RELAYABLE_CAPABILITIES = { sampling: {}, elicitation: { form: {}, url: {} }, roots: { listChanged: true } } as const satisfies ClientCapabilities;

/**
 * The capabilities an agent's upstream connection declares: what the agent declared, less what
 * Bastion does not relay (tasks, extensions, experimental). A 2026-07-28 agent behind a
 * 2025-11-25 upstream keeps sampling, elicitation and roots: the upstream's mid-call request
 * reaches it as input_required (era translation, broker/server/held-exchanges.ts).
 * Elicitation keeps only the modes Bastion relays.
 */
export function relayedCapabilities(declared: ClientCapabilities | undefined): ClientCapabilities {
  if (declared === undefined) return structuredClone(RELAYABLE_CAPABILITIES) as ClientCapabilities;
  const relayed: ClientCapabilities = {};
  if (declared.sampling) relayed.sampling = { ...declared.sampling };
  if (declared.elicitation) {
    const { form, url } = declared.elicitation as { form?: object; url?: object };
    relayed.elicitation = { ...(form ? { form: {} } : {}), ...(url ? { url: {} } : {}) };
  }
  if (declared.roots) relayed.roots = declared.roots.listChanged ? { listChanged: true } : {};
  return relayed;
}

/** Why a server-to-client request this connection did not declare is refused. */
const UNDECLARED_REASON: Record<string, string> = {
  'sampling/createMessage': 'the agent did not declare sampling, so Bastion did not declare it upstream either',
  'elicitation/create': 'the agent did not declare elicitation, so Bastion did not declare it upstream either',
  'roots/list': 'the agent did not declare roots, so Bastion did not declare them upstream either',
};

/** An agent session as a whole, for what its upstream sends outside any request. */
export interface AgentChannel {
  sendRequest: (request: Request) => Promise<Result>;
  sendNotification: (notification: Notification) => Promise<void>;
}

export interface AgentSessionsOptions {
  connector: string;
  isolation: IsolationConfig;
  /** Upstream request deadline. */
  timeoutMs: number;
  log: Logger;
  /** A new SDK client configured like the catalog's (validators, negotiation) declaring these capabilities, not connected. */
  client: (capabilities: ClientCapabilities) => Client;
  /** Whether the upstream speaks 2026-07-28 (as the catalog connection negotiated it). */
  upstreamModern: () => boolean;
  /** A new transport to the upstream (for stdio: a new child process). */
  transport: () => Transport;
  /** The live agent session with this id, or undefined once it closed. */
  channel: (sessionId: string) => AgentChannel | undefined;
  /** A refusal to open a connection (bounds), for the audit trail. */
  refused: (origin: CallOrigin, denial: Denial) => void;
  /** The catalog's (pinned, policy-checked) descriptor of a tool. */
  catalogTool: (name: string) => Tool | undefined;
  /** An agent's upstream session announced a tools change: the catalog re-lists. */
  toolsChanged: () => Promise<void>;
  /**
   * Bastion's id for an upstream task held by one agent connection; undefined: not a task Bastion
   * knows (its status notifications are dropped, its id stripped from what is relayed).
   */
  taskIdFor?: (connection: string, upstreamId: string) => string | undefined;
}

export interface ToolCallOptions {
  signal?: AbortSignal;
  onprogress?: (progress: { progress: number; total?: number; message?: string }) => void;
  /**
   * Multi-round-trip, 2026-07-28 upstream to a 2026-07-28 agent: an `input_required`
   * answer is handed back (not fulfilled here), and a retry carries the agent's
   * `inputResponses` and the upstream's own `requestState`. Ignored on a 2025 upstream.
   */
  inputRequired?: { manual: true; inputResponses?: Record<string, unknown>; requestState?: string; clientCapabilities?: ClientCapabilities };
  /**
   * The tool requires task augmentation (`execution.taskSupport: required`) and the agent did not
   * ask for a task: Bastion creates the upstream task itself and waits for its result within the
   * call (cancelling the task if the agent cancels).
   */
  viaTask?: true;
}

/** A task an agent's upstream connection created: the upstream's task and the connection that holds it. */
export interface CreatedTask {
  task: UpstreamTask;
  connection: string;
}

/** The agent connection that held a task is gone (closed, idle, its agent session ended): so is the task. */
export class TaskConnectionGone extends Error {
  override readonly name = 'TaskConnectionGone';
}

/** Waits `ms`, or less when `signal` aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** How often a task is polled when the upstream suggests nothing, and the bounds of what it may suggest. */
const POLL = { defaultMs: 1000, minMs: 100, maxMs: 5000, /** the longest tasks/result is awaited within one call */ waitMaxMs: 60 * 60_000 };

/** An upstream's `input_required` answer (2026-07-28), handed back in manual mode. */
export interface UpstreamInputRequired {
  resultType: 'input_required';
  inputRequests?: Record<string, unknown>;
  requestState?: string;
}

export function isInputRequired(result: unknown): result is UpstreamInputRequired {
  return !!result && typeof result === 'object' && (result as { resultType?: unknown }).resultType === 'input_required';
}

/** Output-schema validators for manual multi-round-trip results, per catalog tool object. */
const outputValidators = new WeakMap<Tool, ReturnType<typeof compileSchema>>();

/** The rule client.callTool applies: a tool with an output schema answers valid structured content (unless isError). */
function checkStructured(tool: Tool | undefined, name: string, result: CallToolResult): void {
  if (!tool?.outputSchema || result.isError) return;
  if (result.structuredContent === undefined) throw new ProtocolError(ProtocolErrorCode.InvalidRequest, `Tool ${name} has an output schema but did not return structured content`);
  let validate = outputValidators.get(tool);
  if (!validate) {
    validate = compileSchema(tool.outputSchema as Record<string, unknown>);
    outputValidators.set(tool, validate);
  }
  if (!validate(result.structuredContent)) {
    throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Structured content does not match the tool's output schema: ${validate.errors?.[0]?.message ?? 'invalid'}`);
  }
}

/** What `list()` says about one open agent connection. */
export interface AgentConnectionInfo {
  key: string;
  owner: AgentOwner;
  sessions: string[];
  /** The upstream child process (stdio), while it runs. */
  pid: number | undefined;
  /** Resources this connection is subscribed to upstream. */
  subscriptions: string[];
}

const canonicalize = canonicalizeModule as unknown as (value: unknown) => string | undefined;
/** Canonical descriptors of catalog tools, computed once per catalog object. */
const catalogForms = new WeakMap<Tool, string | undefined>();
function catalogForm(tool: Tool): string | undefined {
  if (!catalogForms.has(tool)) catalogForms.set(tool, canonicalize(tool));
  return catalogForms.get(tool);
}

/** Within an MCP client's 2 s grace for `bastion stdio`, with the rest of the broker's shutdown. */
const STOP_SCHEDULE = { termAfterMs: 400, killAfterMs: 900 };

/**
 * Closes an upstream client; an HTTP upstream session is terminated; a stdio upstream (and what it started) is signalled on
 * Bastion's schedule (process-tree.ts), not the SDK's slower one.
 */
export async function closeUpstreamClient(client: Client | undefined): Promise<void> {
  // An HTTP upstream is told the session ended (DELETE), so it can drop what it kept for it.
  if (client?.transport instanceof StreamableHTTPClientTransport) await client.transport.terminateSession().catch(() => undefined);
  const pid = client?.transport instanceof StdioClientTransport ? client.transport.pid : null;
  const stopping = pid ? stopProcessTree(pid, STOP_SCHEDULE) : undefined;
  const closing = client?.close().catch(() => undefined);
  // The SDK's close waits for the pipes to close; once the processes are stopped, not for long.
  await (stopping ? Promise.race([closing, stopping.then(() => new Promise((resolve) => setTimeout(resolve, 250)))]) : closing);
}

function ownerKey(owner: AgentOwner): string {
  return JSON.stringify([owner.iss, owner.sub]);
}

const RELAYABLE_FORM = canonicalize(RELAYABLE_CAPABILITIES);

/** One upstream connection and the agent sessions it serves (one, in mode `session`). */
class AgentConnection {
  readonly key: string;
  readonly owner: AgentOwner;
  /** What this connection declares to the upstream (relayedCapabilities). */
  readonly capabilities: ClientCapabilities;
  /** Agent sessions served, most recently active last. */
  readonly sessions = new Set<string>();
  /** Requests in flight on this connection, by a local id. */
  readonly inflight = new Map<number, CallOrigin>();
  /** Progress listeners by the token Bastion sent upstream. */
  readonly progress = new Map<string, NonNullable<ToolCallOptions['onprogress']>>();
  /** Upstream subscriptions: uri → agent sessions (or listen streams) subscribed. */
  readonly subscriptions = new Map<string, Set<string>>();
  /** Listen streams (2026-07-28) subscribed here, by the id they subscribe under. */
  readonly streams = new Map<string, (uri: string) => void>();
  /** Resources this connection's upstream session lists (its own session resources included), by URI. */
  resources = new Map<string, Resource>();
  /** Canonical descriptors of the tools this connection's upstream session lists, by name ('unknown': listing failed). */
  tools: Map<string, string | undefined> | 'unknown' = new Map();
  /** Settles when the latest tools change announced on this connection has been listed. */
  toolsListed: Promise<void> = Promise.resolve();
  client: Client | undefined;
  transport: Transport | undefined;
  ready: Promise<void> = Promise.resolve();
  idleTimer: NodeJS.Timeout | undefined;
  closed = false;

  constructor(key: string, owner: AgentOwner, capabilities: ClientCapabilities) {
    this.key = key;
    this.owner = owner;
    this.capabilities = capabilities;
  }

  /** Until when an upstream task made on this connection may live (the connection must not idle out under it). */
  tasksUntil = 0;

  get busy(): boolean {
    return this.inflight.size > 0 || this.subscriptions.size > 0;
  }

  touch(sessionId: string): void {
    this.sessions.delete(sessionId);
    this.sessions.add(sessionId);
  }

  /** The request in flight that started last, if any. */
  latestCall(): CallOrigin | undefined {
    let latest: CallOrigin | undefined;
    for (const origin of this.inflight.values()) latest = origin;
    return latest;
  }

  get pid(): number | undefined {
    return (this.transport as StdioClientTransport | undefined)?.pid ?? undefined;
  }
}

export class AgentSessions {
  private readonly options: AgentSessionsOptions;
  private readonly connections = new Map<string, AgentConnection>();
  /** Log level each agent session asked for, applied to its connections as they open. */
  private readonly levels = new Map<string, LoggingLevel>();
  private nextId = 1;
  private stopped = false;
  /** Closings under way (a released session's): stop() waits for them too. */
  private readonly closings = new Set<Promise<void>>();

  constructor(options: AgentSessionsOptions) {
    this.options = options;
  }

  private get name(): string {
    return this.options.connector;
  }

  /**
   * What the connection serving `origin` declares upstream. A 2026-07-28 request to a 2026-07-28
   * upstream carries the agent's own capabilities in its `_meta` (the pipeline puts them there),
   * so one connection per principal serves every declaration: it declares all Bastion relays, and
   * a principal whose requests vary their declaration opens no further connection (for stdio, a
   * process). A 2025-11-25 upstream learns capabilities only at initialize: one connection per
   * declaration.
   */
  private capabilitiesOf(origin: CallOrigin): ClientCapabilities {
    if (origin.stateless && this.options.upstreamModern()) return structuredClone(RELAYABLE_CAPABILITIES) as ClientCapabilities;
    return relayedCapabilities(origin.capabilities);
  }

  /**
   * The connection key: the agent session, or the principal, by isolation mode; and what the
   * connection declares, so a principal's requests that declare different capabilities (2026-07-28
   * carries them per request) never share a 2025-era upstream session that offers the wrong tools.
   */
  keyOf(origin: CallOrigin): string {
    const who = this.options.isolation.mode === 'session' && !origin.stateless ? `session:${origin.sessionId}` : `principal:${ownerKey(origin.owner)}`;
    return `${who}:${canonicalize(this.capabilitiesOf(origin))}`;
  }

  /** Open agent connections. */
  list(): AgentConnectionInfo[] {
    return [...this.connections.values()].map((c) => ({ key: c.key, owner: c.owner, sessions: [...c.sessions], pid: c.pid, subscriptions: [...c.subscriptions.keys()] }));
  }

  /** The connection for `origin`, opened (within bounds) when it has none. */
  private async acquire(origin: CallOrigin): Promise<AgentConnection> {
    if (this.stopped) throw new SdkError(SdkErrorCode.ConnectionClosed, `connector ${this.name} is stopped`);
    const key = this.keyOf(origin);
    const existing = this.connections.get(key);
    if (existing) {
      if (!origin.stateless) existing.touch(origin.sessionId);
      await existing.ready;
      return existing;
    }
    this.checkBounds(origin);
    const connection = new AgentConnection(key, origin.owner, this.capabilitiesOf(origin));
    if (!origin.stateless) connection.touch(origin.sessionId);
    this.connections.set(key, connection);
    connection.ready = this.connect(connection, origin);
    try {
      await connection.ready;
    } catch (error) {
      this.forget(connection);
      throw error;
    }
    return connection;
  }

  private checkBounds(origin: CallOrigin): void {
    const { max, max_per_principal: perPrincipal } = this.options.isolation;
    const key = ownerKey(origin.owner);
    const held = [...this.connections.values()].filter((c) => ownerKey(c.owner) === key).length;
    const reason =
      this.connections.size >= max
        ? `connector ${this.name} holds ${this.connections.size} agent connections (limit ${max}); try again when one closes`
        : held >= perPrincipal
          ? `this principal holds ${held} connections to ${this.name} (limit ${perPrincipal}); close a session first`
          : undefined;
    if (!reason) return;
    const denial = new Denial('limit', 'BASTION_UPSTREAM_SESSIONS_FULL', reason);
    this.options.refused(origin, denial);
    throw denial;
  }

  private async connect(connection: AgentConnection, origin: CallOrigin): Promise<void> {
    const client = this.options.client(connection.capabilities);
    this.installRelays(connection, client);
    client.onclose = () => {
      if (connection.closed) return;
      this.options.log.warn({ connector: this.name, connection: connection.key }, 'agent upstream connection closed');
      this.forget(connection);
    };
    client.onerror = (error) => {
      this.options.log.debug({ connector: this.name, err: error.message }, 'agent upstream transport error');
    };
    const transport = this.options.transport();
    connection.transport = transport;
    // What the upstream asks while it initializes (roots, typically) goes to the agent whose request opens it.
    const id = this.nextId++;
    connection.inflight.set(id, origin);
    try {
      await client.connect(transport, { timeout: this.options.timeoutMs });
      connection.client = client;
      connection.toolsListed = this.listTools(connection);
      const level = this.levels.get(origin.sessionId);
      if (level && client.getServerCapabilities()?.logging) await client.setLoggingLevel(level);
    } catch (error) {
      await closeUpstreamClient(client);
      throw error;
    } finally {
      connection.inflight.delete(id);
    }
    this.options.log.debug({ connector: this.name, connection: connection.key, pid: connection.pid }, 'agent upstream connection opened');
  }

  /** Everything the upstream sends on this connection goes to the agent sessions it serves. */
  private installRelays(connection: AgentConnection, client: Client): void {
    /** The owning agent session that is still open, most recently active first. */
    const liveChannel = (): AgentChannel | undefined => {
      for (const sessionId of [...connection.sessions].reverse()) {
        const channel = this.options.channel(sessionId);
        if (channel) return channel;
      }
      return undefined;
    };
    const relayRequest = async (request: Request): Promise<Result> => {
      const target = connection.latestCall() ?? liveChannel();
      if (!target) throw new ProtocolError(ProtocolErrorCode.InvalidRequest, `the agent session of this connection to ${this.name} has closed`);
      return target.sendRequest(this.withAgentTaskId(connection, request));
    };
    // Only what this connection declared (the SDK refuses a handler for an undeclared capability).
    const declared = connection.capabilities;
    if (declared.sampling) client.setRequestHandler('sampling/createMessage', (request) => relayRequest(request) as never);
    if (declared.elicitation) client.setRequestHandler('elicitation/create', (request) => relayRequest(request) as never);
    if (declared.roots) client.setRequestHandler('roots/list', (request) => relayRequest(request) as never);
    // An upstream that asks for what was not declared gets a reason, not "Method not found".
    client.fallbackRequestHandler = async (request) => {
      if (!UNDECLARED_REASON[request.method]) throw new ProtocolError(ProtocolErrorCode.MethodNotFound, 'Method not found');
      throw new ProtocolError(ProtocolErrorCode.InvalidRequest, `Bastion cannot relay ${request.method}: ${UNDECLARED_REASON[request.method]}`);
    };

    const toSessions = async (notification: Notification, sessionIds: Iterable<string>) => {
      for (const sessionId of sessionIds) await this.options.channel(sessionId)?.sendNotification(notification).catch(() => undefined);
    };
    client.setNotificationHandler('notifications/message', async (notification) => {
      // During a call: on that call's stream, before its result. Otherwise: to the owner's sessions.
      const call = connection.latestCall();
      if (call) await call.sendNotification(notification).catch(() => undefined);
      else await toSessions(notification, connection.sessions);
    });
    // The SDK's own onprogress drops a progress notification that arrives in the
    // same read as the response, so progress is routed by Bastion's own tokens.
    client.setNotificationHandler('notifications/progress', async (notification) => {
      const { progressToken, ...progress } = notification.params;
      connection.progress.get(String(progressToken))?.(progress);
    });
    client.setNotificationHandler('notifications/resources/updated', async (notification) => {
      const subscribers = connection.subscriptions.get(notification.params.uri);
      if (!subscribers) return;
      for (const id of subscribers) connection.streams.get(id)?.(notification.params.uri);
      await toSessions(notification, [...subscribers].filter((id) => !connection.streams.has(id)));
    });
    // A task's status goes to the sessions of the agent that owns the task, under Bastion's id; others are dropped.
    // (The v2 client's typed registry leaves task notifications out, so the handler names its own schema.)
    client.setNotificationHandler('notifications/tasks/status', { params: TaskResultSchema }, async (params) => {
      const ours = this.options.taskIdFor?.(connection.key, params.taskId);
      if (ours) await toSessions({ method: 'notifications/tasks/status', params: { ...params, taskId: ours } }, connection.sessions);
    });
    // A descriptor change in this agent's session: the catalog re-lists (a server-wide change is
    // re-pinned or quarantined there), and this session's own descriptors are read again.
    client.setNotificationHandler('notifications/tools/list_changed', async () => {
      connection.toolsListed = Promise.all([this.options.toolsChanged(), this.listTools(connection)]).then(() => undefined);
      await connection.toolsListed;
    });
    client.setNotificationHandler('notifications/resources/list_changed', async () => {
      await this.refreshResources(connection).catch((error: Error) =>
        this.options.log.debug({ connector: this.name, err: error.message }, 'listing agent session resources failed'),
      );
      await toSessions({ method: 'notifications/resources/list_changed' }, connection.sessions);
    });
  }

  /**
   * A request the upstream ties to one of its tasks (an elicitation delivered through
   * tasks/result) names the task by Bastion's id when it reaches the agent; an upstream id
   * Bastion does not know is left out, never passed on.
   */
  private withAgentTaskId(connection: AgentConnection, request: Request): Request {
    const meta = request.params?._meta as Record<string, unknown> | undefined;
    const related = meta?.[RELATED_TASK] as { taskId?: unknown } | undefined;
    if (!meta || !related) return request;
    const { [RELATED_TASK]: _upstream, ...rest } = meta;
    const ours = typeof related.taskId === 'string' ? this.options.taskIdFor?.(connection.key, related.taskId) : undefined;
    return { ...request, params: { ...request.params, _meta: ours ? { ...rest, [RELATED_TASK]: { taskId: ours } } : rest } };
  }

  /**
   * The catalog's tools changed: every connection reads its own list again. A 2026-07-28
   * upstream announces changes only on the catalog's listen stream, not to each connection.
   */
  relistTools(): void {
    for (const connection of this.connections.values()) {
      if (connection.client) connection.toolsListed = this.listTools(connection);
    }
  }

  /** Re-reads the tool descriptors this agent's upstream session lists (compared with the catalog's at each call). */
  private async listTools(connection: AgentConnection): Promise<void> {
    const client = connection.client;
    if (!client?.getServerCapabilities()?.tools) return;
    const tools = new Map<string, string | undefined>();
    let cursor: string | undefined;
    try {
      for (let pages = 0; pages < 100; pages++) {
        const page = await client.listTools(cursor ? { cursor } : {});
        for (const tool of page.tools) tools.set(tool.name, canonicalize(tool));
        if (!page.nextCursor) break;
        cursor = page.nextCursor;
      }
    } catch (error) {
      // Unknown descriptors: every call on this connection is refused until a listing succeeds.
      this.options.log.warn({ connector: this.name, err: (error as Error).message }, 'listing an agent session\'s tools failed');
      connection.tools = 'unknown';
      return;
    }
    connection.tools = tools;
  }

  /** Re-reads the resources this agent's upstream session lists (its session resources among them). */
  private async refreshResources(connection: AgentConnection): Promise<void> {
    const client = connection.client;
    if (!client?.getServerCapabilities()?.resources) return;
    const uris = new Map<string, Resource>();
    let cursor: string | undefined;
    for (let pages = 0; pages < 100; pages++) {
      const page = await client.listResources(cursor ? { cursor } : {});
      for (const resource of page.resources) uris.set(resource.uri, resource);
      if (!page.nextCursor) break;
      cursor = page.nextCursor;
    }
    connection.resources = uris;
  }

  /** Whether the upstream session of `origin` lists `uri` (a resource it made for that session). */
  lists(origin: CallOrigin, uri: string): boolean {
    return this.connections.get(this.keyOf(origin))?.resources.has(uri) ?? false;
  }

  /** The resources the open upstream session of `origin` lists (none when it has none open). */
  listed(origin: CallOrigin): Resource[] {
    return [...(this.connections.get(this.keyOf(origin))?.resources.values() ?? [])];
  }

  /**
   * The names of the tools the agent's own upstream session lists, when they may differ from the
   * catalog's: a server may offer tools by the client's capabilities (server-everything offers
   * get-roots-list only to a client with roots), and the catalog connection declares all Bastion
   * relays. undefined: the catalog's list holds (the agent declared what the catalog did, or its
   * own session's list is unknown). Opens the agent's connection if needed (within bounds).
   */
  async toolNames(origin: CallOrigin): Promise<Set<string> | undefined> {
    if (canonicalize(this.capabilitiesOf(origin)) === RELAYABLE_FORM) return undefined;
    return this.run(origin, async (_client, connection) => {
      await connection.toolsListed;
      return connection.tools === 'unknown' ? undefined : new Set(connection.tools.keys());
    });
  }

  /** Runs `operation` on the agent's own connection, with `origin` receiving what the upstream sends meanwhile. */
  async run<T>(origin: CallOrigin, operation: (client: Client, connection: AgentConnection) => Promise<T>): Promise<T> {
    const connection = await this.acquire(origin);
    const client = connection.client;
    if (!client || connection.closed) throw new SdkError(SdkErrorCode.ConnectionClosed, `the connection to ${this.name} closed`);
    const id = this.nextId++;
    connection.inflight.set(id, origin);
    clearTimeout(connection.idleTimer);
    try {
      return await operation(client, connection);
    } finally {
      connection.inflight.delete(id);
      this.armIdle(connection);
    }
  }

  /** Calls an upstream tool by its upstream (un-namespaced) name on the agent's own connection. */
  callTool(origin: CallOrigin, name: string, args: Record<string, unknown>, options: ToolCallOptions): Promise<CallToolResult | UpstreamInputRequired> {
    return this.run(origin, async (client, connection) => {
      await connection.toolsListed;
      this.checkDescriptor(connection, name);
      const token = options.onprogress ? `bastion-${this.nextId++}` : undefined;
      if (token) connection.progress.set(token, options.onprogress!);
      // Manual multi-round-trip only where both sides speak 2026-07-28; otherwise the SDK fulfils
      // input_required itself through the relay handlers (to a 2025 agent's session).
      const manual = options.inputRequired && client.getProtocolEra() === 'modern' ? options.inputRequired : undefined;
      try {
        const params = {
          name,
          arguments: args,
          // The agent's own declared capabilities ride in place of Bastion's, so the upstream asks only for input the agent can give.
          ...(token || manual?.clientCapabilities
            ? { _meta: { ...(token ? { progressToken: token } : {}), ...(manual?.clientCapabilities ? { [CLIENT_CAPABILITIES_META_KEY]: manual.clientCapabilities } : {}) } }
            : {}),
          ...(manual?.inputResponses ? { inputResponses: manual.inputResponses } : {}),
          ...(manual?.requestState !== undefined ? { requestState: manual.requestState } : {}),
        };
        const requestOptions = { timeout: this.options.timeoutMs, ...(options.signal ? { signal: options.signal } : {}) };
        if (options.viaTask) return await this.runAsTask(client, name, params, options.signal);
        if (!manual) return (await client.callTool(params, requestOptions)) as CallToolResult;
        // client.callTool refuses an input_required answer from a tool with an output schema (it
        // finds no structured content), so manual rounds go through request() and the final
        // result is checked against the output schema here, as callTool would.
        const answer = (await client.request({ method: 'tools/call', params }, { ...requestOptions, allowInputRequired: true })) as CallToolResult | UpstreamInputRequired;
        if (!isInputRequired(answer)) checkStructured(this.options.catalogTool(name), name, answer);
        return answer;
      } finally {
        if (token) connection.progress.delete(token);
      }
    });
  }

  /**
   * A task-augmented `tools/call` on the agent's own connection (policy and approval already
   * passed): the upstream's task, and the key of the connection that holds it.
   */
  createTask(origin: CallOrigin, name: string, args: Record<string, unknown>, task: { ttl?: number }, holdMaxMs: number, signal?: AbortSignal): Promise<CreatedTask> {
    return this.run(origin, async (client, connection) => {
      await connection.toolsListed;
      this.checkDescriptor(connection, name);
      const created = await client.request(
        { method: 'tools/call', params: { name, arguments: args, task } },
        CreateTaskResultSchema,
        { timeout: this.options.timeoutMs, ...(signal ? { signal } : {}) },
      );
      // Held open (not idle) while the task may live: its ttl, capped where Bastion's task table drops it.
      connection.tasksUntil = Math.max(connection.tasksUntil, Date.now() + Math.min(created.task.ttl ?? holdMaxMs, holdMaxMs));
      return { task: created.task, connection: connection.key };
    });
  }

  /**
   * A tasks/* request about a task held by connection `key`, with `origin` receiving what the
   * upstream sends meanwhile (an elicitation delivered through tasks/result). Never opens a
   * connection: a new one would not hold the task.
   */
  async onTaskConnection<T>(key: string, origin: CallOrigin, operation: (client: Client) => Promise<T>): Promise<T> {
    const connection = this.connections.get(key);
    if (!connection || connection.closed) throw new TaskConnectionGone(`the upstream connection that held this task (${this.name}) has closed`);
    await connection.ready;
    const client = connection.client;
    if (!client) throw new TaskConnectionGone(`the upstream connection that held this task (${this.name}) has closed`);
    const id = this.nextId++;
    connection.inflight.set(id, origin);
    clearTimeout(connection.idleTimer);
    try {
      return await operation(client);
    } finally {
      connection.inflight.delete(id);
      this.armIdle(connection);
    }
  }

  /**
   * A tool that requires task augmentation, for an agent that did not ask for a task: the task
   * is created here and polled (tasks/get, at the upstream's pollInterval) until it ends or asks
   * for input, then its result fetched (tasks/result, which also carries the upstream's requests
   * to the agent). The agent cancelling the call cancels the task (tasks/cancel).
   */
  private async runAsTask(client: Client, name: string, params: Record<string, unknown>, signal: AbortSignal | undefined): Promise<CallToolResult> {
    const requestOptions = { timeout: this.options.timeoutMs, ...(signal ? { signal } : {}) };
    const created = await client.request({ method: 'tools/call', params: { ...params, task: {} } }, CreateTaskResultSchema, requestOptions);
    const taskId = created.task.taskId;
    let task: UpstreamTask = created.task;
    try {
      while (!isTerminal(task.status) && task.status !== 'input_required') {
        await pause(Math.min(Math.max(task.pollInterval ?? POLL.defaultMs, POLL.minMs), POLL.maxMs), signal);
        if (signal?.aborted) throw new SdkError(SdkErrorCode.RequestTimeout, 'the agent cancelled the call');
        task = await client.request({ method: 'tasks/get', params: { taskId } }, TaskResultSchema, requestOptions);
      }
      // It may still ask the agent for input (input_required) and wait for it: as long as the task may live.
      const waitOptions = { ...requestOptions, timeout: Math.max(this.options.timeoutMs, Math.min(created.task.ttl ?? 0, POLL.waitMaxMs)) };
      const result = (await client.request({ method: 'tasks/result', params: { taskId } }, TaskPayloadSchema, waitOptions)) as CallToolResult;
      if (!Array.isArray(result.content)) throw new ProtocolError(ProtocolErrorCode.InvalidRequest, `the result of task-run tool ${name} is not a tool result (no content)`);
      checkStructured(this.options.catalogTool(name), name, result);
      // The agent made no task: the upstream's task reference is not its to see.
      if (!result._meta || !(RELATED_TASK in result._meta)) return result;
      const { [RELATED_TASK]: _related, ...meta } = result._meta;
      const { _meta: _dropped, ...rest } = result;
      return Object.keys(meta).length ? { ...rest, _meta: meta } : rest;
    } finally {
      if (signal?.aborted && !isTerminal(task.status)) {
        await client.request({ method: 'tasks/cancel', params: { taskId } }, TaskResultSchema, { timeout: this.options.timeoutMs }).catch(() => undefined);
      }
    }
  }

  /**
   * The agent saw (and policy and pins judged) the catalog's descriptor: a tool whose
   * descriptor in this agent's own upstream session differs is refused for this session.
   */
  private checkDescriptor(connection: AgentConnection, name: string): void {
    if (connection.tools === 'unknown') {
      throw new Denial('resolve', 'BASTION_TOOL_QUARANTINED', `the tools of ${this.name} in this agent's upstream session could not be listed, so ${name} cannot be checked against its pin`);
    }
    const catalog = this.options.catalogTool(name);
    const own = connection.tools.get(name);
    // Not listed (yet: a server may add tools once initialized) is the upstream's to answer; a different descriptor is not.
    if (!connection.tools.has(name) || (catalog && own !== undefined && own === catalogForm(catalog))) return;
    throw new Denial(
      'resolve',
      'BASTION_TOOL_QUARANTINED',
      `tool ${name} of ${this.name} has a different descriptor in this agent's upstream session than the one pinned; refused for this session`,
    );
  }

  /** Subscribes the agent's own upstream session; updates then reach only the sessions subscribed. */
  async subscribe(origin: CallOrigin, uri: string): Promise<void> {
    await this.run(origin, async (client, connection) => {
      // Updates go to sessions, or to a listen stream; a plain request has nowhere to receive them.
      if (origin.stateless && !origin.updates) throw new ProtocolError(ProtocolErrorCode.InvalidRequest, 'resources/subscribe needs a session (protocol 2025-11-25)');
      const subscribers = connection.subscriptions.get(uri);
      if (!subscribers) await client.subscribeResource({ uri });
      if (origin.updates) connection.streams.set(origin.sessionId, origin.updates);
      connection.subscriptions.set(uri, (subscribers ?? new Set()).add(origin.sessionId));
    });
  }

  /** Drops the session's subscription; the upstream one ends with its last subscriber. */
  async unsubscribe(origin: CallOrigin, uri: string): Promise<void> {
    const connection = this.connections.get(this.keyOf(origin));
    if (!connection) return;
    await this.dropSubscription(connection, origin.sessionId, uri);
  }

  private async dropSubscription(connection: AgentConnection, sessionId: string, uri: string): Promise<void> {
    const subscribers = connection.subscriptions.get(uri);
    if (![...connection.subscriptions.values()].some((ids) => ids !== subscribers && ids.has(sessionId))) connection.streams.delete(sessionId);
    if (!subscribers?.delete(sessionId) || subscribers.size > 0) return;
    connection.subscriptions.delete(uri);
    await connection.client?.unsubscribeResource({ uri }).catch(() => undefined);
    this.armIdle(connection);
  }

  /**
   * Sets the agent session's log level on its open connections here; a
   * connection opened later starts at it. Opens nothing by itself.
   */
  async setLoggingLevel(origin: CallOrigin, level: LoggingLevel): Promise<void> {
    if (!origin.stateless) this.levels.set(origin.sessionId, level);
    const connection = this.connections.get(this.keyOf(origin));
    if (!connection?.client?.getServerCapabilities()?.logging) return;
    if (!origin.stateless) connection.touch(origin.sessionId);
    await connection.client.setLoggingLevel(level);
  }

  /** The agent's roots changed: tell its own upstream sessions here. */
  async rootsChanged(sessionId: string): Promise<void> {
    for (const connection of this.connections.values()) {
      if (connection.sessions.has(sessionId)) await connection.client?.sendRootsListChanged().catch(() => undefined);
    }
  }

  /** The agent session closed: its connection closes (mode `principal`: with the principal's last session). */
  async release(sessionId: string): Promise<void> {
    this.levels.delete(sessionId);
    const closing: Promise<void>[] = [];
    for (const connection of [...this.connections.values()]) {
      if (!connection.sessions.has(sessionId)) continue;
      connection.sessions.delete(sessionId);
      for (const uri of [...connection.subscriptions.keys()]) await this.dropSubscription(connection, sessionId, uri);
      if (connection.sessions.size === 0) closing.push(this.close(connection, 'agent session closed'));
    }
    await Promise.all(closing);
  }

  /** Closes every agent connection (the broker stops). */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.connections.values()].map((c) => this.close(c, 'connector stopped')));
    await Promise.all([...this.closings]);
  }

  private armIdle(connection: AgentConnection, after = this.options.isolation.idle): void {
    clearTimeout(connection.idleTimer);
    if (connection.closed || connection.busy) return;
    connection.idleTimer = setTimeout(() => {
      if (connection.busy) return;
      // Tasks it holds would die with it: it stays open (not idle) until the last of them may have expired.
      const holding = connection.tasksUntil - Date.now();
      if (holding > 0) this.armIdle(connection, holding);
      else void this.close(connection, 'idle');
    }, after);
    connection.idleTimer.unref();
  }

  private forget(connection: AgentConnection): void {
    connection.closed = true;
    clearTimeout(connection.idleTimer);
    if (this.connections.get(connection.key) === connection) this.connections.delete(connection.key);
  }

  private close(connection: AgentConnection, why: string): Promise<void> {
    if (connection.closed) return Promise.resolve();
    this.forget(connection);
    this.options.log.debug({ connector: this.name, connection: connection.key, why }, 'agent upstream connection closing');
    // A connection still opening is closed once it is open (or failed).
    const closing = connection.ready.catch(() => undefined).then(() => closeUpstreamClient(connection.client));
    this.closings.add(closing);
    void closing.finally(() => this.closings.delete(closing));
    return closing;
  }
}
