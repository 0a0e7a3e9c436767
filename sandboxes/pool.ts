/**
 * SandboxPool: the supervised sandbox processes that hold plugin isolates,
 * seen from the broker. Isolates never live in the broker's own process:
 * isolated-vm's memory limit is a guideline and a catastrophic V8 error
 * aborts (or wedges) its whole process, so a hostile plugin may take down a
 * sandbox process but never the broker.
 *
 * - A fixed number of slots (default 2), each running one process. Each
 *   plugin is assigned to one slot (the least loaded) and keeps it, so its
 *   warm isolates live in one place; a slot's replacement process reloads
 *   its plugins before serving calls.
 * - Every call has a wall-clock deadline kept here, in the broker. When it
 *   passes (or the caller aborts) the call fails at once; the sandbox
 *   process is told to dispose of the isolate, and if it does not confirm
 *   within `cancelGraceMs` it is killed and replaced.
 * - A process that dies fails the call that killed it (when the process
 *   could say which, SANDBOX_MEMORY or SANDBOX_CRASHED). Other calls that
 *   were running there and had used no host capability (so re-running them
 *   cannot repeat a side effect) are retried once on the replacement;
 *   the rest fail with SANDBOX_CRASHED.
 * - Capability requests from a process are answered only for calls that
 *   process is running, through the call's own handler; everything a
 *   process sends is size-bounded and schema-checked, and a process that
 *   breaks the protocol is killed.
 *
 * @example
 *   const pool = new SandboxPool({ log });
 *   await pool.start();
 *   const host = new PluginHost({ dir, hash, pool, log });   // see host.ts
 *   await pool.stop();
 */
import { recordSandboxDisposal } from '../broker/metrics.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../broker/log.ts';
import type { CapabilityReply } from './capabilities/grants.ts';
import { snapshotUses, type CapabilityUse } from './capabilities/uses.ts';
import { isSandboxErrorCode, SandboxError, type SandboxErrorCode } from './errors.ts';
import { encodeFrame, FrameReader } from './frames.ts';
import type { CapabilityName, PluginLimits } from './manifest.ts';
import { FromChildSchema, type CancelCode, type FromChild, type LoadMessage, type ToChild } from './protocol.ts';

export interface SandboxPoolOptions {
  log: Logger;
  /** Sandbox processes (default 2). */
  size?: number;
  /** Isolates one plugin may have busy at once in its process: its concurrency (default 4). */
  maxIsolatesPerPlugin?: number;
  /** Idle isolates kept warm per plugin (default 1). */
  warmIsolatesPerPlugin?: number;
  /** Calls one isolate serves before it is replaced (default 1000). */
  maxCallsPerIsolate?: number;
  /** After a deadline, how long a process may take to confirm the isolate is gone before it is killed (default 500). */
  cancelGraceMs?: number;
  /** How long a new process may take to start (default 10 s). */
  startTimeoutMs?: number;
  /** Largest frame accepted from a sandbox process (default 32 MiB). */
  maxFrameBytes?: number;
  /** Granularity of Date.now() inside isolates (default 100 ms). */
  clockMs?: number;
  /**
   * Tests only: gives plugins `host.abortProcessForTest()`, which kills their
   * sandbox process, to exercise supervision. Never enable it in production.
   */
  testHooks?: boolean;
}

/** What a sandbox process needs to run one plugin (built by PluginHost). */
export interface SandboxPluginSpec {
  /** Unique per loaded plugin instance. */
  key: string;
  name: string;
  main: string;
  code: string;
  tools: LoadMessage['tools'];
  limits: PluginLimits;
  /** Capabilities the manifest asked for: the isolate offers these functions; the broker decides each use. */
  caps: CapabilityName[];
  /** Capability uses one call may make (the broker enforces it; the sandbox process stops forwarding past it). */
  maxCapabilityCalls: number;
}

/** Serves one call's capability requests (CallCapabilities in production). */
export interface CapabilityHandler {
  readonly uses: readonly CapabilityUse[];
  /** Set (synchronously, by handle) once the call asked for more uses than it may make: the pool ends it. */
  readonly exhausted?: string | undefined;
  handle(payload: string, signal: AbortSignal): Promise<CapabilityReply>;
}

export interface SandboxRunOptions {
  /** Wall-clock deadline, host waits included. */
  wallMs: number;
  signal?: AbortSignal | undefined;
  capabilities: CapabilityHandler;
}

export interface SandboxProcessInfo {
  slot: number;
  pid: number | undefined;
  restarts: number;
  alive: boolean;
  /** Started and answering (it said hello). */
  ready: boolean;
}

export interface SandboxHealth {
  slot: number;
  pid: number;
  isolates: number;
  /** Object.prototype and friends unchanged in the sandbox process's own realm. */
  prototypesIntact: boolean;
  heapUsedBytes: number;
}

const SANDBOXES_DIR = path.dirname(fileURLToPath(import.meta.url));
const CHILD_ENTRY = path.join(SANDBOXES_DIR, 'child', 'main.ts');
const PROJECT_PACKAGE = path.join(SANDBOXES_DIR, '..', 'package.json');
const NODE_MODULES = path.resolve(path.dirname(createRequire(import.meta.url).resolve('isolated-vm/package.json')), '..');

/** A process that keeps dying young is restarted with growing delays, up to this. */
const MAX_RESPAWN_DELAY_MS = 5000;

interface Registration {
  spec: SandboxPluginSpec;
  slot: Slot;
  loaded: boolean;
  waiters: { resolve: () => void; reject: (error: Error) => void }[];
}

interface PendingCall {
  id: number;
  registration: Registration;
  tool: string;
  args: string;
  options: SandboxRunOptions;
  /** Aborted when the call ends: stops its capability operations. */
  controller: AbortController;
  wallTimer: NodeJS.Timeout | undefined;
  killTimer: NodeJS.Timeout | undefined;
  proc: SandboxProcess | undefined;
  retries: number;
  settled: boolean;
  resolve: (json: string) => void;
  reject: (error: SandboxError) => void;
  onAbort: (() => void) | undefined;
}

class SandboxProcess {
  readonly child: ChildProcess;
  readonly channel: Socket;
  readonly startedAt = Date.now();
  readonly inflight = new Map<number, PendingCall>();
  pid: number | undefined;
  ready = false;
  exited = false;
  fatal: { call?: number | undefined; message: string } | undefined;
  stderrTail = '';
  startTimer: NodeJS.Timeout | undefined;
  /** Resolved once the process is ready or gone. */
  startWaiters: (() => void)[] = [];

  started(): void {
    clearTimeout(this.startTimer);
    for (const resolve of this.startWaiters.splice(0)) resolve();
  }

  constructor(child: ChildProcess) {
    this.child = child;
    this.channel = child.stdio[3] as Socket;
    this.pid = child.pid;
  }

  send(message: ToChild): void {
    if (this.exited || this.channel.destroyed) return;
    this.channel.write(encodeFrame(message));
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

interface Slot {
  index: number;
  proc: SandboxProcess | undefined;
  restarts: number;
  quickDeaths: number;
  respawnTimer: NodeJS.Timeout | undefined;
  plugins: Set<string>;
  /** Calls waiting for this slot's process to come (back) up. */
  backlog: PendingCall[];
}

export class SandboxPool {
  private readonly log: Logger;
  private readonly size: number;
  private readonly isolates: LoadMessage['isolates'];
  private readonly cancelGraceMs: number;
  private readonly startTimeoutMs: number;
  private readonly maxFrameBytes: number;
  private readonly clockMs: number;
  private readonly testHooks: boolean;
  private readonly slots: Slot[] = [];
  private readonly registrations = new Map<string, Registration>();
  private readonly healthWaiters = new Map<number, { proc: SandboxProcess; resolve: (health: Extract<FromChild, { t: 'health' }> | undefined) => void }>();
  private state: 'new' | 'running' | 'stopped' = 'new';
  private nextCall = 1;
  private nextHealth = 1;

  constructor(options: SandboxPoolOptions) {
    this.log = options.log;
    this.size = Math.max(1, options.size ?? 2);
    this.isolates = {
      max: Math.max(1, options.maxIsolatesPerPlugin ?? 4),
      warm: Math.max(0, options.warmIsolatesPerPlugin ?? 1),
      maxCalls: Math.max(1, options.maxCallsPerIsolate ?? 1000),
    };
    this.cancelGraceMs = options.cancelGraceMs ?? 500;
    this.startTimeoutMs = options.startTimeoutMs ?? 10_000;
    this.maxFrameBytes = options.maxFrameBytes ?? 32 * 1024 * 1024;
    this.clockMs = Math.max(1, options.clockMs ?? 100);
    this.testHooks = options.testHooks ?? false;
  }

  /** Starts the sandbox processes; resolves when each is up (or failed to come up). */
  async start(): Promise<void> {
    if (this.state !== 'new') return;
    this.state = 'running';
    for (let index = 0; index < this.size; index++) {
      const slot: Slot = { index, proc: undefined, restarts: 0, quickDeaths: 0, respawnTimer: undefined, plugins: new Set(), backlog: [] };
      this.slots.push(slot);
      this.spawn(slot);
    }
    await Promise.all(this.slots.map((slot) => this.whenReady(slot.proc!)));
  }

  private whenReady(proc: SandboxProcess): Promise<void> {
    if (proc.ready || proc.exited) return Promise.resolve();
    return new Promise<void>((resolve) => proc.startWaiters.push(resolve));
  }

  /** Stops every process; calls still running fail with SANDBOX_UNAVAILABLE. */
  async stop(): Promise<void> {
    if (this.state === 'stopped') return;
    this.state = 'stopped';
    const closing: Promise<void>[] = [];
    for (const slot of this.slots) {
      clearTimeout(slot.respawnTimer);
      for (const call of slot.backlog.splice(0)) this.settle(call, new SandboxError('SANDBOX_UNAVAILABLE', 'the sandbox pool is stopped'));
      const proc = slot.proc;
      if (!proc) continue;
      for (const call of proc.inflight.values()) this.settle(call, new SandboxError('SANDBOX_UNAVAILABLE', 'the sandbox pool is stopped'));
      if (!proc.exited) {
        closing.push(new Promise<void>((resolve) => proc.child.once('close', () => resolve())));
        proc.kill();
      }
    }
    for (const registration of this.registrations.values()) this.rejectLoad(registration, 'the sandbox pool is stopped');
    await Promise.all(closing);
  }

  /** The processes, for status pages and tests. */
  processes(): SandboxProcessInfo[] {
    return this.slots.map((slot) => ({
      slot: slot.index,
      pid: slot.proc?.pid,
      restarts: slot.restarts,
      alive: slot.proc !== undefined && !slot.proc.exited,
      ready: slot.proc?.ready ?? false,
    }));
  }

  /** Asks every live process how it is (isolates held, prototypes intact). */
  async health(timeoutMs = 2000): Promise<SandboxHealth[]> {
    const answers = this.slots.map(async (slot): Promise<SandboxHealth | undefined> => {
      const proc = slot.proc;
      if (!proc || proc.exited) return undefined;
      const id = this.nextHealth++;
      const answer = await new Promise<Extract<FromChild, { t: 'health' }> | undefined>((resolve) => {
        const timer = setTimeout(() => {
          this.healthWaiters.delete(id);
          resolve(undefined);
        }, timeoutMs);
        this.healthWaiters.set(id, {
          proc,
          resolve: (health) => {
            clearTimeout(timer);
            this.healthWaiters.delete(id);
            resolve(health);
          },
        });
        proc.send({ t: 'health', id });
      });
      return answer && { slot: slot.index, pid: answer.pid, isolates: answer.isolates, prototypesIntact: answer.prototypesIntact, heapUsedBytes: answer.heapUsedBytes };
    });
    return (await Promise.all(answers)).filter((h): h is SandboxHealth => h !== undefined);
  }

  /**
   * Loads a plugin into its slot's process: the script is compiled and
   * checked to define every tool, and one isolate is left warm. Rejects with
   * SANDBOX_LOAD_FAILED (e.g. a syntax error or an invalid JSON Schema).
   */
  async load(spec: SandboxPluginSpec): Promise<void> {
    if (this.state === 'new') await this.start();
    if (this.state === 'stopped') throw new SandboxError('SANDBOX_UNAVAILABLE', 'the sandbox pool is stopped');
    if (this.registrations.has(spec.key)) throw new SandboxError('SANDBOX_LOAD_FAILED', `plugin ${spec.key} is already loaded`);
    const slot = this.slots.reduce((best, s) => (s.plugins.size < best.plugins.size ? s : best));
    const registration: Registration = { spec, slot, loaded: false, waiters: [] };
    this.registrations.set(spec.key, registration);
    slot.plugins.add(spec.key);
    const loaded = new Promise<void>((resolve, reject) => registration.waiters.push({ resolve, reject }));
    const timer = setTimeout(() => this.rejectLoad(registration, `loading took longer than ${this.startTimeoutMs * 3} ms`), this.startTimeoutMs * 3);
    if (slot.proc && !slot.proc.exited) this.sendLoad(slot.proc, registration);
    try {
      await loaded;
    } catch (error) {
      this.unload(spec.key);
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Removes a plugin: its isolates are disposed. */
  unload(key: string): void {
    const registration = this.registrations.get(key);
    if (!registration) return;
    this.registrations.delete(key);
    registration.slot.plugins.delete(key);
    registration.slot.proc?.send({ t: 'unload', plugin: key });
  }

  private sendLoad(proc: SandboxProcess, registration: Registration): void {
    const { spec } = registration;
    proc.send({
      t: 'load',
      plugin: spec.key,
      name: spec.name,
      main: spec.main,
      code: spec.code,
      tools: spec.tools,
      limits: spec.limits,
      caps: spec.caps,
      maxCapabilityCalls: spec.maxCapabilityCalls,
      isolates: this.isolates,
      clockMs: this.clockMs,
    });
  }

  private rejectLoad(registration: Registration, reason: string): void {
    for (const waiter of registration.waiters.splice(0)) waiter.reject(new SandboxError('SANDBOX_LOAD_FAILED', `plugin ${registration.spec.name}: ${reason}`));
  }

  /**
   * Runs `tool` of a loaded plugin with `args` (JSON text). Resolves with the
   * result's JSON text; rejects with a SandboxError carrying the capability
   * uses made so far.
   */
  run(key: string, tool: string, args: string, options: SandboxRunOptions): Promise<string> {
    const registration = this.registrations.get(key);
    if (this.state !== 'running' || !registration?.loaded) {
      return Promise.reject(new SandboxError('SANDBOX_UNAVAILABLE', this.state === 'running' ? `plugin ${key} is not loaded` : 'the sandbox pool is not running'));
    }
    if (options.signal?.aborted) return Promise.reject(new SandboxError('SANDBOX_CANCELLED', 'the caller cancelled the call'));
    return new Promise<string>((resolve, reject) => {
      const call: PendingCall = {
        id: this.nextCall++,
        registration,
        tool,
        args,
        options,
        controller: new AbortController(),
        wallTimer: undefined,
        killTimer: undefined,
        proc: undefined,
        retries: 0,
        settled: false,
        resolve,
        reject,
        onAbort: undefined,
      };
      const name = registration.spec.name;
      call.wallTimer = setTimeout(
        () => this.abandon(call, 'SANDBOX_TIMEOUT', `plugin ${name}: tools.${tool} did not finish within its ${options.wallMs} ms wall-clock deadline`),
        options.wallMs,
      );
      if (options.signal) {
        call.onAbort = () => this.abandon(call, 'SANDBOX_CANCELLED', 'the caller cancelled the call');
        options.signal.addEventListener('abort', call.onAbort, { once: true });
      }
      this.dispatch(call);
    });
  }

  private dispatch(call: PendingCall): void {
    const slot = call.registration.slot;
    const proc = slot.proc;
    if (!proc || proc.exited) {
      slot.backlog.push(call);
      return;
    }
    call.proc = proc;
    proc.inflight.set(call.id, call);
    proc.send({ t: 'call', call: call.id, plugin: call.registration.spec.key, tool: call.tool, args: call.args });
  }

  private settle(call: PendingCall, outcome: { json: string } | SandboxError): void {
    if (call.settled) return;
    call.settled = true;
    clearTimeout(call.wallTimer);
    call.controller.abort();
    if (call.onAbort) call.options.signal?.removeEventListener('abort', call.onAbort);
    const backlog = call.registration.slot.backlog;
    const queued = backlog.indexOf(call);
    if (queued >= 0) backlog.splice(queued, 1);
    if (outcome instanceof SandboxError) {
      // These failures dispose of the isolate (or its whole process); it is never reused.
      if (outcome.code === 'SANDBOX_TIMEOUT' || outcome.code === 'SANDBOX_MEMORY' || outcome.code === 'SANDBOX_CRASHED') {
        recordSandboxDisposal(outcome.code.slice('SANDBOX_'.length).toLowerCase());
      }
      outcome.capabilityUses = snapshotUses(call.options.capabilities.uses);
      call.reject(outcome);
    } else {
      call.resolve(outcome.json);
    }
  }

  /** The broker gives up on a call: fail it now, then make sure its isolate goes. */
  private abandon(call: PendingCall, code: CancelCode, message: string): void {
    if (call.settled) return;
    this.settle(call, new SandboxError(code, message));
    const proc = call.proc;
    if (!proc || proc.exited) return;
    proc.send({ t: 'cancel', call: call.id, code });
    call.killTimer = setTimeout(() => {
      if (proc.inflight.has(call.id) && !proc.exited) {
        this.log.warn({ plugin: call.registration.spec.name, pid: proc.pid }, 'sandbox process did not release a cancelled call; killing it');
        proc.kill();
      }
    }, this.cancelGraceMs);
  }

  private spawn(slot: Slot): void {
    slot.respawnTimer = undefined;
    if (this.state !== 'running') return;
    const args = [
      '--no-node-snapshot', // isolated-vm requires it on Node >= 20
      '--permission',
      `--allow-fs-read=${SANDBOXES_DIR}`,
      `--allow-fs-read=${NODE_MODULES}`,
      `--allow-fs-read=${PROJECT_PACKAGE}`,
      '--allow-addons', // isolated-vm is a native addon
      '--disable-warning=SecurityWarning',
      CHILD_ENTRY,
      ...(this.testHooks ? ['--test-hooks'] : []),
    ];
    // An empty environment: nothing of the broker's (credentials included) reaches a sandbox process.
    const env = { LIBC: existsSync('/etc/alpine-release') ? 'musl' : 'glibc' };
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env });
    const proc = new SandboxProcess(child);
    slot.proc = proc;
    const reader = new FrameReader(
      this.maxFrameBytes,
      (message) => this.onMessage(slot, proc, message),
      (error) => this.violation(proc, error.message),
    );
    proc.channel.on('data', (chunk: Buffer) => reader.push(chunk));
    proc.channel.on('error', () => undefined);
    child.stderr?.on('data', (chunk: Buffer) => {
      proc.stderrTail = (proc.stderrTail + chunk.toString('utf8')).slice(-4000);
    });
    child.on('error', (error) => {
      proc.stderrTail += `\nspawn failed: ${error.message}`;
    });
    child.once('close', (code, signal) => this.onExit(slot, proc, code, signal));
    proc.startTimer = setTimeout(() => {
      if (!proc.ready) {
        this.log.error({ slot: slot.index, pid: proc.pid }, 'sandbox process did not start in time; killing it');
        proc.kill();
      }
    }, this.startTimeoutMs);
    for (const key of slot.plugins) {
      const registration = this.registrations.get(key);
      if (registration) this.sendLoad(proc, registration);
    }
    for (const call of slot.backlog.splice(0)) if (!call.settled) this.dispatch(call);
  }

  private violation(proc: SandboxProcess, reason: string): void {
    this.log.error({ pid: proc.pid, reason }, 'sandbox process broke the protocol; killing it');
    proc.kill();
  }

  private onMessage(slot: Slot, proc: SandboxProcess, raw: unknown): void {
    if (proc.exited) return;
    const parsed = FromChildSchema.safeParse(raw);
    if (!parsed.success) return this.violation(proc, `unexpected message: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
    const message = parsed.data;
    switch (message.t) {
      case 'ready':
        proc.ready = true;
        proc.pid = message.pid;
        proc.started();
        return;
      case 'loaded': {
        const registration = this.registrations.get(message.plugin);
        if (!registration || registration.slot !== slot) return;
        if (message.ok) {
          registration.loaded = true;
          for (const waiter of registration.waiters.splice(0)) waiter.resolve();
        } else {
          this.log.warn({ plugin: registration.spec.name, err: message.error }, 'plugin failed to load');
          this.rejectLoad(registration, message.error ?? 'failed to load');
        }
        return;
      }
      case 'cap':
        this.onCapability(proc, message);
        return;
      case 'result':
      case 'failed': {
        const call = proc.inflight.get(message.call);
        if (!call) return;
        proc.inflight.delete(message.call);
        clearTimeout(call.killTimer);
        if (message.t === 'result') this.settle(call, { json: message.json });
        else {
          const code: SandboxErrorCode = isSandboxErrorCode(message.code) ? message.code : 'SANDBOX_CRASHED';
          this.settle(call, new SandboxError(code, `plugin ${call.registration.spec.name}: ${message.message}`));
        }
        return;
      }
      case 'fatal':
        proc.fatal ??= { call: message.call, message: message.message };
        return;
      case 'health': {
        const waiter = this.healthWaiters.get(message.id);
        if (waiter?.proc === proc) waiter.resolve(message);
        return;
      }
    }
  }

  private onCapability(proc: SandboxProcess, message: Extract<FromChild, { t: 'cap' }>): void {
    const call = proc.inflight.get(message.call);
    const reply = (ok: boolean, payload: string) => {
      if (message.req > 0 && !proc.exited) proc.send({ t: 'capResult', call: message.call, req: message.req, ok, payload });
    };
    if (!call || call.settled) {
      reply(false, 'the call has ended');
      return;
    }
    const capabilities = call.options.capabilities;
    const handled = capabilities.handle(message.payload, call.controller.signal);
    if (capabilities.exhausted !== undefined) {
      // Past the per-call cap the call ends at once: requests already on their way find it settled.
      this.abandon(call, 'SANDBOX_CAPABILITY_DENIED', `plugin ${call.registration.spec.name}: ${capabilities.exhausted}`);
    }
    handled.then(
      (result) => {
        if (call.proc !== proc) return;
        if (result.ok) reply(true, JSON.stringify(result.value ?? null));
        else reply(false, result.message);
      },
      (error: unknown) => reply(false, `capability failed: ${(error as Error).message}`),
    );
  }

  private onExit(slot: Slot, proc: SandboxProcess, code: number | null, signal: NodeJS.Signals | null): void {
    proc.exited = true;
    proc.started();
    if (slot.proc === proc) slot.proc = undefined;
    const why = proc.fatal ? proc.fatal.message : signal ? `killed by ${signal}` : `exited with code ${code}`;
    if (this.state === 'running') {
      this.log.warn({ slot: slot.index, pid: proc.pid, why, stderr: proc.stderrTail.slice(-1000) || undefined }, 'sandbox process died; replacing it');
    }
    const culprit = proc.fatal?.call;
    for (const call of proc.inflight.values()) {
      clearTimeout(call.killTimer);
      call.proc = undefined;
      if (call.settled) continue;
      const name = call.registration.spec.name;
      if (call.id === culprit) {
        const memory = /memory/i.test(proc.fatal!.message);
        this.settle(
          call,
          new SandboxError(memory ? 'SANDBOX_MEMORY' : 'SANDBOX_CRASHED', `plugin ${name}: the isolate failed catastrophically (${proc.fatal!.message}); its sandbox process was replaced`),
        );
      } else if (this.state === 'running' && call.retries === 0 && call.options.capabilities.uses.length === 0) {
        // Nothing outside the isolate saw this call yet: running it again cannot repeat a side effect.
        call.retries++;
        slot.backlog.push(call);
      } else {
        this.settle(call, new SandboxError('SANDBOX_CRASHED', `plugin ${name}: the sandbox process running the call died (${why}); it was replaced`));
      }
    }
    proc.inflight.clear();
    // A process that died cannot answer: do not make health() wait for it.
    for (const waiter of [...this.healthWaiters.values()]) if (waiter.proc === proc) waiter.resolve(undefined);
    for (const registration of this.registrations.values()) {
      if (registration.slot === slot && !registration.loaded && this.state !== 'running') this.rejectLoad(registration, 'the sandbox process died');
    }
    if (this.state !== 'running') return;
    slot.restarts++;
    const lived = Date.now() - proc.startedAt;
    slot.quickDeaths = lived < 1000 ? slot.quickDeaths + 1 : 0;
    const delay = slot.quickDeaths <= 1 ? 0 : Math.min(MAX_RESPAWN_DELAY_MS, 50 * 2 ** (slot.quickDeaths - 2));
    slot.respawnTimer = setTimeout(() => this.spawn(slot), delay);
  }
}
