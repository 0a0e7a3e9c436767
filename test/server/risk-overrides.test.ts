/**
 * Per-connector risk overrides (`connectors[].tools.<name>.risk`): an
 * upstream's `destructiveHint` makes a tool high-risk (a human must approve
 * each call), which the operator can lower for a tool that is routine in
 * their setting, or raise for one the upstream calls harmless. Real broker,
 * real policy, the recording upstream (`wipe` is destructiveHint, `echo`
 * readOnlyHint); approvals off, so high risk shows as a refusal.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { parseConfig } from '../../broker/config.ts';
import { RECORDING_UPSTREAM, startTestBroker, type TestBroker } from '../helpers/broker.ts';

const rec = (tools: Record<string, unknown>) => ({ name: 'rec', transport: 'stdio', command: process.execPath, args: [RECORDING_UPSTREAM], tools });

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker({ approvals: { enabled: false }, connectors: [rec({ wipe: { risk: 'medium' }, echo: { risk: 'high' } })] });
});
afterAll(async () => {
  await t?.close();
});

describe('per-connector risk overrides', () => {
  it('a destructiveHint tool lowered to medium runs without approval', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:routine', cap: [{ tool: 'rec__wipe' }] }));
    const result = (await client.callTool({ name: 'rec__wipe', arguments: {} })) as CallToolResult;
    expect(result.isError).toBeFalsy();
    expect(result.content).toEqual([{ type: 'text', text: 'wiped' }]);
    expect(t.broker.registry.resolveTool('rec__wipe').risk).toBe('medium');
  });

  it('a readOnlyHint tool raised to high needs approval (refused here: approvals are off)', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:careful', cap: [{ tool: 'rec__echo' }] }));
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'x' } })) as CallToolResult;
    expect(result._meta?.['bastion/denial']).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_REQUIRED' });
    expect((result.content[0] as { text: string }).text).toContain('rec__echo is a high-risk tool');
  });

  it('a tool without an override keeps the risk its annotations give', () => {
    expect(t.broker.registry.resolveTool('rec__transfer').risk).toBe('medium'); // no hints
    expect(t.broker.registry.resolveTool('rec__crash').risk).toBe('medium');
  });

  it('an override must be low, medium or high: anything else is a config error naming the field', () => {
    expect(() => parseConfig({ connectors: [rec({ write_file: { risk: 'none' } })] })).toThrow(/connectors\.0\.tools\.write_file\.risk/);
  });
});
