/**
 * Raw 2026-07-28 requests: what a stateless client sends (the `_meta`
 * envelope, the standard headers), for tests that must choose which replica
 * each request lands on, or present a requestState an SDK client never would.
 */
export const MODERN = '2026-07-28';

/** The per-request `_meta` envelope a 2026-07-28 request carries. */
export function envelope(capabilities: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    'io.modelcontextprotocol/protocolVersion': MODERN,
    'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1.0.0' },
    'io.modelcontextprotocol/clientCapabilities': capabilities,
  };
}

export interface ModernAnswer {
  status: number;
  /** The JSON-RPC response to the request (notifications before it are skipped). */
  message: { id?: unknown; result?: any; error?: { code: number; message: string; data?: any } };
}

/** Any 2026-07-28 request as a stateless client sends it: the envelope in `_meta` (plus `meta`), the standard headers. */
export async function modernRequest(
  url: string,
  token: string,
  request: { id?: number; method: string; params?: Record<string, unknown>; name?: string; capabilities?: Record<string, unknown>; meta?: Record<string, unknown> },
): Promise<ModernAnswer & { messages: (ModernAnswer['message'] & { method?: string; params?: any })[] }> {
  const id = request.id ?? Math.floor(Math.random() * 1e9);
  const response = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${token}`,
      'mcp-protocol-version': MODERN,
      'mcp-method': request.method,
      ...(request.name !== undefined ? { 'mcp-name': request.name } : {}),
    },
    body: JSON.stringify({ jsonrpc: '2.0', id, method: request.method, params: { ...request.params, _meta: { ...envelope(request.capabilities), ...request.meta } } }),
  });
  const text = await response.text();
  const messages = response.headers.get('content-type')?.startsWith('text/event-stream')
    ? text
        .split('\n')
        .filter((line) => line.startsWith('data: '))
        .map((line) => JSON.parse(line.slice(6)) as ModernAnswer['message'])
    : [JSON.parse(text) as ModernAnswer['message']];
  const message = messages.find((m) => m.id === id && ('result' in m || 'error' in m)) ?? messages.at(-1)!;
  return { status: response.status, message, messages };
}

/** One tools/call as a 2026-07-28 client sends it; `requestState` echoed when given, `extra` params (inputResponses) as given. */
export async function modernCall(
  url: string,
  token: string,
  call: {
    id?: number;
    name: string;
    arguments?: Record<string, unknown>;
    requestState?: string;
    extra?: Record<string, unknown>;
    capabilities?: Record<string, unknown>;
  },
): Promise<ModernAnswer> {
  const { status, message } = await modernRequest(url, token, {
    ...(call.id !== undefined ? { id: call.id } : {}),
    method: 'tools/call',
    name: call.name,
    params: {
      name: call.name,
      arguments: call.arguments ?? {},
      ...call.extra,
      ...(call.requestState !== undefined ? { requestState: call.requestState } : {}),
    },
    ...(call.capabilities ? { capabilities: call.capabilities } : {}),
  });
  return { status, message };
}

/** The Bastion denial a tool result carries, or a refused requestState's JSON-RPC error (-32602) carries in `data`, if any. */
export const denialOf = (answer: ModernAnswer): { code: string; stage: string; reason: string } | undefined =>
  answer.message.result?._meta?.['bastion/denial'] ?? (answer.message.error?.code === -32602 ? (answer.message.error.data as { code: string; stage: string; reason: string } | undefined) : undefined);
