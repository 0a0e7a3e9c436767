/**
 * The token-exchange grant (RFC 8693), registered with the library's token
 * endpoint (`provider.registerGrantType`): an agent with no person at a
 * browser presents the identity its platform gave it (a Kubernetes
 * service-account token, a GitHub Actions OIDC token, another trusted
 * issuer's JWT) and gets a capability token whose tools the grants policy
 * decides from that identity's claims. The library has already
 * authenticated the client and checked it may use this grant type.
 *
 *   checkConfiguredClient   a configured client with token_exchange, or the built-in bastion-cli
 *   checkTokenTypes         subject_token(_type) present and a JWT; actor_token_type iff actor_token;
 *                           requested_token_type an access token → invalid_request
 *   checkTarget             resource / audience only this broker → invalid_target
 *   verifySubject           presented-tokens.ts, against identity.token_exchange.issuers → invalid_request
 *   verifyActor             the same for the actor_token → invalid_request
 *   checkActorAuthorized    a subject token's may_act (RFC 8693 §4.4) names exactly the actor; an actor token
 *                           with its own act chain (it would be lost) → invalid_request
 *   checkNotRevoked         neither subject nor actor revoked → invalid_request
 *   decideGrants            bastion/grants over the subject's claims (and the actor) → invalid_request
 *   issue                   sub <issuer name>:<sub>; act = the actor over the subject token's own chain
 *
 * RFC 8693 §2.2.2: a subject or actor token that is invalid, or unacceptable
 * by policy, is invalid_request.
 *
 * @example
 *   provider.registerGrantType(TOKEN_EXCHANGE, tokenExchangeGrant(deps), TOKEN_EXCHANGE_PARAMETERS);
 */
import { errors, type KoaContextWithOIDC } from 'oidc-provider';
import { MAX_ACT_DEPTH, nestActChain } from '../../auth/act.ts';
import { Denial } from '../../errors.ts';
import type { GrantActor, GrantIdentity } from '../grants.ts';
import { checkConfiguredClient, checkNotRevoked, checkTarget, decideGrants, issueHeadlessToken, refusal, TOKEN_TYPE_ACCESS_TOKEN, type HeadlessDeps } from '../headless-token.ts';
import { verifyPresentedToken, type PresentedToken, type TrustedIssuer } from '../presented-tokens.ts';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const TOKEN_EXCHANGE_PARAMETERS = ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'resource', 'audience', 'scope'];
/** The public client for scripts and `bastion token exchange`: the subject token is the credential. */
export const CLI_CLIENT_ID = 'bastion-cli';

/** Subject and actor tokens are JWTs; an ID token is one too (GitHub Actions calls its token one). */
const JWT_TOKEN_TYPES = new Set(['urn:ietf:params:oauth:token-type:jwt', 'urn:ietf:params:oauth:token-type:id_token']);
const REQUESTABLE = new Set([TOKEN_TYPE_ACCESS_TOKEN, 'urn:ietf:params:oauth:token-type:jwt']);

export interface TokenExchangeDeps extends HeadlessDeps {
  issuers: ReadonlyMap<string, TrustedIssuer & { passClaims: string[] }>;
  clockSkewMs: number;
}

type Params = Record<string, string | undefined>;

/** checkTokenTypes */
function checkTokenTypes(params: Params): void {
  if (!params.subject_token) throw refusal(errors.InvalidRequest, 'subject_token is required');
  if (!params.subject_token_type) throw refusal(errors.InvalidRequest, 'subject_token_type is required');
  if (!JWT_TOKEN_TYPES.has(params.subject_token_type)) throw refusal(errors.InvalidRequest, `subject_token_type must be one of ${[...JWT_TOKEN_TYPES].join(', ')}`);
  if (params.actor_token !== undefined && !params.actor_token_type) throw refusal(errors.InvalidRequest, 'actor_token_type is required with actor_token');
  if (params.actor_token === undefined && params.actor_token_type !== undefined) throw refusal(errors.InvalidRequest, 'actor_token_type without actor_token');
  if (params.actor_token_type !== undefined && !JWT_TOKEN_TYPES.has(params.actor_token_type)) throw refusal(errors.InvalidRequest, `actor_token_type must be one of ${[...JWT_TOKEN_TYPES].join(', ')}`);
  if (params.requested_token_type !== undefined && !REQUESTABLE.has(params.requested_token_type)) {
    throw refusal(errors.InvalidRequest, `requested_token_type must be ${TOKEN_TYPE_ACCESS_TOKEN} (a capability token)`);
  }
}

/** verifySubject / verifyActor: a Denial becomes invalid_request naming which token and why. */
async function verify(which: 'subject_token' | 'actor_token', token: string, deps: TokenExchangeDeps): Promise<PresentedToken> {
  try {
    return await verifyPresentedToken(token, deps.issuers, { clockSkewMs: deps.clockSkewMs });
  } catch (error) {
    if (!(error instanceof Denial)) throw error;
    throw refusal(errors.InvalidRequest, `${which} refused (${error.code}): ${error.reason}`);
  }
}

/** A workload's subject on this broker: its issuer's name first, so two issuers' subjects never meet. */
function subjectOf(token: PresentedToken): string {
  const sub = `${token.issuer.name}:${token.claims.sub}`;
  if (sub.length > 256) throw refusal(errors.InvalidRequest, `the subject ${token.issuer.name}:… is longer than 256 characters`);
  return sub;
}

/** The claims the issuer's config passes to the grants policy. */
function passedClaims(token: PresentedToken, deps: TokenExchangeDeps): GrantIdentity['claims'] {
  const names = deps.issuers.get(token.issuer.issuer)?.passClaims ?? [];
  return Object.fromEntries(names.filter((name) => token.claims[name] !== undefined).map((name) => [name, token.claims[name]])) as GrantIdentity['claims'];
}

/**
 * checkActorAuthorized: a subject token that names who may act for it (may_act) admits that actor only;
 * an actor token that is itself delegated (its own act) is refused, as its chain could only be dropped.
 */
function checkActorAuthorized(subject: PresentedToken, actor: PresentedToken): void {
  if (actor.act.length > 0) throw refusal(errors.InvalidRequest, 'actor_token refused: it carries its own act chain, which the issued token could not record');
  const mayAct = subject.claims.may_act;
  if (mayAct === undefined) return;
  if (typeof mayAct !== 'object' || mayAct === null || Array.isArray(mayAct) || typeof (mayAct as { sub?: unknown }).sub !== 'string') {
    throw refusal(errors.InvalidRequest, 'subject_token refused: its may_act claim is malformed');
  }
  const allowed = mayAct as { sub: string; iss?: unknown };
  if (allowed.sub !== actor.claims.sub || (allowed.iss !== undefined && allowed.iss !== actor.issuer.issuer)) {
    throw refusal(errors.InvalidRequest, `actor_token refused: its subject ${actor.issuer.name}:${actor.claims.sub} is not the actor the subject token authorizes (may_act)`);
  }
}

export function tokenExchangeGrant(deps: TokenExchangeDeps): (ctx: KoaContextWithOIDC) => Promise<void> {
  return async (ctx) => {
    const params = ctx.oidc.params as Params;
    const client = checkConfiguredClient(ctx, deps, 'token_exchange', CLI_CLIENT_ID);
    checkTokenTypes(params);
    checkTarget(params, deps);
    const subject = await verify('subject_token', params.subject_token!, deps);
    const actor = params.actor_token === undefined ? undefined : await verify('actor_token', params.actor_token, deps);
    if (actor) checkActorAuthorized(subject, actor);
    const sub = subjectOf(subject);
    const actorSub = actor ? subjectOf(actor) : undefined;
    await checkNotRevoked(deps, sub, errors.InvalidRequest);
    if (actorSub) await checkNotRevoked(deps, actorSub, errors.InvalidRequest);

    // The actor acts for the subject, over whatever chain the subject token already carried.
    const chain = [...(actorSub ? [{ sub: actorSub }] : []), ...subject.act];
    if (chain.length > MAX_ACT_DEPTH) throw refusal(errors.InvalidRequest, `the delegation chain would be deeper than ${MAX_ACT_DEPTH} actors`);

    const identity: GrantIdentity = { iss: subject.issuer.issuer, sub: subject.claims.sub, groups: [], claims: passedClaims(subject, deps), source: 'workload', issuer_name: subject.issuer.name };
    const grantActor: GrantActor | undefined = actor ? { iss: actor.issuer.issuer, sub: actor.claims.sub, claims: passedClaims(actor, deps), issuer_name: actor.issuer.name } : undefined;
    const scopes = (params.scope ?? '').split(' ').filter(Boolean);
    const grant = decideGrants(deps, { version: 1, identity, client, ...(grantActor ? { actor: grantActor } : {}), scopes, grant_type: 'token_exchange', context: { time: new Date().toISOString() } }, errors.InvalidRequest);

    const act = nestActChain(chain);
    await issueHeadlessToken(
      ctx,
      deps,
      {
        sub,
        cap: grant.cap,
        ttlMs: grant.ttlMs,
        ...(act ? { act } : {}),
        audit: { subject_issuer: subject.issuer.issuer, ...(actor ? { actor: actorSub, actor_issuer: actor.issuer.issuer } : {}), act: chain.map((link) => link.sub) },
      },
      { grantType: 'token_exchange', exchanged: true },
    );
  };
}
