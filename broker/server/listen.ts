/**
 * Resource updates for 2026-07-28 clients: `subscriptions/listen` streams
 * that ask for `resourceSubscriptions`. The SDK's per-request entry serves a
 * listen stream from one event bus per handler, and a `resource_updated` on a
 * bus reaches every stream on it that named the URI, whoever opened it. So
 * each principal's listen streams get a handler (and bus) of their own, and
 * an update reaches the bus of the principal whose upstream connection sent
 * it, and only that one.
 *
 * Before a stream opens, every URI it names is resolved and authorized like a
 * `resources/subscribe` (a refusal answers the request with an error and is
 * audited; nothing is subscribed), then subscribed on the principal's own
 * upstream connection, under the stream's id. When the stream ends its
 * upstream subscriptions end with it. Streams that ask for list changes only
 * stay on the shared handler (list changes are the same for everyone).
 *
 * @example
 *   const listeners = new ResourceListeners(broker, factory, { maxRequestBodySize });
 *   if (listeners.wants(req.body)) await listeners.serve(req, res, principal);
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CLIENT_CAPABILITIES_META_KEY, createMcpHandler, InMemoryServerEventBus, ProtocolErrorCode } from '@modelcontextprotocol/server';
import type { ClientCapabilities, McpHttpHandler } from '@modelcontextprotocol/server';
import { toNodeHandler } from '@modelcontextprotocol/node';
import type { Principal } from '../auth/verify.ts';
import type { Broker, ListChange } from '../broker.ts';
import { Denial } from '../errors.ts';
import { principalForAudit, type CallContext } from '../pipeline.ts';
import type { CallOrigin, Connector } from '../../connectors/upstream.ts';
import { MODERN_REVISION } from './eras.ts';

/** More URIs than this in one stream is refused (each is an upstream subscription). */
const MAX_URIS = 64;

type Factory = Parameters<typeof createMcpHandler>[0];
type NodeHandler = ReturnType<typeof toNodeHandler>;

interface PrincipalStreams {
  handler: McpHttpHandler;
  serve: NodeHandler;
  open: number;
}

/** The resource URIs a listen request body names, or undefined when it names none. */
function requestedUris(body: unknown): unknown[] | undefined {
  const params = (body as { params?: { notifications?: { resourceSubscriptions?: unknown } } } | undefined)?.params;
  const uris = params?.notifications?.resourceSubscriptions;
  return Array.isArray(uris) && uris.length > 0 ? uris : undefined;
}

export class ResourceListeners {
  private readonly byOwner = new Map<string, PrincipalStreams>();
  private readonly broker: Broker;
  private readonly factory: Factory;
  private readonly options: { maxRequestBodySize: number };

  constructor(broker: Broker, factory: Factory, options: { maxRequestBodySize: number }) {
    this.broker = broker;
    this.factory = factory;
    this.options = options;
  }

  /** Whether this 2026 request is a listen stream asking for resource updates. */
  wants(body: unknown): boolean {
    return (body as { method?: unknown } | undefined)?.method === 'subscriptions/listen' && requestedUris(body) !== undefined;
  }

  /** A list change reaches every principal's streams too (their handlers have their own buses). */
  listChanged(change: ListChange): void {
    for (const { handler } of this.byOwner.values()) {
      if (change === 'tools') handler.notify.toolsChanged();
      else if (change === 'prompts') handler.notify.promptsChanged();
      else handler.notify.resourcesChanged();
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.byOwner.values()].map(({ handler }) => handler.close()));
    this.byOwner.clear();
  }

  async serve(req: IncomingMessage & { body?: unknown }, res: ServerResponse, principal: Principal): Promise<void> {
    const body = req.body as { id?: string | number; params?: { _meta?: Record<string, unknown> } };
    const uris = requestedUris(body) ?? [];
    const ownerKey = JSON.stringify([principal.iss, principal.sub]);
    const streamId = `listen-${randomUUID()}`;
    const streams = this.streamsOf(ownerKey);
    const origin: CallOrigin = {
      sessionId: streamId,
      owner: { iss: principal.iss, sub: principal.sub },
      stateless: true,
      capabilities: (body.params?._meta?.[CLIENT_CAPABILITIES_META_KEY] as ClientCapabilities | undefined) ?? {},
      updates: (uri) => streams.handler.notify.resourceUpdated(uri),
      sendRequest: async () => {
        throw new Error('a listen stream takes no requests');
      },
      sendNotification: async () => undefined,
    };
    const subscribed: [Connector, string][] = [];
    const unsubscribe = () => Promise.all(subscribed.map(([connector, uri]) => connector.unsubscribe(origin, uri).catch(() => undefined)));
    try {
      if (uris.length > MAX_URIS) throw new Denial('limit', 'BASTION_REQUEST_INVALID', `a listen stream may name at most ${MAX_URIS} resources`);
      for (const uri of uris) {
        if (typeof uri !== 'string') throw new Denial('resolve', 'BASTION_REQUEST_INVALID', 'resourceSubscriptions must be URI strings');
        const connector = this.authorized(principal, origin, streamId, uri);
        await connector.subscribe(origin, uri);
        subscribed.push([connector, uri]);
      }
    } catch (error) {
      await unsubscribe();
      this.release(ownerKey, streams);
      const denial = error instanceof Denial ? error : new Denial('execute', 'BASTION_UPSTREAM_ERROR', (error as Error).message);
      await this.broker.pipeline.recordDenial(
        { event: 'subscriptions/listen', session: streamId, transport: 'http', protocol: MODERN_REVISION, principal: principalForAudit(principal) },
        denial,
      );
      const code = denial.code === 'BASTION_TOOL_UNKNOWN' || denial.code === 'BASTION_REQUEST_INVALID' ? ProtocolErrorCode.InvalidParams : ProtocolErrorCode.InvalidRequest;
      res.statusCode = 200;
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          jsonrpc: '2.0',
          id: body.id ?? null,
          error: { code, message: `Bastion refused this request at the ${denial.stage} stage (${denial.code}): ${denial.reason}`, data: denial.toJSON() },
        }),
      );
      return;
    }
    const ended = () => {
      void unsubscribe();
      this.release(ownerKey, streams);
    };
    // A client gone while its subscriptions were made never sees 'close' again: undo them now.
    if (res.destroyed || req.socket.destroyed) return ended();
    res.once('close', ended);
    await streams.serve(req, res, req.body);
  }

  /** Resolves a URI like resources/subscribe does (the catalog, or the principal's own upstream session) and checks policy. */
  private authorized(principal: Principal, origin: CallOrigin, streamId: string, uri: string): Connector {
    const { registry, pipeline, connectors } = this.broker;
    let connector: Connector;
    try {
      connector = registry.resolveResource(uri);
    } catch (error) {
      const own = connectors.filter((c) => c.listsForAgent(origin, uri));
      if (own.length !== 1) throw error;
      connector = own[0]!;
    }
    const call: CallContext = { session: streamId, transport: 'http', protocol: MODERN_REVISION, origin };
    pipeline.authorizeItem(principal, call, 'resource', uri, connector.name);
    return connector;
  }

  private streamsOf(ownerKey: string): PrincipalStreams {
    let streams = this.byOwner.get(ownerKey);
    if (!streams) {
      const handler = createMcpHandler(this.factory, {
        legacy: 'reject',
        bus: new InMemoryServerEventBus(),
        maxRequestBodySize: this.options.maxRequestBodySize,
      });
      streams = { handler, serve: toNodeHandler(handler, { maxRequestBodySize: this.options.maxRequestBodySize }), open: 0 };
      this.byOwner.set(ownerKey, streams);
    }
    streams.open += 1;
    return streams;
  }

  /** A stream ended (or never opened): the principal's handler goes with its last stream. */
  private release(ownerKey: string, streams: PrincipalStreams): void {
    streams.open -= 1;
    if (streams.open > 0 || this.byOwner.get(ownerKey) !== streams) return;
    this.byOwner.delete(ownerKey);
    void streams.handler.close();
  }
}


