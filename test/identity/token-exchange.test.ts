/**
 * Token exchange (RFC 8693) at Bastion's token endpoint: headless agents
 * present the identity their platform gave them. Two real OpenID providers
 * stand in for a Kubernetes service-account issuer (keys by discovery) and
 * GitHub Actions (keys by JWKS URL), signing tokens shaped like theirs with
 * their own keys; the grants policy is the real compiled one with workload
 * rules as data; the agent is the official TypeScript SDK client. Every
 * refusal is an OAuth error saying why, no token, and an audit record.
 */
import { createHmac } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { revoke } from '../../broker/auth/revocation.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startWorkloadIssuer, type WorkloadIssuer } from '../helpers/workload-issuer.ts';
import { tokenRequest } from './flow.ts';
import { connectHeadless, headlessProvider } from './oauth-client.ts';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT = 'urn:ietf:params:oauth:token-type:jwt';

let work: string;
let k8s: WorkloadIssuer;
let github: WorkloadIssuer;
let rogue: WorkloadIssuer;
let t: TestBroker;
let origin: string;
let resource: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'bastion-token-exchange-'));
  [k8s, github, rogue] = await Promise.all([startWorkloadIssuer(), startWorkloadIssuer(), startWorkloadIssuer()]);
  const data = path.join(work, 'data.json');
  await writeFile(
    data,
    JSON.stringify({
      bastion: {
        grants_by_workload: [
          { issuer: 'kubernetes', match: { 'kubernetes.io/namespace': 'agents', 'kubernetes.io/serviceaccount/name': 'ci-bot' }, cap: [{ tool: 'rec__echo' }] },
          { issuer: 'kubernetes', match: { 'kubernetes.io/namespace': 'broken' }, cap: [{ tool: '' }] },
          { issuer: 'github', match: { repository: 'acme/app', workflow: 'deploy' }, cap: [{ tool: 'rec__*' }] },
        ],
      },
    }),
  );
  t = await startTestBroker({
    policy: { data },
    identity: {
      registration: { enabled: true },
      token_exchange: {
        issuers: [
          { name: 'kubernetes', issuer: k8s.issuer, algorithms: ['RS256'], max_lifetime: '1h', pass_claims: ['kubernetes.io'] },
          { name: 'github', issuer: github.issuer, jwks_url: github.jwksUri, algorithms: ['RS256'], typ: 'JWT', max_lifetime: '10m', pass_claims: ['repository', 'workflow', 'ref'] },
        ],
      },
    },
  });
  origin = new URL(t.url).origin;
  resource = t.door.resource;
}, 60_000);

afterAll(async () => {
  await t?.close();
  await Promise.all([k8s, github, rogue].map((issuer) => issuer?.close()));
  await rm(work, { recursive: true, force: true });
});

const lastSeq = () => t.auditMark();
const tokenRecords = (since: number) => t.auditSince(since, 'oauth/token');

function exchange(subjectToken: string, more: Record<string, string> = {}) {
  return tokenRequest(origin, { grant_type: TOKEN_EXCHANGE, client_id: 'bastion-cli', subject_token: subjectToken, subject_token_type: JWT, ...more });
}

const ciBot = () => k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'ci-bot', audience: resource });
const deployJob = () => github.githubToken({ repository: 'acme/app', workflow: 'deploy', audience: resource });

describe('a headless agent', () => {
  it('exchanges its Kubernetes service-account token with the official SDK client and calls the tools its rule grants', async () => {
    const since = await lastSeq();
    const provider = headlessProvider({ clientId: 'bastion-cli', expectedIssuer: origin, grant: async () => ({ grant_type: TOKEN_EXCHANGE, subject_token: await ciBot(), subject_token_type: JWT }) });
    const client = await connectHeadless(t.url, provider);
    try {
      const result = await client.callTool({ name: 'rec__echo', arguments: { text: 'from the cluster' } });
      expect(result.isError).toBeFalsy();
      const refused = await client.callTool({ name: 'rec__transfer', arguments: { amount: 1, to: 'x' } });
      expect(refused.isError).toBe(true);
    } finally {
      await client.close();
    }
    expect((await t.upstreamCalls()).map((c) => c.tool)).toContain('echo');
    const claims = decodeJwt(provider.stored.tokens!.access_token);
    expect(claims).toMatchObject({ sub: 'kubernetes:system:serviceaccount:agents:ci-bot', iss: origin, aud: resource, client_id: 'bastion-cli', cap: [{ tool: 'rec__echo' }] });
    expect(claims).not.toHaveProperty('act');
    expect(decodeProtectedHeader(provider.stored.tokens!.access_token).typ).toBe('bastion-cap+jwt');
    expect(await tokenRecords(since)).toContainEqual(
      expect.objectContaining({ outcome: 'ok', principal: { sub: 'kubernetes:system:serviceaccount:agents:ci-bot', iss: origin }, detail: expect.objectContaining({ grant_type: TOKEN_EXCHANGE, subject_issuer: k8s.issuer, tools: ['rec__echo'], refresh_token_issued: false }) }),
    );
  });

  it('exchanges a GitHub Actions token: RFC 8693 response, no refresh token, lifetime within auth.max_ttl', async () => {
    const { status, body } = await exchange(await deployJob(), { resource });
    expect(status).toBe(200);
    expect(body).toMatchObject({ issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', token_type: 'Bearer', scope: 'mcp' });
    expect(body).not.toHaveProperty('refresh_token');
    expect(body.expires_in).toBeLessThanOrEqual(900);
    const claims = decodeJwt(String(body.access_token));
    expect(claims).toMatchObject({ sub: 'github:repo:acme/app:ref:refs/heads/main', cap: [{ tool: 'rec__*' }] });
    const client = await t.connect(String(body.access_token));
    expect((await client.callTool({ name: 'rec__echo', arguments: { text: 'from CI' } })).isError).toBeFalsy();
  });

  it('records the actor of an actor_token as the act chain, nested over the subject token’s own chain', async () => {
    const since = await lastSeq();
    const subject = await k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'ci-bot', audience: resource, extra: { act: { sub: 'user:alice' } } });
    const actor = await deployJob();
    const { status, body } = await exchange(subject, { actor_token: actor, actor_token_type: JWT });
    expect(status).toBe(200);
    const token = String(body.access_token);
    expect(decodeJwt(token).act).toEqual({ sub: 'github:repo:acme/app:ref:refs/heads/main', act: { sub: 'user:alice' } });
    // Stage 1 reads the chain: the policy and separation of duties see both actors.
    const principal = await t.broker.authenticatorFor(resource).authenticate({ token, transport: 'http' });
    expect(principal).toMatchObject({ sub: 'kubernetes:system:serviceaccount:agents:ci-bot', act: [{ sub: 'github:repo:acme/app:ref:refs/heads/main' }, { sub: 'user:alice' }] });
    expect(await tokenRecords(since)).toContainEqual(
      expect.objectContaining({ outcome: 'ok', detail: expect.objectContaining({ actor: 'github:repo:acme/app:ref:refs/heads/main', act: ['github:repo:acme/app:ref:refs/heads/main', 'user:alice'] }) }),
    );
  });

  it('accepts an actor the subject token names in may_act', async () => {
    const subject = await k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'ci-bot', audience: resource, extra: { may_act: { sub: 'repo:acme/app:ref:refs/heads/main', iss: github.issuer } } });
    const { status } = await exchange(subject, { actor_token: await deployJob(), actor_token_type: JWT });
    expect(status).toBe(200);
  });
});

/** An unsigned token (alg none). */
function unsigned(claims: Record<string, unknown>): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`;
}

/** HS256 keyed with the issuer's public key: the classic algorithm confusion. */
function hmacWithPublicKey(issuer: WorkloadIssuer, claims: Record<string, unknown>): string {
  const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...publicJwk } = issuer.privateJwk;
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${part({ alg: 'HS256', kid: 'workload-key' })}.${part(claims)}`;
  return `${input}.${createHmac('sha256', JSON.stringify(publicJwk)).update(input).digest('base64url')}`;
}

const now = () => Math.floor(Date.now() / 1000);
const k8sClaims = () => ({ iss: k8s.issuer, sub: 'system:serviceaccount:agents:ci-bot', aud: [resource], iat: now(), exp: now() + 300, 'kubernetes.io': { namespace: 'agents', serviceaccount: { name: 'ci-bot' } } });

describe('token exchange refuses, with an OAuth error, no token and an audit record:', () => {
  const cases: [string, () => Promise<Record<string, string>>, string, RegExp][] = [
    ['a subject token from an untrusted issuer', async () => ({ subject_token: await rogue.kubernetesToken({ namespace: 'agents', serviceAccount: 'ci-bot', audience: resource }) }), 'invalid_request', /ISSUER_UNTRUSTED/],
    ['a subject token for another audience', async () => ({ subject_token: await k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'ci-bot', audience: 'https://other.example/mcp' }) }), 'invalid_request', /AUDIENCE_INVALID/],
    ['a subject token for several audiences at once', async () => ({ subject_token: await k8s.sign({ ...k8sClaims(), aud: [resource, 'https://other.example'] }) }), 'invalid_request', /AUDIENCE_INVALID/],
    ['an expired subject token', async () => ({ subject_token: await k8s.sign({ ...k8sClaims(), iat: now() - 600, nbf: now() - 600, exp: now() - 120 }) }), 'invalid_request', /EXPIRED/],
    ['a subject token living longer than its issuer’s cap', async () => ({ subject_token: await github.sign({ aud: resource, sub: 'repo:acme/app:ref:refs/heads/main', repository: 'acme/app', workflow: 'deploy', exp: now() + 3600 }, { typ: 'JWT' }) }), 'invalid_request', /LIFETIME_TOO_LONG/],
    ['an unsigned subject token (alg none)', async () => ({ subject_token: unsigned(k8sClaims()) }), 'invalid_request', /ALG_REFUSED/],
    ['HS256 keyed with the issuer’s public key (algorithm confusion)', async () => ({ subject_token: hmacWithPublicKey(k8s, k8sClaims()) }), 'invalid_request', /ALG_REFUSED/],
    ['a subject token signed by another key under the issuer’s kid', async () => ({ subject_token: await rogue.sign({ ...k8sClaims() }) }), 'invalid_request', /SIGNATURE_INVALID|KEY_UNKNOWN/],
    ['a GitHub token typed as another kind of JWT', async () => ({ subject_token: await github.sign({ aud: resource, sub: 'repo:acme/app:ref:refs/heads/main' }, { typ: 'oauth-id-jag+jwt' }) }), 'invalid_request', /TYPE_REFUSED/],
    ['a subject token whose act is a string', async () => ({ subject_token: await k8s.sign({ ...k8sClaims(), act: 'user:alice' }) }), 'invalid_request', /act is malformed/],
    ['a subject token whose act link has no sub', async () => ({ subject_token: await k8s.sign({ ...k8sClaims(), act: { sub: 'user:alice', act: { client_id: 'x' } } }) }), 'invalid_request', /act is malformed/],
    ['a subject token whose act is a list', async () => ({ subject_token: await k8s.sign({ ...k8sClaims(), act: [{ sub: 'user:alice' }] }) }), 'invalid_request', /act is malformed/],
    [
      'an actor_token whose subject is not the actor the subject token names (may_act)',
      async () => ({
        subject_token: await k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'ci-bot', audience: resource, extra: { may_act: { sub: 'repo:acme/app:ref:refs/heads/main' } } }),
        actor_token: await github.githubToken({ repository: 'evil/fork', workflow: 'deploy', audience: resource }),
        actor_token_type: JWT,
      }),
      'invalid_request',
      /not the actor the subject token authorizes/,
    ],
    ['an actor_token carrying its own act chain', async () => ({ subject_token: await ciBot(), actor_token: await github.githubToken({ repository: 'acme/app', workflow: 'deploy', audience: resource, extra: { act: { sub: 'user:mallory' } } }), actor_token_type: JWT }), 'invalid_request', /its own act chain/],
    ['an actor_token with a malformed act', async () => ({ subject_token: await ciBot(), actor_token: await github.githubToken({ repository: 'acme/app', workflow: 'deploy', audience: resource, extra: { act: 42 } }), actor_token_type: JWT }), 'invalid_request', /actor_token refused.*act is malformed/],
    ['an actor_token from an untrusted issuer', async () => ({ subject_token: await ciBot(), actor_token: await rogue.githubToken({ repository: 'acme/app', workflow: 'deploy', audience: resource }), actor_token_type: JWT }), 'invalid_request', /actor_token refused.*ISSUER_UNTRUSTED/],
    ['a grants policy that errors (a rule whose grant is malformed)', async () => ({ subject_token: await k8s.kubernetesToken({ namespace: 'broken', serviceAccount: 'x', audience: resource }) }), 'invalid_request', /grants policy failed/],
    ['an identity no workload rule matches', async () => ({ subject_token: await k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'someone-else', audience: resource }) }), 'invalid_request', /grants nothing.*no workload rule of issuer kubernetes/],
    ['a resource for another server', async () => ({ subject_token: await ciBot(), resource: 'https://other.example/mcp' }), 'invalid_target', /only issues tokens for/],
    ['an audience naming another server', async () => ({ subject_token: await ciBot(), audience: 'https://other.example' }), 'invalid_target', /audience must be/],
    ['an unsupported subject_token_type', async () => ({ subject_token: await ciBot(), subject_token_type: 'urn:ietf:params:oauth:token-type:saml2' }), 'invalid_request', /subject_token_type must be/],
    ['a refresh token asked for', async () => ({ subject_token: await ciBot(), requested_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' }), 'invalid_request', /requested_token_type must be/],
    ['an actor_token without its type', async () => ({ subject_token: await ciBot(), actor_token: await deployJob() }), 'invalid_request', /actor_token_type is required/],
  ];

  it.each(cases)('%s', async (_name, params, error, reason) => {
    const since = await lastSeq();
    const { status, body } = await exchange('', await params().then((p) => ({ ...p })));
    expect({ status, error: body.error }).toEqual({ status: 400, error });
    expect(String(body.error_description)).toMatch(reason);
    expect(body).not.toHaveProperty('access_token');
    expect(await tokenRecords(since)).toContainEqual(expect.objectContaining({ outcome: 'denied', denial: expect.objectContaining({ code: `oauth:${error}`, reason: expect.stringMatching(reason) }) }));
  });

  it('a revoked subject', async () => {
    await revoke(t.broker.state, { sub: 'kubernetes:system:serviceaccount:agents:revoked-bot' }, 60_000);
    const { status, body } = await exchange(await k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'revoked-bot', audience: resource }));
    expect(status).toBe(400);
    expect(body).toMatchObject({ error: 'invalid_request', error_description: expect.stringMatching(/revoked/) });
  });

  it('a client that registered itself (DCR), even one that asked for the grant type', async () => {
    const registered = await fetch(`${origin}/oauth/reg`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ client_name: 'sneaky', redirect_uris: ['http://127.0.0.1:9/cb'], grant_types: ['authorization_code', TOKEN_EXCHANGE], response_types: ['code'], token_endpoint_auth_method: 'none' }),
    });
    const clientId = ((await registered.json()) as { client_id: string }).client_id;
    const { status, body } = await tokenRequest(origin, { grant_type: TOKEN_EXCHANGE, client_id: clientId, subject_token: await ciBot(), subject_token_type: JWT });
    expect(status).toBe(400);
    expect(body).toMatchObject({ error: 'unauthorized_client', error_description: expect.stringMatching(/not configured for token_exchange/) });
  });
});
