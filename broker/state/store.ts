/**
 * The state interface: everything that must be shared between requests,
 * survive a restart, and (with Redis) be shared between replicas: the jti
 * replay cache, revocations, pending approvals, rate counters, descriptor
 * pins, plugin key-value stores.
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

export class StateUnavailable extends Error {
  override readonly name = 'StateUnavailable';
}
