/**
 * A hand-driven OAuth client for the refusal tests: registers itself (DCR),
 * builds authorization requests it can spoil on purpose, walks a Chromium
 * page through the IdP's login and Bastion's consent page, and calls the
 * token endpoint with plain HTTP. Real broker, real IdP, real browser.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Page } from 'playwright-core';

/**
 * The client's redirect URI: a real listener on a loopback port (a browser
 * does not let a test intercept a navigation's redirect), answering "done".
 */
export async function startRedirectListener(): Promise<{ uri: string; close(): Promise<void> }> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('done');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    uri: `http://127.0.0.1:${(server.address() as AddressInfo).port}/callback`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

export let REDIRECT = 'http://127.0.0.1:1/callback';
/** Sets the redirect URI the helpers below use. */
export function useRedirect(uri: string): void {
  REDIRECT = uri;
}

export interface Authorization {
  clientId: string;
  verifier: string;
  state: string;
  redirectUri: string;
  url: URL;
}

export function pkce(): { verifier: string; challenge: string } {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

export async function registerClient(origin: string, name = 'refusal-test'): Promise<string> {
  const response = await fetch(`${origin}/oauth/reg`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: name, redirect_uris: [REDIRECT], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' }),
  });
  if (response.status !== 201) throw new Error(`registration failed: ${response.status} ${await response.text()}`);
  return ((await response.json()) as { client_id: string }).client_id;
}

/** An authorization request; `spoil` edits its parameters (delete one by setting it to undefined). */
export function authorization(origin: string, resource: string, clientId: string, spoil: Record<string, string | undefined> = {}): Authorization {
  const { verifier, challenge } = pkce();
  const state = randomBytes(16).toString('base64url');
  const params: Record<string, string | undefined> = {
    response_type: 'code',
    client_id: clientId,
    redirect_uri: REDIRECT,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state,
    resource,
    scope: 'mcp',
    ...spoil,
  };
  const url = new URL(`${origin}/oauth/auth`);
  for (const [name, value] of Object.entries(params)) if (value !== undefined) url.searchParams.set(name, value);
  return { clientId, verifier, state, redirectUri: params.redirect_uri ?? REDIRECT, url };
}

export type BrowserOutcome = { callback: URL } | { page: { status: number; title: string; text: string } };

/**
 * Follows the authorization in the browser: signs in at the IdP as `login`,
 * then approves (or refuses, or stops at) the consent page. Ends at the
 * client's redirect URI, or at an error page.
 */
export async function walk(page: Page, url: URL, options: { idp: string; login?: string; consent?: 'approve' | 'refuse' | 'stop' } = { idp: '' }): Promise<BrowserOutcome> {
  let lastStatus = 200;
  const reached = () => (page.url().startsWith(REDIRECT) ? new URL(page.url()) : undefined);
  const onResponse = (response: { url(): string; status(): number; request(): { isNavigationRequest(): boolean } }) => {
    if (response.request().isNavigationRequest()) lastStatus = response.status();
  };
  page.on('response', onResponse);
  try {
    await page.goto(url.href);
    for (let step = 0; step < 12; step++) {
      await page.waitForLoadState('load');
      const callback = reached();
      if (callback) return { callback };
      if (options.idp && page.url().startsWith(options.idp)) {
        if (await page.locator('input[name="login"]').count()) {
          await page.fill('input[name="login"]', options.login ?? 'alice');
          await page.fill('input[name="password"]', 'any-password');
        }
        await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
        continue;
      }
      if (await page.locator('#approve').count()) {
        if (options.consent === 'stop') return { page: { status: lastStatus, title: await page.title(), text: await page.content() } };
        await Promise.all([page.waitForNavigation(), page.click(options.consent === 'refuse' ? '#refuse' : '#approve')]);
        continue;
      }
      return { page: { status: lastStatus, title: await page.title(), text: (await page.locator('body').innerText()).trim() } };
    }
    throw new Error(`the authorization did not end: at ${page.url()}`);
  } finally {
    page.off('response', onResponse);
  }
}

export async function tokenRequest(origin: string, params: Record<string, string>): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${origin}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(params) });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** Exchanges the code of a successful walk. */
export function redeem(origin: string, resource: string, auth: Authorization, callback: URL, spoil: Record<string, string | undefined> = {}) {
  const params: Record<string, string | undefined> = {
    grant_type: 'authorization_code',
    code: callback.searchParams.get('code') ?? '',
    redirect_uri: auth.redirectUri,
    code_verifier: auth.verifier,
    client_id: auth.clientId,
    resource,
    ...spoil,
  };
  return tokenRequest(origin, Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined)) as Record<string, string>);
}
