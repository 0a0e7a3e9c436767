/**
 * oidc-provider's storage adapter over Bastion's StateStore, so codes,
 * refresh-token families, grants, sessions, interactions and client
 * registrations are shared by every replica (Redis) and survive restarts
 * (embedded journal).
 *
 * Consuming a code or refresh token is a compare-and-set: of two requests
 * that present the same one at once, exactly one wins; the other is refused
 * as a replay and its whole grant (the token family) is revoked, as the
 * library does for a sequential replay.
 *
 * @example
 *   new Provider(issuer, { adapter: stateAdapterFactory(state, { clientTtlMs }) });
 */
import { errors, type Adapter, type AdapterPayload } from 'oidc-provider';
import type { StateStore } from '../state/store.ts';

/** Models whose entries carry a grantId, and so belong to a token family. */
const GRANT_MEMBERS = new Set(['AuthorizationCode', 'AccessToken', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest']);

/** Entries without an expiry of their own (registered clients) still leave eventually. */
const FALLBACK_TTL_MS = 30 * 86_400_000;

export interface StateAdapterOptions {
  /** Namespace prefix, so two providers (the authorization server, the development IdP) never share entries. Default "oauth". */
  prefix?: string;
  /** How long a dynamically registered client is remembered. */
  clientTtlMs: number;
  /** Runs before a family's entries are deleted, whoever revokes it: ends what lives outside the store (issued access tokens). */
  beforeFamilyRevoked?: (grantId: string) => Promise<void>;
  /** Told when a replayed code or refresh token revoked its family (for the audit trail). */
  onFamilyRevoked?: (grantId: string, model: string) => void;
}

export function stateAdapterFactory(state: StateStore, options: StateAdapterOptions): (model: string) => Adapter {
  const prefix = options.prefix ?? 'oauth';
  const namespace = (model: string) => `${prefix}:${model}`;
  const FAMILIES = `${prefix}:family`;
  /** Remembers that `model` entry `id` belongs to `grantId`, so revoking the grant finds it. */
  const joinFamily = async (grantId: string, model: string, id: string, ttlMs: number) => {
    for (let attempt = 0; attempt < 16; attempt++) {
      const current = await state.get(FAMILIES, grantId);
      const members = current ? (JSON.parse(current) as [string, string][]) : [];
      members.push([model, id]);
      if (await state.compareAndSet(FAMILIES, grantId, current, JSON.stringify(members), ttlMs)) return;
    }
    throw new Error(`token family ${grantId} is too contended to record a member`);
  };

  const revokeFamily = async (grantId: string) => {
    await options.beforeFamilyRevoked?.(grantId);
    const current = await state.get(FAMILIES, grantId);
    for (const [model, id] of current ? (JSON.parse(current) as [string, string][]) : []) await state.delete(namespace(model), id);
    await state.delete(FAMILIES, grantId);
    await state.delete(namespace('Grant'), grantId);
  };

  return (model: string): Adapter => {
    const ns = namespace(model);
    return {
      async upsert(id: string, payload: AdapterPayload, expiresIn: number) {
        const ttlMs = expiresIn ? expiresIn * 1000 : model === 'Client' ? options.clientTtlMs : FALLBACK_TTL_MS;
        await state.set(ns, id, JSON.stringify(payload), ttlMs);
        if (GRANT_MEMBERS.has(model) && payload.grantId) await joinFamily(payload.grantId, model, id, Math.max(ttlMs, FALLBACK_TTL_MS));
        if (model === 'Session' && payload.uid) await state.set(`${ns}:uid`, payload.uid, id, ttlMs);
      },
      async find(id: string) {
        const value = await state.get(ns, id);
        return value === undefined ? undefined : (JSON.parse(value) as AdapterPayload);
      },
      async findByUid(uid: string) {
        const id = await state.get(`${ns}:uid`, uid);
        return id === undefined ? undefined : this.find(id);
      },
      async findByUserCode() {
        return undefined; // the device flow is off
      },
      async consume(id: string) {
        const current = await state.get(ns, id);
        if (current === undefined) throw new errors.InvalidGrant(`${model} not found`);
        const payload = JSON.parse(current) as AdapterPayload;
        const next = JSON.stringify({ ...payload, consumed: Math.floor(Date.now() / 1000) });
        const ttlMs = payload.exp ? Math.max(1000, payload.exp * 1000 - Date.now()) : FALLBACK_TTL_MS;
        if (!payload.consumed && (await state.compareAndSet(ns, id, current, next, ttlMs))) return;
        // Lost the race to another request presenting the same code or token: a replay.
        if (payload.grantId) {
          await revokeFamily(payload.grantId);
          options.onFamilyRevoked?.(payload.grantId, model);
        }
        throw new errors.InvalidGrant(`${model === 'RefreshToken' ? 'refresh token' : 'authorization code'} already used`);
      },
      async destroy(id: string) {
        await state.delete(ns, id);
      },
      async revokeByGrantId(grantId: string) {
        await revokeFamily(grantId);
      },
    };
  };
}
