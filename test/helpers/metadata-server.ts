/**
 * An HTTPS server on a loopback port serving Client ID Metadata Documents
 * (and hostile variants) for the identity tests, with a self-signed
 * certificate made by openssl; `caFile` is what Bastion is told to trust.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface MetadataServer {
  origin: string;
  caFile: string;
  /** Serves `body` (an object as JSON, or a function of the request's URL) at `pathname`. */
  serve(pathname: string, body: unknown | ((url: URL) => { status: number; headers?: Record<string, string>; body?: string | Buffer })): void;
  close(): Promise<void>;
}

export async function startMetadataServer(): Promise<MetadataServer> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bastion-cimd-'));
  const key = path.join(dir, 'key.pem');
  const cert = path.join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  const routes = new Map<string, Parameters<MetadataServer['serve']>[1]>();
  const server = createServer({ key: await readFile(key), cert: await readFile(cert) }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://127.0.0.1');
    const route = routes.get(url.pathname);
    if (route === undefined) {
      res.writeHead(404).end();
    } else if (typeof route === 'function') {
      const answer = (route as (u: URL) => { status: number; headers?: Record<string, string>; body?: string | Buffer })(url);
      res.writeHead(answer.status, answer.headers ?? { 'content-type': 'application/json' }).end(answer.body);
    } else {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(route));
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    origin: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    caFile: cert,
    serve: (pathname, body) => void routes.set(pathname, body),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
