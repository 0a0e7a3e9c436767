/**
 * Bundles polled from a URL, against a real local HTTP server: ETag and
 * If-None-Match (200, then 304), swaps on a new bundle, refused bundles not
 * hidden behind a 304, and the persisted copy used when the server is down.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BundleDownload } from '../../broker/policy/download.ts';
import { PolicyHolder, type ReloadEvent } from '../../broker/policy/holder.ts';
import { buildBundle, capturingLogger, copyDefaultPolicy, input, tempDir, waitFor } from './helpers.ts';

const { dir: work, cleanup } = tempDir('bastion-download-');

interface Served {
  body: Uint8Array;
  status?: number;
}

let server: Server;
let url: string;
let served: Served;
const requests: { ifNoneMatch: string | undefined; status: number }[] = [];
let lowRisk: Uint8Array;
let highRisk: Uint8Array;

beforeAll(async () => {
  const src = path.join(work, 'src');
  copyDefaultPolicy(src);
  lowRisk = readFileSync(buildBundle(src, path.join(work, 'low.tar.gz'), { revision: 'low' }));
  writeFileSync(path.join(src, 'data.json'), JSON.stringify({ bastion: { tool_risk: { demo__read_file: 'high' } } }));
  highRisk = readFileSync(buildBundle(src, path.join(work, 'high.tar.gz'), { revision: 'high' }));
  served = { body: lowRisk };
  server = createServer((request, response) => {
    const etag = `"${createHash('sha256').update(served.body).digest('hex').slice(0, 16)}"`;
    const ifNoneMatch = request.headers['if-none-match'];
    const status = served.status ?? (ifNoneMatch === etag ? 304 : 200);
    requests.push({ ifNoneMatch, status });
    if (status !== 200) return void response.writeHead(status, { etag }).end();
    response.writeHead(200, { etag, 'content-type': 'application/gzip' }).end(served.body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/bundles/bastion.tar.gz`;
});

afterAll(async () => {
  server.close();
  cleanup();
});

describe('BundleDownload', () => {
  it('sends the accepted ETag as If-None-Match and treats 304 as unchanged', async () => {
    served = { body: lowRisk };
    requests.length = 0;
    const download = new BundleDownload(url);
    const first = await download.fetch();
    expect(first.status).toBe('updated');
    expect(requests[0]).toEqual({ ifNoneMatch: undefined, status: 200 });
    // Not accepted yet: asks again without If-None-Match.
    expect((await download.fetch()).status).toBe('updated');
    download.accept(first.status === 'updated' ? first.etag : undefined);
    expect(await download.fetch()).toEqual({ status: 'not-modified' });
    expect(requests.map((r) => r.status)).toEqual([200, 200, 304]);
    expect(requests[2]!.ifNoneMatch).toBe(download.etag);
  });

  it('refuses error statuses and oversized bundles', async () => {
    served = { body: lowRisk, status: 500 };
    await expect(new BundleDownload(url).fetch()).rejects.toThrow(/answered 500/);
    served = { body: lowRisk };
    await expect(new BundleDownload(url, { maxBytes: 100 }).fetch()).rejects.toThrow(/limit/);
    expect(() => new BundleDownload('file:///etc/passwd')).toThrow(/http/);
  });
});

describe('a bundle URL source', () => {
  it('polls: 200 then 304, swaps on a new bundle, and re-fetches a refused one instead of caching it', async () => {
    served = { body: lowRisk };
    requests.length = 0;
    const persist = path.join(work, 'persisted', 'bastion.tar.gz');
    const holder = await PolicyHolder.open({ source: { kind: 'url', url, intervalMs: 50, persist }, log: capturingLogger().log });
    const seen: ReloadEvent[] = [];
    holder.onReload((event) => seen.push(event));
    try {
      expect(holder.current().bundleRevision).toBe('low');
      expect(existsSync(persist)).toBe(true);
      await waitFor(() => requests.filter((r) => r.status === 304).length >= 2);
      expect(requests[0]!.status).toBe(200);
      expect(seen).toEqual([]); // 304s are not reload attempts

      served = { body: highRisk };
      await waitFor(() => seen.some((event) => event.changed));
      expect(holder.current().bundleRevision).toBe('high');
      expect(holder.current().decide(input()).approval.required).toBe(true);

      served = { body: Buffer.from('not a bundle') };
      await waitFor(() => seen.filter((event) => !event.ok).length >= 2);
      expect(seen.filter((event) => !event.ok).every((event) => /not a readable bundle/.test(event.error ?? ''))).toBe(true);
      expect(holder.current().bundleRevision).toBe('high');
    } finally {
      await holder.close();
    }
  });

  it('starts from the persisted bundle when the server is unavailable', async () => {
    const persist = path.join(work, 'persisted', 'bastion.tar.gz');
    served = { body: highRisk };
    const first = await PolicyHolder.open({ source: { kind: 'url', url, intervalMs: 0, persist }, log: capturingLogger().log });
    await first.close();
    served = { body: highRisk, status: 503 };
    const { log, lines } = capturingLogger();
    const holder = await PolicyHolder.open({ source: { kind: 'url', url, intervalMs: 0, persist }, log });
    try {
      expect(holder.current().bundleRevision).toBe('high');
      expect(lines().some((line) => String(line.msg).includes('using the persisted bundle'))).toBe(true);
      served = { body: lowRisk };
      expect(await holder.reload()).toMatchObject({ ok: true, changed: true });
    } finally {
      await holder.close();
    }
    served = { body: lowRisk, status: 503 };
    await expect(PolicyHolder.open({ source: { kind: 'url', url, intervalMs: 0 }, log })).rejects.toThrow(/answered 503/);
  });
});
