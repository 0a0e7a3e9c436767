/**
 * The front door and the connectors under abuse and failure: malformed and
 * oversized requests, unknown sessions and methods, DNS-rebinding headers,
 * an upstream that dies mid-call, a connector that never starts, absurdly
 * nested arguments. Each case gets a clean, specific refusal, nothing runs
 * upstream that should not, and the broker keeps serving afterwards.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { RECORDING_UPSTREAM, ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { MCP_HEADERS, openSession, post, toolCall } from '../helpers/http.ts';

function denialOf(result: CallToolResult): { stage: string; code: string; reason: string } {
  expect(result.isError).toBe(true);
  const denial = result._meta?.['bastion/denial'] as { stage: string; code: string; reason: string } | undefined;
  expect(denial).toBeDefined();
  return denial!;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A raw HTTP request whose headers (Host included) are sent exactly as given. */
function rawRequest(url: string, headers: Record<string, string>, body: string): Promise<{ status: number; json: any }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => {
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, json });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('malformed requests (default broker)', () => {
  let t: TestBroker;
  let token: string;
  let sessionId: string;

  beforeAll(async () => {
    t = await startTestBroker();
    token = await t.mint({ sub: 'agent:robust' });
    sessionId = await openSession(t.url, token);
  });
  afterAll(async () => {
    await t?.close();
  });

  const auth = () => ({ authorization: `Bearer ${token}`, 'mcp-session-id': sessionId });

  /** The call still works: proof the previous abuse left the broker serving. */
  async function stillServing(marker: string): Promise<void> {
    const response = await post(t.url, toolCall('rec__echo', { text: marker }, 99), auth());
    expect(response.status).toBe(200);
    expect(response.json.result.content[0].text).toBe(`echo: ${marker}`);
  }

  it('malformed JSON → HTTP 400, JSON-RPC -32700', async () => {
    const before = (await t.upstreamCalls()).length;
    const response = await post(t.url, '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rec__echo",', auth());
    expect(response.status).toBe(400);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', id: null, error: { code: -32700 } });
    expect((await t.upstreamCalls()).length).toBe(before);
    await stillServing('after-parse-error');
  });

  it('valid JSON that is not JSON-RPC, on a session → 4xx with a JSON-RPC error', async () => {
    const before = (await t.upstreamCalls()).length;
    const response = await post(t.url, { hello: 'world', name: 'rec__echo' }, auth());
    expect(response.status).toBeGreaterThanOrEqual(400);
    expect(response.status).toBeLessThan(500);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', error: { code: expect.any(Number), message: expect.any(String) } });
    expect((await t.upstreamCalls()).length).toBe(before);
  });

  it('valid JSON that is not JSON-RPC, without a session → 400 with a JSON-RPC error', async () => {
    const response = await post(t.url, [1, 2, 3], { authorization: `Bearer ${token}` });
    expect(response.status).toBe(400);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', error: { code: -32600 } });
  });

  // JSON-RPC batches are not part of MCP 2025-11-25; an empty one used to get 202 on a live session.
  it('any JSON array on a live session → 400 with a JSON-RPC error, audited, nothing run', async () => {
    const before = (await t.upstreamCalls()).length;
    const auditBefore = (await t.auditRecords()).length;
    for (const batch of [[], [toolCall('rec__echo', { text: 'batched' })], [{ jsonrpc: '2.0', method: 'notifications/initialized' }]]) {
      const response = await post(t.url, batch, auth());
      expect(response.status, JSON.stringify(batch)).toBe(400);
      expect(response.json).toMatchObject({
        jsonrpc: '2.0',
        id: null,
        error: { code: -32600, message: expect.stringContaining('batches are not supported'), data: { stage: 'admit', code: 'BASTION_REQUEST_INVALID' } },
      });
    }
    expect((await t.upstreamCalls()).length).toBe(before);
    const records = (await t.auditRecords()).slice(auditBefore);
    expect(records).toHaveLength(3);
    for (const record of records) expect(record).toMatchObject({ outcome: 'denied', principal: { sub: 'agent:robust' }, denial: { stage: 'admit', code: 'BASTION_REQUEST_INVALID' } });
    expect(records[1]?.tool).toBe('rec__echo');
    await stillServing('after-batches');
  });

  it('a JSON scalar body → 4xx with a JSON-RPC error', async () => {
    const response = await post(t.url, '"just a string"', auth());
    expect(response.status).toBeGreaterThanOrEqual(400);
    expect(response.status).toBeLessThan(500);
    expect(response.json?.error?.code).toEqual(expect.any(Number));
  });

  it('a 5 MB body with the default 1 MiB cap → 413', async () => {
    const before = (await t.upstreamCalls()).length;
    const response = await post(t.url, toolCall('rec__echo', { text: 'x'.repeat(5 * 1024 * 1024) }), auth());
    expect(response.status).toBe(413);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', error: { code: -32600, message: expect.stringContaining('1048576') } });
    expect((await t.upstreamCalls()).length).toBe(before);
    await stillServing('after-5mb');
  });

  it('an unknown JSON-RPC method → -32601', async () => {
    const response = await post(t.url, { jsonrpc: '2.0', id: 7, method: 'tools/explode', params: {} }, auth());
    expect(response.status).toBe(200);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', id: 7, error: { code: -32601 } });
  });

  it('a request on an unknown session id → 404', async () => {
    const before = (await t.upstreamCalls()).length;
    const response = await post(t.url, toolCall('rec__echo', { text: 'ghost' }), {
      authorization: `Bearer ${token}`,
      'mcp-session-id': '00000000-0000-4000-8000-000000000000',
    });
    expect(response.status).toBe(404);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', error: { code: -32001 } });
    expect((await t.upstreamCalls()).length).toBe(before);
  });

  it('a non-initialize POST without a session → 400', async () => {
    const before = (await t.upstreamCalls()).length;
    const response = await post(t.url, toolCall('rec__echo', { text: 'no-session' }), { authorization: `Bearer ${token}` });
    expect(response.status).toBe(400);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', error: { code: -32600 } });
    expect((await t.upstreamCalls()).length).toBe(before);
  });

  it('a GET with an unknown session → 404, and an unsupported method → 405', async () => {
    const get = await fetch(t.url, { headers: { ...MCP_HEADERS, authorization: `Bearer ${token}`, 'mcp-session-id': 'nope' } });
    expect(get.status).toBe(404);
    const put = await fetch(t.url, { method: 'PUT', headers: { ...MCP_HEADERS, authorization: `Bearer ${token}` }, body: '{}' });
    expect(put.status).toBe(405);
    expect(put.headers.get('allow')).toContain('POST');
  });

  it('a foreign Origin → 403, before anything runs', async () => {
    const before = (await t.upstreamCalls()).length;
    const response = await post(t.url, toolCall('rec__echo', { text: 'rebind' }), { ...auth(), origin: 'http://evil.example' });
    expect(response.status).toBe(403);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', error: { message: expect.stringContaining('http://evil.example') } });
    expect((await t.upstreamCalls()).some((c) => c.args.text === 'rebind')).toBe(false);
    expect((await t.upstreamCalls()).length).toBe(before);
  });

  it('the broker\'s own origin is allowed', async () => {
    const response = await post(t.url, toolCall('rec__echo', { text: 'same-origin' }), { ...auth(), origin: new URL(t.url).origin });
    expect(response.status).toBe(200);
    expect(response.json.result.content[0].text).toBe('echo: same-origin');
  });

  it('a wrong Host header → 403 (DNS rebinding)', async () => {
    const before = (await t.upstreamCalls()).length;
    const port = new URL(t.url).port;
    const response = await rawRequest(
      t.url,
      { ...MCP_HEADERS, ...auth(), host: `evil.example:${port}` },
      JSON.stringify(toolCall('rec__echo', { text: 'rebind-host' })),
    );
    expect(response.status).toBe(403);
    expect(response.json).toMatchObject({ jsonrpc: '2.0', error: { message: expect.stringContaining('evil.example') } });
    expect((await t.upstreamCalls()).length).toBe(before);
    // The same raw request with the right Host goes through: the refusal was about the Host.
    const ok = await rawRequest(
      t.url,
      { ...MCP_HEADERS, ...auth(), host: `127.0.0.1:${port}`, accept: 'application/json, text/event-stream' },
      JSON.stringify(toolCall('rec__echo', { text: 'right-host' })),
    );
    expect(ok.status).toBe(200);
  });

  it('a deeply nested argument (10,000 levels) is refused cleanly, and the broker keeps serving', async () => {
    const depth = 10_000;
    const deep = `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
    const body = `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"rec__echo","arguments":{"text":"deep-marker","deep":${deep}}}}`;
    const before = (await t.upstreamCalls()).length;
    const response = await post(t.url, body, auth());
    const refusedAtHttp = response.status >= 400;
    const protocolError = response.json?.error !== undefined;
    const toolError = response.json?.result?.isError === true;
    expect(refusedAtHttp || protocolError || toolError).toBe(true);
    expect(response.json?.result?.content?.[0]?.text).not.toBe('echo: deep-marker');
    expect((await t.upstreamCalls()).length).toBe(before);
    // Refused like any other call: a stage and a code, and an audit record (without an args hash).
    if (toolError) {
      expect(response.json.result._meta['bastion/denial']).toMatchObject({ code: expect.stringMatching(/^BASTION_/) });
    }
    const record = (await t.auditRecords()).filter((r) => r.principal?.sub === 'agent:robust' && r.tool === 'rec__echo').at(-1);
    expect(record).toMatchObject({ outcome: 'denied', denial: { code: expect.stringMatching(/^BASTION_/) } });
    await stillServing('after-deep');
    const health = await fetch(new URL('/healthz', t.url));
    expect(health.status).toBe(200);
  });
});

describe('a small body cap (64 KiB)', () => {
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker({ server: { port: 0, max_body_bytes: 65_536 } });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('a body over server.max_body_bytes → 413, and the next normal call on the same broker works', async () => {
    const token = await t.mint({ sub: 'agent:capped' });
    const sessionId = await openSession(t.url, token);
    const headers = { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId };

    const big = await post(t.url, toolCall('rec__echo', { text: 'y'.repeat(70_000) }), headers);
    expect(big.status).toBe(413);
    expect(big.json).toMatchObject({ jsonrpc: '2.0', error: { code: -32600, message: expect.stringContaining('65536') } });
    expect(await t.upstreamCalls()).toEqual([]);

    const small = await post(t.url, toolCall('rec__echo', { text: 'fits' }), headers);
    expect(small.status).toBe(200);
    expect(small.json.result.content[0].text).toBe('echo: fits');

    // A new SDK session works too.
    const client = await t.connect(token);
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'sdk-after-413' } })) as CallToolResult;
    expect(result.content).toEqual([{ type: 'text', text: 'echo: sdk-after-413' }]);
  });

  it('a body just under the cap is accepted', async () => {
    const token = await t.mint({ sub: 'agent:capped' });
    const sessionId = await openSession(t.url, token);
    const response = await post(t.url, toolCall('rec__echo', { text: 'z'.repeat(60_000) }), {
      authorization: `Bearer ${token}`,
      'mcp-session-id': sessionId,
    });
    expect(response.status).toBe(200);
    expect(response.json.result.content[0].text).toBe(`echo: ${'z'.repeat(60_000)}`);
  });
});

describe('an upstream that crashes mid-call', () => {
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker();
  });
  afterAll(async () => {
    await t?.close();
  });

  it('gives the agent a tool error naming stage execute; after the restart the next call succeeds', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:crash' }));
    const bystander = await t.connect(await t.mint({ sub: 'agent:bystander' }));

    const crashed = (await client.callTool({ name: 'rec__crash', arguments: {} })) as CallToolResult;
    const denial = denialOf(crashed);
    expect(denial.stage).toBe('execute');
    expect(['BASTION_UPSTREAM_ERROR', 'BASTION_CONNECTOR_UNAVAILABLE']).toContain(denial.code);
    expect(crashed.content[0]).toMatchObject({ type: 'text', text: expect.stringContaining('execute') });

    const crashCall = (await t.upstreamCalls()).find((c) => c.tool === 'crash') as { pid?: number } | undefined;
    expect(crashCall).toBeDefined();
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:crash' && r.tool === 'rec__crash');
    expect(record).toMatchObject({ outcome: 'error', denial: { stage: 'execute', code: denial.code } });

    // The connector restarts on its own (backoff from 250 ms); retry, bounded, until echo works again.
    let result: CallToolResult | undefined;
    const seen = new Set<string>();
    for (let attempt = 0; attempt < 200; attempt++) {
      result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'back' } })) as CallToolResult;
      if (!result.isError) break;
      seen.add((result._meta?.['bastion/denial'] as { code: string }).code);
      await sleep(50);
    }
    expect(result?.isError).toBeFalsy();
    expect(result?.content).toEqual([{ type: 'text', text: 'echo: back' }]);
    // While it was down, calls were refused as unavailable, never as something vaguer.
    for (const code of seen) expect(['BASTION_CONNECTOR_UNAVAILABLE', 'BASTION_UPSTREAM_ERROR']).toContain(code);

    // A new upstream process answered.
    const echo = (await t.upstreamCalls()).filter((c) => c.tool === 'echo').at(-1) as { pid?: number } | undefined;
    expect(echo?.pid).toBeDefined();
    expect(echo?.pid).not.toBe(crashCall?.pid);

    // The broker never went down: other sessions, tools/list and health all work.
    const { tools } = await bystander.listTools();
    expect(tools.map((tool) => tool.name)).toContain('rec__echo');
    const other = (await bystander.callTool({ name: 'rec__echo', arguments: { text: 'bystander' } })) as CallToolResult;
    expect(other.content).toEqual([{ type: 'text', text: 'echo: bystander' }]);
    expect((await fetch(new URL('/healthz', t.url))).status).toBe(200);
  });
});

describe('a connector that cannot start at all', () => {
  let t: TestBroker;
  let logDir: string;

  beforeAll(async () => {
    logDir = await mkdtemp(path.join(tmpdir(), 'bastion-robust-calls-'));
    t = await startTestBroker({
      connectors: [
        {
          name: 'rec',
          transport: 'stdio',
          command: process.execPath,
          args: [RECORDING_UPSTREAM],
          env: { CALL_LOG: path.join(logDir, 'calls.jsonl') },
          timeout: '20s',
        },
        { name: 'broken', transport: 'stdio', command: '/nonexistent', timeout: '5s' },
      ],
    });
  });
  afterAll(async () => {
    await t?.close();
    await rm(logDir, { recursive: true, force: true });
  });

  async function recCalls(): Promise<{ tool: string; args: Record<string, unknown> }[]> {
    try {
      return (await readFile(path.join(logDir, 'calls.jsonl'), 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l));
    } catch {
      return [];
    }
  }

  it('initialize and tools/list still work; its tools are absent, the others are there', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:partial', cap: [{ tool: '*' }] }));
    expect(client.getServerVersion()?.name).toBe('bastion');
    const names = (await client.listTools()).tools.map((tool) => tool.name);
    expect(names).toContain('rec__echo');
    expect(names.filter((name) => name.startsWith('broken__'))).toEqual([]);
    expect(t.broker.connectors.find((c) => c.name === 'broken')?.status).not.toBe('ready');
  });

  it('a call to one of its tools gets BASTION_CONNECTOR_UNAVAILABLE, audited', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:partial-call', cap: [{ tool: '*' }] }));
    const result = (await client.callTool({ name: 'broken__x', arguments: {} })) as CallToolResult;
    const denial = denialOf(result);
    expect(denial.code).toBe('BASTION_CONNECTOR_UNAVAILABLE');
    expect(denial.reason).toContain('broken');
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:partial-call' && r.tool === 'broken__x');
    expect(record).toMatchObject({ outcome: 'denied', denial: { code: 'BASTION_CONNECTOR_UNAVAILABLE' } });
  });

  it("the other connector's tools work", async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:partial-ok', cap: [{ tool: '*' }] }));
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'still here' } })) as CallToolResult;
    expect(result.content).toEqual([{ type: 'text', text: 'echo: still here' }]);
    expect((await recCalls()).some((c) => c.args.text === 'still here')).toBe(true);
  });

  it('an unrelated unknown tool is still BASTION_TOOL_UNKNOWN, not blamed on the broken connector', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:partial-unknown', cap: [{ tool: '*' }] }));
    const error = await client.callTool({ name: 'rec__nope', arguments: {} }).then(
      () => undefined,
      (e: Error & { code?: number; data?: unknown }) => e,
    );
    expect(error?.code).toBe(-32602);
    expect(error?.data).toMatchObject({ code: 'BASTION_TOOL_UNKNOWN' });
  });
});

describe('an upstream whose result is nested 10,000 levels deep', () => {
  let t: TestBroker;
  let logDir: string;

  beforeAll(async () => {
    logDir = await mkdtemp(path.join(tmpdir(), 'bastion-robust-deep-'));
    t = await startTestBroker({
      connectors: [
        {
          name: 'deep',
          transport: 'stdio',
          command: process.execPath,
          args: [path.join(ROOT, 'test/fixtures/deep-upstream.ts')],
          env: { CALL_LOG: path.join(logDir, 'calls.jsonl'), DEPTH: '10000' },
          timeout: '20s',
        },
      ],
    });
  });
  afterAll(async () => {
    await t?.close();
    await rm(logDir, { recursive: true, force: true });
  });

  it('the call ran, so its result is withheld with a filter-stage denial and the call is audited', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:deep-result', cap: [{ tool: 'deep__*' }] }));
    const result = (await client.callTool({ name: 'deep__deep', arguments: {} })) as CallToolResult;
    expect(denialOf(result)).toMatchObject({ stage: 'filter', code: 'BASTION_RESULT_TOO_LARGE' });
    expect(JSON.stringify(result).length).toBeLessThan(10_000);

    const calls = (await readFile(path.join(logDir, 'calls.jsonl'), 'utf8')).split('\n').filter(Boolean);
    expect(calls).toHaveLength(1);
    const record = (await t.auditRecords()).find((r) => r.principal?.sub === 'agent:deep-result');
    expect(record).toMatchObject({ tool: 'deep__deep', outcome: 'error', denial: { stage: 'filter', code: 'BASTION_RESULT_TOO_LARGE' } });

    // And the broker keeps serving the same session.
    expect((await client.listTools()).tools.map((tool) => tool.name)).toEqual(['deep__deep']);
  });
});

/**
 * Writes an HTTP request to a raw socket a little at a time, as a slow
 * client does (only the headers, or the headers and then a body that never
 * ends), until the server closes the connection.
 */
function dripRequest(url: string, what: 'headers' | 'body'): { closed: Promise<string> } {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  let received = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => (received += chunk));
  socket.on('error', () => undefined); // a reset after the server's answer is the end we wait for
  const drip = setInterval(() => {
    if (!socket.destroyed) socket.write(what === 'headers' ? 'X-Slow: a\r\n' : '{');
  }, 100);
  socket.once('connect', () => {
    socket.write(`POST /mcp HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/json\r\n`);
    if (what === 'body') socket.write('Content-Length: 1000000\r\n\r\n');
  });
  const closed = new Promise<string>((resolve) => {
    socket.once('close', () => {
      clearInterval(drip);
      resolve(received);
    });
  });
  return { closed };
}

describe('slow clients', () => {
  // Node enforces request and header timeouts only when it sweeps its connections, by default every
  // 30 s from the moment the server listens: before the fix no connection could be cut earlier than
  // 30 s after listening, whatever the timeouts said. With a 2 s request_timeout the sweep now runs
  // every 200 ms, so the cut comes about 2 s after the client started. The bound below sits between:
  // far above what a loaded machine adds to 2 s, and below the 30 s the old sweep could never beat.
  const BOUND_MS = 25_000;
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker({ server: { port: 0, request_timeout: '2s' } });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('a client dripping its headers, and one dripping its body, are cut off with 408 long before the old 30 s sweep', async () => {
    const clients = [dripRequest(t.url, 'headers'), dripRequest(t.url, 'body')];
    const deadline = t.listeningFrom + BOUND_MS;
    const outcomes = await Promise.all(
      clients.map((client) =>
        Promise.race([
          client.closed.then((received) => ({ closedBy: 'server', received })),
          new Promise<{ closedBy: string; received: string }>((resolve) => setTimeout(() => resolve({ closedBy: 'nobody', received: '' }), Math.max(0, deadline - performance.now()))),
        ]),
      ),
    );
    for (const outcome of outcomes) {
      expect(outcome.closedBy).toBe('server');
      expect(outcome.received).toMatch(/^HTTP\/1\.1 408 /);
    }
    // The broker keeps serving.
    const client = await t.connect(await t.mint({ sub: 'agent:after-slow' }));
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'after slow clients' } })) as CallToolResult;
    expect(result.content).toEqual([{ type: 'text', text: 'echo: after slow clients' }]);
  });
});
