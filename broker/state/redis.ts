/**
 * The Redis state store: several Bastion replicas share one Redis, so a
 * single-use token used on one replica is refused on every other, a
 * revocation made anywhere holds everywhere, and an approval given on one
 * replica releases the call parked on another (pub/sub).
 *
 * Every operation is one Redis command or one Lua script, so it is atomic
 * across replicas. Time-dependent scripts (token buckets, slot leases) read
 * the Redis server's clock (`TIME`), never a replica's, so replicas agree.
 *
 * Fail closed: no offline queue, a per-command timeout and no retries, so
 * while Redis is unreachable every operation rejects at once (or within
 * `commandTimeoutMs`) with `StateUnavailable`, and callers deny. ioredis
 * reconnects by itself; the store serves again as soon as Redis is back,
 * without a restart. Commands cut off by a dropped connection are never
 * resent later (a rejected claim must not take effect behind the caller's back).
 *
 * Redis holds security state (revocations, spent single-use tokens, approvals,
 * descriptor pins), so it must not forget: the store refuses to open on a
 * Redis that may evict keys, and operators should enable persistence
 * (appendonly) — a Redis restarted empty forgets every revocation.
 *
 * Keys (P = the configured prefix, enc() below makes any string safe):
 *   P kv:<len>:<enc(ns)>:<enc(key)>   string values, TTL as PX    (claim/get/set/delete/compareAndSet/entries)
 *   P quota:<len>:<enc(ns)>           hash {keys, bytes}: usage of a namespace under a quota (setWithinQuota/deleteWithinQuota)
 *   P bucket:<enc(key)>               hash {tokens, at}           (takeTokens)
 *   P slots:<enc(key)>                sorted set slot → expiry ms (acquireSlot/releaseSlot)
 *   P ch:<channel>                    pub/sub channel              (publish/subscribe)
 * The namespace is length-prefixed, so `ns "a:b", key "c"` and `ns "a", key "b:c"` never meet.
 *
 * @example
 *   const state = await openRedisState({ url: 'redis://127.0.0.1:6379', prefix: 'bastion:', commandTimeoutMs: 2000 });
 */
import { createHash, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { checkTtl, decode, encode, entryBytes } from './encoding.ts';
import { StateUnavailable, type StateStore } from './store.ts';

export interface RedisStateOptions {
  url: string;
  prefix: string;
  commandTimeoutMs: number;
}

/**
 * Compare-and-set. KEYS[1]; ARGV: expectAbsent ('1'|'0'), expected, next, ttlMs ('' = no expiry).
 * A non-positive ttl means "already expired", as in the embedded store: the key ends up absent.
 */
const COMPARE_AND_SET = `
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
elseif tonumber(ARGV[4]) <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
`;

/**
 * Token bucket on the server's clock. KEYS[1]; ARGV: capacity, refillPerSecond, cost.
 * Returns {allowed (0|1), retryAfterMs (-1 = never)}. The hash expires once the
 * bucket would be full again (absent = full); a bucket that never refills keeps its count.
 */
const TAKE_TOKENS = `
if redis.replicate_commands then redis.replicate_commands() end
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(stored[1])
local at = tonumber(stored[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) / 1000 * rate)
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
elseif rate > 0 then
  retry = math.ceil((cost - tokens) / rate * 1000)
else
  retry = -1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', now)
if rate > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
else
  redis.call('PERSIST', KEYS[1])
end
return {allowed, retry}
`;

/**
 * Concurrency slots as leases on the server's clock. KEYS[1]; ARGV: limit, leaseMs, slot id.
 * Expired leases are purged first; returns 1 when the slot was taken, 0 when all are held.
 */
const ACQUIRE_SLOT = `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now + 1000))
return 1
`;

/**
 * A write within a namespace's quota. KEYS[1] value key, KEYS[2] usage hash;
 * ARGV: key bytes, value, maxKeys, maxBytes. Returns {-1} while the usage is
 * not counted yet (the caller counts it, then retries), else
 * {stored (0|1), exceeded ('' | 'keys' | 'bytes'), keys, bytes}.
 */
const SET_WITHIN_QUOTA = `
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys'))
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes'))
local keyBytes = tonumber(ARGV[1])
local newKeys = keys + 1
local newBytes = bytes + keyBytes + string.len(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  newKeys = keys
  newBytes = newBytes - keyBytes - redis.call('STRLEN', KEYS[1])
end
if newKeys > tonumber(ARGV[3]) then return {0, 'keys', keys, bytes} end
if newBytes > tonumber(ARGV[4]) then return {0, 'bytes', keys, bytes} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'keys', newKeys, 'bytes', newBytes)
return {1, '', newKeys, newBytes}
`;

/** A delete within a namespace's quota. KEYS and the {-1} answer as above; ARGV: key bytes. Returns {1} when the key existed, else {0}. */
const DELETE_WITHIN_QUOTA = `
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local freed = tonumber(ARGV[1]) + redis.call('STRLEN', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('HINCRBY', KEYS[2], 'keys', -1)
redis.call('HINCRBY', KEYS[2], 'bytes', -freed)
return {1}
`;

/**
 * Records a namespace's usage counted by a replica, unless another replica
 * already did. KEYS[1] usage hash; ARGV: keys, bytes. While no usage exists
 * no quota write can happen, so the count the caller made is still true.
 */
const COUNT_USAGE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'keys', ARGV[1], 'bytes', ARGV[2])
return 1
`;

interface Script {
  source: string;
  sha: string;
}
const script = (source: string): Script => ({ source, sha: createHash('sha1').update(source).digest('hex') });
const SCRIPTS = {
  compareAndSet: script(COMPARE_AND_SET),
  takeTokens: script(TAKE_TOKENS),
  acquireSlot: script(ACQUIRE_SLOT),
  setWithinQuota: script(SET_WITHIN_QUOTA),
  deleteWithinQuota: script(DELETE_WITHIN_QUOTA),
  countUsage: script(COUNT_USAGE),
};

/** Escapes glob characters for SCAN MATCH. */
const globEscape = (text: string) => text.replace(/[*?[\]\\]/g, '\\$&');

function checkCount(name: string, value: number): void {
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name} must be a finite, non-negative number, got ${value}`);
}

/** Resolves when `conn` is ready; rejects after `ms` (or when it gives up). */
function whenReady(conn: Redis, ms: number): Promise<void> {
  if (conn.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    let lastError = '';
    const onError = (error: Error) => void (lastError = error.message);
    const done = (error?: Error) => {
      clearTimeout(timer);
      conn.off('ready', onReady);
      conn.off('error', onError);
      conn.off('end', onEnd);
      if (error) reject(error);
      else resolve();
    };
    const onReady = () => done();
    const onEnd = () => done(new Error(`connection ended${lastError ? `: ${lastError}` : ''}`));
    const timer = setTimeout(() => done(new Error(`not connected after ${ms} ms${lastError ? `: ${lastError}` : ''}`)), ms);
    conn.on('ready', onReady);
    conn.on('error', onError);
    conn.on('end', onEnd);
  });
}

/**
 * Why this Redis must not hold Bastion's state, if it must not: with a memory
 * limit and any policy but `noeviction`, Redis may drop keys (revocations, the
 * replay cache) under memory pressure, and a dropped revocation is a token
 * that works again. With `noeviction` a full Redis refuses writes, and
 * Bastion denies. (A server that hides INFO is not checked.)
 */
async function evictionRefusal(client: Redis): Promise<string | undefined> {
  const info = await client.info('memory');
  const field = (name: string) => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim();
  const maxmemory = Number(field('maxmemory') ?? '0');
  const policy = field('maxmemory_policy') ?? 'noeviction';
  if (maxmemory > 0 && policy !== 'noeviction') {
    return `redis maxmemory-policy is ${policy} with maxmemory ${maxmemory}: it may evict revocations and spent single-use tokens; set maxmemory-policy noeviction (or maxmemory 0) for Bastion's Redis`;
  }
  return undefined;
}

export async function openRedisState(options: RedisStateOptions): Promise<StateStore> {
  const { prefix, commandTimeoutMs } = options;
  const connectionOptions = {
    // Fail closed and fast: nothing waits for a connection that is not there.
    enableOfflineQueue: false,
    commandTimeout: commandTimeoutMs,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: Math.max(1000, commandTimeoutMs),
    // Reconnect forever, quickly at first, at most every 2 s.
    retryStrategy: (attempt: number) => Math.min(50 * 2 ** Math.min(attempt, 6), 2000),
    keepAlive: 10_000,
    lazyConnect: true,
  };
  const client = new Redis(options.url, { ...connectionOptions, connectionName: 'bastion' });
  // Our own subscription list, replayed on every (re)connect: ioredis' resubscription
  // only remembers channels whose SUBSCRIBE succeeded.
  const subscriber = new Redis(options.url, { ...connectionOptions, connectionName: 'bastion-sub', autoResubscribe: false });
  let lastError = '';
  const remember = (error: Error) => void (lastError = error.message);
  client.on('error', remember);
  subscriber.on('error', remember);

  let closed = false;
  const handlers = new Map<string, Set<(message: string) => void>>();
  const channelKey = (channel: string) => `${prefix}ch:${channel}`;
  /** A SUBSCRIBE that failed on a live connection: reconnect, and 'ready' subscribes everything again. */
  const resubscribeLater = (error: Error) => {
    remember(error);
    if (!closed && subscriber.status === 'ready') subscriber.disconnect(true);
  };
  const subscribeAll = () => {
    const channels = [...handlers.keys()].map(channelKey);
    if (channels.length) subscriber.subscribe(...channels).catch(resubscribeLater);
  };
  subscriber.on('ready', subscribeAll);
  subscriber.on('message', (channel: string, message: string) => {
    if (!channel.startsWith(`${prefix}ch:`)) return;
    for (const handler of handlers.get(channel.slice(prefix.length + 3)) ?? []) {
      try {
        handler(message);
      } catch {
        // A failing handler must not stop delivery to the others.
      }
    }
  });

  const waitMs = Math.max(2000, commandTimeoutMs);
  try {
    // connect() rejects on the first failed attempt; whenReady waits through the retries, bounded.
    client.connect().catch(remember);
    subscriber.connect().catch(remember);
    await Promise.all([whenReady(client, waitMs), whenReady(subscriber, waitMs)]);
  } catch (error) {
    client.disconnect();
    subscriber.disconnect();
    throw new StateUnavailable(`redis state store unreachable: ${(error as Error).message || lastError}`);
  }

  // Eviction would silently forget revocations and spent single-use tokens: refuse to run on it.
  const refusal = await evictionRefusal(client).catch(() => undefined);
  if (refusal) {
    client.disconnect();
    subscriber.disconnect();
    throw new StateUnavailable(refusal);
  }

  /** Runs Redis work; any failure (down, timeout, reply error) is StateUnavailable, so callers deny. */
  async function guard<T>(operation: () => Promise<T>): Promise<T> {
    if (closed) throw new StateUnavailable('redis state store is closed');
    try {
      return await operation();
    } catch (error) {
      if (error instanceof StateUnavailable) throw error;
      throw new StateUnavailable(`redis state store unavailable: ${(error as Error).message}`);
    }
  }

  /** EVALSHA, falling back to EVAL when the server does not know the script (e.g. after a restart). */
  async function run(s: Script, keys: string[], args: (string | number)[]): Promise<unknown> {
    try {
      return await client.evalsha(s.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error as Error).message?.startsWith('NOSCRIPT')) throw error;
      return client.eval(s.source, keys.length, ...keys, ...args);
    }
  }

  const nsPrefix = (ns: string) => {
    const encoded = encode(ns);
    return `${prefix}kv:${encoded.length}:${encoded}:`;
  };
  const kvKey = (ns: string, key: string) => `${nsPrefix(ns)}${encode(key)}`;
  const usageKey = (ns: string) => {
    const encoded = encode(ns);
    return `${prefix}quota:${encoded.length}:${encoded}`;
  };

  /** Every live entry of a namespace: SCAN its keys, then MGET them in chunks. */
  async function scanEntries(ns: string): Promise<[string, string][]> {
    const start = nsPrefix(ns);
    const keys = new Set<string>();
    let cursor = '0';
    do {
      const [nextCursor, batch] = await client.scan(cursor, 'MATCH', `${globEscape(start)}*`, 'COUNT', 500);
      cursor = nextCursor;
      for (const key of batch) keys.add(key);
    } while (cursor !== '0');
    const list = [...keys];
    const result: [string, string][] = [];
    for (let i = 0; i < list.length; i += 500) {
      const chunk = list.slice(i, i + 500);
      const values = await client.mget(...chunk);
      // A key that expired between SCAN and MGET is not live: skipped.
      chunk.forEach((key, j) => {
        const value = values[j];
        if (value !== null && value !== undefined) result.push([decode(key.slice(start.length)), value]);
      });
    }
    return result;
  }

  /**
   * Runs a quota script; the first write to a namespace under a quota (or the
   * first since entries were stored there without one) counts its usage first.
   */
  async function withinQuota(s: Script, ns: string, key: string, args: (string | number)[] = []): Promise<unknown[]> {
    const keys = [kvKey(ns, key), usageKey(ns)];
    const argv = [Buffer.byteLength(key), ...args];
    let reply = (await run(s, keys, argv)) as unknown[];
    if (reply[0] !== -1) return reply;
    const counted = { keys: 0, bytes: 0 };
    for (const [k, v] of await scanEntries(ns)) {
      counted.keys += 1;
      counted.bytes += entryBytes(k, v);
    }
    await run(SCRIPTS.countUsage, [usageKey(ns)], [counted.keys, counted.bytes]);
    reply = (await run(s, keys, argv)) as unknown[];
    if (reply[0] === -1) throw new StateUnavailable(`the usage of namespace ${ns} could not be counted`);
    return reply;
  }

  return {
    async claim(ns, key, ttlMs) {
      const ttl = checkTtl(ttlMs)!;
      return guard(async () => {
        // A claim that expires at once stores nothing alive (as embedded): it succeeds unless the key is held.
        if (ttl <= 0) return (await client.exists(kvKey(ns, key))) === 0;
        return (await client.set(kvKey(ns, key), '1', 'PX', ttl, 'NX')) === 'OK';
      });
    },
    async get(ns, key) {
      return guard(async () => (await client.get(kvKey(ns, key))) ?? undefined);
    },
    async set(ns, key, value, ttlMs) {
      const ttl = checkTtl(ttlMs);
      await guard(async () => {
        if (ttl === undefined) await client.set(kvKey(ns, key), value);
        else if (ttl <= 0) await client.del(kvKey(ns, key));
        else await client.set(kvKey(ns, key), value, 'PX', ttl);
      });
    },
    async delete(ns, key) {
      return guard(async () => (await client.del(kvKey(ns, key))) > 0);
    },
    async compareAndSet(ns, key, expected, next, ttlMs) {
      const ttl = checkTtl(ttlMs);
      return guard(
        async () =>
          (await run(SCRIPTS.compareAndSet, [kvKey(ns, key)], [expected === undefined ? '1' : '0', expected ?? '', next, ttl === undefined ? '' : ttl])) === 1,
      );
    },
    async entries(ns) {
      return guard(() => scanEntries(ns));
    },
    async setWithinQuota(ns, key, value, quota) {
      checkCount('maxKeys', quota.maxKeys);
      checkCount('maxBytes', quota.maxBytes);
      return guard(async () => {
        const [stored, exceeded, keys, bytes] = (await withinQuota(SCRIPTS.setWithinQuota, ns, key, [value, quota.maxKeys, quota.maxBytes])) as [number, string, number, number];
        return stored === 1 ? { stored: true, keys, bytes } : { stored: false, exceeded: exceeded === 'keys' ? 'keys' : 'bytes', keys, bytes };
      });
    },
    async deleteWithinQuota(ns, key) {
      return guard(async () => (await withinQuota(SCRIPTS.deleteWithinQuota, ns, key))[0] === 1);
    },
    async takeTokens(key, bucket, cost = 1) {
      checkCount('capacity', bucket.capacity);
      checkCount('refillPerSecond', bucket.refillPerSecond);
      checkCount('cost', cost);
      return guard(async () => {
        const [allowed, retry] = (await run(SCRIPTS.takeTokens, [`${prefix}bucket:${encode(key)}`], [bucket.capacity, bucket.refillPerSecond, cost])) as [number, number];
        return { allowed: allowed === 1, retryAfterMs: retry < 0 ? Number.POSITIVE_INFINITY : retry };
      });
    },
    async acquireSlot(key, limit, leaseMs) {
      checkCount('limit', limit);
      const lease = checkTtl(leaseMs)!;
      const slot = randomUUID();
      return guard(async () => ((await run(SCRIPTS.acquireSlot, [`${prefix}slots:${encode(key)}`], [limit, lease, slot])) === 1 ? slot : undefined));
    },
    async releaseSlot(key, slot) {
      await guard(() => client.zrem(`${prefix}slots:${encode(key)}`, slot));
    },
    async publish(channel, message) {
      await guard(() => client.publish(channelKey(channel), message));
    },
    subscribe(channel, handler) {
      let set = handlers.get(channel);
      if (!set) {
        handlers.set(channel, (set = new Set()));
        // Offline now: the 'ready' handler subscribes on reconnect.
        if (!closed && subscriber.status === 'ready') subscriber.subscribe(channelKey(channel)).catch(resubscribeLater);
      }
      const own = (message: string) => handler(message);
      set.add(own);
      return () => {
        const current = handlers.get(channel);
        if (!current?.delete(own) || current.size > 0) return;
        handlers.delete(channel);
        if (!closed && subscriber.status === 'ready') subscriber.unsubscribe(channelKey(channel)).catch(remember);
      };
    },
    async ready() {
      if (closed || client.status !== 'ready' || subscriber.status !== 'ready') return false;
      try {
        return (await client.ping()) === 'PONG';
      } catch {
        return false;
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      handlers.clear();
      await Promise.all(
        [client, subscriber].map(async (conn) => {
          if (conn.status === 'ready') {
            await conn.quit().catch(() => conn.disconnect());
          } else {
            conn.disconnect();
          }
        }),
      );
    },
  };
}
