/**
 * An approver as the page's API sees them: a real approver token signed
 * with the broker's dev key, exchanged for a real session cookie.
 */
import { importJWK, SignJWT, type JWK } from 'jose';
import { APPROVER_TOKEN_TYPE } from '../../broker/approvals/approvers.ts';

export interface ApproverClient {
  sub: string;
  cookie: string;
  csrf: string;
  pending(): Promise<any[]>;
  history(): Promise<any[]>;
  decide(id: string, decision: 'approve' | 'deny', reason: string, callHash: string, headers?: Record<string, string>): Promise<{ status: number; body: any }>;
}

export async function approverToken(key: JWK, issuer: string, audience: string, sub: string, roles: string[] = [], ttlS = 600): Promise<string> {
  const iat = Math.floor(Date.now() / 1000);
  return new SignJWT({ roles })
    .setProtectedHeader({ alg: 'EdDSA', typ: APPROVER_TOKEN_TYPE, kid: key.kid! })
    .setIssuer(issuer)
    .setSubject(sub)
    .setAudience(audience)
    .setIssuedAt(iat)
    .setExpirationTime(iat + ttlS)
    .setJti(crypto.randomUUID())
    .sign(await importJWK(key, 'EdDSA'));
}

export async function signInApprover(baseUrl: string, token: string, sub: string): Promise<ApproverClient> {
  const origin = new URL(baseUrl).origin;
  const login = await fetch(`${origin}/approvals/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) });
  if (login.status !== 200) throw new Error(`sign-in failed: ${login.status} ${await login.text()}`);
  const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
  const { csrf } = (await login.json()) as { csrf: string };
  const get = async (path: string) => ((await (await fetch(`${origin}${path}`, { headers: { cookie } })).json()) as { calls: any[] }).calls;
  return {
    sub,
    cookie,
    csrf,
    pending: () => get('/approvals/api/pending'),
    history: () => get('/approvals/api/history'),
    async decide(id, decision, reason, callHash, headers = { 'x-csrf-token': csrf }) {
      const response = await fetch(`${origin}/approvals/api/${id}/decision`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', cookie, ...headers },
        body: JSON.stringify({ decision, reason, call_hash: callHash }),
      });
      return { status: response.status, body: await response.json() };
    },
  };
}

/** Polls until `find` returns something (bounded: an approval test must not hang). */
export async function eventually<T>(find: () => Promise<T | undefined>, what: string, attempts = 200): Promise<T> {
  for (let i = 0; i < attempts; i++) {
    const found = await find();
    if (found !== undefined) return found;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`gave up waiting for ${what}`);
}
