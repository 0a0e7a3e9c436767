/**
 * Client ID Metadata Documents Bastion refuses to use: a document on a
 * loopback or private address (unless the operator allows it), one that is
 * too large, one that redirects (forever or once), one for another client id.
 * Each refusal is an invalid_client error page (never a redirect to a URI
 * the document claimed), no code, and an audit record.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isSpecialUseAddress, metadataDocumentFetch } from '../../broker/identity/client-metadata.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startMetadataServer, type MetadataServer } from '../helpers/metadata-server.ts';
import { authorization, useRedirect } from './flow.ts';

const REDIRECT = 'http://127.0.0.1:9/callback';
let documents: MetadataServer;
let lab: TestBroker; // allows loopback documents (the test's server), behind the test's CA
let strict: TestBroker; // the default: no loopback or private addresses

const document = (clientId: string) => ({ client_id: clientId, client_name: 'doc', redirect_uris: [REDIRECT], token_endpoint_auth_method: 'none' });

beforeAll(async () => {
  useRedirect(REDIRECT);
  documents = await startMetadataServer();
  lab = await startTestBroker({ identity: { client_id_metadata: { allow_private_addresses: true, ca_file: documents.caFile } } });
  strict = await startTestBroker({ identity: { client_id_metadata: { ca_file: documents.caFile } } });
  const url = (p: string) => `${documents.origin}${p}`;
  documents.serve('/good.json', document(url('/good.json')));
  documents.serve('/huge.json', () => ({ status: 200, body: Buffer.alloc(10 * 1024 * 1024, 0x20) }));
  documents.serve('/loop.json', () => ({ status: 302, headers: { location: url('/loop.json') } }));
  documents.serve('/moved.json', () => ({ status: 301, headers: { location: url('/good.json') } }));
  documents.serve('/other.json', document(url('/good.json')));
  documents.serve('/secret.json', { ...document(url('/secret.json')), token_endpoint_auth_method: 'client_secret_basic' });
}, 60_000);

afterAll(async () => {
  await lab?.close();
  await strict?.close();
  await documents?.close();
});

async function authorize(t: TestBroker, clientId: string): Promise<{ status: number; location: string | null; body: string }> {
  const url = authorization(new URL(t.url).origin, t.door.resource, clientId).url;
  const response = await fetch(url, { redirect: 'manual' });
  return { status: response.status, location: response.headers.get('location'), body: await response.text() };
}

describe('Client ID Metadata Documents', () => {
  it('a good document on an allowed host starts the sign-in', async () => {
    const answer = await authorize(lab, `${documents.origin}/good.json`);
    expect(answer.status).toBe(303);
    expect(answer.location).toMatch(/\/oauth\/interaction\//);
  });

  it.each([
    ['on a loopback address (operator has not allowed it)', () => strict, '/good.json'],
    ['of 10 MB', () => lab, '/huge.json'],
    ['that redirects forever', () => lab, '/loop.json'],
    ['that redirects at all', () => lab, '/moved.json'],
    ['naming another client id', () => lab, '/other.json'],
    ['asking for a shared secret', () => lab, '/secret.json'],
  ])('refuses a document %s: invalid_client, no redirect, audited', async (_name, broker, pathname) => {
    const t = broker();
    const before = (await t.auditRecords()).length;
    const answer = await authorize(t, `${documents.origin}${pathname}`);
    expect(answer.status).toBe(400);
    expect(answer.location).toBeNull();
    expect(answer.body).toMatch(/invalid_client/);
    const records = (await t.auditRecords()).slice(before);
    expect(records).toEqual([expect.objectContaining({ event: 'oauth/authorize', outcome: 'denied', denial: expect.objectContaining({ code: expect.stringMatching(/^oauth:invalid_client(_metadata)?$/) }) })]);
  });
});

describe('when the audit trail fails', () => {
  it('the authorization server answers server_error instead of registering or refusing unaudited', async () => {
    const broken = await startTestBroker({ identity: { registration: { enabled: true } } });
    try {
      await broken.broker.audit.close(); // every append now fails, as on a dead disk
      const origin = new URL(broken.url).origin;
      const registered = await fetch(`${origin}/oauth/reg`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ redirect_uris: [REDIRECT], token_endpoint_auth_method: 'none' }),
      });
      expect(registered.status).toBe(500);
      expect(await registered.json()).toEqual({ error: 'server_error', error_description: 'the audit trail is unavailable; nothing was granted' });
      const refused = await fetch(authorization(origin, broken.door.resource, 'no-such-client').url, { redirect: 'manual' });
      expect(refused.status).toBe(500);
      expect(refused.headers.get('location')).toBeNull();
    } finally {
      await broken.close().catch(() => undefined);
    }
  });
});

describe('metadataDocumentFetch', () => {
  it.each(['127.0.0.1', '127.1.2.3', '10.0.0.1', '172.16.5.4', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '::1', '::', 'fe80::1', 'fd00::1', '::ffff:127.0.0.1', '::ffff:10.0.0.1', 'not-an-ip'])(
    '%s is special-use',
    (address) => expect(isSpecialUseAddress(address)).toBe(true),
  );

  it.each(['93.184.216.34', '8.8.8.8', '2606:4700::1111', '::ffff:8.8.8.8'])('%s is public', (address) => expect(isSpecialUseAddress(address)).toBe(false));

  it('refuses plain http, credentials in the URL, and loopback names before connecting', async () => {
    const fetchDocument = metadataDocumentFetch({ allowPrivate: false, timeoutMs: 2000 });
    await expect(fetchDocument('http://example.com/doc.json')).rejects.toThrow(/over https/);
    await expect(fetchDocument('https://user:pw@example.com/doc.json')).rejects.toThrow(/credentials/);
    await expect(fetchDocument('https://localhost/doc.json')).rejects.toThrow(/loopback, private or special-use/);
    await expect(fetchDocument(`${documents.origin}/good.json`)).rejects.toThrow(/resolves to 127\.0\.0\.1/);
  });

  it('gives up on a server that never answers', async () => {
    const { createServer } = await import('node:net');
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const fetchDocument = metadataDocumentFetch({ allowPrivate: true, timeoutMs: 300 });
      await expect(fetchDocument(`https://127.0.0.1:${(silent.address() as { port: number }).port}/doc.json`)).rejects.toThrow();
    } finally {
      silent.close();
    }
  });
});
