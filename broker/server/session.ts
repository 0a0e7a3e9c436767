/**
 * One agent's MCP server: the SDK's low-level Server with Bastion's
 * handlers. Every request resolves the caller's Principal first, so a
 * session never outlives the authority of the token that drives it.
 *
 * The same server serves both protocol eras: a 2025-11-25 session (one
 * instance per `initialize`, registered in broker.sessions for list_changed
 * fan-out) and a single 2026-07-28 request (one instance per request, built
 * by the SDK's per-request entry, never registered). What a 2026 client sees
 * of the server itself (`server/discover`) is filtered for its principal, as
 * `tools/list` is.
 *
 * @example
 *   const server = createAgentServer(broker, { id, transport: 'http', principal });
 *   await server.connect(transport);
 */
import { CLIENT_CAPABILITIES_META_KEY, LOG_LEVEL_META_KEY, PROTOCOL_VERSION_META_KEY, SERVER_INFO_META_KEY, Server, ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/server';
import type { CacheHint, ClientCapabilities, GetPromptResult, JSONRPCRequest, LoggingLevel, ReadResourceResult, Request, RequestMethod, Result, ServerCapabilities, ServerContext, ServerNotification, Tool } from '@modelcontextprotocol/server';
import { z } from 'zod';
import type { Principal } from '../auth/verify.ts';
import { Denial } from '../errors.ts';
import { denialResult, type CallContext } from '../pipeline.ts';
import type { Broker } from '../broker.ts';
import { linearSchemaValidator } from '../../sandboxes/schema-patterns.ts';
import { isInputRequired, relayedCapabilities, type AgentChannel, type CallOrigin, type Connector, type UpstreamInputRequired } from '../../connectors/upstream.ts';
import { MODERN_REVISION } from './eras.ts';
import { advertisedCapabilities, agentInstructions } from './advertised.ts';

export interface SessionBinding {
  id: string;
  transport: 'http' | 'stdio';
  /** The caller of this request; throws a Denial when its token no longer holds. */
  principal: (extra: ServerContext) => Promise<Principal>;
  /**
   * The principal a 2026-07-28 server answers, known when it is built: its `server/discover`
   * advertises only what this principal may see; null (no valid token) sees nothing. Absent for
   * 2025-era sessions, whose `initialize` advertises everything Bastion serves.
   */
  viewer?: Principal | null;
  /** false: a per-request server, not entered in broker.sessions (nothing to fan out to). */
  register?: boolean;
}

export const BASTION_VERSION = '0.1.0';

type Extra = ServerContext;

/**
 * What a 2026-07-28 client may cache (`ttlMs`/`cacheScope` on list and read results, and
 * `server/discover`): every one of these views depends on the principal (policy filters it),
 * so none may sit in a shared cache, and none outlives the request (a revoked grant or a
 * changed policy shows at once).
 */
const PRIVATE: CacheHint = { ttlMs: 0, cacheScope: 'private' };
const CACHE_HINTS = {
  'tools/list': PRIVATE,
  'prompts/list': PRIVATE,
  'resources/list': PRIVATE,
  'resources/templates/list': PRIVATE,
  'resources/read': PRIVATE,
  'server/discover': PRIVATE,
} as const;

/** Where a refusal's details ride on the tool error (pipeline.denialResult). */
const DENIAL_META = 'bastion/denial';

const TaskIdParams = z.looseObject({ taskId: z.string().max(256) });
const TaskListParams = z.looseObject({ cursor: z.string().optional() });

type Handler = (request: JSONRPCRequest, ctx: ServerContext) => Promise<Result>;

/** A 2025-11-25 task-augmented request (`params.task` an object). */
function asksForTask(request: JSONRPCRequest): boolean {
  const task = (request.params as { task?: unknown } | undefined)?.task;
  return task !== null && typeof task === 'object';
}

/**
 * The capabilities a per-request server advertises: only the kinds of things its principal may see.
 * And tools/call may answer a task: the SDK's own tools/call wrapper (its documented
 * `_wrapHandler` hook) checks every answer against CallToolResult, which a CreateTaskResult
 * (no `content`, a `task`) fails, so a task-augmented call's CreateTaskResult passes as
 * Bastion built it; anything else it answers is still checked by the SDK.
 */
class AgentServer extends Server {
  viewCapabilities: (() => ServerCapabilities) | undefined;

  override getCapabilities(): ServerCapabilities {
    return this.viewCapabilities ? this.viewCapabilities() : super.getCapabilities();
  }

  protected override _wrapHandler(method: string, handler: Handler): Handler {
    const own: Handler = async (request, ctx) => withoutUpstreamIdentity(await handler(request, ctx));
    const checked = super._wrapHandler(method, own);
    if (method !== 'tools/call') return checked;
    return async (request, ctx) => {
      if (!asksForTask(request)) return checked(request, ctx);
      const result = await own(request, ctx);
      if ('task' in result && !('content' in result)) return result;
      return super._wrapHandler(method, async () => result)(request, ctx);
    };
  }
}

/**
 * Bastion answers as itself: a relayed upstream result may carry the upstream's identity stamp
 * (`_meta["io.modelcontextprotocol/serverInfo"]`, 2026-07-28), which would name the server behind
 * Bastion to the agent and keep the SDK from stamping Bastion's own. It is dropped here; nothing
 * Bastion builds carries one.
 */
function withoutUpstreamIdentity(result: Result): Result {
  const meta = result._meta;
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta) || !Object.hasOwn(meta, SERVER_INFO_META_KEY)) return result;
  const { [SERVER_INFO_META_KEY]: _upstream, ...rest } = meta as Record<string, unknown>;
  const { _meta: _dropped, ...bare } = result;
  return Object.keys(rest).length > 0 ? { ...bare, _meta: rest } : bare;
}

/** RFC 5424 severities, lowest first, as MCP's LoggingLevel lists them. */
const LOG_LEVELS: readonly LoggingLevel[] = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];

/**
 * Whether a relayed notification may reach this request's agent. A 2026-07-28 request gets
 * log messages only at or above the `logLevel` its envelope names, and none without one
 * (a 2025-era upstream logs by its session's level, which a 2026 agent never set).
 */
function relays(extra: Extra, protocol: string | undefined, notification: { method: string; params?: unknown }): boolean {
  if (protocol !== MODERN_REVISION || notification.method !== 'notifications/message') return true;
  const threshold = (extra.mcpReq.envelope as Record<string, unknown> | undefined)?.[LOG_LEVEL_META_KEY];
  const level = (notification.params as { level?: unknown } | undefined)?.level;
  const at = (value: unknown) => LOG_LEVELS.indexOf(value as LoggingLevel);
  return at(threshold) >= 0 && at(level) >= at(threshold);
}

/** A request's params with what a multi-round-trip leg forwards: the agent's answers, the upstream's own state, the agent's declared capabilities. */
function withForward<P extends { _meta?: Record<string, unknown> }>(params: P, forward: { inputResponses?: Record<string, unknown>; requestState?: string; clientCapabilities?: ClientCapabilities }): P {
  const { _meta, ...rest } = params;
  const meta = { ...(_meta ?? {}), ...(forward.clientCapabilities ? { [CLIENT_CAPABILITIES_META_KEY]: forward.clientCapabilities } : {}) };
  return {
    ...rest,
    ...(Object.keys(meta).length ? { _meta: meta } : {}),
    ...(forward.inputResponses ? { inputResponses: forward.inputResponses } : {}),
    ...(forward.requestState !== undefined ? { requestState: forward.requestState } : {}),
  } as P;
}

function originOf(session: SessionBinding, server: Server, extra: Extra, principal: Principal, protocol: string | undefined): CallOrigin {
  return {
    sessionId: session.id,
    // What the agent declared (its initialize, or this 2026-07-28 request's envelope, as the SDK
    // seeded it): its upstream connections declare the part Bastion relays, no more.
    capabilities: server.getClientCapabilities() ?? {},
    // Upstream connections are keyed by who asks: the session, or (isolation: principal) this.
    owner: { iss: principal.iss, sub: principal.sub },
    // A 2026-07-28 request has no session to own an upstream connection: its principal does.
    ...(session.register === false ? { stateless: true } : {}),
    // Relayed requests are spec methods (sampling, elicitation, roots): the SDK validates each
    // result against the spec's schema for its method. A 2026-07-28 agent has no channel for
    // them: a 2025-era upstream asking mid-call is refused, clearly (README "multi-round-trip").
    sendRequest: (request: Request) =>
      protocol === MODERN_REVISION
        ? Promise.reject(
            new ProtocolError(
              ProtocolErrorCode.InvalidRequest,
              `Bastion cannot relay ${request.method}: the calling agent speaks ${MODERN_REVISION}, which has no server-to-client requests, and this upstream asked mid-call (2025-11-25); configure the connector with protocol 2026-07-28 or auto if the upstream supports it`,
            ),
          )
        : extra.mcpReq.send(request as { method: RequestMethod; params?: Record<string, unknown> }),
    sendNotification: async (notification) => {
      if (relays(extra, protocol, notification)) await extra.mcpReq.notify(notification as ServerNotification);
    },
  };
}

/** The revision a request speaks: its own envelope's (2026-07-28), or its session's negotiated one. */
function protocolOf(server: Server, extra: Extra): string | undefined {
  const claimed = (extra.mcpReq.envelope as Record<string, unknown> | undefined)?.[PROTOCOL_VERSION_META_KEY];
  return typeof claimed === 'string' ? claimed : server.getNegotiatedProtocolVersion();
}

function callContext(session: SessionBinding, server: Server, extra: Extra, principal: Principal, progressToken?: string | number): CallContext {
  const protocol = protocolOf(server, extra);
  // A 2026-07-28 retry's multi-round-trip fields (the SDK lifts them off the params); untrusted until the pipeline opens them.
  const requestState = protocol === MODERN_REVISION ? extra.mcpReq.requestState() : undefined;
  const inputResponses = protocol === MODERN_REVISION ? extra.mcpReq.inputResponses : undefined;
  const origin = originOf(session, server, extra, principal, protocol);
  return {
    ...(typeof requestState === 'string' || inputResponses
      ? { continuation: { ...(inputResponses ? { inputResponses } : {}), ...(typeof requestState === 'string' ? { requestState } : {}) } }
      : {}),
    session: session.id,
    transport: session.transport,
    ...(protocol !== undefined ? { protocol } : {}),
    origin,
    // What this 2026-07-28 request can answer (sampling, elicitation, roots, as Bastion relays them): an upstream is told only these.
    ...(protocol === MODERN_REVISION ? { clientCapabilities: relayedCapabilities(origin.capabilities ?? {}) } : {}),
    signal: extra.mcpReq.signal,
    ...(progressToken !== undefined ? { progressToken } : {}),
  };
}

/** Turns a Denial into the protocol error for non-tool requests; `about` joins its data (a missing resource's `uri`, as the spec asks). */
function protocolError(error: unknown, about: Record<string, unknown> = {}): never {
  if (error instanceof Denial) {
    const code = error.code === 'BASTION_TOOL_UNKNOWN' ? ProtocolErrorCode.InvalidParams : ProtocolErrorCode.InvalidRequest;
    throw new ProtocolError(code, `Bastion refused this request at the ${error.stage} stage (${error.code}): ${error.reason}`, { ...about, ...error.toJSON() });
  }
  throw error;
}

export function createAgentServer(broker: Broker, session: SessionBinding): Server {
  // Tasks are a 2025-11-25 session feature: a per-request (2026-07-28) server offers none (the SDK has no 2026 tasks extension).
  const { tasks: offeredTasks, ...stateless } = advertisedCapabilities(broker);
  const capabilities: ServerCapabilities = session.register === false || !broker.pipeline.tasks ? stateless : { ...stateless, ...(offeredTasks ? { tasks: offeredTasks } : {}) };
  const server = new AgentServer(
    { name: 'bastion', version: BASTION_VERSION },
    {
      // What the connectors offer, and their instructions (checked, namespaced): see advertised.ts.
      capabilities,
      instructions: agentInstructions(broker.registry.instructions()),
      // Schemas relayed from upstreams are not Bastion's: any the SDK evaluates here runs its patterns on RE2.
      jsonSchemaValidator: linearSchemaValidator,
      cacheHints: CACHE_HINTS,
    },
  );
  const { pipeline, registry } = broker;
  const subscriptions = new Set<string>();
  const viewer = session.viewer;
  if (viewer !== undefined) server.viewCapabilities = () => (viewer ? capabilitiesFor(broker, session, viewer, capabilities) : { logging: {} });

  if (capabilities.tools) {
    server.setRequestHandler('tools/list', async (_request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      return { tools: await ownView(broker, call.origin, pipeline.listTools(principal, call)) };
    });

    server.setRequestHandler('tools/call', async (request, ctx) => {
      let principal: Principal;
      try {
        principal = await session.principal(ctx);
      } catch (error) {
        if (!(error instanceof Denial)) throw error;
        const protocol = protocolOf(server, ctx);
        await pipeline.recordDenial(
          { event: 'tools/call', session: session.id, transport: session.transport, ...(protocol !== undefined ? { protocol } : {}), tool: request.params.name },
          error,
        );
        return denialResult(error);
      }
      const progressToken = request.params._meta?.progressToken;
      const call = callContext(session, server, ctx, principal, progressToken);
      // A 2026-07-28 request over HTTP holds no connection Bastion could wait on: an approval wait
      // answers input_required with a pickup ticket, and the retry echoes it (SDK-lifted requestState).
      const requestState = ctx.mcpReq.requestState();
      if (session.register === false && session.transport === 'http' && protocolOf(server, ctx) === MODERN_REVISION) {
        call.pickup = { holdMs: broker.config.approvals.pickup_hold, ...(requestState !== undefined ? { state: requestState } : {}) };
      }
      // A 2025-11-25 task-augmented call, where Bastion offers tasks (a server that offers none ignores the field, as the spec says).
      const task = request.params.task;
      if (task && capabilities.tasks && call.protocol !== MODERN_REVISION) call.task = task.ttl !== undefined ? { ttl: task.ttl } : {};
      const result = await pipeline.callTool(principal, call, request.params.name, request.params.arguments ?? {});
      // A client that asked for a task reads a CreateTaskResult or an error: a refusal (no task was made) is a JSON-RPC error.
      const refusal = call.task && 'content' in result ? ((result._meta as Record<string, unknown> | undefined)?.[DENIAL_META] as ReturnType<Denial['toJSON']> | undefined) : undefined;
      if (refusal) throw new ProtocolError(ProtocolErrorCode.InvalidRequest, `Bastion refused this call at the ${refusal.stage} stage (${refusal.code}): ${refusal.reason}; no task was created`, refusal);
      return result as never;
    });
  }

  const relay = pipeline.tasks;
  if (capabilities.tasks && relay) {
    // Every one names a task by Bastion's id, and answers only the principal that made it (broker/tasks/relay.ts).
    // The v2 SDK's typed registry leaves tasks/* out, so each handler names its params' schema.
    for (const method of ['tasks/get', 'tasks/result', 'tasks/cancel'] as const) {
      server.setRequestHandler(method, { params: TaskIdParams }, async (params, ctx) => {
        const principal = await session.principal(ctx).catch(protocolError);
        return relay.request(principal, callContext(session, server, ctx, principal), method, params.taskId);
      });
    }
    server.setRequestHandler('tasks/list', { params: TaskListParams }, async (_params, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      return (await relay.list(principal, callContext(session, server, ctx, principal))) as never;
    });
  }

  if (capabilities.prompts) {
    server.setRequestHandler('prompts/list', async (_request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      const prompts = [...registry.prompts().values()]
        .filter((p) => pipeline.mayUse(principal, call, 'prompt', p.exposedName, p.connector.name))
        .map((p) => p.descriptor);
      return { prompts };
    });

    server.setRequestHandler('prompts/get', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      try {
        const entry = registry.resolvePrompt(request.params.name);
        pipeline.authorizeItem(principal, call, 'prompt', entry.exposedName, entry.connector.name);
        const params = { ...request.params, name: entry.upstreamName };
        const item = { method: 'prompts/get' as const, name: entry.exposedName, connector: entry.connector.name, arguments: request.params.arguments ?? {} };
        const prompt = await pipeline.itemRound(principal, call, item, (forward) =>
          entry.connector.withOrigin(call.origin, (client) =>
            call.protocol === MODERN_REVISION && client.getProtocolEra() === 'modern'
              ? (client.request({ method: 'prompts/get', params: withForward(params, forward) }, { signal: ctx.mcpReq.signal, allowInputRequired: true }) as Promise<GetPromptResult | UpstreamInputRequired>)
              : client.getPrompt(params, { signal: ctx.mcpReq.signal }),
          ),
        );
        if (isInputRequired(prompt)) return prompt as never;
        // What it brings into the agent's flow is recorded before the agent sees it.
        await pipeline.recordItemFlow(principal, 'prompt', entry.exposedName, entry.connector.config.labels.prompts, prompt);
        return prompt;
      } catch (error) {
        return protocolError(error);
      }
    });
  }


  /** Finds the connector for a URI (in the catalog, or made for this agent's own upstream session) and checks this principal may use it. */
  const authorizedResource = (principal: Principal, call: CallContext, uri: string) => {
    let connector: Connector;
    try {
      connector = registry.resolveResource(uri);
    } catch (error) {
      const own = broker.connectors.filter((c) => c.listsForAgent(call.origin, uri));
      if (own.length !== 1) throw error;
      connector = own[0]!;
    }
    pipeline.authorizeItem(principal, call, 'resource', uri, connector.name);
    return connector;
  };

  if (capabilities.resources) {
    server.setRequestHandler('resources/list', async (_request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      const resources = registry
        .resources()
        .filter(({ resource, connector }) => pipeline.mayUse(principal, call, 'resource', resource.uri, connector.name))
        .map(({ resource }) => resource);
      // And what the agent's own upstream sessions list for it alone (session resources), as a direct
      // client would see them; a URI two of them list is left out, as resources/read refuses it.
      const own = registry.connectorsWith('resources').flatMap((connector) => connector.resourcesForAgent(call.origin).map((resource) => ({ resource, connector })));
      const listed = new Set(resources.map((r) => r.uri));
      for (const { resource, connector } of own) {
        if (listed.has(resource.uri) || own.filter((o) => o.resource.uri === resource.uri).length > 1) continue;
        if (pipeline.mayUse(principal, call, 'resource', resource.uri, connector.name)) resources.push(resource);
      }
      return { resources };
    });

    server.setRequestHandler('resources/templates/list', async (_request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      const resourceTemplates = registry
        .resourceTemplates()
        .filter(({ template, connector }) => pipeline.mayUse(principal, call, 'resource', template.uriTemplate, connector.name))
        .map(({ template }) => template);
      return { resourceTemplates };
    });

    server.setRequestHandler('resources/read', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      try {
        const connector = authorizedResource(principal, call, request.params.uri);
        const item = { method: 'resources/read' as const, name: request.params.uri, connector: connector.name, arguments: {} };
        const contents = await pipeline.itemRound(principal, call, item, (forward) =>
          connector.withOrigin(call.origin, (client) =>
            call.protocol === MODERN_REVISION && client.getProtocolEra() === 'modern'
              ? (client.request({ method: 'resources/read', params: withForward(request.params, forward) }, { signal: ctx.mcpReq.signal, allowInputRequired: true }) as Promise<ReadResourceResult | UpstreamInputRequired>)
              : client.readResource(request.params, { signal: ctx.mcpReq.signal }),
          ),
        );
        if (isInputRequired(contents)) return contents as never;
        await pipeline.recordItemFlow(principal, 'resource', request.params.uri, connector.config.labels.resources, contents);
        return contents;
      } catch (error) {
        return protocolError(error, { uri: request.params.uri });
      }
    });

    server.setRequestHandler('resources/subscribe', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      try {
        const connector = authorizedResource(principal, call, request.params.uri);
        await connector.subscribe(call.origin, request.params.uri);
        subscriptions.add(request.params.uri);
        return {};
      } catch (error) {
        return protocolError(error);
      }
    });

    server.setRequestHandler('resources/unsubscribe', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      subscriptions.delete(request.params.uri);
      // Only this agent's own upstream subscriptions are dropped.
      await Promise.all(broker.connectors.map((c) => c.unsubscribe(call.origin, request.params.uri).catch(() => undefined)));
      return {};
    });
  }

  if (capabilities.completions) {
    server.setRequestHandler('completion/complete', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      try {
        const ref = request.params.ref;
        if (ref.type === 'ref/prompt') {
          const entry = registry.resolvePrompt(ref.name);
          pipeline.authorizeItem(principal, call, 'prompt', entry.exposedName, entry.connector.name);
          return await entry.connector.withOrigin(call.origin, (client) =>
            client.complete({ ...request.params, ref: { ...ref, name: entry.upstreamName } }, { signal: ctx.mcpReq.signal }),
          );
        }
        const connector = authorizedResource(principal, call, ref.uri);
        return await connector.withOrigin(call.origin, (client) => client.complete(request.params, { signal: ctx.mcpReq.signal }));
      } catch (error) {
        return protocolError(error);
      }
    });
  }

  if (capabilities.logging) {
    server.setRequestHandler('logging/setLevel', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, server, ctx, principal);
      // This agent's own upstream connections only, now and as they open; never another agent's.
      for (const connector of registry.connectorsWith('logging')) {
        await connector.setLoggingLevel(call.origin, request.params.level).catch(() => undefined);
      }
      return {};
    });
  }

  // The agent's roots changed: its own upstream sessions ask again.
  server.setNotificationHandler('notifications/roots/list_changed', async () => {
    await Promise.all(broker.connectors.map((c) => c.rootsChanged(session.id)));
  });

  if (session.register !== false) {
    const channel: AgentChannel = {
      sendRequest: (request) => server.request(request as { method: RequestMethod; params?: Record<string, unknown> }),
      sendNotification: (notification) => server.notification(notification as ServerNotification),
    };
    broker.sessions.add(session.id, { server, subscriptions, channel });
    server.onclose = () => broker.sessions.remove(session.id);
  }
  return server;
}

/**
 * `tools/list` as the agent's own upstream sessions offer it: a server may list tools by the
 * client's capabilities, and the catalog connection declares all Bastion relays. A connector whose
 * agent-side list cannot be had (down, bounds) keeps the catalog's view; the call is then refused
 * or answered upstream as before.
 */
async function ownView(broker: Broker, origin: CallOrigin, tools: Tool[]): Promise<Tool[]> {
  const entries = broker.registry.tools();
  const names = new Map<Connector, Set<string> | undefined>();
  for (const connector of broker.connectors) {
    if (!tools.some((tool) => entries.get(tool.name)?.connector === connector)) continue;
    names.set(
      connector,
      await connector.toolsForAgent(origin).catch((error: Error) => {
        broker.log.debug({ connector: connector.name, err: error.message }, "the agent's own tool list was not available; the catalog's is shown");
        return undefined;
      }),
    );
  }
  return tools.filter((tool) => {
    const entry = entries.get(tool.name);
    const own = entry ? names.get(entry.connector as Connector) : undefined;
    return !own || own.has(entry!.upstreamName);
  });
}

/**
 * The capabilities one principal's `server/discover` shows: tools, prompts and resources
 * only when policy lets it see at least one of each (completions with either of the
 * latter two), so discovery tells an agent no more than `tools/list` would.
 */
function capabilitiesFor(broker: Broker, session: SessionBinding, principal: Principal, offered: ServerCapabilities): ServerCapabilities {
  const { pipeline, registry } = broker;
  const call: CallContext = { session: session.id, transport: session.transport, origin: REFUSING_ORIGIN };
  const tools = offered.tools !== undefined && pipeline.listTools(principal, call).length > 0;
  const prompts = offered.prompts !== undefined && [...registry.prompts().values()].some((p) => pipeline.mayUse(principal, call, 'prompt', p.exposedName, p.connector.name));
  const resources =
    offered.resources !== undefined &&
    (registry.resources().some(({ resource, connector }) => pipeline.mayUse(principal, call, 'resource', resource.uri, connector.name)) ||
      registry.resourceTemplates().some(({ template, connector }) => pipeline.mayUse(principal, call, 'resource', template.uriTemplate, connector.name)));
  // Only what the connectors offer (advertised.ts), narrowed to what this principal may see.
  // `resources.subscribe`: updates come on subscriptions/listen streams, per principal, over HTTP
  // (listen.ts); `bastion stdio` does not relay them to a 2026 client yet, so it does not offer them.
  const { subscribe: _stdioSubscribe, ...withoutSubscribe } = offered.resources ?? {};
  const resourceOffer = session.transport === 'stdio' ? withoutSubscribe : offered.resources;
  return {
    ...(tools ? { tools: offered.tools } : {}),
    ...(resources ? { resources: resourceOffer } : {}),
    ...(prompts ? { prompts: offered.prompts } : {}),
    ...((prompts || resources) && offered.completions ? { completions: {} } : {}),
    ...(offered.logging ? { logging: {} } : {}),
  };
}

/** Listing relays nothing to the agent; an origin that refuses keeps it that way. */
const REFUSING_ORIGIN: CallOrigin = {
  sessionId: 'discover',
  // Never used to open an upstream connection: listing reads the catalog only.
  owner: { iss: '', sub: '' },
  stateless: true,
  sendRequest: async () => {
    throw new Error('nothing is relayed while listing');
  },
  sendNotification: async () => undefined,
};
