/**
 * The behavioural contract of the StateStore interface, run against every
 * implementation (embedded, Redis): what the rest of Bastion relies on.
 * Expiry is observed, never timed: a test waits (bounded) until a short-lived
 * entry is gone, and uses a second short-lived "sentinel" entry to know that
 * a longer one would have expired by now.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StateStore } from '../../broker/state/store.ts';
import { until } from '../helpers/redis.ts';

export interface ContractTarget {
  /** Opens a store over fresh, empty state. */
  open(): Promise<StateStore>;
  /** Called after the suite. */
  cleanup?(): Promise<void>;
}

export function stateContract(name: string, target: () => ContractTarget): void {
  describe(`${name}: StateStore contract`, () => {
    let state: StateStore;
    let t: ContractTarget;
    let n = 0;
    /** A namespace or key no other test uses. */
    const fresh = (what: string) => `${what}-${++n}-${Math.random().toString(36).slice(2, 8)}`;

    beforeAll(async () => {
      t = target();
      state = await t.open();
    });
    afterAll(async () => {
      await state?.close();
      await t?.cleanup?.();
    });

    it('is ready while open', async () => {
      expect(await state.ready()).toBe(true);
    });

    it('claim succeeds exactly once among concurrent callers', async () => {
      const key = fresh('jti');
      const results = await Promise.all(Array.from({ length: 100 }, () => state.claim('jti', key, 60_000)));
      expect(results.filter(Boolean)).toHaveLength(1);
      expect(await state.claim('jti', key, 60_000)).toBe(false);
      expect(await state.get('jti', key)).toBeDefined();
    });

    it('get, set, overwrite and delete; delete reports whether the key existed', async () => {
      const ns = fresh('ns');
      expect(await state.get(ns, 'k')).toBeUndefined();
      await state.set(ns, 'k', 'v1');
      expect(await state.get(ns, 'k')).toBe('v1');
      await state.set(ns, 'k', 'v2');
      expect(await state.get(ns, 'k')).toBe('v2');
      await state.set(ns, 'empty', '');
      expect(await state.get(ns, 'empty')).toBe('');
      expect(await state.delete(ns, 'k')).toBe(true);
      expect(await state.delete(ns, 'k')).toBe(false);
      expect(await state.delete(ns, 'never')).toBe(false);
      expect(await state.get(ns, 'k')).toBeUndefined();
    });

    it('entries expire with their ttl (milliseconds): claim, set, compareAndSet; expired entries are absent everywhere', async () => {
      const ns = fresh('ttl');
      // Long enough that the immediate checks happen before expiry on any machine.
      const ttl = 1500;
      expect(await state.claim(ns, 'claimed', ttl)).toBe(true);
      expect(await state.claim(ns, 'claimed', ttl)).toBe(false);
      await state.set(ns, 'set', 'v', ttl);
      expect(await state.compareAndSet(ns, 'cas', undefined, 'c', ttl)).toBe(true);
      await state.set(ns, 'forever', 'f');
      expect(await state.get(ns, 'set')).toBe('v');
      expect((await state.entries(ns)).map(([k]) => k).sort()).toEqual(['cas', 'claimed', 'forever', 'set']);

      await until(async () => (await state.get(ns, 'set')) === undefined && (await state.get(ns, 'cas')) === undefined, 'ttl expiry', 400);
      expect(await state.claim(ns, 'claimed', 60_000)).toBe(true);
      expect(await state.delete(ns, 'cas')).toBe(false);
      expect(await state.compareAndSet(ns, 'set', 'v', 'again')).toBe(false);
      expect(await state.entries(ns)).toEqual(expect.arrayContaining([['forever', 'f']]));
      expect((await state.entries(ns)).map(([k]) => k).sort()).toEqual(['claimed', 'forever']);
    });

    it('a set without ttl makes a previously expiring value permanent; a set with ttl makes a permanent one expire', async () => {
      const ns = fresh('persist');
      await state.set(ns, 'k', 'short', 300);
      await state.set(ns, 'k', 'kept');
      await state.set(ns, 'other', 'permanent');
      await state.set(ns, 'other', 'now-expiring', 300);
      await state.set(ns, 'sentinel', 's', 300);
      await until(async () => (await state.get(ns, 'sentinel')) === undefined, 'the sentinel to expire');
      await until(async () => (await state.get(ns, 'other')) === undefined, 'the re-set entry to expire');
      expect(await state.get(ns, 'k')).toBe('kept');
    });

    it('compareAndSet: replaces only an equal value; undefined means absent; exactly one of many racers wins', async () => {
      const ns = fresh('cas');
      expect(await state.compareAndSet(ns, 'k', 'x', 'y')).toBe(false);
      expect(await state.get(ns, 'k')).toBeUndefined();
      expect(await state.compareAndSet(ns, 'k', undefined, 'a')).toBe(true);
      expect(await state.compareAndSet(ns, 'k', undefined, 'b')).toBe(false);
      expect(await state.compareAndSet(ns, 'k', 'b', 'c')).toBe(false);
      expect(await state.compareAndSet(ns, 'k', 'a', 'b')).toBe(true);
      expect(await state.get(ns, 'k')).toBe('b');
      // The empty string is a value, not absence.
      await state.set(ns, 'e', '');
      expect(await state.compareAndSet(ns, 'e', undefined, 'x')).toBe(false);
      expect(await state.compareAndSet(ns, 'e', '', 'x')).toBe(true);

      const racers = await Promise.all(Array.from({ length: 50 }, (_, i) => state.compareAndSet(ns, 'k', 'b', `winner-${i}`)));
      expect(racers.filter(Boolean)).toHaveLength(1);
      expect(await state.get(ns, 'k')).toBe(`winner-${racers.indexOf(true)}`);
    });

    it('entries lists exactly one namespace, even when names look alike or contain separators and glob characters', async () => {
      const base = fresh('ent');
      expect(await state.entries(base)).toEqual([]);
      await state.set(`${base}:a`, 'b:c', '1');
      await state.set(base, 'a:b:c', '2');
      await state.set(`${base}*`, 'star', '3');
      await state.set(`${base}?[x]\\`, 'glob', '4');
      await state.set(`${base}x`, 'longer', '5');
      const odd = ['with space', 'ünïcödé', '\u{1F512}', 'lone\uD800surrogate', 'other\uDFFFsurrogate', '\0nul', '*', ''];
      for (const [i, key] of odd.entries()) await state.set(base, key, `odd-${i}`);

      expect(await state.entries(`${base}:a`)).toEqual([['b:c', '1']]);
      expect(await state.entries(`${base}*`)).toEqual([['star', '3']]);
      expect(await state.entries(`${base}?[x]\\`)).toEqual([['glob', '4']]);
      expect(await state.get(`${base}:a`, 'b:c')).toBe('1');
      expect(await state.get(base, 'a:b:c')).toBe('2');
      const mine = new Map(await state.entries(base));
      expect(mine.size).toBe(1 + odd.length);
      expect(mine.get('a:b:c')).toBe('2');
      for (const [i, key] of odd.entries()) {
        expect(mine.get(key)).toBe(`odd-${i}`);
        expect(await state.get(base, key)).toBe(`odd-${i}`);
      }
    });

    it('setWithinQuota: refuses a write past maxKeys or maxBytes and changes nothing; replacing counts the difference; deleting frees', async () => {
      const ns = fresh('quota');
      const quota = { maxKeys: 2, maxBytes: 10 };
      // Bytes are UTF-8 of key and value: "a" + "ü" is 3.
      expect(await state.setWithinQuota(ns, 'a', 'ü', quota)).toEqual({ stored: true, keys: 1, bytes: 3 });
      expect(await state.setWithinQuota(ns, 'b', '1234', quota)).toEqual({ stored: true, keys: 2, bytes: 8 });
      expect(await state.setWithinQuota(ns, 'c', '', quota)).toEqual({ stored: false, exceeded: 'keys', keys: 2, bytes: 8 });
      expect(await state.get(ns, 'c')).toBeUndefined();
      // Replacing b (5 bytes) with 7 bytes: 10, within the quota; with 8 bytes: refused, b unchanged.
      expect(await state.setWithinQuota(ns, 'b', '1234567', { maxKeys: 2, maxBytes: 11 })).toEqual({ stored: true, keys: 2, bytes: 11 });
      expect(await state.setWithinQuota(ns, 'b', '12345678', { maxKeys: 2, maxBytes: 11 })).toEqual({ stored: false, exceeded: 'bytes', keys: 2, bytes: 11 });
      expect(await state.get(ns, 'b')).toBe('1234567');
      expect(await state.deleteWithinQuota(ns, 'b')).toBe(true);
      expect(await state.deleteWithinQuota(ns, 'b')).toBe(false);
      expect(await state.setWithinQuota(ns, 'c', 'x', quota)).toEqual({ stored: true, keys: 2, bytes: 5 });
      expect((await state.entries(ns)).sort()).toEqual([
        ['a', 'ü'],
        ['c', 'x'],
      ]);
      // Namespaces are counted apart.
      expect(await state.setWithinQuota(fresh('quota'), 'a', 'ü', quota)).toEqual({ stored: true, keys: 1, bytes: 3 });
    });

    it('setWithinQuota: concurrent writers never take a namespace past its quota', async () => {
      const ns = fresh('quota-race');
      const results = await Promise.all(Array.from({ length: 40 }, (_, i) => state.setWithinQuota(ns, `k${i}`, 'v', { maxKeys: 10, maxBytes: 1000 })));
      expect(results.filter((r) => r.stored)).toHaveLength(10);
      expect(await state.entries(ns)).toHaveLength(10);
      const bytes = fresh('quota-race');
      // Each entry is 10 bytes ("kN" + 8): 50 bytes hold 5 of them.
      const sized = await Promise.all(Array.from({ length: 9 }, (_, i) => state.setWithinQuota(bytes, `k${i}`, '12345678', { maxKeys: 100, maxBytes: 50 })));
      expect(sized.filter((r) => r.stored)).toHaveLength(5);
    });

    it('setWithinQuota counts what a namespace already held before its first quota write', async () => {
      const ns = fresh('quota-existing');
      await state.set(ns, 'old1', 'v');
      await state.set(ns, 'old2', 'v');
      expect(await state.setWithinQuota(ns, 'new', 'v', { maxKeys: 3, maxBytes: 1000 })).toEqual({ stored: true, keys: 3, bytes: 14 });
      expect(await state.setWithinQuota(ns, 'newer', 'v', { maxKeys: 3, maxBytes: 1000 })).toMatchObject({ stored: false, exceeded: 'keys' });
      expect(await state.deleteWithinQuota(ns, 'old1')).toBe(true);
      expect(await state.setWithinQuota(ns, 'newer', 'v', { maxKeys: 3, maxBytes: 1000 })).toEqual({ stored: true, keys: 3, bytes: 15 });
    });

    it('takeTokens: a bucket allows its capacity, then refuses; without refill never again', async () => {
      const key = fresh('bucket');
      const bucket = { capacity: 3, refillPerSecond: 0 };
      const taken = await Promise.all(Array.from({ length: 6 }, () => state.takeTokens(key, bucket)));
      expect(taken.filter((t) => t.allowed)).toHaveLength(3);
      for (const refused of taken.filter((t) => !t.allowed)) expect(refused.retryAfterMs).toBe(Number.POSITIVE_INFINITY);
      for (const allowed of taken.filter((t) => t.allowed)) expect(allowed.retryAfterMs).toBe(0);
      // Another key has its own bucket.
      expect((await state.takeTokens(fresh('bucket'), bucket)).allowed).toBe(true);
      // Cost counts.
      const costly = fresh('bucket');
      expect((await state.takeTokens(costly, { capacity: 5, refillPerSecond: 0 }, 4)).allowed).toBe(true);
      expect((await state.takeTokens(costly, { capacity: 5, refillPerSecond: 0 }, 2)).allowed).toBe(false);
      expect((await state.takeTokens(costly, { capacity: 5, refillPerSecond: 0 }, 1)).allowed).toBe(true);
    });

    it('takeTokens: a refilling bucket says how long to wait, and allows again after refilling', async () => {
      const key = fresh('refill');
      const bucket = { capacity: 1, refillPerSecond: 20 };
      expect((await state.takeTokens(key, bucket)).allowed).toBe(true);
      const refused = await state.takeTokens(key, bucket);
      if (!refused.allowed) {
        // One token at 20/s takes at most 50 ms to come back.
        expect(refused.retryAfterMs).toBeGreaterThan(0);
        expect(refused.retryAfterMs).toBeLessThanOrEqual(50);
      }
      await until(async () => (await state.takeTokens(key, bucket)).allowed, 'the bucket to refill');
    });

    it('acquireSlot: at most `limit` leases, released slots and expired leases free a place', async () => {
      const key = fresh('slots');
      const slots = await Promise.all(Array.from({ length: 5 }, () => state.acquireSlot(key, 2, 60_000)));
      const held = slots.filter((s): s is string => s !== undefined);
      expect(held).toHaveLength(2);
      expect(new Set(held).size).toBe(2);
      expect(await state.acquireSlot(key, 2, 60_000)).toBeUndefined();
      await state.releaseSlot(key, held[0]!);
      const again = await state.acquireSlot(key, 2, 60_000);
      expect(again).toBeTypeOf('string');
      expect(await state.acquireSlot(key, 2, 60_000)).toBeUndefined();
      // Releasing an unknown slot is harmless.
      await state.releaseSlot(key, 'not-a-slot');
      expect(await state.acquireSlot(key, 2, 60_000)).toBeUndefined();
      // Other keys are independent.
      expect(await state.acquireSlot(fresh('slots'), 1, 60_000)).toBeTypeOf('string');

      // A holder that dies never releases: its lease runs out.
      const leased = fresh('lease');
      expect(await state.acquireSlot(leased, 1, 300)).toBeTypeOf('string');
      expect(await state.acquireSlot(leased, 1, 300)).toBeUndefined();
      await until(async () => (await state.acquireSlot(leased, 1, 60_000)) !== undefined, 'the lease to expire');
      expect(await state.acquireSlot(leased, 1, 60_000)).toBeUndefined();
    });

    it('publish reaches every subscriber of the channel and only them; unsubscribing stops delivery', async () => {
      const channel = fresh('channel');
      const first: string[] = [];
      const second: string[] = [];
      const elsewhere: string[] = [];
      const stopFirst = state.subscribe(channel, (m) => first.push(m));
      const stopSecond = state.subscribe(channel, (m) => second.push(m));
      const stopElsewhere = state.subscribe(fresh('channel'), (m) => elsewhere.push(m));
      // Redis subscribes asynchronously: publish until the first message lands.
      await until(async () => {
        await state.publish(channel, 'hello');
        return first.includes('hello') && second.includes('hello');
      }, 'delivery to both subscribers');
      stopFirst();
      const seenByFirst = first.length;
      await state.publish(channel, 'after');
      await until(() => second.includes('after'), 'delivery to the remaining subscriber');
      expect(first).toHaveLength(seenByFirst);
      expect(elsewhere).toEqual([]);
      stopSecond();
      stopElsewhere();
    });
  });
}
