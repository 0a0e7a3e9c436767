/**
 * What Bastion's authorization server refuses, each with its OAuth error
 * (RFC 6749 §4.1.2.1 / §5.2, RFC 8707), no token, and an audit record.
 * Real broker, a real oidc-provider as the organisation's IdP, Chromium for
 * the pages.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../broker/audit/chain.ts';
import { ROOT, type TestBroker } from '../helpers/broker.ts';
import type { TestIdp } from '../helpers/idp.ts';
import { authorization, redeem, registerClient, tokenRequest, walk, type Authorization } from './flow.ts';
import { startSignInSetup, type SignInSetup } from './setup.ts';

const ARTIFACTS = path.join(ROOT, 'test-artifacts/identity');

let setup: SignInSetup;
let idp: TestIdp;
let t: TestBroker;
let page: Page;
let origin: string;
let resource: string;
let clientId: string;

beforeAll(async () => {
  setup = await startSignInSetup({
    grants: { grants_by_group: { engineering: [{ tool: 'rec__echo' }], broken: [{ tool: '' }] } },
    broker: { identity: { registration: { enabled: true, per_minute: 100 } } },
  });
  ({ t, page } = setup);
  idp = setup.idp!;
  origin = new URL(t.url).origin;
  resource = t.door.resource;
  clientId = await registerClient(origin);
}, 60_000);

afterAll(() => setup?.close());

async function oauthRecords(since: number): Promise<AuditRecord[]> {
  return (await t.auditRecords()).filter((r) => r.seq > since && r.event.startsWith('oauth/'));
}
async function lastSeq(): Promise<number> {
  return (await t.auditRecords()).at(-1)?.seq ?? 0;
}

/** An MCP initialize with `token`: 200 while the token is good. */
function initialize(token: string): Promise<Response> {
  return fetch(t.url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }),
  });
}

/** A full sign-in up to the code. */
async function code(spoil: Record<string, string | undefined> = {}, client = clientId): Promise<{ auth: Authorization; callback: URL }> {
  const auth = authorization(origin, resource, client, spoil);
  const outcome = await walk(page, auth.url, { idp: idp.issuer });
  if (!('callback' in outcome)) throw new Error(`no code: ${JSON.stringify(outcome.page)}`);
  return { auth, callback: outcome.callback };
}

describe('the authorization endpoint refuses', () => {
  it.each([
    ['plain PKCE', { code_challenge_method: 'plain' }, 'invalid_request'],
    ['no PKCE at all', { code_challenge: undefined, code_challenge_method: undefined }, 'invalid_request'],
    ['a missing resource', { resource: undefined }, 'invalid_target'],
    ['a resource for another server', { resource: 'https://other.example/mcp' }, 'invalid_target'],
    ['a response type other than code', { response_type: 'token' }, 'unsupported_response_type'],
  ])('%s, at the client with %s and no code', async (_name, spoil, error) => {
    const since = await lastSeq();
    const auth = authorization(origin, resource, clientId, spoil);
    const outcome = await walk(page, auth.url, { idp: idp.issuer });
    expect(outcome).toHaveProperty('callback');
    const { callback } = outcome as { callback: URL };
    // An implicit-style response type answers in the fragment (its default response mode).
    const params = Object.fromEntries(callback.search ? callback.searchParams : new URLSearchParams(callback.hash.slice(1)));
    expect(params).toMatchObject({ error, state: auth.state, iss: origin });
    expect(params).not.toHaveProperty('code');
    expect(await oauthRecords(since)).toEqual(expect.arrayContaining([expect.objectContaining({ event: 'oauth/authorize', outcome: 'denied', denial: expect.objectContaining({ code: `oauth:${error}` }) })]));
  });

  it.each([
    ['a redirect URI that was not registered', { redirect_uri: 'http://127.0.0.1:9/elsewhere' }],
    ['an unknown client', { client_id: 'no-such-client' }],
  ])('%s, on an error page and never by redirect (no open redirect)', async (_name, spoil) => {
    const since = await lastSeq();
    const outcome = await walk(page, authorization(origin, resource, clientId, spoil).url, { idp: idp.issuer });
    expect(outcome).toHaveProperty('page');
    expect((outcome as { page: { status: number; text: string } }).page).toMatchObject({ status: 400, text: expect.stringMatching(/invalid_(redirect_uri|client|request)/) });
    expect((await oauthRecords(since)).map((r) => r.outcome)).toContain('denied');
  });
});

describe('the token endpoint refuses', () => {
  it.each([
    ['a wrong PKCE verifier', { code_verifier: 'x'.repeat(43) }],
    ['a missing PKCE verifier', { code_verifier: undefined }],
    ['a different redirect URI than the authorization had', { redirect_uri: 'http://127.0.0.1:9/elsewhere' }],
    ['a resource for another server', { resource: 'https://other.example/mcp' }],
  ])('%s: invalid_grant or invalid_target, no token', async (_name, spoil) => {
    const { auth, callback } = await code();
    const since = await lastSeq();
    const refused = await redeem(origin, resource, auth, callback, spoil);
    expect(refused.status).toBe(400);
    expect(refused.body.error).toMatch(/^invalid_(grant|target)$/);
    expect(refused.body).not.toHaveProperty('access_token');
    expect((await oauthRecords(since)).map((r) => `${r.event} ${r.outcome}`)).toContain('oauth/token denied');
  });

  it('a replayed code, and revokes what the first redemption issued', async () => {
    const { auth, callback } = await code();
    const first = await redeem(origin, resource, auth, callback);
    expect(first.status).toBe(200);
    const replay = await redeem(origin, resource, auth, callback);
    expect(replay).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    const refresh = await tokenRequest(origin, { grant_type: 'refresh_token', refresh_token: String(first.body.refresh_token), client_id: clientId });
    expect(refresh).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    // The access token of the first redemption is revoked too.
    expect((await initialize(String(first.body.access_token))).status).toBe(401);
  });

  it('a code redeemed by another client', async () => {
    const other = await registerClient(origin, 'other client');
    const { auth, callback } = await code();
    const refused = await redeem(origin, resource, auth, callback, { client_id: other });
    expect(refused).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
  });

  it('a reused refresh token, and revokes the whole family', async () => {
    const { auth, callback } = await code();
    const first = await redeem(origin, resource, auth, callback);
    const rotated = await tokenRequest(origin, { grant_type: 'refresh_token', refresh_token: String(first.body.refresh_token), client_id: clientId });
    expect(rotated.status).toBe(200);
    expect((await initialize(String(rotated.body.access_token))).status).toBe(200);
    const since = await lastSeq();
    const reuse = await tokenRequest(origin, { grant_type: 'refresh_token', refresh_token: String(first.body.refresh_token), client_id: clientId });
    expect(reuse).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    // The family is gone: the newest refresh token is refused as well.
    const newest = await tokenRequest(origin, { grant_type: 'refresh_token', refresh_token: String(rotated.body.refresh_token), client_id: clientId });
    expect(newest).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    // ...and the access token the rotation gave (perhaps to the thief) stops working.
    expect((await initialize(String(rotated.body.access_token))).status).toBe(401);
    expect(await oauthRecords(since)).toEqual(expect.arrayContaining([expect.objectContaining({ event: 'oauth/refresh-reuse', outcome: 'denied', detail: expect.objectContaining({ family_revoked: true }) })]));
  });

  it('a refresh token presented by another client', async () => {
    const other = await registerClient(origin, 'thief');
    const { auth, callback } = await code();
    const first = await redeem(origin, resource, auth, callback);
    const stolen = await tokenRequest(origin, { grant_type: 'refresh_token', refresh_token: String(first.body.refresh_token), client_id: other });
    expect(stolen).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
  });

  it('a refresh token revoked by its client (RFC 7009): the family and its access tokens end', async () => {
    const { auth, callback } = await code();
    const first = await redeem(origin, resource, auth, callback);
    const since = await lastSeq();
    const revoked = await fetch(`${origin}/oauth/token/revocation`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: String(first.body.refresh_token), token_type_hint: 'refresh_token', client_id: clientId }),
    });
    expect(revoked.status).toBe(200);
    const refresh = await tokenRequest(origin, { grant_type: 'refresh_token', refresh_token: String(first.body.refresh_token), client_id: clientId });
    expect(refresh).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    // The family's access token is refused by stage 1 (revoked by jti before the revocation answered).
    expect((await initialize(String(first.body.access_token))).status).toBe(401);
    expect(await oauthRecords(since)).toEqual(expect.arrayContaining([expect.objectContaining({ event: 'oauth/revoke' })]));
  });

  it("a revoked subject's refresh", async () => {
    const { auth, callback } = await code();
    const first = await redeem(origin, resource, auth, callback);
    const operator = await t.mint({ sub: 'operator', cap: [{ tool: 'bastion:revoke' }] });
    const revoked = await fetch(`${origin}/admin/revoke`, { method: 'POST', headers: { authorization: `Bearer ${operator}`, 'content-type': 'application/json' }, body: JSON.stringify({ sub: 'alice' }) });
    expect(revoked.status).toBe(200);
    try {
      const since = await lastSeq();
      const refresh = await tokenRequest(origin, { grant_type: 'refresh_token', refresh_token: String(first.body.refresh_token), client_id: clientId });
      expect(refresh).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
      expect(refresh.body).not.toHaveProperty('access_token');
      expect(await oauthRecords(since)).toEqual(
        expect.arrayContaining([expect.objectContaining({ event: 'oauth/token', outcome: 'denied', denial: expect.objectContaining({ reason: expect.stringContaining('subject alice is revoked') }) })]),
      );
    } finally {
      await t.broker.state.delete('revoked', 'sub:alice');
    }
  });
});

describe('sign-in and consent refuse', () => {
  it('an IdP answer with a state this browser did not start (state mismatch)', async () => {
    const since = await lastSeq();
    const response = await fetch(`${origin}/oauth/callback?code=forged&state=not-a-pending-sign-in`);
    expect(response.status).toBe(400);
    expect(await response.text()).toContain('state mismatch');
    expect(await oauthRecords(since)).toEqual([expect.objectContaining({ event: 'oauth/sign-in', outcome: 'denied' })]);
  });

  it.each([
    ['a wrong nonce', (c: Record<string, unknown>) => ({ ...c, nonce: 'attacker-nonce' })],
    ['a wrong audience', (c: Record<string, unknown>) => ({ ...c, aud: 'some-other-client' })],
    ['a wrong issuer', (c: Record<string, unknown>) => ({ ...c, iss: 'https://evil.example' })],
    ['an expired ID token', (c: Record<string, unknown>) => ({ ...c, iat: Math.floor(Date.now() / 1000) - 7200, exp: Math.floor(Date.now() / 1000) - 3600 })],
  ])('an ID token with %s: access_denied at the client, no code', async (_name, tamper) => {
    const since = await lastSeq();
    idp.tamper = tamper;
    try {
      const auth = authorization(origin, resource, clientId);
      const outcome = await walk(page, auth.url, { idp: idp.issuer });
      const params = Object.fromEntries((outcome as { callback: URL }).callback.searchParams);
      expect(params).toMatchObject({ error: 'access_denied', state: auth.state });
      expect(params).not.toHaveProperty('code');
    } finally {
      idp.tamper = undefined;
    }
    expect(await oauthRecords(since)).toEqual(expect.arrayContaining([expect.objectContaining({ event: 'oauth/sign-in', outcome: 'denied' })]));
  });

  it('a consent form without the right CSRF token, granting nothing', async () => {
    const auth = authorization(origin, resource, clientId);
    const outcome = await walk(page, auth.url, { idp: idp.issuer, consent: 'stop' });
    expect(outcome).toHaveProperty('page');
    const since = await lastSeq();
    // The real form, posted by the browser with its cookies, but with a forged token.
    await page.locator('input[name="csrf"]').evaluate((input) => input.setAttribute('value', 'forged'));
    const [response] = await Promise.all([page.waitForNavigation(), page.click('#approve')]);
    expect(response?.status()).toBe(403);
    expect(page.url()).not.toContain(setup.redirect);
    expect(await oauthRecords(since)).toEqual([expect.objectContaining({ event: 'oauth/consent', outcome: 'denied' })]);
  });

  it('a client name made of markup: shown as text on the consent page, nothing runs', async () => {
    const hostile = `<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>`;
    const client = await registerClient(origin, hostile);
    const outcome = await walk(page, authorization(origin, resource, client).url, { idp: idp.issuer, consent: 'stop' });
    expect(outcome).toHaveProperty('page');
    expect(await page.locator('#client-name').innerText()).toBe(hostile);
    expect(await page.evaluate(() => (globalThis as { pwned?: number }).pwned)).toBeUndefined();
    expect(await page.locator('#tools li').allInnerTexts()).toEqual(['rec__echo (any arguments)']);
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'consent.png'), fullPage: true });
  });

  it('a refused consent: access_denied at the client', async () => {
    const auth = authorization(origin, resource, clientId);
    const outcome = await walk(page, auth.url, { idp: idp.issuer, consent: 'refuse' });
    expect(Object.fromEntries((outcome as { callback: URL }).callback.searchParams)).toMatchObject({ error: 'access_denied', state: auth.state });
  });

  it.each([
    ['grants nothing to this user', 'marketing', 'no tools are granted'],
    ['returns garbage (a malformed capability)', 'broken', 'the grants policy failed'],
  ])('a grants policy that %s: access_denied, no code', async (_name, group, description) => {
    idp.users.set('bob', { email: 'bob@example.com', groups: [group] });
    await page.context().clearCookies(); // so the IdP asks who signs in, instead of remembering alice
    const since = await lastSeq();
    const auth = authorization(origin, resource, clientId);
    const outcome = await walk(page, auth.url, { idp: idp.issuer, login: 'bob' });
    const params = Object.fromEntries((outcome as { callback: URL }).callback.searchParams);
    expect(params).toMatchObject({ error: 'access_denied', error_description: expect.stringContaining(description) });
    expect(await oauthRecords(since)).toEqual(expect.arrayContaining([expect.objectContaining({ event: 'oauth/consent', outcome: 'denied' })]));
  });
});
