/**
 * The audit record format: one RFC 8785 canonical JSON line per event, each
 * carrying the SHA-256 of the previous line's hash (`prev`) and of itself
 * (`hash`, over every other field including `time`). Canonical form makes the
 * hash reproducible by any JCS implementation, not just this one.
 */
import { createHash } from 'node:crypto';
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
  return `sha256:${createHash('sha256').update(text).digest('hex')}`;
}

/** The hash of a record: over its canonical form without the `hash` member. */
export function recordHash(record: Omit<AuditRecord, 'hash'> & { hash?: string }): string {
  const { hash: _ignored, ...rest } = record;
  return sha256(canonicalJson(rest));
}

/** Seals an event into the next record of the chain. */
export function seal(event: AuditEvent, seq: number, prev: string, time: Date): AuditRecord {
  const unsealed = { ...event, seq, time: time.toISOString(), prev };
  return { ...unsealed, hash: recordHash(unsealed) };
}
