/**
 * Cancelled calls are recorded as cancelled: a real SDK client aborts its
 * tools/call (AbortSignal → notifications/cancelled) or ends its session
 * mid-call, against the recording upstream's slow tool and a sandboxed
 * plugin waiting on a fetch that is never answered. The audit record says BASTION_CANCELLED, not
 * "did not answer in time", and the upstream is told (it records the
 * cancellation it received). A real deadline still reads as a timeout.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { pluginHash } from '../../sandboxes/pin.ts';
import type { AuditRecord } from '../../broker/audit/chain.ts';
import { eventually } from '../helpers/approver.ts';
import { RECORDING_UPSTREAM, startTestBroker, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;

/** A server that takes requests and never answers them: a plugin fetching from it waits until it is stopped. */
let hanging: Server;
const fetched: { url: string; closed: boolean }[] = [];

beforeAll(async () => {
  hanging = createServer((request, response) => {
    const seen = { url: request.url ?? '', closed: false };
    fetched.push(seen);
    response.on('close', () => (seen.closed = true));
  });
  await new Promise<void>((resolve) => hanging.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(hanging.address() as AddressInfo).port}`;
  const waiter = await mkdtemp(path.join(tmpdir(), 'bastion-waiter-'));
  await writeFile(
    path.join(waiter, 'plugin.json'),
    JSON.stringify({
      name: 'waiter',
      version: '1.0.0',
      main: 'main.js',
      tools: [{ name: 'wait', description: 'Fetches a URL that never answers.', inputSchema: { type: 'object', properties: { url: { type: 'string' } }, required: ['url'] } }],
      capabilities: { fetch: { origins: [origin], methods: ['GET'] } },
      limits: { wall_ms: 600_000 },
    }),
  );
  await writeFile(path.join(waiter, 'main.js'), "'use strict';\ntools.wait = async ({ url }, host) => (await host.fetch(url)).status;\n");
  t = await startTestBroker({
    plugins: [{ dir: waiter, hash: await pluginHash(waiter), grants: { fetch: { origins: [origin], timeout: '10m' } } }],
    sandbox: { processes: 1 },
  });
  waiterOrigin = origin;
});
let waiterOrigin: string;
afterAll(async () => {
  await t?.close();
  hanging?.closeAllConnections();
  hanging?.close();
});

const callRecord = (sub: string) => eventually(async () => (await t.auditRecords()).find((r: AuditRecord) => r.event === 'tools/call' && r.principal?.sub === sub), `the tools/call record of ${sub}`);
const upstreamSaw = (tool: string, ms: number) => eventually(async () => (await t.upstreamCalls()).find((c) => c.tool === tool && c.args.ms === ms), `${tool} (${ms} ms) at the upstream`);

describe('a call the agent cancels', () => {
  it('while the upstream runs it: audited as BASTION_CANCELLED at the execute stage, and the upstream gets notifications/cancelled', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:canceller', cap: [{ tool: 'rec__slow' }] }));
    const controller = new AbortController();
    const pending = client.callTool({ name: 'rec__slow', arguments: { ms: 600_001 } }, { signal: controller.signal });
    pending.catch(() => undefined);
    await upstreamSaw('slow', 600_001);
    controller.abort('the user pressed stop');
    await expect(pending).rejects.toThrow();

    const record = await callRecord('agent:canceller');
    expect(record).toMatchObject({ tool: 'rec__slow', outcome: 'error', denial: { stage: 'execute', code: 'BASTION_CANCELLED' } });
    expect(record.denial?.reason).not.toMatch(/in time/);
    const cancelled = await upstreamSaw('slow.cancelled', 600_001);
    expect(String(cancelled.args.reason)).toContain('the user pressed stop');
  });

  it('by ending its session mid-call: audited as BASTION_CANCELLED, and the upstream is told', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:leaver', cap: [{ tool: 'rec__slow' }] }));
    const pending = client.callTool({ name: 'rec__slow', arguments: { ms: 600_002 } });
    pending.catch(() => undefined);
    await upstreamSaw('slow', 600_002);
    await (client.transport as StreamableHTTPClientTransport).terminateSession();

    expect(await callRecord('agent:leaver')).toMatchObject({ tool: 'rec__slow', denial: { stage: 'execute', code: 'BASTION_CANCELLED' } });
    await upstreamSaw('slow.cancelled', 600_002);
  });

  it('a sandboxed plugin call: audited as BASTION_CANCELLED at the execute stage, and the sandbox stops its work', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:plugin-canceller', cap: [{ tool: 'waiter__*' }] }));
    const controller = new AbortController();
    const url = `${waiterOrigin}/never`;
    const pending = client.callTool({ name: 'waiter__wait', arguments: { url } }, { signal: controller.signal });
    pending.catch(() => undefined);
    const seen = await eventually(async () => fetched.find((f) => f.url === '/never'), 'the plugin fetch');
    controller.abort();
    await expect(pending).rejects.toThrow();

    expect(await callRecord('agent:plugin-canceller')).toMatchObject({ tool: 'waiter__wait', outcome: 'error', denial: { stage: 'execute', code: 'BASTION_CANCELLED' } });
    // The plugin's fetch was torn down with the call.
    await eventually(async () => (seen.closed ? true : undefined), 'the plugin fetch to be closed');
  });
});

describe('a call the upstream does not answer in time', () => {
  it('is still BASTION_UPSTREAM_TIMEOUT (the agent did not cancel it)', async () => {
    const strict = await startTestBroker({ connectors: [{ name: 'rec', transport: 'stdio', command: process.execPath, args: [RECORDING_UPSTREAM], timeout: '5s' }] });
    try {
      const client = await strict.connect(await strict.mint({ sub: 'agent:patient', cap: [{ tool: 'rec__slow' }] }));
      // The short timeout also bounds connecting: wait until the connector is up (it retries).
      await eventually(async () => ((await client.listTools()).tools.length > 0 ? true : undefined), 'the connector to be ready');
      const result = (await client.callTool({ name: 'rec__slow', arguments: { ms: 600_003 } })) as CallToolResult;
      expect(result._meta?.['bastion/denial']).toMatchObject({ stage: 'execute', code: 'BASTION_UPSTREAM_TIMEOUT' });
      const record = (await strict.auditRecords()).find((r) => r.event === 'tools/call' && r.principal?.sub === 'agent:patient');
      expect(record).toMatchObject({ denial: { code: 'BASTION_UPSTREAM_TIMEOUT' } });
    } finally {
      await strict.close();
    }
  });
});
