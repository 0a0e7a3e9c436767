/**
 * The audit record format: one RFC 8785 canonical JSON line per event, each
 * carrying the SHA-256 of the previous line's hash (`prev`) and of itself
 * (`hash`, over every other field including `time`). Canonical form makes the
 * hash reproducible by any JCS implementation, not just this one.
 */
import { hash as digest } from 'node:crypto';
import canonicalizeModule from 'canonicalize';

// A CommonJS module whose typings declare an ES default export; at run time the default import is the function itself.
const canonicalize = canonicalizeModule as unknown as (value: unknown) => string | undefined;

export const GENESIS_HASH = `sha256:${'0'.repeat(64)}`;

/** What a stage hands to the audit log; `seq`, `time`, `prev` and `hash` are added on append. */
export interface AuditEvent {
  event: string;
  /** The broker replica that wrote the record (config replica_id; host name and pid by default). Added on append. */
  replica?: string | undefined;
  session?: string | undefined;
  transport?: 'http' | 'stdio' | undefined;
  /** The MCP revision the request spoke (2025-11-25 sessions, 2026-07-28 requests), when known. */
  protocol?: string | undefined;
  principal?: { sub: string; iss: string; jti?: string; token_hash?: string; anonymous?: boolean } | undefined;
  tool?: string | undefined;
  /** sha256 of the canonical arguments: proves what was asked without storing it. */
  args_hash?: string | undefined;
  decision?: { allow: boolean; reasons: string[]; approval_required: boolean } | undefined;
  policy_revision?: string | undefined;
  /** The decision log record of this call's policy decision (broker/policy/decision-log.ts). */
  decision_id?: string | undefined;
  outcome: 'ok' | 'denied' | 'error' | 'info';
  denial?: { stage: string; code: string; reason: string } | undefined;
  latency_ms?: number | undefined;
  detail?: Record<string, unknown> | undefined;
}

export interface AuditRecord extends AuditEvent {
  seq: number;
  time: string;
  prev: string;
  hash: string;
}

/** RFC 8785 canonical JSON; `undefined` members are dropped, as JSON.stringify does. */
export function canonicalJson(value: unknown): string {
  const text = canonicalize(value);
  if (text === undefined) throw new TypeError('value has no JSON form');
  return text;
}

export function sha256(text: string): string {
  // One-shot hash: no Hash object per call (this runs several times per tool call).
  return `sha256:${digest('sha256', text)}`;
}

/** The hash of a record: over its canonical form without the `hash` member. */
export function recordHash(record: Omit<AuditRecord, 'hash'> & { hash?: string }): string {
  const { hash: _ignored, ...rest } = record;
  return sha256(canonicalJson(rest));
}

/** A sealed record and the line it is stored as (its canonical JSON). */
export interface Sealed {
  record: AuditRecord;
  line: string;
}

/**
 * Seals an event into the next record of the chain. Each member is
 * canonicalized once: the hashed text and the stored line differ only by the
 * `hash` member, so both are joined from the same pieces (RFC 8785 orders
 * members by UTF-16 code units, which is what `<` compares on strings).
 */
export function seal(event: AuditEvent, seq: number, prev: string, time: Date): Sealed {
  const unsealed: Omit<AuditRecord, 'hash'> = { ...event, seq, time: time.toISOString(), prev };
  const members: [string, string][] = [];
  for (const key in unsealed) {
    const value = unsealed[key as keyof typeof unsealed];
    if (value !== undefined) members.push([key, `${JSON.stringify(key)}:${canonicalJson(value)}`]);
  }
  members.sort(byKey);
  const hash = sha256(`{${members.map(textOf).join(',')}}`);
  // "hash" goes where the order puts it, as if it had been there all along.
  let at = members.findIndex(([key]) => key > 'hash');
  if (at < 0) at = members.length;
  members.splice(at, 0, ['hash', `"hash":"${hash}"`]);
  return { record: { ...unsealed, hash }, line: `{${members.map(textOf).join(',')}}` };
}

const byKey = ([a]: [string, string], [b]: [string, string]): number => (a < b ? -1 : a > b ? 1 : 0);
const textOf = ([, text]: [string, string]): string => text;
