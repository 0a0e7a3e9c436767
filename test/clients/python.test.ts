/**
 * Interoperability: the official Python MCP SDK (a client nobody on this
 * project wrote) lists tools and calls them through Bastion over Streamable
 * HTTP with a bearer token, in each protocol era it speaks:
 *
 *   legacy       mode="legacy": the initialize handshake and a session (2025-11-25)
 *   2026-07-28   mode="2026-07-28": the revision adopted directly, every request on its own
 *   auto         mode="auto" (the SDK's default): it probes with server/discover; Bastion offers 2026-07-28
 *
 * Each era must behave the same (the listing filtered to the grant, the call
 * allowed, a call outside the grant denied and never reaching the upstream)
 * and its audit records must name the revision the client really spoke.
 * test/clients/python_client.py prints one JSON line.
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
  protocol: string;
  tools: string[];
  result: {
    content: { type: string; text: string }[];
    isError?: boolean;
    _meta?: Record<string, { stage: string; code: string; reason: string }>;
  };
}

async function pythonClient(url: string, token: string, tool: string, args: Record<string, unknown>, mode: string): Promise<PythonOutput> {
  const { stdout } = await run(PYTHON, [CLIENT, url, token, tool, JSON.stringify(args), mode], { cwd: ROOT, timeout: 60_000 });
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

/** The SDK's mode, and the revision Bastion must see it speak. */
const ERAS = [
  { mode: 'legacy', protocol: '2025-11-25' },
  { mode: '2026-07-28', protocol: '2026-07-28' },
  { mode: 'auto', protocol: '2026-07-28' },
] as const;

describe.each(ERAS)('the official Python MCP SDK through Bastion, mode=$mode', ({ mode, protocol }) => {
  it(`speaks ${protocol}, lists only the granted tools and calls rec__echo with a bearer token`, async () => {
    const sub = `agent:python-${mode}`;
    const token = await t.mint({ sub, cap: [{ tool: 'rec__echo' }] });
    const text = `from python, ${mode}`;
    const out = await pythonClient(t.url, token, 'rec__echo', { text }, mode);

    expect(out.protocol).toBe(protocol);
    expect(out.tools).toEqual(['rec__echo']);
    expect(out.result.isError ?? false).toBe(false);
    expect(out.result.content).toEqual([{ type: 'text', text: `echo: ${text}` }]);

    expect((await t.upstreamCalls()).filter((c) => c.tool === 'echo' && c.args.text === text)).toHaveLength(1);
    const records = (await t.auditRecords()).filter((r) => r.principal?.sub === sub && r.event === 'tools/call');
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({
      tool: 'rec__echo',
      outcome: 'ok',
      transport: 'http',
      protocol,
      principal: { sub, iss: t.broker.devKey!.issuer },
      decision: { allow: true },
    });
  });

  it('a token without the capability gets an isError result with the Bastion denial, audited in the same era', async () => {
    const sub = `agent:python-${mode}-denied`;
    const token = await t.mint({ sub, cap: [{ tool: 'rec__transfer' }] });
    const before = (await t.upstreamCalls()).length;
    const out = await pythonClient(t.url, token, 'rec__echo', { text: 'should not run' }, mode);

    expect(out.protocol).toBe(protocol);
    expect(out.tools).toEqual(['rec__transfer']);
    expect(out.result.isError).toBe(true);
    expect(out.result.content[0]?.text).toContain('Bastion refused this call at the authorize stage (BASTION_POLICY_DENIED)');
    expect(out.result._meta?.['bastion/denial']).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });

    expect((await t.upstreamCalls()).length).toBe(before);
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === sub && r.event === 'tools/call');
    expect(record).toMatchObject({ tool: 'rec__echo', outcome: 'denied', protocol, denial: { code: 'BASTION_POLICY_DENIED' } });
  });
});
