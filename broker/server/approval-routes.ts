/**
 * The approval page at /approvals and its JSON API. The page is static
 * (HTML, two script modules, one stylesheet) under a strict Content-Security-Policy;
 * sessions are HttpOnly SameSite=Strict cookies, opened with an approver token
 * or at the organisation's IdP (identity/approver-sign-in.ts); every
 * state-changing request must come from this origin and echo the session's
 * CSRF token.
 *
 * @example
 *   app.use(approvalRoutes({ desk, approvers, origin, log }));
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import type { ApproverDirectory, ApproverSession } from '../approvals/approvers.ts';
import { SignInError } from '../approvals/approvers.ts';
import { ApprovalActionError, type ApprovalDesk } from '../approvals/desk.ts';
import { hiddenCharactersOf } from '../approvals/hidden-text.ts';
import type { ParkedCall } from '../approvals/record.ts';
import type { Logger } from '../log.ts';
import { APPROVER_SSO_START, approverSignInRoutes, type ApproverSignInOptions } from '../identity/approver-sign-in.ts';

const PAGE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '../approvals/page');
const COOKIE = 'bastion_approver';

/** No inline script or style, nothing from elsewhere, no framing, no form posts off-site. */
export const APPROVAL_PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const DecisionBody = z.strictObject({
  decision: z.enum(['approve', 'deny']),
  reason: z.string().max(2000).default(''),
  call_hash: z.string().min(1).max(200),
});

type SessionRequest = Request & { approverSession?: ApproverSession };

export interface ApprovalRouteOptions {
  desk: ApprovalDesk;
  approvers: ApproverDirectory;
  /** Approver sign-in at the organisation's IdP (approvals.sso), when configured. */
  sso?: Omit<ApproverSignInOptions, 'approvers' | 'setSession' | 'secureCookies'>;
  /** The broker's own origin; state-changing requests must come from it. */
  origins: Set<string>;
  secureCookies: boolean;
  log: Logger;
}

function cookieOf(req: Request): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [name, ...value] = part.trim().split('=');
    if (name === COOKIE) return value.join('=');
  }
  return undefined;
}

function securityHeaders(res: Response): void {
  res.setHeader('Content-Security-Policy', APPROVAL_PAGE_CSP);
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Referrer-Policy', 'no-referrer');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Cache-Control', 'no-store');
}

export function approvalRoutes({ desk, approvers, sso, origins, secureCookies, log }: ApprovalRouteOptions): Router {
  const router = express.Router();
  const assets = {
    html: readFileSync(path.join(PAGE_DIR, 'index.html')),
    js: readFileSync(path.join(PAGE_DIR, 'app.js')),
    css: readFileSync(path.join(PAGE_DIR, 'app.css')),
    reveal: readFileSync(path.join(PAGE_DIR, 'reveal.js')),
  };
  router.use((_req, res, next) => {
    securityHeaders(res);
    next();
  });

  const sendAsset = (type: string, body: Buffer) => (_req: Request, res: Response) => {
    res.type(type).send(body);
  };
  router.get('/approvals', sendAsset('html', assets.html));
  router.get('/approvals/app.js', sendAsset('application/javascript', assets.js));
  router.get('/approvals/app.css', sendAsset('text/css', assets.css));
  router.get('/approvals/reveal.js', sendAsset('application/javascript', assets.reveal));

  const json = express.json({ limit: 16_384, type: () => true });

  /** Cross-site requests die here: a state change must come from this origin with the session's CSRF token. */
  const sameOrigin = (req: Request, res: Response, next: NextFunction) => {
    const origin = req.headers.origin;
    if (origin !== undefined && !origins.has(origin)) {
      res.status(403).json({ error: 'cross-origin request refused' });
      return;
    }
    next();
  };

  const requireSession = async (req: SessionRequest, res: Response, next: NextFunction) => {
    let session: ApproverSession | undefined;
    try {
      session = await approvers.session(cookieOf(req));
    } catch {
      res.status(503).json({ error: 'approval state unavailable; try again shortly' });
      return;
    }
    if (!session) {
      res.status(401).json({ error: 'sign in first' });
      return;
    }
    req.approverSession = session;
    next();
  };

  const requireCsrf = (req: SessionRequest, res: Response, next: NextFunction) => {
    const token = req.headers['x-csrf-token'];
    if (typeof token !== 'string' || token !== req.approverSession?.csrf) {
      res.status(403).json({ error: 'missing or wrong CSRF token' });
      return;
    }
    next();
  };

  const setSession = (res: Response, session: ApproverSession) =>
    res.setHeader('Set-Cookie', `${COOKIE}=${session.id}; HttpOnly; SameSite=Strict; Path=/approvals${secureCookies ? '; Secure' : ''}`);
  if (sso) router.use(approverSignInRoutes({ ...sso, approvers, setSession, secureCookies }));

  /** How the page offers sign-in: the IdP (with its start URL) when approvals.sso is on; approver tokens always. */
  router.get('/approvals/api/sign-in', (_req, res) => {
    res.json({ sso: sso ? { url: APPROVER_SSO_START } : null, token: true });
  });

  router.post('/approvals/login', sameOrigin, json, async (req, res) => {
    const token = (req.body as { token?: unknown })?.token;
    if (typeof token !== 'string') {
      res.status(400).json({ error: 'send {"token": "<approver token>"}' });
      return;
    }
    try {
      const session = await approvers.signIn(token);
      setSession(res, session);
      log.info({ approver: session.approver.sub }, 'approver signed in');
      res.json({ sub: session.approver.sub, roles: session.approver.roles, csrf: session.csrf });
    } catch (error) {
      const message = error instanceof SignInError ? error.message : 'sign-in failed';
      res.status(401).json({ error: message });
    }
  });

  router.post('/approvals/logout', sameOrigin, requireSession, requireCsrf, async (req: SessionRequest, res) => {
    await approvers.signOut(req.approverSession!.id);
    res.setHeader('Set-Cookie', `${COOKIE}=; HttpOnly; SameSite=Strict; Path=/approvals; Max-Age=0`);
    res.json({ ok: true });
  });

  router.get('/approvals/api/session', requireSession, (req: SessionRequest, res) => {
    const { approver, csrf } = req.approverSession!;
    res.json({ sub: approver.sub, roles: approver.roles, csrf });
  });

  /** A record as the page gets it: with whether its agent is still connected, and where it hides characters. */
  const view = async (call: ParkedCall) => ({ ...call, owner_alive: await desk.ownerIsAlive(call), hidden_characters: hiddenCharactersOf(call) });

  router.get('/approvals/api/pending', requireSession, async (_req, res) => {
    res.json({ calls: await Promise.all((await desk.pending()).map(view)) });
  });

  router.get('/approvals/api/history', requireSession, async (_req, res) => {
    res.json({ calls: (await desk.history()).map((call) => ({ ...call, hidden_characters: hiddenCharactersOf(call) })) });
  });

  router.get('/approvals/events', requireSession, (req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store', Connection: 'keep-alive' });
    res.write(': connected\n\n');
    const onChange = (id: string) => res.write(`event: changed\ndata: ${JSON.stringify({ id })}\n\n`);
    desk.changes.on('changed', onChange);
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    req.on('close', () => {
      clearInterval(keepAlive);
      desk.changes.off('changed', onChange);
    });
  });

  router.post('/approvals/api/:id/decision', sameOrigin, requireSession, requireCsrf, json, async (req: SessionRequest, res) => {
    const body = DecisionBody.safeParse(req.body);
    if (!body.success) {
      res.status(400).json({ error: body.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') });
      return;
    }
    try {
      const call = await desk.decide(req.approverSession!.approver, String(req.params.id), body.data.decision, body.data.reason, body.data.call_hash);
      res.json({ status: call.status, outcome: call.outcome ?? null });
    } catch (error) {
      if (error instanceof ApprovalActionError) {
        // A vote that needs a fresher sign-in: where to get one (the IdP with max_age; else a new sign-in link).
        const within = error.reauthenticateWithinS;
        res.status(error.status).json({ error: error.message, ...(within ? { reauthenticate: { max_age: within, url: sso ? `${APPROVER_SSO_START}?max_age=${within}` : null } } : {}) });
        return;
      }
      log.error({ err: (error as Error).message }, 'approval decision failed');
      res.status(503).json({ error: 'approval state unavailable; nothing was decided' });
    }
  });

  return router;
}
