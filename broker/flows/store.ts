/**
 * Where flows live: behind the state interface (embedded journal, or Redis
 * shared by every replica), so a new MCP session, a stateless request,
 * another replica or a refreshed token of the same subject all read the
 * same flow. Each flow is two entries, both expiring `retentionMs` after
 * their last change:
 *
 *   flows/<key>       the core (labels, sources): read on every call
 *   flow-index/<key>  the provenance index: read only when a tainted flow's
 *                     call has arguments to trace, and only when the core
 *                     names a revision this replica has not cached
 *
 * Updates are compare-and-set loops, so concurrent calls of one agent on
 * several replicas never lose each other's labels. Caches are per replica
 * and never trusted over the store: the core is read every time and its
 * parsed form reused only when the stored text is unchanged.
 *
 * @example
 *   const store = new FlowStore({ state, retentionMs: 86_400_000, limits });
 *   await store.updateCore(key, (core) => addSource(core, source, now, limits), now);
 */
import { randomBytes } from 'node:crypto';
import type { StateStore } from '../state/store.ts';
import { emptyCore, emptyIndex, parseCore, parseIndex, serializeIndex, type FlowCore, type FlowLimits, type ProvenanceIndex } from './state.ts';

export const FLOWS = 'flows';
export const FLOW_INDEX = 'flow-index';
export const FLOW_LINKS = 'flow-links';
const FLOW_META = 'flow-meta';

/** Attempts of one compare-and-set loop before the update fails (and the call with it). */
const CAS_ATTEMPTS = 16;

export class FlowConflict extends Error {
  override readonly name = 'FlowConflict';
}

/** A bounded map that forgets its least recently used entry. */
export class Lru<K, V> {
  private readonly map = new Map<K, V>();
  private readonly max: number;
  constructor(max: number) {
    this.max = max;
  }
  get(key: K): V | undefined {
    const value = this.map.get(key);
    if (value !== undefined) {
      this.map.delete(key);
      this.map.set(key, value);
    }
    return value;
  }
  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value as K);
  }
  delete(key: K): void {
    this.map.delete(key);
  }
  get size(): number {
    return this.map.size;
  }
}

export interface FlowStoreOptions {
  state: StateStore;
  retentionMs: number;
  limits: FlowLimits;
  /** Cores cached per replica (parsed form reused while the stored text is unchanged). */
  cachedCores?: number;
  /** Provenance indexes cached per replica. */
  cachedIndexes?: number;
}

export class FlowStore {
  readonly limits: FlowLimits;
  private readonly state: StateStore;
  private readonly retentionMs: number;
  private readonly cores: Lru<string, { text: string; core: FlowCore }>;
  private readonly indexes: Lru<string, ProvenanceIndex>;

  constructor(options: FlowStoreOptions) {
    this.state = options.state;
    this.retentionMs = options.retentionMs;
    this.limits = options.limits;
    this.cores = new Lru(options.cachedCores ?? 4096);
    this.indexes = new Lru(options.cachedIndexes ?? 256);
  }

  /**
   * The deployment's hash seed: made once, shared by every replica through
   * the store, so all of them hash value units alike.
   */
  async seed(): Promise<number> {
    const made = String(randomBytes(4).readUInt32LE(0));
    await this.state.compareAndSet(FLOW_META, 'seed', undefined, made);
    const stored = await this.state.get(FLOW_META, 'seed');
    const seed = Number(stored);
    if (!Number.isInteger(seed)) throw new Error('the flow hash seed in the state store is malformed');
    return seed;
  }

  /** The flow's core, or undefined when nothing has entered it. */
  async core(key: string): Promise<FlowCore | undefined> {
    const text = await this.state.get(FLOWS, key);
    if (text === undefined) {
      this.cores.delete(key);
      return undefined;
    }
    const cached = this.cores.get(key);
    if (cached && cached.text === text) return cached.core;
    const core = parseCore(text);
    this.cores.set(key, { text, core });
    return core;
  }

  /** Applies `change` to the stored core atomically (retried on conflict); `change` must be pure. */
  async updateCore(key: string, change: (core: FlowCore) => FlowCore, now: Date): Promise<FlowCore> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const text = await this.state.get(FLOWS, key);
      const next = change(text === undefined ? emptyCore(key, now) : parseCore(text));
      const written = JSON.stringify(next);
      if (await this.state.compareAndSet(FLOWS, key, text, written, this.retentionMs)) {
        this.cores.set(key, { text: written, core: next });
        return next;
      }
    }
    throw new FlowConflict(`the flow of ${key} changed ${CAS_ATTEMPTS} times while being updated`);
  }

  /** The provenance index that goes with `core` (empty when it has none). */
  async index(key: string, core: FlowCore | undefined): Promise<ProvenanceIndex> {
    if (!core?.index) return emptyIndex();
    const cached = this.indexes.get(key);
    if (cached && cached.rev === core.index) return cached;
    const text = await this.state.get(FLOW_INDEX, key);
    // The index expired (or was lost) while the core lives: provenance knows nothing, the labels still hold.
    const index = text === undefined ? emptyIndex() : parseIndex(text);
    this.indexes.set(key, index);
    return index;
  }

  /**
   * Applies `change` (which mutates the index it is given and says whether
   * it changed anything) to the stored index atomically; returns the new
   * revision, or undefined when nothing changed.
   */
  async updateIndex(key: string, change: (index: ProvenanceIndex) => boolean): Promise<string | undefined> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const text = await this.state.get(FLOW_INDEX, key);
      const index = text === undefined ? emptyIndex() : parseIndex(text);
      if (!change(index)) {
        this.indexes.set(key, index);
        return undefined;
      }
      index.rev = randomBytes(6).toString('hex');
      if (await this.state.compareAndSet(FLOW_INDEX, key, text, serializeIndex(index), this.retentionMs)) {
        this.indexes.set(key, index);
        return index.rev;
      }
    }
    throw new FlowConflict(`the provenance index of ${key} changed ${CAS_ATTEMPTS} times while being updated`);
  }

  /** Removes a flow (core and index); returns the core it had. */
  async clear(key: string): Promise<FlowCore | undefined> {
    const text = await this.state.get(FLOWS, key);
    await this.state.delete(FLOW_INDEX, key);
    await this.state.delete(FLOWS, key);
    this.cores.delete(key);
    this.indexes.delete(key);
    return text === undefined ? undefined : parseCore(text);
  }

  /** Every stored flow's core (for operators). */
  async list(): Promise<FlowCore[]> {
    return (await this.state.entries(FLOWS)).map(([, text]) => parseCore(text));
  }

  async link(childKey: string, parentFlow: string, ttlMs: number): Promise<void> {
    await this.state.set(FLOW_LINKS, childKey, parentFlow, ttlMs);
  }

  async linked(childKey: string): Promise<string | undefined> {
    return this.state.get(FLOW_LINKS, childKey);
  }
}
