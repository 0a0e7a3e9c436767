/**
 * The `kv` host capability: a small key-value store per plugin. The host
 * picks the namespace, `plugin:<name>` with the name the operator configured
 * for the plugin (never the one its manifest declares), so a plugin can only
 * ever reach its own keys. Values are JSON, stored as strings. Each plugin's
 * store is kept within a quota (keys, and bytes of keys and values), enforced
 * atomically by the backing store, so the broker can back this with its state
 * store (`StateStore` fits `KeyValueStore` as is).
 *
 * @example
 *   const policy = kvPolicy(new MemoryKeyValueStore(), 'text-utils', {});
 *   await kvOperation(policy, { op: 'set', key: 'k', value: 1 }, signal, uses);
 */
import type { Quota, QuotaOutcome } from '../../broker/state/store.ts';
import { CapabilityDenied, CapabilityFailed, withDeadline, type CapabilityUse } from './uses.ts';

/** What the broker injects (its state store satisfies it). */
export interface KeyValueStore {
  get(namespace: string, key: string): Promise<string | undefined>;
  setWithinQuota(namespace: string, key: string, value: string, quota: Quota): Promise<QuotaOutcome>;
  deleteWithinQuota(namespace: string, key: string): Promise<boolean>;
}

/** A process-local store for tests and single-process setups. */
export class MemoryKeyValueStore implements KeyValueStore {
  private readonly spaces = new Map<string, Map<string, string>>();

  async get(namespace: string, key: string): Promise<string | undefined> {
    return this.spaces.get(namespace)?.get(key);
  }

  async setWithinQuota(namespace: string, key: string, value: string, quota: Quota): Promise<QuotaOutcome> {
    let space = this.spaces.get(namespace);
    if (!space) this.spaces.set(namespace, (space = new Map()));
    const usage = { keys: space.size, bytes: [...space].reduce((sum, [k, v]) => sum + Buffer.byteLength(k) + Buffer.byteLength(v), 0) };
    const old = space.get(key);
    const keys = usage.keys + (old === undefined ? 1 : 0);
    const bytes = usage.bytes - (old === undefined ? 0 : Buffer.byteLength(key) + Buffer.byteLength(old)) + Buffer.byteLength(key) + Buffer.byteLength(value);
    if (keys > quota.maxKeys) return { stored: false, exceeded: 'keys', ...usage };
    if (bytes > quota.maxBytes) return { stored: false, exceeded: 'bytes', ...usage };
    space.set(key, value);
    return { stored: true, keys, bytes };
  }

  async deleteWithinQuota(namespace: string, key: string): Promise<boolean> {
    return this.spaces.get(namespace)?.delete(key) ?? false;
  }
}

/** The most a plugin's store holds unless the operator says otherwise. */
export const KV_DEFAULTS = { maxBytes: 1024 * 1024, maxKeys: 1000, maxKeyBytes: 256, maxValueBytes: 64 * 1024, timeoutMs: 1000 } as const;

export interface KvGrant {
  /** Per operation (default 1000). */
  timeoutMs?: number;
  /** UTF-8 bytes of one key (default 256). */
  maxKeyBytes?: number;
  /** JSON bytes of one value (default 64 KiB). */
  maxValueBytes?: number;
  /** UTF-8 bytes of all keys and values together (default 1 MiB). */
  maxBytes?: number;
  /** Keys held at once (default 1000). */
  maxKeys?: number;
}

export interface KvPolicy {
  store: KeyValueStore;
  /** `plugin:<the operator's name for the plugin>`. */
  namespace: string;
  timeoutMs: number;
  maxKeyBytes: number;
  maxValueBytes: number;
  quota: Quota;
}

export function kvPolicy(store: KeyValueStore, owner: string, grant: KvGrant): KvPolicy {
  return {
    store,
    namespace: `plugin:${owner}`,
    timeoutMs: grant.timeoutMs ?? KV_DEFAULTS.timeoutMs,
    maxKeyBytes: grant.maxKeyBytes ?? KV_DEFAULTS.maxKeyBytes,
    maxValueBytes: grant.maxValueBytes ?? KV_DEFAULTS.maxValueBytes,
    quota: { maxBytes: grant.maxBytes ?? KV_DEFAULTS.maxBytes, maxKeys: grant.maxKeys ?? KV_DEFAULTS.maxKeys },
  };
}

export interface KvRequest {
  op: 'get' | 'set' | 'delete';
  key: string;
  /** For set; undefined stores null. */
  value?: unknown;
}

/** Runs one kv operation in the plugin's namespace and records it. get returns the parsed value or null. */
export async function kvOperation(policy: KvPolicy, request: KvRequest, signal: AbortSignal, uses: CapabilityUse[]): Promise<unknown> {
  const use: Extract<CapabilityUse, { cap: 'kv' }> = { cap: 'kv', op: request.op, key: request.key.slice(0, 256), outcome: 'unfinished' };
  uses.push(use);
  try {
    const value = await perform(policy, request, signal);
    use.outcome = 'ok';
    return value;
  } catch (error) {
    use.outcome = error instanceof CapabilityDenied ? 'denied' : 'error';
    use.reason = (error as Error).message;
    throw error instanceof CapabilityDenied || error instanceof CapabilityFailed ? error : new CapabilityFailed(`kv: ${(error as Error).message}`);
  }
}

async function perform(policy: KvPolicy, request: KvRequest, signal: AbortSignal): Promise<unknown> {
  if (Buffer.byteLength(request.key) > policy.maxKeyBytes) throw new CapabilityDenied(`kv: key longer than ${policy.maxKeyBytes} bytes`);
  const { namespace } = policy;
  const what = `kv.${request.op}`;
  switch (request.op) {
    case 'get': {
      const stored = await withDeadline(policy.store.get(namespace, request.key), policy.timeoutMs, what, signal);
      if (stored === undefined) return null;
      try {
        return JSON.parse(stored);
      } catch {
        throw new CapabilityFailed('kv: stored value is not JSON');
      }
    }
    case 'set': {
      const json = JSON.stringify(request.value ?? null);
      if (Buffer.byteLength(json) > policy.maxValueBytes) throw new CapabilityDenied(`kv: value larger than ${policy.maxValueBytes} bytes`);
      const outcome = await withDeadline(policy.store.setWithinQuota(namespace, request.key, json, policy.quota), policy.timeoutMs, what, signal);
      if (!outcome.stored) throw new CapabilityDenied(quotaRefusal(policy.quota, request.key, outcome));
      return null;
    }
    case 'delete':
      await withDeadline(policy.store.deleteWithinQuota(namespace, request.key), policy.timeoutMs, what, signal);
      return null;
  }
}

function quotaRefusal(quota: Quota, key: string, outcome: Extract<QuotaOutcome, { stored: false }>): string {
  if (outcome.exceeded === 'keys') return `kv: quota exceeded: this plugin may keep at most ${quota.maxKeys} keys (it holds ${outcome.keys})`;
  return `kv: quota exceeded: storing ${JSON.stringify(key.slice(0, 64))} would take this plugin's store past ${quota.maxBytes} bytes (it holds ${outcome.bytes} bytes in ${outcome.keys} keys)`;
}
