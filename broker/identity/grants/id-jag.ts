/**
 * Enterprise-managed authorization: the Identity Assertion JWT
 * Authorization Grant (ID-JAG, draft-ietf-oauth-identity-assertion-authz-grant-06),
 * presented with the jwt-bearer grant (RFC 7523 §2.1). The organisation's
 * IdP (identity.upstream), which already signs users in to Bastion, issues
 * it to a client for this authorization server; Bastion exchanges it for a
 * capability token decided by the grants policy from the user's groups, as
 * at sign-in, with no browser. The library has already authenticated the
 * client (confidential: a secret or private_key_jwt).
 *
 *   checkConfiguredClient   a configured client with jwt_bearer → unauthorized_client
 *   checkConfidential       the client authenticated (never `none`; the draft's §7.1) → unauthorized_client
 *   checkTarget             resource / audience parameters only this broker → invalid_target
 *   verifyIdJag             presented-tokens.ts: typ oauth-id-jag+jwt, iss the IdP, aud this server's
 *                           issuer exactly, pinned algorithms, lifetime ≤ id_jag.max_lifetime → invalid_grant
 *   checkIdJagClient        its client_id is the client authenticating now → invalid_grant
 *   checkIdJagResource      its resource, when present, names only this broker → invalid_grant
 *   checkIdJagSingleUse     its jti claimed once in the state store until it expires → invalid_grant
 *   checkNotRevoked         the user, revoked with `bastion token revoke --sub` → invalid_grant
 *   decideGrants            bastion/grants on the user's groups (grant_type jwt_bearer) → invalid_grant
 *   issue                   sub the IdP's subject (as at sign-in), no refresh token
 *
 * @example
 *   provider.registerGrantType(JWT_BEARER, idJagGrant(deps), JWT_BEARER_PARAMETERS);
 */
import { createHash } from 'node:crypto';
import { errors, type KoaContextWithOIDC } from 'oidc-provider';
import { Denial } from '../../errors.ts';
import type { UpstreamIdpConfig } from '../config.ts';
import { checkConfiguredClient, checkNotRevoked, checkTarget, decideGrants, issueHeadlessToken, refusal, type HeadlessDeps } from '../headless-token.ts';
import { verifyPresentedToken, type TrustedIssuer } from '../presented-tokens.ts';
import { identityFrom, UpstreamRefusal } from '../upstream.ts';

export const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
export const JWT_BEARER_PARAMETERS = ['assertion', 'scope', 'resource', 'audience'];
/** The JOSE typ of an ID-JAG (the draft's §3). */
export const ID_JAG_TYPE = 'oauth-id-jag+jwt';
const ID_JAGS = 'oauth:id-jag';

export interface IdJagDeps extends HeadlessDeps {
  /** The organisation's IdP as the issuer of ID-JAGs (audience: this authorization server). */
  idp: TrustedIssuer;
  upstream: Pick<UpstreamIdpConfig, 'groups_claim' | 'pass_claims'>;
  clockSkewMs: number;
}

export function idJagGrant(deps: IdJagDeps): (ctx: KoaContextWithOIDC) => Promise<void> {
  const issuers = new Map([[deps.idp.issuer, deps.idp]]);
  return async (ctx) => {
    const params = ctx.oidc.params as Record<string, string | undefined>;
    const client = checkConfiguredClient(ctx, deps, 'jwt_bearer');
    if (ctx.oidc.client!.clientAuthMethod === 'none') throw refusal(errors.UnauthorizedClient, 'an ID-JAG is only exchanged by a client that authenticates (a confidential client)');
    checkTarget(params, deps);
    if (!params.assertion) throw refusal(errors.InvalidRequest, 'assertion (the ID-JAG) is required');

    // verifyIdJag
    let jag;
    try {
      jag = await verifyPresentedToken(params.assertion, issuers, { clockSkewMs: deps.clockSkewMs });
    } catch (error) {
      if (!(error instanceof Denial)) throw error;
      throw refusal(errors.InvalidGrant, `ID-JAG refused (${error.code}): ${error.reason}`);
    }
    const { claims } = jag;
    // checkIdJagClient
    if (claims.client_id !== client.id) throw refusal(errors.InvalidGrant, `the ID-JAG was issued for client ${JSON.stringify(claims.client_id ?? null)}, not ${client.id}`);
    // checkIdJagResource
    const resources = claims.resource === undefined ? [] : Array.isArray(claims.resource) ? claims.resource : [claims.resource];
    if (resources.some((resource) => resource !== deps.resource)) throw refusal(errors.InvalidGrant, `the ID-JAG is for another resource (${JSON.stringify(claims.resource)}), not ${deps.resource}`);
    // checkIdJagSingleUse
    if (typeof claims.jti !== 'string' || claims.jti.length === 0) throw refusal(errors.InvalidGrant, 'the ID-JAG has no jti');
    const key = createHash('sha256').update(`${claims.iss}\n${claims.jti}`).digest('base64url');
    if (!(await deps.state.claim(ID_JAGS, key, Math.max(1000, claims.exp * 1000 - Date.now() + deps.clockSkewMs)))) throw refusal(errors.InvalidGrant, 'this ID-JAG was presented before: each works once');

    let identity;
    try {
      identity = { ...identityFrom({ ...claims, iss: deps.idp.issuer }, deps.upstream), source: 'idp' as const };
    } catch (error) {
      if (!(error instanceof UpstreamRefusal)) throw error;
      throw refusal(errors.InvalidGrant, `ID-JAG refused: ${error.message}`);
    }
    await checkNotRevoked(deps, identity.sub, errors.InvalidGrant);
    const scopes = typeof claims.scope === 'string' ? claims.scope.split(' ').filter(Boolean) : [];
    const grant = decideGrants(deps, { version: 1, identity, client, scopes, grant_type: 'jwt_bearer', context: { time: new Date().toISOString() } }, errors.InvalidGrant);
    await issueHeadlessToken(
      ctx,
      deps,
      { sub: identity.sub, cap: grant.cap, ttlMs: grant.ttlMs, audit: { assertion_issuer: deps.idp.issuer, groups: identity.groups, id_jag_jti: claims.jti } },
      { grantType: JWT_BEARER, exchanged: false },
    );
  };
}
