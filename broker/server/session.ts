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
import type { CallOrigin } from '../../connectors/upstream.ts';
import { advertisedCapabilities, agentInstructions } from './advertised.ts';

export interface SessionBinding {
  id: string;
  transport: 'http' | 'stdio';
  /** The caller of this request; throws a Denial when its token no longer holds. */
  principal: (extra: ServerContext) => Promise<Principal>;
}

export const BASTION_VERSION = '0.1.0';

type Extra = ServerContext;

function originOf(session: SessionBinding, extra: Extra): CallOrigin {
  return {
    sessionId: session.id,
    // Relayed requests are spec methods (sampling, elicitation, roots): the SDK validates each
    // result against the spec's schema for its method.
    sendRequest: (request: Request) => extra.mcpReq.send(request as { method: RequestMethod; params?: Record<string, unknown> }),
    sendNotification: (notification) => extra.mcpReq.notify(notification as ServerNotification),
  };
}

function callContext(session: SessionBinding, extra: Extra, progressToken?: string | number): CallContext {
  return {
    session: session.id,
    transport: session.transport,
    origin: originOf(session, extra),
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
  const capabilities = advertisedCapabilities(broker);
  const server = new Server(
    { name: 'bastion', version: BASTION_VERSION },
    {
      // What the connectors offer, and their instructions (checked, namespaced): see advertised.ts.
      capabilities,
      instructions: agentInstructions(broker.registry.instructions()),
      // Schemas relayed from upstreams are not Bastion's: any the SDK evaluates here runs its patterns on RE2.
      jsonSchemaValidator: linearSchemaValidator,
    },
  );
  const { pipeline, registry } = broker;
  const subscriptions = new Set<string>();

  if (capabilities.tools) {
    server.setRequestHandler('tools/list', async (_request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      return { tools: pipeline.listTools(principal, callContext(session, ctx)) };
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
      return pipeline.callTool(principal, callContext(session, ctx, progressToken), request.params.name, request.params.arguments ?? {});
    });
  }

  if (capabilities.prompts) {
    server.setRequestHandler('prompts/list', async (_request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, ctx);
      const prompts = [...registry.prompts().values()]
        .filter((p) => pipeline.mayUse(principal, call, 'prompt', p.exposedName, p.connector.name))
        .map((p) => p.descriptor);
      return { prompts };
    });

    server.setRequestHandler('prompts/get', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, ctx);
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
  }

  /** Finds the connector for a URI and checks this principal may use it. */
  const authorizedResource = (principal: Principal, call: CallContext, uri: string) => {
    const connector = registry.resolveResource(uri);
    pipeline.authorizeItem(principal, call, 'resource', uri, connector.name);
    return connector;
  };

  if (capabilities.resources) {
    server.setRequestHandler('resources/list', async (_request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, ctx);
      const resources = registry
        .resources()
        .filter(({ resource, connector }) => pipeline.mayUse(principal, call, 'resource', resource.uri, connector.name))
        .map(({ resource }) => resource);
      return { resources };
    });

    server.setRequestHandler('resources/templates/list', async (_request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, ctx);
      const resourceTemplates = registry
        .resourceTemplates()
        .filter(({ template, connector }) => pipeline.mayUse(principal, call, 'resource', template.uriTemplate, connector.name))
        .map(({ template }) => template);
      return { resourceTemplates };
    });

    server.setRequestHandler('resources/read', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, ctx);
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
      const call = callContext(session, ctx);
      try {
        const connector = authorizedResource(principal, call, request.params.uri);
        await connector.withOrigin(call.origin, (client) => client.subscribeResource(request.params));
        subscriptions.add(request.params.uri);
        return {};
      } catch (error) {
        return protocolError(error);
      }
    });

    server.setRequestHandler('resources/unsubscribe', async (request, ctx) => {
      await session.principal(ctx).catch(protocolError);
      subscriptions.delete(request.params.uri);
      // Other sessions may still be subscribed upstream; the upstream subscription is kept.
      return {};
    });
  }

  if (capabilities.completions) {
    server.setRequestHandler('completion/complete', async (request, ctx) => {
      const principal = await session.principal(ctx).catch(protocolError);
      const call = callContext(session, ctx);
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
      const call = callContext(session, ctx);
      void principal;
      for (const connector of registry.connectorsWith('logging')) {
        await connector.withOrigin(call.origin, (client) => client.setLoggingLevel(request.params.level)).catch(() => undefined);
      }
      return {};
    });
  }

  // The agent's roots changed: every connected upstream hears of it (and may ask this agent for them).
  const sessionOrigin: CallOrigin = {
    sessionId: session.id,
    sendRequest: (request) => server.request(request as { method: RequestMethod; params?: Record<string, unknown> }),
    sendNotification: (notification) => server.notification(notification as ServerNotification),
  };
  server.setNotificationHandler('notifications/roots/list_changed', async () => {
    await Promise.all(
      broker.connectors.map((connector) =>
        connector.rootsChanged(sessionOrigin).catch((error: Error) => broker.log.debug({ connector: connector.name, err: error.message }, 'forwarding a roots change failed')),
      ),
    );
  });

  broker.sessions.add(session.id, { server, subscriptions });
  server.onclose = () => broker.sessions.remove(session.id);
  return server;
}
