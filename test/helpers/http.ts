/**
 * Raw Streamable HTTP requests, for what an SDK client would never send:
 * bad tokens on a live session, malformed JSON-RPC, oversized bodies.
 */
export const MCP_HEADERS = {
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
  'mcp-protocol-version': '2025-06-18',
};

export interface RawResponse {
  status: number;
  headers: Headers;
  /** Parsed JSON body, or the JSON-RPC message inside an SSE body. */
  json: any;
  text: string;
}

/**
 * One POST, on a connection of its own (`connection: close`): a test that pauses (a
 * forced GC, a settle) must not race the server closing an idle pooled socket and
 * read ECONNRESET, which says nothing about the request under test.
 */
export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<RawResponse> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { ...MCP_HEADERS, connection: 'close', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.text();
  let json: unknown;
  const data = /^data: (.*)$/m.exec(text);
  try {
    json = JSON.parse(data ? data[1]! : text);
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, json, text };
}

/** An initialize request as a raw client sends it. */
export const INITIALIZE = { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } };

/** Opens a session with `token` and returns its id. */
export async function openSession(url: string, token: string): Promise<string> {
  const init = await post(url, INITIALIZE, { authorization: `Bearer ${token}` });
  const sessionId = init.headers.get('mcp-session-id');
  if (init.status !== 200 || !sessionId) throw new Error(`initialize failed: ${init.status} ${init.text}`);
  await post(url, { jsonrpc: '2.0', method: 'notifications/initialized' }, { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId });
  return sessionId;
}

export function toolCall(name: string, args: Record<string, unknown>, id = 2) {
  return { jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: args } };
}
