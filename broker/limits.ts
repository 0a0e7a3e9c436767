/**
 * Stage 4, limit: quotas against floods and runaway agents. Token buckets
 * per principal and per principal-and-tool, concurrency caps, and caps on
 * argument size and nesting. Buckets and slots live behind the state
 * interface, so with Redis a limit holds across every replica.
 *
 * A limited call is refused before it reaches the tool, with a retry-after
 * the agent can act on.
 *
 * @example
 *   const release = await limits.enter(principal, 'demo__read_file', args); // throws Denial
 *   try { ...run... } finally { await release(); }
 */
import { z } from 'zod';
import { Denial } from './errors.ts';
import type { StateStore } from './state/store.ts';
import type { Principal } from './auth/verify.ts';

const Quota = z.strictObject({
  /** Sustained rate; the bucket refills at this pace. 0 disables the rate limit. */
  requests_per_minute: z.number().min(0),
  /** Bucket size: how many calls may come at once after a quiet spell. */
  burst: z.number().int().min(1),
  /** Calls of one principal running at the same time. 0 disables the cap. */
  concurrency: z.number().int().min(0).default(0),
});

export const LimitsConfigSchema = z.strictObject({
  /** Applies to each principal across all tools. */
  principal: Quota.default({ requests_per_minute: 600, burst: 60, concurrency: 16 }),
  /** Per principal and tool, for tools matching `tool` (a glob like capability patterns). */
  tools: z.array(Quota.extend({ tool: z.string().min(1).max(256) })).max(64).default([]),
  /** Largest arguments object, as canonical JSON bytes. */
  max_argument_bytes: z.number().int().positive().default(262_144),
  /** Deepest nesting in a request body or arguments. */
  max_json_depth: z.number().int().min(2).max(1000).default(64),
  /** Open MCP sessions one principal may hold. */
  sessions_per_principal: z.number().int().min(1).default(64),
});
export type LimitsConfig = z.infer<typeof LimitsConfigSchema>;

/** Nesting depth of a JSON value, without recursion (a hostile value may be very deep). */
export function jsonDepth(value: unknown, stopAt = Number.POSITIVE_INFINITY): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (node === null || typeof node !== 'object') continue;
    deepest = Math.max(deepest, depth);
    if (deepest > stopAt) return deepest;
    for (const child of Object.values(node)) stack.push([child, depth + 1]);
  }
  return deepest;
}

/** A capability's tool glob (`*` matches any run of characters) as an anchored RegExp. */
export function globRegex(glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

const limited = (reason: string, retryAfterMs: number) => new Denial('limit', 'BASTION_RATE_LIMITED', reason, retryAfterMs);

export class Limits {
  readonly config: LimitsConfig;
  private readonly state: StateStore;
  private readonly tools: { pattern: RegExp; quota: LimitsConfig['tools'][number] }[];

  constructor(config: LimitsConfig, state: StateStore) {
    this.config = config;
    this.state = state;
    this.tools = config.tools.map((quota) => ({ pattern: globRegex(quota.tool), quota }));
  }

  /** Size and depth caps on arguments; throws the limit-stage Denial. */
  checkArguments(size: number, args: unknown): void {
    if (size > this.config.max_argument_bytes) {
      throw new Denial('limit', 'BASTION_ARGUMENTS_TOO_LARGE', `arguments are ${size} bytes; the cap is ${this.config.max_argument_bytes}`);
    }
    if (jsonDepth(args, this.config.max_json_depth) > this.config.max_json_depth) {
      throw new Denial('limit', 'BASTION_ARGUMENTS_TOO_LARGE', `arguments are nested deeper than ${this.config.max_json_depth} levels`);
    }
  }

  /**
   * Takes this call's share of every applicable quota. Returns a release
   * function for the concurrency slots; throws a Denial with retry-after.
   */
  async enter(principal: Principal, tool: string): Promise<() => Promise<void>> {
    const who = `${principal.iss}|${principal.sub}`;
    const quotas = [
      { key: `p:${who}`, quota: this.config.principal, what: 'this principal' },
      ...this.tools.filter((t) => t.pattern.test(tool)).map((t) => ({ key: `t:${who}|${t.quota.tool}`, quota: t.quota, what: `tools matching ${t.quota.tool}` })),
    ];
    for (const { key, quota, what } of quotas) {
      if (quota.requests_per_minute === 0) continue;
      const taken = await this.state.takeTokens(`rate:${key}`, { capacity: quota.burst, refillPerSecond: quota.requests_per_minute / 60 });
      if (!taken.allowed) {
        const seconds = Math.max(1, Math.ceil(taken.retryAfterMs / 1000));
        throw limited(`rate limit for ${what} (${quota.requests_per_minute}/min, burst ${quota.burst}); retry after ${seconds}s`, taken.retryAfterMs);
      }
    }
    const held: { key: string; slot: string }[] = [];
    const release = async () => {
      await Promise.all(held.map(({ key, slot }) => this.state.releaseSlot(key, slot).catch(() => undefined)));
    };
    for (const { key, quota, what } of quotas) {
      if (quota.concurrency === 0) continue;
      const slot = await this.state.acquireSlot(`slots:${key}`, quota.concurrency, 10 * 60_000);
      if (!slot) {
        await release();
        throw limited(`concurrency cap for ${what} (${quota.concurrency} at a time); retry when a call finishes`, 1000);
      }
      held.push({ key: `slots:${key}`, slot });
    }
    return release;
  }
}
