/**
 * `bastion stdio` leaves no process behind: the real SDK client spawns it
 * (StdioClientTransport) with a stdio upstream connector and the demo plugin
 * (a sandbox process), uses both so they run, then ends it the three ways a
 * client or an operator does: closing its stdin, SIGTERM, SIGINT. Every
 * descendant recorded from /proc while it ran (by walking parent pids) must
 * be gone afterwards. The call in flight each time (so the upstream has work
 * pending and would not exit on its own) is audited as cancelled before the
 * broker exits.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { Client } from '@modelcontextprotocol/client';
import { getDefaultEnvironment, StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { ensureDevKey, type DevKey } from '../../broker/auth/keys.ts';
import { mintToken } from '../../broker/auth/mint.ts';
import type { AuditRecord } from '../../broker/audit/chain.ts';
import { DEMO_PLUGIN_DIR, DEMO_PLUGIN_HASH } from '../../broker/config.ts';
import { eventually } from '../helpers/approver.ts';
import { RECORDING_UPSTREAM, ROOT } from '../helpers/broker.ts';

const CLI = path.join(ROOT, 'broker/cli.ts');
const RESOURCE = 'http://bastion.stdio-cleanup.test/mcp';

let dir: string;
let configFile: string;
let callLog: string;
let devKey: DevKey;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-stdio-cleanup-'));
  callLog = path.join(dir, 'calls.jsonl');
  configFile = path.join(dir, 'bastion.yaml');
  await writeFile(
    configFile,
    YAML.stringify({
      state_dir: 'state',
      log_level: 'silent',
      server: { resource: RESOURCE },
      connectors: [{ name: 'rec', transport: 'stdio', command: process.execPath, args: [RECORDING_UPSTREAM], env: { CALL_LOG: callLog } }],
      plugins: [{ dir: DEMO_PLUGIN_DIR, hash: DEMO_PLUGIN_HASH }],
    }),
  );
  devKey = await ensureDevKey(path.join(dir, 'state'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A process as /proc shows it: its parent and its start time (so a reused pid is not mistaken for it). */
function stat(pid: number): { ppid: number; started: string; state: string } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces: fields count from after its closing one.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0]!, ppid: Number(fields[1]), started: fields[19]! };
  } catch {
    return undefined;
  }
}

/** Every live descendant of `root`, with its start time. */
function descendants(root: number): Map<number, string> {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    const info = stat(pid);
    if (info) children.set(info.ppid, [...(children.get(info.ppid) ?? []), pid]);
  }
  const found = new Map<number, string>();
  const queue = [...(children.get(root) ?? [])];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    const info = stat(pid);
    if (!info || found.has(pid)) continue;
    found.set(pid, info.started);
    queue.push(...(children.get(pid) ?? []));
  }
  return found;
}

/** Those of `recorded` still running (a zombie has exited; a reused pid is another process). */
function survivors(recorded: Map<number, string>): number[] {
  return [...recorded].filter(([pid, started]) => {
    const info = stat(pid);
    return info !== undefined && info.started === started && info.state !== 'Z';
  }).map(([pid]) => pid);
}

async function gone(recorded: Map<number, string>): Promise<void> {
  await eventually(async () => (survivors(recorded).length === 0 ? true : undefined), `descendants ${survivors(recorded).join(', ')} to exit`, 600);
}

/** bastion stdio, started by the SDK client, with its upstream and sandbox running; and its descendants. */
async function upstreamSlowCalls(): Promise<number> {
  return (await readFile(callLog, 'utf8').catch(() => '')).split('\n').filter((line) => line.includes('"tool":"slow"')).length;
}

async function running(sub: string): Promise<{ client: Client; pid: number; recorded: Map<number, string> }> {
  const token = await mintToken({ key: devKey.privateJwk, issuer: devKey.issuer, audience: RESOURCE, sub, cap: [{ tool: 'rec__*' }, { tool: 'text-utils__*' }], ttlMs: 300_000 });
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [CLI, 'stdio', '--config', configFile],
    env: { ...getDefaultEnvironment(), BASTION_TOKEN: token },
    cwd: dir,
    stderr: 'pipe',
  });
  const client = new Client({ name: 'bastion-stdio-cleanup-test', version: '1.0.0' });
  await client.connect(transport);
  const slowBefore = await upstreamSlowCalls();
  const echo = (await client.callTool({ name: 'rec__echo', arguments: { text: sub } })) as CallToolResult;
  expect(echo.content).toEqual([{ type: 'text', text: `echo: ${sub}` }]);
  const words = (await client.callTool({ name: 'text-utils__word_count', arguments: { text: 'a b' } })) as CallToolResult;
  expect(words.structuredContent).toMatchObject({ words: 2 });
  // A call in flight: the upstream then has work pending and does not exit merely because its stdin closed.
  const slow = client.callTool({ name: 'rec__slow', arguments: { ms: 600_000 } }, { timeout: 600_000 });
  slow.catch(() => undefined);
  await eventually(async () => ((await upstreamSlowCalls()) > slowBefore ? true : undefined), 'the slow call at the upstream');
  const pid = transport.pid!;
  const recorded = descendants(pid);
  // The upstream and the sandbox process at least (a real upstream may run through a shell or npx).
  expect(recorded.size).toBeGreaterThanOrEqual(2);
  return { client, pid, recorded };
}

async function auditRecords(): Promise<AuditRecord[]> {
  try {
    return (await readFile(path.join(dir, 'state', 'audit.jsonl'), 'utf8')).split('\n').filter(Boolean).map((line) => JSON.parse(line));
  } catch {
    return [];
  }
}

const slowRecord = async (sub: string) => (await auditRecords()).find((r) => r.event === 'tools/call' && r.principal?.sub === sub && r.tool === 'rec__slow');

describe('bastion stdio stops its upstream and sandbox processes', () => {
  it('when the client closes it (stdin ends); the call in flight is audited as cancelled', async () => {
    const { client, pid, recorded } = await running('agent:closer');
    await client.close();
    await gone(new Map([...recorded, [pid, stat(pid)?.started ?? '']]));
    expect(await slowRecord('agent:closer')).toMatchObject({ denial: { stage: 'execute', code: 'BASTION_CANCELLED' } });
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`on ${signal}`, async () => {
      const { client, pid, recorded } = await running(`agent:${signal.toLowerCase()}`);
      process.kill(pid, signal);
      await gone(new Map([...recorded, [pid, stat(pid)?.started ?? '']]));
      await client.close();
      expect(await slowRecord(`agent:${signal.toLowerCase()}`)).toMatchObject({ denial: { stage: 'execute', code: 'BASTION_CANCELLED' } });
    });
  }
});
