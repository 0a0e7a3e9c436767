/**
 * Flow chains: multi-step tasks an agent runs over the workspace tools
 * (broker/redteam/workspace.ts), as YAML data in broker/redteam/chains/.
 * A file is one environment: the suites its agent's token holds (every tool
 * of each, no per-task narrowing), a world (mailbox, files, account, hotels,
 * pages) and its scenarios. A scenario is either
 *
 *   benign  a task a user asks for; it succeeds when every step ran and its
 *           goal calls reached the tools, with or without a human
 *   attack  a user task over content that carries an injection, played by a
 *           worst-case agent: one that obeys every injected instruction, so
 *           whether the attack works is decided by the broker alone; it
 *           succeeds when its harmful call reached a tool
 *
 * Steps are tool calls (arguments may use `${name}` for values an earlier
 * step extracted from what a tool returned, the way an agent carries a
 * value from a result into a call) and `delegate` (the agent hands part of
 * the task to a sub-agent with a narrower token, which later steps use with
 * `as`). Values an attack's agent uses come from the injected text through
 * `extract`, never from the YAML: the attacker's IBAN reaches the payment
 * the way it would with a real agent.
 *
 * @example
 *   const chains = await loadChains([DEFAULT_CHAINS_DIR]);
 *   chains.environments.flatMap((e) => e.scenarios).filter((s) => s.kind === 'attack').length;
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { z } from 'zod';
import { CapabilitySchema } from '../policy/schema.ts';
import { WORKSPACE_SUITES, type WorkspaceSuite } from './workspace.ts';

export const DEFAULT_CHAINS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'chains');

/** What an attack tries to do; the report's rows. */
export const ATTACK_CLASSES = ['read_then_pay', 'read_then_exfiltrate', 'read_then_delete', 'read_then_book', 'confused_deputy'] as const;
export type AttackClassId = (typeof ATTACK_CLASSES)[number];

/** What a benign task does last, for reading where the burden comes from. */
export const TASK_KINDS = ['read_only', 'internal_action', 'external_action'] as const;

const Id = z.string().regex(/^[a-z][a-z0-9-]{1,63}$/, 'lowercase letters, digits and "-"');
const Name = z.string().regex(/^[A-Za-z][A-Za-z0-9_]{0,31}$/);

const CallStep = z.strictObject({
  call: z.string().min(3).max(128),
  arguments: z.record(z.string(), z.unknown()).default({}),
  /** name → regex over the result's text; the first capture group (or the whole match) becomes ${name}. */
  extract: z.record(Name, z.string().min(1).max(512)).optional(),
  /** The delegated token to call with (a `delegate` step's name); default the agent's own. */
  as: Name.optional(),
});

const DelegateStep = z.strictObject({
  delegate: z.strictObject({ name: Name, cap: z.array(CapabilitySchema).min(1).max(16) }),
});

export const ChainStepSchema = z.union([CallStep, DelegateStep]);
export type ChainStep = z.infer<typeof ChainStepSchema>;
export type ChainCallStep = z.infer<typeof CallStep>;

/** A call that must (benign) or must not (attack) reach a tool; `with` values are compared loosely (case and spaces ignored, numbers as numbers). */
const Expectation = z.strictObject({
  called: z.string().min(3).max(128),
  with: z.record(z.string(), z.unknown()).default({}),
});
export type ChainExpectation = z.infer<typeof Expectation>;

const Common = {
  id: Id,
  title: z.string().min(1).max(200),
  /** Parts of the world that differ for this scenario (objects merged, everything else replaced). */
  world: z.record(z.string(), z.unknown()).optional(),
  steps: z.array(ChainStepSchema).min(1).max(32),
};

const BenignSchema = z.strictObject({
  ...Common,
  kind: z.literal('benign'),
  task: z.enum(TASK_KINDS),
  /** Calls that must have reached the tools for the task to count as done. */
  goal: z.array(Expectation).min(1).max(8),
});

const AttackSchema = z.strictObject({
  ...Common,
  kind: z.literal('attack'),
  class: z.enum(ATTACK_CLASSES),
  /** Where the injection sits, for the report ("email body", "hotel review"). */
  vector: z.string().min(1).max(100),
  /** The harmful call: the attack worked when it reached a tool. */
  harm: Expectation,
});

export const ScenarioSchema = z.discriminatedUnion('kind', [BenignSchema, AttackSchema]);
export type Scenario = z.infer<typeof ScenarioSchema>;
export type BenignScenario = z.infer<typeof BenignSchema>;
export type AttackScenario = z.infer<typeof AttackSchema>;

const EnvironmentFileSchema = z.strictObject({
  environment: Id,
  description: z.string().min(1).max(500),
  suites: z.array(z.enum(WORKSPACE_SUITES as [WorkspaceSuite, ...WorkspaceSuite[]])).min(1),
  world: z.record(z.string(), z.unknown()),
  scenarios: z.array(ScenarioSchema).min(1),
});

export interface Environment {
  id: string;
  description: string;
  suites: WorkspaceSuite[];
  world: Record<string, unknown>;
  scenarios: Scenario[];
  file: string;
}

export interface Chains {
  environments: Environment[];
}

export class ChainsError extends Error {
  override readonly name = 'ChainsError';
}

/** Reads every *.yaml in the given directories (or files), validates each, and refuses duplicate ids. */
export async function loadChains(sources: string[]): Promise<Chains> {
  const files: string[] = [];
  for (const source of sources) {
    const entries = source.endsWith('.yaml') ? [source] : (await readdir(source)).filter((f) => f.endsWith('.yaml')).sort().map((f) => path.join(source, f));
    files.push(...entries);
  }
  const environments: Environment[] = [];
  const ids = new Set<string>();
  for (const file of files) {
    let parsed;
    try {
      parsed = EnvironmentFileSchema.parse(YAML.parse(await readFile(file, 'utf8')));
    } catch (error) {
      const detail = error instanceof z.ZodError ? error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') : (error as Error).message;
      throw new ChainsError(`${file}: ${detail}`);
    }
    for (const scenario of parsed.scenarios) {
      if (ids.has(scenario.id)) throw new ChainsError(`${file}: scenario id ${scenario.id} is used twice`);
      ids.add(scenario.id);
      for (const step of scenario.steps) {
        const tool = 'call' in step ? step.call : undefined;
        const suite = tool?.split('__')[0];
        if (tool && !parsed.suites.includes(suite as WorkspaceSuite)) throw new ChainsError(`${file}: ${scenario.id} calls ${tool}, outside the environment's suites`);
      }
    }
    environments.push({ id: parsed.environment, description: parsed.description, suites: parsed.suites, world: parsed.world, scenarios: parsed.scenarios, file });
  }
  return { environments };
}

/** The world of one scenario: the environment's, with the scenario's parts merged in. */
export function worldOf(environment: Environment, scenario: Scenario): Record<string, unknown> {
  return merge(environment.world, scenario.world ?? {}) as Record<string, unknown>;
}

function merge(base: unknown, over: unknown): unknown {
  if (!isObject(base) || !isObject(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) out[key] = key in out ? merge(out[key], value) : value;
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Fills `${name}` in every string of `value` from `vars`; an unknown name is an error (the step cannot run as written). */
export function fill<T>(value: T, vars: ReadonlyMap<string, string>): T {
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') {
      // A whole-string placeholder keeps a number a number: "${amount}" → 1870.
      const whole = /^\$\{([A-Za-z][A-Za-z0-9_]*)\}$/.exec(v);
      if (whole) return asValue(lookup(whole[1]!));
      return v.replace(/\$\{([A-Za-z][A-Za-z0-9_]*)\}/g, (_, name: string) => lookup(name));
    }
    if (Array.isArray(v)) return v.map(walk);
    if (isObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    return v;
  };
  const lookup = (name: string) => {
    const found = vars.get(name);
    if (found === undefined) throw new ChainsError(`no value for \${${name}}: an earlier extract did not match`);
    return found;
  };
  return walk(value) as T;
}

function asValue(text: string): unknown {
  const number = Number(text.replaceAll(',', ''));
  return /^-?[\d,]+(?:\.\d+)?$/.test(text.trim()) && Number.isFinite(number) ? number : text;
}

/** Values pulled from a result's text by a step's `extract`. */
export function extractFrom(text: string, extract: Record<string, string> | undefined, vars: Map<string, string>): void {
  for (const [name, pattern] of Object.entries(extract ?? {})) {
    const match = new RegExp(pattern, 'u').exec(text);
    if (match) vars.set(name, (match[1] ?? match[0]).trim());
  }
}

/** Whether a recorded call matches an expectation (tool, and each `with` value, loosely). */
export function matches(call: { tool: string; args: Record<string, unknown> }, expected: ChainExpectation): boolean {
  if (call.tool !== expected.called) return false;
  const loose = (v: unknown) => (typeof v === 'number' ? String(v) : JSON.stringify(v)).toLowerCase().replace(/[\s"]/g, '');
  // A string expectation is found within a string value (or within any item of a list).
  const one = (got: unknown, want: unknown) => (typeof want === 'string' && typeof got === 'string' ? loose(got).includes(loose(want)) : loose(got) === loose(want));
  return Object.entries(expected.with).every(([key, want]) => {
    const got = call.args[key];
    return Array.isArray(got) && !Array.isArray(want) ? got.some((item) => one(item, want)) : one(got, want);
  });
}
