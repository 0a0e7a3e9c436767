/**
 * Starts a real broker for a test: real config parsing, real dev key, real
 * compiled policy, real stdio upstream (the recording fixture), real HTTP
 * front door on a free loopback port. Nothing here is a double.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { mintToken } from '../../broker/auth/mint.ts';
import type { AuditRecord } from '../../broker/audit/chain.ts';
import { createBroker, type Broker, type BrokerOptions } from '../../broker/broker.ts';
import { parseConfig } from '../../broker/config.ts';
import { createLogger } from '../../broker/log.ts';
import type { Capability } from '../../broker/policy/schema.ts';
import { startHttp, type HttpFrontDoor } from '../../broker/server/http.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const RECORDING_UPSTREAM = path.join(ROOT, 'test/fixtures/recording-upstream.ts');

export interface TestBroker {
  broker: Broker;
  door: HttpFrontDoor;
  dir: string;
  url: string;
  /** performance.now() taken just before the front door started listening. */
  listeningFrom: number;
  /** Signs a token with the broker's dev key; defaults make a valid one. */
  mint(options?: { sub?: string; cap?: Capability[]; ttlMs?: number }): Promise<string>;
  /** A connected SDK client using `token` as its bearer token. */
  connect(token: string): Promise<Client>;
  /** What the upstream actually received. */
  upstreamCalls(): Promise<{ tool: string; args: Record<string, unknown> }[]>;
  auditRecords(): Promise<AuditRecord[]>;
  /** The seq of the newest audit record now (0 when there is none): where auditSince starts. */
  auditMark(): Promise<number>;
  /** The audit records written after `mark` (of `event`, when given). */
  auditSince(mark: number, event?: string): Promise<AuditRecord[]>;
  close(): Promise<void>;
}

async function readLines<T>(file: string): Promise<T[]> {
  try {
    const text = await readFile(file, 'utf8');
    return text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as T);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

/**
 * `rec` adds settings to the recording connector (e.g. its isolation), unless `overrides` replaces the
 * connectors; `options` go to createBroker (e.g. a clock).
 */
export async function startTestBroker(overrides: Record<string, unknown> = {}, rec: Record<string, unknown> = {}, options: BrokerOptions = {}): Promise<TestBroker> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bastion-test-'));
  const callLog = path.join(dir, 'upstream-calls.jsonl');
  const config = parseConfig({
    state_dir: dir,
    log_level: 'silent',
    server: { port: 0 },
    connectors: [
      {
        name: 'rec',
        transport: 'stdio',
        command: process.execPath,
        args: [RECORDING_UPSTREAM],
        env: { CALL_LOG: callLog },
        timeout: '20s',
        ...rec,
      },
    ],
    ...overrides,
  });
  const broker = await createBroker(config, createLogger('silent'), options);
  const listeningFrom = performance.now();
  const door = await startHttp(broker);
  const clients: Client[] = [];
  return {
    broker,
    door,
    dir,
    url: door.url,
    listeningFrom,
    mint: ({ sub = 'agent:test', cap = [{ tool: 'rec__*' }], ttlMs = 300_000 } = {}) =>
      mintToken({ key: broker.devKey!.privateJwk, issuer: broker.devKey!.issuer, audience: door.resource, sub, cap, ttlMs }),
    async connect(token) {
      const client = new Client({ name: 'bastion-test', version: '1.0.0' });
      await client.connect(
        new StreamableHTTPClientTransport(new URL(door.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }),
      );
      clients.push(client);
      return client;
    },
    upstreamCalls: () => readLines(callLog),
    auditRecords: () => readLines<AuditRecord>(path.join(dir, 'audit.jsonl')),
    auditMark: async () => (await readLines<AuditRecord>(path.join(dir, 'audit.jsonl'))).at(-1)?.seq ?? 0,
    auditSince: async (mark, event) => (await readLines<AuditRecord>(path.join(dir, 'audit.jsonl'))).filter((r) => r.seq > mark && (event === undefined || r.event === event)),
    async close() {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await door.close();
      await broker.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
