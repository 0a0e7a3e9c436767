/**
 * Escape attempts: a hostile plugin tries to reach the host (process,
 * require, code generation, dynamic import, isolated-vm objects), to poison
 * it (prototype pollution, traps in returned objects), to read the clock
 * precisely, and to see another caller's state. Each attempt must fail
 * safely with the expected code, and the host must be intact afterwards.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PluginHost } from '../../sandboxes/host.ts';
import { pluginHash } from '../../sandboxes/pin.ts';
import { SandboxPool } from '../../sandboxes/pool.ts';
import { HOSTILE_DIR, quietLog, sandboxCode, textOf, valueOf } from './helpers.ts';

const log = quietLog();
let pool: SandboxPool;
let host: PluginHost;

const attack = (name: string, extra: Record<string, unknown> = {}) => host.callTool('attack', { name, ...extra });

beforeAll(async () => {
  pool = new SandboxPool({ log, size: 2 });
  host = new PluginHost({ dir: HOSTILE_DIR, hash: await pluginHash(HOSTILE_DIR), pool, log, name: 'hostile', grants: { kv: true, log: true } });
  await host.start();
  expect(host.lastError).toBeUndefined();
  expect(host.status).toBe('ready');
});

afterAll(async () => {
  await pool.stop();
});

afterEach(async () => {
  // The host is intact: a normal call works, and nothing leaked into this process.
  const ok = await host.callTool('ok', {});
  expect(valueOf(ok)).toEqual({ ok: true, polluted: 'undefined' });
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  expect(Object.prototype.hasOwnProperty.call(Object.prototype, 'polluted')).toBe(false);
});

describe('no ambient authority', () => {
  it.each([
    ['process', /ReferenceError: process is not defined/],
    ['require', /ReferenceError: require is not defined/],
    ['function_constructor', /EvalError: code generation from strings is disabled/],
    ['async_function_constructor', /EvalError: code generation from strings is disabled/],
    ['host_function_constructor', /EvalError: code generation from strings is disabled/],
    ['eval', /EvalError: eval is disabled/],
    ['indirect_eval', /EvalError: eval is disabled/],
    ['dynamic_import', /Not supported/],
  ])('%s fails with SANDBOX_PLUGIN_ERROR', async (name, message) => {
    const result = await attack(name);
    expect(result.isError).toBe(true);
    expect(sandboxCode(result)).toBe('SANDBOX_PLUGIN_ERROR');
    expect(textOf(result)).toMatch(message);
  });

  it('offers none of SharedArrayBuffer, Atomics, WebAssembly, finalizers, timers, console, fetch', async () => {
    expect(valueOf(await attack('intrinsics'))).toEqual({
      SharedArrayBuffer: 'undefined',
      Atomics: 'undefined',
      WebAssembly: 'undefined',
      FinalizationRegistry: 'undefined',
      console: 'undefined',
      setTimeout: 'undefined',
      process: 'undefined',
      require: 'undefined',
      fetch: 'undefined',
    });
  });

  it('leaves no isolated-vm object reachable from the global object, tools or host', async () => {
    const walk = valueOf(await attack('walk_globals')) as { findings: string[]; visited: number; globals: string[] };
    expect(walk.findings).toEqual([]);
    expect(walk.visited).toBeGreaterThan(500); // it really walked the builtins
    expect(walk.globals).not.toContain('SharedArrayBuffer');
    expect(walk.globals).toContain('tools');
  });

  it('gives the plugin only coarse clocks', async () => {
    expect(valueOf(await attack('clocks'))).toEqual({ now: 0, date: 0, ctor: 0, intl: '00' });
  });

  it('refuses a capability the operator did not grant', async () => {
    const result = await attack('fetch', { url: 'http://127.0.0.1:9/' });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toMatch(/fetch is not granted/);
    expect(result._meta?.['bastion/capabilities']).toEqual([
      { cap: 'fetch', method: 'GET', url: 'http://127.0.0.1:9/', outcome: 'denied', reason: 'fetch is not granted to this plugin' },
    ]);
  });
});

describe('prototype pollution', () => {
  it('through returned objects (__proto__, constructor.prototype) reaches neither this process nor the sandbox process', async () => {
    const result = await attack('pollute');
    const value = valueOf(result) as [Record<string, unknown>, Record<string, unknown>];
    // The payloads arrive as inert data: own keys, not prototypes.
    expect(Object.prototype.hasOwnProperty.call(value[0], '__proto__')).toBe(true);
    expect(Object.getPrototypeOf(value[0])).toBe(Object.prototype);
    expect(Object.getPrototypeOf(result.structuredContent ?? {})).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(([] as unknown as Record<string, unknown>).polluted).toBeUndefined();
    const health = await pool.health(30_000);
    expect(health).toHaveLength(2);
    for (const process of health) expect(process.prototypesIntact).toBe(true);
  });

  it('a __proto__ key never becomes a prototype in structuredContent', async () => {
    const result = await host.callTool('typed', { value: { n: 1, ['__proto__']: { polluted: 'yes' } } });
    expect(result.structuredContent).toEqual({ n: 1 });
    expect(Object.prototype.hasOwnProperty.call(result.structuredContent, '__proto__')).toBe(false);
    expect(Object.getPrototypeOf(result.structuredContent)).toBe(Object.prototype);
  });

  it('inside the isolate does not survive into the next call', async () => {
    await attack('pollute');
    expect(valueOf(await attack('observe'))).toEqual({ polluted: 'undefined', arrayPolluted: 'undefined', leaked: 'undefined' });
  });
});

describe('traps in returned objects run in the isolate, under its limits', () => {
  it('a throwing getter fails the call with SANDBOX_INVALID_RESULT', async () => {
    const result = await attack('getter_trap');
    expect(sandboxCode(result)).toBe('SANDBOX_INVALID_RESULT');
    expect(textOf(result)).toMatch(/getter ran/);
  });

  it.each(['getter_loop', 'tojson_loop'])('%s is stopped by the CPU limit (SANDBOX_TIMEOUT)', async (name) => {
    const result = await attack(name);
    expect(sandboxCode(result)).toBe('SANDBOX_TIMEOUT');
  });

  it.each(['cyclic', 'function_result'])('%s is not JSON (SANDBOX_INVALID_RESULT)', async (name) => {
    expect(sandboxCode(await attack(name))).toBe('SANDBOX_INVALID_RESULT');
  });
});

describe('no state between calls (so none between principals)', () => {
  it('a global or a tools property set by one call is gone in the next', async () => {
    expect(valueOf(await attack('set_state', { value: 'alice: secret' }))).toBe('stored');
    expect(valueOf(await attack('get_state'))).toEqual({ global: null, tools: null });
  });

  it('concurrent callers do not see each other', async () => {
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        i % 2 === 0 ? attack('set_state', { value: `caller ${i}` }) : attack('get_state'),
      ),
    );
    for (const [i, result] of results.entries()) {
      expect(valueOf(result)).toEqual(i % 2 === 0 ? 'stored' : { global: null, tools: null });
    }
  });
});
