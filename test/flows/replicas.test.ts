/**
 * A flow across replicas: two real Bastion processes on one real Redis,
 * with the workspace upstreams. What an agent read through one replica
 * holds when it acts through the other; concurrent calls through both
 * lose no label; an operator's clear on one replica holds on the other.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import type { JWK } from 'jose';
import { generateSigningKey } from '../../broker/auth/keys.ts';
import { mintToken } from '../../broker/auth/mint.ts';
import type { Capability } from '../../broker/policy/schema.ts';
import { workspaceConnectors, workspacePolicyData } from '../../broker/redteam/workspace.ts';
import { approverToken, eventually, signInApprover } from '../helpers/approver.ts';
import { startRedis, type RedisServer } from '../helpers/redis.ts';
import { readJsonLines, startReplica, type Replica } from '../replicas/replica.ts';
import { OFFICE } from './helpers.ts';

const ISSUER = 'https://issuer.flows.test';
const RESOURCE = 'http://bastion.flows.test/mcp';
const LANDLORD_IBAN = 'DE89370400440532013000';

let dir: string;
let redis: RedisServer;
let key: JWK;
let callLog: string;
let a: Replica;
let b: Replica;
const clients: Client[] = [];

const mint = (sub: string, cap: Capability[]) => mintToken({ key, issuer: ISSUER, audience: RESOURCE, sub, cap, ttlMs: 300_000 });
const everything: Capability[] = [{ tool: 'mail__*' }, { tool: 'payments__*' }, { tool: 'web__*' }];

async function connect(replica: Replica, token: string): Promise<Client> {
  const client = new Client({ name: 'flow-replica-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(replica.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  clients.push(client);
  return client;
}

const call = async (client: Client, name: string, args: Record<string, unknown>) => (await client.callTool({ name, arguments: args })) as CallToolResult;
const payments = async () => (await readJsonLines<{ tool: string }>(callLog)).filter((c) => c.tool === 'send_money').length;

async function admin(replica: Replica, route: string, body?: unknown): Promise<Response> {
  const token = await mint('operator:flows', [{ tool: 'bastion:flows' }]);
  return fetch(new URL(route, replica.origin), {
    method: body ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-flow-replicas-'));
  callLog = path.join(dir, 'calls.jsonl');
  const worldFile = path.join(dir, 'world.json');
  const dataFile = path.join(dir, 'data.json');
  await writeFile(worldFile, JSON.stringify(OFFICE));
  await writeFile(dataFile, JSON.stringify(workspacePolicyData()));
  const issuerKey = await generateSigningKey('EdDSA');
  key = issuerKey.privateJwk;
  const jwksFile = path.join(dir, 'issuer-jwks.json');
  await writeFile(jwksFile, JSON.stringify(issuerKey.jwks));
  redis = await startRedis();
  const extra = { connectors: workspaceConnectors({ worldFile, callLog, suites: ['mail', 'payments', 'web'] }), policy: { data: dataFile } };
  const common = { dir, redisUrl: redis.url, resource: RESOURCE, issuer: ISSUER, jwksFile, callLog, extra };
  [a, b] = await Promise.all([startReplica({ ...common, name: 'flow-a' }), startReplica({ ...common, name: 'flow-b' })]);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  await Promise.all([a?.stop(), b?.stop()]);
  await redis?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('a flow on Redis', () => {
  it('an untrusted read through replica A makes a payment through replica B park, explained on B', async () => {
    const onA = await connect(a, await mint('agent:hopper', everything));
    await call(onA, 'mail__read_email', { id: '2' });
    const onB = await connect(b, await mint('agent:hopper', everything)); // another token, another replica
    const before = await payments();
    const result = call(onB, 'payments__send_money', { iban: 'GB82WEST12345698765432', amount: 1870 });
    result.catch(() => undefined);
    const approver = await signInApprover(b.url, await approverToken(key, ISSUER, RESOURCE, 'approver:flows'), 'approver:flows');
    const parked = await eventually(async () => (await approver.pending()).find((p) => p.principal.sub === 'agent:hopper'), 'the payment parked on B');
    expect(parked.flow.sources[0]).toMatchObject({ tool: 'mail__read_email', labels: ['untrusted', 'private'] });
    expect(parked.flow.arguments[0]).toMatchObject({ argument: '/iban', value: 'GB82WEST12345698765432' });
    await approver.decide(parked.id, 'deny', 'phishing', parked.call_hash);
    expect((await result)._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_APPROVAL_DENIED' });
    expect(await payments()).toBe(before);
  });

  it('concurrent calls of one agent through both replicas lose no label', async () => {
    const token = await mint('agent:racer', everything);
    const [onA, onB] = await Promise.all([connect(a, token), connect(b, await mint('agent:racer', everything))]);
    await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        // Reads only: a fetch to an outside URL is itself a sink, and would park once the flow is tainted.
        i % 2 === 0 ? call(onA, 'web__search', { query: 'markets' }) : call(onB, 'mail__read_email', { id: '1' }),
      ),
    );
    const response = await admin(a, `/admin/flows?iss=${encodeURIComponent(ISSUER)}&sub=agent:racer`);
    const { flow } = (await response.json()) as { flow: { labels: Record<string, string[]>; sources: { id: string; tool: string }[] } };
    // Whatever the interleaving, both replicas' sources are there, under both labels: no update was lost.
    const tools = (label: string) => new Set(flow.labels[label]!.map((id) => flow.sources.find((s) => s.id === id)?.tool));
    expect(tools('untrusted')).toEqual(new Set(['web__search', 'mail__read_email']));
    expect(tools('private')).toEqual(new Set(['mail__read_email']));
  });

  it("an operator's clear on B frees the agent on A", async () => {
    const onA = await connect(a, await mint('agent:freed', everything));
    await call(onA, 'web__fetch', { url: 'https://news.example/today' });
    const cleared = await admin(b, '/admin/flows/clear', { iss: ISSUER, sub: 'agent:freed' });
    expect(await cleared.json()).toMatchObject({ cleared: true });
    const before = await payments();
    expect((await call(onA, 'payments__send_money', { iban: LANDLORD_IBAN, amount: 3 })).isError).toBeFalsy();
    expect(await payments()).toBe(before + 1);
    const audit = await readJsonLines<{ event: string; outcome: string; replica: string }>(b.auditFile);
    expect(audit.find((r) => r.event === 'admin/flows/clear')).toMatchObject({ outcome: 'ok', replica: 'flow-b' });
  });
});
