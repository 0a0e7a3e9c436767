/**
 * Judging an attempt: did the attack work (the case's success predicate,
 * over what reached the upstream and what the agent received), and if not,
 * which defense stopped it (the first refusal of an attack step, else the
 * result filter's marks, else the audit trail's record of a refusal).
 *
 * @example
 *   const verdict = await judge(attempt, attackCase.success, { calls, audit });
 *   // { success: false, stoppedBy: { defense: 'tokens', stage: 'authenticate', code: 'BASTION_TOKEN_EXPIRED' }, evidence: '...' }
 */
import type { AuditRecord } from '../audit/chain.ts';
import type { Config } from '../config.ts';
import { LimitsConfigSchema } from '../limits.ts';
import type { Refusal } from './agent.ts';
import type { AttackCase, Defense, Predicate } from './corpus.ts';
import type { Attempt } from './steps.ts';
import type { UpstreamCall } from './target.ts';

/** Who stopped an attack: a defense layer, or something that is not one. */
export interface StopReason {
  defense: Defense | 'upstream' | 'unknown';
  stage: string;
  code: string;
}

export interface Verdict {
  success: boolean;
  stoppedBy?: StopReason;
  /** One line a person can check: what reached the tool or the agent. */
  evidence: string;
}

/** The defense a refusal belongs to, by code first (where a stage hosts several defenses), then by stage. */
export function defenseOf(refusal: Pick<Refusal, 'stage' | 'code'>): StopReason['defense'] {
  if (refusal.code === 'BASTION_DELEGATION_REFUSED' || refusal.code === 'DELEGATION_DISABLED') return 'delegation';
  if (refusal.code === 'BASTION_TOOL_QUARANTINED') return 'pins';
  // A plugin whose manifest claimed another source's name was never loaded.
  if (refusal.code === 'BASTION_PLUGIN_NAME_TAKEN') return 'plugin_identity';
  // The descriptor check lives with the filters (filters.descriptor), though it refuses at resolve.
  if (refusal.code === 'BASTION_TOOL_BLOCKED') return 'filters';
  // A plugin call the sandbox ended (limit hit, or the isolate refused what the code tried).
  // Codes saying the plugin never ran (not loaded, wrong pin) are a harness problem, not a defense.
  if (refusal.code.startsWith('SANDBOX_')) return SANDBOX_STOPS.has(refusal.code) ? 'sandbox_limits' : 'unknown';
  switch (refusal.stage) {
    case 'authenticate':
      return 'tokens';
    case 'authorize':
      return 'policy';
    case 'limit':
      return 'quotas';
    case 'approve':
      return 'approvals';
    case 'filter':
      return 'filters';
    case 'admit':
      return 'front_door';
    case 'authorization_server':
      return 'authorization_server';
    case 'execute':
      return 'upstream';
    default:
      return 'unknown';
  }
}

/** Sandbox error codes that mean the sandbox stopped a running plugin call. */
const SANDBOX_STOPS: ReadonlySet<string> = new Set([
  'SANDBOX_TIMEOUT',
  'SANDBOX_MEMORY',
  'SANDBOX_CRASHED',
  'SANDBOX_RESULT_TOO_LARGE',
  'SANDBOX_INVALID_RESULT',
  'SANDBOX_CAPABILITY_DENIED',
  'SANDBOX_PLUGIN_ERROR',
  // Arguments the plugin's own schema refused, checked in the sandbox process (on RE2: no pattern stalls it).
  'SANDBOX_INVALID_ARGUMENTS',
]);

const stop = (refusal: Pick<Refusal, 'stage' | 'code'>): StopReason => ({ defense: defenseOf(refusal), stage: refusal.stage, code: refusal.code });

function globRegex(glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

/**
 * How many calls of `tool` by one principal the configured quotas let
 * through in `durationMs`: the tightest of the principal bucket and any
 * per-tool bucket (burst plus refill). A quota switched off in the operator's
 * config (0/min) is measured against the default quota instead, so a flood
 * always has a yardstick.
 */
export function quotaAllowance(config: Config, tool: string, durationMs: number): number {
  const seconds = durationMs / 1000;
  const quotas = [config.limits.principal, ...config.limits.tools.filter((q) => globRegex(q.tool).test(tool))].filter((q) => q.requests_per_minute > 0);
  if (quotas.length === 0) quotas.push(LimitsConfigSchema.parse({}).principal);
  return Math.min(...quotas.map((q) => q.burst + Math.ceil((q.requests_per_minute / 60) * seconds)));
}

export interface Evidence {
  /** Calls the upstreams received during the attempt. */
  calls: UpstreamCall[];
  /** Audit records written during the attempt. */
  audit: AuditRecord[];
  config: Config;
  /** Probes the broker's health endpoint; resolves to the answer time, or undefined when it did not answer. */
  health: (timeoutMs: number) => Promise<number | undefined>;
  /** The broker's live MCP sessions before the attempt (read only for cases that judge by them). */
  sessionsBefore?: number | undefined;
  /** Reads the broker's live MCP sessions now (bastion_sessions_open); throws when it cannot. */
  liveSessions: () => Promise<number>;
}

async function holds(predicate: Predicate, attempt: Attempt, evidence: Evidence): Promise<{ holds: boolean; evidence: string }> {
  if ('upstream_called' in predicate) {
    const p = predicate.upstream_called;
    let calls = evidence.calls;
    if (p.after) {
      const first = calls.findIndex((c) => c.tool === p.after);
      calls = first === -1 ? [] : calls.slice(first + 1);
    }
    const hits = calls.filter((c) => c.tool === p.tool && (!p.marker || JSON.stringify(c.args).includes(attempt.marker)));
    const pids = [...new Set(evidence.calls.filter((c) => c.tool === p.tool || c.tool === p.after).map((c) => c.pid))];
    return {
      holds: hits.length >= p.min_count,
      evidence: `${p.tool} reached the upstream ${hits.length}× (attack needs ${p.min_count})${hits.length && pids.length > 1 ? `; upstream pids ${pids.join(', ')}` : ''}`,
    };
  }
  if ('agent_received' in predicate || 'agent_starved' in predicate) {
    const p = 'agent_received' in predicate ? predicate.agent_received : predicate.agent_starved;
    const pattern = new RegExp(p.pattern, p.flags);
    const hit = attempt.received.some((text) => pattern.test(text));
    const evidenceLine = hit ? `the agent received text matching /${p.pattern}/` : `nothing the agent received matched /${p.pattern}/`;
    return { holds: 'agent_received' in predicate ? hit : !hit, evidence: evidenceLine };
  }
  if ('audit_record_over' in predicate) {
    const p = predicate.audit_record_over;
    const sizes = evidence.audit.filter((r) => r.tool === p.tool).map((r) => JSON.stringify(r).length);
    const largest = Math.max(0, ...sizes);
    return { holds: largest > p.bytes, evidence: `the largest audit record of ${p.tool} is ${largest} bytes (the attack needs more than ${p.bytes})` };
  }
  if ('upstream_exceeds_quota' in predicate) {
    const p = predicate.upstream_exceeds_quota;
    const flood = attempt.flood;
    if (!flood) return { holds: false, evidence: 'no flood was sent' };
    const reached = evidence.calls.filter((c) => c.tool === p.tool && JSON.stringify(c.args).includes(attempt.marker)).length;
    const allowed = quotaAllowance(evidence.config, p.tool, flood.endedAt - flood.startedAt);
    return { holds: reached > allowed, evidence: `${reached} of ${flood.sent} flood calls reached ${p.tool}; the quota allows ${allowed} in ${flood.endedAt - flood.startedAt} ms` };
  }
  if ('call_unbounded' in predicate) {
    const name = predicate.call_unbounded.call;
    const hit = attempt.unanswered.has(name);
    return { holds: hit, evidence: hit ? `${name} was still running when the agent stopped waiting` : `${name} ended (or was never started) before the agent stopped waiting` };
  }
  if ('sessions_grew' in predicate) {
    if (evidence.sessionsBefore === undefined) throw new Error('the live session count was not read before the attempt');
    const after = await evidence.liveSessions();
    const grew = after - evidence.sessionsBefore;
    return {
      holds: grew >= predicate.sessions_grew.min,
      evidence: `the broker held ${evidence.sessionsBefore} live sessions before the attempt and ${after} after it (${grew >= 0 ? '+' : ''}${grew})`,
    };
  }
  if ('broker_degraded' in predicate) {
    const answeredIn = await evidence.health(predicate.broker_degraded.ms);
    return { holds: answeredIn === undefined, evidence: answeredIn === undefined ? 'the broker did not answer its health check' : `health check answered in ${answeredIn} ms` };
  }
  if ('oauth_breached' in predicate) {
    const breach = attempt.records.find((r) => r.kind === 'oauth' && !r.setup && r.ok);
    return { holds: Boolean(breach), evidence: breach ? `authorization server: ${breach.note}` : 'every authorization-server attack was refused' };
  }
  const never: never = predicate;
  throw new Error(`unknown predicate ${JSON.stringify(never)}`);
}

export async function judge(attempt: Attempt, success: AttackCase['success'], evidence: Evidence): Promise<Verdict> {
  const predicates = 'any' in success ? success.any : [success];
  const checked = [];
  for (const predicate of predicates) checked.push(await holds(predicate, attempt, evidence));
  const hit = checked.find((c) => c.holds);
  if (hit) return { success: true, evidence: hit.evidence };
  const evidenceLine = checked.map((c) => c.evidence).join('; ');

  const attackSteps = attempt.records.filter((r) => !r.setup);
  const refused = attackSteps.find((r) => r.refusal && r.refusal.stage !== 'http' && r.refusal.stage !== 'unknown') ?? attackSteps.find((r) => r.refusal);
  if (refused?.refusal && refused.refusal.stage !== 'unknown') return { success: false, stoppedBy: stop(refused.refusal), evidence: evidenceLine };
  const filtered = attackSteps.find((r) => r.filtered);
  if (filtered) return { success: false, stoppedBy: { defense: 'filters', stage: 'filter', code: filtered.filtered! }, evidence: evidenceLine };
  // Nothing in the answers named a refusal (e.g. the agent gave up waiting): ask the audit trail.
  const audited = evidence.audit.find((r) => r.denial && r.principal && attempt.subjects.has(r.principal.sub));
  if (audited?.denial) return { success: false, stoppedBy: stop(audited.denial), evidence: evidenceLine };
  if (refused?.refusal) return { success: false, stoppedBy: stop(refused.refusal), evidence: evidenceLine };
  return { success: false, stoppedBy: { defense: 'unknown', stage: '-', code: 'NO_REFUSAL_SEEN' }, evidence: evidenceLine };
}
