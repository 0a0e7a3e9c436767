/**
 * The `fetch` host capability: an HTTP request made by the broker side on a
 * plugin's behalf, never from inside the isolate.
 *
 * Every hop is checked before any byte leaves: the scheme is http(s), the
 * origin is on the allow-list (the manifest's request intersected with the
 * operator's grant) and the method is allowed. Redirects are followed by hand
 * and each target is checked the same way, so a redirect to a host that is
 * not allow-listed is refused. A host name must resolve to public addresses
 * only, and the connection goes to the address that was checked (no DNS
 * rebinding between check and connect); loopback, private and link-local
 * addresses (127.0.0.1, 10/8, 169.254.169.254, ::1, …) are reachable only
 * through an origin the operator allow-listed by that literal address or as
 * `localhost`. Request and response sizes and the time per request are capped.
 *
 * @example
 *   const policy = fetchPolicy(manifest.capabilities.fetch, grant);
 *   const response = await hostFetch({ url, method: 'GET', headers: {} }, policy, signal, uses);
 */
import { lookup } from 'node:dns/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { FetchMethod } from '../manifest.ts';
import { CapabilityDenied, CapabilityFailed, withDeadline, type CapabilityUse } from './uses.ts';

/** What the operator allows a plugin to fetch. */
export interface FetchGrant {
  /** Origins (`https://api.example.com`); a plugin gets those its manifest also lists. */
  origins: string[];
  /** Methods; default GET and HEAD. */
  methods?: FetchMethod[];
  /** Per request, redirects included (default 5000). */
  timeoutMs?: number;
  /** Largest response body (default 1 MiB). */
  maxResponseBytes?: number;
  /** Largest request body (default 256 KiB). */
  maxRequestBytes?: number;
  /** Default 5. */
  maxRedirects?: number;
  /** Host name → addresses; the system resolver by default. Tests inject one. */
  resolve?: (hostname: string) => Promise<string[]>;
}

/** The effective allow-list of one plugin. */
export interface FetchPolicy {
  origins: ReadonlySet<string>;
  methods: ReadonlySet<string>;
  timeoutMs: number;
  maxResponseBytes: number;
  maxRequestBytes: number;
  maxRedirects: number;
  resolve: (hostname: string) => Promise<string[]>;
}

export interface FetchRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
  body?: string | undefined;
}

export interface FetchResponse {
  status: number;
  /** The URL of the last hop. */
  url: string;
  headers: Record<string, string>;
  /** The body decoded as UTF-8. */
  body: string;
}

const MAX_HEADERS = 32;
const MAX_HEADER_BYTES = 16 * 1024;
/** Set by the host per hop, or meaningless for a proxied request. */
const FORBIDDEN_HEADERS = new Set([
  'host', 'connection', 'content-length', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'keep-alive', 'expect',
  'proxy-authorization', 'proxy-connection', 'accept-encoding',
]);
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

async function systemResolve(hostname: string): Promise<string[]> {
  const results = await lookup(hostname, { all: true, verbatim: true });
  return results.map((r) => r.address);
}

/** Intersects what the manifest asks for with what the operator grants. */
export function fetchPolicy(requested: { origins: string[]; methods: FetchMethod[] }, grant: FetchGrant): FetchPolicy {
  const granted = new Set(grant.origins.map((o) => new URL(o).origin));
  const grantedMethods = new Set<string>(grant.methods ?? ['GET', 'HEAD']);
  return {
    origins: new Set(requested.origins.filter((o) => granted.has(o))),
    methods: new Set(requested.methods.filter((m) => grantedMethods.has(m))),
    timeoutMs: grant.timeoutMs ?? 5000,
    maxResponseBytes: grant.maxResponseBytes ?? 1024 * 1024,
    maxRequestBytes: grant.maxRequestBytes ?? 256 * 1024,
    maxRedirects: grant.maxRedirects ?? 5,
    resolve: grant.resolve ?? systemResolve,
  };
}

/** Loopback, private, link-local, CGNAT, multicast, reserved and unspecified ranges (IPv4-mapped IPv6 included). */
const NON_PUBLIC = new net.BlockList();
for (const [address, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) {
  NON_PUBLIC.addSubnet(address, prefix, 'ipv4');
}
for (const [address, prefix] of [
  ['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8], ['64:ff9b::', 96], ['2001:db8::', 32],
] as const) {
  NON_PUBLIC.addSubnet(address, prefix, 'ipv6');
}

export function isPublicAddress(address: string): boolean {
  const family = net.isIP(address);
  if (family === 0) return false;
  return !NON_PUBLIC.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

function bareHost(url: URL): string {
  return url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
}

function checkHop(url: URL, method: string, policy: FetchPolicy): void {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new CapabilityDenied(`fetch: scheme ${url.protocol} is not allowed`);
  if (url.username || url.password) throw new CapabilityDenied('fetch: URLs with credentials are refused');
  if (!policy.origins.has(url.origin)) throw new CapabilityDenied(`fetch: origin ${url.origin} is not allow-listed`);
  if (!policy.methods.has(method)) throw new CapabilityDenied(`fetch: method ${method} is not allowed for this plugin`);
}

/**
 * The address to connect to. An origin allow-listed by a literal address or
 * as `localhost` is explicit about where it goes; any other host name must
 * resolve to public addresses only.
 */
async function resolveHop(url: URL, policy: FetchPolicy): Promise<{ address: string; family: 4 | 6 } | undefined> {
  const host = bareHost(url);
  const literal = net.isIP(host);
  if (literal !== 0) return undefined; // the allow-list named this address itself
  let addresses: string[];
  try {
    addresses = await policy.resolve(host);
  } catch (error) {
    throw new CapabilityFailed(`fetch: cannot resolve ${host}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  if (addresses.length === 0) throw new CapabilityFailed(`fetch: ${host} has no addresses`);
  if (host !== 'localhost') {
    const inner = addresses.find((a) => !isPublicAddress(a));
    if (inner) throw new CapabilityDenied(`fetch: ${host} resolves to the non-public address ${inner}; allow-list that address explicitly to reach it`);
  }
  const address = addresses[0]!;
  return { address, family: net.isIP(address) === 6 ? 6 : 4 };
}

function checkHeaders(headers: Record<string, string>): Record<string, string> {
  const entries = Object.entries(headers);
  if (entries.length > MAX_HEADERS) throw new CapabilityDenied(`fetch: more than ${MAX_HEADERS} request headers`);
  let bytes = 0;
  const out: Record<string, string> = {};
  for (const [name, value] of entries) {
    const lower = name.toLowerCase();
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(lower)) throw new CapabilityDenied(`fetch: invalid header name ${JSON.stringify(name)}`);
    if (FORBIDDEN_HEADERS.has(lower) || lower.startsWith('proxy-')) throw new CapabilityDenied(`fetch: header ${lower} is set by the host`);
    if (/[\r\n\0]/.test(value)) throw new CapabilityDenied(`fetch: invalid value for header ${lower}`);
    bytes += lower.length + value.length;
    out[lower] = value;
  }
  if (bytes > MAX_HEADER_BYTES) throw new CapabilityDenied(`fetch: request headers larger than ${MAX_HEADER_BYTES} bytes`);
  return out;
}

interface HopResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function pinnedLookup(pinned: { address: string; family: 4 | 6 }): net.LookupFunction {
  return (_host, options, callback) => {
    if (options.all) callback(null, [{ address: pinned.address, family: pinned.family }]);
    else callback(null, pinned.address, pinned.family);
  };
}

function requestHop(
  url: URL,
  method: string,
  headers: Record<string, string>,
  body: Buffer | undefined,
  pinned: { address: string; family: 4 | 6 } | undefined,
  policy: FetchPolicy,
  signal: AbortSignal,
): Promise<HopResult> {
  return new Promise<HopResult>((resolve, reject) => {
    const transport = url.protocol === 'https:' ? https : http;
    const request = transport.request(url, {
      method,
      headers: { ...headers, ...(body ? { 'content-length': String(body.byteLength) } : {}) },
      agent: false,
      signal,
      // Connect to the address that was checked, not to a fresh resolution.
      ...(pinned ? { lookup: pinnedLookup(pinned) } : {}),
    });
    request.on('error', (error: NodeJS.ErrnoException) => {
      if (error.name === 'AbortError') reject(new CapabilityFailed(`fetch: ${url.origin} did not answer in time`));
      else reject(error instanceof CapabilityDenied ? error : new CapabilityFailed(`fetch: ${error.code ?? error.message}`));
    });
    request.on('response', (response) => {
      const status = response.statusCode ?? 0;
      if (REDIRECTS.has(status)) {
        response.resume();
        resolve({ status, headers: response.headers, body: Buffer.alloc(0) });
        return;
      }
      const declared = Number(response.headers['content-length']);
      if (Number.isFinite(declared) && declared > policy.maxResponseBytes) {
        response.destroy();
        reject(new CapabilityDenied(`fetch: response of ${declared} bytes exceeds the ${policy.maxResponseBytes}-byte cap`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        size += chunk.byteLength;
        if (size > policy.maxResponseBytes) {
          response.destroy();
          reject(new CapabilityDenied(`fetch: response exceeds the ${policy.maxResponseBytes}-byte cap`));
          return;
        }
        chunks.push(chunk);
      });
      response.on('end', () => resolve({ status, headers: response.headers, body: Buffer.concat(chunks) }));
      response.on('error', (error) => reject(new CapabilityFailed(`fetch: ${error.message}`)));
    });
    request.end(body);
  });
}

function flattenHeaders(headers: http.IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || name === 'set-cookie') continue;
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

/**
 * Performs one plugin fetch under `policy`, following redirects by hand.
 * Records exactly one use in `uses`. Throws CapabilityDenied or CapabilityFailed.
 */
export async function hostFetch(request: FetchRequest, policy: FetchPolicy, signal: AbortSignal, uses: CapabilityUse[]): Promise<FetchResponse> {
  let method = request.method.toUpperCase();
  const use: Extract<CapabilityUse, { cap: 'fetch' }> = { cap: 'fetch', method, url: request.url.slice(0, 2048), outcome: 'unfinished' };
  uses.push(use);
  try {
    let url: URL;
    try {
      url = new URL(request.url);
    } catch {
      throw new CapabilityFailed(`fetch: invalid URL ${JSON.stringify(request.url.slice(0, 200))}`);
    }
    let headers = checkHeaders(request.headers);
    let body = request.body === undefined ? undefined : Buffer.from(request.body, 'utf8');
    if (body && body.byteLength > policy.maxRequestBytes) throw new CapabilityDenied(`fetch: request body exceeds the ${policy.maxRequestBytes}-byte cap`);
    if (body && (method === 'GET' || method === 'HEAD')) throw new CapabilityFailed(`fetch: a ${method} request cannot have a body`);
    const deadline = AbortSignal.any([signal, AbortSignal.timeout(policy.timeoutMs)]);
    for (let redirects = 0; ; redirects++) {
      checkHop(url, method, policy);
      const pinned = await withDeadline(resolveHop(url, policy), policy.timeoutMs, `fetch: resolving ${url.hostname}`, deadline);
      if (deadline.aborted) throw new CapabilityFailed(`fetch: ${url.origin} did not answer in time`);
      const hop = await requestHop(url, method, headers, body, pinned, policy, deadline);
      const location = hop.headers.location;
      if (REDIRECTS.has(hop.status) && typeof location === 'string') {
        if (redirects >= policy.maxRedirects) throw new CapabilityDenied(`fetch: more than ${policy.maxRedirects} redirects`);
        let next: URL;
        try {
          next = new URL(location, url);
        } catch {
          throw new CapabilityFailed(`fetch: invalid redirect location ${JSON.stringify(location.slice(0, 200))}`);
        }
        if (hop.status === 303 || ((hop.status === 301 || hop.status === 302) && method === 'POST')) {
          if (method !== 'HEAD') method = 'GET';
          body = undefined;
        }
        if (next.origin !== url.origin) {
          // As browsers do: credentials for one origin are not replayed to another.
          const { authorization: _a, cookie: _c, ...rest } = headers;
          headers = rest;
        }
        use.finalUrl = next.href.slice(0, 2048);
        use.redirects = redirects + 1;
        url = next;
        continue;
      }
      use.outcome = 'ok';
      use.status = hop.status;
      use.bytes = hop.body.byteLength;
      return { status: hop.status, url: url.href, headers: flattenHeaders(hop.headers), body: hop.body.toString('utf8') };
    }
  } catch (error) {
    use.outcome = error instanceof CapabilityDenied ? 'denied' : 'error';
    use.reason = (error as Error).message;
    throw error instanceof CapabilityDenied || error instanceof CapabilityFailed ? error : new CapabilityFailed(`fetch: ${(error as Error).message}`);
  }
}
