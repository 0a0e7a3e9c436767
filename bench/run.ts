/**
 * Bastion's benchmarks: plain scripts, not tests. Nothing here fails on a
 * slow number; the results are printed, compared with the targets, and
 * written to test-artifacts/bench.json.
 *
 * Usage: see USAGE below (node bench/run.ts --help).
 *
 * Sections, in order:
 *   micro    each per-call check alone (bench/micro.ts)
 *   calls    allowed tools/call through Bastion against the direct call and the
 *            bare proxy, each in both protocol eras (2025-11-25 sessions and
 *            2026-07-28 per request), at 1, 16, 32 and 64 concurrent agents (with
 *            --shared-token also with every agent on one token), then Bastion's
 *            memory over many calls (bench/calls.ts)
 *   sandbox  plugin calls in the isolated-vm sandbox (warm, cold) vs the same function in-process
 *   flows    flow control's cost per call and memory per flow (bench/flows.ts)
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runCalls, type CallsResult } from './calls.ts';
import { describeMachine, machineLine } from './lib/machine.ts';
import { printTable } from './lib/stats.ts';
import { runMicro, type MicroResult } from './micro.ts';
import { runFlows } from './flows.ts';
import { runSandbox, type SandboxBenchResult } from './sandbox.ts';
import { evaluateTargets, type TargetCheck } from './targets.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const USAGE = `Usage:
  node bench/run.ts            full run: 30 s per throughput level, 100,000 calls for memory (about 13 minutes)
  node bench/run.ts --quick    CI: 2 s per level, 5,000 calls for memory (about a minute and a half)
  node bench/run.ts --only micro|calls|sandbox|flows
  node bench/run.ts --agents 1,16  only these concurrency levels in the calls section
  node bench/run.ts --seconds 8    seconds per level and target (default: 30, --quick 2)
  node bench/run.ts --audit-durability process   run Bastion with audit.durability: process (default disk)
  node bench/run.ts --shared-token   calls section: also a row "bastion, one token", the same Bastion with
                                     every agent's session on one token (one agent service, many sessions)
  node bench/run.ts --profile  also write V8 CPU profiles of Bastion and the proxy to test-artifacts/profiles/{bastion,proxy}/
                               (read it with: node bench/lib/profile-summary.ts FILE.cpuprofile)
`;

/** A bad command line: the reason and the usage, exit 2. */
function usageError(reason: string): never {
  process.stderr.write(`bench: ${reason}\n\n${USAGE}`);
  process.exit(2);
}

const { values } = (() => {
  try {
    return parseArgs({
      options: {
        help: { type: 'boolean', short: 'h', default: false },
        quick: { type: 'boolean', default: false },
        only: { type: 'string' },
        agents: { type: 'string' },
        seconds: { type: 'string' },
        'audit-durability': { type: 'string', default: 'disk' },
        profile: { type: 'boolean', default: false },
        'shared-token': { type: 'boolean', default: false },
      },
    });
  } catch (error) {
    return usageError((error as Error).message);
  }
})();
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const quick = values.quick!;
const LEVELS = values.agents ? values.agents.split(',').map(Number) : [1, 16, 32, 64];
if (!LEVELS.every((n) => Number.isInteger(n) && n > 0)) usageError('--agents takes a comma-separated list of positive integers, e.g. 1,16');
const SECONDS = values.seconds === undefined ? (quick ? 2 : 30) : Number(values.seconds);
if (!(SECONDS > 0)) usageError('--seconds takes a positive number');
const DURABILITY = values['audit-durability'];
if (DURABILITY !== 'disk' && DURABILITY !== 'process') usageError('--audit-durability takes disk or process');

/** What every section gets. */
export interface BenchContext {
  root: string;
  quick: boolean;
  profileDir: string | undefined;
}

/** What every section returns: its results, stored under its name in bench.json. */
export interface BenchSection {
  name: string;
  run(context: BenchContext): Promise<unknown>;
}

/**
 * The sections, run in this order. To add one (the sandboxed-plugin
 * benchmark goes here): write bench/<name>.ts exporting a function that
 * prints its own table and returns JSON-able results, and add
 * `{ name: '<name>', run: (ctx) => run<Name>(ctx) }` below. Keep its
 * --quick mode to a few seconds: the whole quick run must stay short (CI runs it on every push).
 */
const SECTIONS: BenchSection[] = [
  { name: 'micro', run: (ctx) => runMicro(ctx) },
  {
    name: 'calls',
    run: (ctx) =>
      runCalls({
        root: ctx.root,
        quick: ctx.quick,
        profileDir: ctx.profileDir,
        auditDurability: DURABILITY,
        sharedToken: values['shared-token'],
        // 1, 16 and 64 agents for throughput; 32 for the latency targets, measured for half as long.
        levels: LEVELS.map((agents) => ({ agents, seconds: SECONDS / (agents === 32 ? 2 : 1), rounds: ctx.quick ? 4 : agents === 32 ? 5 : 10 })),
        warmupSeconds: ctx.quick ? 0.25 : 2,
        memoryAgents: 64,
        memoryWarmupCalls: ctx.quick ? 500 : 10_000,
        memoryCalls: ctx.quick ? 5_000 : 100_000,
      }),
  },
  { name: 'sandbox', run: (ctx) => runSandbox(ctx) },
  { name: 'flows', run: (ctx) => runFlows(ctx) },
];
if (values.only !== undefined && !SECTIONS.some((section) => section.name === values.only)) {
  usageError(`--only takes one of ${SECTIONS.map((section) => section.name).join(', ')}`);
}

const machine = describeMachine();
const started = new Date();
console.log(`Bastion benchmarks${quick ? ' (--quick)' : ''}, ${started.toISOString()}`);
console.log(`machine: ${machineLine(machine)}`);
if (DURABILITY !== 'disk') console.log(`Bastion runs with audit.durability: ${DURABILITY}`);
if (machine.cores <= 2) console.log('note: the load generator, the upstream and the server under test share these cores; compare ratios within this run.');
console.log('');

const context: BenchContext = { root: ROOT, quick, profileDir: values.profile ? path.join(ROOT, 'test-artifacts/profiles') : undefined };
const results: Record<string, unknown> = {};
for (const section of SECTIONS) {
  if (values.only && values.only !== section.name) continue;
  const t0 = performance.now();
  results[section.name] = await section.run(context);
  console.log(`(${section.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
}

const targets: TargetCheck[] = evaluateTargets(
  { micro: results.micro as MicroResult[] | undefined, calls: results.calls as CallsResult | undefined, sandbox: results.sandbox as SandboxBenchResult | undefined },
  quick,
);
if (targets.length > 0) {
  console.log('Targets (issue 9)');
  printTable(
    ['target', 'goal', 'measured', ''],
    targets.map((t) => [t.name, t.goal, t.measured, t.met === undefined ? (quick ? 'full run only' : 'n/a') : t.met ? 'met' : 'MISSED']),
  );
}

const out = path.join(ROOT, 'test-artifacts/bench.json');
await mkdir(path.dirname(out), { recursive: true });
await writeFile(out, `${JSON.stringify({ version: 1, mode: quick ? 'quick' : 'full', audit_durability: DURABILITY, started: started.toISOString(), seconds: (Date.now() - started.getTime()) / 1000, machine, results, targets }, null, 2)}\n`);
console.log(`results: ${path.relative(process.cwd(), out)} (${((Date.now() - started.getTime()) / 1000).toFixed(0)} s in all)`);
