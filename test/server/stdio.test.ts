/**
 * `bastion stdio`: an MCP client spawns the real CLI and speaks JSON-RPC over
 * its stdin/stdout, with the capability token in BASTION_TOKEN. The dev key
 * is made beforehand in the config's state_dir, so the test can mint tokens
 * the spawned broker trusts.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { getDefaultEnvironment, StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { Client } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { ensureDevKey, type DevKey } from '../../broker/auth/keys.ts';
import { mintToken } from '../../broker/auth/mint.ts';
import type { AuditRecord } from '../../broker/audit/chain.ts';
import { verifyAuditFile } from '../../broker/audit/verify.ts';
import type { Capability } from '../../broker/policy/schema.ts';
import { RECORDING_UPSTREAM, ROOT } from '../helpers/broker.ts';
import { spawnCollecting } from '../helpers/spawn.ts';

const CLI = path.join(ROOT, 'broker/cli.ts');
const RESOURCE = 'http://bastion.stdio.test/mcp';

let dir: string;
let stateDir: string;
let configFile: string;
let verboseConfigFile: string;
let callLog: string;
let devKey: DevKey;
const clients: Client[] = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-stdio-'));
  stateDir = path.join(dir, 'state');
  callLog = path.join(dir, 'calls.jsonl');
  const config = {
    state_dir: 'state', // relative: resolved against the config file's folder
    log_level: 'silent',
    server: { resource: RESOURCE },
    connectors: [{ name: 'rec', transport: 'stdio', command: process.execPath, args: [RECORDING_UPSTREAM], env: { CALL_LOG: callLog } }],
  };
  configFile = path.join(dir, 'bastion.yaml');
  verboseConfigFile = path.join(dir, 'verbose.yaml');
  await writeFile(configFile, YAML.stringify(config));
  await writeFile(verboseConfigFile, YAML.stringify({ ...config, log_level: 'info' }));
  devKey = await ensureDevKey(stateDir);
});

afterEach(async () => {
  // One broker process at a time: they share state_dir and its audit chain.
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const mint = (sub: string, cap: Capability[], audience = RESOURCE) =>
  mintToken({ key: devKey.privateJwk, issuer: devKey.issuer, audience, sub, cap, ttlMs: 300_000 });

/** A real SDK client spawning `bastion stdio`; `era: 'modern'` pins it to 2026-07-28 (no fallback). */
async function connect(token: string | undefined, era: 'legacy' | 'modern' = 'legacy'): Promise<Client> {
  const env: Record<string, string> = { ...getDefaultEnvironment() };
  if (token !== undefined) env.BASTION_TOKEN = token;
  const transport = new StdioClientTransport({ command: process.execPath, args: [CLI, 'stdio', '--config', configFile], env, cwd: dir, stderr: 'pipe' });
  const client = new Client({ name: 'bastion-stdio-test', version: '1.0.0' }, era === 'modern' ? { versionNegotiation: { mode: { pin: '2026-07-28' } } } : {});
  await client.connect(transport);
  clients.push(client);
  return client;
}

async function upstreamCalls(): Promise<{ tool: string; args: Record<string, unknown> }[]> {
  try {
    return (await readFile(callLog, 'utf8')).split('\n').filter(Boolean).map((line) => JSON.parse(line));
  } catch {
    return [];
  }
}

async function auditRecords(): Promise<AuditRecord[]> {
  try {
    return (await readFile(path.join(stateDir, 'audit.jsonl'), 'utf8')).split('\n').filter(Boolean).map((line) => JSON.parse(line));
  } catch {
    return [];
  }
}

function denialOf(result: CallToolResult): { stage: string; code: string; reason: string } {
  expect(result.isError).toBe(true);
  return result._meta?.['bastion/denial'] as { stage: string; code: string; reason: string };
}

describe('bastion stdio', () => {
  it('an allowed call works, and only granted tools are listed', async () => {
    const client = await connect(await mint('agent:stdio', [{ tool: 'rec__echo' }]));
    expect(client.getServerVersion()?.name).toBe('bastion');
    expect((await client.listTools()).tools.map((tool) => tool.name)).toEqual(['rec__echo']);

    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'over stdio' } })) as CallToolResult;
    expect(result.isError).toBeFalsy();
    expect(result.content).toEqual([{ type: 'text', text: 'echo: over stdio' }]);
    expect((await upstreamCalls()).filter((c) => c.args.text === 'over stdio')).toHaveLength(1);
    const record = (await auditRecords()).find((r) => r.principal?.sub === 'agent:stdio');
    expect(record).toMatchObject({ event: 'tools/call', transport: 'stdio', tool: 'rec__echo', outcome: 'ok' });
  });

  it('a token without the capability is refused with a denial', async () => {
    const client = await connect(await mint('agent:stdio-narrow', [{ tool: 'rec__transfer' }]));
    const before = (await upstreamCalls()).length;
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'not allowed' } })) as CallToolResult;
    expect(denialOf(result)).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });
    expect(result.content[0]).toMatchObject({ type: 'text', text: expect.stringContaining('BASTION_POLICY_DENIED') });
    expect((await upstreamCalls()).length).toBe(before);
    const record = (await auditRecords()).find((r) => r.principal?.sub === 'agent:stdio-narrow');
    expect(record).toMatchObject({ transport: 'stdio', tool: 'rec__echo', outcome: 'denied', denial: { code: 'BASTION_POLICY_DENIED' } });
  });

  it('no token: calls are refused with BASTION_TOKEN_MISSING', async () => {
    const client = await connect(undefined);
    const before = (await upstreamCalls()).length;
    const recordsBefore = (await auditRecords()).length;

    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'anonymous' } })) as CallToolResult;
    expect(denialOf(result)).toMatchObject({ stage: 'authenticate', code: 'BASTION_TOKEN_MISSING' });
    const listError = await client.listTools().then(
      () => undefined,
      (error: Error & { data?: unknown }) => error,
    );
    expect(listError?.data).toMatchObject({ stage: 'authenticate', code: 'BASTION_TOKEN_MISSING' });

    expect((await upstreamCalls()).length).toBe(before);
    const records = (await auditRecords()).slice(recordsBefore);
    expect(records).toContainEqual(
      expect.objectContaining({ transport: 'stdio', tool: 'rec__echo', outcome: 'denied', denial: expect.objectContaining({ code: 'BASTION_TOKEN_MISSING' }) }),
    );
  });

  it('a token for another audience is refused (the config sets server.resource)', async () => {
    const client = await connect(await mint('agent:stdio-elsewhere', [{ tool: 'rec__echo' }], 'http://127.0.0.1:8080/mcp'));
    const before = (await upstreamCalls()).length;
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'wrong aud' } })) as CallToolResult;
    expect(denialOf(result)).toMatchObject({ stage: 'authenticate', code: 'BASTION_TOKEN_AUDIENCE_INVALID' });
    expect((await upstreamCalls()).length).toBe(before);
  });

  it('stdout carries only JSON-RPC (logs go to stderr), and closing stdin ends the process cleanly', async () => {
    const token = await mint('agent:stdio-raw', [{ tool: 'rec__echo' }]);
    const raw = spawnCollecting(process.execPath, [CLI, 'stdio', '--config', verboseConfigFile], {
      cwd: dir,
      env: { ...getDefaultEnvironment(), BASTION_TOKEN: token },
    });
    const { child, exited } = raw;
    const responses = (count: number) => raw.waitFor((out) => out.split('\n').filter(Boolean).length >= count, 60_000);
    const send = (message: unknown) => child.stdin.write(`${JSON.stringify(message)}\n`);

    send({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });
    await responses(1);
    send({ jsonrpc: '2.0', method: 'notifications/initialized' });
    send({ jsonrpc: '2.0', id: 2, method: 'tools/list', params: {} });
    send({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'rec__echo', arguments: { text: 'raw stdio' } } });
    send({ jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'rec__transfer', arguments: { amount: 1, to: 'x' } } });
    await responses(4);
    child.stdin.end();
    const exit = await Promise.race([exited, new Promise<'lingering'>((r) => setTimeout(() => r('lingering'), 15_000))]);
    if (exit === 'lingering') child.kill('SIGKILL');

    const stdout = raw.stdout();
    const stderr = raw.stderr();
    const lines = stdout.split('\n').filter(Boolean);
    expect(lines.length).toBeGreaterThanOrEqual(4);
    for (const line of lines) {
      const message = JSON.parse(line) as { jsonrpc?: string };
      expect(message.jsonrpc).toBe('2.0');
    }
    // Raw JSON-RPC, inspected field by field.
    const byId = new Map<unknown, any>(lines.map((line) => JSON.parse(line) as { id?: number }).map((m) => [m.id, m]));
    expect(byId.get(2)?.result.tools.map((tool: { name: string }) => tool.name)).toEqual(['rec__echo']);
    expect(byId.get(3)?.result.content[0].text).toBe('echo: raw stdio');
    expect(byId.get(4)?.result._meta['bastion/denial'].code).toBe('BASTION_POLICY_DENIED');

    // The operational log went to stderr, as pino JSON, and never carried the token.
    expect(stderr).toContain('connector ready');
    expect(stderr.split('\n').filter(Boolean).every((line) => line.startsWith('{'))).toBe(true);
    expect(stderr).not.toContain(token);

    // The MCP stdio shutdown: the client closes stdin and the server exits on its own.
    expect(exit).toEqual({ code: 0, signal: null });
  });

  it('a client pinned to 2026-07-28 lists only granted tools, calls them, and each call is audited with its revision', async () => {
    const client = await connect(await mint('agent:stdio-modern', [{ tool: 'rec__echo' }]), 'modern');
    expect(client.getProtocolEra()).toBe('modern');
    expect(client.getNegotiatedProtocolVersion()).toBe('2026-07-28');
    expect(client.getDiscoverResult()?.capabilities.tools).toBeDefined();
    expect((await client.listTools()).tools.map((tool) => tool.name)).toEqual(['rec__echo']);

    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'stdio 2026' } })) as CallToolResult;
    expect(result.content).toEqual([{ type: 'text', text: 'echo: stdio 2026' }]);
    expect((await upstreamCalls()).filter((c) => c.args.text === 'stdio 2026')).toHaveLength(1);
    const denied = (await client.callTool({ name: 'rec__transfer', arguments: { amount: 1, to: 'x' } })) as CallToolResult;
    expect(denialOf(denied)).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });

    const records = (await auditRecords()).filter((r) => r.principal?.sub === 'agent:stdio-modern');
    expect(records).toEqual([
      expect.objectContaining({ transport: 'stdio', protocol: '2026-07-28', tool: 'rec__echo', outcome: 'ok' }),
      expect.objectContaining({ transport: 'stdio', protocol: '2026-07-28', tool: 'rec__transfer', outcome: 'denied' }),
    ]);
  });

  it('a 2026-07-28 connection without a token discovers no tools and its calls are refused at authenticate', async () => {
    const client = await connect(undefined, 'modern');
    expect(client.getDiscoverResult()?.capabilities.tools).toBeUndefined();
    const before = (await upstreamCalls()).length;
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'anonymous 2026' } })) as CallToolResult;
    expect(denialOf(result)).toMatchObject({ stage: 'authenticate', code: 'BASTION_TOKEN_MISSING' });
    expect((await upstreamCalls()).length).toBe(before);
    expect((await auditRecords()).at(-1)).toMatchObject({ transport: 'stdio', protocol: '2026-07-28', outcome: 'denied', denial: { code: 'BASTION_TOKEN_MISSING' } });
  });

  it('a 2025-11-25 connection is audited with its negotiated revision', async () => {
    const client = await connect(await mint('agent:stdio-legacy', [{ tool: 'rec__echo' }]));
    expect(client.getProtocolEra()).toBe('legacy');
    await client.callTool({ name: 'rec__echo', arguments: { text: 'stdio 2025' } });
    const record = (await auditRecords()).find((r) => r.principal?.sub === 'agent:stdio-legacy');
    expect(record).toMatchObject({ transport: 'stdio', protocol: '2025-11-25', outcome: 'ok' });
  });

  it('brokers started one after another continue one audit chain', async () => {
    const report = await verifyAuditFile(path.join(stateDir, 'audit.jsonl'));
    expect(report).toMatchObject({ ok: true });
    expect(report.records).toBeGreaterThanOrEqual(5);
  });
});
