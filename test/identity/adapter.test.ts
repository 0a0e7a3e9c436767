/**
 * oidc-provider's storage adapter over the state interface, embedded and on
 * a real redis-server as two replicas: what one replica stores the other
 * finds; a code or refresh token presented on both at once is consumed by
 * exactly one, and the loser's replay revokes the whole family everywhere.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stateAdapterFactory } from '../../broker/identity/adapter.ts';
import { openEmbeddedState } from '../../broker/state/embedded.ts';
import { openRedisState } from '../../broker/state/redis.ts';
import type { StateStore } from '../../broker/state/store.ts';
import { startRedis, type RedisServer } from '../helpers/redis.ts';

let redis: RedisServer;
let dir: string;
beforeAll(async () => {
  redis = await startRedis();
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-adapter-'));
});
afterAll(async () => {
  await redis?.stop();
  await rm(dir, { recursive: true, force: true });
});

const family = { grantId: 'grant-1', exp: Math.floor(Date.now() / 1000) + 600 };

describe.each([
  ['embedded', async () => { const s = await openEmbeddedState(path.join(dir, `state-${Math.random()}.jsonl`)); return [s, s] as const; }],
  ['redis, two replicas', async () => {
    const prefix = `adapter${Math.random()}:`;
    return [await openRedisState({ url: redis.url, prefix, commandTimeoutMs: 2000 }), await openRedisState({ url: redis.url, prefix, commandTimeoutMs: 2000 })] as const;
  }],
])('the state adapter (%s)', (_name, open) => {
  let a: StateStore;
  let b: StateStore;
  beforeAll(async () => {
    [a, b] = await open();
  });
  afterAll(async () => {
    await a.close();
    if (b !== a) await b.close();
  });

  it('shares entries, and a family revoked on one replica is gone on the other', async () => {
    const revoked: string[] = [];
    const onA = stateAdapterFactory(a, { clientTtlMs: 60_000, beforeFamilyRevoked: async (g) => void revoked.push(g) });
    const onB = stateAdapterFactory(b, { clientTtlMs: 60_000 });
    await onA('RefreshToken').upsert('rt-1', { ...family, kind: 'RefreshToken' } as never, 600);
    await onA('AuthorizationCode').upsert('code-1', { ...family, kind: 'AuthorizationCode' } as never, 60);
    expect(await onB('RefreshToken').find('rt-1')).toMatchObject({ grantId: 'grant-1' });
    await onA('RefreshToken').revokeByGrantId('grant-1');
    expect(revoked).toEqual(['grant-1']);
    expect(await onB('RefreshToken').find('rt-1')).toBeUndefined();
    expect(await onB('AuthorizationCode').find('code-1')).toBeUndefined();
  });

  it('consumes a token once when two replicas race; the loser revokes the family', async () => {
    const reported: string[] = [];
    const onA = stateAdapterFactory(a, { clientTtlMs: 60_000, onFamilyRevoked: (g) => void reported.push(g) });
    const onB = stateAdapterFactory(b, { clientTtlMs: 60_000, onFamilyRevoked: (g) => void reported.push(g) });
    const grant = { ...family, grantId: 'grant-2' };
    await onA('RefreshToken').upsert('rt-2', { ...grant, kind: 'RefreshToken' } as never, 600);
    await onA('RefreshToken').upsert('rt-3', { ...grant, kind: 'RefreshToken' } as never, 600);
    const results = await Promise.allSettled([onA('RefreshToken').consume('rt-2'), onB('RefreshToken').consume('rt-2')]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    expect((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason).toMatchObject({ error: 'invalid_grant' });
    expect(reported).toEqual(['grant-2']);
    expect(await onB('RefreshToken').find('rt-3')).toBeUndefined(); // the rest of the family
    // A consumed token presented again (sequentially) is refused the same way.
    await onA('AuthorizationCode').upsert('code-9', { ...family, grantId: 'grant-3', kind: 'AuthorizationCode' } as never, 60);
    await onA('AuthorizationCode').consume('code-9');
    await expect(onB('AuthorizationCode').consume('code-9')).rejects.toMatchObject({ error: 'invalid_grant' });
  });
});
