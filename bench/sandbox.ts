/**
 * The sandboxed-plugin benchmark: the text-utils plugin's `word_count` run
 * (a) as a plain function in this process, the baseline any sandbox adds to;
 * (b) the sandbox process's own share of a warm call (bench/lib/sandbox-dispatch.ts);
 * (c) warm through PluginHost (isolate in a supervised sandbox process, JSON
 * copies, schema checks) with calls a few milliseconds apart, as an agent's
 * are, so each finds a prepared context; (d) the same back to back, where
 * each call makes its context on its own path; (e) cold: starting the sandbox
 * pool and loading the pinned plugin; (f) as an MCP tools/call through a
 * running Bastion, next to an upstream tool through the same Bastion.
 * Printed side by side with ratios from the same run.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createLogger } from '../broker/log.ts';
import { PluginHost } from '../sandboxes/host.ts';
import { pluginHash } from '../sandboxes/pin.ts';
import { SandboxPool } from '../sandboxes/pool.ts';
import { startProcesses } from './calls.ts';
import { connectAgents, disconnect, drive } from './lib/load.ts';
import { printTable, ratio, summarize, time, type Summary } from './lib/stats.ts';

export interface SandboxBenchResult {
  direct: Summary;
  /** The sandbox process's share of a warm call, no process boundary. */
  dispatch: Summary;
  /** Warm calls a few milliseconds apart: each finds its context prepared. */
  warm: Summary;
  /** Warm calls back to back: each makes its context on its own path. */
  backToBack: Summary;
  cold: Summary;
  /** One agent's MCP tools/call over Streamable HTTP through Bastion (token, policy, audit with durability disk, filters): to the plugin, and to an upstream tool. */
  viaBastion: { plugin: Summary; upstream: Summary };
}

/** The demo plugin's tool as Bastion exposes it. */
const PLUGIN_TOOL = 'text-utils__word_count';

/** Between calls in the warm measurement: an agent's calls are further apart than this. */
const PAUSE_MS = 3;

const TEXT = 'Bastion mediates every tool call an agent makes, and this sentence is what the plugin counts. '.repeat(4);

/** The plugin's own script, evaluated as a plain function in this process: the in-process baseline. */
async function directFunction(dir: string): Promise<(args: { text: string }) => unknown> {
  const code = await readFile(path.join(dir, 'main.js'), 'utf8');
  const tools: Record<string, (args: unknown) => unknown> = {};
  new Function('tools', code)(tools);
  return tools.word_count as (args: { text: string }) => unknown;
}

/** Times `run` n times; with a pause, waits that long before each call (not timed; calls/s then counts only call time). */
async function measure(n: number, run: () => unknown | Promise<unknown>, pauseMs = 0): Promise<Summary> {
  const samples = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
    const t0 = performance.now();
    await run();
    samples[i] = performance.now() - t0;
  }
  return summarize(samples, samples.reduce((a, b) => a + b, 0) / 1000);
}

/** bench/lib/sandbox-dispatch.ts in its own process (isolated-vm needs --no-node-snapshot). */
async function measureDispatch(root: string, calls: number): Promise<Summary> {
  const script = path.join(root, 'bench/lib/sandbox-dispatch.ts');
  const { stdout } = await promisify(execFile)(process.execPath, ['--no-node-snapshot', script, String(calls), TEXT, String(PAUSE_MS)], { cwd: root, maxBuffer: 64 << 20 });
  const samples = JSON.parse(stdout) as number[];
  return summarize(samples, samples.reduce((a, b) => a + b, 0) / 1000);
}

/** One agent calling Bastion (started with the demo plugin) over MCP: the plugin's word_count, then an upstream tool, calls spaced. */
async function throughBastion(ctx: { root: string }, calls: number): Promise<SandboxBenchResult['viaBastion']> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bastion-bench-sandbox-'));
  const { targets, children } = await startProcesses({ root: ctx.root, plugins: true }, dir);
  try {
    const bastion = targets.find((t) => t.name === 'bastion')!;
    const agents = await connectAgents(bastion, 1);
    const run = async (tool: string, n: number): Promise<Summary> => {
      const result = await drive(agents, tool, { calls: n }, { pauseMs: PAUSE_MS, arguments: { text: TEXT } });
      if (result.errors > 0) throw new Error(`${tool} through Bastion failed: ${result.firstError}`);
      return summarize(result.latencies, result.latencies.reduce((a, b) => a + b, 0) / 1000);
    };
    await run(PLUGIN_TOOL, 100);
    await run(bastion.tool, 100);
    const plugin = await run(PLUGIN_TOOL, calls);
    const upstream = await run(bastion.tool, calls);
    await disconnect(agents);
    return { plugin, upstream };
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await rm(dir, { recursive: true, force: true });
  }
}

export async function runSandbox(ctx: { root: string; quick: boolean }): Promise<SandboxBenchResult> {
  const dir = path.join(ctx.root, 'sandboxes/examples/text-utils');
  const hash = await pluginHash(dir);
  const log = createLogger('silent');
  const calls = ctx.quick ? 300 : 5_000;
  const colds = ctx.quick ? 2 : 8;

  const wordCount = await directFunction(dir);
  for (let i = 0; i < 1000; i++) wordCount({ text: TEXT });
  const direct = await measure(calls * 10, () => wordCount({ text: TEXT }));
  const dispatch = await measureDispatch(ctx.root, calls);

  // Cold: a new pool (sandbox process start) and the pinned plugin loaded, until the first call answers.
  const coldSamples: number[] = [];
  for (let i = 0; i < colds; i++) {
    const t0 = performance.now();
    const pool = new SandboxPool({ log, size: 1 });
    await pool.start();
    const host = new PluginHost({ dir, hash, pool, log });
    await host.start();
    await host.callTool('word_count', { text: TEXT });
    coldSamples.push(performance.now() - t0);
    await host.stop();
    await pool.stop();
  }
  const cold = summarize(coldSamples, coldSamples.reduce((a, b) => a + b, 0) / 1000);

  const pool = new SandboxPool({ log, size: 1 });
  await pool.start();
  const host = new PluginHost({ dir, hash, pool, log });
  await host.start();
  const call = async () => {
    const result = await host.callTool('word_count', { text: TEXT });
    if (result.isError) throw new Error(`sandboxed call failed: ${JSON.stringify(result.content)}`);
  };
  for (let i = 0; i < 100; i++) await call();
  const warm = await measure(calls, call, PAUSE_MS);
  const backToBack = await measure(calls, call);
  await host.stop();
  await pool.stop();
  const viaBastion = await throughBastion(ctx, ctx.quick ? 300 : 2_000);

  console.log('Sandboxed plugin (text-utils word_count), one call at a time');
  printTable(
    ['path', 'p50', 'p99', 'calls/s', 'p50 vs in-process'],
    [
      ['in-process function (baseline)', time(direct.p50), time(direct.p99), Math.round(direct.perSecond).toLocaleString('en'), '1.00×'],
      ['dispatch in the sandbox process (no IPC)', time(dispatch.p50), time(dispatch.p99), '–', ratio(dispatch.p50, direct.p50)],
      [`warm call, ${PAUSE_MS} ms apart (context prepared)`, time(warm.p50), time(warm.p99), '–', ratio(warm.p50, direct.p50)],
      ['warm call, back to back', time(backToBack.p50), time(backToBack.p99), Math.round(backToBack.perSecond).toLocaleString('en'), ratio(backToBack.p50, direct.p50)],
      ['cold start (pool + pinned load + first call)', time(cold.p50), time(cold.p99), '–', ratio(cold.p50, direct.p50)],
      [`tools/call through Bastion to the plugin, ${PAUSE_MS} ms apart`, time(viaBastion.plugin.p50), time(viaBastion.plugin.p99), '–', ratio(viaBastion.plugin.p50, direct.p50)],
      [`  the same Bastion to an upstream echo tool`, time(viaBastion.upstream.p50), time(viaBastion.upstream.p99), '–', ratio(viaBastion.upstream.p50, direct.p50)],
    ],
  );
  return { direct, dispatch, warm, backToBack, cold, viaBastion };
}
