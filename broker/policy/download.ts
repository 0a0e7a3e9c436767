/**
 * Downloads a bundle from a URL the way OPA's bundle service does: a GET
 * with `If-None-Match: <etag of the active bundle>`, where 304 means "keep
 * what you have". The ETag is only remembered once the caller has activated
 * the bundle it came with, so a bundle that was refused is fetched (and
 * refused, and logged) again on the next poll rather than hidden by a 304.
 *
 * @example
 *   const source = new BundleDownload('https://bundles.example/bastion.tar.gz');
 *   const got = await source.fetch();
 *   if (got.status === 'updated') { await activate(got.bytes); source.accept(got.etag); }
 */

export type BundleFetch = { status: 'not-modified' } | { status: 'updated'; bytes: Uint8Array; etag: string | undefined };

export interface BundleDownloadOptions {
  /** Extra request headers, e.g. an Authorization for the bundle server. */
  headers?: Record<string, string>;
  /** Largest compressed bundle accepted (default 32 MiB). */
  maxBytes?: number;
  timeoutMs?: number;
}

export class BundleDownload {
  readonly url: string;
  readonly #headers: Record<string, string>;
  readonly #maxBytes: number;
  readonly #timeoutMs: number;
  #etag: string | undefined;

  constructor(url: string, options: BundleDownloadOptions = {}) {
    const parsed = new URL(url);
    if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') throw new Error(`bundle URL must be http(s): ${url}`);
    this.url = url;
    this.#headers = options.headers ?? {};
    this.#maxBytes = options.maxBytes ?? 32 * 1024 * 1024;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** The ETag of the bundle in force, sent as If-None-Match. */
  get etag(): string | undefined {
    return this.#etag;
  }

  /** Records the ETag of a bundle that was activated. */
  accept(etag: string | undefined): void {
    this.#etag = etag;
  }

  async fetch(): Promise<BundleFetch> {
    const headers: Record<string, string> = { accept: 'application/gzip, application/octet-stream', ...this.#headers };
    if (this.#etag !== undefined) headers['if-none-match'] = this.#etag;
    const response = await fetch(this.url, { headers, redirect: 'error', signal: AbortSignal.timeout(this.#timeoutMs) });
    if (response.status === 304) {
      await response.body?.cancel();
      return { status: 'not-modified' };
    }
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new Error(`bundle server answered ${response.status} ${response.statusText} for ${this.url}`);
    }
    const declared = Number(response.headers.get('content-length') ?? Number.NaN);
    if (declared > this.#maxBytes) {
      await response.body?.cancel();
      throw new Error(`bundle at ${this.url} is ${declared} bytes, over the ${this.#maxBytes}-byte limit`);
    }
    const chunks: Uint8Array[] = [];
    let size = 0;
    if (response.body) {
      for await (const chunk of response.body) {
        size += chunk.byteLength;
        if (size > this.#maxBytes) throw new Error(`bundle at ${this.url} exceeds the ${this.#maxBytes}-byte limit`);
        chunks.push(chunk);
      }
    }
    return { status: 'updated', bytes: Buffer.concat(chunks), etag: response.headers.get('etag') ?? undefined };
  }
}
