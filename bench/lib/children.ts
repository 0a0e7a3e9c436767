/**
 * Child processes for the benchmark: the upstream, the bare proxy and
 * Bastion each run in their own process, as they would in production, so
 * none of them shares an event loop with the load generator.
 *
 * @example
 *   const upstream = await spawnListening('upstream', ['bench/upstream.ts'], /^listening (\S+)$/m);
 *   console.log(upstream.url); await upstream.stop();
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';

export interface Child {
  name: string;
  url: string;
  pid: number;
  process: ChildProcess;
  /** Resident set size now, from /proc (Linux), in bytes. */
  rss(): Promise<number | undefined>;
  /**
   * V8 heap still in use after a full garbage collection, in bytes: the live
   * set, which a leak grows, unlike the heap in use at a random moment (that
   * swings by half with where V8 is in its GC cycle). Only for children started
   * with `inspectable`; the first call opens the inspector (SIGUSR1), so call
   * it only once the measurements it could disturb are done.
   */
  liveHeap(): Promise<number | undefined>;
  stop(): Promise<void>;
}

/** Every child still running: killed if the benchmark itself exits early (a crash, Ctrl-C). */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));

export async function rssOf(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined;
  }
}

/**
 * Starts `node <args>` in `cwd` and resolves once its stdout matches `ready`
 * (the first capture group is the URL). stderr goes to `logFile`.
 */
export function spawnListening(
  name: string,
  args: string[],
  ready: RegExp,
  options: { cwd: string; logFile: string; nodeOptions?: string[]; timeoutMs?: number; inspectable?: boolean },
): Promise<Child> {
  // The inspector stays closed until liveHeap() asks for it; port 0 picks a free one.
  const inspect = options.inspectable ? ['--inspect-port=127.0.0.1:0'] : [];
  const child = spawn(process.execPath, [...inspect, ...(options.nodeOptions ?? []), ...args], {
    cwd: options.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NODE_ENV: 'production' },
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  const log = createWriteStream(options.logFile, { flags: 'a' });
  child.stderr!.pipe(log);
  let stdout = '';
  return new Promise<Child>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`${name} did not start within ${options.timeoutMs ?? 30_000} ms; see ${options.logFile}`)), options.timeoutMs ?? 30_000);
    function fail(error: Error): void {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(error);
    }
    child.once('exit', (code) => fail(new Error(`${name} exited with ${code} before it was ready; see ${options.logFile}`)));
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString('utf8');
      const match = ready.exec(stdout);
      if (!match?.[1]) return;
      clearTimeout(timer);
      child.removeAllListeners('exit');
      child.stdout!.removeAllListeners('data');
      child.stdout!.resume();
      resolve({
        name,
        url: match[1],
        pid: child.pid!,
        process: child,
        rss: () => rssOf(child.pid!),
        liveHeap: options.inspectable ? liveHeapOf(child) : () => Promise.resolve(undefined),
        stop: () =>
          new Promise<void>((done) => {
            if (child.exitCode !== null || child.signalCode !== null) return done();
            const force = setTimeout(() => child.kill('SIGKILL'), 10_000);
            child.once('exit', () => {
              clearTimeout(force);
              log.end();
              done();
            });
            child.kill('SIGTERM');
          }),
      });
    });
  });
}

/**
 * liveHeap() for one child: opens its inspector on first use (SIGUSR1 makes
 * Node print the WebSocket address on stderr), then asks V8 for a full
 * collection and the heap in use after it. undefined when the inspector
 * cannot be reached in time.
 */
function liveHeapOf(child: ChildProcess): () => Promise<number | undefined> {
  let session: Promise<InspectorSession | undefined> | undefined;
  return async () => {
    session ??= openInspector(child);
    const inspector = await session;
    if (!inspector) return undefined;
    await inspector.send('HeapProfiler.collectGarbage');
    const usage = (await inspector.send('Runtime.getHeapUsage')) as { usedSize?: number } | undefined;
    return usage?.usedSize;
  };
}

interface InspectorSession {
  send(method: string): Promise<unknown>;
}

async function openInspector(child: ChildProcess, timeoutMs = 10_000): Promise<InspectorSession | undefined> {
  const address = await new Promise<string | undefined>((resolve) => {
    let text = '';
    const timer = setTimeout(() => done(undefined), timeoutMs);
    const onData = (chunk: Buffer) => {
      text += chunk.toString('utf8');
      const url = /Debugger listening on (ws:\/\/\S+)/.exec(text)?.[1];
      if (url) done(url);
    };
    function done(url: string | undefined): void {
      clearTimeout(timer);
      child.stderr!.off('data', onData);
      resolve(url);
    }
    child.stderr!.on('data', onData);
    child.kill('SIGUSR1');
  });
  if (!address) return undefined;
  const socket = new WebSocket(address);
  const replies = new Map<number, (result: unknown) => void>();
  socket.addEventListener('message', (event) => {
    let message: { id?: number; result?: unknown };
    try {
      message = JSON.parse(String(event.data)) as typeof message;
    } catch {
      return; // not a protocol reply; the send it may have been for times out
    }
    if (message.id !== undefined) replies.get(message.id)?.(message.result);
  });
  const opened = await new Promise<boolean>((resolve) => {
    socket.addEventListener('open', () => resolve(true), { once: true });
    socket.addEventListener('error', () => resolve(false), { once: true });
  });
  if (!opened) return undefined;
  child.once('exit', () => socket.close());
  let next = 0;
  return {
    send: (method) =>
      new Promise((resolve) => {
        const id = ++next;
        const timer = setTimeout(() => resolve(undefined), timeoutMs);
        replies.set(id, (result) => {
          clearTimeout(timer);
          replies.delete(id);
          resolve(result);
        });
        socket.send(JSON.stringify({ id, method }));
      }),
  };
}

/**
 * CPU time (user + system) a process has used so far, from /proc (Linux), in
 * seconds: all its threads, or with `mainThread` only the thread that runs
 * JavaScript (the rest are V8's GC and compiler helpers and libuv's pool).
 */
export async function cpuSecondsOf(pid: number, mainThread = false): Promise<number | undefined> {
  try {
    const stat = await readFile(mainThread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return ticks / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

/** USER_HZ: 100 on every Linux Node supports. */
const CLOCK_TICKS = 100;
