/**
 * The approval webhook as a chat channel receives it: a real broker POSTs to
 * a real HTTP receiver. Agent-supplied text in the summary carries hidden
 * characters escaped, never raw, and a request hiding any says so (as its
 * audit record does).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { approverToken, eventually, signInApprover } from '../helpers/approver.ts';

let t: TestBroker;
let receiver: Server;
const received: string[] = [];

beforeAll(async () => {
  receiver = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      received.push(body);
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  t = await startTestBroker({ approvals: { webhook: { url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook` } } });
});
afterAll(async () => {
  await t?.close();
  await new Promise((resolve) => receiver?.close(resolve));
});

describe('approval webhook', () => {
  it('escapes hidden characters in the summary and warns about them', async () => {
    const sub = 'agent:web\u202Ehook';
    const client = await t.connect(await t.mint({ sub, cap: [{ tool: 'rec__wipe' }] }));
    const result = client.callTool({ name: 'rec__wipe', arguments: { target: 'prod\u200B-db' } }) as Promise<CallToolResult>;
    result.catch(() => undefined);
    const raw = await eventually(async () => received.find((body) => body.includes('agent:web')), 'the webhook POST');
    const body = JSON.parse(raw) as { text: string; agent: string; approval_id: string; hidden_characters: { where: string; characters: string[] }[] };
    expect(raw).not.toMatch(/[\u202E\u200B]/);
    expect(body.agent).toBe('agent:web\\u202Ehook');
    expect(body.text).toContain('agent:web\\u202Ehook wants to call rec__wipe');
    expect(body.text).toContain('WARNING: it contains hidden or direction-changing characters');
    expect(body.hidden_characters).toEqual([
      { where: 'principal.sub', characters: ['U+202E RIGHT-TO-LEFT OVERRIDE'] },
      { where: 'arguments.target', characters: ['U+200B ZERO WIDTH SPACE'] },
    ]);
    // The audit trail keeps where the request hid characters.
    const requested = (await t.auditRecords()).find((r) => r.event === 'approval.requested' && r.detail?.approval_id === body.approval_id);
    expect(requested?.detail?.hidden_characters).toEqual(body.hidden_characters);
    const key = t.broker.devKey!;
    const alice = await signInApprover(t.url, await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:alice'), 'approver:alice');
    const parked = (await alice.pending()).find((c) => c.id === body.approval_id);
    await alice.decide(parked.id, 'deny', 'hidden characters', parked.call_hash);
    expect((await result).isError).toBe(true);
  });

  it('a plain request carries no warning', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:plain', cap: [{ tool: 'rec__wipe' }] }));
    const controller = new AbortController();
    const result = client.callTool({ name: 'rec__wipe', arguments: {} }, { signal: controller.signal });
    result.catch(() => undefined);
    const body = JSON.parse(await eventually(async () => received.find((b) => b.includes('agent:plain')), 'the webhook POST')) as { text: string; hidden_characters: unknown[] };
    expect(body.text).toBe('Bastion: agent:plain wants to call rec__wipe (high risk); approval needed.');
    expect(body.hidden_characters).toEqual([]);
    controller.abort();
  });
});
