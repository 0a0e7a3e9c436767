/**
 * The attack corpus: YAML data files, one zod schema, the types inferred
 * from it. A file names an attack class (what threat it exercises and which
 * defense layers exist to stop it) and lists cases; a case is a list of
 * declarative steps and a success predicate that says what it means that the
 * attack worked. The executors for each step kind live in steps.ts, the
 * predicates in predicates.ts; the YAML never holds code.
 *
 * Strings in steps may carry placeholders, filled in per attempt:
 *   ${marker}          a random string unique to the attempt, to find its calls upstream
 *   ${sub:NAME}        the subject of the token named NAME in this attempt
 *   ${tags:TEXT}       TEXT spelled in invisible Unicode tag characters
 *   ${pad:N}           N filler characters (oversized arguments)
 *   ${nested_json:N}   a JSON object nested N levels deep (for raw bodies)
 *
 * Files are read in name order (hence the numeric prefixes); a class may
 * span several files. Subdirectories are not read unless named with
 * --corpus (known-races/ holds a case kept out of the default run: a race
 * that would make the verdict flaky).
 *
 * @example
 *   const corpus = await loadCorpus([DEFAULT_CORPUS_DIR]);
 *   for (const attackClass of corpus.classes) console.log(attackClass.id, attackClass.cases.length);
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { z } from 'zod';
import { CapabilitySchema } from '../policy/schema.ts';
import { HEADLESS_ATTACKS } from './headless.ts';
import { OAUTH_ATTACKS } from './oauth.ts';

/** The corpus shipped with Bastion. */
export const DEFAULT_CORPUS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'corpus');

/** The switches `defenses_off` accepts, in the order the ablation runs them. */
export const ABLATABLE = ['tokens', 'policy', 'approvals', 'filters', 'quotas', 'sandbox_limits'] as const;
export type AblatableDefense = (typeof ABLATABLE)[number];

/**
 * Everything that can stop an attack. The ablatable ones have a
 * `defenses_off` switch; the others (descriptor pins, delegation
 * attenuation, the HTTP front door's checks, plugin names that cannot be
 * taken) are always on.
 */
export const DEFENSES = [...ABLATABLE, 'pins', 'delegation', 'front_door', 'plugin_identity', 'authorization_server'] as const;
export type Defense = (typeof DEFENSES)[number];

/** Build features a case may need; a case needing one the build lacks is reported "not applicable" (run.ts BUILD_FEATURES). */
export const FEATURES = ['plugins'] as const;

const Name = z.string().regex(/^[A-Za-z][A-Za-z0-9_-]{0,63}$/, 'letters, digits, "_" and "-", starting with a letter');
const ToolName = z.string().min(1).max(256);
const Arguments = z.record(z.string(), z.unknown()).default({});
const Millis = z.number().int().positive().max(120_000);

const TokenStep = z.strictObject({
  /** The name later steps use for this token. */
  name: Name,
  /** Subject; defaults to a fresh one per attempt. May be "${sub:OTHER}" to impersonate another token's subject. */
  sub: z.string().min(1).max(256).optional(),
  /** Capabilities the token is signed with. */
  cap: z.array(CapabilitySchema).default([]),
  ttl: z.string().default('2m'),
  /**
   * How the token is wrong, if it is: alg_none (unsigned), wrong_key (signed by
   * the attacker's key under the issuer's kid), tampered_cap (signed, then the
   * payload swapped for one carrying `claimed_cap`), expired, wrong_audience,
   * hs256_public_key (HMAC keyed with the issuer's public key).
   */
  forge: z.enum(['alg_none', 'wrong_key', 'tampered_cap', 'expired', 'wrong_audience', 'hs256_public_key']).optional(),
  /** For tampered_cap: the capabilities written into the payload after signing. */
  claimed_cap: z.array(CapabilitySchema).optional(),
  /** A single-use token (`use: once`). */
  use_once: z.boolean().default(false),
  /** Binds the token (cnf.jkt) to the DPoP key of this name, made on first use. */
  bind_key: Name.optional(),
});

const CallStep = z.strictObject({
  token: Name,
  tool: ToolName,
  arguments: Arguments,
  /** Send DPoP proofs signed with the key of this name (the owner's key, or an attacker's). */
  dpop_key: Name.optional(),
});

const StartCallStep = CallStep.extend({
  /** Name of the pending call, for wait_parked, decide and await_call. */
  name: Name,
});

const WaitParkedStep = z.strictObject({
  call: Name,
  /** Gives up (and goes on) when the call is not parked within this time, e.g. because it already ran. */
  within_ms: Millis.default(5_000),
});

const AwaitCallStep = z.strictObject({
  call: Name,
  /** The agent's patience: the call is cancelled if it has not ended by then. */
  within_ms: Millis.default(2_000),
});

const ApproverStep = z.strictObject({
  name: Name,
  /** Approver subject; defaults to a fresh approver identity. */
  sub: z.string().min(1).max(256).optional(),
  /** Sign in under the subject of this token (an agent approving its own call). */
  sub_of: Name.optional(),
});

const DecideStep = z.strictObject({
  approver: Name,
  /** The parked call to decide on. */
  call: Name,
  /**
   * approve_unless_warned: an approver who reads the page and approves what looks
   * harmless, but denies a request the page flags for hidden characters.
   */
  decision: z.enum(['approve', 'deny', 'approve_unless_warned']).default('approve'),
  /** valid: echo the session's CSRF token; missing: send none; wrong: send a guess. */
  csrf: z.enum(['valid', 'missing', 'wrong']).default('valid'),
  /** An Origin header (e.g. a cross-site page); none by default. */
  origin: z.string().optional(),
  /** actual: the hash the approver was shown; forged: another one (argument swap). */
  call_hash: z.enum(['actual', 'forged']).default('actual'),
});

const DelegateStep = z.strictObject({
  /** The parent token, presented as bearer. */
  token: Name,
  /** Name of the child token, when the broker issues one. */
  name: Name,
  sub: z.string().min(1).max(256).optional(),
  cap: z.array(CapabilitySchema).min(1),
  ttl: z.string().default('1m'),
});

const OpenSessionStep = z.strictObject({ token: Name, name: Name });

const RawStep = z.strictObject({
  /** Bearer token; none sends no Authorization header. */
  token: Name.optional(),
  /** A session opened by open_session. */
  session: Name.optional(),
  /** A JSON-RPC message (or any JSON); placeholders are filled in. */
  body: z.unknown(),
  headers: z.record(z.string(), z.string()).default({}),
  /** Sends the same request this many times, one after another (e.g. requests that must leave nothing behind). */
  repeat: z.number().int().positive().max(1_000).default(1),
});

const FloodStep = z.strictObject({
  token: Name,
  tool: ToolName,
  arguments: Arguments,
  /** How many calls; "auto" is well over the configured burst (2 × burst + 30). */
  count: z.union([z.number().int().positive().max(5_000), z.literal('auto')]).default('auto'),
  /** Calls in flight at once. */
  concurrency: z.number().int().positive().max(256).default(24),
});

const ListToolsStep = z.strictObject({ token: Name });

/** Waits, as a well-behaved agent does, until the broker says the tool list changed (or the time is up). */
const WaitListChangedStep = z.strictObject({ token: Name, within_ms: Millis.default(2_000) });

const PluginName = z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'lowercase letters, digits and "-", starting with a letter, at most 32');

/**
 * Installs a hostile plugin (manifest fields and its JavaScript) for the
 * sandbox classes. Cases using it need the `plugins` feature.
 */
const InstallPluginStep = z
  .strictObject({
    /** A plugin name (lowercase letters, digits, "-"); its tools are called <name>__<tool>. Unique in the corpus. */
    name: PluginName,
    /**
     * The name its manifest declares, when not `name`: the plugin is then configured
     * without a name, so it would take this one (and with it another plugin's tools' grants).
     */
    manifest_name: PluginName.optional(),
    /** The plugin's single JavaScript file. */
    code: z.string().min(1).max(65_536),
    tools: z
      .array(
        z.strictObject({
          name: Name,
          description: z.string().default(''),
          /** The tool's inputSchema in the manifest (default: any object). */
          input_schema: z.record(z.string(), z.unknown()).optional(),
        }),
      )
      .min(1),
    /** Host capabilities the manifest asks for. */
    capabilities: z.array(z.string()).default([]),
    /** Host capabilities the operator grants (with their default quotas); none unless listed. */
    grants: z.array(z.enum(['kv', 'log'])).default([]),
    /** A longer wall-clock limit than the corpus default (1 s), for a case whose many host calls must not time out on a loaded machine. */
    wall_ms: z.number().int().positive().max(30_000).optional(),
  })
  .refine((plugin) => plugin.manifest_name === undefined || !plugin.grants.includes('kv'), {
    message: "a plugin configured without a name cannot be granted kv (Bastion refuses such a configuration: kv is keyed by the operator's name)",
    path: ['grants'],
  });
const SleepStep = z.strictObject({ ms: Millis });

/** An attack on the authorization server (oauth.ts) or on headless and approver identity (headless.ts); a token the attacker obtains is kept under `name`. */
const OAuthStep = z.strictObject({ attack: z.enum([...OAUTH_ATTACKS, ...HEADLESS_ATTACKS]), name: Name });

/** One step: an object with exactly one step-kind key, plus `setup` for steps that are not the attack itself. */
function step<K extends string, S extends z.ZodType>(kind: K, schema: S) {
  return z.strictObject({
    [kind]: schema,
    /** A preparation step (e.g. a legitimate approval): its refusals are not counted as a defense stopping the attack. */
    setup: z.boolean().default(false),
  } as { [P in K]: S } & { setup: z.ZodDefault<z.ZodBoolean> });
}

export const StepSchema = z.union([
  step('token', TokenStep),
  step('call', CallStep),
  step('start_call', StartCallStep),
  step('wait_parked', WaitParkedStep),
  step('await_call', AwaitCallStep),
  step('approver', ApproverStep),
  step('decide', DecideStep),
  step('delegate', DelegateStep),
  step('open_session', OpenSessionStep),
  step('raw', RawStep),
  step('flood', FloodStep),
  step('list_tools', ListToolsStep),
  step('wait_list_changed', WaitListChangedStep),
  step('install_plugin', InstallPluginStep),
  step('sleep', SleepStep),
  step('oauth', OAuthStep),
]);
export type Step = z.infer<typeof StepSchema>;

/** What it means that the attack worked. */
export const PredicateSchema = z.union([
  /** The upstream tool (named as agents see it, e.g. rec__transfer) received a call during the attempt. */
  z.strictObject({
    upstream_called: z.strictObject({
      tool: ToolName,
      /** Only calls whose arguments carry the attempt's marker count. */
      marker: z.boolean().default(false),
      min_count: z.number().int().positive().default(1),
      /** Only calls after the first call of this tool (e.g. after rec__mutate) count. */
      after: ToolName.optional(),
    }),
  }),
  /** What the agent received (tool result content) matches this regular expression. */
  z.strictObject({ agent_received: z.strictObject({ pattern: z.string().min(1), flags: z.string().regex(/^[imsu]*$/).default('') }) }),
  /** The broker stopped answering its health check, or took longer than `ms` to. */
  z.strictObject({ broker_degraded: z.strictObject({ ms: Millis.default(2_000) }) }),
  /**
   * The call started under this name was still running, neither answered nor
   * parked for approval, when await_call gave up on it: nothing bounded it.
   */
  z.strictObject({ call_unbounded: z.strictObject({ call: Name }) }),
  /** More marked calls reached the upstream tool than the configured quota lets through in the flood's duration. */
  z.strictObject({ upstream_exceeds_quota: z.strictObject({ tool: ToolName }) }),
  /** An oauth step did what the attacker wanted (a code, token or redirect where it must not go). */
  z.strictObject({ oauth_breached: z.strictObject({}) }),
  /**
   * Nothing the agent received matches this regular expression: an answer a
   * working broker gives (e.g. a bystander plugin's) never came.
   */
  z.strictObject({ agent_starved: z.strictObject({ pattern: z.string().min(1), flags: z.string().regex(/^[imsu]*$/).default('') }) }),
  /** An audit record of a call of this tool, written during the attempt, is longer than `bytes` (canonical JSON). */
  z.strictObject({ audit_record_over: z.strictObject({ tool: ToolName, bytes: z.number().int().positive() }) }),
  /**
   * The broker holds at least `min` more live MCP sessions (its bastion_sessions_open gauge) once
   * the attempt is over and its own clients have closed their sessions than before it began: the
   * attack left sessions behind that nothing will close.
   */
  z.strictObject({ sessions_grew: z.strictObject({ min: z.number().int().positive().default(1) }) }),
]);
export type Predicate = z.infer<typeof PredicateSchema>;

export const CaseSchema = z.strictObject({
  id: Name,
  description: z.string().min(1),
  requires: z.array(z.enum(FEATURES)).default([]),
  steps: z.array(StepSchema).min(1).max(200),
  success: z.union([PredicateSchema, z.strictObject({ any: z.array(PredicateSchema).min(1) })]),
});
export type AttackCase = z.infer<typeof CaseSchema>;

export const ClassFileSchema = z.strictObject({
  class: Name,
  title: z.string().min(1),
  /** The threat (THREATS.md row, OWASP LLM category) this class exercises. */
  threat: z.string().min(1),
  /** The layers that exist to stop this class; the ablation checks each one matters. */
  defended_by: z.array(z.enum(DEFENSES)).min(1),
  requires: z.array(z.enum(FEATURES)).default([]),
  cases: z.array(CaseSchema).default([]),
});

export interface AttackClass {
  id: string;
  title: string;
  threat: string;
  defendedBy: Defense[];
  requires: string[];
  cases: AttackCase[];
  /** The files the class came from. */
  sources: string[];
}

export interface Corpus {
  classes: AttackClass[];
}

export class CorpusError extends Error {
  override readonly name = 'CorpusError';
}

/** Parses one corpus file; the error names the file and each bad field by path. */
export function parseClassFile(text: string, source: string): z.infer<typeof ClassFileSchema> {
  let document: unknown;
  try {
    document = YAML.parse(text);
  } catch (error) {
    throw new CorpusError(`cannot parse ${source}: ${(error as Error).message}`);
  }
  const parsed = ClassFileSchema.safeParse(document);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `  ${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`);
    throw new CorpusError(`invalid corpus file ${source}:\n${lines.join('\n')}`);
  }
  return parsed.data;
}

/**
 * Reads every *.yaml / *.yml file of each directory (or a single file).
 * Files naming the same class are merged; case ids must be unique.
 */
export async function loadCorpus(locations: string[]): Promise<Corpus> {
  const files: string[] = [];
  for (const location of locations) {
    const entries = await readdir(location).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOTDIR') return undefined;
      throw new CorpusError(`cannot read corpus ${location}: ${error.message}`);
    });
    if (!entries) files.push(location);
    else files.push(...entries.filter((e) => /\.ya?ml$/.test(e)).sort().map((e) => path.join(location, e)));
  }
  const byId = new Map<string, AttackClass>();
  const caseIds = new Set<string>();
  // Every plugin is installed on every broker before it starts, so one name means one plugin.
  const plugins = new Map<string, { spec: string; caseId: string }>();
  for (const file of files) {
    const data = parseClassFile(await readFile(file, 'utf8'), file);
    let attackClass = byId.get(data.class);
    if (!attackClass) {
      attackClass = { id: data.class, title: data.title, threat: data.threat, defendedBy: [...data.defended_by], requires: [...data.requires], cases: [], sources: [] };
      byId.set(data.class, attackClass);
    } else {
      for (const layer of data.defended_by) if (!attackClass.defendedBy.includes(layer)) attackClass.defendedBy.push(layer);
    }
    attackClass.sources.push(file);
    for (const attackCase of data.cases) {
      if (caseIds.has(attackCase.id)) throw new CorpusError(`${file}: case id "${attackCase.id}" is used twice in the corpus`);
      if (attackCase.steps.some((s) => 'install_plugin' in s) && ![...data.requires, ...attackCase.requires].includes('plugins')) {
        throw new CorpusError(`${file}: case "${attackCase.id}" installs a plugin, so it must declare requires: [plugins]`);
      }
      for (const step of attackCase.steps) {
        if (!('install_plugin' in step)) continue;
        const { name, ...rest } = step.install_plugin;
        const spec = JSON.stringify(rest);
        const seen = plugins.get(name);
        if (seen && seen.spec !== spec) throw new CorpusError(`${file}: case "${attackCase.id}" installs a plugin named "${name}" that differs from the one case "${seen.caseId}" installs; give each plugin its own name`);
        plugins.set(name, { spec, caseId: attackCase.id });
      }
      caseIds.add(attackCase.id);
      // A class-level requirement applies to each of its cases.
      attackCase.requires = [...new Set([...data.requires, ...attackCase.requires])];
      attackClass.cases.push(attackCase);
    }
  }
  if (byId.size === 0) throw new CorpusError(`no corpus files found in ${locations.join(', ')}`);
  return { classes: [...byId.values()] };
}
