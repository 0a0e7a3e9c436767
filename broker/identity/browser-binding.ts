/**
 * A sign-in at the IdP bound to the browser that started it. The pending
 * sign-in (the openid-client transaction: state, nonce, PKCE verifier, and
 * whatever the caller needs afterwards) is kept server-side under its
 * `state`, behind the state interface; the browser gets an HttpOnly cookie
 * whose hash the pending sign-in holds. The IdP's answer is accepted only
 * with a known state from the browser holding that cookie, and only once.
 * Used by the authorization server's sign-in and by approver sign-in.
 *
 * @example
 *   const signIns = new BrowserBoundSignIns<{ uid: string }>({ state, namespace: 'oauth:sign-in', cookie: 'bastion_sign_in', path: '/oauth/callback', ttlMs, secure });
 *   await signIns.start(res, transaction, { uid });   // then redirect to the IdP
 *   const found = await signIns.finish(req, res);     // { pending } or { refused: 'state mismatch…', stateKnown }
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Request, Response } from 'express';
import type { StateStore } from '../state/store.ts';
import type { SignInTransaction } from './upstream.ts';

export const sha256 = (value: string) => createHash('sha256').update(value).digest('base64url');

/** Equal strings, compared in constant time. */
export function sameSecret(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

export interface BindingOptions {
  state: StateStore;
  namespace: string;
  cookie: string;
  /** The callback path: the cookie is only ever sent there. */
  path: string;
  ttlMs: number;
  secure: boolean;
}

export type Pending<T> = T & { transaction: SignInTransaction; /** sha256 of the browser's cookie. */ browser: string };

export class BrowserBoundSignIns<T extends object> {
  private readonly options: BindingOptions;

  constructor(options: BindingOptions) {
    this.options = options;
  }

  /** Remembers the sign-in and gives this browser its cookie (SameSite=Lax: it must come back on the IdP's redirect). */
  async start(res: Response, transaction: SignInTransaction, extra: T): Promise<void> {
    const { state, namespace, cookie, path, ttlMs, secure } = this.options;
    const browser = randomBytes(32).toString('base64url');
    const pending: Pending<T> = { ...extra, transaction, browser: sha256(browser) };
    await state.set(namespace, transaction.state, JSON.stringify(pending), ttlMs);
    res.cookie(cookie, browser, { httpOnly: true, sameSite: 'lax', secure, path, maxAge: ttlMs });
  }

  /** checkCallback: the pending sign-in the answer's state names, if this browser started it; forgotten once taken. */
  async finish(req: Request, res: Response): Promise<{ pending: Pending<T> } | { refused: string; stateKnown: boolean }> {
    const { state, namespace, cookie, path } = this.options;
    const stateParam = typeof req.query.state === 'string' ? req.query.state : '';
    const stored = stateParam ? await state.get(namespace, stateParam) : undefined;
    const pending = stored ? (JSON.parse(stored) as Pending<T>) : undefined;
    const browser = new RegExp(`(?:^|;\\s*)${cookie}=([^;]+)`).exec(req.headers.cookie ?? '')?.[1];
    if (!pending || !browser || !sameSecret(sha256(browser), pending.browser)) {
      return { refused: 'state mismatch: the IdP response does not belong to a sign-in started in this browser', stateKnown: Boolean(pending) };
    }
    await state.delete(namespace, stateParam);
    res.clearCookie(cookie, { path });
    return { pending };
  }
}
