/**
 * Bastion as an OpenID Connect relying party of the organisation's IdP
 * (openid-client does the protocol): the authorization endpoint sends the
 * user there with code + PKCE (S256), state and nonce; the callback checks
 * the ID token (signature, iss, aud, exp, nonce: openid-client) and yields
 * the identity the grants policy decides on. At refresh, the IdP's own
 * refresh token gets a fresh ID token, so the groups the policy sees are the
 * groups the user has now, and a user disabled at the IdP cannot refresh.
 *
 * @example
 *   const idp = await connectUpstream(config.identity.upstream, { redirectUri });
 *   const { url, transaction } = await idp.startSignIn();          // redirect the browser to url
 *   const signedIn = await idp.finishSignIn(callbackUrl, transaction); // throws UpstreamRefusal
 */
import { readFile } from 'node:fs/promises';
import * as oidc from 'openid-client';
import type { JWK } from 'jose';
import { importJWK } from 'jose';
import { insecureLoopback, type UpstreamIdpConfig } from './config.ts';
import type { GrantIdentity } from './grants.ts';

/** What must survive between sending the user to the IdP and their return; kept server-side, never in the browser. */
export interface SignInTransaction {
  state: string;
  nonce: string;
  codeVerifier: string;
  /** A sign-in that must be recent: sent as max_age (with prompt=login), and the ID token's auth_time checked against it. */
  maxAgeS?: number;
}

export interface SignedIn {
  identity: GrantIdentity;
  /** The IdP's refresh token, when it issued one (offline_access): how refresh learns the current groups. */
  upstreamRefreshToken: string | undefined;
  /** When the user authenticated at the IdP (the ID token's auth_time, seconds), if it said. */
  authTime: number | undefined;
}

export type UpstreamRefusalCode = 'state_mismatch' | 'id_token_invalid' | 'idp_error' | 'idp_unreachable' | 'identity_invalid';

/** The sign-in at the IdP failed; `code` names how, `reason` says it for a person. */
export class UpstreamRefusal extends Error {
  override readonly name = 'UpstreamRefusal';
  readonly code: UpstreamRefusalCode;
  constructor(code: UpstreamRefusalCode, reason: string) {
    super(reason);
    this.code = code;
  }
}

export interface UpstreamIdp {
  issuer: string;
  /** `maxAgeS`: the user must have authenticated at most this long ago (the IdP is asked to log them in again). */
  startSignIn(options?: { maxAgeS?: number }): Promise<{ url: string; transaction: SignInTransaction }>;
  finishSignIn(callbackUrl: URL, transaction: SignInTransaction): Promise<SignedIn>;
  /** The identity as the IdP sees it now; throws UpstreamRefusal when the IdP refuses (user disabled, session revoked). */
  refreshIdentity(refreshToken: string, expectedSub: string): Promise<SignedIn>;
}

async function clientAuthentication(config: UpstreamIdpConfig, clientSecret: string | undefined): Promise<oidc.ClientAuth> {
  if (clientSecret) return oidc.ClientSecretBasic(clientSecret);
  if (config.private_key_file) {
    const jwk = JSON.parse(await readFile(config.private_key_file, 'utf8')) as JWK;
    const alg = jwk.alg ?? (jwk.crv === 'Ed25519' ? 'EdDSA' : jwk.crv === 'P-256' ? 'ES256' : 'RS256');
    return oidc.PrivateKeyJwt({ key: (await importJWK(jwk, alg)) as oidc.CryptoKey, kid: jwk.kid! });
  }
  if (config.client_secret_file) return oidc.ClientSecretBasic((await readFile(config.client_secret_file, 'utf8')).trim());
  return oidc.None();
}

/**
 * The verified claims (an ID token's, or an ID-JAG's), reduced to what the grants policy takes.
 * Throws UpstreamRefusal('identity_invalid') when the groups claim is not strings.
 */
export function identityFrom(claims: { iss: string; sub: string; [claim: string]: unknown }, config: Pick<UpstreamIdpConfig, 'groups_claim' | 'pass_claims'>): GrantIdentity {
  // A list of strings; a single string (one role, Google's hd) counts as one group.
  const claim = claims[config.groups_claim];
  const groups = typeof claim === 'string' ? [claim] : claim;
  if (groups !== undefined && (!Array.isArray(groups) || groups.some((g) => typeof g !== 'string'))) {
    throw new UpstreamRefusal('identity_invalid', `the ID token's ${config.groups_claim} claim is not a string or a list of strings`);
  }
  const passed = Object.fromEntries(config.pass_claims.filter((name) => claims[name] !== undefined).map((name) => [name, claims[name]]));
  return {
    iss: claims.iss,
    sub: claims.sub,
    ...(typeof claims.email === 'string' ? { email: claims.email } : {}),
    ...(typeof claims.email_verified === 'boolean' ? { email_verified: claims.email_verified } : {}),
    ...(typeof claims.name === 'string' ? { name: claims.name } : {}),
    groups: (groups as string[] | undefined) ?? [],
    claims: passed as GrantIdentity['claims'],
  };
}

/** Maps openid-client's failures to the refusal a person can act on. */
function refusalOf(error: unknown): UpstreamRefusal {
  if (error instanceof UpstreamRefusal) return error;
  if (error instanceof oidc.AuthorizationResponseError) return new UpstreamRefusal('idp_error', `the IdP refused the sign-in: ${error.error}${error.error_description ? ` (${error.error_description})` : ''}`);
  if (error instanceof oidc.ResponseBodyError) return new UpstreamRefusal('idp_error', `the IdP refused: ${error.error}${error.error_description ? ` (${error.error_description})` : ''}`);
  const err = error as Error & { code?: string; cause?: unknown };
  const message = err.message ?? String(error);
  if (/state/i.test(message) && err.code === 'OAUTH_INVALID_RESPONSE') return new UpstreamRefusal('state_mismatch', `the IdP's response does not belong to this sign-in: ${message}`);
  if (/fetch failed|ECONNREFUSED|timed? ?out|aborted/i.test(message)) return new UpstreamRefusal('idp_unreachable', `the IdP could not be reached: ${message}`);
  return new UpstreamRefusal('id_token_invalid', `the IdP's response failed its checks: ${message}`);
}

/**
 * Discovers the IdP and returns its relying party. Throws at start-up if the
 * IdP cannot be discovered, so a misconfigured issuer is found at once.
 */
export async function connectUpstream(config: UpstreamIdpConfig, options: { redirectUri: string; clientSecret?: string }): Promise<UpstreamIdp> {
  const issuerUrl = new URL(config.issuer);
  const insecure = insecureLoopback(issuerUrl);
  const timeout = (ms: number): oidc.CustomFetch => (url, init) => fetch(url, { ...init, signal: AbortSignal.timeout(ms) } as RequestInit);
  const configuration = await oidc.discovery(issuerUrl, config.client_id, { redirect_uris: [options.redirectUri] } as Partial<oidc.ClientMetadata>, await clientAuthentication(config, options.clientSecret), {
    ...(insecure ? { execute: [oidc.allowInsecureRequests] } : {}),
    [oidc.customFetch]: timeout(config.timeout),
  });
  configuration[oidc.customFetch] = timeout(config.timeout);
  const scope = config.scopes.join(' ');

  return {
    issuer: configuration.serverMetadata().issuer,
    async startSignIn(freshness = {}) {
      const transaction: SignInTransaction = { state: oidc.randomState(), nonce: oidc.randomNonce(), codeVerifier: oidc.randomPKCECodeVerifier(), ...(freshness.maxAgeS ? { maxAgeS: freshness.maxAgeS } : {}) };
      const url = oidc.buildAuthorizationUrl(configuration, {
        ...config.authorization_params,
        ...(freshness.maxAgeS ? { max_age: String(freshness.maxAgeS), prompt: 'login' } : {}),
        redirect_uri: options.redirectUri,
        scope,
        state: transaction.state,
        nonce: transaction.nonce,
        code_challenge: await oidc.calculatePKCECodeChallenge(transaction.codeVerifier),
        code_challenge_method: 'S256',
      });
      return { url: url.href, transaction };
    },
    async finishSignIn(callbackUrl, transaction) {
      try {
        const tokens = await oidc.authorizationCodeGrant(configuration, callbackUrl, {
          pkceCodeVerifier: transaction.codeVerifier,
          expectedState: transaction.state,
          expectedNonce: transaction.nonce,
          idTokenExpected: true,
          // openid-client then requires auth_time and refuses one older than max_age.
          ...(transaction.maxAgeS ? { maxAge: transaction.maxAgeS } : {}),
        });
        const claims = tokens.claims();
        if (!claims) throw new UpstreamRefusal('id_token_invalid', 'the IdP returned no ID token');
        return { identity: identityFrom(claims, config), upstreamRefreshToken: tokens.refresh_token, authTime: typeof claims.auth_time === 'number' ? claims.auth_time : undefined };
      } catch (error) {
        throw refusalOf(error);
      }
    },
    async refreshIdentity(refreshToken, expectedSub) {
      try {
        const tokens = await oidc.refreshTokenGrant(configuration, refreshToken);
        const claims = tokens.claims();
        if (!claims) throw new UpstreamRefusal('id_token_invalid', 'the IdP returned no ID token on refresh; its groups cannot be known');
        if (claims.sub !== expectedSub) throw new UpstreamRefusal('id_token_invalid', 'the IdP refreshed a different subject');
        return { identity: identityFrom(claims, config), upstreamRefreshToken: tokens.refresh_token ?? refreshToken, authTime: typeof claims.auth_time === 'number' ? claims.auth_time : undefined };
      } catch (error) {
        throw refusalOf(error);
      }
    },
  };
}
