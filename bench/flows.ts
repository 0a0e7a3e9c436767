/**
 * What flow control costs, in this process, with the broker's own modules:
 * the real FlowControl on the real embedded state store (journal on disk),
 * the committed policy, realistic results (a mailbox message as JSON, a web
 * page as prose).
 *
 *   per call        prepare (read the flow, trace arguments) and record (the
 *                   result's labels and value units), wall time p50/p99 and
 *                   CPU per call (process.cpuUsage, so disk waits are apart):
 *                     clean flow, trusted result: the common call, no write
 *                     untrusted result: a new source and new units written
 *                     (on the embedded journal, and with the state in memory)
 *                     external call in a tainted flow: arguments traced
 *   policy          the default policy with and without input.flow
 *   per flow        one agent's flow over 100,000 calls (quick: 10,000) that
 *                   keep bringing new untrusted and trusted content: what the
 *                   stored core and index weigh at the end (bounded by
 *                   flows.max_sources and flows.max_units)
 *   many flows      live V8 heap after a full GC with 1,000 flows held in the
 *                   replica's caches, per flow
 *
 * Run: node bench/flows.ts [--quick]   (also `node bench/run.ts --only flows`)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Principal } from '../broker/auth/verify.ts';
import { FlowControl, type PreparedFlow } from '../broker/flows/control.ts';
import type { ToolFlow } from '../broker/flows/labels.ts';
import { FLOW_INDEX, FLOWS } from '../broker/flows/store.ts';
import { createLogger } from '../broker/log.ts';
import { loadPolicy } from '../broker/policy/engine.ts';
import type { PolicyInput } from '../broker/policy/schema.ts';
import { openEmbeddedState } from '../broker/state/embedded.ts';
import type { StateStore } from '../broker/state/store.ts';
import { count, printTable, summarize, time } from './lib/stats.ts';

export interface FlowBenchRow {
  name: string;
  n: number;
  p50_us: number;
  p99_us: number;
  cpu_us_per_call: number;
}

export interface FlowBenchResult {
  rows: FlowBenchRow[];
  policy: { without_flow_p50_us: number; clean_flow_p50_us: number; with_flow_p50_us: number };
  per_flow: { calls: number; core_bytes: number; index_bytes: number; sources_kept: number; units_untrusted: number; units_trusted: number };
  many_flows: { flows: number; heap_per_flow_bytes: number };
}

const SETTINGS = { enabled: true, retention: 86_400_000, max_sources: 32, max_units: 4096, max_units_per_result: 2048 };
const tool = (name: string, flow: Partial<ToolFlow>) => ({ name, flow: { labels: [], egress: {}, origin: 'config' as const, ...flow } });
const MAIL = tool('mail__read_email', { labels: ['untrusted', 'private'] });
const FILE = tool('files__read_file', { labels: ['private'] });
const PAY = tool('payments__send_money', { labels: ['external'] });
const STAT = tool('files__stat', {});

/** A mailbox message as a mail server returns it, varied by `i` so every one brings new units. */
function email(i: number): unknown {
  const body = `Hello Ana, invoice ${4000 + i} for ${(i % 900) + 100}.50 EUR is due. Please pay to GB82 WEST 1234 5698 7654 32 or contact billing${i}@supplier-${i % 50}.example. See https://supplier-${i % 50}.example/invoices/${i} for details. Best regards, Supplier Team ${i}`;
  return { content: [{ type: 'text', text: JSON.stringify({ id: String(i), from: `billing${i}@supplier-${i % 50}.example`, to: ['ana@corp.example'], subject: `Invoice ${4000 + i}`, date: '2026-03-02', body }, null, 2) }] };
}

function file(i: number): unknown {
  return { content: [{ type: 'text', text: `Quarterly notes ${i}\nRevenue: ${(i % 97) + 3}.2M EUR\nOwner: Ana Lopez\nPath: /home/ana/reports/q${i % 4}-${i}.txt` }] };
}

/**
 * The part of the state interface flows use, in memory: to tell the flow
 * code's own CPU from what the embedded journal's writes and syncs cost.
 */
function memoryState(): StateStore {
  const data = new Map<string, string>();
  const k = (ns: string, key: string) => `${ns}\u0000${key}`;
  const unused = () => {
    throw new Error('not used by flows');
  };
  return {
    get: async (ns, key) => data.get(k(ns, key)),
    set: async (ns, key, value) => void data.set(k(ns, key), value),
    delete: async (ns, key) => data.delete(k(ns, key)),
    compareAndSet: async (ns, key, expected, next) => {
      if (data.get(k(ns, key)) !== expected) return false;
      data.set(k(ns, key), next);
      return true;
    },
    entries: async (ns) => [...data].filter(([key]) => key.startsWith(`${ns}\u0000`)).map(([key, value]) => [key.slice(ns.length + 1), value] as [string, string]),
    claim: unused,
    setWithinQuota: unused,
    deleteWithinQuota: unused,
    takeTokens: unused,
    acquireSlot: unused,
    releaseSlot: unused,
    publish: unused,
    subscribe: unused,
    ready: async () => true,
    close: async () => undefined,
  };
}

function principal(sub: string): Principal {
  return { sub, iss: 'urn:bastion:bench', act: [], cap: [{ tool: '*' }], jti: 'bench', exp: Number.MAX_SAFE_INTEGER, anonymous: false, tokenHash: 'bench', singleUse: false };
}

async function measure(name: string, n: number, op: (i: number) => Promise<unknown>): Promise<FlowBenchRow> {
  for (let i = 0; i < Math.min(200, n); i++) await op(-1 - i);
  const samples = new Float64Array(n);
  const cpu = process.cpuUsage();
  const started = performance.now();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await op(i);
    samples[i] = performance.now() - t0;
  }
  const used = process.cpuUsage(cpu);
  const s = summarize(samples, (performance.now() - started) / 1000);
  return { name, n, p50_us: s.p50 * 1000, p99_us: s.p99 * 1000, cpu_us_per_call: (used.user + used.system) / n };
}

/** A full GC, exposed for this process if node was not started with --expose-gc. */
function fullGc(): () => void {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed) return exposed;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

function heapAfterGc(): number {
  const gc = fullGc();
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

export async function runFlows(options: { root: string; quick: boolean }): Promise<FlowBenchResult> {
  const n = options.quick ? 1_000 : 10_000;
  const long = options.quick ? 10_000 : 100_000;
  const dir = await mkdtemp(path.join(tmpdir(), 'bastion-bench-flows-'));
  const state = await openEmbeddedState(path.join(dir, 'state.db'));
  try {
    const flows = new FlowControl({ state, settings: SETTINGS, log: createLogger('silent') });
    await flows.start();
    const rows: FlowBenchRow[] = [];
    let agent = 0;

    // The common call: a clean flow reading trusted content. Nothing is written.
    const clean = principal('agent:clean');
    rows.push(
      await measure('clean flow: prepare + record a trusted result', n, async (i) => {
        const prepared = await flows.prepare(clean, STAT, { path: `/home/ana/reports/q1-${i}.txt` });
        await flows.record(prepared, undefined, file(i), []);
      }),
    );

    // An untrusted result: a new source, new units (core and index written, each with fdatasync).
    rows.push(
      await measure('untrusted result: prepare + record (writes)', Math.min(n, 3_000), async (i) => {
        const p = principal(`agent:reader-${agent++ % 50}`);
        const prepared = await flows.prepare(p, MAIL, { id: String(i) });
        await flows.record(prepared, undefined, email(i), []);
      }),
    );

    // The same, with the state in memory: the flow code's own cost, without the journal's writes and syncs.
    const inMemory = new FlowControl({ state: memoryState(), settings: SETTINGS, log: createLogger('silent') });
    await inMemory.start();
    rows.push(
      await measure('untrusted result, state in memory (flow code alone)', n, async (i) => {
        const p = principal(`agent:reader-${agent++ % 50}`);
        const prepared = await inMemory.prepare(p, MAIL, { id: String(i) });
        await inMemory.record(prepared, undefined, email(i), []);
      }),
    );

    // An external call in a tainted flow: the arguments traced against the index.
    const tainted = principal('agent:tainted');
    for (let i = 0; i < 200; i++) await flows.record(await flows.prepare(tainted, MAIL, { id: String(i) }), undefined, email(i), []);
    let last: PreparedFlow | undefined;
    rows.push(
      await measure('external call in a tainted flow: prepare (trace 3 arguments)', n, async (i) => {
        last = await flows.prepare(tainted, PAY, { iban: 'GB82WEST12345698765432', amount: ((Math.abs(i) % 900) + 100) + 0.5, reference: `Invoice ${4000 + (Math.abs(i) % 200)}` });
      }),
    );
    if (!last || last.input.arguments.length === 0) throw new Error('the tainted flow traced no argument: the benchmark measures nothing');

    const engine = await loadPolicy(path.join(options.root, 'policies/compiled/policy.wasm'));
    const base: PolicyInput = {
      version: 1,
      principal: { sub: tainted.sub, iss: tainted.iss, act: [], cap: [{ tool: '*' }], anonymous: false },
      tool: { name: PAY.name, connector: 'payments', risk: 'medium', descriptor_hash: 'sha256:00' },
      arguments: { iban: 'GB82WEST12345698765432', amount: 100.5 },
      context: { time: new Date().toISOString(), transport: 'http', session: 'bench', method: 'tools/call' },
    };
    const withFlow = { ...base, flow: last.input };
    const cleanFlow = { ...base, flow: { labels: {}, sources: [], tool: { labels: PAY.flow.labels, egress: [] }, arguments: [] } };
    const without = await measure('policy decision without input.flow', n, async () => engine.decideTrusted(base));
    const cleanRow = await measure('policy decision, clean input.flow (no rule fires)', n, async () => engine.decideTrusted(cleanFlow));
    const withRow = await measure('policy decision, tainted input.flow (3 rules fire)', n, async () => engine.decideTrusted(withFlow));
    rows.push(without, cleanRow, withRow);

    // One flow over `long` calls, alternating untrusted and trusted content that is always new.
    const busy = principal('agent:busy');
    for (let i = 0; i < long; i++) {
      const untrusted = i % 2 === 0;
      const prepared = await flows.prepare(busy, untrusted ? MAIL : FILE, { id: String(i) });
      await flows.record(prepared, undefined, untrusted ? email(i) : file(i), []);
    }
    const key = await flows.keyOf(busy);
    const coreText = (await state.get(FLOWS, key)) ?? '';
    const core = await flows.store.core(key);
    const index = await flows.store.index(key, core);
    let indexBytes = 0;
    for (const ref of core?.segments ?? []) indexBytes += ((await state.get(FLOW_INDEX, `${key}#${ref.id}`)) ?? '').length;
    const units = (kind: string) => index.segments.filter((s) => s.kind === kind).reduce((n, s) => n + s.hashes.size, 0);

    // Many flows held by this replica's caches.
    const before = heapAfterGc();
    const flowCount = 1_000;
    for (let f = 0; f < flowCount; f++) {
      const p = principal(`agent:many-${f}`);
      for (let i = 0; i < 4; i++) await flows.record(await flows.prepare(p, i % 2 ? FILE : MAIL, { id: String(i) }), undefined, i % 2 ? file(f * 10 + i) : email(f * 10 + i), []);
    }
    const manyFlows: FlowBenchResult['many_flows'] = { flows: flowCount, heap_per_flow_bytes: Math.round((heapAfterGc() - before) / flowCount) };

    const result: FlowBenchResult = {
      rows,
      policy: { without_flow_p50_us: without.p50_us, clean_flow_p50_us: cleanRow.p50_us, with_flow_p50_us: withRow.p50_us },
      per_flow: {
        calls: long,
        core_bytes: coreText.length,
        index_bytes: indexBytes,
        sources_kept: core?.sources.length ?? 0,
        units_untrusted: units('untrusted'),
        units_trusted: units('trusted'),
      },
      many_flows: manyFlows,
    };
    console.log('Flow control');
    printTable(
      ['operation', 'n', 'p50', 'p99', 'CPU per call'],
      rows.map((r) => [r.name, count(r.n), time(r.p50_us / 1000), time(r.p99_us / 1000), time(r.cpu_us_per_call / 1000)]),
    );
    printTable(
      ['one flow after', 'core stored', 'index stored', 'sources kept', 'untrusted units', 'trusted units'],
      [[`${count(long)} calls`, `${(coreText.length / 1024).toFixed(1)} KiB`, `${(indexBytes / 1024).toFixed(1)} KiB in ${core?.segments?.length ?? 0} segments`, String(result.per_flow.sources_kept), count(units('untrusted')), count(units('trusted'))]],
    );
    console.log(`live heap per flow held by one replica (1,000 flows of 4 calls, in its caches and the embedded store, after a full GC): ${(manyFlows.heap_per_flow_bytes / 1024).toFixed(1)} KiB\n`);
    return result;
  } finally {
    await state.close();
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  await runFlows({ root, quick: process.argv.includes('--quick') });
}
