/**
 * A broker on the embedded store killed with SIGKILL while calls wait for
 * approval or run, and restarted at once on the same state folder: the real
 * CLI in a child process both times. The restarted broker knows its
 * predecessor is dead (it holds the state folder's lock), so it does not wait
 * for the dead process's heartbeat to lapse: the orphaned request is shown as
 * "agent disconnected" on its first page load, approving it says
 * `abandoned` and runs nothing, and a call that was handed to the upstream
 * when the broker died is recorded as `interrupted` (whether it ran is
 * unknown), never as `executed`.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { JWK } from 'jose';
import type { AuditRecord } from '../../broker/audit/chain.ts';
import { verifyAuditFile } from '../../broker/audit/verify.ts';
import { generateSigningKey } from '../../broker/auth/keys.ts';
import { mintToken } from '../../broker/auth/mint.ts';
import { approverToken, eventually, signInApprover } from '../helpers/approver.ts';
import { readJsonLines, startReplica, type Replica, type ReplicaOptions } from '../replicas/replica.ts';

const ISSUER = 'https://issuer.restart.test';
const RESOURCE = 'http://bastion.restart.test/mcp';

let dir: string;
let key: JWK;
let options: ReplicaOptions;
const running: Replica[] = [];
const clients: Client[] = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-restart-'));
  const issuerKey = await generateSigningKey('EdDSA');
  key = issuerKey.privateJwk;
  const jwksFile = path.join(dir, 'issuer-jwks.json');
  await writeFile(jwksFile, JSON.stringify(issuerKey.jwks));
  // No Redis: the embedded store. `slow` is made high-risk so an approved call can still be running when the broker dies.
  options = { name: 'solo', dir, resource: RESOURCE, issuer: ISSUER, jwksFile, callLog: path.join(dir, 'upstream-calls.jsonl'), tools: { slow: { risk: 'high' } } };
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  await Promise.all(running.map((r) => r.stop()));
  await rm(dir, { recursive: true, force: true });
});

async function start(): Promise<Replica> {
  const replica = await startReplica(options);
  running.push(replica);
  return replica;
}

async function connect(replica: Replica, token: string): Promise<Client> {
  const client = new Client({ name: 'restart-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(replica.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  clients.push(client);
  return client;
}

const approver = async (replica: Replica, sub: string) => signInApprover(replica.url, await approverToken(key, ISSUER, RESOURCE, sub), sub);
const upstream = (tool: string) => readJsonLines<{ tool: string }>(options.callLog).then((calls) => calls.filter((c) => c.tool === tool).length);

describe('kill -9 and an immediate restart on the same state folder', () => {
  it('the orphaned request is shown disconnected at once, approving it says abandoned and runs nothing; the call in flight is interrupted, not executed', async () => {
    const first = await start();
    const agent = await connect(first, await mintToken({ key, issuer: ISSUER, audience: RESOURCE, sub: 'agent:orphan', cap: [{ tool: 'rec__wipe' }, { tool: 'rec__slow' }], ttlMs: 600_000 }));
    const wipe = agent.callTool({ name: 'rec__wipe', arguments: {} });
    const slow = agent.callTool({ name: 'rec__slow', arguments: { ms: 600_000 } }, { timeout: 600_000 });
    wipe.catch(() => undefined);
    slow.catch(() => undefined);

    const alice = await approver(first, 'approver:alice');
    const parked = await eventually(async () => {
      const calls = await alice.pending();
      return calls.length === 2 ? calls : undefined;
    }, 'both calls parked');
    const wipeRecord = parked.find((c) => c.tool === 'rec__wipe');
    const slowRecord = parked.find((c) => c.tool === 'rec__slow');
    expect(wipeRecord).toMatchObject({ owner_alive: true });
    expect((await alice.decide(slowRecord.id, 'approve', 'let it run', slowRecord.call_hash)).body.status).toBe('approved');
    // The slow call reached the upstream and is running: the record says dispatched, nothing more is known.
    await eventually(async () => ((await upstream('slow')) === 1 ? true : undefined), 'the slow call to reach the upstream');
    expect((await alice.history()).find((c) => c.id === slowRecord.id)?.status).toBe('dispatched');

    await first.kill();
    const second = await start();
    const bob = await approver(second, 'approver:bob');

    // The first look after the restart, no waiting: the predecessor is known dead.
    const shown = (await bob.pending()).find((c) => c.id === wipeRecord.id);
    expect(shown).toMatchObject({ status: 'pending', owner_alive: false });
    const decision = await bob.decide(wipeRecord.id, 'approve', 'looks fine', wipeRecord.call_hash);
    expect(decision).toMatchObject({ status: 200, body: { status: 'abandoned' } });
    expect(decision.body.outcome).toContain('will not run');

    const interrupted = (await bob.history()).find((c) => c.id === slowRecord.id);
    expect(interrupted).toMatchObject({ status: 'interrupted', outcome: expect.stringContaining('whether the tool ran is unknown') });
    expect(await upstream('wipe')).toBe(0);
    expect(await upstream('slow')).toBe(1);

    // The restarted broker audited what it settled, on a chain that continued intact.
    const records = await readJsonLines<AuditRecord>(second.auditFile);
    const about = (id: string) => records.filter((r) => r.detail?.approval_id === id).map((r) => r.event);
    expect(about(slowRecord.id)).toEqual(['approval.requested', 'approval.approved', 'approval.dispatched', 'approval.interrupted']);
    expect(about(wipeRecord.id)).toEqual(['approval.requested', 'approval.abandoned']);
    expect(records.find((r) => r.event === 'approval.interrupted')?.detail?.swept_by).toMatch(/#2$/);
    await second.stop();
    expect(await verifyAuditFile(second.auditFile)).toMatchObject({ ok: true });
  });
});
