/**
 * Protocol eras at the front door. One endpoint serves two revisions: MCP
 * 2025-11-25 (an `initialize` handshake, then a session named by
 * `Mcp-Session-Id`) and 2026-07-28 (stateless: every request carries its
 * protocol version, client info and capabilities in its `_meta` envelope).
 * This module tells them apart with the SDK's own classifier and checks what
 * the SDK would check only later: the standard headers (`MCP-Protocol-Version`,
 * `Mcp-Method`, `Mcp-Name`) must agree with the body. Gateways route and
 * authorize on headers, so a request whose headers say one thing and whose
 * body says another is refused before any stage runs.
 *
 * @example
 *   const verdict = classifyEra({ httpMethod: 'POST', headers: req.headers, body: req.body });
 *   if ('refusal' in verdict) refuse(verdict.refusal);
 *   else if (verdict.era === 'modern') serveModern(req, res);
 */
import { classifyInboundRequest, ProtocolErrorCode, PROTOCOL_VERSION_META_KEY } from '@modelcontextprotocol/server';
import type { DenialCode } from '../errors.ts';

/** The stateless revision Bastion serves per request. */
export const MODERN_REVISION = '2026-07-28';

export type EraRoute = { era: 'legacy' } | { era: 'modern'; revision: string; messageKind: 'request' | 'notification' };

export interface EraRefusal {
  status: number;
  rpcCode: number;
  code: DenialCode;
  message: string;
  /** The spec's error data (e.g. `{supported, requested}` for an unsupported version). */
  data?: Record<string, unknown>;
}

/** The body field each method's `Mcp-Name` header mirrors (SEP-2243). */
const NAME_SOURCE: Record<string, string> = { 'tools/call': 'name', 'prompts/get': 'name', 'resources/read': 'uri' };
const SENTINEL = /^=\?base64\?([A-Za-z0-9+/]*={0,2})\?=$/;

type Headers = Record<string, string | string[] | undefined>;

function header(headers: Headers, name: string): string | undefined {
  const value = headers[name];
  // A repeated header is one value joined by commas, as fetch joins it: it then never matches the body.
  return (Array.isArray(value) ? value.join(', ') : value)?.trim();
}

/** The `Mcp-Name` value as sent: plain, or a `=?base64?…?=` sentinel for values HTTP cannot carry. */
function decodeName(value: string): string | undefined {
  const sentinel = SENTINEL.exec(value);
  if (!sentinel) return value.startsWith('=?base64?') ? undefined : value;
  const bytes = Buffer.from(sentinel[1]!, 'base64');
  if (bytes.toString('base64') !== sentinel[1]) return undefined;
  return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
}

const mismatch = (message: string, headerValue: string): EraRefusal => ({
  status: 400,
  rpcCode: -32020,
  code: 'BASTION_HEADER_MISMATCH',
  message: `Bad Request: the request headers and body disagree: ${message}`,
  data: { mismatch: { header: headerValue.slice(0, 256) } },
});

/** What the body says its method and name are, for comparing with the headers. */
function bodyNames(body: unknown): { method?: string; name?: { field: string; value: string | undefined } } {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return {};
  const { method, params } = body as { method?: unknown; params?: unknown };
  if (typeof method !== 'string') return {};
  const field = Object.hasOwn(NAME_SOURCE, method) ? NAME_SOURCE[method]! : undefined;
  if (!field) return { method };
  const raw = params && typeof params === 'object' ? (params as Record<string, unknown>)[field] : undefined;
  return { method, name: { field, value: typeof raw === 'string' ? raw : undefined } };
}

/** `Mcp-Method` and `Mcp-Name`, when present, must name what the body names (either era). */
function headersAgree(headers: Headers, body: unknown): EraRefusal | undefined {
  const { method, name } = bodyNames(body);
  const methodHeader = header(headers, 'mcp-method');
  if (methodHeader !== undefined && methodHeader !== method) {
    return mismatch(`the body names method ${String(method).slice(0, 100)} but the Mcp-Method header names ${methodHeader.slice(0, 100)}`, methodHeader);
  }
  const nameHeader = header(headers, 'mcp-name');
  if (nameHeader === undefined) return undefined;
  const decoded = decodeName(nameHeader);
  if (decoded === undefined) return mismatch('the Mcp-Name header carries an invalid Base64 sentinel value', nameHeader);
  if (!name || name.value === undefined) return mismatch(`the Mcp-Name header names ${decoded.slice(0, 100)} but the body names nothing it could mirror`, nameHeader);
  if (decoded !== name.value) return mismatch(`the body carries params.${name.field}="${name.value.slice(0, 100)}" but the Mcp-Name header names "${decoded.slice(0, 100)}"`, nameHeader);
  return undefined;
}

/**
 * Which era a request to /mcp speaks, or why it is refused: a malformed `_meta`
 * envelope (-32602), a revision Bastion does not serve (-32022, the spec's
 * unsupported-version error with `supported` and `requested`), or headers that
 * disagree with the body (-32020). A 2026-07-28 request must carry
 * `MCP-Protocol-Version` and `Mcp-Method` (and `Mcp-Name` where the method has a name).
 */
export function classifyEra(request: { httpMethod: string; headers: Headers; body: unknown }): EraRoute | { refusal: EraRefusal } {
  const { httpMethod, headers, body } = request;
  if (httpMethod.toUpperCase() !== 'POST') return { era: 'legacy' };
  const outcome = classifyInboundRequest({
    httpMethod,
    protocolVersionHeader: header(headers, 'mcp-protocol-version'),
    mcpMethodHeader: header(headers, 'mcp-method'),
    mcpNameHeader: header(headers, 'mcp-name'),
    body,
  });
  // Not a JSON-RPC message at all: not an era question; the transport refuses it as it always has.
  if (outcome.kind === 'reject' && outcome.rung === 'jsonrpc-shape') return { era: 'legacy' };
  if (outcome.kind === 'reject') {
    const code: DenialCode =
      outcome.code === -32020 ? 'BASTION_HEADER_MISMATCH' : outcome.code === ProtocolErrorCode.UnsupportedProtocolVersion ? 'BASTION_PROTOCOL_UNSUPPORTED' : outcome.rung === 'envelope' ? 'BASTION_ENVELOPE_INVALID' : 'BASTION_REQUEST_INVALID';
    const data = outcome.data && typeof outcome.data === 'object' ? (outcome.data as Record<string, unknown>) : undefined;
    return { refusal: { status: outcome.httpStatus, rpcCode: outcome.code, code, message: outcome.message, ...(data ? { data } : {}) } };
  }
  const disagreement = headersAgree(headers, body);
  if (disagreement) return { refusal: disagreement };
  if (outcome.kind === 'legacy') return { era: 'legacy' };

  const revision = outcome.classification.revision;
  if (revision !== MODERN_REVISION) {
    const requested = typeof revision === 'string' ? revision.slice(0, 64) : 'unknown';
    return {
      refusal: {
        status: 400,
        rpcCode: ProtocolErrorCode.UnsupportedProtocolVersion,
        code: 'BASTION_PROTOCOL_UNSUPPORTED',
        message: `Unsupported protocol version: ${requested} (this endpoint serves ${MODERN_REVISION} per request, and 2025-era revisions through initialize)`,
        data: { supported: [MODERN_REVISION], requested },
      },
    };
  }
  if (outcome.messageKind === 'request') {
    // The SDK requires these on every 2026 request POST; checked here so the refusal comes before authentication.
    if (header(headers, 'mcp-protocol-version') === undefined) {
      return { refusal: mismatch(`the body envelope names protocol version ${MODERN_REVISION} but the required MCP-Protocol-Version header is absent`, '(missing)') };
    }
    if (header(headers, 'mcp-method') === undefined) {
      return { refusal: mismatch(`the body names method ${outcome.message.method.slice(0, 100)} but the required Mcp-Method header is absent`, '(missing)') };
    }
    const { name } = bodyNames(body);
    if (name?.value !== undefined && header(headers, 'mcp-name') === undefined) {
      return { refusal: mismatch(`the body carries params.${name.field}="${name.value.slice(0, 100)}" but the required Mcp-Name header is absent`, '(missing)') };
    }
  }
  return { era: 'modern', revision, messageKind: outcome.messageKind };
}

/** The revision a request's `_meta` envelope claims, for audit records of refused requests. */
export function claimedRevision(body: unknown): string | undefined {
  const params = body && typeof body === 'object' ? (body as { params?: { _meta?: Record<string, unknown> } }).params : undefined;
  const claimed = params?._meta?.[PROTOCOL_VERSION_META_KEY];
  return typeof claimed === 'string' ? claimed.slice(0, 64) : undefined;
}
