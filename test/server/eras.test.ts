/**
 * Both protocol eras on one endpoint: the real v2 SDK client pinned to
 * 2026-07-28 and left on 2025-11-25, over Streamable HTTP against one broker,
 * and the refusals that belong to the 2026 revision (missing or malformed
 * `_meta` envelope, an unsupported version, headers that disagree with the
 * body), each sent raw because no SDK client would send it. Every refusal is
 * audited and reaches no upstream.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';

const MODERN = '2026-07-28';

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker();
});

afterAll(async () => {
  await t.close();
});

async function connect(token: string, era: 'modern' | 'legacy'): Promise<Client> {
  const client = new Client({ name: 'eras-test', version: '1.0.0' }, era === 'modern' ? { versionNegotiation: { mode: { pin: MODERN } } } : {});
  await client.connect(new StreamableHTTPClientTransport(new URL(t.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  return client;
}

/** The per-request `_meta` envelope a 2026-07-28 request carries. */
function envelope(version = MODERN): Record<string, unknown> {
  return {
    'io.modelcontextprotocol/protocolVersion': version,
    'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1.0.0' },
    'io.modelcontextprotocol/clientCapabilities': {},
  };
}

interface RawAnswer {
  status: number;
  body: { result?: Record<string, unknown>; error?: { code: number; message: string; data?: Record<string, unknown> }; id?: unknown };
}

/** One POST to /mcp with exactly these headers and this body; SSE answers are read to their first message. */
async function post(body: unknown, headers: Record<string, string>): Promise<RawAnswer> {
  const response = await fetch(t.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  const json = response.headers.get('content-type')?.startsWith('text/event-stream')
    ? JSON.parse(text.split('\n').find((line) => line.startsWith('data: ') && line.includes('"jsonrpc"'))!.slice(6))
    : JSON.parse(text);
  return { status: response.status, body: json };
}

/** Headers a 2026 client sends for `method` (and `name` where the method has one). */
function modernHeaders(token: string, method: string, name?: string): Record<string, string> {
  return { authorization: `Bearer ${token}`, 'mcp-protocol-version': MODERN, 'mcp-method': method, ...(name !== undefined ? { 'mcp-name': name } : {}) };
}

describe('2026-07-28 and 2025-11-25 clients on one endpoint', () => {
  it('a client pinned to 2026-07-28 lists and calls through every stage, statelessly, and each call is audited with its revision', async () => {
    const token = await t.mint({ sub: 'agent:modern', cap: [{ tool: 'rec__echo' }] });
    const client = await connect(token, 'modern');
    try {
      expect(client.getProtocolEra()).toBe('modern');
      expect(client.getNegotiatedProtocolVersion()).toBe(MODERN);
      const { tools } = await client.listTools();
      expect(tools.map((tool) => tool.name)).toEqual(['rec__echo']);
      const mark = await t.auditMark();
      const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'from 2026' } })) as CallToolResult;
      expect(result.isError).toBeFalsy();
      expect(result.content).toEqual([{ type: 'text', text: 'echo: from 2026' }]);
      expect((await t.upstreamCalls()).at(-1)).toMatchObject({ tool: 'echo', args: { text: 'from 2026' } });
      const [record] = await t.auditSince(mark, 'tools/call');
      expect(record).toMatchObject({ outcome: 'ok', tool: 'rec__echo', protocol: MODERN, transport: 'http', principal: { sub: 'agent:modern' } });
      // Stateless: no session was opened for it.
      expect(t.door.openSessions).toBe(0);
    } finally {
      await client.close();
    }
  });

  it('a 2026 call outside the token is refused at authorize like a 2025 one, and audited with its revision', async () => {
    const token = await t.mint({ sub: 'agent:modern-narrow', cap: [{ tool: 'rec__echo' }] });
    const client = await connect(token, 'modern');
    try {
      const before = (await t.upstreamCalls()).length;
      const mark = await t.auditMark();
      const result = (await client.callTool({ name: 'rec__wipe', arguments: {} })) as CallToolResult;
      expect(result.isError).toBe(true);
      expect(result._meta?.['bastion/denial']).toMatchObject({ stage: 'authorize' });
      expect(await t.upstreamCalls()).toHaveLength(before);
      const [record] = await t.auditSince(mark, 'tools/call');
      expect(record).toMatchObject({ outcome: 'denied', protocol: MODERN, principal: { sub: 'agent:modern-narrow' }, denial: { stage: 'authorize' } });
    } finally {
      await client.close();
    }
  });

  it('a 2025-11-25 client on the same endpoint keeps its session, and its calls are audited with that revision', async () => {
    const token = await t.mint({ sub: 'agent:legacy', cap: [{ tool: 'rec__echo' }] });
    const client = await connect(token, 'legacy');
    try {
      expect(client.getProtocolEra()).toBe('legacy');
      expect(t.door.openSessions).toBe(1);
      const mark = await t.auditMark();
      const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'from 2025' } })) as CallToolResult;
      expect(result.content).toEqual([{ type: 'text', text: 'echo: from 2025' }]);
      const [record] = await t.auditSince(mark, 'tools/call');
      expect(record).toMatchObject({ outcome: 'ok', protocol: '2025-11-25', principal: { sub: 'agent:legacy' } });
    } finally {
      await client.close();
    }
  });

  it('a 2026 request without a token is refused with 401 and audited, as a 2025 one is', async () => {
    const mark = await t.auditMark();
    const response = await fetch(t.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': MODERN, 'mcp-method': 'tools/list' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: { _meta: envelope() } }),
    });
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toMatch(/^Bearer /);
    const [record] = await t.auditSince(mark);
    expect(record).toMatchObject({ outcome: 'denied', protocol: MODERN, denial: { stage: 'authenticate', code: 'BASTION_TOKEN_MISSING' } });
  });
});

describe('server/discover and cache hints follow the principal', () => {
  it('discovery advertises only the kinds of things the principal may see', async () => {
    const granted = await connect(await t.mint({ sub: 'agent:sees-tools', cap: [{ tool: 'rec__echo' }] }), 'modern');
    const nothing = await connect(await t.mint({ sub: 'agent:sees-nothing', cap: [{ tool: 'other__*' }] }), 'modern');
    try {
      expect(granted.getDiscoverResult()?.capabilities.tools).toBeDefined();
      expect(nothing.getDiscoverResult()?.capabilities.tools).toBeUndefined();
      expect((await nothing.listTools()).tools).toEqual([]);
    } finally {
      await granted.close();
      await nothing.close();
    }
  });

  it('list results and discovery carry cacheScope private and ttlMs 0 on the wire', async () => {
    const token = await t.mint({ sub: 'agent:cache', cap: [{ tool: 'rec__echo' }] });
    const listed = await post({ jsonrpc: '2.0', id: 7, method: 'tools/list', params: { _meta: envelope() } }, modernHeaders(token, 'tools/list'));
    expect(listed.status).toBe(200);
    expect(listed.body.result).toMatchObject({ cacheScope: 'private', ttlMs: 0, tools: [{ name: 'rec__echo' }] });
    const discovered = await post({ jsonrpc: '2.0', id: 8, method: 'server/discover', params: { _meta: envelope() } }, modernHeaders(token, 'server/discover'));
    expect(discovered.body.result).toMatchObject({ cacheScope: 'private', ttlMs: 0, supportedVersions: [MODERN] });
  });
});

describe('refusals that belong to 2026-07-28, before any stage', () => {
  /** Sends a refused request and checks the answer, the audit record and that the upstream heard nothing. */
  async function refused(body: unknown, headers: Record<string, string>, expected: { status: number; rpc: number; code: string }) {
    const before = (await t.upstreamCalls()).length;
    const mark = await t.auditMark();
    const answer = await post(body, headers);
    expect(answer.status).toBe(expected.status);
    expect(answer.body.error?.code).toBe(expected.rpc);
    expect(answer.body.error?.data).toMatchObject({ stage: 'admit', code: expected.code });
    expect(answer.body.id).toBe((body as { id?: unknown }).id ?? null);
    const records = await t.auditSince(mark);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ outcome: 'denied', denial: { stage: 'admit', code: expected.code } });
    // Refused before authentication ran: no principal on the record, even with a valid token.
    expect(records[0]!.principal).toBeUndefined();
    expect(await t.upstreamCalls()).toHaveLength(before);
    return answer;
  }

  it('an envelope without its client capabilities is -32602', async () => {
    const token = await t.mint();
    const meta = envelope();
    delete meta['io.modelcontextprotocol/clientCapabilities'];
    const answer = await refused(
      { jsonrpc: '2.0', id: 11, method: 'tools/call', params: { name: 'rec__echo', arguments: { text: 'x' }, _meta: meta } },
      modernHeaders(token, 'tools/call', 'rec__echo'),
      { status: 400, rpc: -32602, code: 'BASTION_ENVELOPE_INVALID' },
    );
    expect(answer.body.error?.message).toMatch(/clientCapabilities/);
  });

  it('an envelope whose protocol version is not a string is -32602', async () => {
    const token = await t.mint();
    await refused(
      { jsonrpc: '2.0', id: 12, method: 'tools/list', params: { _meta: { ...envelope(), 'io.modelcontextprotocol/protocolVersion': 20260728 } } },
      modernHeaders(token, 'tools/list'),
      { status: 400, rpc: -32602, code: 'BASTION_ENVELOPE_INVALID' },
    );
  });

  it('a 2026-07-28 header with no envelope in the body is -32602', async () => {
    const token = await t.mint();
    await refused(
      { jsonrpc: '2.0', id: 13, method: 'tools/call', params: { name: 'rec__echo', arguments: { text: 'x' } } },
      modernHeaders(token, 'tools/call', 'rec__echo'),
      { status: 400, rpc: -32602, code: 'BASTION_ENVELOPE_INVALID' },
    );
  });

  it('an unsupported revision gets the spec error -32022 naming what is supported', async () => {
    const token = await t.mint();
    const answer = await refused(
      { jsonrpc: '2.0', id: 14, method: 'tools/list', params: { _meta: envelope('2099-01-01') } },
      { authorization: `Bearer ${token}`, 'mcp-protocol-version': '2099-01-01', 'mcp-method': 'tools/list' },
      { status: 400, rpc: -32022, code: 'BASTION_PROTOCOL_UNSUPPORTED' },
    );
    expect(answer.body.error?.data).toMatchObject({ supported: [MODERN], requested: '2099-01-01' });
  });

  it('Mcp-Name naming another tool than the body is -32020', async () => {
    const token = await t.mint();
    await refused(
      { jsonrpc: '2.0', id: 15, method: 'tools/call', params: { name: 'rec__wipe', arguments: {}, _meta: envelope() } },
      modernHeaders(token, 'tools/call', 'rec__echo'),
      { status: 400, rpc: -32020, code: 'BASTION_HEADER_MISMATCH' },
    );
  });

  it('Mcp-Method naming another method than the body is -32020', async () => {
    const token = await t.mint();
    await refused(
      { jsonrpc: '2.0', id: 16, method: 'tools/call', params: { name: 'rec__echo', arguments: { text: 'x' }, _meta: envelope() } },
      modernHeaders(token, 'tools/list', 'rec__echo'),
      { status: 400, rpc: -32020, code: 'BASTION_HEADER_MISMATCH' },
    );
  });

  it('a 2026 tools/call without its Mcp-Name header is -32020', async () => {
    const token = await t.mint();
    await refused(
      { jsonrpc: '2.0', id: 17, method: 'tools/call', params: { name: 'rec__echo', arguments: { text: 'x' }, _meta: envelope() } },
      modernHeaders(token, 'tools/call'),
      { status: 400, rpc: -32020, code: 'BASTION_HEADER_MISMATCH' },
    );
  });

  it('the header check comes before authentication: a bad token with mismatched headers gets the mismatch', async () => {
    await refused(
      { jsonrpc: '2.0', id: 18, method: 'tools/call', params: { name: 'rec__echo', arguments: { text: 'x' }, _meta: envelope() } },
      modernHeaders('not-a-token', 'tools/call', 'rec__other'),
      { status: 400, rpc: -32020, code: 'BASTION_HEADER_MISMATCH' },
    );
  });

  it('a 2025 session request whose Mcp-Method disagrees with its body is refused too', async () => {
    const token = await t.mint({ sub: 'agent:legacy-headers' });
    const client = await connect(token, 'legacy');
    try {
      const sessionId = (client.transport as StreamableHTTPClientTransport).sessionId!;
      await refused(
        { jsonrpc: '2.0', id: 19, method: 'tools/call', params: { name: 'rec__echo', arguments: { text: 'x' } } },
        { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-11-25', 'mcp-method': 'tools/list' },
        { status: 400, rpc: -32020, code: 'BASTION_HEADER_MISMATCH' },
      );
    } finally {
      await client.close();
    }
  });
});

describe('list changes reach 2026-07-28 clients on their subscriptions/listen stream', () => {
  // Last in this file: `mutate` changes a tool upstream (and the broker quarantines it).
  it('a tool list change upstream reaches a pinned client that holds no session', async () => {
    let changes = 0;
    const token = await t.mint({ sub: 'agent:listener', cap: [{ tool: 'rec__echo' }] });
    const listener = new Client(
      { name: 'eras-listener', version: '1.0.0' },
      { versionNegotiation: { mode: { pin: MODERN } }, listChanged: { tools: { autoRefresh: false, debounceMs: 0, onChanged: () => void changes++ } } },
    );
    await listener.connect(new StreamableHTTPClientTransport(new URL(t.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    const mutator = await connect(await t.mint({ sub: 'agent:mutator', cap: [{ tool: 'rec__mutate' }] }), 'legacy');
    try {
      expect(changes).toBe(0);
      // The listen stream opens in the background after connect: change the list until a change arrives.
      await vi.waitFor(
        async () => {
          await mutator.callTool({ name: 'rec__mutate', arguments: {} });
          expect(changes).toBeGreaterThan(0);
        },
        { timeout: 60_000, interval: 250 },
      );
    } finally {
      await listener.close();
      await mutator.close();
    }
  });
});
