/**
 * The `kv` host capability: a small key-value store per plugin. The host
 * picks the namespace (`plugin:<name>`), so a plugin can only ever reach its
 * own keys. Values are JSON, stored as strings, so the broker can back this
 * with its state store (`StateStore` fits `KeyValueStore` as is).
 *
 * @example
 *   const store = new MemoryKeyValueStore();
 *   await kvOperation(store, policy, 'text-utils', { op: 'set', key: 'k', value: 1 }, signal, uses);
 */
import { CapabilityDenied, CapabilityFailed, withDeadline, type CapabilityUse } from './uses.ts';

/** What the broker injects (its state store satisfies it). */
export interface KeyValueStore {
  get(namespace: string, key: string): Promise<string | undefined>;
  set(namespace: string, key: string, value: string): Promise<void>;
  delete(namespace: string, key: string): Promise<unknown>;
}

/** A process-local store for tests and single-process setups. */
export class MemoryKeyValueStore implements KeyValueStore {
  private readonly spaces = new Map<string, Map<string, string>>();

  async get(namespace: string, key: string): Promise<string | undefined> {
    return this.spaces.get(namespace)?.get(key);
  }

  async set(namespace: string, key: string, value: string): Promise<void> {
    let space = this.spaces.get(namespace);
    if (!space) this.spaces.set(namespace, (space = new Map()));
    space.set(key, value);
  }

  async delete(namespace: string, key: string): Promise<boolean> {
    return this.spaces.get(namespace)?.delete(key) ?? false;
  }
}

export interface KvGrant {
  /** Per operation (default 1000). */
  timeoutMs?: number;
  /** Default 256. */
  maxKeyBytes?: number;
  /** JSON bytes of one value (default 64 KiB). */
  maxValueBytes?: number;
}

export interface KvPolicy {
  store: KeyValueStore;
  timeoutMs: number;
  maxKeyBytes: number;
  maxValueBytes: number;
}

export function kvPolicy(store: KeyValueStore, grant: KvGrant): KvPolicy {
  return {
    store,
    timeoutMs: grant.timeoutMs ?? 1000,
    maxKeyBytes: grant.maxKeyBytes ?? 256,
    maxValueBytes: grant.maxValueBytes ?? 64 * 1024,
  };
}

export function kvNamespace(plugin: string): string {
  return `plugin:${plugin}`;
}

export interface KvRequest {
  op: 'get' | 'set' | 'delete';
  key: string;
  /** For set; undefined stores null. */
  value?: unknown;
}

/** Runs one kv operation in the plugin's namespace and records it. get returns the parsed value or null. */
export async function kvOperation(policy: KvPolicy, plugin: string, request: KvRequest, signal: AbortSignal, uses: CapabilityUse[]): Promise<unknown> {
  const use: Extract<CapabilityUse, { cap: 'kv' }> = { cap: 'kv', op: request.op, key: request.key.slice(0, 256), outcome: 'unfinished' };
  uses.push(use);
  try {
    const value = await perform(policy, plugin, request, signal);
    use.outcome = 'ok';
    return value;
  } catch (error) {
    use.outcome = error instanceof CapabilityDenied ? 'denied' : 'error';
    use.reason = (error as Error).message;
    throw error instanceof CapabilityDenied || error instanceof CapabilityFailed ? error : new CapabilityFailed(`kv: ${(error as Error).message}`);
  }
}

async function perform(policy: KvPolicy, plugin: string, request: KvRequest, signal: AbortSignal): Promise<unknown> {
  if (Buffer.byteLength(request.key) > policy.maxKeyBytes) throw new CapabilityDenied(`kv: key longer than ${policy.maxKeyBytes} bytes`);
  const namespace = kvNamespace(plugin);
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
      await withDeadline(policy.store.set(namespace, request.key, json), policy.timeoutMs, what, signal);
      return null;
    }
    case 'delete':
      await withDeadline(policy.store.delete(namespace, request.key), policy.timeoutMs, what, signal);
      return null;
  }
}
