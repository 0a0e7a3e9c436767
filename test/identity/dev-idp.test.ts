/**
 * The embedded default's development IdP: with no identity.upstream and no
 * trusted issuers, an MCP client (the official TS SDK's OAuth) signs in
 * through the browser as the demo user with the printed password, and gets
 * the tools the grants policy gives group bastion-demo. A wrong password is
 * refused; a configured issuer switches the development IdP off.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { authorizeInBrowser, connectExpectingSignIn, finishAndConnect, memoryProvider } from './oauth-client.ts';
import { startSignInSetup, type SignInSetup } from './setup.ts';

let setup: SignInSetup;
let t: TestBroker;

beforeAll(async () => {
  // The recording upstream stands in for the demo connector: same group, its tools.
  setup = await startSignInSetup({ devIdp: true, grants: { grants_by_group: { 'bastion-demo': [{ tool: 'rec__echo' }] } }, broker: { identity: { registration: { enabled: true } } } });
  t = setup.t;
}, 60_000);

afterAll(() => setup?.close());

describe('the development IdP', () => {
  it('signs the demo user in with the printed password, and the agent gets group bastion-demo\'s tools', async () => {
    const dev = t.door.identity!.devIdp!;
    expect(dev).toMatchObject({ user: 'demo', issuer: `${new URL(t.url).origin}/dev-idp` });
    const provider = memoryProvider({ redirectUrl: setup.redirect });
    const authorizationUrl = await connectExpectingSignIn(t.url, provider);
    const callback = await authorizeInBrowser(setup.page, authorizationUrl, setup.redirect, async (p) => {
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

  it('is not there when a real issuer is configured; the authorization server is named first', async () => {
    const jwks = path.join(setup.work, 'jwks.json');
    const { generateSigningKey } = await import('../../broker/auth/keys.ts');
    await writeFile(jwks, JSON.stringify((await generateSigningKey()).jwks));
    const configured = await startTestBroker({ auth: { issuers: [{ issuer: 'https://issuer.example', jwks_file: jwks }] } });
    try {
      expect(configured.door.identity?.devIdp).toBeUndefined();
      // The authorization server comes first in the resource metadata: clients sign in there, not at the token issuer.
      const origin = new URL(configured.url).origin;
      const metadata = (await (await fetch(`${origin}/.well-known/oauth-protected-resource/mcp`)).json()) as { authorization_servers: string[] };
      expect(metadata.authorization_servers).toEqual([origin, 'https://issuer.example']);
      expect((await fetch(`${new URL(configured.url).origin}/dev-idp/.well-known/openid-configuration`)).status).toBe(404);
    } finally {
      await configured.close();
    }
  });

  it('is off, with the authorization server, when the resource is plain http beyond loopback; capability tokens keep working', async () => {
    const plain = await startTestBroker({ server: { port: 0, resource: 'http://bastion.example.com/mcp' } });
    try {
      expect(plain.door.identity).toBeUndefined();
      const origin = new URL(plain.url).origin;
      expect((await fetch(`${origin}/.well-known/oauth-authorization-server`, { headers: { host: 'bastion.example.com' } })).status).toBe(404);
      const client = await plain.connect(await plain.mint());
      expect(await client.callTool({ name: 'rec__echo', arguments: { text: 'plain' } })).toMatchObject({ content: [{ text: 'echo: plain' }] });
    } finally {
      await plain.close();
    }
  });

  it('refuses to start, naming the fix, when an IdP is configured and the resource is plain http beyond loopback', async () => {
    const { mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { createBroker } = await import('../../broker/broker.ts');
    const { ConfigError, parseConfig } = await import('../../broker/config.ts');
    const { createLogger } = await import('../../broker/log.ts');
    const { startHttp } = await import('../../broker/server/http.ts');
    const config = parseConfig({
      state_dir: await mkdtemp(path.join(tmpdir(), 'bastion-plain-')),
      log_level: 'silent',
      server: { port: 0, resource: 'http://bastion.example.com/mcp' },
      identity: { upstream: { issuer: 'https://idp.example', client_id: 'bastion' } },
      connectors: [],
    });
    const broker = await createBroker(config, createLogger('silent'));
    try {
      const refused = startHttp(broker);
      await expect(refused).rejects.toBeInstanceOf(ConfigError);
      await expect(refused).rejects.toThrow(/issuer would be http:\/\/bastion\.example\.com: OAuth needs https.*server\.resource.*identity\.enabled: false/);
    } finally {
      await broker.stop();
    }
  });
});
