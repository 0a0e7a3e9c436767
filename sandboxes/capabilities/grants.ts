/**
 * Which host capabilities a plugin gets, and the per-call dispatcher that
 * serves its requests.
 *
 * A capability is granted only when the manifest asks for it AND the
 * operator's grants allow it; for fetch, the allow-list is the intersection
 * of both. A capability the manifest asked for but the operator did not
 * grant is still callable from the plugin, and every call is refused and
 * recorded, so the failure is SANDBOX_CAPABILITY_DENIED rather than a
 * confusing "not a function".
 *
 * Requests arrive from the sandbox process as JSON text and are validated
 * here (the sandbox process is not trusted to have done it).
 *
 * @example
 *   const grants = resolveGrants(manifest, { fetch: { origins: ['https://api.example.com'] }, kv: true, log: true }, { store: state, owner: 'http-get' });
 *   const caps = new CallCapabilities(grants, 'http-get', log);
 *   const reply = await caps.handle('{"cap":"fetch","url":"https://api.example.com/"}', signal);
 */
import { z } from 'zod';
import type { Logger } from '../../broker/log.ts';
import type { CapabilityName, PluginManifest } from '../manifest.ts';
import { fetchPolicy, hostFetch, type FetchGrant, type FetchPolicy } from './fetch.ts';
import { kvOperation, kvPolicy, MemoryKeyValueStore, type KeyValueStore, type KvGrant, type KvPolicy } from './kv.ts';
import { LOG_LEVELS, pluginLog } from './log.ts';
import { CapabilityDenied, type CapabilityUse } from './uses.ts';

/** What the operator allows one plugin (config), before intersecting with its manifest. */
export interface HostGrants {
  fetch?: FetchGrant;
  kv?: boolean | KvGrant;
  log?: boolean;
  /** Capability uses one call may make, all kinds together (default 64). */
  maxCapabilityCalls?: number;
}

export interface EffectiveGrants {
  fetch?: FetchPolicy;
  kv?: KvPolicy;
  log: boolean;
  maxCapabilityCalls: number;
  /** Asked for by the manifest, not granted by the operator: every use is refused. */
  refused: CapabilityName[];
}

/** Where a granted kv lives: the store, and the operator's name for the plugin, which keys its namespace. */
export interface KvHome {
  store?: KeyValueStore | undefined;
  owner?: string | undefined;
}

/**
 * Throws when kv is granted to a plugin the operator has not named: its
 * namespace must come from the operator, never from the manifest, which
 * anyone can make say another plugin's name.
 */
export function resolveGrants(manifest: PluginManifest, grants: HostGrants, kv: KvHome = {}): EffectiveGrants {
  const asked = manifest.capabilities;
  const refused: CapabilityName[] = [];
  const effective: EffectiveGrants = { log: false, maxCapabilityCalls: grants.maxCapabilityCalls ?? 64, refused };
  if (asked.fetch) {
    if (grants.fetch) effective.fetch = fetchPolicy(asked.fetch, grants.fetch);
    else refused.push('fetch');
  }
  if (asked.kv) {
    if (grants.kv) {
      if (kv.owner === undefined) {
        throw new Error('kv is granted but the plugin has no configured name: its store is keyed by the name the operator gives it (plugins[].name), never by the name in its manifest');
      }
      effective.kv = kvPolicy(kv.store ?? new MemoryKeyValueStore(), kv.owner, grants.kv === true ? {} : grants.kv);
    } else {
      refused.push('kv');
    }
  }
  if (asked.log) {
    if (grants.log) effective.log = true;
    else refused.push('log');
  }
  return effective;
}

const Request = z.discriminatedUnion('cap', [
  z.strictObject({
    cap: z.literal('fetch'),
    url: z.string().max(8192),
    method: z.string().max(16).default('GET'),
    headers: z.record(z.string().max(256), z.string().max(8192)).default({}),
    body: z.string().optional(),
  }),
  z.strictObject({ cap: z.literal('kv'), op: z.enum(['get', 'set', 'delete']), key: z.string().max(4096), value: z.unknown().optional() }),
  z.strictObject({ cap: z.literal('log'), level: z.enum(LOG_LEVELS), msg: z.string().max(64 * 1024) }),
]);
type Request = z.infer<typeof Request>;

/** What goes back into the isolate: a JSON value, or an error message. */
export type CapabilityReply = { ok: true; value: unknown } | { ok: false; denied: boolean; message: string };

/**
 * Serves one call's capability requests and records every use. Every
 * request counts against `maxCapabilityCalls`, refused and malformed ones
 * too; the one over the cap is recorded, refused and marks the call
 * `exhausted` (its caller ends the call), and nothing after it is recorded,
 * so a call's record stays bounded whatever the plugin does.
 */
export class CallCapabilities {
  readonly uses: CapabilityUse[] = [];
  private readonly grants: EffectiveGrants;
  private readonly plugin: string;
  private readonly log: Logger;
  private count = 0;
  private exhaustedReason: string | undefined;

  constructor(grants: EffectiveGrants, plugin: string, log: Logger) {
    this.grants = grants;
    this.plugin = plugin;
    this.log = log;
  }

  /** The first refusal of this call, if any: a failed call that saw one is SANDBOX_CAPABILITY_DENIED. */
  get firstDenial(): string | undefined {
    return this.uses.find((use) => use.outcome === 'denied')?.reason;
  }

  /** Why the call must end: it asked for more capability uses than it may make. Set synchronously by handle(). */
  get exhausted(): string | undefined {
    return this.exhaustedReason;
  }

  handle(payload: string, signal: AbortSignal): Promise<CapabilityReply> {
    if (this.exhaustedReason !== undefined) return Promise.resolve({ ok: false, denied: true, message: this.exhaustedReason });
    const overCap = ++this.count > this.grants.maxCapabilityCalls;
    let request: Request;
    try {
      request = Request.parse(JSON.parse(payload));
    } catch (error) {
      const reason = `malformed capability request: ${error instanceof z.ZodError ? error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') : (error as Error).message}`;
      if (overCap) return Promise.resolve(this.exhaust({ cap: 'invalid', outcome: 'error', reason: reason.slice(0, 500) }));
      this.uses.push({ cap: 'invalid', outcome: 'error', reason: reason.slice(0, 500) });
      return Promise.resolve({ ok: false, denied: false, message: reason.slice(0, 500) });
    }
    if (overCap) return Promise.resolve(this.exhaust(this.refusal(request, '')));
    return this.perform(request, signal).then(
      (value): CapabilityReply => ({ ok: true, value }),
      (error: unknown): CapabilityReply => ({ ok: false, denied: error instanceof CapabilityDenied, message: (error as Error).message }),
    );
  }

  /** Records the use that went over the cap, as refused, and marks the call exhausted. */
  private exhaust(use: CapabilityUse): CapabilityReply {
    const reason = `more than ${this.grants.maxCapabilityCalls} capability uses in one call; the call was ended`;
    this.exhaustedReason = reason;
    this.uses.push({ ...use, outcome: 'denied', reason } as CapabilityUse);
    return { ok: false, denied: true, message: reason };
  }

  private refusal(request: Request, reason: string): CapabilityUse {
    return request.cap === 'fetch'
      ? { cap: 'fetch', method: request.method.toUpperCase(), url: request.url.slice(0, 2048), outcome: 'denied', reason }
      : request.cap === 'kv'
        ? { cap: 'kv', op: request.op, key: request.key.slice(0, 256), outcome: 'denied', reason }
        : { cap: 'log', level: request.level, outcome: 'denied', reason };
  }

  private refuse(request: Request, reason: string): never {
    this.uses.push(this.refusal(request, reason));
    throw new CapabilityDenied(reason);
  }

  private async perform(request: Request, signal: AbortSignal): Promise<unknown> {
    if (signal.aborted) this.refuse(request, `${request.cap}: the call has ended`);
    switch (request.cap) {
      case 'fetch':
        if (!this.grants.fetch) this.refuse(request, 'fetch is not granted to this plugin');
        return hostFetch(request, this.grants.fetch, signal, this.uses);
      case 'kv':
        if (!this.grants.kv) this.refuse(request, 'kv is not granted to this plugin');
        return kvOperation(this.grants.kv, request, signal, this.uses);
      case 'log':
        if (!this.grants.log) this.refuse(request, 'log is not granted to this plugin');
        pluginLog(this.log, this.plugin, request, this.uses);
        return null;
    }
  }
}
