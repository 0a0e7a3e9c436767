/**
 * Prometheus metrics for the broker process, in a dedicated prom-client
 * Registry (never the global default, so nothing else in the process can
 * add to or read from it by accident). Served at GET /metrics by the HTTP
 * front door.
 *
 * What is counted:
 * - `bastion_tool_calls_total{tool,outcome,stage,code}`: every tools/call,
 *   by tool, outcome (ok | denied | error) and, for refusals, the Denial's
 *   stage and stable code (empty for ok);
 * - `bastion_requests_refused_total{stage,code}`: requests refused at the
 *   front door before any tool call (Host/Origin, body, token, session);
 * - `bastion_stage_duration_seconds{stage}`: how long each pipeline stage
 *   took (authenticate, resolve, limit, authorize, approve, execute, filter, audit);
 * - `bastion_admission_cohort_size`: requests the HTTP front door let on
 *   together at the end of one event-loop turn (server/cohort.ts);
 * - `bastion_audit_records_total`, `bastion_audit_sync_seconds`: group
 *   commit of the audit log (records written, and one observation per
 *   durable write, whatever the batch size);
 * - `bastion_approvals_pending`, `bastion_tools_quarantined`,
 *   `bastion_sessions_open`: read from the broker when scraped;
 * - `bastion_sandbox_disposals_total{reason}`, `bastion_policy_reloads_total{outcome}`:
 *   counted by the sandbox pool and the policy holder through the functions below;
 * - the process metrics prom-client collects (CPU, memory, event loop lag, GC).
 *
 * The per-call cost is kept to a few hundred nanoseconds: the stage
 * histogram is a typed array per stage (a bucket search and three adds),
 * rendered by prom-client only when scraped, and the calls counter keeps
 * one prom-client child per label set.
 *
 * Tool names come from agents, so the `tool` label is bounded: refusals
 * before authentication are labelled `(unauthenticated)`, unknown tools
 * `(unknown)`, and past MAX_TOOL_LABELS distinct names the rest are `(other)`.
 *
 * @example
 *   import { metrics } from './metrics.ts';
 *   const started = performance.now();
 *   const decision = policy.decide(input);
 *   metrics.stageTime('authorize', started);
 *   metrics.toolCall('demo__read_file', 'ok');
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client';
import type { Stage } from './errors.ts';

/** The stages whose latency is recorded. */
export const TIMED_STAGES = ['authenticate', 'resolve', 'limit', 'authorize', 'approve', 'execute', 'filter', 'audit'] as const;
export type TimedStage = (typeof TIMED_STAGES)[number];

/** Upper bounds in seconds: microsecond stages (policy, limits) up to approvals that wait minutes. */
export const STAGE_BUCKETS = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600,
];

/** Distinct `tool` label values kept before further names are counted as `(other)`. */
export const MAX_TOOL_LABELS = 512;

export const TOOL_UNKNOWN_LABEL = '(unknown)';
export const TOOL_UNAUTHENTICATED_LABEL = '(unauthenticated)';
export const TOOL_OTHER_LABEL = '(other)';

export type CallOutcome = 'ok' | 'denied' | 'error';

/** What the broker reports when scraped; several brokers in one process (tests) add up. */
export interface MetricsSource {
  approvalsPending?: () => Promise<number>;
  toolsQuarantined?: () => Promise<number>;
  sessionsOpen?: () => Promise<number>;
}

/**
 * A histogram with one fixed label (`stage`) whose observe is a typed-array
 * update, rendered in prom-client's histogram shape at scrape time.
 */
class StageHistogram {
  readonly name = 'bastion_stage_duration_seconds';
  readonly help = 'Time spent in each pipeline stage, in seconds.';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  // Per stage: one count per bucket plus +Inf, then sum, then count.
  readonly #cells = TIMED_STAGES.map(() => new Float64Array(STAGE_BUCKETS.length + 3));

  observe(stage: number, seconds: number): void {
    const cells = this.#cells[stage]!;
    let bucket = 0;
    while (bucket < STAGE_BUCKETS.length && seconds > STAGE_BUCKETS[bucket]!) bucket++;
    cells[bucket]!++;
    cells[STAGE_BUCKETS.length + 1]! += seconds;
    cells[STAGE_BUCKETS.length + 2]!++;
  }

  reset(): void {
    for (const cells of this.#cells) cells.fill(0);
  }

  async get() {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    TIMED_STAGES.forEach((stage, index) => {
      const cells = this.#cells[index]!;
      let cumulative = 0;
      STAGE_BUCKETS.forEach((le, bucket) => {
        cumulative += cells[bucket]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { le, stage }, value: cumulative });
      });
      cumulative += cells[STAGE_BUCKETS.length]!;
      values.push({ metricName: `${this.name}_bucket`, labels: { le: '+Inf', stage }, value: cumulative });
      values.push({ metricName: `${this.name}_sum`, labels: { stage }, value: cells[STAGE_BUCKETS.length + 1]! });
      values.push({ metricName: `${this.name}_count`, labels: { stage }, value: cells[STAGE_BUCKETS.length + 2]! });
    });
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}

export class BrokerMetrics {
  readonly registry = new Registry();
  readonly #stageIndex = new Map<string, number>(TIMED_STAGES.map((stage, index) => [stage, index]));
  readonly #stages = new StageHistogram();
  readonly #calls: Counter<'tool' | 'outcome' | 'stage' | 'code'>;
  readonly #callChildren = new Map<string, { inc: () => void }>();
  readonly #toolLabels = new Set<string>();
  readonly #refused: Counter<'stage' | 'code'>;
  readonly #auditRecords: Counter;
  readonly #auditSync: Histogram;
  readonly #cohorts: Histogram;
  readonly #sandboxDisposals: Counter<'reason'>;
  readonly #policyReloads: Counter<'outcome'>;
  readonly #sources = new Set<MetricsSource>();
  #processMetrics = false;

  constructor() {
    const registers = [this.registry];
    this.#calls = new Counter({
      name: 'bastion_tool_calls_total',
      help: 'tools/call requests by tool, outcome (ok, denied, error) and, for refusals, the stage and code that refused.',
      labelNames: ['tool', 'outcome', 'stage', 'code'],
      registers,
    });
    this.#refused = new Counter({
      name: 'bastion_requests_refused_total',
      help: 'Requests refused at the front door before any tool call, by stage and code.',
      labelNames: ['stage', 'code'],
      registers,
    });
    this.registry.registerMetric(this.#stages as unknown as Metric);
    this.#auditRecords = new Counter({ name: 'bastion_audit_records_total', help: 'Audit records written and made durable.', registers });
    this.#auditSync = new Histogram({
      name: 'bastion_audit_sync_seconds',
      help: 'One audit group commit (the durable write of every record waiting, per audit.durability), in seconds.',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.#cohorts = new Histogram({
      name: 'bastion_admission_cohort_size',
      help: 'Requests the HTTP front door admitted together at the end of one event-loop turn (one observation per cohort).',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    });
    this.#sandboxDisposals = new Counter({
      name: 'bastion_sandbox_disposals_total',
      help: 'Plugin isolates disposed (never reused), by reason.',
      labelNames: ['reason'],
      registers,
    });
    this.#policyReloads = new Counter({
      name: 'bastion_policy_reloads_total',
      help: 'Policy reload attempts, by outcome (changed, unchanged, failed).',
      labelNames: ['outcome'],
      registers,
    });
    const sources = this.#sources;
    const sum = async (read: (source: MetricsSource) => (() => Promise<number>) | undefined) => {
      let total = 0;
      for (const source of sources) total += (await read(source)?.().catch(() => 0)) ?? 0;
      return total;
    };
    new Gauge({
      name: 'bastion_approvals_pending',
      help: 'Calls parked and waiting for human approval.',
      registers,
      async collect() {
        this.set(await sum((s) => s.approvalsPending));
      },
    });
    new Gauge({
      name: 'bastion_tools_quarantined',
      help: 'Tools whose descriptor changed since it was pinned, hidden until an operator re-approves them.',
      registers,
      async collect() {
        this.set(await sum((s) => s.toolsQuarantined));
      },
    });
    new Gauge({
      name: 'bastion_sessions_open',
      help: 'MCP agent sessions held in memory, each from its initialize request until it is closed.',
      registers,
      async collect() {
        this.set(await sum((s) => s.sessionsOpen));
      },
    });
  }

  /** Records how long `stage` took, from a `performance.now()` taken when it started. */
  stageTime(stage: TimedStage, startedMs: number): void {
    this.#stages.observe(this.#stageIndex.get(stage)!, (performance.now() - startedMs) / 1000);
  }

  /** Records a stage that ran in pieces, as one observation of `ms` milliseconds. */
  stageMs(stage: TimedStage, ms: number): void {
    this.#stages.observe(this.#stageIndex.get(stage)!, ms / 1000);
  }

  /** Counts one tools/call. `denial` is absent for calls that ran (ok, or an upstream tool error). */
  toolCall(tool: string, outcome: CallOutcome, denial?: { stage: Stage | string; code: string }): void {
    const label = denial?.code === 'BASTION_TOOL_UNKNOWN' ? TOOL_UNKNOWN_LABEL : this.#toolLabel(tool);
    const stage = denial?.stage ?? '';
    const code = denial?.code ?? '';
    const key = `${label}\u0000${outcome}\u0000${stage}\u0000${code}`;
    let child = this.#callChildren.get(key);
    if (!child) {
      child = this.#calls.labels(label, outcome, stage, code);
      this.#callChildren.set(key, child);
    }
    child.inc();
  }

  /** Counts a request refused before it became a tool call (front door, authentication). */
  requestRefused(denial: { stage: Stage | string; code: string }): void {
    this.#refused.labels(denial.stage, denial.code).inc();
  }

  /** Counts one audit group commit of `records` records that took `seconds`. */
  auditCommitted(records: number, seconds: number): void {
    this.#auditRecords.inc(records);
    this.#auditSync.observe(seconds);
  }

  /** Records one admission cohort of `size` requests. */
  cohortAdmitted(size: number): void {
    this.#cohorts.observe(size);
  }

  /** Counts a disposed sandbox isolate. Keep `reason` to a small fixed set (e.g. memory, cpu, wall, crash, error, removed). */
  sandboxDisposed(reason: string): void {
    this.#sandboxDisposals.labels(reason).inc();
  }

  /** Counts a policy reload attempt. */
  policyReloaded(outcome: 'changed' | 'unchanged' | 'failed'): void {
    this.#policyReloads.labels(outcome).inc();
  }

  /** Adds a broker's gauges (approvals, quarantine, sessions); returns the function that removes them. */
  watch(source: MetricsSource): () => void {
    this.#sources.add(source);
    return () => void this.#sources.delete(source);
  }

  /** Starts prom-client's process metrics (once); done by whoever serves /metrics, not at import. */
  collectProcessMetrics(): void {
    if (this.#processMetrics) return;
    this.#processMetrics = true;
    collectDefaultMetrics({ register: this.registry });
  }

  /** The exposition text and its content type, for GET /metrics. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  #toolLabel(tool: string): string {
    if (this.#toolLabels.has(tool)) return tool;
    if (this.#toolLabels.size >= MAX_TOOL_LABELS) return TOOL_OTHER_LABEL;
    this.#toolLabels.add(tool);
    return tool;
  }
}

/** The broker process's metrics. */
export const metrics = new BrokerMetrics();

/**
 * For the sandbox pool: counts one disposed isolate.
 *
 * @example
 *   recordSandboxDisposal('memory');
 */
export function recordSandboxDisposal(reason: string): void {
  metrics.sandboxDisposed(reason);
}

/**
 * For the policy holder: counts one reload attempt.
 *
 * @example
 *   holder.onReload((event) => recordPolicyReload(!event.ok ? 'failed' : event.changed ? 'changed' : 'unchanged'));
 */
export function recordPolicyReload(outcome: 'changed' | 'unchanged' | 'failed'): void {
  metrics.policyReloaded(outcome);
}
