/**
 * The client_credentials grant for agents that are clients themselves (a
 * nightly job, a service): registered in identity.clients with their public
 * keys (a JWKS file or URL) and authenticating with private_key_jwt (RFC
 * 7523): no shared secret ever. Registered on the library's token endpoint
 * in place of its own client_credentials grant, so the grants policy
 * decides the token like every other grant. The library has already
 * authenticated the client (its signature, then client-assertion.ts: one
 * audience, short-lived, single use).
 *
 *   checkConfiguredClient   configured with client_credentials → unauthorized_client
 *   checkKeyAuthenticated   authenticated by private_key_jwt, never a secret → unauthorized_client
 *   checkTarget             resource / audience only this broker → invalid_target
 *   checkNotRevoked         `bastion token revoke --sub client:<id>` → invalid_grant
 *   decideGrants            bastion/grants for identity {source: client, sub: client id} → invalid_grant
 *   issue                   sub client:<id>, no refresh token
 *
 * @example
 *   provider.registerGrantType('client_credentials', clientCredentialsGrant(deps), CLIENT_CREDENTIALS_PARAMETERS);
 */
import { errors, type KoaContextWithOIDC } from 'oidc-provider';
import { checkConfiguredClient, checkNotRevoked, checkTarget, decideGrants, issueHeadlessToken, refusal, type HeadlessDeps } from '../headless-token.ts';

export const CLIENT_CREDENTIALS = 'client_credentials';
export const CLIENT_CREDENTIALS_PARAMETERS = ['scope', 'resource', 'audience'];

export function clientCredentialsGrant(deps: HeadlessDeps): (ctx: KoaContextWithOIDC) => Promise<void> {
  return async (ctx) => {
    const params = ctx.oidc.params as Record<string, string | undefined>;
    const client = checkConfiguredClient(ctx, deps, 'client_credentials');
    if (ctx.oidc.client!.clientAuthMethod !== 'private_key_jwt') throw refusal(errors.UnauthorizedClient, 'client_credentials needs private_key_jwt client authentication (no shared secrets)');
    checkTarget(params, deps);
    const sub = `client:${client.id}`;
    await checkNotRevoked(deps, sub, errors.InvalidGrant);
    const scopes = (params.scope ?? '').split(' ').filter(Boolean);
    const grant = decideGrants(
      deps,
      { version: 1, identity: { iss: deps.issuer, sub: client.id, groups: [], claims: {}, source: 'client' }, client, scopes, grant_type: 'client_credentials', context: { time: new Date().toISOString() } },
      errors.InvalidGrant,
    );
    await issueHeadlessToken(ctx, deps, { sub, cap: grant.cap, ttlMs: grant.ttlMs, audit: { client_authentication: 'private_key_jwt' } }, { grantType: CLIENT_CREDENTIALS, exchanged: false });
  };
}
