/**
 * Failure containment: CPU hogs, memory bombs, deep recursion, odd throws,
 * promises that never settle, huge or malformed results, and plugins that
 * take their sandbox process down. Each ends its own call with a clear,
 * stable code; the pool replaces what broke; other plugins and calls are
 * unaffected. The hostile fixture runs with 16 MB, 250 ms CPU, 2 s wall;
 * memory bombs run in a copy with a large CPU budget, so that on a loaded
 * machine they still meet the memory limit before the CPU limit.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PluginHost } from '../../sandboxes/host.ts';
import { pluginHash } from '../../sandboxes/pin.ts';
import { SandboxPool } from '../../sandboxes/pool.ts';
import { EXAMPLES_DIR, HOSTILE_DIR, pluginCopy, removePluginCopies, quietLog, sandboxCode, textOf, valueOf } from './helpers.ts';

const log = quietLog();
let pool: SandboxPool;
let host: PluginHost;
let bystander: PluginHost;
/**
 * The hostile plugin with CPU and wall budgets far beyond what a memory bomb
 * needs to reach 16 MB even when V8 collects garbage near the limit on a
 * loaded machine: the memory limit is the only one these bombs can meet, so
 * the tests below may name it.
 */
let roomy: PluginHost;
const ROOMY_CPU_MS = 30_000;
const ROOMY_WALL_MS = 40_000;

const attack = (name: string, extra: Record<string, unknown> = {}, signal?: AbortSignal) =>
  host.callTool('attack', { name, ...extra }, signal ? { signal } : {});

beforeAll(async () => {
  pool = new SandboxPool({ log, size: 2, cancelGraceMs: 300, testHooks: true });
  host = new PluginHost({ dir: HOSTILE_DIR, hash: await pluginHash(HOSTILE_DIR), pool, log, name: 'hostile', grants: { kv: true } });
  const textUtils = `${EXAMPLES_DIR}text-utils`;
  bystander = new PluginHost({ dir: textUtils, hash: await pluginHash(textUtils), pool, log });
  const roomyCopy = await pluginCopy(HOSTILE_DIR, (m) => {
    m.limits.cpu_ms = ROOMY_CPU_MS;
    m.limits.wall_ms = ROOMY_WALL_MS;
  });
  // The host's default caps (5 s CPU) would cut the roomy budget down: lift them for this copy.
  roomy = new PluginHost({ dir: roomyCopy.dir, hash: roomyCopy.hash, pool, log, name: 'roomy', maxLimits: { cpu_ms: ROOMY_CPU_MS, wall_ms: ROOMY_WALL_MS } });
  await Promise.all([host.start(), bystander.start(), roomy.start()]);
  expect([host.status, bystander.status, roomy.status]).toEqual(['ready', 'ready', 'ready']);
});

afterAll(async () => {
  await removePluginCopies();
  await pool.stop();
});

afterEach(async () => {
  expect(valueOf(await host.callTool('ok', {}))).toEqual({ ok: true, polluted: 'undefined' });
  expect(valueOf(await bystander.callTool('word_count', { text: 'still here' }))).toEqual({ words: 2, characters: 10, lines: 1 });
});

describe('CPU', () => {
  it.each([
    ['loop', {}],
    ['microtask_flood', {}],
    ['regex', { n: 40 }],
  ])('%s ends with SANDBOX_TIMEOUT', async (name, extra) => {
    const result = await attack(name, extra);
    expect(sandboxCode(result)).toBe('SANDBOX_TIMEOUT');
    expect(textOf(result)).toMatch(/250 ms of CPU time/);
  });

  it('a busy plugin does not hold up another plugin', async () => {
    const [hog, other] = await Promise.all([attack('loop'), bystander.callTool('slugify', { text: 'Still Served' })]);
    expect(sandboxCode(hog)).toBe('SANDBOX_TIMEOUT');
    expect(valueOf(other)).toEqual({ slug: 'still-served' });
  });

  it('a promise that can never settle fails at once with SANDBOX_PLUGIN_ERROR', async () => {
    const result = await attack('never_settles');
    expect(sandboxCode(result)).toBe('SANDBOX_PLUGIN_ERROR');
    expect(textOf(result)).toMatch(/can never settle/);
  });
});

describe('memory (limit 16 MB, bombs at about 3x)', () => {
  it.each(['heap_bomb', 'string_bomb', 'buffer_bomb'])('%s ends with SANDBOX_MEMORY', async (name) => {
    const result = await roomy.callTool('attack', { name });
    expect(sandboxCode(result)).toBe('SANDBOX_MEMORY');
  });

  it('10^6-deep recursion is a stack overflow inside the isolate (SANDBOX_PLUGIN_ERROR)', async () => {
    const result = await roomy.callTool('attack', { name: 'recursion' });
    expect(sandboxCode(result)).toBe('SANDBOX_PLUGIN_ERROR');
    expect(textOf(result)).toMatch(/Maximum call stack size exceeded/);
  });

  it('a bomb next to another plugin leaves that plugin alone', async () => {
    const [bomb, other] = await Promise.all([roomy.callTool('attack', { name: 'heap_bomb' }), bystander.callTool('word_count', { text: 'a b' })]);
    // What matters here is the bystander: the bomb was stopped by a limit, whichever came first on this machine.
    expect(['SANDBOX_MEMORY', 'SANDBOX_TIMEOUT', 'SANDBOX_CRASHED']).toContain(sandboxCode(bomb));
    expect(valueOf(other)).toEqual({ words: 2, characters: 3, lines: 1 });
  });
});

describe('thrown values and results', () => {
  it.each([
    ['throw_number', /non-Error value thrown \(number\): 42/],
    ['throw_null', /non-Error value thrown \(object\): null/],
    ['throw_object_trap', /non-Error value thrown \(object\)/],
  ])('%s ends with SANDBOX_PLUGIN_ERROR', async (name, message) => {
    const result = await attack(name);
    expect(sandboxCode(result)).toBe('SANDBOX_PLUGIN_ERROR');
    expect(textOf(result)).toMatch(message);
  });

  it('a result whose then getter throws ends with SANDBOX_PLUGIN_ERROR', async () => {
    const result = await attack('then_getter_throws');
    expect(sandboxCode(result)).toBe('SANDBOX_PLUGIN_ERROR');
    expect(textOf(result)).toMatch(/Error: then getter/);
  });

  it('a result with a then that is not a function is a plain value; a thenable of its own is awaited', async () => {
    expect(valueOf(await attack('then_not_a_function'))).toEqual({ then: 5, n: 1 });
    expect(valueOf(await attack('own_thenable'))).toEqual({ settled: 'later' });
  });

  it('a result over max_result_bytes ends with SANDBOX_RESULT_TOO_LARGE', async () => {
    const result = await attack('huge_result', { n: 100_000 });
    expect(sandboxCode(result)).toBe('SANDBOX_RESULT_TOO_LARGE');
    expect(textOf(result)).toMatch(/4096-byte cap/);
  });

  it('a result that breaks the output schema ends with SANDBOX_INVALID_RESULT', async () => {
    const result = await host.callTool('typed', { value: { n: 'not a number' } });
    expect(sandboxCode(result)).toBe('SANDBOX_INVALID_RESULT');
    expect(textOf(result)).toMatch(/output schema/);
    const good = await host.callTool('typed', { value: { n: 7 } });
    expect(good.structuredContent).toEqual({ n: 7 });
  });

  it('arguments that break the input schema are refused before the plugin runs', async () => {
    const result = await host.callTool('attack', { name: 42 });
    expect(sandboxCode(result)).toBe('SANDBOX_INVALID_ARGUMENTS');
  });
});

/**
 * Each test that takes a sandbox process down gets its own pool: a kill that
 * lands after its test ended (a grace period running out) cannot disturb
 * the next test.
 */
async function isolatedPool(
  plugins: { name: string; patch?: (manifest: Record<string, any>) => void }[],
): Promise<{ pool: SandboxPool; hosts: PluginHost[] }> {
  const own = new SandboxPool({ log, size: 1, cancelGraceMs: 300, testHooks: true });
  const hosts: PluginHost[] = [];
  for (const plugin of plugins) {
    const copy = await pluginCopy(HOSTILE_DIR, plugin.patch);
    const pluginHost = new PluginHost({ dir: copy.dir, hash: copy.hash, pool: own, log, name: plugin.name });
    await pluginHost.start();
    expect(pluginHost.status).toBe('ready');
    hosts.push(pluginHost);
  }
  return { pool: own, hosts };
}

const restartsOf = (p: SandboxPool) => p.processes().reduce((n, info) => n + info.restarts, 0);
const roomyLimits = (m: Record<string, any>) => {
  m.limits.cpu_ms = 10_000;
  m.limits.wall_ms = 20_000;
};

describe('supervision', () => {
  it('a plugin that kills its sandbox process fails only its call; the process is replaced; a bystander is retried', async () => {
    const { pool: own, hosts } = await isolatedPool([
      { name: 'killer', patch: roomyLimits },
      { name: 'bystander', patch: roomyLimits },
    ]);
    const [killer, bystanderPlugin] = hosts as [PluginHost, PluginHost];
    const before = own.processes()[0]!;
    // Another plugin's call, still spinning in the same process when it dies
    // (10^8 iterations take far longer than the abort call needs to arrive).
    const running = bystanderPlugin.callTool('attack', { name: 'spin', n: 1e8 });
    const result = await killer.callTool('attack', { name: 'abort_process' });
    expect(sandboxCode(result)).toBe('SANDBOX_CRASHED');
    expect(textOf(result)).toMatch(/simulated abort \(test hook\)/);
    // The bystander had used no host capability, so it was retried on the replacement, and succeeded.
    expect(valueOf(await running)).toEqual(expect.any(Number));
    const after = own.processes()[0]!;
    expect(after.restarts).toBe(before.restarts + 1);
    expect(after.pid).not.toBe(before.pid);
    expect(valueOf(await killer.callTool('ok', {}))).toEqual({ ok: true, polluted: 'undefined' });
    await own.stop();
  });

  it('a sandbox process killed from outside is replaced; a call it was running is retried once', async () => {
    const { pool: own, hosts } = await isolatedPool([{ name: 'patient', patch: roomyLimits }]);
    const patient = hosts[0]!;
    const running = patient.callTool('attack', { name: 'spin', n: 3e7 });
    process.kill(own.processes()[0]!.pid!, 'SIGKILL');
    expect(valueOf(await running)).toEqual(expect.any(Number));
    expect(own.processes()[0]!.restarts).toBe(1);
    await own.stop();
  });

  it('a plugin that wedges its isolate (huge allocation) is cut off by the wall clock; the host keeps serving', async () => {
    const { pool: own, hosts } = await isolatedPool([
      { name: 'wedge', patch: (m) => void (m.limits.wall_ms = 1000) },
      { name: 'steady', patch: roomyLimits },
    ]);
    const [wedge, steady] = hosts as [PluginHost, PluginHost];
    const result = await wedge.callTool('attack', { name: 'wedge' });
    expect(['SANDBOX_TIMEOUT', 'SANDBOX_MEMORY']).toContain(sandboxCode(result));
    // Whether the isolate could be disposed or its process had to be killed, the next call is served.
    expect(valueOf(await steady.callTool('ok', {}))).toEqual({ ok: true, polluted: 'undefined' });
    await own.stop();
  });

  it('a catastrophic regex in an input schema runs in linear time: the call is refused at once, and a plugin in the same process keeps answering', async () => {
    // Schemas come from the (untrusted) manifest; their patterns run on RE2, so `^(a+)+$` cannot stall the process.
    const { pool: own, hosts } = await isolatedPool([
      {
        name: 'redos',
        patch: (m) => {
          m.tools[1].inputSchema.properties.name.pattern = '^(a+)+$';
          m.limits.wall_ms = 20_000;
        },
      },
      { name: 'steady', patch: roomyLimits },
    ]);
    const [redos, steady] = hosts as [PluginHost, PluginHost];
    const [result, other] = await Promise.all([redos.callTool('attack', { name: `${'a'.repeat(36)}!` }), steady.callTool('ok', {})]);
    expect(sandboxCode(result)).toBe('SANDBOX_INVALID_ARGUMENTS');
    expect(textOf(result)).toMatch(/must match pattern/);
    expect(valueOf(other)).toEqual({ ok: true, polluted: 'undefined' });
    expect(valueOf(await redos.callTool('ok', {}))).toEqual({ ok: true, polluted: 'undefined' });
    expect(restartsOf(own)).toBe(0);
    await own.stop();
  });

  it('a flood of host calls that await nothing cannot swamp the sandbox process: the call ends at the cap, the process is not killed', async () => {
    // Without a bound inside the isolate, millions of queued host.log calls keep the sandbox process busy
    // long after the broker ended the call, so it misses the cancellation and is killed.
    const { pool: own, hosts } = await isolatedPool([
      { name: 'flooder', patch: (m) => Object.assign(m.limits, { cpu_ms: 5000, wall_ms: 10_000 }) },
      { name: 'steady', patch: roomyLimits },
    ]);
    const [flooder, steady] = hosts as [PluginHost, PluginHost];
    const result = await flooder.callTool('attack', { name: 'log_flood', n: 3_000_000 });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(valueOf(await steady.callTool('ok', {}))).toEqual({ ok: true, polluted: 'undefined' });
    // Past the cancellation grace period: a process that missed it would have been killed by now.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(restartsOf(own)).toBe(0);
    await own.stop();
  });

  it('a caller that aborts gets SANDBOX_CANCELLED', async () => {
    const controller = new AbortController();
    const call = attack('loop', {}, controller.signal);
    controller.abort();
    const result = await call;
    expect(sandboxCode(result)).toBe('SANDBOX_CANCELLED');
  });

  it('keeps reporting healthy processes after all of this', async () => {
    const health = await pool.health(30_000);
    expect(health).toHaveLength(2);
    for (const process of health) expect(process.prototypesIntact).toBe(true);
    expect(restartsOf(pool)).toBe(0);
  });
});
