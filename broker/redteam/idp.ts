/**
 * The red team's stand-in for the organisation's identity provider: a real
 * oidc-provider on a loopback port whose users are signed in without a
 * form, so the authorization-server cases can run headless: the victim
 * (`rt-victim`, groups `rt-agents` and `rt-approvers`) unless a browser
 * visited /as/<user> first (`rt-outsider`, group `rt-outsiders`: no approver
 * role). Every target broker is its relying party (a native client: any
 * loopback port, RFC 8252). Its key also signs the workload tokens of the
 * token-exchange cases: to the brokers it is a trusted workload issuer too
 * (`rt-workload`).
 *
 * @example
 *   const idp = await startRedteamIdp();
 *   document.identity = { upstream: await idp.upstreamFor(dir) };
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { importJWK, SignJWT } from 'jose';
import Provider from 'oidc-provider';
import { generateSigningKey } from '../auth/keys.ts';

export const VICTIM = 'rt-victim';
export const VICTIM_GROUP = 'rt-agents';
/** The victim's group that holds the approver role on the brokers (approvals.sso.roles). */
export const APPROVER_GROUP = 'rt-approvers';
export const OUTSIDER = 'rt-outsider';
/** The name the brokers know the IdP by as a token-exchange issuer. */
export const WORKLOAD_ISSUER = 'rt-workload';

const USERS: Record<string, { email: string; groups: string[] }> = {
  [VICTIM]: { email: 'victim@redteam.invalid', groups: [VICTIM_GROUP, APPROVER_GROUP] },
  [OUTSIDER]: { email: 'outsider@redteam.invalid', groups: ['rt-outsiders'] },
};

export interface RedteamIdp {
  issuer: string;
  /** Signs a JWT with the IdP's key (ES256, its kid): the workload tokens of the token-exchange cases. */
  signWorkloadToken(claims: Record<string, unknown>, header?: Record<string, unknown>): Promise<string>;
  /** The IdP's public signing key (what an algorithm-confusion attack keys HMAC with). */
  publicJwk: Record<string, unknown>;
  /** Writes the client secret into `dir`; returns the identity.upstream config of a target. */
  upstreamFor(dir: string): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

export async function startRedteamIdp(): Promise<RedteamIdp> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const secret = randomBytes(32).toString('base64url');
  const { privateJwk, jwks } = await generateSigningKey('ES256');
  const signingKey = await importJWK(privateJwk, 'ES256');
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'bastion',
        client_secret: secret,
        application_type: 'native',
        redirect_uris: ['http://127.0.0.1/oauth/callback', 'http://127.0.0.1/approvals/sso/callback'],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        id_token_signed_response_alg: 'ES256',
      },
    ],
    jwks: { keys: [privateJwk as never] },
    cookies: { names: { session: 'rt_idp_session', interaction: 'rt_idp_interaction', resume: 'rt_idp_resume' }, keys: [randomBytes(32).toString('base64url')] },
    findAccount: async (_ctx, id) => {
      const user = USERS[id];
      return user ? { accountId: id, claims: async () => ({ sub: id, email: user.email, groups: user.groups }) } : undefined;
    },
    scopes: ['openid', 'offline_access', 'email', 'groups'],
    claims: { openid: ['sub'], email: ['email'], groups: ['groups'] },
    conformIdTokenClaims: false,
    issueRefreshToken: async () => true,
    pkce: { required: () => true },
    responseTypes: ['code'],
    features: { devInteractions: { enabled: false }, userinfo: { enabled: false }, rpInitiatedLogout: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  });
  server.on('request', async (req, res) => {
    // /as/<user>: this browser's next sign-ins are that user's.
    const as = /^\/as\/([a-z-]+)$/.exec(req.url ?? '');
    if (as && USERS[as[1]!]) return void res.writeHead(204, { 'set-cookie': `rt_user=${as[1]}; Path=/; HttpOnly` }).end();
    const match = /^\/interaction\/([^/?]+)/.exec(req.url ?? '');
    if (!match) return void provider.callback()(req, res);
    try {
      // The user is signed in at once: the cases attack Bastion, not this IdP.
      const chosen = /(?:^|;\s*)rt_user=([a-z-]+)/.exec(req.headers.cookie ?? '')?.[1];
      const user = chosen && USERS[chosen] ? chosen : VICTIM;
      const details = await provider.interactionDetails(req, res);
      const grant = new provider.Grant({ accountId: user, clientId: String(details.params.client_id) });
      grant.addOIDCScope(String(details.params.scope ?? 'openid'));
      await provider.interactionFinished(req, res, { login: { accountId: user }, consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: false });
    } catch {
      res.writeHead(400).end('no such interaction');
    }
  });
  return {
    issuer,
    publicJwk: jwks.keys[0] as Record<string, unknown>,
    signWorkloadToken: (claims, header = {}) => new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid!, ...header }).sign(signingKey),
    async upstreamFor(dir) {
      const file = path.join(dir, 'redteam-idp-secret.txt');
      await writeFile(file, secret, { mode: 0o600 });
      return { issuer, client_id: 'bastion', client_secret_file: file, scopes: ['openid', 'email', 'groups', 'offline_access'] };
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
