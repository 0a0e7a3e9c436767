/**
 * The sandbox process: started by SandboxPool, never by anything else. It
 * holds isolates for the plugins the broker loads into it and talks to the
 * broker over frames on fd 3 (see frames.ts, protocol.ts). It has no
 * capabilities of its own worth stealing: it is started with an empty
 * environment and Node's permission model (no file writes, no child
 * processes, no workers; reads limited to Bastion's code and dependencies),
 * and every host capability is performed by the broker, not here.
 *
 * A catastrophic V8 error in an isolate leaves this process in an undefined
 * state: it reports which call caused it and kills itself; the pool starts a
 * replacement.
 */
import net from 'node:net';
import { encodeFrame, FrameReader } from '../frames.ts';
import type { LoadMessage, ToChild } from '../protocol.ts';
import { CallFailure, PluginRuntime, type CallRun } from './runtime.ts';

const MAX_INBOUND_FRAME = 64 * 1024 * 1024;
const testHooks = process.argv.includes('--test-hooks');

const channel = new net.Socket({ fd: 3, readable: true, writable: true });
const runtimes = new Map<string, PluginRuntime>();
const runs = new Map<number, CallRun>();
const queued = new Map<number, PluginRuntime>();

/** The prototypes the broker's health check watches for pollution. */
const watched = [Object.prototype, Array.prototype, Function.prototype, String.prototype];
const pristine = watched.map((proto) => Reflect.ownKeys(proto).length);

/** Set once a fatal error was reported: nothing this process says after that can be trusted. */
let dying = false;

function post(message: unknown): void {
  if (!dying && !channel.destroyed) channel.write(encodeFrame(message));
}

function die(): never {
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
}

/** Reports which call broke this process, then ends it. */
function fatal(call: number | undefined, message: string): void {
  if (dying) return;
  dying = true;
  const frame = encodeFrame({ t: 'fatal', ...(call !== undefined ? { call } : {}), message: message.slice(0, 2000) });
  // V8 has lost control of that isolate: report, then go, whatever else is running here.
  channel.write(frame, () => die());
  setTimeout(die, 200).unref();
}

function onCatastrophic(isolate: { current: CallRun | undefined }, message: string): void {
  fatal(isolate.current?.request.call, message);
}

async function load(message: LoadMessage): Promise<void> {
  try {
    runtimes.get(message.plugin)?.close();
    const runtime = new PluginRuntime(message, testHooks, onCatastrophic);
    runtimes.set(message.plugin, runtime);
    await runtime.verify(message.tools.map((t) => t.name));
    post({ t: 'loaded', plugin: message.plugin, ok: true });
  } catch (error) {
    runtimes.get(message.plugin)?.close();
    runtimes.delete(message.plugin);
    post({ t: 'loaded', plugin: message.plugin, ok: false, error: (error as Error).message.slice(0, 4000) });
  }
}

function failed(call: number, failure: CallFailure): void {
  post({ t: 'failed', call, code: failure.code, message: failure.message });
}

async function call(message: Extract<ToChild, { t: 'call' }>): Promise<void> {
  const runtime = runtimes.get(message.plugin);
  if (!runtime) return failed(message.call, new CallFailure('SANDBOX_UNAVAILABLE', 'plugin not loaded in this sandbox process'));
  try {
    runtime.validateArguments(message.tool, message.args);
  } catch (error) {
    return failed(message.call, error as CallFailure);
  }
  queued.set(message.call, runtime);
  let isolate;
  try {
    isolate = await runtime.acquire(message.call);
  } catch (error) {
    queued.delete(message.call);
    return failed(message.call, error instanceof CallFailure ? error : new CallFailure('SANDBOX_CRASHED', (error as Error).message));
  }
  queued.delete(message.call);
  const run = runtime.newRun({ call: message.call, tool: message.tool, args: message.args }, isolate, {
    onCapability: (req, payload) => post({ t: 'cap', call: message.call, req, payload }),
    // Stands in for a catastrophic V8 error (tests only): the process reports the call and dies.
    onTestAbort: () => {
      if (testHooks) fatal(message.call, 'simulated abort (test hook)');
    },
  });
  runs.set(message.call, run);
  try {
    const json = await run.start();
    post({ t: 'result', call: message.call, json });
  } catch (error) {
    failed(message.call, error instanceof CallFailure ? error : new CallFailure('SANDBOX_CRASHED', (error as Error).message));
  } finally {
    runs.delete(message.call);
  }
}

function health(id: number): void {
  let isolates = 0;
  for (const runtime of runtimes.values()) isolates += runtime.isolateCount;
  const prototypesIntact = watched.every((proto, i) => Reflect.ownKeys(proto).length === pristine[i]) && ({} as Record<string, unknown>).polluted === undefined;
  post({ t: 'health', id, pid: process.pid, isolates, prototypesIntact, heapUsedBytes: process.memoryUsage().heapUsed });
}

function dispatch(raw: unknown): void {
  const message = raw as ToChild;
  switch (message.t) {
    case 'load':
      void load(message);
      return;
    case 'unload':
      runtimes.get(message.plugin)?.close();
      runtimes.delete(message.plugin);
      return;
    case 'call':
      void call(message);
      return;
    case 'capResult':
      runs.get(message.call)?.deliver(message.req, message.ok, message.payload);
      return;
    case 'cancel': {
      const run = runs.get(message.call);
      // The answer to a cancelled call is its acknowledgement. A run answers only once its isolate
      // has really stopped (the entry in progress returned): an isolate that cannot be stopped
      // leaves the broker without an answer, and the broker kills this process. A call that
      // already finished has been answered.
      if (run) run.cancel(message.code);
      else queued.get(message.call)?.dequeue(message.call);
      return;
    }
    case 'health':
      health(message.id);
      return;
  }
}

const reader = new FrameReader(MAX_INBOUND_FRAME, dispatch, () => process.exit(2));
channel.on('data', (chunk: Buffer) => reader.push(chunk));
// The broker is gone (or closed the channel to stop us): nothing left to serve.
channel.on('end', () => process.exit(0));
channel.on('error', () => process.exit(0));
post({ t: 'ready', pid: process.pid });
