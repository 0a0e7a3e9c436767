/**
 * Where flows live: behind the state interface (embedded journal, or Redis
 * shared by every replica), so a new MCP session, a stateless request,
 * another replica or a refreshed token of the same subject all read the
 * same flow. A flow is its core and its provenance segments, each expiring
 * `retentionMs` after it was written:
 *
 *   flows/<key>             the core (labels, sources, the segments' list):
 *                           read on every call
 *   flow-index/<key>#<id>   one immutable segment of hashed value units:
 *                           read only when a tainted flow's call has
 *                           arguments to trace, and only once per replica
 *
 * A result that brings new units writes one small segment and the core
 * that lists it; nothing written before is rewritten.
 *
 * Updates are compare-and-set loops, so concurrent calls of one agent on
 * several replicas never lose each other's labels. Caches are per replica
 * and never trusted over the store: the core is read every time and its
 * parsed form reused only when the stored text is unchanged.
 *
 * @example
 *   const store = new FlowStore({ state, retentionMs: 86_400_000, limits });
 *   await store.commit(key, [{ kind: 'untrusted', source: n, hashes }], (core) => addSource(core, source, now, limits), now);
 */
import { randomBytes } from 'node:crypto';
import type { StateStore } from '../state/store.ts';
import { emptyCore, listSegment, MAX_SEGMENTS, mergeSegments, newSegmentId, parseCore, parseUnits, serializeUnits, type FlowCore, type FlowLimits, type ProvenanceIndex, type Segment, type SegmentRef } from './state.ts';

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
  /** Provenance segments cached per replica (immutable, so a cached one is never stale). */
  cachedSegments?: number;
}

/** Units to write as one segment: trusted ones, or untrusted ones with the source that brought them. */
export interface NewSegment {
  kind: SegmentRef['kind'];
  source?: number;
  hashes: number[];
}

export class FlowStore {
  readonly limits: FlowLimits;
  private readonly state: StateStore;
  private readonly retentionMs: number;
  private readonly cores: Lru<string, { text: string; core: FlowCore }>;
  private readonly segments: Lru<string, Map<number, number>>;

  constructor(options: FlowStoreOptions) {
    this.state = options.state;
    this.retentionMs = options.retentionMs;
    this.limits = options.limits;
    this.cores = new Lru(options.cachedCores ?? 4096);
    this.segments = new Lru(options.cachedSegments ?? 8192);
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

  /** The provenance index the core lists; a segment that expired or was lost counts as empty. */
  async index(key: string, core: FlowCore | undefined): Promise<ProvenanceIndex> {
    const segments: Segment[] = [];
    for (const ref of core?.segments ?? []) segments.push({ ...ref, hashes: await this.segment(key, ref.id) });
    return { segments };
  }

  private async segment(key: string, id: string): Promise<Map<number, number>> {
    const at = `${key}#${id}`;
    let hashes = this.segments.get(at);
    if (!hashes) {
      const text = await this.state.get(FLOW_INDEX, at);
      hashes = text === undefined ? new Map<number, number>() : parseUnits(text);
      this.segments.set(at, hashes);
    }
    return hashes;
  }

  /** Starts writing a segment; the ref is usable at once, `written` settles when it is stored. */
  private writeSegment(key: string, kind: SegmentRef['kind'], units: Map<number, number>): { ref: SegmentRef; written: Promise<void> } {
    const ref: SegmentRef = { id: newSegmentId(), kind, units: units.size };
    this.segments.set(`${key}#${ref.id}`, units);
    const written = this.state.set(FLOW_INDEX, `${key}#${ref.id}`, serializeUnits(units), this.retentionMs);
    // Awaited by commit once the core is written; until then a rejection must not go unhandled.
    written.catch(() => undefined);
    return { ref, written };
  }

  /**
   * Writes `pieces` as new segments, then applies `change` to the core and
   * lists them in it (dropping the oldest segments beyond the unit caps, and
   * replacing the oldest by one merged segment past MAX_SEGMENTS of a kind),
   * all in one compare-and-set of the core; what it replaced or dropped is
   * deleted after. A piece without units writes nothing.
   *
   * The segments are written alongside the core, not before it (on the
   * embedded store they share one sync): should the core land and a
   * segment not, the segment reads as empty, which loses provenance for
   * those values and never a label.
   */
  async commit(key: string, pieces: NewSegment[], change: (core: FlowCore) => FlowCore, now: Date): Promise<FlowCore> {
    const refs: SegmentRef[] = [];
    const writes: Promise<void>[] = [];
    for (const piece of pieces) {
      if (piece.hashes.length === 0) continue;
      const { ref, written } = this.writeSegment(key, piece.kind, new Map(piece.hashes.map((h) => [h, piece.source ?? 0])));
      refs.push(ref);
      writes.push(written);
    }

    // Merge the oldest segments of a kind that would pass the cap (planned on the stored core; applied if still listed).
    const merges: { ref: SegmentRef; replaces: Set<string> }[] = [];
    const current = refs.length ? await this.core(key) : undefined;
    for (const kind of ['untrusted', 'trusted'] as const) {
      const listed = (current?.segments ?? []).filter((s) => s.kind === kind);
      if (listed.length + refs.filter((r) => r.kind === kind).length <= MAX_SEGMENTS) continue;
      const oldest = listed.slice(0, Math.max(2, listed.length - MAX_SEGMENTS / 2));
      const loaded = await Promise.all(oldest.map(async (ref) => ({ ...ref, hashes: await this.segment(key, ref.id) })));
      const { ref, written } = this.writeSegment(key, kind, mergeSegments(loaded, this.limits.maxUnits));
      writes.push(written);
      merges.push({ ref, replaces: new Set(oldest.map((r) => r.id)) });
    }
    let dropped: string[] = [];
    const core = await this.updateCore(
      key,
      (stored) => {
        let next = change(stored);
        dropped = [];
        for (const merge of merges) {
          const segments = next.segments ?? [];
          if (![...merge.replaces].every((id) => segments.some((s) => s.id === id))) {
            dropped.push(merge.ref.id); // another writer changed the list first: this merge is moot
            continue;
          }
          const at = segments.findIndex((s) => merge.replaces.has(s.id));
          next = { ...next, segments: [...segments.slice(0, at), merge.ref, ...segments.filter((s, i) => i >= at && !merge.replaces.has(s.id))] };
          dropped.push(...merge.replaces);
        }
        for (const ref of refs) {
          const listed = listSegment(next, ref, this.limits);
          next = listed.core;
          dropped.push(...listed.dropped);
        }
        return next;
      },
      now,
    );
    // A segment that could not be stored fails the commit (and the call), like a failed core write.
    await Promise.all(writes);
    for (const id of dropped) {
      this.segments.delete(`${key}#${id}`);
      // Best effort: an undeleted segment expires with the retention anyway.
      await this.state.delete(FLOW_INDEX, `${key}#${id}`).catch(() => false);
    }
    return core;
  }

  /** Removes a flow (core and segments); returns the core it had. */
  async clear(key: string): Promise<FlowCore | undefined> {
    const text = await this.state.get(FLOWS, key);
    const core = text === undefined ? undefined : parseCore(text);
    // The core goes first: once it is gone, nothing reads the segments, whatever happens to them.
    await this.state.delete(FLOWS, key);
    this.cores.delete(key);
    for (const ref of core?.segments ?? []) {
      this.segments.delete(`${key}#${ref.id}`);
      await this.state.delete(FLOW_INDEX, `${key}#${ref.id}`);
    }
    return core;
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
