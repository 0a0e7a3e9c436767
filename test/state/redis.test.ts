/**
 * The Redis state store against a real redis-server started by this suite:
 * the shared StateStore contract, then what only several replicas can show:
 * two store instances (two connections, as two replicas) racing the same
 * claims, compare-and-sets, token buckets and slots; pub/sub between them;
 * Redis killed or hung (every operation refused, never allowed) and brought
 * back (the store serves again by itself).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { openRedisState } from '../../broker/state/redis.ts';
import { StateUnavailable, type StateStore } from '../../broker/state/store.ts';
import { startRedis, until, type RedisServer } from '../helpers/redis.ts';
import { stateContract } from './contract.ts';

const TIMEOUT_MS = 500;
let redis: RedisServer;
let prefixes = 0;
/** A store with its own key prefix unless one is given (so suites never see each other's keys). */
const open = (prefix = `test${++prefixes}:`) => openRedisState({ url: redis.url, prefix, commandTimeoutMs: TIMEOUT_MS });

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

stateContract('redis', () => ({ open: () => open() }));

/** The error a failed operation rejected with. */
async function failure(operation: Promise<unknown>): Promise<unknown> {
  try {
    await operation;
  } catch (error) {
    return error;
  }
  throw new Error('the operation succeeded while Redis was down');
}

/** Every operation of the interface, with fresh arguments. */
const everyOperation = (state: StateStore): [string, () => Promise<unknown>][] => [
  ['claim', () => state.claim('jti', `k${Math.random()}`, 60_000)],
  ['get', () => state.get('revoked', 'sub:agent:x')],
  ['set', () => state.set('ns', 'k', 'v')],
  ['set with ttl', () => state.set('ns', 'k', 'v', 1000)],
  ['delete', () => state.delete('ns', 'k')],
  ['compareAndSet', () => state.compareAndSet('ns', 'k', undefined, 'v')],
  ['entries', () => state.entries('ns')],
  ['setWithinQuota', () => state.setWithinQuota('plugin:x', 'k', 'v', { maxKeys: 10, maxBytes: 1000 })],
  ['deleteWithinQuota', () => state.deleteWithinQuota('plugin:x', 'k')],
  ['takeTokens', () => state.takeTokens('rate', { capacity: 10, refillPerSecond: 1 })],
  ['acquireSlot', () => state.acquireSlot('slots', 5, 60_000)],
  ['releaseSlot', () => state.releaseSlot('slots', 'x')],
  ['publish', () => state.publish('approvals', 'x')],
];

describe('redis: two stores are two replicas sharing one Redis', () => {
  let a: StateStore;
  let b: StateStore;
  beforeAll(async () => {
    a = await open('shared:');
    b = await open('shared:');
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
  });

  it('a claim raced from both replicas is won exactly once out of 200', async () => {
    for (const round of [1, 2, 3]) {
      const attempts = Array.from({ length: 200 }, (_, i) => (i % 2 ? a : b).claim('token-jti', `race-${round}`, 60_000));
      const results = await Promise.all(attempts);
      expect(results.filter(Boolean)).toHaveLength(1);
    }
  });

  it('what one replica writes the other reads: values, deletes, entries', async () => {
    await a.set('revoked', 'sub:agent:gone', '{"sub":"agent:gone"}');
    expect(await b.get('revoked', 'sub:agent:gone')).toBe('{"sub":"agent:gone"}');
    expect(await b.entries('revoked')).toEqual([['sub:agent:gone', '{"sub":"agent:gone"}']]);
    expect(await b.delete('revoked', 'sub:agent:gone')).toBe(true);
    expect(await a.delete('revoked', 'sub:agent:gone')).toBe(false);
  });

  it('compare-and-set loops on both replicas lose no update (100 increments → 100)', async () => {
    await a.set('counter', 'n', '0');
    const increment = async (state: StateStore) => {
      for (let attempt = 0; attempt < 1000; attempt++) {
        const current = (await state.get('counter', 'n'))!;
        if (await state.compareAndSet('counter', 'n', current, String(Number(current) + 1))) return;
      }
      throw new Error('too many retries');
    };
    await Promise.all(Array.from({ length: 100 }, (_, i) => increment(i % 2 ? a : b)));
    expect(await a.get('counter', 'n')).toBe('100');
  });

  it('compare-and-set from absent: exactly one replica creates the record', async () => {
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => (i % 2 ? a : b).compareAndSet('approvals', 'new', undefined, `by-${i}`)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await b.get('approvals', 'new')).toBe(`by-${results.indexOf(true)}`);
  });

  it('a quota is shared exactly: 10 keys allowed across both replicas out of 40, counted once however many replicas count it first', async () => {
    // Entries stored before the namespace had a quota are counted by whichever replica writes first.
    await a.set('plugin:shared', 'before', 'v');
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).setWithinQuota('plugin:shared', `k${i}`, 'v', { maxKeys: 10, maxBytes: 10_000 })));
    expect(results.filter((r) => r.stored)).toHaveLength(9);
    expect(await b.entries('plugin:shared')).toHaveLength(10);
    expect(await a.deleteWithinQuota('plugin:shared', 'before')).toBe(true);
    expect(await b.setWithinQuota('plugin:shared', 'last', 'v', { maxKeys: 10, maxBytes: 10_000 })).toMatchObject({ stored: true, keys: 10 });
  });

  it('a token bucket is shared exactly: capacity 10, no refill → 10 allowed across both replicas out of 40', async () => {
    const bucket = { capacity: 10, refillPerSecond: 0 };
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).takeTokens('p:agent:x', bucket)));
    expect(results.filter((r) => r.allowed)).toHaveLength(10);
    expect((await a.takeTokens('p:agent:x', bucket)).allowed).toBe(false);
    expect((await b.takeTokens('p:agent:x', bucket)).allowed).toBe(false);
  });

  it('concurrency slots are shared: limit 3 → 3 of 20 across both; a slot taken on one is released on the other; leases expire', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).acquireSlot('slots:x', 3, 60_000)));
    const held = results.filter((s): s is string => s !== undefined);
    expect(held).toHaveLength(3);
    await b.releaseSlot('slots:x', held[0]!);
    expect(await a.acquireSlot('slots:x', 3, 60_000)).toBeTypeOf('string');
    expect(await b.acquireSlot('slots:x', 3, 60_000)).toBeUndefined();

    expect(await a.acquireSlot('slots:lease', 1, 200)).toBeTypeOf('string');
    expect(await b.acquireSlot('slots:lease', 1, 200)).toBeUndefined();
    await until(async () => (await b.acquireSlot('slots:lease', 1, 60_000)) !== undefined, 'the lease taken on a to expire for b');
  });

  it('a message published on one replica reaches subscribers on both', async () => {
    const onA: string[] = [];
    const onB: string[] = [];
    const stopA = a.subscribe('approvals', (m) => onA.push(m));
    const stopB = b.subscribe('approvals', (m) => onB.push(m));
    await until(async () => {
      await b.publish('approvals', 'approval-1');
      return onA.includes('approval-1') && onB.includes('approval-1');
    }, 'delivery on both replicas');
    stopA();
    stopB();
  });

  it('different prefixes are different deployments: nothing is shared', async () => {
    const other = await open('other-deployment:');
    try {
      await a.set('revoked', 'sub:agent:prefix', '1');
      expect(await other.get('revoked', 'sub:agent:prefix')).toBeUndefined();
      expect(await other.claim('token-jti', 'race-1', 60_000)).toBe(true);
      expect(await other.entries('revoked')).toEqual([]);
      expect((await other.takeTokens('p:agent:x', { capacity: 10, refillPerSecond: 0 })).allowed).toBe(true);
    } finally {
      await other.close();
    }
  });

  it('keeps working after Redis forgets its scripts (as after a restart)', async () => {
    const admin = new Redis(redis.url);
    try {
      await admin.script('FLUSH');
      expect(await a.compareAndSet('ns', 'after-flush', undefined, 'v')).toBe(true);
      expect((await a.takeTokens('after-flush', { capacity: 1, refillPerSecond: 0 })).allowed).toBe(true);
      expect(await a.acquireSlot('after-flush', 1, 1000)).toBeTypeOf('string');
      expect(await a.setWithinQuota('after-flush', 'k', 'v', { maxKeys: 1, maxBytes: 10 })).toMatchObject({ stored: true });
    } finally {
      admin.disconnect();
    }
  });

  it('uses the Redis clock, not the replica clock, and keeps keys in the documented layout', async () => {
    const admin = new Redis(redis.url);
    try {
      await a.set('ns:with:colons', 'key', 'v', 60_000);
      expect(await admin.get('shared:kv:14:ns:with:colons:key')).toBe('v');
      const pttl = await admin.pttl('shared:kv:14:ns:with:colons:key');
      expect(pttl).toBeGreaterThan(0);
      expect(pttl).toBeLessThanOrEqual(60_000);
      await a.setWithinQuota('plugin:layout', 'key', 'value', { maxKeys: 5, maxBytes: 100 });
      expect(await admin.hgetall('shared:quota:13:plugin:layout')).toEqual({ keys: '1', bytes: '8' });
      expect(await admin.get('shared:kv:13:plugin:layout:key')).toBe('value');
      await a.takeTokens('layout', { capacity: 5, refillPerSecond: 1 });
      const bucket = await admin.hgetall('shared:bucket:layout');
      expect(Number(bucket.tokens)).toBe(4);
      const [seconds] = await admin.time();
      expect(Math.floor(Number(bucket.at) / 1000)).toBeLessThanOrEqual(Number(seconds));
    } finally {
      admin.disconnect();
    }
  });

  it('close() quits both connections', async () => {
    const admin = new Redis(redis.url);
    try {
      const names = async () => ((await admin.client('LIST')) as string).split('\n').filter((line) => / name=bastion(-sub)? /.test(line)).length;
      const before = await names();
      const extra = await open();
      await until(async () => (await names()) === before + 2, 'the new store to connect twice');
      await extra.close();
      await until(async () => (await names()) === before, 'both connections to go');
      expect(await extra.ready()).toBe(false);
      expect(await failure(extra.get('ns', 'k'))).toBeInstanceOf(StateUnavailable);
    } finally {
      admin.disconnect();
    }
  });
});

describe('redis: fail closed while Redis is gone, recover when it is back', () => {
  let a: StateStore;
  let b: StateStore;
  beforeAll(async () => {
    a = await open('outage:');
    b = await open('outage:');
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
  });

  it('refuses to open on a Redis that may evict keys (a forgotten revocation is a live token again)', async () => {
    const evicting = await startRedis(['--maxmemory', '64mb', '--maxmemory-policy', 'allkeys-lru']);
    const safe = await startRedis(['--maxmemory', '64mb', '--maxmemory-policy', 'noeviction']);
    try {
      const refused = openRedisState({ url: evicting.url, prefix: 'x:', commandTimeoutMs: TIMEOUT_MS });
      await expect(refused).rejects.toBeInstanceOf(StateUnavailable);
      await expect(refused).rejects.toThrow(/maxmemory-policy is allkeys-lru/);
      const ok = await openRedisState({ url: safe.url, prefix: 'x:', commandTimeoutMs: TIMEOUT_MS });
      expect(await ok.ready()).toBe(true);
      await ok.close();
    } finally {
      await evicting.stop();
      await safe.stop();
    }
  });

  it('refuses to open when Redis cannot be reached', async () => {
    const unreachable = openRedisState({ url: 'redis://127.0.0.1:1', prefix: 'x:', commandTimeoutMs: 200 });
    await expect(unreachable).rejects.toBeInstanceOf(StateUnavailable);
  });

  it('Redis hung (SIGSTOP): every operation rejects with StateUnavailable (command timeout); resumes when Redis does', async () => {
    await a.set('revoked', 'sub:agent:hung', '1');
    redis.pause();
    const late: string[] = [];
    let stopLate = () => {};
    try {
      // A subscription made while Redis does not answer is not lost.
      stopLate = a.subscribe('late-channel', (m) => late.push(m));
      const operations = everyOperation(a);
      const errors = await Promise.all(operations.map(([, operation]) => failure(operation())));
      errors.forEach((error, i) => expect(error, operations[i]![0]).toBeInstanceOf(StateUnavailable));
      expect(await a.ready()).toBe(false);
    } finally {
      redis.resume();
    }
    await until(() => a.ready(), 'a to be ready again', 400);
    expect(await a.get('revoked', 'sub:agent:hung')).toBe('1');
    await until(async () => {
      await b.publish('late-channel', 'arrived');
      return late.includes('arrived');
    }, 'the subscription made during the hang to work', 400);
    stopLate();
  });

  it('Redis killed: every operation rejects with StateUnavailable and ready() is false; restarted on the same port: the stores recover by themselves, pub/sub included', async () => {
    const received: string[] = [];
    const stop = a.subscribe('approvals', (m) => received.push(m));
    await until(async () => {
      await b.publish('approvals', 'before');
      return received.includes('before');
    }, 'pub/sub before the outage');

    await redis.kill();
    await until(async () => !(await a.ready()) && !(await b.ready()), 'both stores to notice the outage');
    for (const store of [a, b]) {
      for (const [name, operation] of everyOperation(store)) {
        const error = await failure(operation());
        expect(error, name).toBeInstanceOf(StateUnavailable);
        expect((error as Error).message, name).toMatch(/redis state store unavailable/);
      }
    }

    await redis.restart();
    await until(async () => (await a.ready()) && (await b.ready()), 'both stores to reconnect', 400);
    expect(await a.claim('token-jti', 'after-restart', 60_000)).toBe(true);
    expect(await b.claim('token-jti', 'after-restart', 60_000)).toBe(false);
    // The subscriber connection re-subscribed on its own.
    await until(async () => {
      await b.publish('approvals', 'after');
      return received.includes('after');
    }, 'pub/sub after the restart');
    stop();
  });
});
