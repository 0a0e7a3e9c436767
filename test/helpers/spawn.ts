/**
 * Child processes for tests: spawned with piped stdio, their output collected
 * as it comes, with a bounded wait for a sign of readiness.
 *
 * @example
 *   const server = spawnCollecting(process.execPath, [CLI, 'start', '--port', '0'], { cwd });
 *   if (!(await server.waitFor((out) => /listening at/.test(out), 30_000))) throw new Error(server.stderr());
 */
import { spawn, type ChildProcessWithoutNullStreams, type SpawnOptionsWithoutStdio } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Spawned {
  child: ChildProcessWithoutNullStreams;
  stdout(): string;
  stderr(): string;
  /** Settles once the process has exited. */
  exited: Promise<ExitStatus>;
  /** Polls until `ready(stdout, stderr)` holds (true), or the process exits or `timeoutMs` passes (false). */
  waitFor(ready: (stdout: string, stderr: string) => boolean, timeoutMs: number): Promise<boolean>;
}

export function spawnCollecting(command: string, args: string[], options: SpawnOptionsWithoutStdio = {}): Spawned {
  const child = spawn(command, args, { ...options, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<ExitStatus>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    async waitFor(ready, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (!ready(stdout, stderr)) {
        if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) return false;
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      return true;
    },
  };
}

/** A loopback port nobody listens on now, for a server the test starts right after. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
