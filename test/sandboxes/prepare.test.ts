/**
 * Prepared contexts: an idle isolate makes the next call's context (the
 * bootstrap and the script's top level) before the call comes. The call must
 * still start from a context nobody else used, and the work done ahead of it
 * must still count against its CPU budget. Real isolates in a real sandbox
 * process; time is read with the sandbox's own clock (1 ms grain here).
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PluginHost } from '../../sandboxes/host.ts';
import { pluginHash } from '../../sandboxes/pin.ts';
import { SandboxPool } from '../../sandboxes/pool.ts';
import { EXAMPLES_DIR, pluginCopy, quietLog, removePluginCopies, sandboxCode, textOf, valueOf } from './helpers.ts';

const log = quietLog();
let pool: SandboxPool;

const idle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A one-tool plugin (`probe`) with the given script and CPU budget, loaded and ready. */
async function plugin(script: string, cpuMs = 100): Promise<PluginHost> {
  const copy = await pluginCopy(path.join(EXAMPLES_DIR, 'text-utils'), (m) => {
    m.tools = [{ name: 'probe', description: 'test probe', inputSchema: { type: 'object', properties: { spin_ms: { type: 'integer' } } } }];
    m.limits = { ...m.limits, cpu_ms: cpuMs };
  });
  await writeFile(path.join(copy.dir, 'main.js'), script);
  const host = new PluginHost({ dir: copy.dir, hash: await pluginHash(copy.dir), pool, log, name: `probe-${Math.random().toString(36).slice(2, 8)}` });
  await host.start();
  expect(host.lastError).toBeUndefined();
  return host;
}

beforeAll(async () => {
  pool = new SandboxPool({ log, size: 1, clockMs: 1 });
  await pool.start();
});

afterAll(async () => {
  await removePluginCopies();
  await pool.stop();
});

describe('an idle isolate prepares the next call', () => {
  it('a call after an idle moment runs in a context made before it came, and made for it alone', async () => {
    const host = await plugin(`'use strict';
      const madeAt = Date.now();
      let calls = 0;
      tools.probe = () => ({ contextAgeMs: Date.now() - madeAt, callsInThisContext: ++calls });`);
    await host.callTool('probe', {});
    await idle(150);
    const second = valueOf(await host.callTool('probe', {})) as { contextAgeMs: number; callsInThisContext: number };
    // Made about 1 ms after the first call ended, so it is about as old as the pause.
    expect(second.contextAgeMs).toBeGreaterThanOrEqual(100);
    // A fresh context: the first call's counter is not in it.
    expect(second.callsInThisContext).toBe(1);
    await idle(150);
    const third = valueOf(await host.callTool('probe', {})) as { contextAgeMs: number; callsInThisContext: number };
    expect(third.callsInThisContext).toBe(1);
    await host.stop();
  });

  it('the top level run ahead of the call still counts against the call\'s CPU budget', async () => {
    // The top level spins for 250 ms of a 300 ms budget: only a call that spins too goes over. The
    // spins are wall-clock; on a loaded machine the top level's CPU is less, so the margins are wide.
    const host = await plugin(
      `'use strict';
      const spin = (ms) => { const until = Date.now() + ms; while (Date.now() < until) {} };
      spin(250);
      tools.probe = ({ spin_ms }) => { spin(spin_ms ?? 0); return { ok: true }; };`,
      300,
    );
    await idle(400);
    const cheap = await host.callTool('probe', { spin_ms: 0 });
    expect(cheap.isError, textOf(cheap)).toBeFalsy();
    await idle(400);
    const over = await host.callTool('probe', { spin_ms: 250 });
    expect(sandboxCode(over)).toBe('SANDBOX_TIMEOUT');
    expect(textOf(over)).toMatch(/more than its 300 ms of CPU time/);
    // The isolate that went over was disposed; the next call gets a new one and works.
    await idle(400);
    const after = await host.callTool('probe', { spin_ms: 0 });
    expect(after.isError, textOf(after)).toBeFalsy();
    await host.stop();
  });

  it('a call that comes before preparation finished makes its own context, with the same result', async () => {
    const host = await plugin(`'use strict';
      let calls = 0;
      tools.probe = () => ({ callsInThisContext: ++calls });`);
    const results = [];
    for (let i = 0; i < 20; i++) results.push(valueOf(await host.callTool('probe', {})));
    expect(results).toEqual(Array.from({ length: 20 }, () => ({ callsInThisContext: 1 })));
    await host.stop();
  });
});
