/**
 * Bastion as the MCP authorization server for its own resource: oidc-provider
 * (panva) does OAuth 2.1, configured down to what the MCP authorization
 * specification needs, and Bastion adds small named steps around it.
 *
 * What the library does, as configured here: the authorization code grant
 * only, PKCE required and S256 only, exact redirect URIs, `iss` in every
 * authorization response (RFC 9207), RFC 8707 resource indicators, refresh
 * tokens rotated on every use with a reused one revoking its whole family,
 * revocation (RFC 7009), RFC 8414 / OpenID discovery, dynamic registration
 * (RFC 7591, when the operator turns it on) and Client ID Metadata
 * Documents; client authentication by secret or private_key_jwt. Everything
 * else (userinfo, implicit and hybrid flows, device flow, PAR, logout,
 * introspection, the library's own client credentials) is off.
 *
 * Bastion's steps:
 *   checkResourceRequired   no `resource` at the authorization endpoint → invalid_target
 *   checkResourceIsOurs     any resource but the broker's → invalid_target
 *   limitRegistration       DCR rate, count and redirect-URI limits → 429 / invalid_client_metadata / invalid_redirect_uri
 *   sign-in and consent     interactions.ts (IdP login, grants policy, consent page)
 *   issue                   grants/authorization-code.ts, grants/refresh-token.ts decide what the token carries
 *   headless grants         registered on the library's token endpoint, one module each: grants/token-exchange.ts
 *                           (RFC 8693), grants/client-credentials.ts (private_key_jwt; client-assertion.ts),
 *                           grants/id-jag.ts (RFC 7523 jwt-bearer with an ID-JAG); headless-token.ts issues
 *   approver sign-in        approver-sign-in.ts, mounted by the approval page when approvals.sso is on
 *
 * Access tokens are today's capability tokens, made by the library's JWT
 * access-token format: `typ` set to auth.token_type by its customizer,
 * signed (EdDSA) with the authorization server's key, whose JWKS is one of
 * the trusted issuers stage 1 verifies against; `aud` the broker's
 * resource, `cap` from the grants policy, lifetime ≤ auth.max_ttl, `cnf.jkt`
 * when the client used DPoP.
 *
 * @example
 *   const identity = await mountIdentity(app, broker, { resource });  // before broker.authenticatorFor(resource)
 */
import { randomBytes } from 'node:crypto';
import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import { createLocalJWKSet, type JWK } from 'jose';
import Provider, { errors, interactionPolicy, type ClientMetadata, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import { readFile } from 'node:fs/promises';
import { ensureAuthorizationServerKey, readJwksFile } from '../auth/keys.ts';
import { revoke, subjectRevoked } from '../auth/revocation.ts';
import type { Broker } from '../broker.ts';
import { oauthAudit, type OAuthAudit } from './audit.ts';
import { stateAdapterFactory } from './adapter.ts';
import { metadataDocumentFetch } from './client-metadata.ts';
import { GrantRecords } from './grant-records.ts';
import { issueFromConsent } from './grants/authorization-code.ts';
import { reissueOnRefresh } from './grants/refresh-token.ts';
import { issuanceIfAny, issuanceOf } from './issuance.ts';
import { interactionRoutes } from './interactions.ts';
import { errorPage, sendPage } from './pages.ts';
import { connectUpstream, type UpstreamIdp } from './upstream.ts';
import { httpAllowed, UpstreamIdpSchema } from './config.ts';
import { ConfigError } from '../config.ts';
import { mountDevIdp, type DevIdp } from './dev-idp.ts';
import { RESOURCE_SCOPE, resourceServerInfo } from './resource-server.ts';
import { keysOf, lazily, workloadIssuers } from './trusted-issuers.ts';
import { ID_JAG_TYPE, idJagGrant, JWT_BEARER, JWT_BEARER_PARAMETERS } from './grants/id-jag.ts';
import type { TrustedIssuer } from './presented-tokens.ts';
import { CLI_CLIENT_ID, TOKEN_EXCHANGE, TOKEN_EXCHANGE_PARAMETERS, tokenExchangeGrant } from './grants/token-exchange.ts';
import type { HeadlessDeps } from './headless-token.ts';
import { CLIENT_CREDENTIALS, CLIENT_CREDENTIALS_PARAMETERS, clientCredentialsGrant } from './grants/client-credentials.ts';
import { checkClientAssertion } from './client-assertion.ts';
import { APPROVER_SSO_CALLBACK, type ApproverSignInOptions } from './approver-sign-in.ts';
import type { StaticClientSchema } from './config.ts';
import type { z } from 'zod';

const MOUNT = '/oauth';

export interface IdentityServer {
  /** The authorization server's issuer identifier (the broker's origin). */
  issuer: string;
  provider: Provider;
  /** The embedded default's development IdP (no identity.upstream, no trusted issuers configured). */
  devIdp: DevIdp | undefined;
  /** Approver sign-in at identity.upstream for the approval page (approvals.sso), when configured. */
  approverSignIn: Omit<ApproverSignInOptions, 'approvers' | 'setSession' | 'secureCookies'> | undefined;
  close(): Promise<void>;
}

export interface MountOptions {
  resource: string;
  /** The upstream IdP; default: the configured one (identity.upstream). */
  upstream?: () => Promise<UpstreamIdp>;
}

/** Shared across replicas through the state store: the keys that sign the library's cookies. */
async function cookieKeys(broker: Broker): Promise<string[]> {
  const fresh = randomBytes(32).toString('base64url');
  await broker.state.compareAndSet('oauth:keys', 'cookies', undefined, fresh);
  const keys = await broker.state.get('oauth:keys', 'cookies');
  if (!keys) throw new Error('the state store lost the authorization server cookie key');
  return [keys];
}


export async function mountIdentity(app: Express, broker: Broker, options: MountOptions): Promise<IdentityServer | undefined> {
  const { config, log, state } = broker;
  const settings = config.identity;
  if (!settings.enabled) return undefined;
  const { resource } = options;
  const resourceUrl = new URL(resource);
  const issuer = resourceUrl.origin;
  if (!httpAllowed(resourceUrl)) {
    // OAuth 2.1 needs TLS for every endpoint but loopback ones: codes and tokens would cross the network in clear.
    const why = `the authorization server's issuer would be ${issuer}: OAuth needs https there (plain http only on a loopback host)`;
    const fix = 'set server.resource to an https URL (server.tls, or a TLS proxy in front of Bastion), or identity.enabled: false';
    const configured = settings.upstream || settings.clients.length > 0 || settings.token_exchange.issuers.length > 0 || settings.id_jag.enabled;
    if (configured) throw new ConfigError(`identity: ${why}; ${fix}`);
    log.warn({ issuer }, `the authorization server and development IdP are off: ${why}; ${fix}. Capability tokens (bastion token mint) keep working.`);
    return undefined;
  }
  const key = await ensureAuthorizationServerKey(config.state_dir, issuer);
  // Stage 1 trusts what this server signs, like any configured issuer. First in the list, because the
  // protected-resource metadata names the issuers in this order and clients use the first authorization server.
  broker.issuers.unshift({ issuer, getKey: createLocalJWKSet(await readJwksFile(key.jwksFile)), loads: 1 });
  const alg = (key.privateJwk.alg ?? 'EdDSA') as 'EdDSA' | 'ES256';

  const audit: OAuthAudit = oauthAudit(async (event) => void (await broker.audit.append(event)));
  const records = new GrantRecords(state);
  const redirectUri = `${issuer}${MOUNT}/callback`;
  // The development IdP only ever stands in for the embedded default, never beside a real configuration.
  const devIdp =
    !options.upstream && !settings.upstream && config.auth.issuers.length === 0 && settings.token_exchange.issuers.length === 0
      ? await mountDevIdp(app, { origin: issuer, bastionCallback: redirectUri, state })
      : undefined;
  const upstreamConfig =
    settings.upstream ?? (devIdp ? UpstreamIdpSchema.parse({ issuer: devIdp.issuer, client_id: devIdp.clientId, scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'] }) : undefined);
  const upstream =
    options.upstream ??
    lazily(async () => {
      if (!upstreamConfig) throw new Error('no identity provider is configured (identity.upstream)');
      return connectUpstream(upstreamConfig, { redirectUri, ...(devIdp ? { clientSecret: devIdp.clientSecret } : {}) });
    });
  const maxTtlMs = config.auth.max_ttl;
  const staticClients: ClientMetadata[] = await Promise.all(settings.clients.map(clientMetadata));
  const tokenExchange = settings.token_exchange.issuers.length > 0;
  // Bastion's own public client for token exchange: the subject token is the credential.
  if (tokenExchange && settings.token_exchange.cli_client) {
    staticClients.push({ client_id: CLI_CLIENT_ID, client_name: 'Bastion CLI (token exchange)', grant_types: [TOKEN_EXCHANGE], response_types: [], redirect_uris: [], token_endpoint_auth_method: 'none' });
  }

  let provider: Provider;
  /** Ends a token family: the grant, its refresh tokens, and (through the adapter) the access tokens already out. */
  const revokeFamily = (grantId: string) => provider.Grant.adapter.revokeByGrantId(grantId);
  const revokeIssuedTokens = async (grantId: string) => {
    const record = await records.get(grantId);
    for (const token of record?.accessTokens ?? []) {
      if (token.exp * 1000 > Date.now()) await revoke(state, { jti: token.jti, iss: issuer }, maxTtlMs);
    }
    await records.delete(grantId);
  };

  const policy = interactionPolicy.base();
  const signIn = new interactionPolicy.Prompt(
    { name: 'login', requestable: true },
    new interactionPolicy.Check('bastion_sign_in', 'every authorization signs in at the identity provider and asks for consent', (ctx: KoaContextWithOIDC) =>
      ctx.oidc.result?.login ? interactionPolicy.Check.NO_NEED_TO_PROMPT : interactionPolicy.Check.REQUEST_PROMPT,
    ),
  );
  const consent = policy.get('consent')!;

  const configuration: Configuration = {
    adapter: stateAdapterFactory(state, {
      clientTtlMs: settings.registration.ttl,
      beforeFamilyRevoked: revokeIssuedTokens,
      onFamilyRevoked: (grantId, model) => {
        void audit.record('oauth/refresh-reuse', 'denied', { grant: grantId, replayed: model, family_revoked: true }, { error: 'invalid_grant', description: `${model} presented twice at once; family revoked` });
      },
    }),
    clients: staticClients,
    clientDefaults: { grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none', id_token_signed_response_alg: alg },
    clientAuthMethods: ['none', 'client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    jwks: { keys: [key.privateJwk as JWK & { kty: string }] } as Configuration['jwks'],
    cookies: {
      // Own names: cookies ignore ports, and an IdP on the same host (the development IdP) uses the library's defaults.
      names: { session: 'bastion_session', interaction: 'bastion_interaction', resume: 'bastion_resume' },
      keys: await cookieKeys(broker),
      long: { httpOnly: true, sameSite: 'lax', secure: resourceUrl.protocol === 'https:' },
      short: { httpOnly: true, sameSite: 'lax', secure: resourceUrl.protocol === 'https:' },
    },
    responseTypes: ['code'],
    pkce: { required: () => true },
    scopes: ['openid', 'offline_access'],
    claims: { openid: ['sub'] },
    enabledJWA: {
      idTokenSigningAlgValues: [alg],
      dPoPSigningAlgValues: ['EdDSA', 'ES256'],
      clientAuthSigningAlgValues: ['EdDSA', 'ES256', 'PS256', 'RS256'],
    } as Configuration['enabledJWA'],
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      introspection: { enabled: false },
      clientCredentials: { enabled: false },
      deviceFlow: { enabled: false },
      claimsParameter: { enabled: false },
      requestObjects: { enabled: false },
      revocation: { enabled: true },
      dPoP: { enabled: true },
      registration: { enabled: settings.registration.enabled, initialAccessToken: false },
      registrationManagement: { enabled: false },
      clientIdMetadataDocument: {
        enabled: settings.client_id_metadata.enabled,
        ack: 'draft-02',
        cacheDuration: { min: 30, max: 3600 },
      } as never,
      resourceIndicators: {
        enabled: true,
        // checkResourceRequired
        defaultResource: (ctx: KoaContextWithOIDC) => {
          if (ctx.oidc.route === 'authorization') throw new errors.InvalidTarget(`the resource parameter is required (RFC 8707): name this MCP server, ${resource}`);
          return undefined as unknown as string;
        },
        useGrantedResource: () => true,
        // checkResourceIsOurs
        getResourceServerInfo: (_ctx: KoaContextWithOIDC, indicator: string) => {
          if (indicator !== resource) throw new errors.InvalidTarget(`this authorization server only issues tokens for ${resource}`);
          return resourceServerInfo({ resource, maxTtlMs, alg, kid: key.privateJwk.kid });
        },
      },
    } as Configuration['features'],
    ttl: {
      // The grant module decided the lifetime (≤ auth.max_ttl); the library only signs.
      AccessToken: (ctx: KoaContextWithOIDC) => Math.max(1, Math.floor(issuanceOf(ctx).ttlMs / 1000)),
      AuthorizationCode: 60,
      IdToken: 300,
      Interaction: Math.ceil(settings.interaction_ttl / 1000),
      Session: Math.ceil(settings.interaction_ttl / 1000),
      Grant: Math.ceil(settings.refresh_max_age / 1000),
      // A family ends refresh_max_age after its sign-in, however often it rotates.
      RefreshToken: (_ctx: KoaContextWithOIDC, token: { iiat?: number; iat?: number }) =>
        Math.max(1, (token.iiat ?? token.iat ?? Math.floor(Date.now() / 1000)) + Math.floor(settings.refresh_max_age / 1000) - Math.floor(Date.now() / 1000)),
    } as Configuration['ttl'],
    issueRefreshToken: async (_ctx: KoaContextWithOIDC, client: { grantTypeAllowed(type: string): boolean }) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    expiresWithSession: async () => false,
    extraTokenClaims: async (ctx: KoaContextWithOIDC, token: { kind: string; grantId?: string; jti: string }) => {
      if (token.kind !== 'AccessToken') return undefined;
      const { cap, ttlMs, act } = issuanceOf(ctx);
      if (token.grantId) await records.noteAccessToken(token.grantId, { jti: token.jti, exp: Math.floor((Date.now() + ttlMs) / 1000) }, settings.refresh_max_age);
      return act ? { cap, act } : { cap };
    },
    formats: {
      customizers: {
        jwt: async (_ctx: KoaContextWithOIDC, _token: unknown, jwt: { header?: Record<string, unknown>; payload: Record<string, unknown> }) => {
          jwt.header = { ...jwt.header, typ: config.auth.token_type };
        },
      },
    } as Configuration['formats'],
    findAccount: async (ctx: KoaContextWithOIDC, sub: string, token?: { kind: string; grantId?: string; consumed?: unknown }) => {
      const account = { accountId: sub, claims: async () => ({ sub }) };
      if (ctx.oidc.route !== 'token' || !token?.grantId) return account;
      // A reused refresh token: the library revokes the family right after this; nothing to decide.
      if (token.kind === 'RefreshToken' && token.consumed) return account;
      const record = await records.get(token.grantId);
      if (!record) throw new errors.InvalidGrant('this grant is no longer known to the broker');
      if (token.kind === 'AuthorizationCode') {
        issueFromConsent(ctx, record);
        return account;
      }
      if (await subjectRevoked(state, sub)) {
        await revokeFamily(token.grantId);
        throw new errors.InvalidGrant(`subject ${sub} is revoked: its refresh tokens are void`);
      }
      await reissueOnRefresh(ctx, token.grantId, record, {
        policy: () => broker.policy.current(),
        records,
        upstream,
        maxTtlMs,
        familyMaxAgeMs: settings.refresh_max_age,
        revokeFamily,
        onRefreshed: (current, cap, dropped) =>
          void audit
            .record('oauth/token', 'info', { sub: current.identity.sub, idp: current.identity.iss, client_id: current.client.id, grant: token.grantId, refreshed_groups: current.identity.groups, tools: cap.map((c) => c.tool), dropped: dropped.map((c) => c.tool) })
            .catch(() => undefined),
      });
      return account;
    },
    interactions: { url: (_ctx: KoaContextWithOIDC, interaction: { uid: string }) => `${MOUNT}/interaction/${interaction.uid}`, policy: [signIn, consent] as never },
    renderError: async (ctx: KoaContextWithOIDC, out: { error: string; error_description?: string }) => {
      ctx.type = 'html';
      ctx.set('Content-Security-Policy', "default-src 'none'; style-src 'self'; frame-ancestors 'none'");
      ctx.body = errorPage(`Authorization refused: ${out.error}`, out.error_description ?? out.error);
    },
    fetch: metadataDocumentFetch({
      allowPrivate: settings.client_id_metadata.allow_private_addresses,
      timeoutMs: settings.client_id_metadata.timeout,
      caFile: settings.client_id_metadata.ca_file,
    }) as never,
    fetchResponseBodyLimits: { 'client_id metadata document': settings.client_id_metadata.max_bytes } as never,
    clockTolerance: Math.floor(config.auth.clock_skew / 1000),
    assertJwtClientAuthClaimsAndHeader: checkClientAssertion({ state, issuer, tokenEndpoint: `${issuer}${MOUNT}/token`, clockSkewMs: config.auth.clock_skew }),
  } as Configuration;

  provider = new Provider(issuer, configuration);
  // The headless grants, one module each, on the library's token endpoint (client authentication, parameters, errors).
  const headless: HeadlessDeps = {
    resource,
    issuer,
    policy: () => broker.policy.current(),
    state,
    maxTtlMs,
    configuredClients: new Map(settings.clients.map((client) => [client.client_id, client.grant_types])),
    resourceServer: () => new provider.ResourceServer(resource, resourceServerInfo({ resource, maxTtlMs, alg, kid: key.privateJwk.kid })),
  };
  provider.registerGrantType(CLIENT_CREDENTIALS, clientCredentialsGrant(headless), CLIENT_CREDENTIALS_PARAMETERS);
  if (settings.id_jag.enabled && settings.upstream) {
    const idp: TrustedIssuer = {
      name: 'idp',
      issuer: settings.upstream.issuer,
      audience: issuer,
      algorithms: settings.id_jag.algorithms,
      typ: ID_JAG_TYPE,
      maxLifetimeMs: settings.id_jag.max_lifetime,
      keys: keysOf({ issuer: settings.upstream.issuer, timeout: settings.upstream.timeout }, config.auth.jwks_min_refresh),
    };
    provider.registerGrantType(JWT_BEARER, idJagGrant({ ...headless, idp, upstream: settings.upstream, clockSkewMs: config.auth.clock_skew }), JWT_BEARER_PARAMETERS);
  }
  if (tokenExchange) {
    const issuers = workloadIssuers(settings.token_exchange.issuers, { resource, minRefreshMs: config.auth.jwks_min_refresh });
    provider.registerGrantType(TOKEN_EXCHANGE, tokenExchangeGrant({ ...headless, issuers, clockSkewMs: config.auth.clock_skew }), TOKEN_EXCHANGE_PARAMETERS);
  }
  // URLs in metadata and redirects come from the configured resource, never from a client's Host header.
  provider.proxy = true;
  const forwarded = (req: Request, _res: Response, next: NextFunction) => {
    req.headers['x-forwarded-proto'] = resourceUrl.protocol.slice(0, -1);
    req.headers['x-forwarded-host'] = resourceUrl.host;
    delete req.headers['x-forwarded-for'];
    // An authorization request without scope (many MCP clients send none) asks for the resource's scope.
    if (req.method === 'GET' && req.path === '/auth') {
      const url = new URL(req.url, issuer);
      if (!url.searchParams.has('scope')) {
        url.searchParams.set('scope', RESOURCE_SCOPE);
        req.url = `${url.pathname}${url.search}`;
      }
    }
    next();
  };
  attachAudit(provider, audit, issuer, log);

  const callback = provider.callback();
  app.use(MOUNT, forwarded);
  app.use(
    interactionRoutes({
      provider,
      issuer,
      resource,
      upstream,
      state,
      records,
      policy: () => broker.policy.current(),
      audit,
      log,
      maxTtlMs,
      interactionTtlMs: settings.interaction_ttl,
      familyMaxAgeMs: settings.refresh_max_age,
      secureCookies: resourceUrl.protocol === 'https:',
      staticClientIds: new Set(settings.clients.map((c) => c.client_id)),
      approvals: broker.approvals,
    }),
  );
  // RFC 8414 metadata and the OpenID discovery alias, at the root as the issuer is the origin.
  const discovery = (req: Request, res: Response) => {
    forwarded(req, res, () => undefined);
    req.url = '/.well-known/openid-configuration';
    req.originalUrl = `${MOUNT}/.well-known/openid-configuration`;
    void callback(req, res);
  };
  app.get('/.well-known/oauth-authorization-server', discovery);
  app.get('/.well-known/openid-configuration', discovery);
  app.post(`${MOUNT}/reg`, express.json({ limit: 16_384 }), limitRegistration(broker, settings.registration, audit));
  app.use(MOUNT, callback);
  app.use(MOUNT, (_req: Request, res: Response) => sendPage(res, 404, errorPage('Not found', 'No such page.')));
  log.info({ issuer, upstream: upstreamConfig?.issuer ?? '(none: sign-in refused)' }, 'authorization server mounted');
  const approverIdp = config.approvals.sso.enabled ? settings.upstream : undefined;
  return {
    issuer,
    provider,
    devIdp,
    approverSignIn: approverIdp
      ? {
          idp: lazily(() => connectUpstream(approverIdp, { redirectUri: `${issuer}${APPROVER_SSO_CALLBACK}` })),
          origin: issuer,
          roles: config.approvals.sso.roles,
          state,
          audit,
          log,
          ttlMs: settings.interaction_ttl,
        }
      : undefined,
    async close() {},
  };
}

/** The library's grant type for each grant a configured client may use. */
const GRANT_TYPE_NAMES = { authorization_code: 'authorization_code', refresh_token: 'refresh_token', token_exchange: TOKEN_EXCHANGE, client_credentials: CLIENT_CREDENTIALS, jwt_bearer: JWT_BEARER } as const;

/** A configured client (identity.clients) as the library's client metadata. */
async function clientMetadata(client: z.infer<typeof StaticClientSchema>): Promise<ClientMetadata> {
  const signsIn = client.grant_types.includes('authorization_code');
  return {
    client_id: client.client_id,
    ...(client.client_name ? { client_name: client.client_name } : {}),
    redirect_uris: client.redirect_uris,
    grant_types: client.grant_types.map((grant) => GRANT_TYPE_NAMES[grant]),
    response_types: signsIn ? ['code'] : [],
    ...(client.client_secret_file
      ? { token_endpoint_auth_method: 'client_secret_basic', client_secret: (await readFile(client.client_secret_file, 'utf8')).trim() }
      : client.jwks_file
        ? { token_endpoint_auth_method: 'private_key_jwt', jwks: await readJwksFile(client.jwks_file) }
        : client.jwks_uri
          ? { token_endpoint_auth_method: 'private_key_jwt', jwks_uri: client.jwks_uri }
          : { token_endpoint_auth_method: 'none' }),
  };
}

/** limitRegistration: DCR's operator limits, before the library registers anything. */
function limitRegistration(broker: Broker, limits: Broker['config']['identity']['registration'], audit: OAuthAudit) {
  return async (req: Request, res: Response, next: NextFunction) => {
    if (!limits.enabled) return next();
    const refuse = async (status: number, error: string, description: string) => {
      await audit.record('oauth/register', 'denied', { client_name: typeof req.body?.client_name === 'string' ? req.body.client_name.slice(0, 128) : undefined }, { error, description });
      res.status(status).json({ error, error_description: description });
    };
    const bucket = await broker.state.takeTokens(`oauth-register:${req.socket.remoteAddress ?? '?'}`, { capacity: limits.per_minute, refillPerSecond: limits.per_minute / 60 });
    if (!bucket.allowed) return refuse(429, 'invalid_request', `too many registrations from this address; retry in ${Math.ceil(bucket.retryAfterMs / 1000)} s`);
    const uris = (req.body as { redirect_uris?: unknown })?.redirect_uris;
    if (Array.isArray(uris) && uris.length > limits.max_redirect_uris) return refuse(400, 'invalid_redirect_uri', `at most ${limits.max_redirect_uris} redirect_uris`);
    if ((await broker.state.entries('oauth:Client')).length >= limits.max_clients) return refuse(400, 'invalid_client_metadata', `this broker already holds ${limits.max_clients} registrations`);
    next();
  };
}

/**
 * Audit records (and metrics) for what the library did, from its events. A
 * request's records are written before its response leaves (the library's
 * events fire inside the request; a middleware around every endpoint waits
 * for them), and a record that cannot be written turns the response into a
 * server_error: nothing is granted unaudited.
 */
function attachAudit(provider: Provider, audit: OAuthAudit, issuer: string, log: Broker['log']): void {
  const written = new WeakMap<object, Promise<boolean>[]>();
  const record = (ctx: object | undefined, ...args: Parameters<OAuthAudit['record']>) => {
    const append = audit.record(...args).then(
      () => true,
      (error: Error) => (log.error({ err: error.message }, 'audit append failed'), false),
    );
    if (ctx) written.set(ctx, [...(written.get(ctx) ?? []), append]);
  };
  provider.use(async (ctx, next) => {
    await next();
    const appends = written.get(ctx);
    if (appends && (await Promise.all(appends)).includes(false)) {
      ctx.status = 500;
      ctx.type = 'json';
      ctx.remove('Location');
      ctx.body = { error: 'server_error', error_description: 'the audit trail is unavailable; nothing was granted' };
    }
  });
  const clientOf = (ctx: KoaContextWithOIDC | undefined) => ctx?.oidc?.client?.clientId ?? (ctx?.oidc?.params?.client_id as string | undefined);
  provider.on('authorization.error', (ctx: KoaContextWithOIDC, error: { error: string; error_description?: string; error_detail?: string }) =>
    record(ctx, 'oauth/authorize', 'denied', { client_id: clientOf(ctx), redirect_uri: ctx?.oidc?.params?.redirect_uri }, { error: error.error, description: error.error_detail ?? error.error_description ?? error.error }),
  );
  provider.on('grant.error', (ctx: KoaContextWithOIDC, error: { error: string; error_description?: string; error_detail?: string }) => {
    // The detail (what exactly was wrong) goes to the audit trail; the client sees the generic description.
    const description = error.error_detail ?? error.error_description ?? error.error;
    const grantType = ctx?.oidc?.params?.grant_type;
    const reuse = (grantType === 'refresh_token' || grantType === 'authorization_code') && /already (used|consumed)/.test(description);
    record(ctx, reuse ? 'oauth/refresh-reuse' : 'oauth/token', 'denied', { client_id: clientOf(ctx), grant_type: grantType, ...(reuse ? { family_revoked: true } : {}) }, { error: error.error, description });
  });
  provider.on('grant.success', (ctx: KoaContextWithOIDC) => {
    const at = ctx.oidc.entities.AccessToken as { jti?: string; accountId?: string; grantId?: string; exp?: number; extra?: { cap?: { tool: string }[] } } | undefined;
    const headless = issuanceIfAny(ctx)?.audit;
    // The principal of the record is the token issued: its subject, this issuer.
    record(ctx, 'oauth/token', 'ok', {
      sub: at?.accountId,
      idp: issuer,
      client_id: clientOf(ctx),
      grant_type: ctx.oidc.params?.grant_type,
      grant: at?.grantId,
      jti: at?.jti,
      exp: at?.exp,
      tools: at?.extra?.cap?.map((c) => c.tool),
      refresh_token_issued: Boolean(ctx.oidc.entities.RefreshToken),
      ...headless,
    });
  });
  provider.on('grant.revoked', (ctx: KoaContextWithOIDC, grantId: string) => record(ctx, 'oauth/revoke', 'info', { grant: grantId, family_revoked: true }));
  provider.on('revocation.error', (ctx: KoaContextWithOIDC, error: { error: string; error_description?: string; error_detail?: string }) =>
    record(ctx, 'oauth/revoke', 'denied', { client_id: clientOf(ctx) }, { error: error.error, description: error.error_detail ?? error.error_description ?? error.error }),
  );
  provider.on('registration_create.success', (ctx, client) =>
    record(ctx, 'oauth/register', 'ok', { client_id: client.clientId, client_name: client.clientName, redirect_uris: client.redirectUris }),
  );
  provider.on('registration_create.error', (ctx: KoaContextWithOIDC, error: { error: string; error_description?: string; error_detail?: string }) =>
    record(ctx, 'oauth/register', 'denied', {}, { error: error.error, description: error.error_detail ?? error.error_description ?? error.error }),
  );
  provider.on('server_error', (_ctx: KoaContextWithOIDC, error: Error) => log.error({ err: error.message, stack: error.stack }, 'authorization server error'));
}
