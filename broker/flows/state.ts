/**
 * A flow's state as data: the labels that entered one agent's context and
 * which calls brought each (the core, small, read on every call), and the
 * provenance index: the hashed value units of untrusted and of trusted
 * content, kept as immutable segments (one per result that brought new
 * units, merged when there are too many), read only when a call's
 * arguments must be traced. Pure functions over plain values; storage is
 * store.ts's business.
 *
 * Bounded by construction: at most `maxSources` detailed sources (older ones
 * are counted, and the labels they brought stay), and at most `maxUnits`
 * hashed units of each kind, the oldest segments dropped first. Dropping an
 * untrusted segment weakens provenance for its values (the labels still
 * hold); dropping a trusted one can only make a value look tainted (more
 * approvals, never fewer). A new result's units are written as one small
 * segment; past `MAX_SEGMENTS` segments of a kind, the oldest are merged
 * into one, so the core's list stays short and a write stays small on
 * average (a merge rewrites at most `maxUnits` units, once per
 * MAX_SEGMENTS / 2 new segments).
 *
 * @example
 *   const n = newSourceNumber();
 *   const core = addSource(emptyCore('https://issuer|agent:a', now), { id: sourceId(n), tool: 'web__fetch', labels: ['untrusted'], reason: '…', call: 'c1' }, now, limits);
 */
import { randomBytes, randomInt } from 'node:crypto';
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
  /** The provenance index's segments, oldest first; absent while there are none. */
  segments?: SegmentRef[];
}

/** Segments of one kind a core lists before the oldest are merged. */
export const MAX_SEGMENTS = 16;

/** A segment as the core lists it. */
export interface SegmentRef {
  id: string;
  kind: 'untrusted' | 'trusted';
  units: number;
}

/** A segment's units, as loaded: hash → number of the source that brought it (0 for trusted units). */
export interface Segment extends SegmentRef {
  hashes: Map<number, number>;
}

/** The hashed value units a flow holds: its segments, oldest first. */
export interface ProvenanceIndex {
  segments: Segment[];
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
  return { segments: [] };
}

/** The source that brought `hash` as untrusted content, unless trusted content also had it; undefined when none did. */
export function taintOf(index: ProvenanceIndex, hash: number): number | undefined {
  let source: number | undefined;
  for (const segment of index.segments) {
    const found = segment.hashes.get(hash);
    if (found === undefined) continue;
    if (segment.kind === 'trusted') return undefined;
    source ??= found;
  }
  return source;
}

/** Whether any segment of `kind` holds `hash`. */
export function holds(index: ProvenanceIndex, kind: SegmentRef['kind'], hash: number): boolean {
  return index.segments.some((segment) => segment.kind === kind && segment.hashes.has(hash));
}

export function hasUntrustedUnits(index: ProvenanceIndex): boolean {
  return index.segments.some((segment) => segment.kind === 'untrusted' && segment.units > 0);
}

export function newSegmentId(): string {
  return randomBytes(6).toString('hex');
}

/** One segment from several of a kind, oldest first: a unit keeps its first source; past `max` units the oldest go. */
export function mergeSegments(segments: readonly Segment[], max: number): Map<number, number> {
  const merged = new Map<number, number>();
  for (const segment of segments) for (const [hash, source] of segment.hashes) if (!merged.has(hash)) merged.set(hash, source);
  let excess = merged.size - max;
  for (const hash of merged.keys()) {
    if (excess-- <= 0) break;
    merged.delete(hash);
  }
  return merged;
}

/**
 * The core with `added` listed and, per kind, the oldest segments dropped
 * until at most `maxUnits` units remain; returns the ids dropped (the
 * caller deletes their stored units once the core is written).
 */
export function listSegment(core: FlowCore, added: SegmentRef, limits: FlowLimits): { core: FlowCore; dropped: string[] } {
  const segments = [...(core.segments ?? []), added];
  const dropped: string[] = [];
  for (const kind of ['untrusted', 'trusted'] as const) {
    let total = segments.filter((s) => s.kind === kind).reduce((n, s) => n + s.units, 0);
    while (total > limits.maxUnits) {
      const oldest = segments.findIndex((s) => s.kind === kind && s !== added);
      if (oldest < 0) break;
      total -= segments[oldest]!.units;
      dropped.push(segments[oldest]!.id);
      segments.splice(oldest, 1);
    }
  }
  return { core: { ...core, segments }, dropped };
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

// ---------------------------------------------------------------------------
// Storage forms

const b64 = (array: Float64Array | Uint32Array) => Buffer.from(array.buffer, array.byteOffset, array.byteLength).toString('base64');

/** A segment's units as stored: hashes as little-endian float64 (exact for 53-bit integers) and their sources as uint32, base64. */
export function serializeUnits(units: ReadonlyMap<number, number>): string {
  return JSON.stringify({ h: b64(Float64Array.from(units.keys())), s: b64(Uint32Array.from(units.values())) });
}

export class FlowStateCorrupt extends Error {
  override readonly name = 'FlowStateCorrupt';
}

export function parseUnits(text: string): Map<number, number> {
  const stored = JSON.parse(text) as { h?: unknown; s?: unknown };
  if (typeof stored?.h !== 'string' || typeof stored.s !== 'string') throw new FlowStateCorrupt('a provenance segment has an unknown format');
  const hashBytes = Buffer.from(stored.h, 'base64');
  const sourceBytes = Buffer.from(stored.s, 'base64');
  if (hashBytes.byteLength % 8 !== 0 || sourceBytes.byteLength !== hashBytes.byteLength / 2) throw new FlowStateCorrupt('a provenance segment is truncated');
  const hashes = new Float64Array(hashBytes.buffer.slice(hashBytes.byteOffset, hashBytes.byteOffset + hashBytes.byteLength));
  const sources = new Uint32Array(sourceBytes.buffer.slice(sourceBytes.byteOffset, sourceBytes.byteOffset + sourceBytes.byteLength));
  const units = new Map<number, number>();
  hashes.forEach((hash, i) => units.set(hash, sources[i]!));
  return units;
}

export function parseCore(text: string): FlowCore {
  const core = JSON.parse(text) as FlowCore;
  if (core?.v !== 1 || typeof core.key !== 'string' || !Array.isArray(core.sources) || typeof core.labels !== 'object' || (core.segments !== undefined && !Array.isArray(core.segments))) {
    throw new FlowStateCorrupt('flow state has an unknown format');
  }
  return core;
}
