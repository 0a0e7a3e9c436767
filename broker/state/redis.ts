/**
 * The Redis state store: several Bastion replicas share one Redis. Not in
 * this build yet; selecting `state.backend: redis` fails at start-up.
 */
import type { StateStore } from './store.ts';

export interface RedisStateOptions {
  url: string;
  prefix: string;
  commandTimeoutMs: number;
}

export async function openRedisState(_options: RedisStateOptions): Promise<StateStore> {
  throw new Error('state.backend "redis" is not available in this build');
}
