/**
 * Inside a sandbox process: one plugin's warm isolates, and the run of one
 * call in one of them.
 *
 * Each isolate has the plugin's memory limit, its own copy of the compiled
 * bootstrap and plugin scripts (compiled once per isolate, never from
 * cached data or snapshots), and runs one call at a time, each in a fresh
 * Context: a call starts from a pristine global, so nothing one call leaves
 * behind (globals, patched prototypes) is visible to the next. An idle
 * isolate prepares the next call's context (bootstrap and the script's top
 * level, which see no call data) ahead of time, so a warm call is a single
 * entry. An isolate that failed (CPU timeout, memory, cancellation) or still
 * had host requests outstanding when its call ended is disposed, never
 * reused.
 *
 * CPU: cpu_ms is checked against `isolate.cpuTime` across every entry into
 * the isolate (bootstrap, the script's top level, the tool invocation, each
 * capability delivery). isolated-vm counts finished stretches of execution
 * in thread CPU time (on Linux) but the stretch in progress in wall time, so
 * a long-running loop is cut after cpu_ms of wall time while it runs, and a
 * loaded machine can cut a call somewhat early. A watchdog checks running
 * isolates every few milliseconds and disposes of one that went over; each
 * entry also runs with a wall-clock `timeout` (isolated-vm's timeouts are
 * wall time) of ten times what is left of the budget, as a backstop for
 * when the watchdog cannot run. The context and the bootstrap (Bastion's own
 * code, bounded) are made synchronously, with the budget as their timeout.
 * Time spent waiting on the host is not CPU time; the wall-clock deadline
 * for the whole call is the broker's (SandboxPool).
 */
import { readFileSync } from 'node:fs';
import ivm from 'isolated-vm';
import type { ValidateFunction } from 'ajv';
import type { SandboxErrorCode } from '../errors.ts';
import type { CancelCode, LoadMessage } from '../protocol.ts';
import { compileSchema } from '../schema-patterns.ts';

const BOOTSTRAP_SOURCE = readFileSync(new URL('./bootstrap.js', import.meta.url), 'utf8');
const TIMED_OUT = 'Script execution timed out.';
const MAX_MESSAGE = 2000;
/** How often the CPU watchdog looks at running isolates. */
const WATCHDOG_MS = 5;
/** An entry's wall-clock backstop: this many times the CPU budget left, plus a little. */
const BACKSTOP_FACTOR = 10;
const BACKSTOP_SLACK_MS = 100;
/** How long after a call ends an idle isolate starts preparing the next call's context. */
const PREPARE_DELAY_MS = 1;

const CANCEL_REASONS: Record<CancelCode, string> = {
  SANDBOX_TIMEOUT: 'wall-clock deadline exceeded',
  SANDBOX_CANCELLED: 'cancelled by the caller',
  SANDBOX_CAPABILITY_DENIED: 'too many capability uses',
};

/** Calls with an entry in their isolate right now, watched for CPU overruns. */
const inIsolate = new Set<CallRun>();
let watchdog: NodeJS.Timeout | undefined;

function watch(run: CallRun): void {
  inIsolate.add(run);
  watchdog ??= setInterval(() => {
    for (const running of inIsolate) running.checkCpu();
    if (inIsolate.size === 0) {
      clearInterval(watchdog);
      watchdog = undefined;
    }
  }, WATCHDOG_MS);
}

export class CallFailure extends Error {
  readonly code: SandboxErrorCode;
  constructor(code: SandboxErrorCode, message: string) {
    super(message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE)}…` : message);
    this.code = code;
  }
}

export interface RunHooks {
  /** A capability request from the isolate (req 0: no reply wanted). */
  onCapability(req: number, payload: string): void;
  /** Test-only: the plugin asked to abort its process. */
  onTestAbort(): void;
}

interface ToolValidators {
  input: ValidateFunction;
  output?: ValidateFunction | undefined;
}

function schemaErrors(validate: ValidateFunction): string {
  return (validate.errors ?? [])
    .slice(0, 5)
    .map((e) => `${e.instancePath || '(root)'} ${e.message ?? 'is invalid'}`)
    .join('; ');
}

function messageOf(error: unknown): string {
  try {
    if (error instanceof Error) return error.message;
    return String(error);
  } catch {
    return 'unprintable error';
  }
}

/** One isolate, warm: compiled scripts ready, one call at a time. */
class WarmIsolate {
  readonly isolate: ivm.Isolate;
  bootstrap!: ivm.Script;
  script!: ivm.Script;
  calls = 0;
  /** The call running here, for attributing a catastrophic error. */
  current: CallRun | undefined;
  /** The run for the next call, its fresh context prepared while the isolate is idle. */
  next: CallRun | undefined;
  disposedByHost = false;

  constructor(memoryMb: number, onCatastrophic: (isolate: WarmIsolate, message: string) => void) {
    this.isolate = new ivm.Isolate({ memoryLimit: memoryMb, onCatastrophicError: (message) => onCatastrophic(this, message) });
  }

  async compile(runtime: PluginRuntime): Promise<void> {
    this.bootstrap = await this.isolate.compileScript(BOOTSTRAP_SOURCE, { filename: 'bastion:bootstrap.js' });
    // `void 0` last, so the script's completion value (which could be a huge string) is never copied out.
    this.script = await this.isolate.compileScript(`${runtime.code}\n;void 0;\n`, { filename: `plugin:///${runtime.name}/${runtime.main}` });
  }

  dispose(): void {
    this.disposedByHost = true;
    if (!this.isolate.isDisposed) {
      try {
        this.isolate.dispose();
      } catch {
        // already gone
      }
    }
  }
}

export interface CallRequest {
  call: number;
  tool: string;
  args: string;
}

export class PluginRuntime {
  readonly key: string;
  readonly name: string;
  readonly main: string;
  readonly code: string;
  readonly limits: LoadMessage['limits'];
  readonly maxCapabilityCalls: number;
  private readonly caps: LoadMessage['caps'];
  private readonly pool: LoadMessage['isolates'];
  private readonly clockMs: number;
  private readonly testHooks: boolean;
  private readonly validators = new Map<string, ToolValidators>();
  private readonly onCatastrophic: (isolate: WarmIsolate, message: string) => void;
  private readonly idle: WarmIsolate[] = [];
  private readonly all = new Set<WarmIsolate>();
  private readonly waiters: { resolve: (isolate: WarmIsolate) => void; reject: (error: Error) => void; call: number }[] = [];
  private closed = false;

  constructor(message: LoadMessage, testHooks: boolean, onCatastrophic: (isolate: WarmIsolate, message: string) => void) {
    this.key = message.plugin;
    this.name = message.name;
    this.main = message.main;
    this.code = message.code;
    this.limits = message.limits;
    this.maxCapabilityCalls = message.maxCapabilityCalls;
    this.caps = message.caps;
    this.pool = message.isolates;
    this.clockMs = message.clockMs;
    this.testHooks = testHooks;
    this.onCatastrophic = onCatastrophic;
    for (const tool of message.tools) {
      try {
        this.validators.set(tool.name, {
          input: compileSchema(tool.inputSchema),
          output: tool.outputSchema ? compileSchema(tool.outputSchema) : undefined,
        });
      } catch (error) {
        throw new Error(`tool ${tool.name}: invalid JSON Schema: ${messageOf(error)}`);
      }
    }
  }

  get isolateCount(): number {
    return this.all.size;
  }

  get configJson(): string {
    return JSON.stringify({
      caps: { fetch: this.caps.includes('fetch'), kv: this.caps.includes('kv'), log: this.caps.includes('log') },
      clockMs: this.clockMs,
      maxResultBytes: this.limits.max_result_bytes,
      maxRequests: this.maxCapabilityCalls + 1,
      testHooks: this.testHooks,
    });
  }

  /** Compiles the script in a first isolate and checks it defines every tool; that isolate stays warm. */
  async verify(toolNames: string[]): Promise<void> {
    const isolate = await this.createIsolate();
    let context: ivm.Context | undefined;
    try {
      context = await isolate.isolate.createContext();
      let missing: string[] | undefined;
      const send = new ivm.Callback((kind: unknown, _id: unknown, text: unknown) => {
        if (kind === 'defined' && typeof text === 'string') missing = JSON.parse(text) as string[];
      });
      // The top level runs again, under the call's CPU budget, on every call; this is only a sanity check.
      const timeout = Math.max(this.limits.cpu_ms * 2, 100);
      const bootstrap = (await isolate.bootstrap.run(context, { reference: true, timeout })) as ivm.Reference;
      const control = (await bootstrap.apply(undefined, [send, this.configJson], { result: { reference: true }, timeout })) as ivm.Reference;
      await isolate.script.run(context, { timeout });
      await control.apply(undefined, ['defined', JSON.stringify(toolNames), ''], { timeout });
      bootstrap.release();
      control.release();
      if (!missing) throw new Error('the plugin script could not be checked');
      if (missing.length > 0) throw new Error(`the script does not define ${missing.map((n) => `tools.${n}`).join(', ')}`);
      context.release();
      this.release(isolate, true);
    } catch (error) {
      context?.release();
      this.release(isolate, false);
      throw new Error(`plugin ${this.name}: ${messageOf(error)}`);
    }
  }

  private async createIsolate(): Promise<WarmIsolate> {
    const isolate = new WarmIsolate(this.limits.memory_mb, this.onCatastrophic);
    this.all.add(isolate);
    try {
      await isolate.compile(this);
    } catch (error) {
      this.all.delete(isolate);
      isolate.dispose();
      throw error;
    }
    return isolate;
  }

  /** A warm isolate for one call; waits when all `max` are busy. */
  async acquire(call: number): Promise<WarmIsolate> {
    if (this.closed) throw new CallFailure('SANDBOX_UNAVAILABLE', `plugin ${this.name} is unloaded`);
    const idle = this.idle.pop();
    if (idle) return idle;
    if (this.all.size < this.pool.max) {
      try {
        return await this.createIsolate();
      } catch (error) {
        throw new CallFailure('SANDBOX_CRASHED', `cannot start an isolate: ${messageOf(error)}`);
      }
    }
    return new Promise<WarmIsolate>((resolve, reject) => this.waiters.push({ resolve, reject, call }));
  }

  /** Drops a queued call (cancelled before it got an isolate). */
  dequeue(call: number): boolean {
    const index = this.waiters.findIndex((w) => w.call === call);
    if (index < 0) return false;
    this.waiters.splice(index, 1)[0]!.reject(new CallFailure('SANDBOX_CANCELLED', 'cancelled while queued'));
    return true;
  }

  /** Returns an isolate after a call: reused only when healthy, otherwise replaced. */
  release(isolate: WarmIsolate, healthy: boolean): void {
    isolate.current = undefined;
    const reusable = healthy && !this.closed && !isolate.isolate.isDisposed && isolate.calls < this.pool.maxCalls;
    if (!reusable) {
      this.all.delete(isolate);
      isolate.dispose();
    }
    const waiter = this.waiters.shift();
    if (waiter) {
      // The waiting call makes its own context: it would wait for a prepared one anyway.
      if (reusable) waiter.resolve(isolate);
      else this.createIsolate().then(waiter.resolve, (error: unknown) => waiter.reject(new CallFailure('SANDBOX_CRASHED', `cannot start an isolate: ${messageOf(error)}`)));
      return;
    }
    if (!reusable) return;
    if (this.idle.length < this.pool.warm) {
      this.idle.push(isolate);
      this.prepareNext(isolate);
    } else {
      this.all.delete(isolate);
      isolate.dispose();
    }
  }

  /**
   * Starts the next call's run on an idle isolate: its fresh context, the
   * bootstrap and the script's top level are made before the call comes, so
   * the call itself is one entry into the isolate. The run's CPU budget
   * counts from here: it is charged what it would have been charged had the
   * call done this itself. A call that comes before this is done (back-to-back
   * calls) finishes it on its own path, as it would without preparation.
   */
  private prepareNext(isolate: WarmIsolate): void {
    const run = new CallRun(this, isolate);
    isolate.next = run;
    // A moment later, not at once: this process has just posted a result, and the broker that wakes for it
    // is often scheduled on this very CPU; a few hundred microseconds of context-making here would delay it.
    setTimeout(() => void run.prepare(), PREPARE_DELAY_MS);
  }

  close(): void {
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) waiter.reject(new CallFailure('SANDBOX_UNAVAILABLE', `plugin ${this.name} is unloaded`));
    for (const isolate of this.idle.splice(0)) {
      this.all.delete(isolate);
      isolate.dispose();
    }
  }

  validateArguments(tool: string, args: string): void {
    const validators = this.validators.get(tool);
    if (!validators) throw new CallFailure('SANDBOX_UNKNOWN_TOOL', `plugin ${this.name} has no tool ${tool}`);
    let value: unknown;
    try {
      value = JSON.parse(args);
    } catch {
      throw new CallFailure('SANDBOX_INVALID_ARGUMENTS', 'arguments are not JSON');
    }
    if (!validators.input(value)) {
      throw new CallFailure('SANDBOX_INVALID_ARGUMENTS', `arguments do not match the input schema of ${tool}: ${schemaErrors(validators.input)}`);
    }
  }

  /** Checks a result the isolate produced: size, JSON, output schema. Returns the JSON text. */
  checkResult(tool: string, json: string): string {
    const bytes = Buffer.byteLength(json, 'utf8');
    if (bytes > this.limits.max_result_bytes) {
      throw new CallFailure('SANDBOX_RESULT_TOO_LARGE', `the result of ${bytes} bytes exceeds the ${this.limits.max_result_bytes}-byte cap`);
    }
    let value: unknown;
    try {
      value = JSON.parse(json);
    } catch {
      throw new CallFailure('SANDBOX_INVALID_RESULT', 'the result is not JSON');
    }
    const output = this.validators.get(tool)?.output;
    if (output && !output(value)) {
      throw new CallFailure('SANDBOX_INVALID_RESULT', `the result does not match the output schema of ${tool}: ${schemaErrors(output)}`);
    }
    return json;
  }

  /** The run for a call on an isolate from acquire(): the one prepared while it was idle, if any. */
  newRun(request: CallRequest, isolate: WarmIsolate, hooks: RunHooks): CallRun {
    const run = isolate.next ?? new CallRun(this, isolate);
    isolate.next = undefined;
    run.bind(request, hooks);
    return run;
  }
}

/**
 * One call in one isolate. Resolves with the result's JSON text or rejects
 * with a CallFailure; afterwards the isolate goes back to its runtime
 * (healthy) or is disposed.
 */
export class CallRun {
  readonly isolate: WarmIsolate;
  private readonly runtime: PluginRuntime;
  private requestValue: CallRequest | undefined;
  private hooks: RunHooks | undefined;
  private readonly cpuStart: bigint;
  private preparing: Promise<void> | undefined;
  private prepareFailure: CallFailure | undefined;
  private context: ivm.Context | undefined;
  private control: ivm.Reference | undefined;
  private readonly outstanding = new Set<number>();
  /** Capability requests forwarded to the broker for this call. */
  private forwarded = 0;
  /** Entries queued or running in the isolate. */
  private entries = 0;
  private outcome: string | undefined;
  private failure: CallFailure | undefined;
  private settled = false;
  private resolveRun!: (json: string) => void;
  private rejectRun!: (failure: CallFailure) => void;
  readonly done: Promise<string>;

  constructor(runtime: PluginRuntime, isolate: WarmIsolate) {
    this.runtime = runtime;
    this.isolate = isolate;
    this.cpuStart = isolate.isolate.cpuTime;
    this.done = new Promise<string>((resolve, reject) => {
      this.resolveRun = resolve;
      this.rejectRun = reject;
    });
    // A cancel can settle the run before start() hands `done` to its caller.
    this.done.catch(() => undefined);
  }

  /** The call this run serves (set by bind). */
  get request(): CallRequest {
    if (!this.requestValue) throw new Error('the run has no call yet');
    return this.requestValue;
  }

  /** Attributes the run to a call; from here on it counts against the isolate's calls. */
  bind(request: CallRequest, hooks: RunHooks): void {
    this.requestValue = request;
    this.hooks = hooks;
    this.isolate.current = this;
    this.isolate.calls++;
  }

  /** Called by the watchdog while an entry runs: over budget, the isolate goes. */
  checkCpu(): void {
    if (this.settled || this.failure) return;
    if (this.cpuUsedMs() > this.runtime.limits.cpu_ms) {
      this.failure = this.cpuTimeout();
      this.isolate.dispose();
    }
  }

  private cpuUsedMs(): number {
    if (this.isolate.isolate.isDisposed) return 0;
    return Number(this.isolate.isolate.cpuTime - this.cpuStart) / 1e6;
  }

  /** Runs `entry` in the isolate with what is left of the CPU budget as its timeout. */
  private async enter<T>(entry: (timeout: number) => Promise<T>): Promise<T> {
    if (this.failure) throw this.failure;
    const remaining = this.runtime.limits.cpu_ms - this.cpuUsedMs();
    if (remaining <= 0) throw this.cpuTimeout();
    const timeout = Math.ceil(remaining * BACKSTOP_FACTOR + BACKSTOP_SLACK_MS);
    const started = performance.now();
    this.entries++;
    watch(this);
    try {
      return await entry(timeout);
    } catch (error) {
      throw this.classify(error, performance.now() - started, timeout);
    } finally {
      this.entries--;
      if (this.entries === 0) inIsolate.delete(this);
    }
  }

  private cpuTimeout(): CallFailure {
    return new CallFailure('SANDBOX_TIMEOUT', `the call used more than its ${this.runtime.limits.cpu_ms} ms of CPU time`);
  }

  private backstopTimeout(timeoutMs: number): CallFailure {
    return new CallFailure('SANDBOX_TIMEOUT', `the call ran for ${timeoutMs} ms without finishing its ${this.runtime.limits.cpu_ms} ms CPU budget (the machine is overloaded)`);
  }

  /** Turns an entry's rejection into a CallFailure from host-side facts, not from the message alone. */
  private classify(error: unknown, elapsedMs: number, timeoutMs: number): CallFailure {
    const known = this.hostSideFailure();
    if (known) return known;
    const message = messageOf(error);
    if (message === TIMED_OUT && elapsedMs >= timeoutMs - 1) return this.backstopTimeout(timeoutMs);
    return pluginFailure(message);
  }

  /** A failure the host established (watchdog, cancellation), or the isolate's memory or CPU limit. */
  private hostSideFailure(): CallFailure | undefined {
    if (this.failure) return this.failure;
    if (this.isolate.isolate.isDisposed && !this.isolate.disposedByHost) {
      return new CallFailure('SANDBOX_MEMORY', `the isolate exceeded its ${this.runtime.limits.memory_mb} MB memory limit and was disposed`);
    }
    if (this.cpuUsedMs() >= this.runtime.limits.cpu_ms) return this.cpuTimeout();
    return undefined;
  }

  /**
   * Whether one more capability request may go to the broker: up to one past
   * the per-call cap (the broker refuses that one and ends the call). The
   * bootstrap stops sending there already; this is the same bound kept
   * outside the isolate, so nothing that runs in it can flood the broker.
   */
  private mayForward(): boolean {
    return ++this.forwarded <= this.runtime.maxCapabilityCalls + 1;
  }

  /** The `send` callback's target: copies of primitives only, checked here. */
  private onSend(kind: unknown, id: unknown, text: unknown): void {
    if (this.settled || typeof kind !== 'string' || typeof id !== 'number' || typeof text !== 'string') return;
    switch (kind) {
      case 'done':
        this.outcome ??= text;
        return;
      case 'cap':
        if (!Number.isSafeInteger(id) || id <= 0 || this.outstanding.has(id) || !this.mayForward()) return;
        this.outstanding.add(id);
        this.hooks?.onCapability(id, text);
        return;
      case 'log':
        if (this.mayForward()) this.hooks?.onCapability(0, text);
        return;
      case 'test:abort':
        this.hooks?.onTestAbort();
        return;
    }
  }

  /**
   * The call's fresh context: bootstrap, then the script's top level, under
   * the call's CPU budget. Never rejects; a failure is the call's, reported
   * by start().
   */
  prepare(): Promise<void> {
    this.preparing ??= this.makeContext();
    return this.preparing;
  }

  private async makeContext(): Promise<void> {
    // `ignored`: the isolate does not wait for the sandbox process to take what it sends, which saves
    // two thread hand-offs per message. isolated-vm queues these callbacks and the completion of the
    // entry that sent them on the same FIFO, so afterEntry() sees them first.
    const send = new ivm.Callback((kind: unknown, id: unknown, text: unknown) => this.onSend(kind, id, text), { ignored: true });
    try {
      // Context and bootstrap run synchronously: no plugin code runs in them, so the time is bounded,
      // and they cost a third of what the asynchronous entries' thread hand-offs do.
      const timeout = this.runtime.limits.cpu_ms;
      this.context = this.isolate.isolate.createContextSync();
      const context = this.context;
      const bootstrap = this.isolate.bootstrap.runSync(context, { reference: true, timeout }) as ivm.Reference;
      this.control = bootstrap.applySync(undefined, [send, this.runtime.configJson], { result: { reference: true }, timeout }) as ivm.Reference;
      bootstrap.release();
    } catch (error) {
      // Only Bastion's code ran: not the plugin's failure.
      this.prepareFailure = this.hostSideFailure() ?? new CallFailure('SANDBOX_CRASHED', `cannot prepare a context: ${messageOf(error)}`);
      return;
    }
    try {
      const context = this.context;
      await this.enter((timeout) => this.isolate.script.run(context, { timeout }));
    } catch (error) {
      this.prepareFailure = error instanceof CallFailure ? error : new CallFailure('SANDBOX_CRASHED', messageOf(error));
    }
  }

  async start(): Promise<string> {
    await this.prepare();
    try {
      if (this.prepareFailure) throw this.prepareFailure;
      const control = this.control!;
      const { tool, args } = this.request;
      // A tool that returned a plain value answers with the entry's return value, the outcome text.
      const returned: unknown = await this.enter((timeout) => control.apply(undefined, ['invoke', tool, args], { timeout }));
      if (typeof returned === 'string') this.outcome ??= returned;
      this.afterEntry();
    } catch (error) {
      this.fail(error instanceof CallFailure ? error : new CallFailure('SANDBOX_CRASHED', messageOf(error)));
    }
    return this.done;
  }

  /** A capability reply from the broker goes back into the isolate. */
  deliver(req: number, ok: boolean, payload: string): void {
    if (this.settled || !this.outstanding.delete(req) || !this.control) return;
    const control = this.control;
    this.enter((timeout) => control.apply(undefined, [ok ? 'resolve' : 'reject', req, payload], { timeout }))
      .then(() => this.afterEntry())
      .catch((error: unknown) => this.fail(error instanceof CallFailure ? error : new CallFailure('SANDBOX_CRASHED', messageOf(error))));
  }

  /** After each entry: did the tool finish, or can it still? */
  private afterEntry(): void {
    if (this.settled) return;
    const outcome = this.outcome;
    if (outcome !== undefined) {
      this.finishWith(outcome);
      return;
    }
    if (this.outstanding.size === 0 && this.entries === 0) {
      // No timers exist in the isolate: with no host request outstanding and no delivery queued,
      // nothing can ever resume it.
      this.fail(new CallFailure('SANDBOX_PLUGIN_ERROR', `tools.${this.request.tool} returned a promise that can never settle (it awaits nothing the host will answer)`));
    }
  }

  private finishWith(outcome: string): void {
    const kind = outcome[0];
    const text = outcome.slice(1);
    try {
      switch (kind) {
        case 'R':
          this.succeed(this.runtime.checkResult(this.request.tool, text));
          return;
        case 'T':
          throw new CallFailure('SANDBOX_RESULT_TOO_LARGE', `the result of at least ${text} bytes exceeds the ${this.runtime.limits.max_result_bytes}-byte cap`);
        case 'S':
          throw new CallFailure('SANDBOX_INVALID_RESULT', `the result cannot be serialized as JSON: ${text}`);
        default:
          throw pluginFailure(text);
      }
    } catch (error) {
      this.fail(error as CallFailure);
    }
  }

  private succeed(json: string): void {
    if (this.settled) return;
    this.settled = true;
    this.cleanup(true);
    this.resolveRun(json);
  }

  fail(failure: CallFailure): void {
    // The first failure the host established (watchdog, cancellation) wins over what followed from it.
    const final = this.failure ?? failure;
    this.failure = final;
    if (this.settled) return;
    this.settled = true;
    const healthy = ['SANDBOX_PLUGIN_ERROR', 'SANDBOX_INVALID_RESULT', 'SANDBOX_RESULT_TOO_LARGE'].includes(final.code);
    this.cleanup(healthy);
    this.rejectRun(final);
  }

  /** The broker gave up on this call (wall-clock deadline, caller abort, capability cap): the isolate goes. */
  cancel(code: CancelCode): void {
    const failure = new CallFailure(code, CANCEL_REASONS[code]);
    this.failure ??= failure;
    this.isolate.dispose();
    this.fail(failure);
  }

  private cleanup(healthy: boolean): void {
    for (const handle of [this.control, this.context]) {
      try {
        handle?.release();
      } catch {
        // the isolate is gone
      }
    }
    // Host requests still outstanding, or deliveries already queued, could resume plugin code after
    // the call ended: such an isolate is not reused.
    this.runtime.release(this.isolate, healthy && this.outstanding.size === 0 && this.entries === 0);
  }
}

/**
 * An error the plugin raised. A failed ArrayBuffer allocation is the
 * isolate's memory limit at work (isolated-vm refuses it inside the
 * isolate); a plugin that fakes that message only mislabels its own failure.
 */
function pluginFailure(message: string): CallFailure {
  if (/^RangeError: Array buffer allocation failed/.test(message)) {
    return new CallFailure('SANDBOX_MEMORY', `the isolate's memory limit refused an allocation (${message})`);
  }
  return new CallFailure('SANDBOX_PLUGIN_ERROR', message);
}
