/**
 * End-to-end: an allowed `tools/call` to an upstream over Streamable HTTP,
 * through Bastion, against two baselines measured in the same run on the
 * same machine:
 *
 *   direct   the same SDK client calling the upstream itself;
 *   proxy    the bare pass-through proxy (bench/proxy.ts): the same SDK and
 *            transports with no checks, the floor for any broker;
 *   bastion  `node broker/cli.ts start` with an HTTP connector to the same
 *            upstream, a `{tool: '*'}` token per agent, quotas off;
 *   bastion, one token   (with `sharedToken`) the same Bastion, every agent's
 *            session opened with one token, as one agent service with many
 *            sessions on one credential runs.
 *
 * Each of direct, proxy and Bastion in both protocol eras, in the same
 * interleaved rounds: 2025-11-25 (initialize, then a session) and, as
 * `<name>, 2026-07-28`, agents pinned to 2026-07-28 (no session, every
 * request served on its own). Upstream, proxy and Bastion each serve both
 * eras on one endpoint; the proxy and Bastion both reach the upstream over
 * one 2025-11-25 session (Bastion's connector default), so the rows of one
 * era differ from the other's only at the front door.
 *
 * Each runs in its own process; the load generator (this process) runs N
 * agents in closed loops. Then Bastion's resident memory over many calls.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { generateSigningKey } from '../broker/auth/keys.ts';
import { mintToken } from '../broker/auth/mint.ts';
import { DEMO_PLUGIN_DIR, DEMO_PLUGIN_HASH } from '../broker/config.ts';
import { cpuSecondsOf, spawnListening, type Child } from './lib/children.ts';
import { connectAgents, disconnect, drive, type Agent, type Era, type Run, type Target } from './lib/load.ts';
import { bytes, count, printTable, ratio, summarize, time, type Summary } from './lib/stats.ts';

export interface CallsOptions {
  root: string;
  quick: boolean;
  /** Bastion's audit.durability (default disk: every reply waits for its record's O_DSYNC write). */
  auditDurability?: 'disk' | 'process' | undefined;
  /** Also measure the same Bastion with every agent on one token ('bastion, one token'). */
  sharedToken?: boolean | undefined;
  /** Directory for V8 CPU profiles (node --cpu-prof) of Bastion and the proxy (<dir>/bastion, <dir>/proxy), when profiling. */
  profileDir?: string | undefined;
  /** Concurrency levels for the sweep and seconds per level. */
  levels: { agents: number; seconds: number; rounds: number }[];
  warmupSeconds: number;
  memoryCalls: number;
  memoryWarmupCalls: number;
  memoryAgents: number;
}

export interface TargetResult extends Omit<Summary, 'n'> {
  target: string;
  /** The protocol revision the agents spoke. */
  protocol: Era;
  agents: number;
  calls: number;
  errors: number;
  seconds: number;
  /** CPU time per call of the process in the middle (proxy or Bastion; none for direct), in microseconds. */
  middle_cpu_us_per_call: number | undefined;
  /** The part of it on the thread that runs JavaScript (the rest: GC and compiler helpers, libuv's pool). */
  middle_main_thread_cpu_us_per_call: number | undefined;
  upstream_cpu_us_per_call: number | undefined;
  /** The load generator's own CPU per call (SDK clients). */
  client_cpu_us_per_call: number;
  /** p50 (ms) and calls per second of each interleaved round, in round order: the spread behind the totals. */
  round_p50: number[];
  round_per_second: number[];
  /** Bastion only: requests per admission cohort (bastion_admission_cohort_size), the batching its front door got. */
  mean_cohort_size?: number | undefined;
}

export interface MemoryResult {
  agents: number;
  warmup_calls: number;
  calls: number;
  rss_before_bytes: number | undefined;
  rss_after_bytes: number | undefined;
  rss_peak_bytes: number | undefined;
  growth_percent: number | undefined;
  /** V8 heap in use right after a full collection (the live set), read through the inspector. */
  live_heap_before_bytes: number | undefined;
  live_heap_after_bytes: number | undefined;
  /** RSS and live V8 heap after every tenth of the calls. */
  samples: { calls: number; rss_bytes: number | undefined; live_heap_bytes: number | undefined }[];
}

export interface CallsResult {
  sweep: TargetResult[];
  memory: MemoryResult;
  /** Mean seconds per pipeline stage inside Bastion, from its /metrics, over the whole run. */
  stages: Record<string, { count: number; mean_ms: number }>;
}

const BENCH_ISSUER = 'urn:bastion:bench';
/** The target whose agents all present one token (`sharedToken`). */
export const SHARED_TOKEN_TARGET = 'bastion, one token';
/** The stateless revision; its targets are named `<name>, 2026-07-28`. */
export const MODERN: Era = '2026-07-28';
/** A target's name in an era: `bastion` (2025-11-25) or `bastion, 2026-07-28`. */
export const inEra = (name: string, era: Era): string => (era === MODERN ? `${name}, ${MODERN}` : name);

/**
 * Starts upstream, proxy and Bastion; returns them with the three targets.
 * With `plugins`, Bastion also serves the demo plugin (text-utils) from its
 * sandboxes, as `text-utils__<tool>`.
 */
export async function startProcesses(options: Pick<CallsOptions, 'root' | 'profileDir' | 'auditDurability' | 'sharedToken'> & { plugins?: boolean }, dir: string) {
  const cwd = options.root;
  const logFile = path.join(dir, 'children.log');
  const children: Child[] = [];
  try {
    const upstream = await spawnListening('upstream', ['bench/upstream.ts'], /^listening (\S+)$/m, { cwd, logFile });
    children.push(upstream);
    const profile = (name: string) => (options.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${path.join(options.profileDir, name)}`] : []);
    const proxy = await spawnListening('proxy', ['bench/proxy.ts', '--upstream', upstream.url], /^listening (\S+)$/m, { cwd, logFile, nodeOptions: profile('proxy') });
    children.push(proxy);

    const key = await generateSigningKey('EdDSA');
    const jwksFile = path.join(dir, 'jwks.json');
    await writeFile(jwksFile, JSON.stringify(key.jwks));
    const configFile = path.join(dir, 'bastion.yaml');
    await writeFile(
      configFile,
      YAML.stringify({
        server: { host: '127.0.0.1', port: 0 },
        auth: { issuers: [{ issuer: BENCH_ISSUER, jwks_file: jwksFile }] },
        state_dir: path.join(dir, 'state'),
        audit: { durability: options.auditDurability ?? 'disk' },
        log_level: 'warn',
        limits: { principal: { requests_per_minute: 0, burst: 1, concurrency: 0 }, sessions_per_principal: 1000 },
        // Every agent of a level (one principal with --shared-token) holds its own upstream session.
        // Pinned: the measured upstream leg stays what earlier runs measured, whatever the HTTP default.
        connectors: [{ name: 'bench', transport: 'http', url: upstream.url, timeout: '30s', protocol: '2025-11-25', isolation: { max: 4096, max_per_principal: 4096 } }],
        ...(options.plugins ? { plugins: [{ dir: DEMO_PLUGIN_DIR, hash: DEMO_PLUGIN_HASH }] } : {}),
      }),
    );
    const bastion = await spawnListening('bastion', ['broker/cli.ts', 'start', '--config', configFile], /Bastion is listening at (\S+)/, {
      cwd,
      logFile,
      nodeOptions: profile('bastion'),
      inspectable: true,
    });
    children.push(bastion);

    const tokens = new Map<number, Promise<string>>();
    const token = (agent: number) => {
      let minted = tokens.get(agent);
      if (!minted) {
        minted = mintToken({ key: key.privateJwk, issuer: BENCH_ISSUER, audience: bastion.url, sub: `agent:bench-${agent}`, cap: [{ tool: '*' }], ttlMs: 15 * 60_000 });
        tokens.set(agent, minted);
      }
      return minted;
    };
    const targets: Measured[] = [
      { name: 'direct', url: upstream.url, tool: 'echo', upstream },
      { name: 'proxy', url: proxy.url, tool: 'echo', middle: proxy, upstream },
      { name: 'bastion', url: bastion.url, tool: 'bench__echo', token, middle: bastion, upstream, metrics: true },
      ...(options.sharedToken ? [{ name: SHARED_TOKEN_TARGET, url: bastion.url, tool: 'bench__echo', token: () => token(0), middle: bastion, upstream, metrics: true }] : []),
      { name: inEra('direct', MODERN), protocol: MODERN, url: upstream.url, tool: 'echo', upstream },
      { name: inEra('proxy', MODERN), protocol: MODERN, url: proxy.url, tool: 'echo', middle: proxy, upstream },
      { name: inEra('bastion', MODERN), protocol: MODERN, url: bastion.url, tool: 'bench__echo', token, middle: bastion, upstream, metrics: true },
    ];
    return { upstream, proxy, bastion, targets, children };
  } catch (error) {
    await Promise.all(children.map((c) => c.stop()));
    throw error;
  }
}

/** `metrics`: the target serves Bastion's /metrics, read around each round. */
type Measured = Target & { middle?: Child; upstream: Child; metrics?: boolean };

/**
 * One concurrency level: every target gets `agents` connected agents, then
 * the targets take turns in short rounds (the order rotating each round)
 * until each has run `seconds`. Interleaving spreads whatever else the
 * machine is doing over all three targets alike, so the ratios hold even
 * when the absolute numbers wander.
 */
async function measureLevel(targets: Measured[], agents: number, seconds: number, warmupSeconds: number, rounds: number): Promise<TargetResult[]> {
  const connected = new Map<Measured, Agent[]>();
  try {
    for (const target of targets) connected.set(target, await connectAgents(target, agents));
    for (const target of targets) await drive(connected.get(target)!, target.tool, { durationMs: warmupSeconds * 1000 });
    const totals = new Map(
      targets.map((t) => [t, { latencies: [] as number[], calls: 0, errors: 0, seconds: 0, middle: 0, middleMain: 0, upstream: 0, client: 0, cohortRequests: 0, cohorts: 0, roundP50: [] as number[], roundRate: [] as number[], firstError: undefined as string | undefined }]),
    );
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < targets.length; i++) {
        const target = targets[(i + round) % targets.length]!;
        const total = totals.get(target)!;
        const middleBefore = target.middle ? await cpuSecondsOf(target.middle.pid) : undefined;
        const middleMainBefore = target.middle ? await cpuSecondsOf(target.middle.pid, true) : undefined;
        const upstreamBefore = await cpuSecondsOf(target.upstream.pid);
        const cohortsBefore = target.metrics ? await cohortTotals(target.url) : undefined;
        const client = process.cpuUsage();
        const run: Run = await drive(connected.get(target)!, target.tool, { durationMs: (seconds / rounds) * 1000 });
        const clientUsed = process.cpuUsage(client);
        const middleAfter = target.middle ? await cpuSecondsOf(target.middle.pid) : undefined;
        const middleMainAfter = target.middle ? await cpuSecondsOf(target.middle.pid, true) : undefined;
        const upstreamAfter = await cpuSecondsOf(target.upstream.pid);
        const cohortsAfter = target.metrics ? await cohortTotals(target.url) : undefined;
        if (cohortsBefore && cohortsAfter) {
          total.cohortRequests += cohortsAfter.requests - cohortsBefore.requests;
          total.cohorts += cohortsAfter.cohorts - cohortsBefore.cohorts;
        }
        for (const latency of run.latencies) total.latencies.push(latency);
        total.roundP50.push(summarize(run.latencies, run.seconds).p50);
        total.roundRate.push(run.calls / run.seconds);
        total.calls += run.calls;
        total.errors += run.errors;
        total.firstError ??= run.firstError;
        total.seconds += run.seconds;
        total.middle += (middleAfter ?? 0) - (middleBefore ?? 0);
        total.middleMain += (middleMainAfter ?? 0) - (middleMainBefore ?? 0);
        total.upstream += (upstreamAfter ?? 0) - (upstreamBefore ?? 0);
        total.client += (clientUsed.user + clientUsed.system) / 1e6;
      }
    }
    return targets.map((target) => {
      const total = totals.get(target)!;
      if (total.errors > 0) console.log(`  ! ${target.name}: ${total.errors} failed calls, first: ${total.firstError}`);
      const { n: _n, ...summary } = summarize(total.latencies, total.seconds);
      const perCall = (cpuSeconds: number) => (total.calls === 0 ? undefined : (cpuSeconds / total.calls) * 1e6);
      return {
        target: target.name,
        protocol: target.protocol ?? '2025-11-25',
        agents,
        calls: total.calls,
        errors: total.errors,
        seconds: total.seconds,
        ...summary,
        middle_cpu_us_per_call: target.middle ? perCall(total.middle) : undefined,
        middle_main_thread_cpu_us_per_call: target.middle ? perCall(total.middleMain) : undefined,
        upstream_cpu_us_per_call: perCall(total.upstream),
        client_cpu_us_per_call: perCall(total.client) ?? 0,
        round_p50: total.roundP50,
        round_per_second: total.roundRate,
        ...(total.cohorts > 0 ? { mean_cohort_size: total.cohortRequests / total.cohorts } : {}),
      };
    });
  } finally {
    for (const agentsOf of connected.values()) await disconnect(agentsOf);
  }
}

/** Unlabelled samples from Bastion's /metrics, by name; undefined when it cannot be read. */
async function metricSamples(bastionUrl: string, names: string[]): Promise<Map<string, number> | undefined> {
  try {
    const text = await (await fetch(new URL('/metrics', bastionUrl))).text();
    const found = new Map<string, number>();
    for (const name of names) {
      const value = new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1];
      if (value !== undefined) found.set(name, Number(value));
    }
    return found;
  } catch {
    return undefined;
  }
}

/** Requests admitted and admission cohorts so far (bastion_admission_cohort_size). */
async function cohortTotals(bastionUrl: string): Promise<{ requests: number; cohorts: number } | undefined> {
  const samples = await metricSamples(bastionUrl, ['bastion_admission_cohort_size_sum', 'bastion_admission_cohort_size_count']);
  const requests = samples?.get('bastion_admission_cohort_size_sum');
  const cohorts = samples?.get('bastion_admission_cohort_size_count');
  return requests === undefined || cohorts === undefined ? undefined : { requests, cohorts };
}

async function memory(bastion: Child, target: Target, options: CallsOptions): Promise<MemoryResult> {
  const agents = await connectAgents(target, options.memoryAgents);
  try {
    await drive(agents, target.tool, { calls: options.memoryWarmupCalls });
    // The live heap first: opening the inspector and a full collection both move RSS a little.
    const heapBefore = await bastion.liveHeap();
    const before = await bastion.rss();
    const samples: MemoryResult['samples'] = [{ calls: 0, rss_bytes: before, live_heap_bytes: heapBefore }];
    const step = Math.ceil(options.memoryCalls / 10);
    let done = 0;
    let errors = 0;
    while (done < options.memoryCalls) {
      const run = await drive(agents, target.tool, { calls: Math.min(step, options.memoryCalls - done) });
      done += run.calls;
      errors += run.errors;
      if (run.calls === 0) break;
      const liveHeap = await bastion.liveHeap();
      samples.push({ calls: done, rss_bytes: await bastion.rss(), live_heap_bytes: liveHeap });
    }
    if (errors > 0) console.log(`  ! memory run: ${errors} failed calls`);
    const after = samples[samples.length - 1]?.rss_bytes;
    const heapAfter = samples[samples.length - 1]?.live_heap_bytes;
    const known = samples.map((s) => s.rss_bytes).filter((v): v is number => v !== undefined);
    return {
      agents: options.memoryAgents,
      warmup_calls: options.memoryWarmupCalls,
      calls: done,
      rss_before_bytes: before,
      rss_after_bytes: after,
      rss_peak_bytes: known.length ? Math.max(...known) : undefined,
      growth_percent: before && after ? ((after - before) / before) * 100 : undefined,
      live_heap_before_bytes: heapBefore,
      live_heap_after_bytes: heapAfter,
      samples,
    };
  } finally {
    await disconnect(agents);
  }
}

/** Mean latency per stage from Bastion's Prometheus histograms (bastion_stage_duration_seconds). */
async function stageMeans(bastionUrl: string): Promise<CallsResult['stages']> {
  const stages: CallsResult['stages'] = {};
  try {
    const text = await (await fetch(new URL('/metrics', bastionUrl))).text();
    const sums = new Map<string, number>();
    for (const match of text.matchAll(/^bastion_stage_duration_seconds_(sum|count)\{stage="([a-z]+)"\} (\S+)$/gm)) {
      const [, kind, stage, value] = match as unknown as [string, 'sum' | 'count', string, string];
      if (kind === 'sum') sums.set(stage, Number(value));
      else stages[stage] = { count: Number(value), mean_ms: 0 };
    }
    for (const [stage, entry] of Object.entries(stages)) entry.mean_ms = entry.count > 0 ? ((sums.get(stage) ?? 0) / entry.count) * 1000 : 0;
  } catch {
    // A broker without /metrics: the table is simply left out.
  }
  return stages;
}

/** Each of direct, proxy and Bastion in 2026-07-28 against itself in 2025-11-25: p50 ratio (round spread) and throughput ratio. */
function eraComparison(rows: TargetResult[]): string {
  const parts: string[] = [];
  for (const name of ['direct', 'proxy', 'bastion']) {
    const legacy = rows.find((r) => r.target === name);
    const modern = rows.find((r) => r.target === inEra(name, MODERN));
    if (!legacy || !modern) continue;
    parts.push(`${name} ${withSpread(ratio(modern.p50, legacy.p50), modern.round_p50, legacy.round_p50)}; ${ratio(modern.perSecond, legacy.perSecond)}`);
  }
  return parts.join(' | ');
}

/** A ratio, with the lowest and highest of the same ratio taken round by round (each pair ran in the same round, seconds apart). */
function withSpread(overall: string, rounds: number[], baselineRounds: number[]): string {
  const ratios = rounds.map((value, i) => value / baselineRounds[i]!).filter(Number.isFinite);
  if (ratios.length < 2 || rounds === baselineRounds) return overall;
  return `${overall} (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})`;
}

export async function runCalls(options: CallsOptions): Promise<CallsResult> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bastion-bench-'));
  if (options.profileDir) await mkdir(options.profileDir, { recursive: true });
  const { bastion, targets, children } = await startProcesses(options, dir);
  try {
    const sweep: TargetResult[] = [];
    for (const level of options.levels) {
      const rows = await measureLevel(targets, level.agents, level.seconds, options.warmupSeconds, level.rounds);
      sweep.push(...rows);
      // Each row against the direct call and the proxy of its own era.
      const baseline = (r: TargetResult, name: string) => rows.find((b) => b.target === inEra(name, r.protocol))!;
      console.log(`${level.agents} concurrent agent${level.agents === 1 ? '' : 's'}, ${level.seconds} s each in ${level.rounds} interleaved rounds (allowed tools/call, Streamable HTTP; ratios against the proxy of the same era)`);
      printTable(
        ['target', 'p50', 'p99', 'calls/s', 'p50 vs proxy', 'calls/s vs proxy', 'p50 − direct', 'p99 − direct', 'CPU/call (middle)', 'of it JS thread', 'CPU/call (upstream)', 'CPU/call (agents)', 'cohort (mean)'],
        rows.map((r) => {
          const direct = baseline(r, 'direct');
          const proxy = baseline(r, 'proxy');
          return [
          r.target,
          time(r.p50),
          time(r.p99),
          count(r.perSecond),
          withSpread(ratio(r.p50, proxy.p50), r.round_p50, proxy.round_p50),
          withSpread(ratio(r.perSecond, proxy.perSecond), r.round_per_second, proxy.round_per_second),
          r === direct ? '' : time(r.p50 - direct.p50),
          r === direct ? '' : time(r.p99 - direct.p99),
          r.middle_cpu_us_per_call === undefined ? '' : time(r.middle_cpu_us_per_call / 1000),
          r.middle_main_thread_cpu_us_per_call === undefined ? '' : time(r.middle_main_thread_cpu_us_per_call / 1000),
          r.upstream_cpu_us_per_call === undefined ? '' : time(r.upstream_cpu_us_per_call / 1000),
          time(r.client_cpu_us_per_call / 1000),
          r.mean_cohort_size === undefined ? '' : r.mean_cohort_size.toFixed(1),
          ];
        }),
      );
      console.log(`${MODERN} against 2025-11-25, same rounds (p50; calls/s): ${eraComparison(rows)}\n`);
    }

    const bastionTarget = targets.find((t) => t.name === 'bastion')!;
    const mem = await memory(bastion, bastionTarget, options);
    console.log(`Bastion resident memory over ${count(mem.calls)} calls (${mem.agents} agents, after ${count(mem.warmup_calls)} warm-up calls)`);
    const pct = (a: number | undefined, b: number | undefined) => (a && b ? `${(((b - a) / a) * 100).toFixed(1)} %` : '–');
    printTable(
      ['', 'before', 'after', 'peak', 'growth'],
      [
        ['resident (RSS)', bytes(mem.rss_before_bytes), bytes(mem.rss_after_bytes), bytes(mem.rss_peak_bytes), pct(mem.rss_before_bytes, mem.rss_after_bytes)],
        ['V8 heap, live (after a full GC)', bytes(mem.live_heap_before_bytes), bytes(mem.live_heap_after_bytes), '', pct(mem.live_heap_before_bytes, mem.live_heap_after_bytes)],
      ],
    );
    console.log(`RSS after each tenth: ${mem.samples.map((s) => bytes(s.rss_bytes)).join(', ')}`);
    console.log(`live heap after each tenth: ${mem.samples.map((s) => bytes(s.live_heap_bytes)).join(', ')}\n`);

    const stages = await stageMeans(bastion.url);
    if (Object.keys(stages).length > 0) {
      console.log('Inside Bastion: mean time per stage over the whole run (from /metrics)');
      printTable(
        ['stage', 'mean', 'observations'],
        Object.entries(stages).map(([stage, s]) => [stage, time(s.mean_ms), count(s.count)]),
      );
    }
    return { sweep, memory: mem, stages };
  } finally {
    await Promise.all(children.reverse().map((c) => c.stop()));
    await rm(dir, { recursive: true, force: true });
  }
}
