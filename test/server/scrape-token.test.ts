/**
 * GET /metrics behind a scrape token (server.metrics_token_file): a real
 * broker refuses a scrape without the token, or with a wrong one, with a 401,
 * a Bearer challenge, an audit record and a refusal count; the right token
 * gets the exposition. A missing, short or malformed token file stops
 * start-up instead of leaving /metrics open.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBroker } from '../../broker/broker.ts';
import { parseConfig } from '../../broker/config.ts';
import { createLogger } from '../../broker/log.ts';
import { startHttp } from '../../broker/server/http.ts';
import { loadScrapeToken, MIN_SCRAPE_TOKEN_CHARS, presentsScrapeToken } from '../../broker/server/scrape-token.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';

const TOKEN = 'c2NyYXBlLXRva2VuLWZvci10ZXN0cy0wMTIzNDU2Nzg5';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-scrape-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function tokenFile(name: string, text: string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, text, { mode: 0o600 });
  return file;
}

describe('loadScrapeToken and presentsScrapeToken', () => {
  it('accepts exactly "Bearer <token>" (scheme in any case), nothing else', async () => {
    const expected = await loadScrapeToken(await tokenFile('ok.token', `${TOKEN}\n`));
    expect(presentsScrapeToken(`Bearer ${TOKEN}`, expected)).toBe(true);
    expect(presentsScrapeToken(`bearer ${TOKEN}`, expected)).toBe(true);
    expect(presentsScrapeToken(undefined, expected)).toBe(false);
    expect(presentsScrapeToken('', expected)).toBe(false);
    expect(presentsScrapeToken(`Basic ${TOKEN}`, expected)).toBe(false);
    expect(presentsScrapeToken(`Bearer ${TOKEN}x`, expected)).toBe(false);
    expect(presentsScrapeToken(`Bearer ${TOKEN.slice(0, -1)}`, expected)).toBe(false);
    expect(presentsScrapeToken(`Bearer ${TOKEN} extra`, expected)).toBe(false);
  });

  it('refuses a missing file, a short token and a token with whitespace, naming the file', async () => {
    const missing = path.join(dir, 'missing.token');
    await expect(loadScrapeToken(missing)).rejects.toThrow(`server.metrics_token_file ${missing} cannot be read`);
    const short = await tokenFile('short.token', 'x'.repeat(MIN_SCRAPE_TOKEN_CHARS - 1));
    await expect(loadScrapeToken(short)).rejects.toThrow(new RegExp(`${short}.*at least ${MIN_SCRAPE_TOKEN_CHARS}`));
    const spaced = await tokenFile('spaced.token', `${TOKEN} ${TOKEN}`);
    await expect(loadScrapeToken(spaced)).rejects.toThrow('must not contain whitespace');
  });
});

describe('GET /metrics with server.metrics_token_file', () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({ server: { port: 0, metrics_token_file: await tokenFile('broker.token', TOKEN) } });
  });
  afterAll(async () => {
    await t?.close();
  });

  const scrape = (authorization?: string) =>
    fetch(new URL('/metrics', t.url), authorization === undefined ? {} : { headers: { authorization } });

  it('refuses a scrape without the token, or with a wrong one, with a 401 and a Bearer challenge', async () => {
    for (const authorization of [undefined, `Bearer ${TOKEN.replace(/.$/, 'x')}`, `Basic ${TOKEN}`]) {
      const response = await scrape(authorization);
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toBe('Bearer realm="bastion-metrics"');
      const body = (await response.json()) as { code: string; stage: string; error_description: string };
      expect(body).toMatchObject({ code: 'BASTION_METRICS_UNAUTHORIZED', stage: 'admit' });
      expect(body.error_description).toContain('server.metrics_token_file');
      expect(body.error_description).not.toContain(TOKEN);
    }
  });

  it('serves the exposition to the right token, counting the refusals', async () => {
    const response = await scrape(`Bearer ${TOKEN}`);
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toContain('bastion_tool_calls_total');
    const refused = /^bastion_requests_refused_total\{stage="admit",code="BASTION_METRICS_UNAUTHORIZED"\} (\d+)$/m.exec(text);
    expect(Number(refused?.[1])).toBeGreaterThanOrEqual(3);
  });

  it('writes an audit record for every refused scrape, never the presented token', async () => {
    const records = (await t.auditRecords()).filter((r) => r.event === 'http GET /metrics');
    expect(records.length).toBeGreaterThanOrEqual(3);
    for (const record of records) expect(record).toMatchObject({ outcome: 'denied', denial: { stage: 'admit', code: 'BASTION_METRICS_UNAUTHORIZED' } });
    expect(JSON.stringify(records)).not.toContain(TOKEN);
  });
});

describe('start-up with a bad scrape token file', () => {
  it('fails before listening, naming the file', async () => {
    const file = await tokenFile('weak.token', 'letmein');
    const config = parseConfig({ state_dir: path.join(dir, 'state'), log_level: 'silent', server: { port: 0, metrics_token_file: file } });
    const broker = await createBroker(config, createLogger('silent'));
    try {
      await expect(startHttp(broker)).rejects.toThrow(`server.metrics_token_file ${file} holds 7 characters`);
    } finally {
      await broker.stop();
    }
  });
});
