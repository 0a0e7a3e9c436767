/**
 * Stage 3, authorize: evaluates the compiled Rego policy in-process.
 *
 * The engine is a dumb, total enforcement point: it validates the input,
 * runs `data.bastion.decision` in the OPA WebAssembly module and validates
 * the answer. Every rule lives in the Rego (policies/); every failure here
 * (bad input, a WASM abort, no result, a malformed decision) is a denial.
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
import { DecisionSchema, PolicyInputSchema, type Decision, type PolicyInput } from './schema.ts';

// The package's ESM entry only re-exports the async loadPolicy, although its
// ESM typings declare loadPolicySync too; the CommonJS entry has both. The
// sync one lets decide() replace a broken instance without going async.
const opaWasm = createRequire(import.meta.url)('@open-policy-agent/opa-wasm') as typeof import('@open-policy-agent/opa-wasm');

// The project's lib (es2024, no DOM) declares no WebAssembly types, and the
// engine needs only this: a compiled module is opaque to it.
type WasmModule = object;
declare const WebAssembly: { compile(bytes: Uint8Array): Promise<WasmModule> };

const ENTRYPOINT = 'bastion/decision';

// In 64 KiB pages: the SDK's default start, and a ceiling so a runaway policy
// or an oversized input fails its evaluation (and is denied) instead of
// growing the broker's memory without bound.
const MEMORY_PAGES_INITIAL = 5;
const MEMORY_PAGES_MAX = 4096;

/**
 * A loaded policy. `decide` is synchronous and reuses one WASM instance.
 *
 * @example
 *   const { allow, approval, reasons, obligations } = engine.decide(input);
 *   audit.write({ policy_revision: engine.revision, allow, reasons });
 */
export interface PolicyEngine {
  /** "sha256:<hex>" of the WASM file, recorded with every decision. */
  readonly revision: string;
  /** Evaluates the policy; throws Denial('authorize', 'BASTION_POLICY_ERROR') on any failure. */
  decide(input: PolicyInput): Decision;
}

/**
 * Reads and compiles a policy built by `policies/build.sh`. Throws (at start-up,
 * not per call) if the file is missing, is not an OPA WASM module, or lacks
 * the `bastion/decision` entrypoint.
 *
 * @example
 *   const engine = await loadPolicy(config.policy.wasm);
 *   log.info({ revision: engine.revision }, 'policy loaded');
 */
export async function loadPolicy(wasmPath: string): Promise<PolicyEngine> {
  const bytes = await readFile(wasmPath);
  const revision = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  let module: WasmModule;
  let first: LoadedPolicy;
  try {
    // Compiled once; a replacement instance after a failure only instantiates.
    module = await WebAssembly.compile(bytes);
    first = instantiate(module);
  } catch (error) {
    throw new Error(`policy ${wasmPath} is not a loadable OPA WASM module: ${describe(error)}`, { cause: error });
  }
  const entrypoint: unknown = first.entrypoints[ENTRYPOINT];
  if (typeof entrypoint !== 'number') {
    const found = Object.keys(first.entrypoints as object).join(', ') || 'none';
    throw new Error(`policy ${wasmPath} has no ${ENTRYPOINT} entrypoint (found: ${found}); build it with policies/build.sh`);
  }
  return new WasmPolicyEngine(revision, module, first, entrypoint);
}

function instantiate(module: WasmModule): LoadedPolicy {
  // A fresh descriptor each time: the SDK writes into the one it is given.
  return opaWasm.loadPolicySync(module, { initial: MEMORY_PAGES_INITIAL, maximum: MEMORY_PAGES_MAX });
}

class WasmPolicyEngine implements PolicyEngine {
  readonly revision: string;
  readonly #module: WasmModule;
  readonly #entrypoint: number;
  // Undefined after an evaluation threw: a trap can leave the instance's heap
  // in any state, so the next call starts from a fresh one.
  #policy: LoadedPolicy | undefined;

  constructor(revision: string, module: WasmModule, policy: LoadedPolicy, entrypoint: number) {
    this.revision = revision;
    this.#module = module;
    this.#policy = policy;
    this.#entrypoint = entrypoint;
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

    let resultSet: unknown;
    try {
      this.#policy ??= instantiate(this.#module);
      resultSet = this.#policy.evaluate(parsedInput.data, this.#entrypoint);
    } catch (error) {
      this.#policy = undefined;
      throw policyError(`policy evaluation failed: ${describe(error)}`);
    }

    if (!Array.isArray(resultSet) || resultSet.length === 0) {
      throw policyError(`policy produced no decision (data.bastion.decision is undefined for this input)`);
    }
    if (resultSet.length > 1) {
      throw policyError(`policy produced ${resultSet.length} decisions, expected exactly one`);
    }
    const parsedDecision = DecisionSchema.safeParse((resultSet[0] as { result?: unknown } | null)?.result);
    if (!parsedDecision.success) {
      throw policyError(`policy decision is malformed: ${summarize(parsedDecision.error)}`);
    }
    return parsedDecision.data;
  }
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
