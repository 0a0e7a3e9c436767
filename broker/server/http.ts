/**
 * The HTTP front door: MCP Streamable HTTP at POST/GET/DELETE /mcp on
 * express. Before any MCP machinery runs, a request must pass the Host and
 * Origin checks (DNS rebinding), the body cap, the era check (eras.ts: a
 * valid `_meta` envelope, a served revision, headers that agree with the
 * body) and bearer-token authentication. A 2025-11-25 session is bound to
 * the principal that opened it; a 2026-07-28 request is served on its own by
 * the SDK's per-request handler, for the principal its own token names.
 *
 * @example
 *   const door = await startHttp(broker);
 *   console.log(door.url); // http://127.0.0.1:8080/mcp
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import helmet from 'helmet';
import { jsonDepth } from '../limits.ts';
import type { AddressInfo } from 'node:net';
import express, { type NextFunction, type Request, type Response } from 'express';
import { createMcpHandler, isInitializeRequest, isJsonContentType, ProtocolErrorCode } from '@modelcontextprotocol/server';
import type { AuthInfo, McpRequestContext, ServerContext } from '@modelcontextprotocol/server';
import { NodeStreamableHTTPServerTransport, toNodeHandler } from '@modelcontextprotocol/node';
import type { Principal } from '../auth/verify.ts';
import type { Broker } from '../broker.ts';
import { Denial } from '../errors.ts';
import { metrics } from '../metrics.ts';
import { principalForAudit } from '../pipeline.ts';
import { cohortGate } from './cohort.ts';
import { loadScrapeToken, presentsScrapeToken } from './scrape-token.ts';
import { createAgentServer } from './session.ts';
import { claimedRevision, classifyEra, type EraRoute } from './eras.ts';
import { ResourceListeners } from './listen.ts';
import { SessionTable } from './session-table.ts';
import { adminRoutes } from './admin-routes.ts';
import { approvalRoutes } from './approval-routes.ts';
import { mountIdentity, type IdentityServer } from '../identity/authorization-server.ts';

export interface HttpFrontDoor {
  /** The MCP endpoint agents connect to. */
  url: string;
  /** The resource identifier tokens must name in `aud`. */
  resource: string;
  /** Bastion's authorization server (broker/identity), unless identity.enabled is false. */
  identity: IdentityServer | undefined;
  /** Sessions open now: initialized, routable, swept when idle. */
  readonly openSessions: number;
  close(): Promise<void>;
}

interface HttpSession {
  transport: NodeStreamableHTTPServerTransport;
  /** Last request, for closing idle sessions. */
  seen: number;
  /** iss + sub of the principal that opened the session; only it may use the session. */
  owner: string;
}

export type AuthedRequest = Request & { auth?: AuthInfo; era?: EraRoute };

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

function jsonRpcError(res: Response, status: number, code: number, message: string, data?: unknown, id: string | number | null = null): void {
  if (res.headersSent) return;
  res.status(status).json({ jsonrpc: '2.0', error: { code, message, ...(data ? { data } : {}) }, id });
}

/** The id of a JSON-RPC request body, echoed in its refusal so a client can match it. */
function requestIdOf(body: unknown): string | number | null {
  const id = body && typeof body === 'object' && !Array.isArray(body) ? (body as { id?: unknown }).id : undefined;
  return typeof id === 'string' || typeof id === 'number' ? id : null;
}

type AdmitCode =
  | 'BASTION_ORIGIN_REFUSED'
  | 'BASTION_REQUEST_INVALID'
  | 'BASTION_REQUEST_TOO_LARGE'
  | 'BASTION_SESSION_INVALID'
  | 'BASTION_SESSIONS_EXCEEDED'
  | 'BASTION_HEADER_MISMATCH'
  | 'BASTION_ENVELOPE_INVALID'
  | 'BASTION_PROTOCOL_UNSUPPORTED';

function ownerOf(principal: Principal): string {
  return `${principal.iss} ${principal.sub}`;
}

/** The tool named in a JSON-RPC body, for audit records of refused requests. */
function toolOf(body: unknown): string | undefined {
  const message = Array.isArray(body) ? body[0] : body;
  if (message && typeof message === 'object' && (message as { method?: unknown }).method === 'tools/call') {
    const name = (message as { params?: { name?: unknown } }).params?.name;
    return typeof name === 'string' ? name.slice(0, 256) : undefined;
  }
  return undefined;
}

/**
 * Slow clients: the whole request (headers within at most 15 s) must arrive within `requestTimeout`;
 * responses (SSE, parked calls) may last longer. Node enforces both only when it sweeps its
 * connections, every 30 s by default, so a client that should be cut at 15 s could hold its socket
 * until 30 s: sweep every tenth of the shorter timeout, at most every second. 0 turns the timeouts off.
 */
export function slowClientTimeouts(requestTimeout: number): { requestTimeout: number; headersTimeout: number; connectionsCheckingInterval: number } {
  const headersTimeout = Math.min(15_000, requestTimeout);
  const connectionsCheckingInterval = headersTimeout > 0 ? Math.max(10, Math.min(1_000, Math.floor(headersTimeout / 10))) : 30_000;
  return { requestTimeout, headersTimeout, connectionsCheckingInterval };
}

function isLoopbackAddress(address: string | undefined): boolean {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1';
}

export async function startHttp(broker: Broker): Promise<HttpFrontDoor> {
  const { config, log, pipeline } = broker;
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', false);
  // Security headers. Pages and the admin API get helmet's full set (the approval page adds its
  // own stricter CSP). /mcp answers only JSON and event streams to programs, on every tool call:
  // it gets the headers that matter for those, set at once, not the ones meant for HTML documents.
  const pageHeaders = helmet({ contentSecurityPolicy: false, strictTransportSecurity: Boolean(config.server.tls) });
  const apiHeaders: [string, string][] = [
    ['X-Content-Type-Options', 'nosniff'],
    ['Cross-Origin-Resource-Policy', 'same-origin'],
    ['Referrer-Policy', 'no-referrer'],
    ...(config.server.tls ? [['Strict-Transport-Security', 'max-age=31536000; includeSubDomains'] as [string, string]] : []),
  ];
  app.use((req, res, next) => {
    if (req.path !== '/mcp' && !req.path.startsWith('/mcp/')) return pageHeaders(req, res, next);
    for (const [name, value] of apiHeaders) res.setHeader(name, value);
    next();
  });

  // Read before listening: a missing or weak scrape token stops start-up instead of leaving /metrics open.
  const scrapeToken = config.server.metrics_token_file ? await loadScrapeToken(config.server.metrics_token_file) : undefined;

  const tls = config.server.tls;
  const timeouts = slowClientTimeouts(config.server.request_timeout);
  const server: HttpServer = tls
    ? createHttpsServer({ cert: readFileSync(tls.cert_file), key: readFileSync(tls.key_file), ...timeouts }, app)
    : createHttpServer(timeouts, app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.server.port, config.server.host, () => resolve());
  });
  if (!LOOPBACK.has(config.server.host) && config.server.host !== '::1' && !tls) {
    log.warn({ host: config.server.host }, 'listening beyond loopback WITHOUT TLS: tokens cross the network in clear text; configure server.tls or a TLS-terminating proxy');
  }
  const port = (server.address() as AddressInfo).port;
  const hostForUrl = config.server.host.includes(':') ? `[${config.server.host}]` : config.server.host;
  const url = `${tls ? 'https' : 'http'}://${hostForUrl}:${port}/mcp`;
  const resource = config.server.resource ?? url;
  // Before the authenticator: the authorization server's key joins the trusted issuers.
  const identity = await mountIdentity(app, broker, { resource }).catch(async (error: unknown) => {
    await new Promise((closed) => server.close(closed)); // a refused start leaves no port open
    throw error;
  });
  const authenticator = broker.authenticatorFor(resource);

  const allowedHosts = new Set([`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, new URL(resource).host]);
  const allowedOrigins = new Set([
    `http://127.0.0.1:${port}`,
    `http://localhost:${port}`,
    `http://[::1]:${port}`,
    new URL(resource).origin,
    ...config.server.allowed_origins,
  ]);
  const checkHost = LOOPBACK.has(config.server.host) || config.server.host === '::1';

  const sessions = new SessionTable<HttpSession>(config.limits.sessions_per_principal);

  /**
   * Answers a request refused at the front door, with an audit record like every other refusal.
   * `spec` carries the spec's error data where it defines some (an unsupported version's
   * `supported`), and whether to echo the request's id (the 2026 refusals, which a client matches).
   */
  const refuseRequest = async (
    req: Request,
    res: Response,
    status: number,
    rpcCode: number,
    code: AdmitCode,
    reason: string,
    spec: { data?: Record<string, unknown>; echoId?: boolean } = {},
  ) => {
    const denial = new Denial('admit', code, reason);
    const principal = (req as AuthedRequest).auth?.extra?.principal as Principal | undefined;
    const protocol = claimedRevision(req.body);
    await pipeline
      .recordDenial(
        {
          event: `http ${req.method} ${req.baseUrl || req.path}`,
          transport: 'http',
          ...(protocol !== undefined ? { protocol } : {}),
          tool: toolOf(req.body),
          ...(principal ? { principal: principalForAudit(principal) } : {}),
        },
        denial,
      )
      .catch((error: Error) => log.error({ err: error.message }, 'audit append failed'));
    jsonRpcError(res, status, rpcCode, reason, { ...spec.data, ...denial.toJSON() }, spec.echoId ? requestIdOf(req.body) : null);
  };

  // DNS rebinding: a browser page on another origin must not reach a local broker.
  const guardOrigin = async (req: Request, res: Response, next: NextFunction) => {
    if (checkHost && !allowedHosts.has(req.headers.host ?? '')) {
      await refuseRequest(req, res, 403, ProtocolErrorCode.InvalidRequest, 'BASTION_ORIGIN_REFUSED', `Host ${(req.headers.host ?? '(none)').slice(0, 200)} is not allowed`);
      return;
    }
    const origin = req.headers.origin;
    if (origin !== undefined && !allowedOrigins.has(origin)) {
      await refuseRequest(req, res, 403, ProtocolErrorCode.InvalidRequest, 'BASTION_ORIGIN_REFUSED', `Origin ${origin.slice(0, 200)} is not allowed`);
      return;
    }
    next();
  };

  const resourceOrigin = new URL(resource).origin;
  const metadataUrl = `${resourceOrigin}/.well-known/oauth-protected-resource${new URL(resource).pathname}`;

  /** Sends the 401 (503 for state failures) a refused authentication gets, after auditing it; `realmChallenge` replaces the MCP resource's Bearer challenge (/metrics). */
  const refuseAuthentication = async (req: Request, res: Response, denial: Denial, realmChallenge?: string) => {
    const protocol = claimedRevision(req.body);
    await pipeline
      .recordDenial({ event: `http ${req.method} ${req.baseUrl || req.path}`, transport: 'http', ...(protocol !== undefined ? { protocol } : {}), tool: toolOf(req.body) }, denial)
      .catch((auditError: Error) => log.error({ err: auditError.message }, 'audit append failed'));
    const description = denial.reason.replace(/["\\]/g, "'");
    const challenge =
      realmChallenge ??
      (denial.code === 'BASTION_TOKEN_MISSING'
        ? `Bearer realm="bastion", resource_metadata="${metadataUrl}"`
        : `Bearer realm="bastion", error="invalid_token", error_description="${description}", resource_metadata="${metadataUrl}"`);
    const status = denial.code === 'BASTION_STATE_UNAVAILABLE' ? 503 : 401;
    if (status === 401) res.setHeader('WWW-Authenticate', challenge);
    res.status(status).json({ error: status === 401 ? 'invalid_token' : 'temporarily_unavailable', code: denial.code, stage: denial.stage, error_description: denial.reason });
  };

  /** Stage 1 for one HTTP request: token, revocation, DPoP proof, single use. */
  const principalOf = async (req: Request): Promise<Principal> => {
    const header = req.headers.authorization;
    if (header === undefined && broker.anonymous && isLoopbackAddress(req.socket.remoteAddress)) return broker.anonymous;
    // RFC 9449 sends bound tokens with the DPoP scheme; Bearer is accepted too, the proof is what counts.
    const match = header === undefined ? null : /^(?:Bearer|DPoP) ([^\s]+)$/i.exec(header);
    if (header !== undefined && !match) throw new Denial('authenticate', 'BASTION_TOKEN_MALFORMED', 'Authorization must be "Bearer <token>" or "DPoP <token>"');
    const dpop = req.headers.dpop;
    return authenticator.authenticate({
      token: match?.[1],
      transport: 'http',
      method: req.method,
      url: `${resourceOrigin}${req.originalUrl}`,
      dpop: typeof dpop === 'string' ? dpop : undefined,
    });
  };

  const authenticate = async (req: AuthedRequest, res: Response, next: NextFunction) => {
    let principal: Principal;
    const started = performance.now();
    try {
      principal = await principalOf(req);
      metrics.stageTime('authenticate', started);
    } catch (error) {
      metrics.stageTime('authenticate', started);
      const denial = error instanceof Denial ? error : new Denial('authenticate', 'BASTION_TOKEN_MALFORMED', 'token could not be verified');
      await refuseAuthentication(req, res, denial);
      return;
    }
    req.auth = { token: '', clientId: principal.sub, scopes: [], expiresAt: principal.exp, extra: { principal } };
    next();
  };

  /** The principal authenticate() verified for the request a handler is serving (either era). */
  const principalOfRequest = async (extra: ServerContext): Promise<Principal> => {
    const current = extra.http?.authInfo?.extra?.principal as Principal | undefined;
    if (!current) throw new Denial('authenticate', 'BASTION_TOKEN_MISSING', 'request carried no verified principal');
    return current;
  };

  /**
   * 2026-07-28: the SDK's per-request entry. Each request gets its own agent server, built for the
   * principal its token names (its server/discover shows what that principal may see) and never
   * entered in broker.sessions. 2025-era traffic never reaches it (routed by eras.ts; `reject` is
   * the entry's answer should any arrive).
   */
  const modernServer = (context: McpRequestContext) => {
    const viewer = (context.authInfo?.extra?.principal as Principal | undefined) ?? null;
    return createAgentServer(broker, { id: `request-${randomUUID()}`, transport: 'http', register: false, viewer, principal: principalOfRequest });
  };
  const modern = createMcpHandler(
    modernServer,
    {
      legacy: 'reject',
      maxRequestBodySize: config.server.max_body_bytes,
      onerror: (error) => log.debug({ err: error.message }, '2026-07-28 request not served'),
    },
  );
  const serveModern = toNodeHandler(modern, {
    maxRequestBodySize: config.server.max_body_bytes,
    onerror: (error) => log.error({ err: error.message }, '2026-07-28 request failed'),
  });
  // Listen streams that ask for resource updates: per principal (listen.ts).
  const resourceListeners = new ResourceListeners(broker, modernServer, { maxRequestBodySize: config.server.max_body_bytes });
  const unlisten = broker.sessions.onChange((change) => {
    resourceListeners.listChanged(change);
    if (change === 'tools') void modern.notify.toolsChanged();
    else if (change === 'prompts') void modern.notify.promptsChanged();
    else void modern.notify.resourcesChanged();
  });

  /**
   * A 2026-07-28 listen stream is what a session's GET stream was: it holds a connection (and
   * the SDK's handler caps its open streams for everyone), so each principal holds at most
   * `limits.sessions_per_principal` of them and none can use up the others' places. The place
   * is released when the stream's response closes. False: refused (429, audited).
   */
  const listening = new Map<string, number>();
  const holdListenPlace = async (req: AuthedRequest, res: Response, principal: Principal): Promise<boolean> => {
    const owner = ownerOf(principal);
    const held = listening.get(owner) ?? 0;
    const limit = config.limits.sessions_per_principal;
    if (held >= limit) {
      await refuseRequest(req, res, 429, ProtocolErrorCode.InvalidRequest, 'BASTION_SESSIONS_EXCEEDED', `this principal already holds ${held} listen streams (limit ${limit}); close one first`);
      return false;
    }
    listening.set(owner, held + 1);
    res.once('close', () => {
      const left = (listening.get(owner) ?? 1) - 1;
      if (left > 0) listening.set(owner, left);
      else listening.delete(owner);
    });
    return true;
  };

  /** The session named by the request, if it exists and belongs to this principal. */
  const sessionFor = async (req: AuthedRequest, res: Response): Promise<HttpSession | undefined> => {
    const id = req.headers['mcp-session-id'];
    const session = typeof id === 'string' ? sessions.get(id) : undefined;
    if (!session) {
      await refuseRequest(req, res, 404, -32001, 'BASTION_SESSION_INVALID', 'Session not found');
      return undefined;
    }
    const principal = req.auth?.extra?.principal as Principal;
    session.seen = Date.now();
    if (session.owner !== ownerOf(principal)) {
      await refuseRequest(req, res, 403, ProtocolErrorCode.InvalidRequest, 'BASTION_SESSION_INVALID', 'this session belongs to another principal');
      return undefined;
    }
    return session;
  };

  /**
   * Answers an initialize request with a new session. The session holds a place under its
   * principal's cap from the start, but is entered in the table (routable, swept when idle) only
   * once its initialize was answered and the answer reached the client; every other ending
   * (the SDK refused the request, the client went away, a handler threw) closes the transport,
   * which closes the agent server and gives the place back. Nothing of a failed opening stays.
   */
  const openSession = async (req: AuthedRequest, res: Response) => {
    const principal = req.auth?.extra?.principal as Principal;
    const owner = ownerOf(principal);
    const opening = sessions.open(owner);
    if (!opening) {
      const limit = config.limits.sessions_per_principal;
      await refuseRequest(req, res, 429, ProtocolErrorCode.InvalidRequest, 'BASTION_SESSIONS_EXCEEDED', `this principal already holds ${sessions.heldBy(owner)} sessions (limit ${limit}); close one (DELETE /mcp) first`);
      return;
    }
    // One id names the session everywhere: the Mcp-Session-Id header, logs and audit records.
    const sessionId = randomUUID();
    const transport = new NodeStreamableHTTPServerTransport({ sessionIdGenerator: () => sessionId });
    const agentServer = createAgentServer(broker, { id: sessionId, transport: 'http', principal: principalOfRequest });
    let closed = false;
    // Set before connect: the SDK chains the agent server's own cleanup (broker.sessions) after it.
    transport.onclose = () => {
      closed = true;
      sessions.remove(sessionId);
      opening.abandon();
    };
    // The answer to initialize never reached the client (it went away): nobody can use this session.
    const lost = () => res.destroyed && !res.writableFinished;
    res.once('close', () => {
      if (lost()) void transport.close();
    });
    try {
      await agentServer.connect(transport);
      await transport.handleRequest(req, res, req.body);
    } finally {
      const initialized = !closed && !lost() && transport.sessionId === sessionId && agentServer.getClientVersion() !== undefined;
      if (initialized && opening.enter(sessionId, { transport, owner, seen: Date.now() })) {
        log.info({ session: sessionId, sub: principal.sub }, 'session opened');
      } else {
        await transport.close().catch(() => undefined);
      }
    }
  };

  const mcp = express.Router();
  mcp.use(guardOrigin);
  mcp.use(express.json({ limit: config.server.max_body_bytes, type: () => true }));
  // Requests whose bodies arrived in the same turn are checked together, back to back (cohort.ts).
  const admit = cohortGate((size) => metrics.cohortAdmitted(size));
  mcp.use(async (_req, _res, next) => {
    await admit();
    next();
  });
  // Which era a POST speaks, and whether its headers agree with its body: decided before any stage
  // runs (eras.ts), so a request whose headers say one thing and body another never reaches one.
  mcp.use(async (req: AuthedRequest, res, next) => {
    // Batches, non-objects and too-deep bodies keep their own refusals further on.
    const body: unknown = req.body;
    if (req.method !== 'POST' || !body || typeof body !== 'object' || Array.isArray(body) || jsonDepth(body, config.limits.max_json_depth) > config.limits.max_json_depth) {
      next();
      return;
    }
    const verdict = classifyEra({ httpMethod: req.method, headers: req.headers, body });
    if ('refusal' in verdict) {
      const { status, rpcCode, code, message, data } = verdict.refusal;
      await refuseRequest(req, res, status, rpcCode, code as AdmitCode, message, { ...(data ? { data } : {}), echoId: true });
      return;
    }
    req.era = verdict;
    next();
  });
  mcp.use(authenticate);
  // Deep nesting is refused before the MCP machinery walks the body recursively.
  mcp.use(async (req, res, next) => {
    if (req.body !== undefined && jsonDepth(req.body, config.limits.max_json_depth) > config.limits.max_json_depth) {
      await refuseRequest(req, res, 400, ProtocolErrorCode.InvalidRequest, 'BASTION_REQUEST_INVALID', `JSON nested deeper than ${config.limits.max_json_depth} levels`);
      return;
    }
    next();
  });
  // What the Streamable HTTP transport would refuse anyway is refused here, audited, before any
  // session work: an agent server is only ever built for a request that can open a session.
  mcp.post('/', async (req, res, next) => {
    if (Array.isArray(req.body)) {
      await refuseRequest(req, res, 400, ProtocolErrorCode.InvalidRequest, 'BASTION_REQUEST_INVALID', 'JSON-RPC batches are not supported (MCP 2025-11-25 has none): send one message per request');
      return;
    }
    // The transport's own rules: Accept lists both types (a substring check, as the SDK does); Content-Type is parsed.
    const accept = req.headers.accept ?? '';
    if (!accept.includes('application/json') || !accept.includes('text/event-stream')) {
      await refuseRequest(req, res, 406, ProtocolErrorCode.InvalidRequest, 'BASTION_REQUEST_INVALID', 'Not Acceptable: Accept must list both application/json and text/event-stream');
      return;
    }
    if (!isJsonContentType(req.headers['content-type'])) {
      await refuseRequest(req, res, 415, ProtocolErrorCode.InvalidRequest, 'BASTION_REQUEST_INVALID', 'Unsupported Media Type: Content-Type must be application/json');
      return;
    }
    next();
  });
  mcp.post('/', async (req: AuthedRequest, res) => {
    if (req.era?.era === 'modern') {
      const principal = req.auth?.extra?.principal as Principal | undefined;
      if (principal && (req.body as { method?: unknown } | undefined)?.method === 'subscriptions/listen' && !(await holdListenPlace(req, res, principal))) return;
      if (principal && resourceListeners.wants(req.body)) await resourceListeners.serve(req, res, principal);
      else await serveModern(req as Parameters<typeof serveModern>[0], res, req.body);
      return;
    }
    if (req.headers['mcp-session-id'] === undefined) {
      if (!isInitializeRequest(req.body)) {
        await refuseRequest(req, res, 400, ProtocolErrorCode.InvalidRequest, 'BASTION_SESSION_INVALID', 'Bad Request: no session; send initialize first');
        return;
      }
      await openSession(req, res);
      return;
    }
    const session = await sessionFor(req, res);
    if (session) await session.transport.handleRequest(req, res, req.body);
  });
  const existing = async (req: AuthedRequest, res: Response) => {
    const session = await sessionFor(req, res);
    if (session) await session.transport.handleRequest(req, res);
  };
  mcp.get('/', existing);
  mcp.delete('/', existing);
  mcp.all('/', (_req, res) => {
    res.setHeader('Allow', 'GET, POST, DELETE');
    jsonRpcError(res, 405, ProtocolErrorCode.InvalidRequest, 'Method not allowed');
  });
  app.use('/mcp', mcp);

  app.use(
    adminRoutes({
      broker,
      resource,
      authenticate,
    }),
  );

  if (broker.approvals) {
    app.use(
      approvalRoutes({
        desk: broker.approvals,
        approvers: broker.approversFor(resource),
        ...(identity?.approverSignIn ? { sso: identity.approverSignIn } : {}),
        origins: allowedOrigins,
        secureCookies: resourceOrigin.startsWith('https:'),
        log,
      }),
    );
    broker.approvalPageUrl = `${resourceOrigin}/approvals`;
  }

  /** Prometheus scrape (broker/metrics.ts); behind the same Host/Origin checks as /mcp, and the scrape token when one is configured. */
  metrics.collectProcessMetrics();
  const unwatch = metrics.watch({
    ...(broker.approvals ? { approvalsPending: async () => (await broker.approvals!.pending()).length } : {}),
    toolsQuarantined: async () => (await broker.pins.quarantined()).length,
    sessionsOpen: async () => broker.sessions.size,
  });
  app.get('/metrics', guardOrigin, async (req, res) => {
    if (scrapeToken && !presentsScrapeToken(req.headers.authorization, scrapeToken)) {
      const denial = new Denial('admit', 'BASTION_METRICS_UNAUTHORIZED', 'GET /metrics needs the scrape token (server.metrics_token_file) as a bearer token');
      await refuseAuthentication(req, res, denial, 'Bearer realm="bastion-metrics"');
      return;
    }
    const { contentType, body } = await metrics.render();
    res.setHeader('Content-Type', contentType);
    res.end(body);
  });

  /** Liveness: the process answers. */
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  /** Readiness: state reachable (Redis with replicas); connectors are reported, a down one does not make the broker unready. */
  app.get('/readyz', async (_req, res) => {
    const state = await broker.state.ready().catch(() => false);
    const connectors = Object.fromEntries(broker.connectors.map((c) => [c.name, c.status]));
    // The MCP revision each connector negotiated with its upstream (absent before it first connected).
    const protocols = Object.fromEntries(broker.connectors.flatMap((c) => (c.protocol ? [[c.name, c.protocol]] : [])));
    res.status(state ? 200 : 503).json({ status: state ? 'ready' : 'not ready', state: state ? 'ok' : 'unavailable', connectors, protocols });
  });

  // Body-parser and handler failures become JSON-RPC errors; nothing here may crash the process.
  app.use(async (error: Error & { type?: string; status?: number }, req: Request, res: Response, _next: NextFunction) => {
    if (error.type === 'entity.too.large') {
      await refuseRequest(req, res, 413, ProtocolErrorCode.InvalidRequest, 'BASTION_REQUEST_TOO_LARGE', `Request body exceeds ${config.server.max_body_bytes} bytes`);
    } else if (error.type === 'entity.parse.failed') {
      await refuseRequest(req, res, 400, ProtocolErrorCode.ParseError, 'BASTION_REQUEST_INVALID', 'Parse error: body is not valid JSON');
    } else if (error.status && error.status >= 400 && error.status < 500) {
      jsonRpcError(res, error.status, ProtocolErrorCode.InvalidRequest, error.message);
    } else {
      log.error({ err: error.message }, 'request failed');
      jsonRpcError(res, 500, ProtocolErrorCode.InternalError, 'Internal error');
    }
  });


  // Clients that vanish without DELETE leave sessions behind; idle ones are closed.
  const sweeper = setInterval(() => {
    const cutoff = Date.now() - config.server.session_idle;
    for (const session of [...sessions.values()]) if (session.seen < cutoff) void session.transport.close().catch(() => undefined);
  }, Math.min(60_000, config.server.session_idle));
  sweeper.unref();

  return {
    url,
    resource,
    identity,
    get openSessions() {
      return sessions.size;
    },
    async close() {
      await identity?.close();
      unwatch();
      unlisten();
      await modern.close();
      await resourceListeners.close();
      clearInterval(sweeper);
      for (const session of [...sessions.values()]) await session.transport.close().catch(() => undefined);
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
