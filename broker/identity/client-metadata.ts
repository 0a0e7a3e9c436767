/**
 * How the authorization server fetches Client ID Metadata Documents (a
 * client_id that is the HTTPS URL of the client's metadata). oidc-provider
 * does the protocol (URL rules, the document's client_id, no shared-secret
 * auth, caching by Cache-Control within bounds, the size limit); this is the
 * `fetch` it calls, and it decides where a fetch may go:
 *
 * - only https, port as given, no credentials in the URL;
 * - every address the host resolves to is checked before connecting, and
 *   loopback, private, link-local, CGNAT, multicast and other special-use
 *   ranges are refused unless the operator allows them (labs, tests);
 *   the connection goes to the address that was checked (no second lookup);
 * - redirects are not followed (the library refuses anything but 200);
 * - a deadline covers connecting and reading the whole body.
 *
 * @example
 *   new Provider(issuer, { fetch: metadataDocumentFetch({ allowPrivate: false, timeoutMs: 2500 }) });
 */
import { lookup } from 'node:dns/promises';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { BlockList, isIP } from 'node:net';
import { Readable } from 'node:stream';

const SPECIAL_USE = new BlockList();
for (const [network, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.88.99.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24],
  ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) SPECIAL_USE.addSubnet(network, prefix, 'ipv4');
for (const [network, prefix] of [
  // (IPv4-mapped addresses are checked as IPv4 above; a ::ffff:0:0/96 rule here would match every IPv4 address.)
  ['::', 128], ['::1', 128], ['64:ff9b:1::', 48], ['100::', 64], ['2001::', 23], ['2001:db8::', 32],
  ['2002::', 16], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8],
] as const) SPECIAL_USE.addSubnet(network, prefix, 'ipv6');

/** True for loopback, private and other addresses no public document lives at. */
export function isSpecialUseAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return true;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return SPECIAL_USE.check(mapped[1]!, 'ipv4');
  return SPECIAL_USE.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

export class MetadataFetchRefused extends Error {
  override readonly name = 'MetadataFetchRefused';
}

export interface MetadataFetchOptions {
  allowPrivate: boolean;
  timeoutMs: number;
  /** Extra trusted CA certificates (PEM file). */
  caFile?: string | undefined;
}

/** A `fetch` for oidc-provider that only reaches where a client's metadata may be. */
export function metadataDocumentFetch(options: MetadataFetchOptions): (url: string | URL, init?: RequestInit) => Promise<Response> {
  const ca = options.caFile ? readFileSync(options.caFile, 'utf8') : undefined;
  return async (input, init = {}) => {
    const url = new URL(String(input));
    if (url.protocol !== 'https:') throw new MetadataFetchRefused(`client metadata must be fetched over https, not ${url.protocol}`);
    if (url.username || url.password) throw new MetadataFetchRefused('client metadata URLs must not carry credentials');
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const addresses = isIP(host) ? [{ address: host, family: isIP(host) }] : await lookup(host, { all: true, verbatim: true });
    if (addresses.length === 0) throw new MetadataFetchRefused(`${host} does not resolve`);
    if (!options.allowPrivate) {
      const refused = addresses.find((a) => isSpecialUseAddress(a.address));
      if (refused) throw new MetadataFetchRefused(`${host} resolves to ${refused.address}, a loopback, private or special-use address`);
    }
    const { address, family } = addresses[0]!;
    const signal = AbortSignal.any([AbortSignal.timeout(options.timeoutMs), ...(init.signal ? [init.signal] : [])]);
    const headers = Object.fromEntries(new Headers(init.headers).entries());
    return new Promise<Response>((resolve, reject) => {
      const req = request(
        {
          host,
          servername: isIP(host) ? undefined : host,
          port: url.port || 443,
          path: `${url.pathname}${url.search}`,
          method: init.method ?? 'GET',
          headers,
          ...(ca ? { ca } : {}),
          signal,
          // Connect to the address that was checked, never to a second lookup's answer.
          lookup: (_hostname, opts, callback) => {
            if ((opts as { all?: boolean }).all) (callback as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, [{ address, family }]);
            else callback(null, address, family);
          },
        },
        (res) => {
          const body = res.statusCode === 204 || res.statusCode === 304 ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>);
          const responseHeaders = new Headers();
          for (const [name, value] of Object.entries(res.headers)) {
            if (value !== undefined) responseHeaders.set(name, Array.isArray(value) ? value.join(', ') : value);
          }
          resolve(new Response(body, { status: res.statusCode ?? 502, headers: responseHeaders }));
        },
      );
      req.on('error', reject);
      req.end();
    });
  };
}
