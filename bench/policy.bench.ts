/**
 * Decision latency of the default policy (policies/compiled/policy.wasm)
 * through the broker's engine: input validation, the WASM evaluation and
 * decision validation, exactly what the pipeline pays per call.
 *
 *   node bench/policy.bench.ts           100,000 decisions per scenario
 *   node bench/policy.bench.ts --quick   10,000
 *
 * Prints p50, p90, p99 and max per scenario. Not a test: nothing asserts a time.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DecisionLog } from '../broker/policy/decision-log.ts';
import { loadPolicy } from '../broker/policy/engine.ts';
import type { PolicyInput } from '../broker/policy/schema.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const quick = process.argv.includes('--quick');
const N = quick ? 10_000 : 100_000;
const WARMUP = quick ? 1_000 : 5_000;

const engine = await loadPolicy(path.join(ROOT, 'policies/compiled/policy.wasm'));

/** A realistic call: a token with a handful of grants, constrained arguments, a 2 KB payload. */
function call(overrides: Partial<PolicyInput['tool']> = {}, args: PolicyInput['arguments'] = {}): PolicyInput {
  return {
    version: 1,
    principal: {
      sub: 'agent:ci-bot',
      iss: 'https://issuer.example',
      act: [{ sub: 'user:ada' }],
      cap: [
        { tool: 'search__*' },
        { tool: 'crm__get_*', args: { account: { pattern: '[A-Z]{2}-[0-9]{6}' } } },
        { tool: 'payments__refund', args: { amount: { min: 0, max: 100 }, currency: { enum: ['EUR', 'USD'] } } },
        { tool: 'fs__read_file', args: { path: { path_prefix: '/srv/app/', max_length: 512 } } },
        { tool: 'fs__write_file', args: { path: { path_prefix: '/srv/app/tmp/' } } },
      ],
      anonymous: false,
    },
    tool: { name: 'fs__write_file', connector: 'fs', risk: 'medium', descriptor_hash: `sha256:${'ab'.repeat(32)}`, ...overrides },
    arguments: { path: '/srv/app/tmp/report.md', content: 'x'.repeat(2048), ...args },
    context: { time: new Date().toISOString(), transport: 'http', session: 'session-1234', method: 'tools/call' },
  };
}

const scenarios: { name: string; input: PolicyInput }[] = [
  { name: 'allowed write (path_prefix, 2 KB content)', input: call() },
  { name: 'denied: path traversal', input: call({}, { path: '/srv/app/tmp/../../etc/passwd' }) },
  { name: 'denied: no capability names the tool', input: call({ name: 'shell__exec' }) },
  { name: 'allowed with approval: high-risk refund', input: call({ name: 'payments__refund', risk: 'high' }, { amount: 42, currency: 'EUR' }) },
  { name: 'tools/list visibility check', input: { ...call(), arguments: {}, context: { ...call().context, method: 'tools/list' } } },
];

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const us = (ms: number) => `${(ms * 1000).toFixed(1)} µs`.padStart(10);

console.log(`policy ${engine.revision.slice(0, 19)}…, ${N.toLocaleString('en')} decisions per scenario${quick ? ' (--quick)' : ''}, node ${process.version}\n`);
console.log(`${'scenario'.padEnd(44)}${'p50'.padStart(10)}${'p90'.padStart(10)}${'p99'.padStart(10)}${'max'.padStart(10)}   decisions/s`);

async function measure(name: string, decide: () => void): Promise<void> {
  for (let i = 0; i < WARMUP; i++) decide();
  const samples = new Float64Array(N);
  const started = performance.now();
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    decide();
    samples[i] = performance.now() - t0;
    // Let queued work (decision log writes) run now and then, as a server's event loop would.
    if ((i & 1023) === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  const elapsed = performance.now() - started;
  samples.sort();
  console.log(
    `${name.padEnd(44)}${us(percentile(samples, 50))}${us(percentile(samples, 90))}${us(percentile(samples, 99))}${us(samples[N - 1]!)}   ${Math.round(N / (elapsed / 1000)).toLocaleString('en')}`,
  );
}

for (const { name, input } of scenarios) {
  await measure(name, () => engine.decide(input));
}

// The same allowed write with the decision log on (to /dev/null, arguments masked): its cost on the decision path.
const decisions = await DecisionLog.open({ destination: { file: '/dev/null' }, maskArguments: true });
const first = scenarios[0]!.input;
await measure('allowed write + decision log record', () => {
  const result = engine.decide(first);
  decisions.record({ input: first, result, revision: engine.revision });
});
await decisions.close();
const { written, dropped } = decisions.stats;
console.log(`\ndecision log: ${written.toLocaleString('en')} written, ${dropped.toLocaleString('en')} dropped`);
