/**
 * What the headless grants (token exchange, client credentials, ID-JAG)
 * share: the steps around the grants policy, and the capability token they
 * issue. No person signs in and no refresh token is issued: an agent with a
 * workload identity exchanges it again when its token runs out.
 *
 *   checkConfiguredClient   only a client configured for the grant (or Bastion's CLI client) → unauthorized_client
 *   checkTarget             resource / audience naming anything but this broker → invalid_target
 *   checkNotRevoked         a subject revoked with `bastion token revoke --sub` → the grant's refusal
 *   decideGrants            bastion/grants on the verified identity; a grant that needs an approver is
 *                           refused (nobody is at a browser to wait)
 *   issueHeadlessToken      the library's JWT access token (typ bastion-cap+jwt, cap, act), no refresh token
 *
 * Every refusal is an OAuth error whose description says what was wrong,
 * with the same text in the audit record.
 *
 * @example
 *   const grant = decideGrants(deps, input, errors.InvalidRequest);
 *   await issueHeadlessToken(ctx, deps.resourceServer(), { sub, cap: grant.cap, ttlMs: grant.ttlMs, audit });
 */
import { errors, type KoaContextWithOIDC, type ResourceServerInstance } from 'oidc-provider';
import type { ActClaim } from '../auth/act.ts';
import { subjectRevoked } from '../auth/revocation.ts';
import type { PolicyEngine } from '../policy/engine.ts';
import type { Capability } from '../policy/schema.ts';
import type { StateStore } from '../state/store.ts';
import { RESOURCE_SCOPE } from './resource-server.ts';
import { decideGrant, GrantRefusal, type Grant, type GrantsInput } from './grants.ts';
import { decideIssuance } from './issuance.ts';

export const TOKEN_TYPE_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';

/** The OAuth error classes a headless grant refuses with (RFC 6749 §5.2, RFC 8693 §2.2.2). */
export type RefusalClass = typeof errors.InvalidRequest | typeof errors.InvalidGrant | typeof errors.InvalidTarget | typeof errors.UnauthorizedClient | typeof errors.InvalidClientAuth;

/** An OAuth error whose description (shown to the client) and detail (audited) both say what was wrong. */
export function refusal(kind: RefusalClass, description: string): Error {
  // The classes' constructors differ (InvalidRequest's second argument is a status code): set the text afterwards.
  const error = new (kind as new () => Error & { error_description: string; error_detail: string })();
  error.error_description = description;
  error.error_detail = description;
  return error;
}

export interface HeadlessDeps {
  /** The broker's resource identifier and the authorization server's issuer. */
  resource: string;
  issuer: string;
  policy: () => PolicyEngine;
  state: StateStore;
  maxTtlMs: number;
  /** Clients from identity.clients, by id, with the grants each may use. */
  configuredClients: ReadonlyMap<string, readonly string[]>;
  /** The resource server the token is for (the same one the authorization code grant uses). */
  resourceServer: () => ResourceServerInstance;
}

/** checkConfiguredClient: headless grants are for clients this broker configured for them, never a registered one. */
export function checkConfiguredClient(ctx: KoaContextWithOIDC, deps: HeadlessDeps, grant: string, builtin?: string): GrantsInput['client'] {
  const client = ctx.oidc.client!;
  const id = client.clientId;
  const registration = id === builtin ? 'builtin' : deps.configuredClients.get(id)?.includes(grant) ? 'static' : undefined;
  if (!registration) throw refusal(errors.UnauthorizedClient, `client ${id} is not configured for ${grant} on this broker (identity.clients[].grant_types)`);
  return { id, ...(client.clientName ? { name: String(client.clientName).slice(0, 256) } : {}), registration };
}

/** checkTarget: `resource` (RFC 8707) and `audience` (RFC 8693) may only name this broker. */
export function checkTarget(params: Record<string, unknown>, deps: HeadlessDeps): void {
  const { resource, audience } = params;
  if (resource !== undefined && resource !== deps.resource) throw refusal(errors.InvalidTarget, `this authorization server only issues tokens for ${deps.resource}`);
  if (audience !== undefined && audience !== deps.resource && audience !== deps.issuer) throw refusal(errors.InvalidTarget, `audience must be ${deps.resource} (or this server, ${deps.issuer})`);
}

/** checkNotRevoked */
export async function checkNotRevoked(deps: HeadlessDeps, sub: string, kind: RefusalClass): Promise<void> {
  if (await subjectRevoked(deps.state, sub)) throw refusal(kind, `subject ${sub} is revoked on this broker`);
}

/** decideGrants: the grants policy's answer, or the grant's refusal saying why there is none. */
export function decideGrants(deps: HeadlessDeps, input: GrantsInput, kind: RefusalClass): Grant {
  let grant: Grant;
  try {
    grant = decideGrant(deps.policy(), input, deps.maxTtlMs);
  } catch (error) {
    if (!(error instanceof GrantRefusal)) throw error;
    throw refusal(kind, `${error.code === 'BASTION_GRANT_DENIED' ? 'the grants policy grants nothing' : 'the grants policy failed'}: ${error.reason}`);
  }
  if (grant.approval.required) throw refusal(kind, `the grants policy wants an approver for this grant (${grant.approval.reason}), and a headless grant cannot wait for one`);
  return grant;
}

export interface HeadlessToken {
  /** The token's subject (a workload's is prefixed with its issuer's name). */
  sub: string;
  cap: Capability[];
  ttlMs: number;
  act?: ActClaim;
  /** Grant-specific facts for the audit record of the issued token. */
  audit: Record<string, unknown>;
}

/** issueHeadlessToken: signs the capability token and answers the token request (RFC 6749 §5.1; RFC 8693 §2.2.1 when `exchanged`). */
export async function issueHeadlessToken(ctx: KoaContextWithOIDC, deps: HeadlessDeps, token: HeadlessToken, options: { grantType: string; exchanged: boolean }): Promise<void> {
  // Tokens bound to a DPoP key need the library's proof checks, which only its own grants run.
  if (ctx.get('dpop')) throw refusal(errors.InvalidRequest, 'DPoP-bound tokens are not issued for this grant; send no DPoP header');
  decideIssuance(ctx, { cap: token.cap, ttlMs: token.ttlMs, ...(token.act ? { act: token.act } : {}), audit: token.audit });
  const { AccessToken } = ctx.oidc.provider;
  const accessToken = new AccessToken({
    accountId: token.sub,
    client: ctx.oidc.client!,
    gty: options.grantType,
    scope: RESOURCE_SCOPE,
    resourceServer: deps.resourceServer(),
  } as ConstructorParameters<typeof AccessToken>[0]);
  ctx.oidc.entity('AccessToken', accessToken);
  const value = await accessToken.save();
  ctx.body = {
    access_token: value,
    ...(options.exchanged ? { issued_token_type: TOKEN_TYPE_ACCESS_TOKEN } : {}),
    token_type: 'Bearer',
    expires_in: accessToken.expiration,
    scope: RESOURCE_SCOPE,
  };
}
