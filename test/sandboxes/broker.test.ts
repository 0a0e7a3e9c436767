/**
 * Plugins through the whole pipeline: a sandboxed tool is listed and called
 * like a connector tool (token, policy, audit), a hostile plugin's failures
 * end only its call, and a plugin whose files changed after pinning is not
 * loaded while the broker keeps serving.
 */
import { cp, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { DEMO_PLUGIN_DIR, DEMO_PLUGIN_HASH } from '../../broker/config.ts';
import { pluginHash } from '../../sandboxes/pin.ts';
import { ROOT, RECORDING_UPSTREAM, startTestBroker, type TestBroker } from '../helpers/broker.ts';

const HOSTILE = path.join(ROOT, 'test/sandboxes/fixtures/hostile');

describe('the demo plugin pin', () => {
  it('matches the files shipped in sandboxes/examples/text-utils', async () => {
    expect(await pluginHash(DEMO_PLUGIN_DIR)).toBe(DEMO_PLUGIN_HASH);
  });
});

describe('plugins in the pipeline', () => {
  let t: TestBroker;
  let tamperedDir: string;
  beforeAll(async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-plugins-'));
    tamperedDir = path.join(dir, 'tampered');
    await cp(DEMO_PLUGIN_DIR, tamperedDir, { recursive: true });
    const pinned = await pluginHash(tamperedDir);
    // Changed after pinning: one more line in the script.
    await writeFile(path.join(tamperedDir, 'main.js'), `${await (await import('node:fs/promises')).readFile(path.join(tamperedDir, 'main.js'), 'utf8')}\n// changed\n`);
    t = await startTestBroker({
      connectors: [{ name: 'rec', transport: 'stdio', command: process.execPath, args: [RECORDING_UPSTREAM], env: { CALL_LOG: path.join(dir, 'calls.jsonl') } }],
      plugins: [
        { dir: DEMO_PLUGIN_DIR, hash: DEMO_PLUGIN_HASH },
        { dir: HOSTILE, hash: await pluginHash(HOSTILE) },
        { dir: tamperedDir, hash: pinned, name: 'tampered' },
      ],
      sandbox: { processes: 1 },
    });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('lists and runs a sandboxed tool through token, policy and audit', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:plugins', cap: [{ tool: 'text-utils__*' }] }));
    const names = (await client.listTools()).tools.map((tool) => tool.name);
    expect(names).toEqual(expect.arrayContaining(['text-utils__word_count', 'text-utils__slugify']));
    expect(names.some((name) => name.startsWith('hostile__') || name.startsWith('rec__'))).toBe(false);
    const result = (await client.callTool({ name: 'text-utils__word_count', arguments: { text: 'one two three' } })) as CallToolResult;
    expect(result.isError).toBeFalsy();
    expect(result.structuredContent).toMatchObject({ words: 3 });
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:plugins' && r.tool === 'text-utils__word_count');
    expect(record).toMatchObject({ outcome: 'ok', decision: { allow: true } });
  });

  it('policy still decides: a plugin tool outside the capability is refused and never runs', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:plugins-narrow', cap: [{ tool: 'text-utils__slugify' }] }));
    const result = (await client.callTool({ name: 'text-utils__word_count', arguments: { text: 'x' } })) as CallToolResult;
    expect(result._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_POLICY_DENIED' });
  });

  it('a hostile plugin fails its own call safely; the broker and other tools keep serving', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:hostile', cap: [{ tool: 'hostile__*' }, { tool: 'text-utils__*' }, { tool: 'rec__echo' }] }));
    for (const attack of ['process', 'function_constructor', 'loop', 'heap_bomb']) {
      const result = (await client.callTool({ name: 'hostile__attack', arguments: { name: attack } })) as CallToolResult;
      expect(result.isError, attack).toBe(true);
      expect(JSON.stringify(result.content), attack).toMatch(/SANDBOX_/);
    }
    const ok = (await client.callTool({ name: 'hostile__ok', arguments: {} })) as CallToolResult;
    expect(ok.isError).toBeFalsy();
    expect(JSON.parse((ok.content[0] as { text: string }).text)).toEqual({ ok: true, polluted: 'undefined' });
    expect(((await client.callTool({ name: 'rec__echo', arguments: { text: 'still here' } })) as CallToolResult).isError).toBeFalsy();
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('a host.log flood without the grant ends at the per-call cap and leaves a bounded audit record', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:log-flood', cap: [{ tool: 'hostile__*' }] }));
    const result = (await client.callTool({ name: 'hostile__attack', arguments: { name: 'log_flood', n: 300_000 } })) as CallToolResult;
    expect(JSON.stringify(result.content)).toMatch(/SANDBOX_CAPABILITY_DENIED.*more than 64 capability uses/);
    // The uses stay with the broker: the agent gets none of them.
    expect(result._meta?.['bastion/capabilities']).toBeUndefined();
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:log-flood' && r.tool === 'hostile__attack')!;
    expect(record.detail).toMatchObject({ capability_counts: { log: { denied: 65 } }, capability_uses_omitted: 49 });
    expect(record.detail!.capability_uses).toHaveLength(16);
    expect(JSON.stringify(record).length).toBeLessThan(8 * 1024);
  });

  it('a plugin changed after pinning is not loaded; its tools are unavailable, naming both hashes', async () => {
    const tampered = t.broker.plugins.find((p) => p.name === 'tampered')!;
    expect(tampered.status).toBe('down');
    expect(tampered.lastError).toMatch(/sha256:[0-9a-f]{64}.*sha256:[0-9a-f]{64}/s);
    const client = await t.connect(await t.mint({ sub: 'agent:tampered', cap: [{ tool: '*' }] }));
    const result = (await client.callTool({ name: 'tampered__word_count', arguments: { text: 'x' } })) as CallToolResult;
    expect(result._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_CONNECTOR_UNAVAILABLE' });
  });
});
