/**
 * Rug pulls: an upstream that changes a tool's description after it was
 * pinned gets that tool quarantined (hidden, calls refused, audited with
 * the diff) until an operator reviews and re-pins it with the CLI.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { ROOT, startTestBroker, type TestBroker } from './helpers/broker.ts';
import { eventually } from './helpers/approver.ts';

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker();
});
afterAll(async () => {
  await t?.close();
});

const cli = async (...args: string[]) => {
  const admin = await t.mint({ sub: 'operator:test', cap: [{ tool: 'bastion:tools' }] });
  return promisify(execFile)(process.execPath, [path.join(ROOT, 'broker/cli.ts'), ...args, '--url', new URL(t.url).origin, '--token', admin]);
};

describe('descriptor pinning', () => {
  it('pins on first sight, quarantines a changed descriptor, and re-pins after review', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:rugpull' }));
    const names = async () => (await client.listTools()).tools.map((tool) => tool.name);
    expect(await names()).toContain('rec__mutable');
    expect((await t.auditRecords()).some((r) => r.event === 'descriptor.pinned' && r.tool === 'rec__mutable')).toBe(true);

    await client.callTool({ name: 'rec__mutate', arguments: {} });
    await eventually(async () => ((await names()).includes('rec__mutable') ? undefined : true), 'the changed tool to leave tools/list');
    const refused = (await client.callTool({ name: 'rec__mutable', arguments: {} })) as CallToolResult;
    expect(refused._meta?.['bastion/denial']).toMatchObject({ stage: 'resolve', code: 'BASTION_TOOL_QUARANTINED' });
    expect((await t.upstreamCalls()).filter((c) => c.tool === 'mutable')).toHaveLength(0);
    const quarantined = (await t.auditRecords()).find((r) => r.event === 'descriptor.quarantined');
    expect(JSON.stringify(quarantined?.detail?.diff)).toContain('attacker.example');

    const review = await cli('tools', 'review');
    expect(review.stdout).toContain('rec__mutable');
    expect(review.stdout).toContain('- description: "Lists invoices."');
    expect(review.stdout).toContain('attacker.example');

    const approve = await cli('tools', 'approve', 'rec__mutable');
    expect(approve.stdout).toContain('re-pinned rec__mutable');
    await eventually(async () => ((await names()).includes('rec__mutable') ? true : undefined), 'the re-pinned tool to return');
    expect(((await client.callTool({ name: 'rec__mutable', arguments: {} })) as CallToolResult).isError).toBeFalsy();
    expect((await cli('tools', 'review')).stdout).toContain('no quarantined tools');
    expect((await t.auditRecords()).some((r) => r.event === 'descriptor.approved' && r.detail?.operator === 'operator:test')).toBe(true);
  });

  it('the review endpoint needs the literal bastion:tools grant', async () => {
    const wildcard = await t.mint({ sub: 'agent:curious', cap: [{ tool: '*' }] });
    const response = await fetch(new URL('/admin/tools/quarantine', t.url), { headers: { authorization: `Bearer ${wildcard}` } });
    expect(response.status).toBe(403);
  });
});

describe('pinning when state is unavailable', () => {
  it('a tool that could not be pinned is held back, not served as new; it returns once pinning succeeds', async () => {
    const { mkdtemp, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { openEmbeddedState } = await import('../broker/state/embedded.ts');
    const { DescriptorPins } = await import('../broker/pins.ts');
    const { createLogger } = await import('../broker/log.ts');
    const { StateUnavailable } = await import('../broker/state/store.ts');
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-pins-'));
    const real = await openEmbeddedState(path.join(dir, 'state.db'));
    let down = true;
    const guard = <T>(op: () => Promise<T>) => (down ? Promise.reject(new StateUnavailable('state store down')) : op());
    const state = {
      ...real,
      get: (ns: string, key: string) => guard(() => real.get(ns, key)),
      compareAndSet: (ns: string, key: string, expected: string | undefined, next: string) => guard(() => real.compareAndSet(ns, key, expected, next)),
    };
    const pins = new DescriptorPins({ state, log: createLogger('silent'), audit: async () => undefined, hashOf: (tool) => `sha256:${tool.description}`, exposedName: (c, tool) => `${c}__${tool}` });
    const source = { name: 'up', catalog: { tools: [{ name: 'fresh', description: 'd1', inputSchema: { type: 'object' as const } }] } };
    expect(pins.status('up', 'fresh', 'sha256:d1')).toBe('new');
    await expect(pins.reconcile(source)).rejects.toThrow('state store down');
    expect(pins.status('up', 'fresh', 'sha256:d1')).toBe('quarantined');
    down = false;
    await pins.reconcile(source);
    expect(pins.status('up', 'fresh', 'sha256:d1')).toBe('pinned');
    await real.close();
    await rm(dir, { recursive: true, force: true });
  });
});
