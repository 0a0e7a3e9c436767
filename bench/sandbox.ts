/**
 * The sandboxed-plugin benchmark: the text-utils plugin's `word_count` run
 * (a) as a plain function in this process, the baseline any sandbox adds to,
 * (b) warm through PluginHost (isolate in a supervised sandbox process, JSON
 * copies, schema checks), and (c) cold: starting the sandbox pool and loading
 * the pinned plugin. Printed side by side with ratios from the same run.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { createLogger } from '../broker/log.ts';
import { PluginHost } from '../sandboxes/host.ts';
import { pluginHash } from '../sandboxes/pin.ts';
import { SandboxPool } from '../sandboxes/pool.ts';
import { printTable, ratio, summarize, time, type Summary } from './lib/stats.ts';

export interface SandboxBenchResult {
  direct: Summary;
  warm: Summary;
  cold: Summary;
}

const TEXT = 'Bastion mediates every tool call an agent makes, and this sentence is what the plugin counts. '.repeat(4);

/** The plugin's own script, evaluated as a plain function in this process: the in-process baseline. */
async function directFunction(dir: string): Promise<(args: { text: string }) => unknown> {
  const code = await readFile(path.join(dir, 'main.js'), 'utf8');
  const tools: Record<string, (args: unknown) => unknown> = {};
  new Function('tools', code)(tools);
  return tools.word_count as (args: { text: string }) => unknown;
}

async function measure(n: number, run: () => unknown | Promise<unknown>): Promise<Summary> {
  const samples = new Float64Array(n);
  const started = performance.now();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await run();
    samples[i] = performance.now() - t0;
  }
  return summarize(samples, (performance.now() - started) / 1000);
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
  for (let i = 0; i < 100; i++) await host.callTool('word_count', { text: TEXT });
  const warm = await measure(calls, async () => {
    const result = await host.callTool('word_count', { text: TEXT });
    if (result.isError) throw new Error(`sandboxed call failed: ${JSON.stringify(result.content)}`);
  });
  await host.stop();
  await pool.stop();

  console.log('Sandboxed plugin (text-utils word_count), one call at a time');
  printTable(
    ['path', 'p50', 'p99', 'calls/s', 'p50 vs in-process'],
    [
      ['in-process function (baseline)', time(direct.p50), time(direct.p99), Math.round(direct.perSecond).toLocaleString('en'), '1.00×'],
      ['warm sandbox call', time(warm.p50), time(warm.p99), Math.round(warm.perSecond).toLocaleString('en'), ratio(warm.p50, direct.p50)],
      ['cold start (pool + pinned load + first call)', time(cold.p50), time(cold.p99), '–', ratio(cold.p50, direct.p50)],
    ],
  );
  return { direct, warm, cold };
}
