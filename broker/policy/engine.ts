/**
 * Stage 3, authorize: evaluates the compiled Rego policy in-process.
 *
 * The engine is a dumb, total enforcement point: it validates the input,
 * runs `data.bastion.decision` in the OPA WebAssembly module and validates
 * the answer. Every rule lives in the Rego (policies/); every failure here
 * (bad input, an input over the size cap, a WASM abort or out-of-memory, no
 * result, a malformed decision) is a denial.
 *
 * Everything that can be checked before the first call is checked at load:
 * the module compiles, has the entrypoint, accepts its data (handed over
 * with setData once per instance, never per call), and imports no builtin
 * the broker does not provide (builtins.ts). Hot reload builds a new engine
 * and swaps it in (holder.ts); an engine itself never changes.
 *
 * @example
 *   const engine = await loadPolicy('policies/compiled/policy.wasm');
 *   const decision = engine.decide(input); // throws Denial('authorize', 'BASTION_POLICY_ERROR', …)
 *   if (!decision.allow) throw new Denial('authorize', 'BASTION_POLICY_DENIED', decision.reasons.join('; '));
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { LoadedPolicy } from '@open-policy-agent/opa-wasm';
import type { z } from 'zod';
import { Denial } from '../errors.ts';
import { ALLOWED_BUILTINS } from './capabilities.ts';
import { HOST_BUILTINS, hostBuiltins, REFUSED_SDK_BUILTINS } from './builtins.ts';
import { DecisionSchema, PolicyInputSchema, type Decision, type PolicyInput } from './schema.ts';

// The package's ESM entry only re-exports the async loadPolicy, although its
// ESM typings declare loadPolicySync too; the CommonJS entry has both. The
// sync one lets decide() replace a broken instance without going async.
const opaWasm = createRequire(import.meta.url)('@open-policy-agent/opa-wasm') as typeof import('@open-policy-agent/opa-wasm');

// The project's lib (es2024, no DOM) declares no WebAssembly types, and the
// engine needs only this: a compiled module is opaque to it.
type WasmModule = object;
declare const WebAssembly: { compile(bytes: Uint8Array): Promise<WasmModule> };

/**
 * What the SDK keeps of an instance, as far as the engine reads it (pinned
 * SDK version; engine.test.ts covers every field through real evaluations).
 */
interface InstanceInternals {
  wasmInstance: {
    exports: {
      builtins(): number;
      opa_json_dump(addr: number): number;
      opa_eval(reserved: number, entrypoint: number, data: number, input: number, inputLength: number, heap: number, format: number): number;
    };
  };
  mem: { buffer: ArrayBuffer; grow(pages: number): number };
  /** ABI minor version: 2 and later have the one-call opa_eval. */
  minorVersion: number;
  dataAddr: number;
  /** Where the heap starts after the data: the input is written here. */
  dataHeapPtr: number;
}

const WASM_PAGE_BYTES = 65_536;

export const ENTRYPOINT = 'bastion/decision';
/**
 * The grants entrypoint (policies/grants.rego): verified identity in, capabilities out
 * (broker/identity/grants.ts validates both). Optional: a module without it decides
 * calls as before and issues no tokens through the authorization server.
 */
export const GRANTS_ENTRYPOINT = 'bastion/grants';

// In 64 KiB pages: the SDK's default start, and a ceiling so a runaway policy
// or an oversized input fails its evaluation (and is denied) instead of
// growing the broker's memory without bound.
const MEMORY_PAGES_INITIAL = 5;
const MEMORY_PAGES_MAX = 4096;

/** Largest policy input, as UTF-8 JSON, evaluated at all; larger ones are denied before they reach the module. */
export const DEFAULT_MAX_INPUT_BYTES = 2 * 1024 * 1024;

/**
 * A loaded policy. `decide` is synchronous and reuses one WASM instance.
 *
 * @example
 *   const { allow, approval, reasons, obligations } = engine.decide(input);
 *   audit.write({ policy_revision: engine.revision, allow, reasons });
 */
export interface PolicyEngine {
  /**
   * "sha256:<hex>" naming exactly what decides: the WASM module's digest, or,
   * when the policy has data, the digest of the module's digest and the data.
   */
  readonly revision: string;
  /** The bundle manifest's `revision`, when the policy came from a bundle that sets one. */
  readonly bundleRevision: string | undefined;
  /** Where the policy was loaded from (a path or URL), for logs. */
  readonly source: string;
  /** Validates the input, then evaluates the policy; throws Denial('authorize', 'BASTION_POLICY_ERROR') on any failure. */
  decide(input: PolicyInput): Decision;
  /**
   * Evaluates input the broker built itself from parts already validated (a
   * verified token's claims, arguments parsed from JSON, its own context),
   * without validating it again; `decide` for anything else. Same failures.
   */
  decideTrusted(input: PolicyInput): Decision;
  /**
   * Evaluates the `bastion/grants` entrypoint on input the caller validated and
   * returns its raw result, for the caller to validate (broker/identity/grants.ts).
   * Throws Denial('authorize', 'BASTION_POLICY_ERROR') when the module has no such
   * entrypoint, the evaluation fails, or it yields no single result.
   */
  evaluateGrants(input: unknown): unknown;
}

/** A compiled policy and its data, however it was obtained (file, bundle, opa build). */
export interface PolicyModule {
  wasm: Uint8Array;
  /** JSON text of an object, handed to the module as `data` (e.g. a bundle's /data.json). */
  data?: Uint8Array | undefined;
  source: string;
  bundleRevision?: string | undefined;
}

export interface EngineOptions {
  /** Default DEFAULT_MAX_INPUT_BYTES. */
  maxInputBytes?: number;
  /** WASM memory ceiling in 64 KiB pages (default 4096, i.e. 256 MiB). */
  maxMemoryPages?: number;
  /** Clock for time.now_ns, in milliseconds (default Date.now). */
  now?: () => number;
}

/**
 * Reads and compiles a policy built by `policies/build.sh`. Throws (at start-up,
 * not per call) if the file is missing, is not an OPA WASM module, lacks
 * the `bastion/decision` entrypoint, or calls a builtin the broker does not provide.
 *
 * @example
 *   const engine = await loadPolicy(config.policy.wasm);
 *   log.info({ revision: engine.revision }, 'policy loaded');
 */
export async function loadPolicy(wasmPath: string, options: EngineOptions & { data?: Uint8Array } = {}): Promise<PolicyEngine> {
  const { data, ...engineOptions } = options;
  return createPolicyEngine({ wasm: await readFile(wasmPath), data, source: wasmPath }, engineOptions);
}

/**
 * Compiles a policy module, instantiates it once with its data and checks
 * it can run here. Everything that can be checked before the first call is
 * checked here, so a bad policy fails to load rather than failing calls.
 *
 * @example
 *   const bundle = await readBundle(bytes, verification);
 *   const engine = await createPolicyEngine({ wasm: bundle.wasm, data: bundle.data, source: url, bundleRevision: bundle.revision });
 */
export async function createPolicyEngine(policy: PolicyModule, options: EngineOptions = {}): Promise<PolicyEngine> {
  const { wasm, source } = policy;
  const data = policy.data && policy.data.length > 0 ? checkData(policy.data, source) : undefined;
  let module: WasmModule;
  try {
    // Compiled once; a replacement instance after a failure only instantiates.
    module = await WebAssembly.compile(wasm);
  } catch (error) {
    throw new Error(`policy ${source} is not a loadable OPA WASM module: ${describe(error)}`, { cause: error });
  }
  return new WasmPolicyEngine(module, { ...policy, data, revision: revisionOf(wasm, data) }, options);
}

function sha256(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function revisionOf(wasm: Uint8Array, data: ArrayBuffer | undefined): string {
  const module = sha256(wasm);
  return data === undefined ? `sha256:${module}` : `sha256:${sha256(`wasm sha256:${module}\ndata sha256:${sha256(new Uint8Array(data))}\n`)}`;
}

/** Data must be a JSON object; returned as an exact ArrayBuffer, which the SDK passes to the module as raw JSON text. */
function checkData(bytes: Uint8Array, source: string): ArrayBuffer | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw new Error(`policy data for ${source} is not valid JSON: ${describe(error)}`, { cause: error });
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new Error(`policy data for ${source} must be a JSON object`);
  }
  if (Object.keys(parsed).length === 0) return undefined;
  return exactBuffer(bytes);
}

/** The builtins the module imports from the host, by name. */
function importedBuiltins(policy: LoadedPolicy): string[] {
  const { wasmInstance, mem } = policy as unknown as InstanceInternals;
  const start = wasmInstance.exports.opa_json_dump(wasmInstance.exports.builtins());
  const memory = new Uint8Array(mem.buffer);
  let end = start;
  while (memory[end] !== 0) end++;
  return Object.keys(JSON.parse(new TextDecoder().decode(memory.subarray(start, end))) as object);
}

class WasmPolicyEngine implements PolicyEngine {
  readonly revision: string;
  readonly bundleRevision: string | undefined;
  readonly source: string;
  readonly #module: WasmModule;
  readonly #data: ArrayBuffer | undefined;
  readonly #entrypoint: number;
  readonly #grantsEntrypoint: number | undefined;
  readonly #maxInputBytes: number;
  readonly #maxMemoryPages: number;
  readonly #now: () => number;
  readonly #encoder = new TextEncoder();
  readonly #decoder = new TextDecoder();
  #evaluationNs = 0n;
  // Undefined after an evaluation threw: a trap can leave the instance's heap
  // in any state, so the next call starts from a fresh one.
  #policy: LoadedPolicy | undefined;

  constructor(
    module: WasmModule,
    policy: { data: ArrayBuffer | undefined; revision: string; source: string; bundleRevision?: string | undefined },
    options: EngineOptions,
  ) {
    this.revision = policy.revision;
    this.bundleRevision = policy.bundleRevision;
    this.source = policy.source;
    this.#module = module;
    this.#data = policy.data;
    this.#maxInputBytes = options.maxInputBytes ?? DEFAULT_MAX_INPUT_BYTES;
    this.#maxMemoryPages = options.maxMemoryPages ?? MEMORY_PAGES_MAX;
    this.#now = options.now ?? Date.now;

    let first: LoadedPolicy;
    try {
      first = this.#instantiate(false);
    } catch (error) {
      throw new Error(`policy ${this.source} is not a loadable OPA WASM module: ${describe(error)}`, { cause: error });
    }
    const entrypoint: unknown = first.entrypoints[ENTRYPOINT];
    if (typeof entrypoint !== 'number') {
      const found = Object.keys(first.entrypoints as object).join(', ') || 'none';
      throw new Error(`policy ${this.source} has no ${ENTRYPOINT} entrypoint (found: ${found}); build it with policies/build.sh`);
    }
    this.#entrypoint = entrypoint;
    const grants: unknown = first.entrypoints[GRANTS_ENTRYPOINT];
    this.#grantsEntrypoint = typeof grants === 'number' ? grants : undefined;
    const unsupported = importedBuiltins(first).filter((name) => !HOST_BUILTINS.has(name) || REFUSED_SDK_BUILTINS.includes(name));
    if (unsupported.length > 0) {
      throw new Error(
        `policy ${this.source} calls builtin(s) the broker does not provide to WASM policies: ${unsupported.join(', ')} ` +
          `(${ALLOWED_BUILTINS.size} are allowed; build with --capabilities policies/capabilities.json to catch this at build time)`,
      );
    }
    try {
      if (this.#data) first.setData(this.#data);
    } catch (error) {
      throw new Error(`policy ${this.source}: its data does not fit the module's memory: ${describe(error)}`, { cause: error });
    }
    this.#policy = first;
  }

  #instantiate(withData = true): LoadedPolicy {
    // A fresh descriptor each time: the SDK writes into the one it is given.
    const policy = opaWasm.loadPolicySync(
      this.#module,
      { initial: MEMORY_PAGES_INITIAL, maximum: this.#maxMemoryPages },
      hostBuiltins(() => this.#evaluationNs),
    );
    if (withData && this.#data) policy.setData(this.#data);
    return policy;
  }

  decide(input: PolicyInput): Decision {
    let parsedInput: ReturnType<typeof PolicyInputSchema.safeParse>;
    try {
      parsedInput = PolicyInputSchema.safeParse(input);
    } catch (error) {
      // Validation itself can throw, e.g. a stack overflow on absurdly nested arguments.
      throw policyError(`invalid policy input: ${describe(error)}`);
    }
    if (!parsedInput.success) {
      throw policyError(`invalid policy input: ${summarize(parsedInput.error)}`);
    }
    return this.decideTrusted(parsedInput.data);
  }

  decideTrusted(input: PolicyInput): Decision {
    const result = this.#run(this.#entrypoint, input, 'data.bastion.decision');
    const parsedDecision = DecisionSchema.safeParse(result);
    if (!parsedDecision.success) {
      throw policyError(`policy decision is malformed: ${summarize(parsedDecision.error)}`);
    }
    return parsedDecision.data;
  }

  evaluateGrants(input: unknown): unknown {
    if (this.#grantsEntrypoint === undefined) {
      throw policyError(`policy ${this.source} has no ${GRANTS_ENTRYPOINT} entrypoint, so it grants no tokens; build it with policies/build.sh`);
    }
    return this.#run(this.#grantsEntrypoint, input, 'data.bastion.grants');
  }

  /** Serializes, size-checks and evaluates one input at one entrypoint; the single result's value. */
  #run(entrypoint: number, input: unknown, name: string): unknown {
    let json: string;
    try {
      json = JSON.stringify(input);
    } catch (error) {
      throw policyError(`invalid policy input: ${describe(error)}`);
    }
    // UTF-8 takes at least one byte per UTF-16 unit: longer text cannot fit, so it is never encoded.
    if (json.length > this.#maxInputBytes) {
      throw policyError(`policy input of at least ${json.length} bytes exceeds the ${this.#maxInputBytes}-byte limit`);
    }

    let resultSet: unknown;
    try {
      this.#policy ??= this.#instantiate();
      this.#evaluationNs = BigInt(this.#now()) * 1_000_000n;
      resultSet = this.#evaluate(this.#policy, json, entrypoint);
    } catch (error) {
      if (error instanceof Denial) throw error; // refused before the module ran
      this.#policy = undefined;
      throw policyError(`policy evaluation failed: ${describe(error)}`);
    }

    if (!Array.isArray(resultSet) || resultSet.length === 0) {
      throw policyError(`policy produced no decision (${name} is undefined for this input)`);
    }
    if (resultSet.length > 1) {
      throw policyError(`policy produced ${resultSet.length} decisions, expected exactly one`);
    }
    return (resultSet[0] as { result?: unknown } | null)?.result;
  }

  /**
   * One evaluation. With ABI 1.2 the JSON text is encoded straight into the
   * module's memory and the result read with one native scan, which is what
   * the SDK's evaluate does with two extra copies and a byte-by-byte loop.
   */
  #evaluate(policy: LoadedPolicy, json: string, entrypoint: number): unknown {
    const instance = policy as unknown as InstanceInternals;
    if (instance.minorVersion < 2) {
      const encoded = this.#encoder.encode(json);
      this.#checkInputBytes(encoded.byteLength);
      return policy.evaluate(exactBuffer(encoded), entrypoint);
    }
    const { mem } = instance;
    const inputAddr = instance.dataHeapPtr;
    // Room for the worst case (3 bytes per UTF-16 unit); past the page ceiling grow() throws, and the call is denied.
    const shortfall = inputAddr + json.length * 3 - mem.buffer.byteLength;
    if (shortfall > 0) mem.grow(Math.ceil(shortfall / WASM_PAGE_BYTES));
    const { written } = this.#encoder.encodeInto(json, new Uint8Array(mem.buffer, inputAddr));
    this.#checkInputBytes(written);
    const resultAddr = instance.wasmInstance.exports.opa_eval(0, entrypoint, instance.dataAddr, inputAddr, written, inputAddr + written, 0);
    const memory = new Uint8Array(mem.buffer);
    const end = memory.indexOf(0, resultAddr);
    if (end < 0) throw new Error('policy result is not terminated');
    return JSON.parse(this.#decoder.decode(memory.subarray(resultAddr, end)));
  }

  #checkInputBytes(bytes: number): void {
    if (bytes > this.#maxInputBytes) {
      throw policyError(`policy input of ${bytes} bytes exceeds the ${this.#maxInputBytes}-byte limit`);
    }
  }
}

/**
 * The SDK reads a whole ArrayBuffer as the JSON text, so a view into a larger
 * buffer (a file inside a bundle) must be copied out. Not with `.slice()`: on
 * a Node Buffer that is a view too.
 */
function exactBuffer(bytes: Uint8Array): ArrayBuffer {
  const { buffer } = bytes;
  return bytes.byteOffset === 0 && buffer.byteLength === bytes.byteLength ? (buffer as ArrayBuffer) : (new Uint8Array(bytes).buffer as ArrayBuffer);
}

function policyError(reason: string): Denial {
  return new Denial('authorize', 'BASTION_POLICY_ERROR', reason);
}

// The SDK throws strings (opa_abort) and plain objects (missing builtins) as
// well as Errors; keep whichever message there is.
function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === 'string') return error;
  if (typeof error === 'object' && error !== null && typeof (error as { message?: unknown }).message === 'string') {
    return (error as { message: string }).message;
  }
  return String(error);
}

// One line, field paths and messages only: never the offending values, which
// may be arguments the audit log should not repeat in a reason.
function summarize(error: z.ZodError): string {
  const shown = error.issues.slice(0, 3).map((issue) => {
    const where = issue.path.length > 0 ? issue.path.map(String).join('.') : '(root)';
    return `${where}: ${issue.message}`;
  });
  const more = error.issues.length - shown.length;
  return more > 0 ? `${shown.join('; ')}; and ${more} more` : shown.join('; ');
}
