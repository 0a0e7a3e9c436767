/**
 * Enterprise-managed authorization: the organisation's IdP (a real
 * oidc-provider started here, with a token-exchange grant that issues
 * ID-JAGs, draft-ietf-oauth-identity-assertion-authz-grant-06) hands an
 * agent an identity assertion grant for Bastion; the agent, a confidential
 * client configured at Bastion, exchanges it with the jwt-bearer grant for a
 * capability token the grants policy decides from the user's groups. The
 * happy path is the official SDK's CrossAppAccessProvider end to end; the
 * refusals are ID-JAGs signed with the IdP's own key, each wrong in one way.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CrossAppAccessProvider, requestJwtAuthorizationGrant } from '@modelcontextprotocol/client';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startTestIdp, type TestIdp } from '../helpers/idp.ts';
import { tokenRequest } from './flow.ts';
import { connectHeadless } from './oauth-client.ts';

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const AGENT_SECRET = 'enterprise-agent-secret-0123456789';
const WIKI_SECRET = 'wiki-agent-secret-0123456789';

let work: string;
let idp: TestIdp;
let t: TestBroker;
let origin: string;
let resource: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'bastion-id-jag-'));
  idp = await startTestIdp({ bastionCallbacks: () => [`${origin}/oauth/callback`], idJagClients: [{ client_id: 'wiki-agent', client_secret: WIKI_SECRET, resource_client_id: 'enterprise-agent' }] });
  idp.users.set('bob', { email: 'bob@example.com', groups: ['broken'] });
  idp.users.set('carol', { email: 'carol@example.com', groups: ['marketing'] });
  const data = path.join(work, 'data.json');
  await writeFile(data, JSON.stringify({ bastion: { grants_by_group: { engineering: [{ tool: 'rec__echo' }], broken: [{ tool: '' }] } } }));
  const secret = path.join(work, 'agent.secret');
  await writeFile(secret, AGENT_SECRET, { mode: 0o600 });
  const publicSecret = path.join(work, 'other.secret');
  await writeFile(publicSecret, 'other-agent-secret-0123456789', { mode: 0o600 });
  t = await startTestBroker({
    policy: { data },
    identity: {
      upstream: await idp.upstreamConfig(work),
      id_jag: { enabled: true, algorithms: ['ES256'] },
      clients: [
        { client_id: 'enterprise-agent', grant_types: ['jwt_bearer'], client_secret_file: secret },
        { client_id: 'other-agent', grant_types: ['jwt_bearer'], client_secret_file: publicSecret },
      ],
    },
  });
  origin = new URL(t.url).origin;
  resource = t.door.resource;
}, 60_000);

afterAll(async () => {
  await t?.close();
  await idp?.close();
  await rm(work, { recursive: true, force: true });
});

const lastSeq = () => t.auditMark();
const tokenRecords = (since: number) => t.auditSince(since, 'oauth/token');

const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;

async function exchangeJag(assertion: string, more: Record<string, string> = {}, client: [string, string] = ['enterprise-agent', AGENT_SECRET]) {
  const response = await fetch(`${origin}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(...client) },
    body: new URLSearchParams({ grant_type: JWT_BEARER, assertion, ...more }),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** An ID-JAG as the IdP issues it for alice; `claims` spoils it. */
function jag(claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return idp.signIdJag({ iss: idp.issuer, sub: 'alice', aud: origin, client_id: 'enterprise-agent', jti: crypto.randomUUID(), iat: now, exp: now + 300, resource, groups: ['engineering'], ...claims }, header);
}

describe('an enterprise agent', () => {
  it('exchanges an ID-JAG from the organisation’s IdP with the official SDK (CrossAppAccessProvider) and calls the user’s tools', async () => {
    const since = await lastSeq();
    const provider = new CrossAppAccessProvider({
      assertion: async (ctx) =>
        (
          await requestJwtAuthorizationGrant({
            tokenEndpoint: `${idp.issuer}/token`,
            audience: ctx.authorizationServerUrl,
            resource: ctx.resourceUrl,
            idToken: await idp.idToken('alice', 'wiki-agent'),
            clientId: 'wiki-agent',
            clientSecret: WIKI_SECRET,
            fetchFn: ctx.fetchFn,
          })
        ).jwtAuthGrant,
      clientId: 'enterprise-agent',
      clientSecret: AGENT_SECRET,
      expectedIssuer: origin,
    });
    const client = await connectHeadless(t.url, provider);
    try {
      expect((await client.callTool({ name: 'rec__echo', arguments: { text: 'cross-app' } })).isError).toBeFalsy();
    } finally {
      await client.close();
    }
    const token = (provider.tokens() as { access_token: string }).access_token;
    expect(decodeJwt(token)).toMatchObject({ sub: 'alice', iss: origin, aud: resource, client_id: 'enterprise-agent', cap: [{ tool: 'rec__echo' }] });
    expect(await tokenRecords(since)).toContainEqual(
      expect.objectContaining({ outcome: 'ok', principal: { sub: 'alice', iss: origin }, detail: expect.objectContaining({ grant_type: JWT_BEARER, assertion_issuer: idp.issuer, groups: ['engineering'], refresh_token_issued: false }) }),
    );
  });
});

describe('the jwt-bearer grant refuses, with an OAuth error, no token and an audit record:', () => {
  const now = () => Math.floor(Date.now() / 1000);
  it.each([
    ['an ID-JAG for another resource', () => jag({ resource: 'https://other.example/mcp' }), 'invalid_grant', /another resource/],
    ['an ID-JAG for this resource and another', () => jag({ resource: [resource, 'https://other.example/mcp'] }), 'invalid_grant', /another resource/],
    ['an ID-JAG for another authorization server', () => jag({ aud: 'https://other-as.example' }), 'invalid_grant', /AUDIENCE_INVALID/],
    ['an ID-JAG issued to another client', () => jag({ client_id: 'other-agent' }), 'invalid_grant', /issued for client "other-agent"/],
    ['an ID-JAG without client_id', () => jag({ client_id: undefined }), 'invalid_grant', /issued for client null/],
    ['a JWT that is not typed as an ID-JAG (an ID token)', () => jag({}, { typ: 'JWT' }), 'invalid_grant', /TYPE_REFUSED/],
    ['an expired ID-JAG', () => jag({ iat: now() - 900, exp: now() - 300 }), 'invalid_grant', /EXPIRED/],
    ['an ID-JAG living an hour', () => jag({ exp: now() + 3600 }), 'invalid_grant', /LIFETIME_TOO_LONG/],
    ['an ID-JAG from an issuer that is not the organisation’s IdP', () => jag({ iss: 'https://evil-idp.example' }), 'invalid_grant', /ISSUER_UNTRUSTED/],
    ['an ID-JAG with a malformed act', () => jag({ act: ['x'] }), 'invalid_grant', /act is malformed/],
    ['an ID-JAG whose groups are not strings', () => jag({ groups: [{ admin: true }] }), 'invalid_grant', /groups claim/],
    ['an ID-JAG for a user in no granted group', () => jag({ sub: 'carol', groups: ['marketing'] }), 'invalid_grant', /grants nothing/],
    ['an ID-JAG the grants policy errors on', () => jag({ sub: 'bob', groups: ['broken'] }), 'invalid_grant', /grants policy failed/],
  ])('%s', async (_name, make, error, reason) => {
    const since = await lastSeq();
    const { status, body } = await exchangeJag(await make());
    expect({ status, error: body.error }).toEqual({ status: 400, error });
    expect(String(body.error_description)).toMatch(reason);
    expect(body).not.toHaveProperty('access_token');
    expect(await tokenRecords(since)).toContainEqual(expect.objectContaining({ outcome: 'denied', denial: expect.objectContaining({ code: `oauth:${error}`, reason: expect.stringMatching(reason) }) }));
  });

  it('a replayed ID-JAG', async () => {
    const once = await jag();
    expect((await exchangeJag(once)).status).toBe(200);
    expect(await exchangeJag(once)).toMatchObject({ status: 400, body: { error: 'invalid_grant', error_description: expect.stringMatching(/presented before/) } });
  });

  it('a client presenting another client’s ID-JAG', async () => {
    const { status, body } = await exchangeJag(await jag(), {}, ['other-agent', 'other-agent-secret-0123456789']);
    expect(status).toBe(400);
    expect(body).toMatchObject({ error: 'invalid_grant', error_description: expect.stringMatching(/issued for client "enterprise-agent", not other-agent/) });
  });

  it('a client that does not authenticate', async () => {
    const { status, body } = await tokenRequest(origin, { grant_type: JWT_BEARER, client_id: 'enterprise-agent', assertion: await jag() });
    expect({ status, error: body.error }).toEqual({ status: 401, error: 'invalid_client' });
  });

  it('a resource parameter for another server', async () => {
    const { status, body } = await exchangeJag(await jag(), { resource: 'https://other.example/mcp' });
    expect({ status, error: body.error }).toEqual({ status: 400, error: 'invalid_target' });
  });
});
