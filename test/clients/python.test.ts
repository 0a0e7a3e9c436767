/**
 * Interoperability: the official Python MCP SDK (a client nobody on this
 * project wrote) lists tools and calls them through Bastion over Streamable
 * HTTP with a bearer token. test/clients/python_client.py prints one JSON line.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';

const run = promisify(execFile);
const PYTHON = path.join(ROOT, '.tools/py/bin/python');
const CLIENT = path.join(ROOT, 'test/clients/python_client.py');

interface PythonOutput {
  tools: string[];
  result: {
    content: { type: string; text: string }[];
    isError?: boolean;
    _meta?: Record<string, { stage: string; code: string; reason: string }>;
  };
}

async function pythonClient(url: string, token: string, tool: string, args: Record<string, unknown>): Promise<PythonOutput> {
  const { stdout } = await run(PYTHON, [CLIENT, url, token, tool, JSON.stringify(args)], { cwd: ROOT, timeout: 60_000 });
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as PythonOutput;
}

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker();
});
afterAll(async () => {
  await t?.close();
});

describe('the official Python MCP SDK through Bastion', () => {
  it('lists only the granted tools and calls rec__echo with a bearer token', async () => {
    const token = await t.mint({ sub: 'agent:python', cap: [{ tool: 'rec__echo' }] });
    const out = await pythonClient(t.url, token, 'rec__echo', { text: 'from python' });

    expect(out.tools).toEqual(['rec__echo']);
    expect(out.result.isError ?? false).toBe(false);
    expect(out.result.content).toEqual([{ type: 'text', text: 'echo: from python' }]);

    expect((await t.upstreamCalls()).filter((c) => c.tool === 'echo' && c.args.text === 'from python')).toHaveLength(1);
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:python' && r.event === 'tools/call');
    expect(record).toMatchObject({
      tool: 'rec__echo',
      outcome: 'ok',
      transport: 'http',
      principal: { sub: 'agent:python', iss: t.broker.devKey!.issuer },
      decision: { allow: true },
    });
  });

  it('a token without the capability gets an isError result with the Bastion denial', async () => {
    const token = await t.mint({ sub: 'agent:python-denied', cap: [{ tool: 'rec__transfer' }] });
    const before = (await t.upstreamCalls()).length;
    const out = await pythonClient(t.url, token, 'rec__echo', { text: 'should not run' });

    expect(out.tools).toEqual(['rec__transfer']);
    expect(out.result.isError).toBe(true);
    expect(out.result.content[0]?.text).toContain('Bastion refused this call at the authorize stage (BASTION_POLICY_DENIED)');
    expect(out.result._meta?.['bastion/denial']).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });

    expect((await t.upstreamCalls()).length).toBe(before);
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:python-denied' && r.event === 'tools/call');
    expect(record).toMatchObject({ tool: 'rec__echo', outcome: 'denied', denial: { code: 'BASTION_POLICY_DENIED' } });
  });
});
