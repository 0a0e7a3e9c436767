/**
 * The state interface: everything that must be shared between requests,
 * survive a restart, and (with Redis) be shared between replicas: the jti
 * replay cache, revocations, pending approvals, rate counters, descriptor
 * pins, plugin key-value stores (namespaces kept within a quota).
 *
 * Operations are few and atomic, so both implementations (embedded file,
 * Redis) can make the same guarantees. Any failure throws; callers deny.
 *
 * @example
 *   if (!(await state.claim('jti', `${iss} ${jti}`, ttlMs))) throw replayDenial();
 */
export interface StateStore {
  /** Stores `key` only if absent, atomically. false when it was already present (a replay). */
  claim(namespace: string, key: string, ttlMs: number): Promise<boolean>;
  get(namespace: string, key: string): Promise<string | undefined>;
  /** Stores a value; with `ttlMs` it expires. */
  set(namespace: string, key: string, value: string, ttlMs?: number): Promise<void>;
  /** Removes a key; true when it existed. */
  delete(namespace: string, key: string): Promise<boolean>;
  /** Replaces the value only if the current one equals `expected` (undefined: absent). */
  compareAndSet(namespace: string, key: string, expected: string | undefined, next: string, ttlMs?: number): Promise<boolean>;
  /** Every live entry of a namespace. */
  entries(namespace: string): Promise<[string, string][]>;
  /**
   * Stores a value (no expiry) in a namespace kept within `quota`, atomically:
   * refused, with nothing changed, when afterwards the namespace would hold more
   * than `maxKeys` keys or more than `maxBytes` bytes (UTF-8 of every key and
   * value). Replacing a key counts only the difference. A namespace under a
   * quota is changed only through setWithinQuota and deleteWithinQuota (the
   * store keeps its usage); get and entries read it as any other.
   */
  setWithinQuota(namespace: string, key: string, value: string, quota: Quota): Promise<QuotaOutcome>;
  /** Removes a key from a namespace under a quota, freeing its share; true when it existed. */
  deleteWithinQuota(namespace: string, key: string): Promise<boolean>;
  /**
   * Token bucket `key`: takes `cost` tokens when available, atomically.
   * Counters are shared (across replicas with Redis) but need no durability.
   */
  takeTokens(key: string, bucket: { capacity: number; refillPerSecond: number }, cost?: number): Promise<{ allowed: boolean; retryAfterMs: number }>;
  /** Takes one of `limit` concurrency slots for `key`; the lease frees it if its holder dies. Undefined when all are held. */
  acquireSlot(key: string, limit: number, leaseMs: number): Promise<string | undefined>;
  releaseSlot(key: string, slot: string): Promise<void>;
  /** Delivers `message` to every subscriber of `channel` (on every replica with Redis). */
  publish(channel: string, message: string): Promise<void>;
  subscribe(channel: string, handler: (message: string) => void): () => void;
  /** True when the store can serve requests right now. */
  ready(): Promise<boolean>;
  close(): Promise<void>;
}

export interface Quota {
  maxKeys: number;
  maxBytes: number;
}

/** The namespace's usage after a stored write, or before a refused one. */
export type QuotaOutcome =
  | { stored: true; keys: number; bytes: number }
  | { stored: false; exceeded: 'keys' | 'bytes'; keys: number; bytes: number };

export class StateUnavailable extends Error {
  override readonly name = 'StateUnavailable';
}
