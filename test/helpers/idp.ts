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
import { decodeJwt, exportJWK, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose';
import Provider, { type Configuration } from 'oidc-provider';
import type { Page } from 'playwright-core';

export interface IdpUser {
  email: string;
  groups: string[];
}

/** Changes the claims of the ID tokens the IdP's token endpoint returns (re-signed with its own key). */
export type IdTokenTamper = (claims: Record<string, unknown>) => Record<string, unknown>;

export interface TestIdp {
  issuer: string;
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
export async function startTestIdp(options: { bastionCallbacks: () => string[]; configuration?: Partial<Configuration> }): Promise<TestIdp> {
  const users = new Map<string, IdpUser>([['alice', { email: 'alice@example.com', groups: ['engineering'] }]]);
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let provider: Provider | undefined;
  // Its own signing key, so the test can re-sign a tampered ID token as the IdP would.
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const signingJwk: JWK = { ...(await exportJWK(privateKey)), kid: 'test-idp', alg: 'ES256', use: 'sig' };
  const signingKey = await importJWK(signingJwk, 'ES256');
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
      ],
    });
    return provider;
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
