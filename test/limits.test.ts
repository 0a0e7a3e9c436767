/**
 * Stage 4 and the global caps, against a real broker and upstream: a burst
 * over the rate limit is refused with a retry-after and the upstream sees
 * no excess call; concurrency caps; argument, body, depth and session caps.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { jsonDepth } from '../broker/limits.ts';
import { startTestBroker, type TestBroker } from './helpers/broker.ts';
import { openSession, post, toolCall } from './helpers/http.ts';

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker({
    limits: {
      // A slow refill (one token per 10 s), so a burst on a loaded machine still outpaces it.
      principal: { requests_per_minute: 6, burst: 5, concurrency: 2 },
      tools: [{ tool: 'rec__transfer', requests_per_minute: 6, burst: 2 }],
      max_argument_bytes: 4096,
      max_json_depth: 32,
      sessions_per_principal: 3,
    },
  });
});
afterAll(async () => {
  await t?.close();
});

const denial = (r: CallToolResult) => r._meta?.['bastion/denial'] as { stage: string; code: string; reason: string; retry_after_ms?: number } | undefined;

describe('rate limits', () => {
  it('a burst over the per-principal bucket is refused with retry-after; the upstream sees no excess call', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:burst' }));
    // The session's first call starts its own upstream process (slow on a loaded machine): make it first.
    expect(((await client.callTool({ name: 'rec__echo', arguments: { text: 'warm-up' } })) as CallToolResult).isError).toBeFalsy();
    // Back to back (the concurrency cap of 2 is tested separately); far quicker than the 10 s refill. The
    // warm-up took one token of 5, and the bucket may have won it back while the process started: 4 or 5 left.
    const results: CallToolResult[] = [];
    for (let i = 0; i < 12; i++) results.push((await client.callTool({ name: 'rec__echo', arguments: { text: `burst-${i}` } })) as CallToolResult);
    const ok = results.filter((r) => !r.isError);
    const limited = results.filter((r) => denial(r)?.code === 'BASTION_RATE_LIMITED');
    expect([4, 5]).toContain(ok.length);
    // The bucket emptied once: every call after the first refusal is refused too.
    expect(results.slice(0, ok.length).every((r) => !r.isError)).toBe(true);
    expect(limited).toHaveLength(12 - ok.length);
    expect(denial(limited[0]!)).toMatchObject({ stage: 'limit' });
    expect(denial(limited[0]!)!.retry_after_ms).toBeGreaterThan(0);
    expect(denial(limited[0]!)!.reason).toMatch(/retry after \d+s/);
    const seen = (await t.upstreamCalls()).filter((c) => String(c.args.text).startsWith('burst-'));
    expect(seen).toHaveLength(ok.length);
    const refused = (await t.auditRecords()).filter((r) => r.principal?.sub === 'agent:burst' && r.denial?.code === 'BASTION_RATE_LIMITED');
    expect(refused).toHaveLength(limited.length);
  });

  it('a per-tool bucket is tighter than the principal bucket', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:payer' }));
    const codes = [];
    for (let i = 0; i < 4; i++) {
      const r = (await client.callTool({ name: 'rec__transfer', arguments: { amount: 1, to: `x${i}` } })) as CallToolResult;
      codes.push(denial(r)?.code ?? 'ok');
    }
    expect(codes).toEqual(['ok', 'ok', 'BASTION_RATE_LIMITED', 'BASTION_RATE_LIMITED']);
    // Other tools of the same principal still work.
    expect(((await client.callTool({ name: 'rec__echo', arguments: { text: 'other' } })) as CallToolResult).isError).toBeFalsy();
  });

  it('calls policy refuses do not drain the bucket', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:denied-a-lot', cap: [{ tool: 'rec__echo' }] }));
    for (let i = 0; i < 8; i++) {
      expect(denial((await client.callTool({ name: 'rec__transfer', arguments: { amount: 1, to: 'x' } })) as CallToolResult)?.code).toBe('BASTION_POLICY_DENIED');
    }
    expect(((await client.callTool({ name: 'rec__echo', arguments: { text: 'still fine' } })) as CallToolResult).isError).toBeFalsy();
  });
});

describe('concurrency cap', () => {
  it('at most 2 calls of one principal run at once; the slot frees when a call ends', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:parallel' }));
    const slow = [0, 1].map(() => client.callTool({ name: 'rec__slow', arguments: { ms: 400 } }) as Promise<CallToolResult>);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const third = (await client.callTool({ name: 'rec__echo', arguments: { text: 'third' } })) as CallToolResult;
    expect(denial(third)).toMatchObject({ code: 'BASTION_RATE_LIMITED' });
    expect(denial(third)!.reason).toContain('concurrency');
    expect((await Promise.all(slow)).every((r) => !r.isError)).toBe(true);
    expect(((await client.callTool({ name: 'rec__echo', arguments: { text: 'after' } })) as CallToolResult).isError).toBeFalsy();
  });
});

describe('caps on size and shape', () => {
  it('arguments over the byte cap are refused before policy and the upstream', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:big-args' }));
    const r = (await client.callTool({ name: 'rec__echo', arguments: { text: 'y'.repeat(10_000) } })) as CallToolResult;
    expect(denial(r)).toMatchObject({ stage: 'limit', code: 'BASTION_ARGUMENTS_TOO_LARGE' });
    expect((await t.upstreamCalls()).some((c) => String(c.args.text).startsWith('yyyy'))).toBe(false);
  });

  it('a 50 MB body is refused (413) without a crash, and the broker keeps serving', async () => {
    const token = await t.mint({ sub: 'agent:huge' });
    const response = await post(t.url, JSON.stringify(toolCall('rec__echo', { text: 'z'.repeat(50 * 1024 * 1024) })), { authorization: `Bearer ${token}` });
    expect(response.status).toBe(413);
    const client = await t.connect(await t.mint({ sub: 'agent:after-huge' }));
    expect(((await client.callTool({ name: 'rec__echo', arguments: { text: 'alive' } })) as CallToolResult).isError).toBeFalsy();
  });

  it('10,000-deep JSON is refused (400) without a crash', async () => {
    const token = await t.mint({ sub: 'agent:deep' });
    const sessionId = await openSession(t.url, token);
    const deep = `${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}`;
    const body = `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rec__echo","arguments":${deep}}}`;
    const response = await post(t.url, body, { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId });
    expect(response.status).toBe(400);
    expect(response.json.error.data).toMatchObject({ stage: 'admit', code: 'BASTION_REQUEST_INVALID' });
    expect(jsonDepth(JSON.parse(deep))).toBe(10_000);
  });

  it('a principal cannot hold more sessions than the cap', async () => {
    const token = await t.mint({ sub: 'agent:hoarder' });
    for (let i = 0; i < 3; i++) await openSession(t.url, token);
    const fourth = await post(
      t.url,
      { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } },
      { authorization: `Bearer ${token}` },
    );
    expect(fourth.status).toBe(429);
    expect(fourth.json.error.data).toMatchObject({ code: 'BASTION_SESSIONS_EXCEEDED' });
    // Another principal is unaffected.
    await openSession(t.url, await t.mint({ sub: 'agent:modest' }));
  });
});

describe('HTTP hardening', () => {
  it('responses carry security headers', async () => {
    const response = await fetch(new URL('/healthz', t.url));
    expect(response.headers.get('x-content-type-options')).toBe('nosniff');
    expect(response.headers.get('x-frame-options')).toBeTruthy();
    expect(response.headers.get('x-powered-by')).toBeNull();
  });

  it('MCP responses carry the headers that matter for an API', async () => {
    const response = await fetch(t.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(response.status).toBe(401);
    expect(response.headers.get('x-content-type-options')).toBe('nosniff');
    expect(response.headers.get('cross-origin-resource-policy')).toBe('same-origin');
    expect(response.headers.get('referrer-policy')).toBe('no-referrer');
    expect(response.headers.get('x-powered-by')).toBeNull();
  });
});
