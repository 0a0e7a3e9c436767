/**
 * The attacker's side of the wire: the real MCP SDK client over Streamable
 * HTTP for what an agent would send, raw HTTP for what no SDK would, and the
 * one place that reads a refusal back out of whatever form Bastion gave it
 * (HTTP 401 body, JSON-RPC error data, or a tool result's
 * `_meta["bastion/denial"]`).
 *
 * @example
 *   const agent = await connectAgent(url, token);
 *   if (agent.client) { const result = await agent.client.callTool({ name: 'rec__echo', arguments: { text: 'hi' } }); }
 *   else console.log(agent.refusal); // { stage: 'authenticate', code: 'BASTION_TOKEN_EXPIRED', ... }
 */
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { linearSchemaValidator } from '../../sandboxes/schema-patterns.ts';
import { dpopFetch, type DpopKey } from '../auth/dpop-client.ts';

/** A refusal as the attacker observed it. `stage` and `code` are Bastion's when it named them. */
export interface Refusal {
  stage: string;
  code: string;
  reason?: string;
  status?: number;
}

const MCP_HEADERS = {
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
  'mcp-protocol-version': '2025-06-18',
};

function record(value: unknown): Record<string, unknown> | undefined {
  return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

/** Bastion's {stage, code} wherever it sits in a parsed body: top level (401), JSON-RPC error data, or a tool result's _meta. */
export function refusalIn(body: unknown, status?: number): Refusal | undefined {
  const top = record(body);
  if (!top) return undefined;
  const candidates = [
    top,
    record(record(top.error)?.data),
    record(record(top._meta)?.['bastion/denial']),
    record(record(record(top.result)?._meta)?.['bastion/denial']),
  ];
  for (const candidate of candidates) {
    if (candidate && typeof candidate.code === 'string' && candidate.code.startsWith('BASTION_')) {
      const reason = candidate.reason ?? candidate.error_description;
      return {
        stage: typeof candidate.stage === 'string' ? candidate.stage : 'authorize',
        code: candidate.code,
        ...(typeof reason === 'string' ? { reason } : {}),
        ...(status !== undefined ? { status } : {}),
      };
    }
  }
  return undefined;
}

/**
 * A plugin call the sandbox ended: an isError result carrying
 * `_meta['bastion/sandbox'] = {code, message}` and the text "SANDBOX_…: message"
 * (not a Bastion denial; the plugin ran and its isolate stopped it), read as a
 * refusal at execute. The result filter drops `bastion/…` keys of a tool's own
 * `_meta`, so what reaches the agent is usually the text alone.
 */
export function sandboxErrorIn(result: unknown): Refusal | undefined {
  const top = record(result);
  if (!top || top.isError !== true) return undefined;
  const meta = record(record(top._meta)?.['bastion/sandbox']);
  if (meta && typeof meta.code === 'string' && meta.code.startsWith('SANDBOX_')) {
    return { stage: 'execute', code: meta.code, ...(typeof meta.message === 'string' ? { reason: meta.message } : {}) };
  }
  const first = Array.isArray(top.content) ? record(top.content[0]) : undefined;
  const match = typeof first?.text === 'string' ? /^(SANDBOX_[A-Z_]+): ([\s\S]*)$/.exec(first.text) : null;
  return match ? { stage: 'execute', code: match[1]!, reason: match[2]!.slice(0, 500) } : undefined;
}

/** The text a model would read from a tool result: every content item and the structured content. */
export function receivedText(result: CallToolResult): string {
  const parts = (result.content ?? []).map((item) => (item.type === 'text' ? item.text : JSON.stringify(item)));
  if (result.structuredContent !== undefined) parts.push(JSON.stringify(result.structuredContent));
  return parts.join('\n');
}

/** Whether Bastion's result filter touched this result (redactions, flags, stripped text). */
export function filterEvidence(result: CallToolResult): string | undefined {
  const flags = record(result._meta)?.['bastion/flags'];
  if (Array.isArray(flags) && flags.length > 0) return `flagged: ${[...new Set(flags.map((f) => String(record(f)?.kind ?? f)))].join(', ')}`;
  const redactions = receivedText(result).match(/\[REDACTED:[a-z_]+\]/g);
  if (redactions) return `redacted: ${[...new Set(redactions)].join(', ')}`;
  return undefined;
}

function parseBody(text: string): unknown {
  const data = /^data: (.*)$/m.exec(text);
  try {
    return JSON.parse(data ? data[1]! : text);
  } catch {
    return undefined;
  }
}

export interface ConnectedAgent {
  client?: Client;
  refusal?: Refusal;
  /** A failure that was not a Bastion refusal (network, protocol). */
  error?: string;
  /** The last refused HTTP response this client saw, parsed. */
  lastRefusal(): Refusal | undefined;
  /** notifications/tools/list_changed received from the broker so far. */
  toolListChanges: number;
  close(): Promise<void>;
}

/** Connects the SDK client with `token` (and DPoP proofs signed by `dpopKey`, when given). */
export async function connectAgent(url: string, token: string, options: { dpopKey?: DpopKey; name?: string } = {}): Promise<ConnectedAgent> {
  let last: Refusal | undefined;
  const capturing: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    if (response.status >= 400) {
      const text = await response.clone().text().catch(() => '');
      last = refusalIn(parseBody(text), response.status) ?? { stage: 'http', code: `HTTP_${response.status}`, reason: text.slice(0, 200), status: response.status };
    }
    return response;
  };
  // The tool list comes from hostile upstreams and plugins: output schemas are evaluated on RE2 here too.
  const client = new Client({ name: options.name ?? 'bastion-redteam', version: '1.0.0' }, { jsonSchemaValidator: linearSchemaValidator });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `${options.dpopKey ? 'DPoP' : 'Bearer'} ${token}` } },
    fetch: options.dpopKey ? dpopFetch(options.dpopKey, token, capturing) : capturing,
  });
  const agent: ConnectedAgent = {
    lastRefusal: () => last,
    toolListChanges: 0,
    close: async () => {
      await client.close().catch(() => undefined);
    },
  };
  client.setNotificationHandler('notifications/tools/list_changed', () => {
    agent.toolListChanges++;
  });
  try {
    await client.connect(transport);
    agent.client = client;
  } catch (error) {
    await client.close().catch(() => undefined);
    if (last) agent.refusal = last;
    else agent.error = (error as Error).message;
  }
  return agent;
}

export interface CallOutcome {
  ok: boolean;
  refusal?: Refusal;
  error?: string;
  result?: CallToolResult;
}

/** One tools/call through a connected agent, with the refusal read out of whatever came back. */
export async function callThrough(agent: ConnectedAgent, tool: string, args: Record<string, unknown>, options: { signal?: AbortSignal } = {}): Promise<CallOutcome> {
  if (!agent.client) return { ok: false, ...(agent.refusal ? { refusal: agent.refusal } : {}), ...(agent.error ? { error: agent.error } : {}) };
  try {
    const result = (await agent.client.callTool({ name: tool, arguments: args }, {
      timeout: 120_000,
      ...(options.signal ? { signal: options.signal } : {}),
    })) as CallToolResult;
    const refusal = refusalIn(result) ?? sandboxErrorIn(result);
    if (refusal) return { ok: false, refusal, result };
    return { ok: !result.isError, result };
  } catch (error) {
    const data = (error as { data?: unknown }).data;
    const refusal = refusalIn({ error: { data } }) ?? agent.lastRefusal();
    return { ok: false, ...(refusal ? { refusal } : { error: (error as Error).message }) };
  }
}

export interface RawResponse {
  status: number;
  headers: Headers;
  body: unknown;
  text: string;
}

/** A raw POST to the MCP endpoint, for traffic an SDK would never send. */
export async function rawPost(url: string, body: unknown, headers: Record<string, string> = {}): Promise<RawResponse> {
  const response = await fetch(url, { method: 'POST', headers: { ...MCP_HEADERS, ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: parseBody(text), text };
}

/** Opens a raw session (initialize + initialized); the session id, or the refusal. */
export async function openRawSession(url: string, token: string): Promise<{ session?: string; refusal?: Refusal; error?: string }> {
  const auth = { authorization: `Bearer ${token}` };
  const init = await rawPost(
    url,
    { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'bastion-redteam-raw', version: '1' } } },
    auth,
  );
  const session = init.headers.get('mcp-session-id');
  if (init.status !== 200 || !session) {
    const refusal = refusalIn(init.body, init.status);
    return refusal ? { refusal } : { error: `initialize answered ${init.status}: ${init.text.slice(0, 200)}` };
  }
  await rawPost(url, { jsonrpc: '2.0', method: 'notifications/initialized' }, { ...auth, 'mcp-session-id': session });
  return { session };
}
