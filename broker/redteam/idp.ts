/**
 * The red team's stand-in for the organisation's identity provider: a real
 * oidc-provider on a loopback port whose one user, the victim
 * (`rt-victim`, group `rt-agents`), is signed in without a form, so the
 * authorization-server cases can run headless. Every target broker is its
 * relying party (a native client: any loopback port, RFC 8252).
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
import Provider from 'oidc-provider';
import { generateSigningKey } from '../auth/keys.ts';

export const VICTIM = 'rt-victim';
export const VICTIM_GROUP = 'rt-agents';

export interface RedteamIdp {
  issuer: string;
  /** Writes the client secret into `dir`; returns the identity.upstream config of a target. */
  upstreamFor(dir: string): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

export async function startRedteamIdp(): Promise<RedteamIdp> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const secret = randomBytes(32).toString('base64url');
  const { privateJwk } = await generateSigningKey('ES256');
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'bastion',
        client_secret: secret,
        application_type: 'native',
        redirect_uris: ['http://127.0.0.1/oauth/callback'],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        id_token_signed_response_alg: 'ES256',
      },
    ],
    jwks: { keys: [privateJwk as never] },
    cookies: { names: { session: 'rt_idp_session', interaction: 'rt_idp_interaction', resume: 'rt_idp_resume' }, keys: [randomBytes(32).toString('base64url')] },
    findAccount: async (_ctx, id) => (id === VICTIM ? { accountId: id, claims: async () => ({ sub: id, email: 'victim@redteam.invalid', groups: [VICTIM_GROUP] }) } : undefined),
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
    const match = /^\/interaction\/([^/?]+)/.exec(req.url ?? '');
    if (!match) return void provider.callback()(req, res);
    try {
      // The victim is signed in at once: the cases attack Bastion, not this IdP.
      const details = await provider.interactionDetails(req, res);
      const grant = new provider.Grant({ accountId: VICTIM, clientId: String(details.params.client_id) });
      grant.addOIDCScope(String(details.params.scope ?? 'openid'));
      await provider.interactionFinished(req, res, { login: { accountId: VICTIM }, consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: false });
    } catch {
      res.writeHead(400).end('no such interaction');
    }
  });
  return {
    issuer,
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
