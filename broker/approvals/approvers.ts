/**
 * Approver identity. Approvers sign in with a short-lived, single-use
 * approver token (a JWT from a trusted issuer with its own `typ`, so an agent's
 * capability token can never act as one), exchanged for a session cookie, or
 * at the organisation's IdP (identity/approver-sign-in.ts opens the session).
 * Bastion stores no passwords: authentication strength (MFA, offboarding)
 * stays with the issuer, and a leaked login link dies after one use.
 *
 * Sessions live behind the state interface (so any replica can serve the
 * page) and carry a CSRF token every state-changing request must echo.
 *
 * @example
 *   const session = await approvers.signIn(approverToken);  // { id, csrf, approver }
 *   const current = await approvers.session(cookieValue);
 */
import { randomBytes } from 'node:crypto';
import { decodeJwt, jwtVerify, type JWTVerifyGetKey } from 'jose';
import { z } from 'zod';
import type { StateStore } from '../state/store.ts';
import type { Approver } from './desk.ts';

export const APPROVER_TOKEN_TYPE = 'bastion-approver+jwt';
const SESSIONS = 'approver-sessions';
const MAX_APPROVER_TOKEN_TTL_S = 15 * 60;

const ApproverClaims = z.looseObject({
  sub: z.string().min(1).max(256),
  jti: z.string().min(1).max(256),
  iat: z.number().int(),
  exp: z.number().int(),
  roles: z.array(z.string().min(1).max(64)).max(32).default([]),
});

const SessionSchema = z.strictObject({ sub: z.string(), roles: z.array(z.string()), authTime: z.string(), csrf: z.string() });

export interface ApproverSession {
  id: string;
  csrf: string;
  approver: Approver;
}

export interface ApproverDirectoryOptions {
  issuers: { issuer: string; getKey: JWTVerifyGetKey }[];
  audience: string;
  algorithms: string[];
  state: StateStore;
  sessionTtlMs: number;
  clockSkewMs: number;
}

export class SignInError extends Error {
  override readonly name = 'SignInError';
}

export class ApproverDirectory {
  private readonly options: ApproverDirectoryOptions;

  constructor(options: ApproverDirectoryOptions) {
    this.options = options;
  }

  /** Verifies an approver token (once) and opens a session. */
  async signIn(token: string): Promise<ApproverSession> {
    if (token.length > 8192) throw new SignInError('approver token too large');
    let iss: unknown;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      throw new SignInError('not a JWT');
    }
    const issuer = this.options.issuers.find((i) => i.issuer === iss);
    if (!issuer) throw new SignInError('approver token issuer is not trusted');
    let payload;
    try {
      ({ payload } = await jwtVerify(token, issuer.getKey, {
        issuer: issuer.issuer,
        audience: this.options.audience,
        typ: APPROVER_TOKEN_TYPE,
        algorithms: this.options.algorithms,
        clockTolerance: Math.floor(this.options.clockSkewMs / 1000),
        requiredClaims: ['exp', 'iat', 'jti', 'sub'],
      }));
    } catch (error) {
      throw new SignInError(`approver token refused: ${(error as Error).message}`);
    }
    const claims = ApproverClaims.safeParse(payload);
    if (!claims.success) throw new SignInError('approver token claims are malformed');
    const { sub, jti, iat, exp, roles } = claims.data;
    if (exp - iat > MAX_APPROVER_TOKEN_TTL_S) throw new SignInError('approver tokens may live at most 15 minutes');
    const first = await this.options.state.claim('approver-jti', `${issuer.issuer}|${jti}`, (exp - iat + 60) * 1000);
    if (!first) throw new SignInError('this sign-in link was already used (each link works once); ask for a new one');
    return this.openSession({ sub, roles, authTime: new Date().toISOString() });
  }

  /** Opens a session for an approver someone else authenticated (the IdP, at single sign-on). */
  async openSession(approver: Approver): Promise<ApproverSession> {
    const id = randomBytes(32).toString('base64url');
    const session = { ...approver, csrf: randomBytes(32).toString('base64url') };
    await this.options.state.set(SESSIONS, id, JSON.stringify(session), this.options.sessionTtlMs);
    return { id, csrf: session.csrf, approver: { sub: approver.sub, roles: approver.roles, authTime: approver.authTime } };
  }

  /** The session for a cookie value, or undefined. */
  async session(id: string | undefined): Promise<ApproverSession | undefined> {
    if (!id || id.length > 128) return undefined;
    const text = await this.options.state.get(SESSIONS, id);
    if (!text) return undefined;
    const parsed = SessionSchema.safeParse(JSON.parse(text));
    if (!parsed.success) return undefined;
    const { sub, roles, authTime, csrf } = parsed.data;
    return { id, csrf, approver: { sub, roles, authTime } };
  }

  async signOut(id: string): Promise<void> {
    await this.options.state.delete(SESSIONS, id);
  }
}
