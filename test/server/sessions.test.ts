/**
 * The life of an HTTP session (broker/server/http.ts, session-table.ts): a
 * session is routable and counted against its principal's cap once its
 * initialize was answered, and every other ending leaves nothing behind: no
 * entry in the front door's table or in broker.sessions, no agent server or
 * transport on the heap. Heap checks count live objects after a full garbage
 * collection (v8.queryObjects); nothing here is timed.
 */
import { connect } from 'node:net';
import { getHeapSpaceStatistics, queryObjects } from 'node:v8';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeStreamableHTTPServerTransport } from '@modelcontextprotocol/node';
import { Server } from '@modelcontextprotocol/server';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { INITIALIZE, MCP_HEADERS, post } from '../helpers/http.ts';

/**
 * Agent servers and transports alive after a full garbage collection, and the live heap.
 * The collection stops the world; on a loaded machine for long enough that pooled keep-alive
 * connections expire meanwhile, so callers let the expired timers run (settle) before the next request.
 */
function liveSessionObjects(): { servers: number; transports: number; heapBytes: number } {
  const servers = queryObjects(Server, { format: 'count' }) as number;
  const transports = queryObjects(NodeStreamableHTTPServerTransport, { format: 'count' }) as number;
  // queryObjects collected garbage first: the heap in use now is the live set. Code spaces are left
  // out: the JIT compiling something meanwhile is not a leak.
  const heapBytes = getHeapSpaceStatistics()
    .filter((space) => !space.space_name.includes('code'))
    .reduce((sum, space) => sum + space.space_used_size, 0);
  return { servers, transports, heapBytes };
}

/** Lets the event loop catch up: expired timers fire and closed keep-alive connections leave the pool. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 100));

/** Waits (bounded) for the broker to settle to `sessions` live agent servers. */
async function settled(t: TestBroker, sessions: number): Promise<void> {
  for (let i = 0; i < 600 && t.broker.sessions.size !== sessions; i++) await new Promise((resolve) => setTimeout(resolve, 50));
}

/** Sends a whole initialize request on a raw socket, then resets the connection before any answer can arrive. */
function initializeAndVanish(url: string, token: string): Promise<void> {
  const { hostname, port } = new URL(url);
  const body = JSON.stringify(INITIALIZE);
  const request = [
    'POST /mcp HTTP/1.1',
    `Host: ${hostname}:${port}`,
    `Authorization: Bearer ${token}`,
    'Content-Type: application/json',
    'Accept: application/json, text/event-stream',
    `Content-Length: ${Buffer.byteLength(body)}`,
    '',
    body,
  ].join('\r\n');
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => socket.write(request, () => socket.resetAndDestroy()));
    socket.on('error', reject);
    socket.on('close', () => resolve());
  });
}

describe('failed initializes', () => {
  let t: TestBroker;
  let token: string;

  beforeAll(async () => {
    // A cap of 2: a failed initialize that kept its place would lock the principal out at once.
    t = await startTestBroker({ limits: { sessions_per_principal: 2 } });
    token = await t.mint({ sub: 'agent:failing-initializes' });
  });
  afterAll(async () => {
    await t?.close();
  });

  const failures: { name: string; body: unknown; headers: Record<string, string>; status: number }[] = [
    { name: 'Accept without text/event-stream', body: INITIALIZE, headers: { accept: 'application/json' }, status: 406 },
    { name: 'Content-Type text/plain', body: INITIALIZE, headers: { 'content-type': 'text/plain' }, status: 415 },
    { name: 'initialize in a batch', body: [INITIALIZE], headers: {}, status: 400 },
    { name: 'an empty batch', body: [], headers: {}, status: 400 },
  ];

  async function failAll(rounds: number): Promise<void> {
    for (let round = 0; round < rounds; round++) {
      for (const failure of failures) {
        const response = await post(t.url, failure.body, { authorization: `Bearer ${token}`, ...failure.headers });
        expect(response.status, failure.name).toBe(failure.status);
        expect(response.headers.get('mcp-session-id'), failure.name).toBeNull();
      }
    }
  }

  it('are refused at the front door with a stage and code, each audited', async () => {
    const auditBefore = (await t.auditRecords()).length;
    for (const failure of failures) {
      const response = await post(t.url, failure.body, { authorization: `Bearer ${token}`, ...failure.headers });
      expect(response.json, failure.name).toMatchObject({ jsonrpc: '2.0', id: null, error: { code: -32600, data: { stage: 'admit', code: 'BASTION_REQUEST_INVALID' } } });
    }
    const records = (await t.auditRecords()).slice(auditBefore);
    expect(records.map((r) => [r.principal?.sub, r.outcome, r.denial?.stage, r.denial?.code])).toEqual(
      failures.map(() => ['agent:failing-initializes', 'denied', 'admit', 'BASTION_REQUEST_INVALID']),
    );
    expect(records.map((r) => r.denial?.reason)).toEqual([
      expect.stringContaining('Accept must list both application/json and text/event-stream'),
      expect.stringContaining('Content-Type must be application/json'),
      expect.stringContaining('batches are not supported'),
      expect.stringContaining('batches are not supported'),
    ]);
  });

  // Hundreds of requests and two full collections: generous time on a loaded machine (nothing is timed).
  it('leave no session, agent server or transport on the heap', { timeout: 180_000 }, async () => {
    await failAll(40); // warm-up: code compiled, pools and caches filled, before the baseline
    const before = liveSessionObjects();
    await settle();
    const rounds = 40;
    await failAll(rounds);
    await settled(t, 0);
    const after = liveSessionObjects();

    expect(after.servers).toBe(before.servers);
    expect(after.transports).toBe(before.transports);
    // Before the fix the 80 refused by Accept or Content-Type kept about 26 KiB alive each (an agent
    // server with its handlers, and a transport): 2 MiB. A warm broker's live heap moves by a few
    // hundred bytes per request either way.
    expect(after.heapBytes - before.heapBytes).toBeLessThan(1024 * 1024);
    expect(t.broker.sessions.size).toBe(0);
    expect(t.door.openSessions).toBe(0);
  });

  it('hold no place under the cap: the principal still opens as many sessions as the cap allows', async () => {
    await failAll(3);
    const first = await t.connect(token);
    const second = await t.connect(token);
    expect(t.door.openSessions).toBe(2);
    const third = await post(t.url, INITIALIZE, { authorization: `Bearer ${token}` });
    expect(third.status).toBe(429);
    expect(third.json.error.data).toMatchObject({ code: 'BASTION_SESSIONS_EXCEEDED' });
    expect(third.json.error.message).toContain('already holds 2 sessions (limit 2)');
    const result = (await first.callTool({ name: 'rec__echo', arguments: { text: 'after failures' } })) as CallToolResult;
    expect(result.content).toEqual([{ type: 'text', text: 'echo: after failures' }]);
    await first.close();
    await second.close();
  });
});

describe('sessions that end', () => {
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker();
  });
  afterAll(async () => {
    await t?.close();
  });

  it('an initialize whose client resets the connection before the answer leaves nothing behind', async () => {
    const token = await t.mint({ sub: 'agent:vanishing' });
    for (let i = 0; i < 3; i++) await initializeAndVanish(t.url, token); // warm-up
    await settled(t, 0);
    const before = liveSessionObjects();
    await settle();
    for (let i = 0; i < 40; i++) await initializeAndVanish(t.url, token);
    await settled(t, 0);
    const after = liveSessionObjects();
    expect(after.servers).toBe(before.servers);
    expect(after.transports).toBe(before.transports);
    expect(t.broker.sessions.size).toBe(0);
    expect(t.door.openSessions).toBe(0);
    await settle();
    // And the principal holds no place: a session opens normally.
    const response = await post(t.url, INITIALIZE, { authorization: `Bearer ${token}` });
    expect(response.status).toBe(200);
    expect(response.headers.get('mcp-session-id')).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('DELETE ends a session everywhere: the table, broker.sessions and the heap', async () => {
    const token = await t.mint({ sub: 'agent:deleting' });
    const openBefore = t.door.openSessions;
    const hubBefore = t.broker.sessions.size;
    const before = liveSessionObjects();
    await settle();
    const sessionIds: string[] = [];
    for (let i = 0; i < 20; i++) {
      const response = await post(t.url, INITIALIZE, { authorization: `Bearer ${token}` });
      expect(response.status).toBe(200);
      sessionIds.push(response.headers.get('mcp-session-id')!);
    }
    expect(t.door.openSessions).toBe(openBefore + 20);
    expect(t.broker.sessions.size).toBe(hubBefore + 20);
    for (const sessionId of sessionIds) {
      const deleted = await fetch(t.url, { method: 'DELETE', headers: { ...MCP_HEADERS, authorization: `Bearer ${token}`, 'mcp-session-id': sessionId } });
      expect(deleted.status).toBe(200);
    }
    await settled(t, hubBefore);
    expect(t.door.openSessions).toBe(openBefore);
    expect(t.broker.sessions.size).toBe(hubBefore);
    const after = liveSessionObjects();
    expect(after.servers).toBe(before.servers);
    expect(after.transports).toBe(before.transports);
    await settle();
    // The session is gone for its owner too.
    const again = await post(t.url, { jsonrpc: '2.0', id: 3, method: 'tools/list' }, { authorization: `Bearer ${token}`, 'mcp-session-id': sessionIds[0]! });
    expect(again.status).toBe(404);
  });
});

describe('the sessions-per-principal cap', () => {
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker({ limits: { sessions_per_principal: 3 } });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('holds when many initializes arrive at once: exactly the cap succeed, the rest get 429, audited', async () => {
    const token = await t.mint({ sub: 'agent:stampede' });
    const responses = await Promise.all(Array.from({ length: 12 }, () => post(t.url, INITIALIZE, { authorization: `Bearer ${token}` })));
    const statuses = responses.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 200, 200, ...Array(9).fill(429)]);
    expect(t.door.openSessions).toBe(3);
    const refused = (await t.auditRecords()).filter((r) => r.principal?.sub === 'agent:stampede' && r.denial?.code === 'BASTION_SESSIONS_EXCEEDED');
    expect(refused).toHaveLength(9);
  });

  it('is per principal: another token of the same subject shares it, another subject does not', async () => {
    const other = await t.mint({ sub: 'agent:stampede' });
    const refused = await post(t.url, INITIALIZE, { authorization: `Bearer ${other}` });
    expect(refused.status).toBe(429);
    const bystander = await post(t.url, INITIALIZE, { authorization: `Bearer ${await t.mint({ sub: 'agent:bystander' })}` });
    expect(bystander.status).toBe(200);
  });
});
