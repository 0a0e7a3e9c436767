/**
 * Host capabilities: granted only when the manifest asks and the operator
 * allows; performed by the broker; every use recorded. fetch is checked per
 * hop (allow-listed origin and method, public addresses unless the operator
 * named the address), with size and time caps; kv is namespaced per plugin;
 * log lands in the broker's logger under the plugin's name.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openEmbeddedState } from '../../broker/state/embedded.ts';
import type { StateStore } from '../../broker/state/store.ts';
import { isPublicAddress } from '../../sandboxes/capabilities/fetch.ts';
import { MemoryKeyValueStore } from '../../sandboxes/capabilities/kv.ts';
import type { CapabilityUse } from '../../sandboxes/capabilities/uses.ts';
import { capabilityUsesOf, PluginHost, type PluginHostOptions } from '../../sandboxes/host.ts';
import { SandboxPool } from '../../sandboxes/pool.ts';
import { capturingLog, HOSTILE_DIR, pluginCopy, removePluginCopies, quietLog, sandboxCode, textOf, valueOf } from './helpers.ts';

const log = quietLog();
let pool: SandboxPool;
let allowed: http.Server;
let other: http.Server;
let allowedOrigin: string;
let otherOrigin: string;
let otherHits = 0;
const started: PluginHost[] = [];

function listen(server: http.Server): Promise<string> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
}

/** A hostile-plugin copy whose manifest asks for fetch on `origins`, loaded with `options`. */
async function plugin(
  origins: string[],
  options: Omit<PluginHostOptions, 'dir' | 'hash' | 'pool' | 'log'> & { log?: PluginHostOptions['log'] },
  limits: Record<string, number> = {},
): Promise<PluginHost> {
  const copy = await pluginCopy(HOSTILE_DIR, (m) => {
    m.capabilities.fetch.origins = origins;
    Object.assign(m.limits, limits);
  });
  const host = new PluginHost({ log, ...options, dir: copy.dir, hash: copy.hash, pool });
  await host.start();
  expect(host.lastError).toBeUndefined();
  started.push(host);
  return host;
}

const attack = (host: PluginHost, name: string, extra: Record<string, unknown> = {}) => host.callTool('attack', { name, ...extra });

beforeAll(async () => {
  pool = new SandboxPool({ log, size: 2 });
  allowed = http.createServer((req, res) => {
    switch (req.url) {
      case '/hello':
        res.end(`hello ${req.method}`);
        return;
      case '/big':
        res.end('x'.repeat(1024 * 1024));
        return;
      case '/big-chunked':
        res.write('y'.repeat(40 * 1024));
        res.write('y'.repeat(40 * 1024));
        res.end();
        return;
      case '/redirect-out':
        res.writeHead(302, { location: `${otherOrigin}/steal` }).end();
        return;
      case '/redirect-in':
        res.writeHead(301, { location: '/hello' }).end();
        return;
      case '/slow':
        setTimeout(() => res.end('slow'), 150);
        return;
      default:
        res.writeHead(404).end('no');
    }
  });
  other = http.createServer((_req, res) => {
    otherHits++;
    res.end('you should not see this');
  });
  [allowedOrigin, otherOrigin] = await Promise.all([listen(allowed), listen(other), pool.start()]);
});

afterAll(async () => {
  await removePluginCopies();
  for (const host of started) await host.stop();
  await pool.stop();
  allowed.closeAllConnections();
  other.closeAllConnections();
  await Promise.all([new Promise((r) => allowed.close(r)), new Promise((r) => other.close(r))]);
});

describe('fetch', () => {
  let host: PluginHost;

  beforeAll(async () => {
    host = await plugin([allowedOrigin, 'http://allowed-name.test:1'], {
      grants: { fetch: { origins: [allowedOrigin, 'http://allowed-name.test:1'], methods: ['GET'], maxResponseBytes: 64 * 1024 } },
    });
  });

  it('reaches an allow-listed origin, performed by the host, and records the use', async () => {
    const result = await attack(host, 'fetch', { url: `${allowedOrigin}/hello` });
    expect(valueOf(result)).toEqual({ status: 200, body: 'hello GET' });
    expect(capabilityUsesOf(result)).toEqual([{ cap: 'fetch', method: 'GET', url: `${allowedOrigin}/hello`, outcome: 'ok', status: 200, bytes: 9 }]);
  });

  it('follows a redirect that stays on allow-listed origins', async () => {
    const result = await attack(host, 'fetch', { url: `${allowedOrigin}/redirect-in` });
    expect(valueOf(result)).toEqual({ status: 200, body: 'hello GET' });
    expect(capabilityUsesOf(result)[0]).toMatchObject({ finalUrl: `${allowedOrigin}/hello`, redirects: 1, status: 200 });
  });

  it('refuses a host that is not allow-listed, before any network access', async () => {
    const result = await attack(host, 'fetch', { url: 'http://example.com/' });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toMatch(/origin http:\/\/example\.com is not allow-listed/);
  });

  it('refuses 127.0.0.1 on a port nobody allow-listed', async () => {
    const hits = otherHits;
    const result = await attack(host, 'fetch', { url: `${otherOrigin}/` });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(otherHits).toBe(hits);
  });

  it('refuses a redirect to a host that is not allow-listed, and never contacts it', async () => {
    const hits = otherHits;
    const result = await attack(host, 'fetch', { url: `${allowedOrigin}/redirect-out` });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toContain(`origin ${otherOrigin} is not allow-listed`);
    expect(otherHits).toBe(hits);
  });

  it('refuses a response over the size cap (declared or streamed)', async () => {
    for (const path of ['/big', '/big-chunked']) {
      const result = await attack(host, 'fetch', { url: `${allowedOrigin}${path}` });
      expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
      expect(textOf(result)).toMatch(/65536-byte cap/);
    }
  });

  it('refuses a method that is not allowed', async () => {
    const result = await attack(host, 'fetch', { url: `${allowedOrigin}/hello`, value: 'POST' });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toMatch(/method POST is not allowed/);
  });

  it('refuses a non-http scheme', async () => {
    const result = await attack(host, 'fetch', { url: 'file:///etc/passwd' });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
  });

  it('lets the plugin handle a refusal, and still records it', async () => {
    const result = await attack(host, 'fetch_caught', { url: 'http://169.254.169.254/latest/meta-data/' });
    expect(valueOf(result)).toMatch(/^refused: fetch: origin http:\/\/169\.254\.169\.254 is not allow-listed/);
    expect(capabilityUsesOf(result)).toEqual([
      expect.objectContaining({ cap: 'fetch', url: 'http://169.254.169.254/latest/meta-data/', outcome: 'denied' }),
    ]);
  });
});

describe('fetch and private addresses', () => {
  it.each([
    ['127.0.0.1', false],
    ['127.8.9.10', false],
    ['::1', false],
    ['::ffff:127.0.0.1', false],
    ['10.1.2.3', false],
    ['172.16.0.1', false],
    ['192.168.1.1', false],
    ['169.254.169.254', false],
    ['100.64.0.1', false],
    ['0.0.0.0', false],
    ['fe80::1', false],
    ['fd00::1', false],
    ['not an address', false],
    ['93.184.215.14', true],
    ['8.8.8.8', true],
    ['2606:4700:4700::1111', true],
  ])('%s is public: %s', (address, expected) => {
    expect(isPublicAddress(address)).toBe(expected);
  });

  it('refuses an allow-listed host name that resolves to a loopback address', async () => {
    const port = new URL(allowedOrigin).port;
    const origin = `http://internal.test:${port}`;
    const host = await plugin([origin], { grants: { fetch: { origins: [origin], resolve: async () => ['127.0.0.1'] } } });
    const result = await attack(host, 'fetch', { url: `${origin}/hello` });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toMatch(/resolves to the non-public address 127\.0\.0\.1/);
  });

  it('reaches localhost when the operator allow-listed it by that name', async () => {
    const port = new URL(allowedOrigin).port;
    const origin = `http://localhost:${port}`;
    const host = await plugin([origin], { grants: { fetch: { origins: [origin], resolve: async () => ['127.0.0.1'] } } });
    expect(valueOf(await attack(host, 'fetch', { url: `${origin}/hello` }))).toEqual({ status: 200, body: 'hello GET' });
  });

  it('gives the plugin only the intersection of what it asked for and what the operator granted', async () => {
    const host = await plugin([allowedOrigin, otherOrigin], { grants: { fetch: { origins: [allowedOrigin] } } });
    expect(sandboxCode(await attack(host, 'fetch', { url: `${otherOrigin}/` }))).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(valueOf(await attack(host, 'fetch', { url: `${allowedOrigin}/hello` }))).toEqual({ status: 200, body: 'hello GET' });
  });
});

describe('deadlines and budgets', () => {
  it('a plugin that calls a capability in a loop is stopped by the wall-clock deadline (SANDBOX_TIMEOUT)', async () => {
    const host = await plugin([allowedOrigin], { grants: { fetch: { origins: [allowedOrigin] }, maxCapabilityCalls: 1000 } }, { wall_ms: 600 });
    const result = await attack(host, 'fetch_loop', { url: `${allowedOrigin}/slow` });
    expect(sandboxCode(result)).toBe('SANDBOX_TIMEOUT');
    expect(textOf(result)).toMatch(/600 ms wall-clock deadline/);
    const uses = capabilityUsesOf(result);
    expect(uses.length).toBeGreaterThan(0);
    expect(uses.every((use) => use.cap === 'fetch')).toBe(true);
  });

  it('each fetch has its own deadline', async () => {
    const host = await plugin([allowedOrigin], { grants: { fetch: { origins: [allowedOrigin], timeoutMs: 50 } } });
    const result = await attack(host, 'fetch_caught', { url: `${allowedOrigin}/slow` });
    expect(valueOf(result)).toMatch(/did not answer in time/);
    expect(capabilityUsesOf(result)[0]).toMatchObject({ outcome: 'error' });
  });

  it('caps the number of capability uses per call', async () => {
    const host = await plugin([allowedOrigin], { grants: { fetch: { origins: [allowedOrigin] }, maxCapabilityCalls: 3 } });
    const result = await attack(host, 'fetch_loop', { url: `${allowedOrigin}/hello` });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toMatch(/more than 3 capability uses/);
    expect(capabilityUsesOf(result).map((u) => u.outcome)).toEqual(['ok', 'ok', 'ok', 'denied']);
  });
});

describe('the per-call cap on capability uses', () => {
  it('counts refused uses: a host.log flood without the grant ends at the cap with a bounded record', async () => {
    const host = await plugin([allowedOrigin], { grants: {} }, { cpu_ms: 5000, wall_ms: 10_000 });
    const result = await attack(host, 'log_flood', { n: 300_000 });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toMatch(/more than 64 capability uses in one call; the call was ended/);
    const uses = capabilityUsesOf(result);
    expect(uses).toHaveLength(65);
    expect(uses.slice(0, 64).every((use) => use.cap === 'log' && use.outcome === 'denied' && use.reason === 'log is not granted to this plugin')).toBe(true);
    expect(uses[64]).toMatchObject({ cap: 'log', outcome: 'denied', reason: expect.stringMatching(/more than 64/) });
    // The call's isolate was disposed; the next call runs in a fresh one.
    expect(valueOf(await host.callTool('ok', {}))).toEqual({ ok: true, polluted: 'undefined' });
  });

  it('counts granted uses the same way', async () => {
    const host = await plugin([allowedOrigin], { grants: { log: true, maxCapabilityCalls: 10 } }, { cpu_ms: 5000, wall_ms: 10_000 });
    const result = await attack(host, 'log_flood', { n: 300_000 });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(capabilityUsesOf(result).map((use) => use.outcome)).toEqual([...Array(10).fill('ok'), 'denied']);
  });

  it('counts requests the host cannot parse', async () => {
    const host = await plugin([allowedOrigin], { name: 'invalid-flood', grants: { kv: true, maxCapabilityCalls: 5 } }, { cpu_ms: 5000, wall_ms: 10_000 });
    const result = await attack(host, 'invalid_flood', { n: 1000 });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    const uses = capabilityUsesOf(result);
    expect(uses.map((use) => `${use.cap}:${use.outcome}`)).toEqual([...Array(5).fill('invalid:error'), 'invalid:denied']);
    expect(uses[0]).toMatchObject({ reason: expect.stringMatching(/^malformed capability request: key/) });
  });
});

describe('kv', () => {
  let stateDir: string;
  let state: StateStore;
  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(tmpdir(), 'bastion-kv-'));
    state = await openEmbeddedState(path.join(stateDir, 'state.db'));
  });
  afterAll(async () => {
    await state?.close();
    await rm(stateDir, { recursive: true, force: true });
  });
  const big = 'x'.repeat(60_000);

  it('is namespaced per plugin, by the name the operator gave it', async () => {
    const store = new MemoryKeyValueStore();
    const alpha = await plugin([allowedOrigin], { name: 'alpha', kv: store, grants: { kv: true } });
    const beta = await plugin([allowedOrigin], { name: 'beta', kv: store, grants: { kv: true } });
    expect(valueOf(await attack(alpha, 'kv_set', { value: { owner: 'alpha' } }))).toBe('set');
    expect(valueOf(await attack(alpha, 'kv_get'))).toEqual({ owner: 'alpha' });
    expect(valueOf(await attack(beta, 'kv_get'))).toBeNull();
    expect(await store.get('plugin:alpha', 'k')).toBe('{"owner":"alpha"}');
    expect(await store.get('plugin:beta', 'k')).toBeUndefined();
    const uses = capabilityUsesOf(await attack(beta, 'kv_get'));
    expect(uses).toEqual([{ cap: 'kv', op: 'get', key: 'k', outcome: 'ok' } satisfies CapabilityUse]);
  });

  it("never takes its namespace from the manifest: a plugin granted kv without an operator's name is not loaded", async () => {
    // The hostile manifest says "hostile"; a store keyed by that would be anyone's who writes that name in a manifest.
    const copy = await pluginCopy(HOSTILE_DIR);
    const host = new PluginHost({ log, dir: copy.dir, hash: copy.hash, pool, kv: state, grants: { kv: true } });
    started.push(host);
    await host.start();
    expect(host.status).toBe('down');
    expect(host.lastError).toMatch(/kv is granted but the plugin has no configured name/);
  });

  it('keeps a plugin within max_bytes (default 1 MiB): writes past it are refused, recorded as denied, and store nothing', async () => {
    const host = await plugin([allowedOrigin], { name: 'hoarder', kv: state, grants: { kv: true } });
    // Each entry is "fill-N" plus 60,002 bytes of JSON: 17 fit in 1 MiB, the 18th does not.
    const result = await attack(host, 'kv_fill', { n: 20, value: big });
    const outcomes = valueOf(result) as string[];
    expect(outcomes.slice(0, 17)).toEqual(Array(17).fill('ok'));
    for (const refusal of outcomes.slice(17)) expect(refusal).toMatch(/^kv: quota exceeded: storing "fill-\d+" would take this plugin's store past 1048576 bytes \(it holds 1020\d{3} bytes in 17 keys\)$/);
    const uses = capabilityUsesOf(result);
    expect(uses.map((use) => use.outcome)).toEqual([...Array(17).fill('ok'), 'denied', 'denied', 'denied']);
    expect(uses[17]).toMatchObject({ cap: 'kv', op: 'set', key: 'fill-17', reason: expect.stringMatching(/quota exceeded/) });
    const stored = await state.entries('plugin:hoarder');
    expect(stored).toHaveLength(17);
    expect(stored.reduce((sum, [key, value]) => sum + Buffer.byteLength(key) + Buffer.byteLength(value), 0)).toBeLessThanOrEqual(1024 * 1024);
    // Across calls too: the quota is the plugin's, not the call's.
    expect(valueOf(await attack(host, 'kv_fill', { n: 1, value: big }))).toEqual(['ok']);
    expect((valueOf(await attack(host, 'kv_fill', { n: 18, value: big })) as string[])[17]).toMatch(/quota exceeded/);
  });

  it('keeps a plugin within max_keys; deleting frees a place; overwriting a key it holds is allowed at the limit', async () => {
    const host = await plugin([allowedOrigin], { name: 'many-keys', kv: state, grants: { kv: { maxKeys: 3 } } });
    const first = valueOf(await attack(host, 'kv_fill', { n: 4, value: 1 })) as string[];
    expect(first.slice(0, 3)).toEqual(['ok', 'ok', 'ok']);
    expect(first[3]).toBe('kv: quota exceeded: this plugin may keep at most 3 keys (it holds 3)');
    expect(valueOf(await attack(host, 'kv_fill', { n: 3, value: 2 }))).toEqual(['ok', 'ok', 'ok']);
    expect(valueOf(await attack(host, 'kv_delete', { value: 'fill-0' }))).toBe('deleted');
    expect(valueOf(await attack(host, 'kv_set', { value: 'in the freed place' }))).toBe('set');
    expect((await state.entries('plugin:many-keys')).map(([key]) => key).sort()).toEqual(['fill-1', 'fill-2', 'k']);
  });

  it('refuses a key or a value over its size cap, before the store', async () => {
    const host = await plugin([allowedOrigin], { name: 'sized', kv: state, grants: { kv: { maxValueBytes: 100 } } });
    const result = await attack(host, 'kv_set', { value: 'y'.repeat(101) });
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toMatch(/kv: value larger than 100 bytes/);
    expect(capabilityUsesOf(result)).toEqual([expect.objectContaining({ cap: 'kv', op: 'set', outcome: 'denied' })]);
    expect(await state.entries('plugin:sized')).toEqual([]);
  });

  it('is refused when the operator did not grant it', async () => {
    const host = await plugin([allowedOrigin], { grants: {} });
    const result = await attack(host, 'kv_get');
    expect(sandboxCode(result)).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(textOf(result)).toMatch(/kv is not granted/);
  });
});

describe('log', () => {
  it("writes to the broker's logger under the plugin's name", async () => {
    const captured = capturingLog();
    const host = await plugin([allowedOrigin], { name: 'chatty', log: captured.log, grants: { log: true } });
    const result = await attack(host, 'log');
    expect(valueOf(result)).toBe('logged');
    expect(capabilityUsesOf(result)).toEqual([{ cap: 'log', level: 'warn', outcome: 'ok' }]);
    expect(captured.lines).toContainEqual(expect.objectContaining({ plugin: 'chatty', source: 'plugin', level: 40, msg: 'hello from the hostile plugin' }));
  });
});
