/**
 * The development IdP of the embedded default: a second oidc-provider, in
 * process, under /dev-idp (its own issuer), with one user, `demo`, in the
 * group `bastion-demo`, whose password is made at start-up and printed by
 * `npm start`. Bastion signs users in at it exactly as at a real IdP (code +
 * PKCE, state, nonce, ID token checks, refresh for current groups), so an
 * MCP client pointed at the broker signs in through the browser with no
 * setup. Configuring identity.upstream (or any trusted issuer) replaces it:
 * it never runs beside a real configuration.
 *
 * @example
 *   const dev = await mountDevIdp(app, { origin, bastionCallback });
 *   console.log(dev.user, dev.password);
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import express, { type Express, type Request, type Response } from 'express';
import Provider, { type Configuration } from 'oidc-provider';
import { generateSigningKey } from '../auth/keys.ts';
import type { StateStore } from '../state/store.ts';
import { stateAdapterFactory } from './adapter.ts';
import { errorPage, sendPage, text } from './pages.ts';

export const DEV_IDP_PATH = '/dev-idp';
export const DEV_USER = 'demo';
export const DEV_GROUPS = ['bastion-demo'];

export interface DevIdp {
  issuer: string;
  user: string;
  password: string;
  clientId: string;
  clientSecret: string;
}

const digest = (value: string) => createHash('sha256').update(value).digest();

function loginPage(action: string, problem?: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Development IdP: sign in</title><link rel="stylesheet" href="/oauth/static/page.css"></head>
<body><main><h1>Development identity provider</h1>
<p>Bastion's embedded default signs you in here. Configure <code>identity.upstream</code> to use your organisation's IdP instead.</p>
${problem ? `<p id="error">${text(problem)}</p>` : ''}
<form method="post" action="${text(action)}">
<label>User <input name="username" autocomplete="username" value="${DEV_USER}"></label><br>
<label>Password <input name="password" type="password" autocomplete="current-password" autofocus></label><br>
<button type="submit" id="sign-in">Sign in</button>
</form></main></body></html>`;
}

export async function mountDevIdp(app: Express, options: { origin: string; bastionCallback: string; state: StateStore }): Promise<DevIdp> {
  const issuer = `${options.origin}${DEV_IDP_PATH}`;
  const password = randomBytes(12).toString('base64url');
  const clientSecret = randomBytes(32).toString('base64url');
  const { privateJwk } = await generateSigningKey('ES256');
  const configuration: Configuration = {
    // Behind the state interface like the authorization server's (its own namespace): sessions survive a restart.
    adapter: stateAdapterFactory(options.state, { prefix: 'dev-idp', clientTtlMs: 86_400_000 }),
    clients: [
      {
        client_id: 'bastion',
        client_secret: clientSecret,
        redirect_uris: [options.bastionCallback],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        id_token_signed_response_alg: 'ES256',
      },
    ],
    jwks: { keys: [privateJwk as never] },
    cookies: {
      names: { session: 'dev_idp_session', interaction: 'dev_idp_interaction', resume: 'dev_idp_resume' },
      keys: [randomBytes(32).toString('base64url')],
    },
    findAccount: async (_ctx, id) =>
      id === DEV_USER ? { accountId: id, claims: async () => ({ sub: id, email: 'demo@bastion.invalid', email_verified: true, name: 'Demo User', groups: DEV_GROUPS }) } : undefined,
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    conformIdTokenClaims: false,
    issueRefreshToken: async () => true,
    rotateRefreshToken: true,
    pkce: { required: () => true },
    responseTypes: ['code'],
    features: { devInteractions: { enabled: false }, userinfo: { enabled: false }, rpInitiatedLogout: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `${DEV_IDP_PATH}/interaction/${interaction.uid}` },
    ttl: { Session: 3600, Interaction: 600, Grant: 86_400, RefreshToken: 86_400, AccessToken: 600, IdToken: 600, AuthorizationCode: 60 } as Configuration['ttl'],
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = errorPage(`Development IdP: ${out.error}`, String(out.error_description ?? out.error));
    },
  };
  const provider = new Provider(issuer, configuration);
  provider.proxy = true;
  const url = new URL(options.origin);
  const forwarded = (req: Request, _res: Response, next: () => void) => {
    req.headers['x-forwarded-proto'] = url.protocol.slice(0, -1);
    req.headers['x-forwarded-host'] = url.host;
    next();
  };

  const router = express.Router();
  router.get(`${DEV_IDP_PATH}/interaction/:uid`, async (req, res) => {
    try {
      const details = await provider.interactionDetails(req, res);
      sendPage(res, 200, loginPage(`${DEV_IDP_PATH}/interaction/${encodeURIComponent(details.uid)}`));
    } catch {
      sendPage(res, 400, errorPage('Sign-in expired', 'Start again from your MCP client.'));
    }
  });
  router.post(`${DEV_IDP_PATH}/interaction/:uid`, express.urlencoded({ extended: false, limit: 4096 }), async (req, res) => {
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch {
      sendPage(res, 400, errorPage('Sign-in expired', 'Start again from your MCP client.'));
      return;
    }
    const given = typeof req.body?.password === 'string' ? req.body.password : '';
    if (req.body?.username !== DEV_USER || !timingSafeEqual(digest(given), digest(password))) {
      sendPage(res, 401, loginPage(`${DEV_IDP_PATH}/interaction/${encodeURIComponent(details.uid)}`, 'Wrong user or password (the password is printed by npm start).'));
      return;
    }
    const grant = new provider.Grant({ accountId: DEV_USER, clientId: String(details.params.client_id) });
    grant.addOIDCScope(String(details.params.scope ?? 'openid'));
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { login: { accountId: DEV_USER }, consent: { grantId } }, { mergeWithLastSubmission: false });
  });
  app.use(DEV_IDP_PATH, forwarded);
  app.use(router);
  app.use(DEV_IDP_PATH, provider.callback());
  return { issuer, user: DEV_USER, password, clientId: 'bastion', clientSecret };
}
