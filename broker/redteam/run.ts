/**
 * A red-team campaign: the corpus against a fresh broker per configuration
 * (everything on, then each ablatable defense switched off in turn), with
 * benign calls timed in each, and the results folded into the matrix
 * configuration × attack class → success rate, with what stopped each
 * attempt and the findings the ablation supports.
 *
 * @example
 *   const result = await runCampaign({ corpus, base: {}, quick: true, log: console.error });
 *   console.log(result.matrix.forged_token.full); // { attempts: 6, successes: 0, ... }
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AuditRecord } from '../audit/chain.ts';
import { callThrough, connectAgent, type ConnectedAgent } from './agent.ts';
import { ABLATABLE, type AblatableDefense, type AttackCase, type AttackClass, type Corpus, type Defense } from './corpus.ts';
import { Attempt, NotApplicable, signInApprover, type ApproverSession, type StepRecord } from './steps.ts';
import { createRedteamIssuer, launchTarget, type PluginSpec, type RedteamIssuer, type Target } from './target.ts';
import { startRedteamIdp, type RedteamIdp } from './idp.ts';
import { judge, type StopReason } from './verdict.ts';

export interface Configuration {
  /** "full", or "no-<defense>". */
  name: string;
  defensesOff: AblatableDefense[];
}

/** Why a defense has no ablation run in this build. */
export const NOT_ABLATABLE_HERE: Partial<Record<AblatableDefense, string>> = {
  sandbox_limits:
    "switching it off only lifts the operator's caps on plugin limits, while the corpus's plugins declare small limits in their own manifests (32 MB, 200 ms CPU, 1 s wall), which still bind; and the escape cases are stopped by the isolate itself, which has no switch. The plugin cases run in every other configuration",
};

/** Features this build has; a case requiring another one is "not applicable". */
export const BUILD_FEATURES: ReadonlySet<string> = new Set<string>(['plugins']);

/** The plugins the corpus's applicable cases install (names are unique in a corpus; see loadCorpus). */
export function corpusPlugins(corpus: Corpus): PluginSpec[] {
  const plugins = new Map<string, PluginSpec>();
  for (const attackCase of corpus.classes.flatMap((c) => c.cases)) {
    if (missingFeature(attackCase)) continue;
    for (const step of attackCase.steps) {
      if (!('install_plugin' in step)) continue;
      const { name, manifest_name: manifestName, tools, code, capabilities, grants, wall_ms: wallMs } = step.install_plugin;
      plugins.set(name, { name, tools, code, capabilities, grants, ...(manifestName ? { manifestName } : {}), ...(wallMs ? { wallMs } : {}) });
    }
  }
  return [...plugins.values()];
}

export function defaultConfigurations(): Configuration[] {
  return [{ name: 'full', defensesOff: [] }, ...ABLATABLE.filter((d) => !NOT_ABLATABLE_HERE[d]).map((d) => ({ name: `no-${d}`, defensesOff: [d] }))];
}

export interface AttemptResult {
  case: string;
  class: string;
  repetition: number;
  success: boolean;
  stopped_by?: StopReason;
  evidence: string;
  steps: StepRecord[];
  /** The harness failed (not the attack): the attempt proves nothing either way. */
  error?: string;
  ms: number;
}

export interface LatencyStats {
  calls: number;
  p50_ms: number;
  p95_ms: number;
  /** Standard error of the p50 (from the interquartile range), for telling a cost from noise. */
  p50_se_ms: number;
  /** The broker's own time per call (audit latency_ms: resolve to audit, without authentication, network and client). */
  broker_p50_ms: number | null;
  broker_p50_se_ms: number | null;
}

export interface ConfigurationResult {
  name: string;
  defenses_off: AblatableDefense[];
  benign: LatencyStats | null;
  /** Median time to refuse, by the stage that refused (audit latency_ms of refused tool calls). */
  refusal_p50_ms_by_stage: Record<string, number>;
  attempts: AttemptResult[];
  /** The broker could not be started or the run broke off. */
  error?: string;
  ms: number;
}

export interface ClassCell {
  applicable: boolean;
  attempts: number;
  successes: number;
  /** successes / attempts, or null when nothing was attempted. */
  rate: number | null;
  /** "defense (CODE)" → attempts it stopped. */
  stopped_by: Record<string, number>;
  errors: number;
}

export interface ClassInfo {
  id: string;
  title: string;
  threat: string;
  defended_by: Defense[];
  cases: number;
  applicable: boolean;
  not_applicable_reason?: string;
}

export interface CampaignResult {
  generated_at: string;
  quick: boolean;
  repetitions: number;
  classes: ClassInfo[];
  configurations: ConfigurationResult[];
  /** class id → configuration name → cell. */
  matrix: Record<string, Record<string, ClassCell>>;
  findings: string[];
  /** Some attack worked against the full configuration. */
  breached: boolean;
}

export interface CampaignOptions {
  corpus: Corpus;
  /** The operator's configuration document (raw YAML/JSON object), or {} for the embedded default. */
  base: Record<string, unknown>;
  quick: boolean;
  configurations?: Configuration[];
  repetitions?: number;
  benignCalls?: number;
  /** Brokers attacked at the same time (a wave); default 3. */
  parallel?: number;
  log?: (line: string) => void;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

const round = (ms: number) => Math.round(ms * 100) / 100;

/** Standard error of a sample median, with σ estimated robustly from the interquartile range. */
export function medianStandardError(values: number[]): number {
  if (values.length < 4) return NaN;
  const sigma = (percentile(values, 75) - percentile(values, 25)) / 1.349;
  return 1.2533 * (sigma / Math.sqrt(values.length));
}

/** Whether a success condition judges by the broker's live session count. */
function watchesSessions(success: AttackCase['success']): boolean {
  return ('any' in success ? success.any : [success]).some((predicate) => 'sessions_grew' in predicate);
}

function missingFeature(attackCase: AttackCase): string | undefined {
  return attackCase.requires.find((feature) => !BUILD_FEATURES.has(feature));
}

function notApplicableReason(feature: string): string {
  return `not applicable in this build: needs ${feature}`;
}

/**
 * A well-behaved agent calling rec__echo with a token that allows it, timed
 * end to end. It switches to a fresh principal before any quota could bite
 * (default burst 60), so the benign run measures latency, never refusals.
 */
class BenignProbe {
  readonly samples: number[] = [];
  readonly subjects = new Set<string>();
  private readonly target: Target;
  private agent: ConnectedAgent | undefined;
  private used = 0;
  private principals = 0;
  private readonly perPrincipal: number;

  constructor(target: Target) {
    this.target = target;
    this.perPrincipal = Math.max(1, Math.min(40, target.config.limits.principal.burst - 5));
  }

  private async next(prefix: string): Promise<ConnectedAgent> {
    if (this.agent && this.used < this.perPrincipal) return this.agent;
    await this.agent?.close();
    const sub = `agent:rt-${prefix}-${this.principals++}`;
    const agent = await connectAgent(this.target.url, await this.target.mint({ sub, cap: [{ tool: 'rec__echo' }], ttlMs: 300_000 }));
    if (!agent.client) throw new Error(`benign agent refused: ${JSON.stringify(agent.refusal ?? agent.error)}`);
    if (prefix === 'benign') this.subjects.add(sub);
    this.agent = agent;
    this.used = 0;
    return agent;
  }

  /** Calls that warm both sides up (connections, JIT) and are not measured. */
  async warmUp(calls: number): Promise<void> {
    for (let i = 0; i < calls; i++) {
      await callThrough(await this.next('warmup'), 'rec__echo', { text: 'warm-up' });
      this.used++;
    }
    await this.agent?.close();
    this.agent = undefined;
  }

  async measureOne(): Promise<void> {
    const agent = await this.next('benign');
    const started = performance.now();
    const outcome = await callThrough(agent, 'rec__echo', { text: `benign ${this.samples.length}` });
    const elapsed = performance.now() - started;
    this.used++;
    if (!outcome.ok) throw new Error(`benign call refused: ${JSON.stringify(outcome.refusal ?? outcome.error)}`);
    this.samples.push(elapsed);
  }

  async close(): Promise<void> {
    await this.agent?.close();
  }
}

async function runAttempt(target: Target, observer: ApproverSession | undefined, attackClass: AttackClass, attackCase: AttackCase, repetition: number, quick: boolean): Promise<AttemptResult> {
  const started = performance.now();
  const attempt = new Attempt(target, observer, { maxWaitMs: quick ? 1_200 : 3_000 });
  const upstreamMark = await target.upstreamMark();
  const auditMark = (await target.auditRecords()).length;
  const base = { case: attackCase.id, class: attackClass.id, repetition };
  let sessionsBefore: number | undefined;
  try {
    // Read only for the cases that judge by it: a broker whose /metrics cannot be read fails those alone.
    if (watchesSessions(attackCase.success)) sessionsBefore = await target.liveSessions();
    for (const step of attackCase.steps) await attempt.run(step);
  } catch (error) {
    await attempt.close().catch(() => undefined);
    const message = error instanceof NotApplicable ? `not applicable: ${error.message}` : ((error as Error).stack ?? String(error));
    return { ...base, success: false, evidence: '', steps: attempt.records, error: message, ms: Math.round(performance.now() - started) };
  }
  await attempt.close();
  // A cancelled parked call is withdrawn asynchronously; let the broker settle before looking upstream.
  if (attempt.startedCalls) await sleep(150);
  let verdict: Awaited<ReturnType<typeof judge>>;
  try {
    verdict = await judge(attempt, attackCase.success, {
      calls: await target.upstreamCalls(upstreamMark),
      audit: (await target.auditRecords()).slice(auditMark),
      config: target.config,
      health: async (timeoutMs) => {
        const t0 = performance.now();
        try {
          const response = await fetch(`${target.origin}/healthz`, { signal: AbortSignal.timeout(timeoutMs) });
          return response.ok ? Math.round(performance.now() - t0) : undefined;
        } catch {
          return undefined;
        }
      },
      sessionsBefore,
      liveSessions: () => target.liveSessions(),
    });
  } catch (error) {
    return { ...base, success: false, evidence: '', steps: attempt.records, error: (error as Error).message, ms: Math.round(performance.now() - started) };
  }
  return {
    ...base,
    success: verdict.success,
    ...(verdict.stoppedBy ? { stopped_by: verdict.stoppedBy } : {}),
    evidence: verdict.evidence,
    steps: attempt.records,
    ms: Math.round(performance.now() - started),
  };
}

interface RunContext {
  corpus: Corpus;
  base: Record<string, unknown>;
  workDir: string;
  issuer: RedteamIssuer;
  idp: RedteamIdp;
  quick: boolean;
  repetitions: number;
  benignCalls: number;
  log: (line: string) => void;
}

/** One configuration's broker and results, through the phases of a wave. */
interface Run {
  configuration: Configuration;
  result: ConfigurationResult;
  started: number;
  target?: Target;
  observer?: ApproverSession;
  auditAfterBenign: number;
  stopped?: boolean;
}

function fail(run: Run, error: unknown, log: RunContext['log']): void {
  run.result.error = (error as Error).message;
  log(`[${run.configuration.name}] FAILED: ${run.result.error}${run.target ? `\n${run.target.stderr().slice(-2000)}` : ''}`);
}

async function launch(configuration: Configuration, context: RunContext): Promise<Run> {
  const run: Run = {
    configuration,
    result: { name: configuration.name, defenses_off: configuration.defensesOff, benign: null, refusal_p50_ms_by_stage: {}, attempts: [], ms: 0 },
    started: performance.now(),
    auditAfterBenign: 0,
  };
  const needsPoisoned = JSON.stringify(context.corpus.classes.flatMap((c) => c.cases.filter((k) => !missingFeature(k)))).includes('poisoned__');
  try {
    run.target = await launchTarget({ workDir: context.workDir, name: configuration.name, defensesOff: configuration.defensesOff, issuer: context.issuer, idp: context.idp, base: context.base, poisoned: needsPoisoned, plugins: corpusPlugins(context.corpus) });
    context.log(`[${configuration.name}] broker up at ${run.target.url}`);
    const observer = await signInApprover(run.target, 'approver:rt-observer');
    if ('cookie' in observer) run.observer = observer;
  } catch (error) {
    fail(run, error, context.log);
  }
  return run;
}

/**
 * Benign latency for a wave: every broker warmed up, then the measured calls
 * taken round-robin across the brokers, one at a time, so drift on the
 * machine (or in this process) lands on every configuration alike.
 */
async function benignPhase(runs: Run[], context: RunContext): Promise<void> {
  const probes = new Map<Run, BenignProbe>();
  for (const run of runs) {
    if (!run.target || run.result.error) continue;
    const probe = new BenignProbe(run.target);
    try {
      await probe.warmUp(20);
      probes.set(run, probe);
    } catch (error) {
      fail(run, error, context.log);
    }
  }
  for (let i = 0; i < context.benignCalls; i++) {
    for (const [run, probe] of probes) {
      try {
        await probe.measureOne();
      } catch (error) {
        fail(run, error, context.log);
        probes.delete(run);
      }
    }
  }
  for (const [run, probe] of probes) {
    await probe.close();
    const audit = await run.target!.auditRecords();
    const brokerTimes = audit
      .filter((r) => r.event === 'tools/call' && r.outcome === 'ok' && r.principal && probe.subjects.has(r.principal.sub) && typeof r.latency_ms === 'number')
      .map((r) => r.latency_ms!);
    run.result.benign = {
      calls: probe.samples.length,
      p50_ms: round(percentile(probe.samples, 50)),
      p95_ms: round(percentile(probe.samples, 95)),
      p50_se_ms: round(medianStandardError(probe.samples)),
      broker_p50_ms: brokerTimes.length ? round(percentile(brokerTimes, 50)) : null,
      broker_p50_se_ms: brokerTimes.length >= 4 ? round(medianStandardError(brokerTimes)) : null,
    };
    run.auditAfterBenign = audit.length;
  }
}

async function attackPhase(run: Run, context: RunContext): Promise<void> {
  const target = run.target;
  if (!target || run.result.error) return;
  const { result, configuration } = run;
  try {
    for (const attackClass of context.corpus.classes) {
      for (const attackCase of attackClass.cases) {
        if (missingFeature(attackCase)) continue;
        for (let repetition = 1; repetition <= context.repetitions; repetition++) {
          const attempt = await runAttempt(target, run.observer, attackClass, attackCase, repetition, context.quick);
          result.attempts.push(attempt);
          if (attempt.error) context.log(`[${configuration.name}] ${attackCase.id}#${repetition}: harness error: ${attempt.error.split('\n')[0]}`);
        }
      }
    }
    const refusals = (await target.auditRecords()).slice(run.auditAfterBenign).filter((r: AuditRecord) => r.event === 'tools/call' && r.denial && typeof r.latency_ms === 'number');
    const byStage = new Map<string, number[]>();
    for (const r of refusals) byStage.set(r.denial!.stage, [...(byStage.get(r.denial!.stage) ?? []), r.latency_ms!]);
    result.refusal_p50_ms_by_stage = Object.fromEntries([...byStage].map(([stage, values]) => [stage, round(percentile(values, 50))]));
    const successes = result.attempts.filter((a) => a.success).length;
    context.log(`[${configuration.name}] ${result.attempts.length} attempts, ${successes} succeeded, benign p50 ${result.benign?.p50_ms} ms`);
  } catch (error) {
    fail(run, error, context.log);
  }
}

async function stop(run: Run): Promise<void> {
  if (run.stopped) return;
  run.stopped = true;
  await run.target?.stop().catch(() => undefined);
  run.result.ms = Math.round(performance.now() - run.started);
}

/**
 * Every configuration's broker is started first, so the benign calls can be
 * timed round-robin across all of them in one quiet phase (no attack traffic,
 * the same machine state for each); then the attacks run in waves of
 * `parallel` brokers, each broker stopped when its wave ends.
 */
async function runAll(configurations: Configuration[], context: RunContext, parallel: number): Promise<ConfigurationResult[]> {
  const runs: Run[] = [];
  try {
    for (let i = 0; i < configurations.length; i += parallel) runs.push(...(await Promise.all(configurations.slice(i, i + parallel).map((c) => launch(c, context)))));
    await benignPhase(runs, context);
    for (let i = 0; i < runs.length; i += parallel) {
      const wave = runs.slice(i, i + parallel);
      await Promise.all(wave.map((run) => attackPhase(run, context)));
      await Promise.all(wave.map(stop));
    }
  } finally {
    await Promise.all(runs.map(stop));
  }
  return runs.map((run) => run.result);
}

const stopLabel = (stop: StopReason | undefined) => (stop ? `${stop.defense} (${stop.code})` : 'unknown');

function matrixOf(corpus: Corpus, configurations: ConfigurationResult[]): CampaignResult['matrix'] {
  const matrix: CampaignResult['matrix'] = {};
  for (const attackClass of corpus.classes) {
    const row: Record<string, ClassCell> = {};
    const applicable = attackClass.cases.some((c) => !missingFeature(c));
    for (const configuration of configurations) {
      const attempts = configuration.attempts.filter((a) => a.class === attackClass.id);
      const counted = attempts.filter((a) => !a.error);
      const stopped: Record<string, number> = {};
      for (const a of counted) if (!a.success) stopped[stopLabel(a.stopped_by)] = (stopped[stopLabel(a.stopped_by)] ?? 0) + 1;
      const successes = counted.filter((a) => a.success).length;
      row[configuration.name] = {
        applicable,
        attempts: counted.length,
        successes,
        rate: counted.length ? successes / counted.length : null,
        stopped_by: stopped,
        errors: attempts.length - counted.length,
      };
    }
    matrix[attackClass.id] = row;
  }
  return matrix;
}

const pct = (rate: number | null) => (rate === null ? 'n/a' : `${Math.round(rate * 100)}%`);

/** What the ablation shows: which layer stops which class, layers whose removal changes nothing, breaches. */
export function findingsOf(corpus: Corpus, configurations: ConfigurationResult[], matrix: CampaignResult['matrix']): string[] {
  const findings: string[] = [];
  const full = configurations.find((c) => c.defenses_off.length === 0);
  for (const configuration of configurations) if (configuration.error) findings.push(`Configuration ${configuration.name} did not complete: ${configuration.error}`);
  if (full && !full.error) {
    for (const attackClass of corpus.classes) {
      const cell = matrix[attackClass.id]?.[full.name];
      if (cell && cell.successes > 0) findings.push(`BREACH: ${attackClass.id} succeeded ${cell.successes}/${cell.attempts} times against the full configuration.`);
      if (cell && cell.errors > 0) findings.push(`${attackClass.id}: ${cell.errors} attempt(s) against the full configuration failed in the harness and prove nothing.`);
    }
  }
  for (const configuration of configurations) {
    if (!full || configuration === full || configuration.error || full.error) continue;
    const opened = corpus.classes
      .map((c) => ({ c, before: matrix[c.id]?.[full.name]?.rate ?? null, after: matrix[c.id]?.[configuration.name]?.rate ?? null }))
      .filter(({ before, after }) => before !== null && after !== null && after > before);
    const layer = configuration.defenses_off.join('+');
    if (opened.length === 0) {
      findings.push(`FINDING: switching off ${layer} changed nothing: no attack class in this corpus got through without it (another layer covers it, or the corpus has no attack it alone stops).`);
    } else {
      findings.push(`Without ${layer}: ${opened.map(({ c, before, after }) => `${c.id} ${pct(before)} → ${pct(after)}`).join(', ')}.`);
    }
    for (const attackClass of corpus.classes) {
      for (const defense of configuration.defenses_off) {
        if (!attackClass.defendedBy.includes(defense)) continue;
        const cell = matrix[attackClass.id]?.[configuration.name];
        if (!cell?.applicable || cell.rate === null || opened.some((o) => o.c === attackClass)) continue;
        const others = Object.keys(cell.stopped_by).join(', ');
        findings.push(`FINDING: ${attackClass.id} names ${defense} as a defense, but switching ${defense} off alone let none of it through (stopped by: ${others || 'nothing recorded'}).`);
      }
    }
  }
  for (const attackClass of corpus.classes) {
    const always = attackClass.defendedBy.filter((d) => !(ABLATABLE as readonly string[]).includes(d));
    const rates = configurations.filter((c) => !c.error).map((c) => matrix[attackClass.id]?.[c.name]?.rate);
    if (always.length > 0 && rates.length > 0 && rates.every((r) => r === 0) && attackClass.defendedBy.every((d) => always.includes(d))) {
      findings.push(`${attackClass.id} was stopped in every configuration by ${always.join(', ')}, which has no ablation switch.`);
    }
  }
  for (const attackClass of corpus.classes) {
    const missing = attackClass.cases.map(missingFeature).find(Boolean);
    if (missing && attackClass.cases.every(missingFeature)) findings.push(`${attackClass.id}: ${notApplicableReason(missing)} (${attackClass.cases.length} cases kept in the corpus).`);
  }
  for (const [defense, reason] of Object.entries(NOT_ABLATABLE_HERE)) findings.push(`No ablation run for ${defense}: ${reason}.`);
  if (full?.benign) {
    for (const configuration of configurations) {
      if (configuration === full || !configuration.benign) continue;
      const a = full.benign;
      const b = configuration.benign;
      // Two standard errors of the difference: smaller differences are not a measured cost.
      const describe = (delta: number, seA: number | null, seB: number | null) => {
        const margin = seA !== null && seB !== null && Number.isFinite(seA) && Number.isFinite(seB) ? 2 * Math.hypot(seA, seB) : NaN;
        const text = `${round(delta)} ms`;
        return Number.isFinite(margin) ? `${text} ± ${round(margin)}${Math.abs(delta) <= margin ? ' (within noise)' : ''}` : text;
      };
      const inside = a.broker_p50_ms !== null && b.broker_p50_ms !== null ? `, ${describe(a.broker_p50_ms - b.broker_p50_ms, a.broker_p50_se_ms, b.broker_p50_se_ms)} inside the broker` : '';
      findings.push(`Latency cost of ${configuration.defenses_off.join('+')} on a benign call (p50, full − without): ${describe(a.p50_ms - b.p50_ms, a.p50_se_ms, b.p50_se_ms)} end to end${inside}.`);
    }
  }
  return findings;
}

export async function runCampaign(options: CampaignOptions): Promise<CampaignResult> {
  const log = options.log ?? (() => undefined);
  const configurations = options.configurations ?? defaultConfigurations();
  const repetitions = options.repetitions ?? (options.quick ? 1 : 3);
  const benignCalls = options.benignCalls ?? (options.quick ? 30 : 100);
  const workDir = await mkdtemp(path.join(tmpdir(), 'bastion-redteam-'));
  const idp = await startRedteamIdp();
  try {
    const issuer = await createRedteamIssuer(workDir);
    const context: RunContext = { corpus: options.corpus, base: options.base, workDir, issuer, idp, quick: options.quick, repetitions, benignCalls, log };
    const results = await runAll(configurations, context, Math.max(1, options.parallel ?? 3));

    const classes: ClassInfo[] = options.corpus.classes.map((c) => {
      const missing = c.cases.map(missingFeature).find(Boolean);
      const applicable = c.cases.some((k) => !missingFeature(k));
      return {
        id: c.id,
        title: c.title,
        threat: c.threat,
        defended_by: c.defendedBy,
        cases: c.cases.length,
        applicable,
        ...(!applicable && missing ? { not_applicable_reason: notApplicableReason(missing) } : {}),
      };
    });
    const matrix = matrixOf(options.corpus, results);
    const full = results.find((c) => c.defenses_off.length === 0);
    const breached = full ? Object.values(matrix).some((row) => (row[full.name]?.successes ?? 0) > 0) || Boolean(full.error) : false;
    return {
      generated_at: new Date().toISOString(),
      quick: options.quick,
      repetitions,
      classes,
      configurations: results,
      matrix,
      findings: findingsOf(options.corpus, results, matrix),
      breached,
    };
  } finally {
    await idp.close();
    await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
  }
}
