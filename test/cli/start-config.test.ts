/**
 * `bastion start --config FILE` as a new user meets it, run from another
 * folder: the demo token names only demo tools that config has (none: no
 * token), and the printed mint command, run as printed from that folder,
 * gives a token the running broker accepts (it carries --config, so the
 * token is signed by that config's dev key, not a new one under ./.bastion).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { Client } from '@modelcontextprotocol/client';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { RECORDING_UPSTREAM, ROOT } from '../helpers/broker.ts';
import { spawnCollecting, type Spawned } from '../helpers/spawn.ts';

const run = promisify(execFile);
const CLI = path.join(ROOT, 'broker/cli.ts');
const DEMO_UPSTREAM = path.join(ROOT, 'connectors/demo-server.ts');

let dir: string;
/** Where the user runs the commands: not the config's folder. */
let elsewhere: string;
const running: Spawned[] = [];
const clients: Client[] = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-start-config-'));
  elsewhere = await mkdtemp(path.join(tmpdir(), 'bastion-start-elsewhere-'));
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  for (const started of running) {
    if (started.child.exitCode === null && started.child.signalCode === null) started.child.kill('SIGTERM');
    await started.exited;
  }
  await rm(dir, { recursive: true, force: true });
  await rm(elsewhere, { recursive: true, force: true });
});

/** Writes a config with these connectors (own state folder) and starts the CLI on it from `elsewhere`. */
async function startWith(name: string, connectors: unknown[]): Promise<{ configFile: string; url: string; stdout: string }> {
  const configFile = path.join(dir, `${name}.yaml`);
  await writeFile(configFile, YAML.stringify({ state_dir: `state-${name}`, log_level: 'warn', connectors }));
  const started = spawnCollecting(process.execPath, [CLI, 'start', '--config', configFile, '--port', '0'], { cwd: elsewhere });
  running.push(started);
  if (!(await started.waitFor((out) => /^Mint (another|one): .*$/m.test(out), 60_000))) {
    throw new Error(`bastion start did not come up:\nstdout:\n${started.stdout()}\nstderr:\n${started.stderr()}`);
  }
  const url = /Bastion is listening at (\S+)/.exec(started.stdout())![1]!;
  return { configFile, url, stdout: started.stdout() };
}

/** Runs the printed `npm run bastion -- token mint …` as the CLI, from `elsewhere`. */
async function runMintHint(stdout: string): Promise<string> {
  const hint = /^Mint (?:another|one): npm run bastion -- (token mint .*)$/m.exec(stdout)![1]!;
  const { stdout: token } = await run(process.execPath, [CLI, ...hint.split(' ').map((word) => word.replace(/^'(.*)'$/, '$1'))], { cwd: elsewhere });
  return token.trim();
}

async function connect(url: string, token: string): Promise<Client> {
  const client = new Client({ name: 'bastion-start-config-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  clients.push(client);
  return client;
}

describe('bastion start --config', () => {
  it('a config without the demo tools: no demo token, and the mint hint (with --config) gives a token the broker accepts', async () => {
    const { configFile, url, stdout } = await startWith('own', [{ name: 'rec', transport: 'stdio', command: process.execPath, args: [RECORDING_UPSTREAM] }]);
    expect(stdout).not.toContain('Demo token');
    expect(stdout).not.toMatch(/demo__|text-utils__/);
    expect(stdout).toContain('No demo token: this config has none of the demo tools');
    // The example grant is a low-risk tool of this config (rec__echo is the fixture's read-only tool).
    expect(stdout).toContain(`Mint one: npm run bastion -- token mint --config ${configFile} --sub agent:me --cap rec__echo --aud ${url}`);

    const client = await connect(url, await runMintHint(stdout));
    expect((await client.listTools()).tools.map((tool) => tool.name)).toEqual(['rec__echo']);
    const result = (await client.callTool({ name: 'rec__echo', arguments: { text: 'minted as printed' } })) as CallToolResult;
    expect(result.content).toEqual([{ type: 'text', text: 'echo: minted as printed' }]);
  });

  it('a config with the demo connector but not the demo plugin: the demo token names only the demo connector tools; the hint works', async () => {
    const { configFile, url, stdout } = await startWith('demo', [{ name: 'demo', transport: 'stdio', command: process.execPath, args: [DEMO_UPSTREAM] }]);
    const token = /^(eyJ[\w-]+\.[\w-]+\.[\w-]+)$/m.exec(stdout)?.[1];
    expect(token).toBeDefined();
    expect(stdout).toContain('Demo token (agent:demo, valid 15 min; read files under /srv/, delete under /srv/tmp/ with approval):');
    expect((decodeJwt(token!).cap as { tool: string }[]).map((cap) => cap.tool)).toEqual(['demo__read_file', 'demo__delete_file']);
    expect(stdout).not.toContain('text-utils');
    expect(stdout).toContain(`Mint another: npm run bastion -- token mint --config ${configFile} --sub agent:me --cap demo__read_file --aud ${url}`);
    expect(stdout).toContain(`Another approver: npm run bastion -- approver token --config ${configFile} --sub approver:you`);

    const demo = await connect(url, token!);
    expect((await demo.listTools()).tools.map((tool) => tool.name).sort()).toEqual(['demo__delete_file', 'demo__read_file']);
    const minted = await connect(url, await runMintHint(stdout));
    const read = (await minted.callTool({ name: 'demo__read_file', arguments: { path: '/srv/app/README.md' } })) as CallToolResult;
    expect(read.isError).toBeFalsy();
  });
});
