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
  /** True when the store can serve requests right now. */
  ready(): Promise<boolean>;
  close(): Promise<void>;
}

export class StateUnavailable extends Error {
  override readonly name = 'StateUnavailable';
}
