/**
 * The embedded default's development IdP: with no identity.upstream and no
 * trusted issuers, an MCP client (the official TS SDK's OAuth) signs in
 * through the browser as the demo user with the printed password, and gets
 * the tools the grants policy gives group bastion-demo. A wrong password is
 * refused; a configured issuer switches the development IdP off.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { decodeJwt } from 'jose';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { launchChromium } from '../helpers/chromium.ts';
import { startRedirectListener } from './flow.ts';
import { authorizeInBrowser, connectExpectingSignIn, finishAndConnect, memoryProvider } from './oauth-client.ts';

let t: TestBroker;
let browser: Browser;
let page: Page;
let work: string;
let redirect: Awaited<ReturnType<typeof startRedirectListener>>;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'bastion-dev-idp-'));
  redirect = await startRedirectListener();
  const data = path.join(work, 'data.json');
  // The recording upstream stands in for the demo connector: same group, its tools.
  await writeFile(data, JSON.stringify({ bastion: { grants_by_group: { 'bastion-demo': [{ tool: 'rec__echo' }] } } }));
  t = await startTestBroker({ policy: { data }, identity: { registration: { enabled: true } } });
  browser = await launchChromium();
  page = await browser.newPage();
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await t?.close();
  await redirect?.close();
  await rm(work, { recursive: true, force: true });
});

describe('the development IdP', () => {
  it('signs the demo user in with the printed password, and the agent gets group bastion-demo\'s tools', async () => {
    const dev = t.door.identity!.devIdp!;
    expect(dev).toMatchObject({ user: 'demo', issuer: `${new URL(t.url).origin}/dev-idp` });
    const provider = memoryProvider({ redirectUrl: redirect.uri });
    const authorizationUrl = await connectExpectingSignIn(t.url, provider);
    const callback = await authorizeInBrowser(page, authorizationUrl, redirect.uri, async (p) => {
      await p.waitForSelector('#sign-in');
      await p.fill('input[name="password"]', 'wrong-password');
      await Promise.all([p.waitForNavigation(), p.click('#sign-in')]);
      expect(await p.locator('#error').innerText()).toContain('Wrong user or password');
      await p.fill('input[name="password"]', dev.password);
      await Promise.all([p.waitForNavigation(), p.click('#sign-in')]);
      await p.waitForSelector('#approve');
      await p.click('#approve');
    });
    const session = await finishAndConnect(t.url, provider, callback);
    expect(decodeJwt((provider.stored.tokens as { access_token: string }).access_token)).toMatchObject({ sub: 'demo', cap: [{ tool: 'rec__echo' }] });
    expect(await session.client.callTool({ name: 'rec__echo', arguments: { text: 'dev' } })).toMatchObject({ content: [{ text: 'echo: dev' }] });
    await session.client.close();
  }, 60_000);

  it('is not there when a real issuer is configured', async () => {
    const jwks = path.join(work, 'jwks.json');
    const { generateSigningKey } = await import('../../broker/auth/keys.ts');
    await writeFile(jwks, JSON.stringify((await generateSigningKey()).jwks));
    const configured = await startTestBroker({ auth: { issuers: [{ issuer: 'https://issuer.example', jwks_file: jwks }] } });
    try {
      expect(configured.door.identity?.devIdp).toBeUndefined();
      expect((await fetch(`${new URL(configured.url).origin}/dev-idp/.well-known/openid-configuration`)).status).toBe(404);
    } finally {
      await configured.close();
    }
  });
});
