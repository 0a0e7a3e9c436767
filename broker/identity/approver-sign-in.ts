/**
 * Approvers sign in to the approval page at the organisation's IdP
 * (identity.upstream), as users sign in for their agents: openid-client does
 * code + PKCE (S256), state and nonce and checks the ID token. The session
 * it opens is the approval page's own (same cookie, same CSRF token), so
 * nothing downstream changes. In named steps:
 *
 *   startSignIn      /approvals/sso/start[?max_age=N]: the IdP, bound to this browser (browser-binding.ts);
 *                    with max_age the IdP is asked to log the approver in again (prompt=login)
 *   checkCallback    /approvals/sso/callback: a state this browser started, once → error page
 *   verifyIdentity   the code exchange and ID token (signature, iss, aud, exp, nonce; auth_time within
 *                    max_age when one was asked) → error page
 *   checkNotRevoked  a subject revoked with `bastion token revoke --sub` cannot approve → error page
 *   mapRoles         approvals.sso.roles: the roles whose groups the approver is in; none → error page
 *   openSession      the approval page's session, authTime the IdP's auth_time (when it said)
 *
 * The approver's subject is the IdP's, the same one their own agents'
 * tokens carry, so separation of duties holds across both: nobody approves
 * a call their own agent made. Every outcome is an `oauth/approver-sign-in`
 * audit record.
 *
 * @example
 *   router.use(approverSignInRoutes({ idp, roles, approvers, state, audit, setSession, ... }));
 */
import express, { type Response, type Router } from 'express';
import type { ApproverDirectory, ApproverSession } from '../approvals/approvers.ts';
import { subjectRevoked } from '../auth/revocation.ts';
import type { Logger } from '../log.ts';
import type { StateStore } from '../state/store.ts';
import type { OAuthAudit } from './audit.ts';
import { BrowserBoundSignIns } from './browser-binding.ts';
import { errorPage, sendPage } from './pages.ts';
import { UpstreamRefusal, type UpstreamIdp } from './upstream.ts';

export const APPROVER_SSO_START = '/approvals/sso/start';
export const APPROVER_SSO_CALLBACK = '/approvals/sso/callback';
/** Longest max_age a sign-in may ask for (a day); a shorter one forces a fresher login. */
const MAX_AGE_LIMIT_S = 86_400;

export interface ApproverSignInOptions {
  /** The IdP, as a relying party whose redirect URI is <origin>/approvals/sso/callback. */
  idp: () => Promise<UpstreamIdp>;
  /** The broker's origin (the redirect URI's). */
  origin: string;
  /** Role → the IdP groups that hold it (approvals.sso.roles). */
  roles: Record<string, string[]>;
  approvers: ApproverDirectory;
  state: StateStore;
  audit: OAuthAudit;
  log: Logger;
  secureCookies: boolean;
  /** How long a sign-in at the IdP may take. */
  ttlMs: number;
  /** Gives the browser the approval page's session cookie. */
  setSession: (res: Response, session: ApproverSession) => void;
}

/** mapRoles: every role one of whose groups the approver is in. */
export function rolesOf(groups: readonly string[], roles: Record<string, string[]>): string[] {
  return Object.entries(roles)
    .filter(([, holders]) => holders.some((group) => groups.includes(group)))
    .map(([role]) => role)
    .sort();
}

export function approverSignInRoutes(options: ApproverSignInOptions): Router {
  const { audit, log } = options;
  const router = express.Router();
  const signIns = new BrowserBoundSignIns<Record<never, never>>({ state: options.state, namespace: 'approver-sso', cookie: 'bastion_approver_sso', path: APPROVER_SSO_CALLBACK, ttlMs: options.ttlMs, secure: options.secureCookies });
  const refusePage = (res: Response, status: number, message: string) =>
    sendPage(res, status, errorPage('Approver sign-in refused', `${message} Nothing was opened; go back to the approval page to try again.`));

  // startSignIn
  router.get(APPROVER_SSO_START, async (req, res) => {
    const asked = typeof req.query.max_age === 'string' ? Number(req.query.max_age) : undefined;
    if (asked !== undefined && !(Number.isSafeInteger(asked) && asked >= 1 && asked <= MAX_AGE_LIMIT_S)) {
      refusePage(res, 400, `max_age must be a whole number of seconds from 1 to ${MAX_AGE_LIMIT_S}.`);
      return;
    }
    let started;
    try {
      started = await (await options.idp()).startSignIn(asked ? { maxAgeS: asked } : {});
    } catch (error) {
      log.error({ err: (error as Error).message }, 'identity provider unavailable for approver sign-in');
      await audit.record('oauth/approver-sign-in', 'error', {}, { error: 'temporarily_unavailable', description: `identity provider unavailable: ${(error as Error).message}` });
      refusePage(res, 503, 'The organisation identity provider cannot be reached.');
      return;
    }
    await signIns.start(res, started.transaction, {});
    res.redirect(303, started.url);
  });

  router.get(APPROVER_SSO_CALLBACK, async (req, res) => {
    // checkCallback
    const found = await signIns.finish(req, res);
    if ('refused' in found) {
      await audit.record('oauth/approver-sign-in', 'denied', { state_known: found.stateKnown }, { error: 'access_denied', description: found.refused });
      refusePage(res, 400, 'The identity provider answered a sign-in this browser did not start, or one that expired (state mismatch).');
      return;
    }
    // verifyIdentity
    let signedIn;
    try {
      signedIn = await (await options.idp()).finishSignIn(new URL(req.originalUrl, options.origin), found.pending.transaction);
    } catch (error) {
      const refusal = error instanceof UpstreamRefusal ? error : new UpstreamRefusal('id_token_invalid', (error as Error).message);
      await audit.record('oauth/approver-sign-in', 'denied', { upstream: refusal.code }, { error: 'access_denied', description: refusal.message });
      refusePage(res, 401, `Sign-in at the identity provider failed: ${refusal.message}.`);
      return;
    }
    const { identity } = signedIn;
    const who = { sub: identity.sub, idp: identity.iss, groups: identity.groups };
    // checkNotRevoked
    if (await subjectRevoked(options.state, identity.sub)) {
      await audit.record('oauth/approver-sign-in', 'denied', who, { error: 'access_denied', description: `subject ${identity.sub} is revoked` });
      refusePage(res, 403, 'You are revoked on this broker.');
      return;
    }
    // mapRoles
    const roles = rolesOf(identity.groups, options.roles);
    if (roles.length === 0) {
      await audit.record('oauth/approver-sign-in', 'denied', who, { error: 'access_denied', description: 'none of the approver roles (approvals.sso.roles) is held by a group of this user' });
      refusePage(res, 403, 'You hold no approver role on this broker: none of your groups is one that approvals.sso.roles names.');
      return;
    }
    // openSession
    const authTime = new Date((signedIn.authTime ?? Math.floor(Date.now() / 1000)) * 1000).toISOString();
    // Recorded first: if the audit trail cannot be written, no session is opened.
    await audit.record('oauth/approver-sign-in', 'ok', { ...who, roles, auth_time: authTime, ...(found.pending.transaction.maxAgeS ? { max_age: found.pending.transaction.maxAgeS } : {}) });
    options.setSession(res, await options.approvers.openSession({ sub: identity.sub, roles, authTime }));
    res.redirect(303, '/approvals');
  });
  return router;
}
