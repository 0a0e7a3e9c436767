/**
 * A real OpenID provider (oidc-provider) on a loopback port, standing in for
 * the organisation's IdP in the identity tests. Its users are a map the test
 * can edit (a group change at the IdP); the login and consent pages are the
 * library's development pages, driven in Chromium. Bastion is registered as a
 * confidential client that may refresh.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { decodeJwt, exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT, type JWK } from 'jose';
import Provider, { errors, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import type { Page } from 'playwright-core';

export interface IdpUser {
  email: string;
  groups: string[];
}

/** Changes the claims of the ID tokens the IdP's token endpoint returns (re-signed with its own key). */
export type IdTokenTamper = (claims: Record<string, unknown>) => Record<string, unknown>;

/** A client of the IdP that may ask it for ID-JAGs, and the client id it has at Bastion (the draft's client-id mapping). */
export interface IdJagClient {
  client_id: string;
  client_secret: string;
  /** The client_id claim of the ID-JAGs it gets: its id at the resource authorization server. */
  resource_client_id: string;
}

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ID_JAG_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id-jag';

export interface TestIdp {
  issuer: string;
  /** An ID token for `login` (audience the IdP client `audience`), signed with the IdP's key. */
  idToken(login: string, audience: string): Promise<string>;
  /** Signs any claims with the IdP's key (header typ oauth-id-jag+jwt unless given): hand-made ID-JAGs. */
  signIdJag(claims: Record<string, unknown>, header?: Record<string, unknown>): Promise<string>;
  /** When set, every ID token the IdP issues is rewritten (a hostile or broken IdP). */
  tamper: IdTokenTamper | undefined;
  provider: Provider;
  users: Map<string, IdpUser>;
  /** Writes Bastion's client secret to `dir`; returns the identity.upstream config. */
  upstreamConfig(dir: string): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

export const BASTION_CLIENT_SECRET = 'bastion-test-secret-0123456789abcdef';

/** Starts the IdP; `bastionCallback` is the redirect URI Bastion will use (<broker origin>/oauth/callback). */
export async function startTestIdp(options: { bastionCallbacks: () => string[]; configuration?: Partial<Configuration>; idJagClients?: IdJagClient[] }): Promise<TestIdp> {
  const users = new Map<string, IdpUser>([['alice', { email: 'alice@example.com', groups: ['engineering'] }]]);
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let provider: Provider | undefined;
  // Its own signing key, so the test can re-sign a tampered ID token as the IdP would.
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const signingJwk: JWK = { ...(await exportJWK(privateKey)), kid: 'test-idp', alg: 'ES256', use: 'sig' };
  const signingKey = await importJWK(signingJwk, 'ES256');
  const { d: _private, ...publicJwk } = signingJwk;
  const verifyingKey = await importJWK(publicJwk, 'ES256');
  const idJagClients = options.idJagClients ?? [];
  const signIdJag: TestIdp['signIdJag'] = (claims, header = {}) =>
    new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: 'test-idp', typ: 'oauth-id-jag+jwt', ...header }).sign(signingKey);
  const configuration: Configuration = {
    jwks: { keys: [signingJwk as never] },
    clientDefaults: { id_token_signed_response_alg: 'ES256' } as Configuration['clientDefaults'],
    clients: [],
    findAccount: async (_ctx, id) => {
      const user = users.get(id);
      if (!user) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, email: user.email, email_verified: true, groups: [...user.groups] }) };
    },
    scopes: ['openid', 'offline_access', 'email', 'groups'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    // Claims in the ID token itself, as enterprise IdPs are configured to put groups there.
    conformIdTokenClaims: false,
    issueRefreshToken: async () => true,
    rotateRefreshToken: true,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true }, revocation: { enabled: true } },
    ttl: { IdToken: 600, AccessToken: 600, RefreshToken: 86_400, Session: 3600, Grant: 86_400, Interaction: 600 } as Configuration['ttl'],
    cookies: { keys: ['test-idp-cookie-key-0123456789'] },
    ...options.configuration,
  };
  // Bastion's port is known only once it listens: the client is added on first use.
  const ensureClient = () => {
    if (provider) return provider;
    provider = new Provider(issuer, {
      ...configuration,
      clients: [
        {
          client_id: 'bastion',
          client_secret: BASTION_CLIENT_SECRET,
          redirect_uris: options.bastionCallbacks(),
          grant_types: ['authorization_code', 'refresh_token'],
          response_types: ['code'],
        },
        ...idJagClients.map((client) => ({ client_id: client.client_id, client_secret: client.client_secret, token_endpoint_auth_method: 'client_secret_post' as const, grant_types: [TOKEN_EXCHANGE], response_types: [], redirect_uris: [] })),
      ],
    });
    if (idJagClients.length > 0) provider.registerGrantType(TOKEN_EXCHANGE, issueIdJag, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope']);
    return provider;
  };
  /**
   * The IdP's side of enterprise-managed authorization (the draft's §4.3): a client exchanges the user's
   * ID token, issued to it, for an ID-JAG for the resource authorization server named in `audience`.
   */
  const issueIdJag = async (ctx: KoaContextWithOIDC) => {
    const params = ctx.oidc.params as Record<string, string | undefined>;
    const client = idJagClients.find((c) => c.client_id === ctx.oidc.client!.clientId)!;
    if (params.requested_token_type !== ID_JAG_TOKEN_TYPE) throw new errors.InvalidRequest('requested_token_type must be an ID-JAG');
    if (params.subject_token_type !== 'urn:ietf:params:oauth:token-type:id_token') throw new errors.InvalidRequest('subject_token_type must be an ID token');
    if (!params.audience) throw new errors.InvalidRequest('audience is required');
    let subject;
    try {
      ({ payload: subject } = await jwtVerify(params.subject_token ?? '', verifyingKey, { issuer, audience: client.client_id }));
    } catch (error) {
      throw new errors.InvalidGrant(`subject_token refused: ${(error as Error).message}`);
    }
    const user = users.get(String(subject.sub));
    if (!user) throw new errors.InvalidGrant('unknown user');
    const now = Math.floor(Date.now() / 1000);
    const jag = await signIdJag({
      iss: issuer,
      sub: subject.sub,
      aud: params.audience,
      client_id: client.resource_client_id,
      jti: randomUUID(),
      iat: now,
      exp: now + 300,
      ...(params.resource ? { resource: params.resource } : {}),
      ...(params.scope ? { scope: params.scope } : {}),
      email: user.email,
      groups: [...user.groups],
    });
    ctx.body = { issued_token_type: ID_JAG_TOKEN_TYPE, access_token: jag, token_type: 'N_A', expires_in: 300, ...(params.scope ? { scope: params.scope } : {}) };
  };
  const idp = { tamper: undefined as IdTokenTamper | undefined };
  server.on('request', (req, res) => {
    const tamper = idp.tamper;
    if (!tamper || req.method !== 'POST' || !req.url?.startsWith('/token')) return void ensureClient().callback()(req, res);
    // Let the real provider answer, then rewrite the ID token in its response.
    const chunks: Buffer[] = [];
    const write = res.write.bind(res);
    const end = res.end.bind(res);
    res.write = ((chunk: Buffer | string) => (chunks.push(Buffer.from(chunk)), true)) as typeof res.write;
    res.end = (async (chunk?: Buffer | string) => {
      if (chunk) chunks.push(Buffer.from(chunk));
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as { id_token?: string };
      if (body.id_token) {
        const claims = tamper({ ...decodeJwt(body.id_token) });
        body.id_token = await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: 'test-idp' }).sign(signingKey);
      }
      const text = JSON.stringify(body);
      res.removeHeader('content-length');
      write(text);
      return end();
    }) as unknown as typeof res.end;
    void ensureClient().callback()(req, res);
  });
  return {
    issuer,
    signIdJag,
    async idToken(login, audience) {
      const user = users.get(login);
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ email: user?.email, groups: user?.groups ?? [] })
        .setProtectedHeader({ alg: 'ES256', kid: 'test-idp' })
        .setIssuer(issuer)
        .setSubject(login)
        .setAudience(audience)
        .setIssuedAt(now)
        .setExpirationTime(now + 300)
        .sign(signingKey);
    },
    get tamper() {
      return idp.tamper;
    },
    set tamper(value) {
      idp.tamper = value;
    },
    get provider() {
      return ensureClient();
    },
    users,
    async upstreamConfig(dir) {
      const secretFile = path.join(dir, 'idp-client-secret.txt');
      await writeFile(secretFile, BASTION_CLIENT_SECRET, { mode: 0o600 });
      return { issuer, client_id: 'bastion', client_secret_file: secretFile, scopes: ['openid', 'email', 'groups', 'offline_access'], groups_claim: 'groups' };
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Signs in at the IdP's development pages (login, then its own consent) when it asks; returns once the browser left the IdP. */
export async function signInAtIdp(page: Page, issuer: string, login: string): Promise<void> {
  for (let step = 0; step < 4 && page.url().startsWith(issuer); step++) {
    if (await page.locator('input[name="login"]').count()) {
      await page.fill('input[name="login"]', login);
      await page.fill('input[name="password"]', 'any-password');
    }
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  }
}
