/**
 * End to end: the official TypeScript MCP client's own OAuth support
 * connects to Bastion with no token, discovers the authorization server from
 * the 401, registers (Client ID Metadata Document, then DCR), sends the user
 * through a real OpenID provider (the test's "organisation IdP") and
 * Bastion's consent page in Chromium, gets a capability token, lists and
 * calls tools, and keeps working through refresh after the token expires.
 * A group change at the IdP narrows the tools at the next refresh.
 */
import { decodeJwt, decodeProtectedHeader } from 'jose';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestBroker } from '../helpers/broker.ts';
import { signInAtIdp, type TestIdp } from '../helpers/idp.ts';
import { startMetadataServer, type MetadataServer } from '../helpers/metadata-server.ts';
import { authorizeInBrowser, connectExpectingSignIn, finishAndConnect, memoryProvider } from './oauth-client.ts';
import { startSignInSetup, type SignInSetup } from './setup.ts';

const TTL_S = 2;

let setup: SignInSetup;
let idp: TestIdp;
let t: TestBroker;
let page: Page;
let REDIRECT: string;
let documents: MetadataServer;

beforeAll(async () => {
  documents = await startMetadataServer();
  setup = await startSignInSetup({
    grants: { grants_ttl_s: TTL_S, grants_by_group: { engineering: [{ tool: 'rec__echo' }, { tool: 'rec__transfer', args: { amount: { max: 100 } } }], interns: [{ tool: 'rec__echo' }] } },
    broker: {
      auth: { clock_skew: 0 },
      identity: {
        registration: { enabled: true },
        // The test's metadata documents live on loopback, behind its own CA.
        client_id_metadata: { allow_private_addresses: true, ca_file: documents.caFile },
      },
    },
  });
  ({ t, page, redirect: REDIRECT } = setup);
  idp = setup.idp!;
}, 60_000);

afterAll(async () => {
  await setup?.close();
  await documents?.close();
});

async function consent(p: Page): Promise<void> {
  await signInAtIdp(p, idp.issuer, 'alice');
  await p.waitForSelector('#approve');
  await p.click('#approve');
}

describe('an MCP client signs in through Bastion', () => {
  it('with dynamic client registration: discovers, registers, signs in, calls tools, refreshes', async () => {
    const provider = memoryProvider({ redirectUrl: REDIRECT });
    const authorizationUrl = await connectExpectingSignIn(t.url, provider);
    expect(authorizationUrl.origin).toBe(new URL(t.url).origin);
    expect(authorizationUrl.searchParams.get('code_challenge_method')).toBe('S256');
    expect(authorizationUrl.searchParams.get('resource')).toBe(t.door.resource);

    const callback = await authorizeInBrowser(page, authorizationUrl, REDIRECT, consent);
    expect(Object.fromEntries(callback.searchParams)).toMatchObject({ iss: new URL(t.url).origin });
    expect(Object.fromEntries(callback.searchParams)).toHaveProperty("code");
    const session = await finishAndConnect(t.url, provider, callback);

    const token = (provider.stored.tokens as { access_token: string }).access_token;
    expect(decodeProtectedHeader(token)).toMatchObject({ typ: 'bastion-cap+jwt', alg: 'EdDSA' });
    const claims = decodeJwt(token);
    expect(claims).toMatchObject({ sub: 'alice', aud: t.door.resource, iss: new URL(t.url).origin, cap: [{ tool: 'rec__transfer', args: { amount: { max: 100 } } }, { tool: 'rec__echo' }] });
    expect(claims.exp! - claims.iat!).toBe(TTL_S);

    const tools = await session.client.listTools();
    expect(tools.tools.map((tool) => tool.name).sort()).toEqual(['rec__echo', 'rec__transfer']);
    expect(await session.client.callTool({ name: 'rec__echo', arguments: { text: 'hi' } })).toMatchObject({ content: [{ text: 'echo: hi' }] });

    // The token expires; the SDK refreshes on the 401 and carries on with a new token.
    await new Promise((resolve) => setTimeout(resolve, (TTL_S + 1) * 1000));
    expect(await session.client.callTool({ name: 'rec__echo', arguments: { text: 'again' } })).toMatchObject({ content: [{ text: 'echo: again' }] });
    expect((provider.stored.tokens as { access_token: string }).access_token).not.toBe(token);

    // A group change at the IdP narrows the tools at the next refresh.
    idp.users.set('alice', { email: 'alice@example.com', groups: ['interns'] });
    await new Promise((resolve) => setTimeout(resolve, (TTL_S + 1) * 1000));
    expect(await session.client.callTool({ name: 'rec__echo', arguments: { text: 'narrowed' } })).toMatchObject({ content: [{ text: 'echo: narrowed' }] });
    expect(decodeJwt((provider.stored.tokens as { access_token: string }).access_token).cap).toEqual([{ tool: 'rec__echo' }]);
    expect((await session.client.listTools()).tools.map((tool) => tool.name)).toEqual(['rec__echo']);
    idp.users.set('alice', { email: 'alice@example.com', groups: ['engineering'] });
    await session.client.close();

    const events = (await t.auditRecords()).map((r) => `${r.event} ${r.outcome}`);
    expect(events).toEqual(expect.arrayContaining(['oauth/register ok', 'oauth/authorize info', 'oauth/sign-in ok', 'oauth/consent ok', 'oauth/token ok']));
    expect(JSON.stringify(await t.auditRecords())).not.toContain(token);
  }, 120_000);

  it('with a Client ID Metadata Document: the client id is the URL of its metadata', async () => {
    const clientId = `${documents.origin}/agents/cimd-agent.json`;
    documents.serve('/agents/cimd-agent.json', {
      client_id: clientId,
      client_name: 'CIMD agent',
      redirect_uris: [REDIRECT],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    });
    const provider = memoryProvider({ redirectUrl: REDIRECT, clientMetadataUrl: clientId, clientName: 'CIMD agent' });
    const authorizationUrl = await connectExpectingSignIn(t.url, provider);
    expect(authorizationUrl.searchParams.get('client_id')).toBe(clientId);
    let shown = '';
    const callback = await authorizeInBrowser(page, authorizationUrl, REDIRECT, async (p) => {
      await signInAtIdp(p, idp.issuer, 'alice');
      await p.waitForSelector('#approve');
      shown = await p.locator('main').innerText();
      await p.click('#approve');
    });
    expect(shown).toContain('CIMD agent');
    expect(shown).toContain(clientId);
    expect(shown).toContain('metadata document at its client id URL');
    expect(shown).toContain(REDIRECT);
    const session = await finishAndConnect(t.url, provider, callback);
    expect(decodeJwt((provider.stored.tokens as { access_token: string }).access_token)).toMatchObject({ client_id: clientId, sub: 'alice' });
    expect(await session.client.callTool({ name: 'rec__echo', arguments: { text: 'from cimd' } })).toMatchObject({ content: [{ text: 'echo: from cimd' }] });
    await session.client.close();
    expect((await t.auditRecords()).filter((r) => r.event === 'oauth/register')).toHaveLength(1); // only the DCR run registered
  }, 120_000);
});
