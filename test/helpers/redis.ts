/**
 * A real redis-server for a test: started on a free loopback port with no
 * persistence, killed afterwards. Tests can kill it, hang it (SIGSTOP) and
 * start it again on the same port to prove Bastion fails closed and
 * recovers. Never a system service: each suite owns its own process.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { freePort, spawnCollecting } from './spawn.ts';

export interface RedisServer {
  port: number;
  url: string;
  /** Kills the server (SIGKILL: no goodbye to clients) and waits for it to exit. */
  kill(): Promise<void>;
  /** Starts a fresh, empty server on the same port. */
  restart(): Promise<void>;
  /** SIGSTOP: connections stay open but nothing answers. */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

const BINARY = process.env.REDIS_SERVER ?? 'redis-server';

/** Fails with a clear message when redis-server is not installed (CI installs it in .ci/toolchain). */
export function requireRedisServer(): void {
  const probe = spawnSync(BINARY, ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    throw new Error(`${BINARY} is not installed (apt-get install redis-server); the Redis state tests need a real server`);
  }
}

/** Spawns redis-server on `port` and waits (bounded) for "Ready to accept connections". */
async function launch(port: number, extra: string[]): Promise<ChildProcess> {
  const started = spawnCollecting(BINARY, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--loglevel', 'notice', ...extra]);
  const { child } = started;
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.once('exit', () => process.off('exit', killOnExit));
  const ready = (out: string, err: string) => `${out}${err}`.includes('Ready to accept connections');
  if (!(await started.waitFor(ready, 30_000))) {
    child.kill('SIGKILL');
    throw new Error(`redis-server did not start on port ${port}:\n${started.stdout()}${started.stderr()}`);
  }
  return child;
}

async function terminate(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGCONT');
  child.kill(signal);
  await exited;
}

/** `extra`: more redis-server options, e.g. ['--maxmemory', '64mb']. */
export async function startRedis(extra: string[] = []): Promise<RedisServer> {
  requireRedisServer();
  // A port can be taken between the probe and the bind; try a few.
  let port = 0;
  let child: ChildProcess | undefined;
  for (let attempt = 0; attempt < 5 && !child; attempt++) {
    port = await freePort();
    child = await launch(port, extra).catch((error: Error) => {
      if (attempt === 4) throw error;
      return undefined;
    });
  }
  let current = child!;
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async kill() {
      await terminate(current, 'SIGKILL');
    },
    async restart() {
      await terminate(current, 'SIGKILL');
      current = await launch(port, extra);
    },
    pause() {
      current.kill('SIGSTOP');
    },
    resume() {
      current.kill('SIGCONT');
    },
    async stop() {
      await terminate(current, 'SIGKILL');
    },
  };
}

/** Polls until `check` holds (bounded: a test must never hang). */
export async function until(check: () => Promise<boolean> | boolean, what: string, attempts = 200, everyMs = 50): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
  throw new Error(`gave up waiting for ${what}`);
}
