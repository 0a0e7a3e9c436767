/**
 * A flow's state as data: what the labels that entered one agent's context
 * are, which calls brought each (the core, small, read on every call), and
 * the provenance index (the hashed value units of untrusted and of trusted
 * content, read only when a call's arguments must be traced). Pure
 * functions over plain values; storage is store.ts's business.
 *
 * Bounded by construction: at most `maxSources` detailed sources (older ones
 * are counted, and the labels they brought stay), at most `maxUnits` hashed
 * units of each kind, oldest dropped first. Dropping an untrusted unit
 * weakens provenance for that value (the labels still hold); dropping a
 * trusted unit can only make a value look tainted (more approvals, never
 * fewer).
 *
 * @example
 *   const n = newSourceNumber();
 *   const core = addSource(emptyCore('https://issuer|agent:a', now), { id: sourceId(n), tool: 'web__fetch', labels: ['untrusted'], reason: '…', call: 'c1' }, now, limits);
 */
import { randomInt } from 'node:crypto';
import type { ContextLabel, FlowSource } from './schema.ts';

export interface FlowLimits {
  /** Sources kept in detail per flow. */
  maxSources: number;
  /** Hashed value units kept per kind (untrusted, trusted). */
  maxUnits: number;
}

export const DEFAULT_FLOW_LIMITS: FlowLimits = { maxSources: 32, maxUnits: 4096 };

/** Source ids each label lists in the policy input (most recent last). */
const IDS_PER_LABEL = 16;

/** The small part of a flow, read on every call. */
export interface FlowCore {
  v: 1;
  /** The flow key: `<iss>|<sub>` of the root principal. */
  key: string;
  created: string;
  updated: string;
  /** Label → ids of the sources that brought it, most recent last. */
  labels: Partial<Record<ContextLabel, string[]>>;
  /** How many sources ever brought each label (details of the oldest may be gone). */
  counts: Partial<Record<ContextLabel, number>>;
  /** The most recent sources, in detail. */
  sources: FlowSource[];
  /** The provenance index revision that goes with this core; absent while there is none. */
  index?: string;
}

/** The hashed value units a flow holds. Maps and sets keep insertion order: the oldest go first. */
export interface ProvenanceIndex {
  rev: string;
  /** Unit hash → number of the source that first brought it. */
  untrusted: Map<number, number>;
  trusted: Set<number>;
}

export function emptyCore(key: string, now: Date): FlowCore {
  const at = now.toISOString();
  return { v: 1, key, created: at, updated: at, labels: {}, counts: {}, sources: [] };
}

/**
 * A source's number and id. Random, not sequential: the provenance index
 * (which maps units to source numbers) is written before the core that
 * lists the source, so the number must be known before either write.
 */
export function newSourceNumber(): number {
  return randomInt(1, 0xffffffff);
}

export const sourceId = (n: number) => `s${n.toString(36)}`;

export function emptyIndex(): ProvenanceIndex {
  return { rev: '0', untrusted: new Map(), trusted: new Set() };
}

export function hasLabel(core: FlowCore | undefined, label: ContextLabel): boolean {
  return (core?.labels[label]?.length ?? 0) > 0;
}

export type NewSource = Omit<FlowSource, 'at'>;

/** A copy of `core` with one more source. */
export function addSource(core: FlowCore, source: NewSource, now: Date, limits: FlowLimits): FlowCore {
  const added: FlowSource = { ...source, at: now.toISOString() };
  const sources = [...core.sources, added].slice(-limits.maxSources);
  const kept = new Set(sources.map((s) => s.id));
  const labels: FlowCore['labels'] = {};
  const counts: FlowCore['counts'] = { ...core.counts };
  for (const label of ['untrusted', 'private'] as const) {
    const ids = [...(core.labels[label] ?? [])];
    if (added.labels.includes(label)) {
      ids.push(added.id);
      counts[label] = (counts[label] ?? 0) + 1;
    }
    // A label stays listed even when its sources' details are gone: keep the most recent id of each label at least.
    const listed = ids.filter((id) => kept.has(id)).slice(-IDS_PER_LABEL);
    if (listed.length === 0 && ids.length > 0) listed.push(ids[ids.length - 1]!);
    if (listed.length > 0) labels[label] = listed;
  }
  return { ...core, updated: added.at, labels, counts, sources };
}

/** Adds untrusted units (hash → source number), keeping the first source of a unit seen before. True when anything changed. */
export function addUntrusted(index: ProvenanceIndex, hashes: Iterable<number>, source: number, limits: FlowLimits): boolean {
  let changed = false;
  for (const hash of hashes) {
    if (index.untrusted.has(hash)) continue;
    index.untrusted.set(hash, source);
    changed = true;
  }
  trim(index.untrusted, limits.maxUnits);
  return changed;
}

/** Adds trusted units. True when anything changed. */
export function addTrusted(index: ProvenanceIndex, hashes: Iterable<number>, limits: FlowLimits): boolean {
  let changed = false;
  for (const hash of hashes) {
    if (index.trusted.has(hash)) continue;
    index.trusted.add(hash);
    changed = true;
  }
  trim(index.trusted, limits.maxUnits);
  return changed;
}

function trim(collection: Map<number, number> | Set<number>, max: number): void {
  if (collection.size <= max) return;
  let excess = collection.size - max;
  for (const key of collection.keys()) {
    if (excess-- <= 0) break;
    collection.delete(key);
  }
}

// ---------------------------------------------------------------------------
// Storage forms

/** The index as stored: hashes as little-endian float64 (exact for 53-bit integers), base64. */
interface StoredIndex {
  v: 1;
  rev: string;
  u: string;
  us: string;
  t: string;
}

export function serializeIndex(index: ProvenanceIndex): string {
  const untrusted = Float64Array.from(index.untrusted.keys());
  const sources = Uint32Array.from(index.untrusted.values());
  const trusted = Float64Array.from(index.trusted);
  const b64 = (array: Float64Array | Uint32Array) => Buffer.from(array.buffer, array.byteOffset, array.byteLength).toString('base64');
  const stored: StoredIndex = { v: 1, rev: index.rev, u: b64(untrusted), us: b64(sources), t: b64(trusted) };
  return JSON.stringify(stored);
}

export class FlowStateCorrupt extends Error {
  override readonly name = 'FlowStateCorrupt';
}

export function parseIndex(text: string): ProvenanceIndex {
  const stored = JSON.parse(text) as StoredIndex;
  if (stored?.v !== 1 || typeof stored.rev !== 'string') throw new FlowStateCorrupt('provenance index has an unknown format');
  const floats = (b64: string) => {
    const bytes = Buffer.from(b64, 'base64');
    if (bytes.byteLength % 8 !== 0) throw new FlowStateCorrupt('provenance index is truncated');
    return new Float64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  };
  const untrusted = floats(stored.u);
  const sourceBytes = Buffer.from(stored.us, 'base64');
  const sources = new Uint32Array(sourceBytes.buffer.slice(sourceBytes.byteOffset, sourceBytes.byteOffset + sourceBytes.byteLength));
  if (sources.length !== untrusted.length) throw new FlowStateCorrupt('provenance index sources do not match its units');
  const index: ProvenanceIndex = { rev: stored.rev, untrusted: new Map(), trusted: new Set(floats(stored.t)) };
  untrusted.forEach((hash, i) => index.untrusted.set(hash, sources[i]!));
  return index;
}

export function parseCore(text: string): FlowCore {
  const core = JSON.parse(text) as FlowCore;
  if (core?.v !== 1 || typeof core.key !== 'string' || !Array.isArray(core.sources) || typeof core.labels !== 'object') {
    throw new FlowStateCorrupt('flow state has an unknown format');
  }
  return core;
}
