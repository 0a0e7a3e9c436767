/**
 * The sign-in a person goes through when an MCP client asks Bastion's
 * authorization endpoint for a code, in named steps:
 *
 *   startSignIn      the library's interaction → the IdP (code + PKCE, state, nonce; a browser-bound cookie)
 *   checkCallback    the IdP's answer belongs to this browser's pending sign-in (state), once
 *   verifyIdentity   openid-client checks the code exchange and the ID token (signature, iss, aud, exp, nonce)
 *   decideGrants     the grants policy (bastion/grants) on the verified identity → capabilities
 *   showConsent      the consent page: client, redirect URI, exactly which tools and bounds
 *   checkConsent     same origin, CSRF token, then approve (a grant, bound to the resource) or refuse
 *   askApprover      when the grants policy says so, the grant waits for a human on the approval desk
 *
 * Every refusal ends the authorization with an OAuth error at the client's
 * redirect URI (access_denied, with a description) or, when the sign-in
 * cannot be tied to an authorization at all, an error page; each is audited.
 *
 * @example
 *   app.use(interactionRoutes({ provider, upstream, state, records, ... }));
 */
import { randomBytes } from 'node:crypto';
import express, { type Request, type Response, type Router } from 'express';
import type Provider from 'oidc-provider';
import type { PolicyEngine } from '../policy/engine.ts';
import type { Capability } from '../policy/schema.ts';
import type { StateStore } from '../state/store.ts';
import type { Logger } from '../log.ts';
import { subjectRevoked } from '../auth/revocation.ts';
import type { OAuthAudit } from './audit.ts';
import type { GrantRecords } from './grant-records.ts';
import { decideGrant, GrantRefusal, type GrantIdentity, type GrantsInput } from './grants.ts';
import { consentPage, errorPage, formTarget, PAGE_CSS, sendPage, waitingPage } from './pages.ts';
import { approvalOf, askApprover } from './grant-approval.ts';
import type { ApprovalDesk } from '../approvals/desk.ts';
import { UpstreamRefusal, type UpstreamIdp } from './upstream.ts';
import { BrowserBoundSignIns, sameSecret } from './browser-binding.ts';

const CONSENTS = 'oauth:consent';

interface PendingConsent {
  identity: GrantIdentity;
  upstreamRefreshToken: string | undefined;
  client: GrantsInput['client'];
  scopes: string[];
  cap: Capability[];
  ttlMs: number;
  csrf: string;
  /** The grants policy asked for an approver; once asked, the request on the approval desk. */
  approval: { required: boolean; reason: string; reasons: string[]; id?: string; hash?: string };
}

export interface InteractionOptions {
  provider: Provider;
  issuer: string;
  resource: string;
  upstream: () => Promise<UpstreamIdp>;
  state: StateStore;
  records: GrantRecords;
  policy: () => PolicyEngine;
  audit: OAuthAudit;
  log: Logger;
  maxTtlMs: number;
  interactionTtlMs: number;
  familyMaxAgeMs: number;
  secureCookies: boolean;
  /** Clients from config (the rest registered themselves or are metadata documents). */
  staticClientIds: Set<string>;
  /** The approval desk, for grants the grants policy says need an approver; undefined when approvals are off. */
  approvals: ApprovalDesk | undefined;
}


export function interactionRoutes(options: InteractionOptions): Router {
  const { provider, state, audit, log } = options;
  const router = express.Router();
  const signIns = new BrowserBoundSignIns<{ uid: string }>({ state, namespace: 'oauth:sign-in', cookie: 'bastion_sign_in', path: '/oauth/callback', ttlMs: options.interactionTtlMs, secure: options.secureCookies });

  /** The library's interaction this browser holds (its cookie), or undefined after answering with the error page. */
  const pendingInteraction = async (req: Request, res: Response) => {
    try {
      return await provider.interactionDetails(req, res);
    } catch {
      sendPage(res, 400, errorPage('Sign-in expired', 'This sign-in is no longer pending (or was started in another browser); start again from your MCP client.'));
      return undefined;
    }
  };

  /** Ends the authorization with an OAuth error at the client's redirect URI (RFC 6749 §4.1.2.1). */
  const refuseAuthorization = async (res: Response, uid: string, error: string, description: string) => {
    const interaction = await provider.Interaction.find(uid);
    if (!interaction) {
      sendPage(res, 400, errorPage('Sign-in expired', 'This sign-in is no longer pending; start again from your MCP client.'));
      return;
    }
    interaction.result = { error, error_description: description };
    await interaction.save(Math.max(1, (interaction.exp ?? 0) - Math.floor(Date.now() / 1000)));
    res.redirect(303, interaction.returnTo);
  };

  router.get('/oauth/static/page.css', (_req, res) => {
    res.setHeader('Content-Type', 'text/css; charset=utf-8');
    res.setHeader('Cache-Control', 'max-age=3600');
    res.end(PAGE_CSS);
  });

  // startSignIn: the library decided this authorization needs the user; send them to the IdP.
  router.get('/oauth/interaction/:uid', async (req, res) => {
    const details = await pendingInteraction(req, res);
    if (!details) return;
    let started;
    try {
      started = await (await options.upstream()).startSignIn();
    } catch (error) {
      log.error({ err: (error as Error).message }, 'identity provider unavailable');
      await audit.record('oauth/sign-in', 'error', { client_id: details.params.client_id }, { error: 'temporarily_unavailable', description: `identity provider unavailable: ${(error as Error).message}` });
      await refuseAuthorization(res, details.uid, 'temporarily_unavailable', 'the organisation identity provider cannot be reached');
      return;
    }
    await signIns.start(res, started.transaction, { uid: details.uid });
    await audit.record('oauth/authorize', 'info', {
      client_id: details.params.client_id,
      redirect_uri: details.params.redirect_uri,
      resource: details.params.resource,
      interaction: details.uid,
    });
    res.redirect(303, started.url);
  });

  router.get('/oauth/callback', async (req: Request, res) => {
    // checkCallback: the state names a pending sign-in, started in this browser; used once.
    const found = await signIns.finish(req, res);
    if ('refused' in found) {
      await audit.record('oauth/sign-in', 'denied', { state_known: found.stateKnown }, { error: 'access_denied', description: found.refused });
      sendPage(res, 400, errorPage('Sign-in refused', 'The identity provider answered a sign-in this browser did not start, or one that expired (state mismatch). Start again from your MCP client.'));
      return;
    }
    const { pending } = found;
    const interaction = await provider.Interaction.find(pending.uid);
    if (!interaction) {
      sendPage(res, 400, errorPage('Sign-in expired', 'This sign-in is no longer pending; start again from your MCP client.'));
      return;
    }
    const params = interaction.params as Record<string, string | undefined>;
    const clientId = params.client_id ?? '';

    // verifyIdentity: openid-client exchanges the code (PKCE) and checks the ID token.
    let signedIn;
    try {
      signedIn = await (await options.upstream()).finishSignIn(new URL(req.originalUrl, options.issuer), pending.transaction);
    } catch (error) {
      const refusal = error instanceof UpstreamRefusal ? error : new UpstreamRefusal('id_token_invalid', (error as Error).message);
      await audit.record('oauth/sign-in', 'denied', { client_id: clientId, upstream: refusal.code }, { error: 'access_denied', description: refusal.message });
      await refuseAuthorization(res, pending.uid, 'access_denied', `sign-in at the identity provider failed: ${refusal.message}`);
      return;
    }
    const { identity } = signedIn;
    const who = { sub: identity.sub, idp: identity.iss, client_id: clientId };
    if (await subjectRevoked(state, identity.sub)) {
      await audit.record('oauth/sign-in', 'denied', who, { error: 'access_denied', description: `subject ${identity.sub} is revoked` });
      await refuseAuthorization(res, pending.uid, 'access_denied', 'this user is revoked on this broker');
      return;
    }
    await audit.record('oauth/sign-in', 'ok', { ...who, groups: identity.groups });

    // decideGrants: what this identity's agent may do, whatever the client asked for.
    const client = await provider.Client.find(clientId);
    const registration = (client as { clientIdMetadataDocument?: boolean } | undefined)?.clientIdMetadataDocument
      ? 'metadata_document'
      : options.staticClientIds.has(clientId)
        ? 'static'
        : 'dynamic';
    const grantClient: GrantsInput['client'] = {
      id: clientId,
      ...(client?.clientName ? { name: String(client.clientName).slice(0, 256) } : {}),
      ...(params.redirect_uri ? { redirect_uri: params.redirect_uri } : {}),
      registration,
    };
    const scopes = (params.scope ?? '').split(' ').filter(Boolean);
    let grant;
    try {
      grant = decideGrant(options.policy(), { version: 1, identity, client: grantClient, scopes, grant_type: 'authorization_code', context: { time: new Date().toISOString() } }, options.maxTtlMs);
      if (grant.approval.required && !options.approvals) throw new GrantRefusal('BASTION_GRANT_DENIED', `this grant needs an approver (${grant.approval.reason}), and approvals are off on this broker`);
    } catch (error) {
      if (!(error instanceof GrantRefusal)) throw error;
      await audit.record('oauth/consent', 'denied', who, { error: 'access_denied', description: error.reason });
      await refuseAuthorization(res, pending.uid, 'access_denied', `${error.code === 'BASTION_GRANT_DENIED' ? 'no tools are granted' : 'the grants policy failed'}: ${error.reason}`);
      return;
    }
    const consent: PendingConsent = {
      identity,
      upstreamRefreshToken: signedIn.upstreamRefreshToken,
      client: grantClient,
      scopes,
      cap: grant.cap,
      ttlMs: grant.ttlMs,
      csrf: randomBytes(32).toString('base64url'),
      approval: { required: grant.approval.required, reason: grant.approval.reason, reasons: grant.reasons },
    };
    await state.set(CONSENTS, pending.uid, JSON.stringify(consent), options.interactionTtlMs);
    res.redirect(303, `/oauth/interaction/${encodeURIComponent(pending.uid)}/consent`);
  });

  // showConsent
  router.get('/oauth/interaction/:uid/consent', async (req, res) => {
    const uid = String(req.params.uid);
    const details = await pendingInteraction(req, res);
    if (!details) return;
    const stored = details.uid === uid ? await state.get(CONSENTS, uid) : undefined;
    if (!stored) {
      sendPage(res, 400, errorPage('Nothing to approve', 'There is no pending consent for this sign-in.'));
      return;
    }
    const consent = JSON.parse(stored) as PendingConsent;
    sendPage(
      res,
      200,
      consentPage({
        clientId: consent.client.id,
        clientName: consent.client.name,
        redirectUri: consent.client.redirect_uri ?? '',
        registration: { static: 'configured on this broker', dynamic: 'registered itself (DCR)', metadata_document: 'metadata document at its client id URL', builtin: "Bastion's own client" }[consent.client.registration],
        user: consent.identity.email ?? consent.identity.sub,
        cap: consent.cap,
        ttl: consent.ttlMs >= 120_000 ? `${Math.round(consent.ttlMs / 60_000)} minutes` : `${Math.round(consent.ttlMs / 1000)} seconds`,
        csrf: consent.csrf,
        action: `/oauth/interaction/${encodeURIComponent(uid)}/consent`,
        ...(consent.approval.required ? { approvalReason: consent.approval.reason } : {}),
      }),
      formTarget(consent.client.redirect_uri ?? ''),
    );
  });

  // checkConsent
  router.post('/oauth/interaction/:uid/consent', express.urlencoded({ extended: false, limit: 4096 }), async (req, res) => {
    const uid = String(req.params.uid);
    const stored = await state.get(CONSENTS, uid);
    const consent = stored ? (JSON.parse(stored) as PendingConsent) : undefined;
    const origin = req.headers.origin;
    const csrf = typeof req.body?.csrf === 'string' ? req.body.csrf : '';
    if (!consent || (origin !== undefined && origin !== new URL(options.issuer).origin) || !sameSecret(csrf, consent.csrf)) {
      await audit.record('oauth/consent', 'denied', consent ? { sub: consent.identity.sub, idp: consent.identity.iss, client_id: consent.client.id } : { interaction: uid }, {
        error: 'access_denied',
        description: 'consent form refused: missing or wrong CSRF token, or a foreign origin',
      });
      sendPage(res, 403, errorPage('Consent refused', 'This consent form did not come from this sign-in (CSRF check failed). Nothing was granted.'));
      return;
    }
    const details = await pendingInteraction(req, res);
    if (!details) return;
    const who = { sub: consent.identity.sub, idp: consent.identity.iss, client_id: consent.client.id };
    // One decision per consent form: a second post finds nothing to decide.
    await state.delete(CONSENTS, uid);
    if (req.body?.decision !== 'approve') {
      await audit.record('oauth/consent', 'denied', who, { error: 'access_denied', description: 'the user refused' });
      await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the user refused the consent' }, { mergeWithLastSubmission: false });
      return;
    }
    if (consent.approval.required) {
      // askApprover: the grant waits on the approval desk; the browser waits on a page that reloads itself.
      const asked = await askApprover(options.approvals!, { identity: consent.identity, client: consent.client, cap: consent.cap, reason: consent.approval.reason, reasons: consent.approval.reasons }, { timeoutMs: options.interactionTtlMs });
      await state.set(CONSENTS, uid, JSON.stringify({ ...consent, approval: { ...consent.approval, ...asked } }), options.interactionTtlMs);
      await audit.record('oauth/consent', 'info', { ...who, approval_id: asked.id, waiting_for: 'an approver', tools: consent.cap.map((c) => c.tool) });
      res.redirect(303, `/oauth/interaction/${encodeURIComponent(uid)}/approval`);
      return;
    }
    await completeGrant(req, res, consent, String(details.params.redirect_uri ?? ''));
  });

  // The grant waits for an approver (grant-approval.ts).
  router.get('/oauth/interaction/:uid/approval', async (req, res) => {
    const uid = String(req.params.uid);
    const details = await pendingInteraction(req, res);
    if (!details) return;
    const stored = details.uid === uid ? await state.get(CONSENTS, uid) : undefined;
    const consent = stored ? (JSON.parse(stored) as PendingConsent) : undefined;
    if (!consent?.approval.id || !consent.approval.hash || !options.approvals) {
      sendPage(res, 400, errorPage('Nothing waiting', 'There is no grant waiting for an approver in this sign-in.'));
      return;
    }
    const where = await approvalOf(options.approvals, consent.approval.id, consent.approval.hash);
    if (where === 'pending') {
      sendPage(res, 200, waitingPage(consent.approval.reason), [], 3);
      return;
    }
    await state.delete(CONSENTS, uid);
    const who = { sub: consent.identity.sub, idp: consent.identity.iss, client_id: consent.client.id, approval_id: consent.approval.id };
    if (where !== 'approved') {
      await audit.record('oauth/consent', 'denied', who, { error: 'access_denied', description: where.refused });
      await provider.interactionFinished(req, res, { error: 'access_denied', error_description: where.refused }, { mergeWithLastSubmission: false });
      return;
    }
    await completeGrant(req, res, consent, String(details.params.redirect_uri ?? ''));
  });

  /** The user (and the approver, when one was asked) approved: a grant bound to the resource, and the code. */
  const completeGrant = async (req: Request, res: Response, consent: PendingConsent, redirectUri: string) => {
    const grant = new provider.Grant({ accountId: consent.identity.sub, clientId: consent.client.id });
    for (const scope of consent.scopes) if (scope === 'openid' || scope === 'offline_access') grant.addOIDCScope(scope);
    grant.addResourceScope(options.resource, consent.scopes.filter((s) => s === 'mcp').join(' ') || 'mcp');
    const grantId = await grant.save();
    await options.records.put(
      grantId,
      {
        identity: consent.identity,
        client: consent.client,
        scopes: consent.scopes,
        consented: consent.cap,
        ttlMs: consent.ttlMs,
        upstreamRefreshToken: consent.upstreamRefreshToken,
        signedInAt: Date.now(),
      },
      options.familyMaxAgeMs,
    );
    await audit.record('oauth/consent', 'ok', { sub: consent.identity.sub, idp: consent.identity.iss, client_id: consent.client.id, grant: grantId, tools: consent.cap.map((c) => c.tool), redirect_uri: redirectUri, ...(consent.approval.id ? { approval_id: consent.approval.id } : {}) });
    await provider.interactionFinished(req, res, { login: { accountId: consent.identity.sub }, consent: { grantId } }, { mergeWithLastSubmission: false });
  };

  return router;
}
