/**
 * One agent session's MCP server: the SDK's low-level Server with Bastion's
 * handlers. Every request resolves the caller's Principal first, so a
 * session never outlives the authority of the token that drives it.
 *
 * @example
 *   const server = createAgentServer(broker, { id, transport: 'http', principal });
 *   await server.connect(transport);
 */
import { Server, ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/server';
import type { Request, RequestMethod, ServerNotification, ServerContext } from '@modelcontextprotocol/server';
import type { Principal } from '../auth/verify.ts';
import { Denial } from '../errors.ts';
import { denialResult, type CallContext } from '../pipeline.ts';
import type { Broker } from '../broker.ts';
import { linearSchemaValidator } from '../../sandboxes/schema-patterns.ts';
import type { AgentChannel, CallOrigin, Connector } from '../../connectors/upstream.ts';

export interface SessionBinding {
  id: string;
  transport: 'http' | 'stdio';
  /** The caller of this request; throws a Denial when its token no longer holds. */
  principal: (extra: ServerContext) => Promise<Principal>;
}

export const BASTION_VERSION = '0.1.0';

type Extra = ServerContext;

function originOf(session: SessionBinding, extra: Extra, principal: Principal): CallOrigin {
  return {
    sessionId: session.id,
    // Upstream connections are keyed by who asks: the session, or (isolation: principal) this.
    owner: { iss: principal.iss, sub: principal.sub },
    // Relayed requests are spec methods (sampling, elicitation, roots): the SDK validates each
    // result against the spec's schema for its method.
    sendRequest: (request: Request) => extra.mcpReq.send(request as { method: RequestMethod; params?: Record<string, unknown> }),
    sendNotification: (notification) => extra.mcpReq.notify(notification as ServerNotification),
  };
}

function callContext(session: SessionBinding, extra: Extra, principal: Principal, progressToken?: string | number): CallContext {
  return {
    session: session.id,
    transport: session.transport,
    origin: originOf(session, extra, principal),
    signal: extra.mcpReq.signal,
    ...(progressToken !== undefined ? { progressToken } : {}),
  };
}

/** Turns a Denial into the protocol error for non-tool requests. */
function protocolError(error: unknown): never {
  if (error instanceof Denial) {
    const code = error.code === 'BASTION_TOOL_UNKNOWN' ? ProtocolErrorCode.InvalidParams : ProtocolErrorCode.InvalidRequest;
    throw new ProtocolError(code, `Bastion refused this request at the ${error.stage} stage (${error.code}): ${error.reason}`, error.toJSON());
  }
  throw error;
}

export function createAgentServer(broker: Broker, session: SessionBinding): Server {
  const server = new Server(
    { name: 'bastion', version: BASTION_VERSION },
    {
      capabilities: {
        tools: { listChanged: true },
        resources: { subscribe: true, listChanged: true },
        prompts: { listChanged: true },
        logging: {},
        completions: {},
      },
      instructions: 'Bastion mediates every tool call: each one is checked against your capability token and policy, and audited.',
      // Schemas relayed from upstreams are not Bastion's: any the SDK evaluates here runs its patterns on RE2.
      jsonSchemaValidator: linearSchemaValidator,
    },
  );
  const { pipeline, registry } = broker;
  const subscriptions = new Set<string>();

  server.setRequestHandler('tools/list', async (_request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    return { tools: pipeline.listTools(principal, callContext(session, ctx, principal)) };
  });

  server.setRequestHandler('tools/call', async (request, ctx) => {
    let principal: Principal;
    try {
      principal = await session.principal(ctx);
    } catch (error) {
      if (!(error instanceof Denial)) throw error;
      await pipeline.recordDenial({ event: 'tools/call', session: session.id, transport: session.transport, tool: request.params.name }, error);
      return denialResult(error);
    }
    const progressToken = request.params._meta?.progressToken;
    return pipeline.callTool(principal, callContext(session, ctx, principal, progressToken), request.params.name, request.params.arguments ?? {});
  });

  server.setRequestHandler('prompts/list', async (_request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    const call = callContext(session, ctx, principal);
    const prompts = [...registry.prompts().values()]
      .filter((p) => pipeline.mayUse(principal, call, 'prompt', p.exposedName, p.connector.name))
      .map((p) => p.descriptor);
    return { prompts };
  });

  server.setRequestHandler('prompts/get', async (request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    const call = callContext(session, ctx, principal);
    try {
      const entry = registry.resolvePrompt(request.params.name);
      pipeline.authorizeItem(principal, call, 'prompt', entry.exposedName, entry.connector.name);
      const prompt = await entry.connector.withOrigin(call.origin, (client) =>
        client.getPrompt({ ...request.params, name: entry.upstreamName }, { signal: ctx.mcpReq.signal }),
      );
      // What it brings into the agent's flow is recorded before the agent sees it.
      await pipeline.recordItemFlow(principal, 'prompt', entry.exposedName, entry.connector.config.labels.prompts, prompt);
      return prompt;
    } catch (error) {
      return protocolError(error);
    }
  });

  server.setRequestHandler('resources/list', async (_request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    const call = callContext(session, ctx, principal);
    const resources = registry
      .resources()
      .filter(({ resource, connector }) => pipeline.mayUse(principal, call, 'resource', resource.uri, connector.name))
      .map(({ resource }) => resource);
    return { resources };
  });

  server.setRequestHandler('resources/templates/list', async (_request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    const call = callContext(session, ctx, principal);
    const resourceTemplates = registry
      .resourceTemplates()
      .filter(({ template, connector }) => pipeline.mayUse(principal, call, 'resource', template.uriTemplate, connector.name))
      .map(({ template }) => template);
    return { resourceTemplates };
  });

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

  server.setRequestHandler('resources/read', async (request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    const call = callContext(session, ctx, principal);
    try {
      const connector = authorizedResource(principal, call, request.params.uri);
      const contents = await connector.withOrigin(call.origin, (client) => client.readResource(request.params, { signal: ctx.mcpReq.signal }));
      await pipeline.recordItemFlow(principal, 'resource', request.params.uri, connector.config.labels.resources, contents);
      return contents;
    } catch (error) {
      return protocolError(error);
    }
  });

  server.setRequestHandler('resources/subscribe', async (request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    const call = callContext(session, ctx, principal);
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
    const call = callContext(session, ctx, principal);
    subscriptions.delete(request.params.uri);
    // Only this agent's own upstream subscriptions are dropped.
    await Promise.all(broker.connectors.map((c) => c.unsubscribe(call.origin, request.params.uri).catch(() => undefined)));
    return {};
  });

  server.setRequestHandler('completion/complete', async (request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    const call = callContext(session, ctx, principal);
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

  server.setRequestHandler('logging/setLevel', async (request, ctx) => {
    const principal = await session.principal(ctx).catch(protocolError);
    const call = callContext(session, ctx, principal);
    // This agent's own upstream connections only, now and as they open; never another agent's.
    for (const connector of registry.connectorsWith('logging')) {
      await connector.setLoggingLevel(call.origin, request.params.level).catch(() => undefined);
    }
    return {};
  });

  // The agent's roots changed: its own upstream sessions ask again.
  server.setNotificationHandler('notifications/roots/list_changed', async () => {
    await Promise.all(broker.connectors.map((c) => c.rootsChanged(session.id)));
  });

  const channel: AgentChannel = {
    sendRequest: (request) => server.request(request as { method: RequestMethod; params?: Record<string, unknown> }),
    sendNotification: (notification) => server.notification(notification as ServerNotification),
  };
  broker.sessions.add(session.id, { server, subscriptions, channel });
  server.onclose = () => broker.sessions.remove(session.id);
  return server;
}
