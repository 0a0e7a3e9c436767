/**
 * A Bastion replica as an operator runs it: the real CLI (`bastion start
 * --config FILE`) in its own process, with its own state folder and port,
 * sharing Redis, the resource identifier and the trusted issuer with its
 * siblings (or, without a Redis URL, one broker on the embedded store).
 * Nothing here is a double. Starting it again with the same name and folder
 * is a restart.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ROOT, RECORDING_UPSTREAM } from '../helpers/broker.ts';
import { spawnCollecting } from '../helpers/spawn.ts';

const CLI = path.join(ROOT, 'broker/cli.ts');

export interface ReplicaOptions {
  name: string;
  dir: string;
  /** Absent: the embedded store in the replica's state folder. */
  redisUrl?: string;
  resource: string;
  issuer: string;
  jwksFile: string;
  /** Shared by every replica's upstream: one line per call the upstream actually ran. */
  callLog: string;
  commandTimeout?: string;
  /** Approval progress interval; 10 minutes by default, so only pub/sub wakes a parked call. */
  progressEvery?: string;
  /** Per-tool settings of the `rec` connector, e.g. { slow: { risk: 'high' } }. */
  tools?: Record<string, { risk: 'low' | 'medium' | 'high' }>;
  /** Config members that replace the defaults above (e.g. other connectors, policy data). */
  extra?: Record<string, unknown>;
}

export interface Replica {
  name: string;
  /** The MCP endpoint (http://127.0.0.1:<port>/mcp). */
  url: string;
  origin: string;
  stateDir: string;
  auditFile: string;
  stderr(): string;
  stop(): Promise<void>;
  /** SIGKILL: no shutdown, nothing cleaned up, as a crash or an OOM kill leaves it. */
  kill(): Promise<void>;
}

export async function startReplica(options: ReplicaOptions): Promise<Replica> {
  const stateDir = path.join(options.dir, options.name);
  await mkdir(stateDir, { recursive: true });
  const config = {
    server: { port: 0, resource: options.resource },
    auth: { issuers: [{ issuer: options.issuer, jwks_file: options.jwksFile }] },
    state: options.redisUrl ? { backend: 'redis', url: options.redisUrl, command_timeout: options.commandTimeout ?? '500ms' } : { backend: 'embedded' },
    replica_id: options.name,
    state_dir: stateDir,
    log_level: 'warn',
    // No progress notifications while a call waits: the desk then never re-reads a parked
    // record on a timer, so a call released on another replica was woken by pub/sub.
    // 2026-07-28 agents come back for a parked call after this hold (approvals/pickup.ts): short here, so tests retry often.
    approvals: { progress_every: options.progressEvery ?? '10m', pickup_hold: '500ms' },
    connectors: [
      {
        name: 'rec',
        transport: 'stdio',
        command: process.execPath,
        args: [RECORDING_UPSTREAM],
        env: { CALL_LOG: options.callLog },
        timeout: '20s',
        ...(options.tools ? { tools: options.tools } : {}),
      },
    ],
  };
  Object.assign(config, options.extra);
  const configFile = path.join(stateDir, 'bastion.yaml');
  // JSON is YAML.
  await writeFile(configFile, JSON.stringify(config, null, 2));

  const started = spawnCollecting(process.execPath, [CLI, 'start', '--config', configFile], { cwd: stateDir });
  const { child, stdout, stderr, exited } = started;
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  await started.waitFor((out) => /Bastion is listening at \S+/.test(out), 120_000);
  const url = /Bastion is listening at (\S+)/.exec(stdout())?.[1];
  if (!url) {
    child.kill('SIGKILL');
    throw new Error(`replica ${options.name} did not come up:\nstdout:\n${stdout()}\nstderr:\n${stderr()}`);
  }
  return {
    name: options.name,
    url,
    origin: new URL(url).origin,
    stateDir,
    auditFile: path.join(stateDir, 'audit.jsonl'),
    stderr,
    async stop() {
      process.off('exit', killOnExit);
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
    async kill() {
      process.off('exit', killOnExit);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

export async function readJsonLines<T>(file: string): Promise<T[]> {
  try {
    return (await readFile(file, 'utf8')).split('\n').filter(Boolean).map((line) => JSON.parse(line) as T);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}
