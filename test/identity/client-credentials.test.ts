/**
 * Client credentials with private_key_jwt (RFC 7523): agents registered with
 * a public key (a JWKS file, or a JWKS URL Bastion fetches) authenticate with
 * signed, short-lived, single-use assertions; no shared secret. The happy
 * path is the official TypeScript SDK's PrivateKeyJwtProvider; the refusals
 * are hand-made assertions. Two brokers on one real Redis show the replay
 * cache is shared through the state interface.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PrivateKeyJwtProvider } from '@modelcontextprotocol/client';
import { decodeJwt, exportJWK, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startMetadataServer, type MetadataServer } from '../helpers/metadata-server.ts';
import { requireRedisServer, startRedis, type RedisServer } from '../helpers/redis.ts';
import { tokenRequest } from './flow.ts';
import { connectHeadless } from './oauth-client.ts';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

let work: string;
let t: TestBroker;
let origin: string;
let nightlyKey: JWK;
let urlClientKey: JWK;
let jwksServer: MetadataServer;

async function keyPair(kid: string): Promise<{ privateJwk: JWK; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  return { privateJwk: { ...(await exportJWK(privateKey)), kid, alg: 'ES256' }, publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } };
}

/** The broker config for the clients and their grants (data file written to `dir`). */
async function headlessConfig(dir: string, { jwksUri, caFile }: { jwksUri: string; caFile?: string }, nightlyPublic: JWK): Promise<Record<string, unknown>> {
  const jwksFile = path.join(dir, 'nightly.jwks.json');
  await writeFile(jwksFile, JSON.stringify({ keys: [nightlyPublic] }));
  const data = path.join(dir, 'data.json');
  await writeFile(data, JSON.stringify({ bastion: { grants_by_client: { 'nightly-report': [{ tool: 'rec__echo' }], 'url-client': [{ tool: 'rec__echo' }], broken: [{ tool: '' }] } } }));
  return {
    policy: { data },
    identity: {
      client_id_metadata: { allow_private_addresses: true, ...(caFile ? { ca_file: caFile } : {}) },
      clients: [
        { client_id: 'nightly-report', grant_types: ['client_credentials'], jwks_file: jwksFile },
        { client_id: 'url-client', grant_types: ['client_credentials'], jwks_uri: jwksUri },
        { client_id: 'nothing-granted', grant_types: ['client_credentials'], jwks_file: jwksFile },
        { client_id: 'broken', grant_types: ['client_credentials'], jwks_file: jwksFile },
        { client_id: 'signs-in', redirect_uris: ['http://127.0.0.1:9/cb'], jwks_file: jwksFile },
      ],
    },
  };
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'bastion-client-credentials-'));
  const nightly = await keyPair('nightly-1');
  const urlClient = await keyPair('url-1');
  nightlyKey = nightly.privateJwk;
  urlClientKey = urlClient.privateJwk;
  jwksServer = await startMetadataServer();
  jwksServer.serve('/jwks.json', { keys: [urlClient.publicJwk] });
  t = await startTestBroker(await headlessConfig(work, { jwksUri: `${jwksServer.origin}/jwks.json`, caFile: jwksServer.caFile }, nightly.publicJwk));
  origin = new URL(t.url).origin;
}, 60_000);

afterAll(async () => {
  await t?.close();
  await jwksServer?.close();
  await rm(work, { recursive: true, force: true });
});

const lastSeq = () => t.auditMark();
const tokenRecords = (since: number) => t.auditSince(since, 'oauth/token');

interface AssertionOptions {
  clientId?: string;
  key?: JWK;
  aud?: unknown;
  /** null: no iat at all. */
  iat?: number | null;
  exp?: number;
  jti?: string;
}

async function assertion({ clientId = 'nightly-report', key = nightlyKey, aud = origin, iat = Math.floor(Date.now() / 1000), exp, jti = crypto.randomUUID() }: AssertionOptions = {}): Promise<string> {
  const claims: Record<string, unknown> = { iss: clientId, sub: clientId, aud, jti, exp: exp ?? (iat ?? Math.floor(Date.now() / 1000)) + 120 };
  if (iat !== null) claims.iat = iat;
  return new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: key.kid!, typ: 'JWT' }).sign(await importJWK(key, 'ES256'));
}

function clientCredentials(origin_: string, clientAssertion: string, more: Record<string, string> = {}) {
  return tokenRequest(origin_, { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: clientAssertion, ...more });
}

describe('a client with its own key', () => {
  it('gets a capability token with the official SDK (PrivateKeyJwtProvider) and calls its tools', async () => {
    const since = await lastSeq();
    const provider = new PrivateKeyJwtProvider({ clientId: 'nightly-report', privateKey: nightlyKey as Record<string, unknown>, algorithm: 'ES256', expectedIssuer: origin });
    const client = await connectHeadless(t.url, provider);
    try {
      expect((await client.callTool({ name: 'rec__echo', arguments: { text: 'nightly' } })).isError).toBeFalsy();
    } finally {
      await client.close();
    }
    const token = (provider.tokens() as { access_token: string }).access_token;
    expect(decodeJwt(token)).toMatchObject({ sub: 'client:nightly-report', client_id: 'nightly-report', cap: [{ tool: 'rec__echo' }] });
    expect(await tokenRecords(since)).toContainEqual(
      expect.objectContaining({ outcome: 'ok', principal: { sub: 'client:nightly-report', iss: origin }, detail: expect.objectContaining({ grant_type: 'client_credentials', client_authentication: 'private_key_jwt', refresh_token_issued: false }) }),
    );
  });

  it('whose keys Bastion fetches from its JWKS URL', async () => {
    const { status, body } = await clientCredentials(origin, await assertion({ clientId: 'url-client', key: urlClientKey }));
    expect(status).toBe(200);
    expect(decodeJwt(String(body.access_token)).sub).toBe('client:url-client');
  });
});

describe('client credentials refuse, with an OAuth error, no token and an audit record:', () => {
  it('a replayed client assertion', async () => {
    const once = await assertion();
    expect((await clientCredentials(origin, once)).status).toBe(200);
    const since = await lastSeq();
    const replay = await clientCredentials(origin, once);
    expect(replay).toMatchObject({ status: 401, body: { error: 'invalid_client', error_description: expect.stringMatching(/presented before/) } });
    expect(await tokenRecords(since)).toContainEqual(expect.objectContaining({ outcome: 'denied', denial: expect.objectContaining({ code: 'oauth:invalid_client', reason: expect.stringMatching(/presented before/) }) }));
  });

  const now = () => Math.floor(Date.now() / 1000);
  it.each([
    ['an assertion for another audience', () => assertion({ aud: 'https://other.example' }), /audience|aud/],
    ['an assertion for this server and another at once', () => assertion({ aud: [origin, 'https://other.example'] }), /exactly/],
    ['an assertion living an hour', () => assertion({ exp: now() + 3600 }), /at most 300 s/],
    ['an assertion without iat', () => assertion({ iat: null }), /iat/],
    ['an assertion issued in the future', () => assertion({ iat: now() + 600, exp: now() + 700 }), /future/],
    ['an expired assertion', () => assertion({ iat: now() - 600, exp: now() - 300 }), /./],
    ['an assertion signed with a key the client did not register', async () => assertion({ key: (await keyPair('nightly-1')).privateJwk }), /./],
    ['an assertion naming another client as issuer', () => assertion({ clientId: 'url-client', key: nightlyKey }), /./],
  ])('%s', async (_name, make, reason) => {
    const since = await lastSeq();
    const { status, body } = await clientCredentials(origin, await make());
    expect({ status, error: body.error }).toEqual({ status: 401, error: 'invalid_client' });
    expect(body).not.toHaveProperty('access_token');
    expect(await tokenRecords(since)).toContainEqual(expect.objectContaining({ outcome: 'denied', denial: expect.objectContaining({ code: 'oauth:invalid_client', reason: expect.stringMatching(reason) }) }));
  });

  it('a shared secret in place of the assertion', async () => {
    const { status, body } = await tokenRequest(origin, { grant_type: 'client_credentials', client_id: 'nightly-report', client_secret: 'guess' });
    expect({ status, error: body.error }).toEqual({ status: 401, error: 'invalid_client' });
  });

  it.each([
    ['a client the grants policy grants nothing', 'nothing-granted', 'invalid_grant', /grants nothing.*client nothing-granted is granted no tool/],
    ['a grants policy that errors', 'broken', 'invalid_grant', /grants policy failed/],
    ['a client configured for sign-in only', 'signs-in', 'invalid_request', /not allowed for this client/],
  ])('%s', async (_name, clientId, error, reason) => {
    const since = await lastSeq();
    const { status, body } = await clientCredentials(origin, await assertion({ clientId }));
    expect({ status, error: body.error }).toEqual({ status: 400, error });
    expect(await tokenRecords(since)).toContainEqual(expect.objectContaining({ outcome: 'denied', denial: expect.objectContaining({ code: `oauth:${error}`, reason: expect.stringMatching(reason) }) }));
  });
});

describe('the replay cache is behind the state interface', () => {
  let redis: RedisServer;
  const replicas: TestBroker[] = [];
  const dirs: string[] = [];

  beforeAll(async () => {
    requireRedisServer();
    redis = await startRedis();
    const nightly = await keyPair('nightly-1');
    for (const name of ['a', 'b']) {
      const dir = await mkdtemp(path.join(tmpdir(), `bastion-cc-replica-${name}-`));
      dirs.push(dir);
      replicas.push(await startTestBroker({ ...(await headlessConfig(dir, { jwksUri: 'https://127.0.0.1:9/jwks.json' }, nightly.publicJwk)), state: { backend: 'redis', url: redis.url }, replica_id: name, server: { port: 0, resource: 'http://localhost:9/mcp' } }));
    }
    nightlyKey = nightly.privateJwk;
  }, 60_000);

  afterAll(async () => {
    for (const replica of replicas) await replica.close();
    await redis?.stop();
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it('an assertion used at one replica is refused at the other', async () => {
    const [a, b] = replicas.map((r) => new URL(r.url).origin) as [string, string];
    const once = await assertion({ aud: 'http://localhost:9' });
    expect((await clientCredentials(a, once)).status).toBe(200);
    expect(await clientCredentials(b, once)).toMatchObject({ status: 401, body: { error: 'invalid_client', error_description: expect.stringMatching(/presented before/) } });
  });
});
