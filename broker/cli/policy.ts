/**
 * `bastion policy`: the policy kit for security teams. Every verb wraps the
 * real OPA CLI (build, test, check, fmt, eval) with Bastion's settings: the
 * `bastion/decision` entrypoint, the WASM capabilities, and the directory
 * layout (tests beside the sources, compiled/ and examples/ kept apart).
 *
 * @example
 *   process.exitCode = await policyCommand(['test', 'policies']);
 */
import { existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { readBuiltBundle, readBundle } from '../policy/bundle.ts';
import { formatCapabilities, wasmCapabilities, type OpaCapabilities } from '../policy/capabilities.ts';
import { createPolicyEngine, type PolicyEngine } from '../policy/engine.ts';
import { formatPolicyInputSchema, POLICY_INPUT_SCHEMA_FILE } from '../policy/input-schema.ts';
import { DEFAULT_CAPABILITIES, OpaCli, OpaNotFound, SOURCE_IGNORES } from '../policy/opa.ts';
import { BUNDLE_ALGORITHMS } from '../policy/signature.ts';
import type { PolicyInput } from '../policy/schema.ts';
import { describeFlowInput } from '../flows/explain.ts';
import { evaluateGrants, type GrantsInput } from '../identity/grants.ts';

const DEFAULT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../policies');

const HELP: Record<string, string> = {
  main: `usage: bastion policy <command> [options]

Build, test and try Bastion's Rego policies with the real OPA toolchain.

commands:
  build [DIR]              compile DIR to DIR/compiled/policy.wasm (opa build -t wasm), optionally a signed bundle
  test [DIR]               run DIR's opa tests and each example's, and print the coverage
  eval --input FILE        decide one policy input and show which rules held
  fmt [DIR]                format the Rego with opa fmt (--check: only report)
  lint [DIR]               opa check --strict, against the builtins WASM policies may use
  schema [--write]         print the policy input JSON Schema (or write policies/input.schema.json)
  capabilities [--write]   print the WASM capabilities (or write policies/capabilities.json)

DIR defaults to the repository's policies/. Run "bastion policy <command> --help" for options.`,
  build: `usage: bastion policy build [DIR] [--out FILE] [--bundle FILE [--signing-key PEM --signing-alg ALG] [--revision REV]]

Compiles the Rego in DIR (tests, compiled/, examples/ and hidden files left
out) with opa build -t wasm -e bastion/decision -e bastion/grants and the capabilities in
policies/capabilities.json, so a builtin the broker cannot run in WASM fails
here. The module is byte-identical to policies/build.sh's.

  --out FILE          where to write the module (default DIR/compiled/policy.wasm)
  --bundle FILE       also write the OPA bundle (policy.wasm, data.json, .manifest)
  --signing-key PEM   sign the bundle (opa build --signing-key); needs --bundle
  --signing-alg ALG   ${BUNDLE_ALGORITHMS.join(', ')} (default RS256, as opa)
  --revision REV      the bundle manifest's revision`,
  test: `usage: bastion policy test [DIR] [--threshold PERCENT] [--verbose]

Runs opa test on DIR (examples/ excluded), then each DIR/examples/NAME.rego
with its NAME_test.rego on top of DIR's policy, then prints the coverage of
DIR's own tests. Exits 1 when a test fails or coverage is under --threshold.

  --threshold PERCENT  minimum coverage of DIR's policy (default 0)
  --verbose            print every test, as opa test -v`,
  eval: `usage: bastion policy eval --input FILE [--entrypoint decision|grants] [--policy DIR|FILE.wasm|BUNDLE.tar.gz] [--data FILE] [--explain]

Decides one policy input (a JSON document like policies/input.schema.json;
"-" reads stdin) the way the broker does: compiled to WASM and evaluated by
Bastion's engine. Prints the input's flow (what the agent's context holds,
the call's flow labels and destinations, tainted arguments) when it has one,
the decision, then the rules that held.

--entrypoint grants evaluates bastion/grants (policies/grants.rego) instead:
the input is a sign-in ({version, identity, client, scopes, grant_type,
context}) and the answer the capabilities its agent's token would carry. An
input with an "identity" member is taken as a grants input without the flag.

"Rules that held" are the rules of package bastion and of every site package
(bastion.site.*) that have a value for this input: a rule that is true or
defined, a partial set that is not empty. They come from evaluating the Rego
source with opa eval, so they are only shown when --policy is a directory.
Rego has no order in which rules "fire"; this is the set whose bodies
succeeded. Functions are not listed. --explain adds OPA's full trace.

  --entrypoint E  decision (bastion/decision) or grants (bastion/grants); default: by the input's shape
  --policy PATH   a Rego directory (default policies/, built with opa build), a .wasm or a bundle
  --data FILE     JSON data for the policy (data.bastion.tool_risk, …), for a directory or .wasm
  --explain       also print opa eval --explain=full`,
  fmt: `usage: bastion policy fmt [DIR] [--check]

Formats every .rego file under DIR with opa fmt. With --check, changes
nothing, lists the files that are not formatted and exits 1 if there are any.`,
  lint: `usage: bastion policy lint [DIR]

opa check --strict on DIR's sources against policies/capabilities.json (so a
builtin WASM policies cannot use is reported), then on everything including
tests. Runs Regal too when a regal binary is on PATH.`,
  schema: `usage: bastion policy schema [--write]

Prints the JSON Schema of the policy input (version 1), generated from the
zod schema the engine validates with. --write updates policies/input.schema.json.`,
  capabilities: `usage: bastion policy capabilities [--write]

Prints the capabilities Bastion builds with: opa capabilities --current, with
the builtins cut down to those a WASM policy can run in the broker (no I/O,
no regex.split). --write updates policies/capabilities.json.`,
};

/** What a subcommand writes; injectable so tests can read it. */
export interface PolicyCommandIo {
  out: (text: string) => void;
  err: (text: string) => void;
  stdin?: () => Promise<string>;
}

const defaultIo: PolicyCommandIo = {
  out: (text) => void process.stdout.write(text),
  err: (text) => void process.stderr.write(text),
  stdin: async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  },
};

class UsageError extends Error {}

/**
 * Runs `bastion policy <argv…>`; resolves with the exit code (0 ok, 1 failed, 2 usage).
 *
 * @example
 *   process.exitCode = await policyCommand(process.argv.slice(3));
 */
export async function policyCommand(argv: string[], io: PolicyCommandIo = defaultIo): Promise<number> {
  const [verb, ...rest] = argv;
  const opa = new OpaCli();
  try {
    switch (verb) {
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        io.out(`${HELP.main}\n`);
        return verb === undefined ? 2 : 0;
      case 'build':
        return await build(rest, opa, io);
      case 'test':
        return await test(rest, opa, io);
      case 'eval':
        return await evaluate(rest, opa, io);
      case 'fmt':
        return await fmt(rest, opa, io);
      case 'lint':
        return await lint(rest, opa, io);
      case 'schema':
        return await schema(rest, io);
      case 'capabilities':
        return await capabilities(rest, opa, io);
      default:
        throw new UsageError(`unknown command: policy ${verb}\n\n${HELP.main}`);
    }
  } catch (error) {
    if (error instanceof UsageError || (error instanceof TypeError && String((error as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS'))) {
      io.err(`bastion policy: ${error.message}\n`);
      return 2;
    }
    io.err(`bastion policy: ${error instanceof OpaNotFound ? error.message : (error as Error).message}\n`);
    return 1;
  }
}

function oneDir(positionals: string[]): string {
  if (positionals.length > 1) throw new UsageError('give at most one DIR');
  const dir = path.resolve(positionals[0] ?? DEFAULT_DIR);
  if (!existsSync(dir)) throw new UsageError(`no such directory: ${dir}`);
  return dir;
}

function printed(io: PolicyCommandIo, text: string): number {
  io.out(text);
  return 0;
}

function report(io: PolicyCommandIo, output: string): void {
  if (output) io.out(`${output}\n`);
}

async function build(argv: string[], opa: OpaCli, io: PolicyCommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      out: { type: 'string' },
      bundle: { type: 'string' },
      'signing-key': { type: 'string' },
      'signing-alg': { type: 'string' },
      revision: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return printed(io, `${HELP.build}\n`);
  const dir = oneDir(positionals);
  if ((values['signing-key'] || values.revision) && !values.bundle) throw new UsageError('--signing-key and --revision shape the bundle: give --bundle FILE too');
  const alg = values['signing-alg'] ?? 'RS256';
  if (!(BUNDLE_ALGORITHMS as readonly string[]).includes(alg)) throw new UsageError(`--signing-alg must be one of ${BUNDLE_ALGORITHMS.join(', ')}`);
  const extra = [
    ...(values['signing-key'] ? ['--signing-key', path.resolve(values['signing-key']), '--signing-alg', alg] : []),
    ...(values.revision ? ['--revision', values.revision] : []),
  ];
  const built = await opa.buildWasm(dir, { extra, bundleMode: Boolean(values['signing-key']) });
  if (!built.ok) {
    io.err(`${built.output}\n`);
    return 1;
  }
  // Just built by opa in this process: there is nothing to verify it against.
  const bundle = await readBuiltBundle(built.bundle);
  const out = path.resolve(values.out ?? path.join(dir, 'compiled/policy.wasm'));
  await mkdir(path.dirname(out), { recursive: true });
  await writeFile(out, bundle.wasm);
  const engine = await createPolicyEngine({ wasm: bundle.wasm, data: bundle.data, source: out });
  io.out(`wrote ${out} (${bundle.wasm.byteLength} bytes, revision ${engine.revision})\n`);
  if (values.bundle) {
    const target = path.resolve(values.bundle);
    await mkdir(path.dirname(target), { recursive: true });
    await writeFile(target, built.bundle);
    io.out(`wrote ${target}${values['signing-key'] ? ` (signed, ${alg})` : ''}\n`);
  }
  return 0;
}

async function test(argv: string[], opa: OpaCli, io: PolicyCommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { threshold: { type: 'string' }, verbose: { type: 'boolean' }, help: { type: 'boolean' } },
  });
  if (values.help) return printed(io, `${HELP.test}\n`);
  const dir = oneDir(positionals);
  const threshold = Number(values.threshold ?? 0);
  if (!Number.isFinite(threshold) || threshold < 0 || threshold > 100) throw new UsageError('--threshold must be a percentage');
  const verbose = values.verbose ? ['-v'] : [];

  const own = await opa.test(dir, verbose);
  io.out(`${path.relative(process.cwd(), dir) || '.'}: ${own.ok ? 'ok' : 'FAILED'}\n`);
  report(io, own.output);
  let ok = own.ok;

  const examplesDir = path.join(dir, 'examples');
  if (existsSync(examplesDir)) {
    for (const file of (await readdir(examplesDir)).filter((name) => name.endsWith('_test.rego')).sort()) {
      const example = file.replace(/_test\.rego$/, '.rego');
      // The example and its tests on top of DIR's sources (DIR's own tests expect no site rules).
      const result = await opa.test(dir, [...verbose, '--ignore', '*_test.rego', path.join('examples', example), path.join('examples', file)]);
      io.out(`examples/${example}: ${result.ok ? 'ok' : 'FAILED'}\n`);
      report(io, result.output);
      ok &&= result.ok;
    }
  }

  if (own.ok) {
    const coverage = await opa.test(dir, ['--coverage', '--format', 'json']);
    const percent = coverage.ok ? (JSON.parse(coverage.stdout) as { coverage?: number }).coverage : undefined;
    if (percent === undefined) {
      io.err(`could not compute coverage:\n${coverage.output}\n`);
      return 1;
    }
    io.out(`coverage: ${percent.toFixed(1)}%${threshold > 0 ? ` (threshold ${threshold}%)` : ''}\n`);
    if (percent < threshold) ok = false;
  }
  return ok ? 0 : 1;
}

async function readJson(file: string, io: PolicyCommandIo, what: string): Promise<unknown> {
  const text = file === '-' ? await (io.stdin ?? defaultIo.stdin!)() : await readFile(file, 'utf8');
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UsageError(`${what} ${file} is not valid JSON: ${(error as Error).message}`);
  }
}

async function evaluate(argv: string[], opa: OpaCli, io: PolicyCommandIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      input: { type: 'string' },
      entrypoint: { type: 'string' },
      policy: { type: 'string' },
      data: { type: 'string' },
      explain: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return printed(io, `${HELP.eval}\n`);
  if (!values.input) throw new UsageError('eval: --input FILE is required');
  if (values.entrypoint !== undefined && values.entrypoint !== 'decision' && values.entrypoint !== 'grants') {
    throw new UsageError('eval: --entrypoint is decision or grants');
  }
  const input = (await readJson(values.input, io, 'input')) as PolicyInput;
  const rule = (values.entrypoint ?? (input !== null && typeof input === 'object' && 'identity' in input ? 'grants' : 'decision')) as 'decision' | 'grants';
  const policyPath = path.resolve(values.policy ?? DEFAULT_DIR);
  const dataBytes = values.data ? await readFile(values.data) : undefined;

  let engine: PolicyEngine;
  let sourceDir: string | undefined;
  if (existsSync(policyPath) && statSync(policyPath).isDirectory()) {
    sourceDir = policyPath;
    const built = await opa.buildWasm(policyPath);
    if (!built.ok) {
      io.err(`${built.output}\n`);
      return 1;
    }
    const bundle = await readBundle(built.bundle);
    engine = await createPolicyEngine({ wasm: bundle.wasm, data: dataBytes ?? bundle.data, source: policyPath });
  } else if (policyPath.endsWith('.tar.gz')) {
    if (dataBytes) throw new UsageError('--data does not apply to a bundle: its data is in the bundle');
    // eval enforces nothing, so it reads the bundle as is; the broker checks signatures.
    const bundle = readBuiltBundle(await readFile(policyPath));
    if (bundle.signed) io.out('(bundle signature not checked by eval)\n');
    engine = await createPolicyEngine({ wasm: bundle.wasm, data: bundle.data, source: policyPath, bundleRevision: bundle.revision });
  } else {
    engine = await createPolicyEngine({ wasm: await readFile(policyPath), data: dataBytes, source: policyPath });
  }

  let decision;
  try {
    decision = rule === 'grants' ? evaluateGrants(engine, input as unknown as GrantsInput) : engine.decide(input);
  } catch (error) {
    io.out(`no ${rule === 'grants' ? 'grant (the broker issues no token)' : 'decision (the broker denies)'}: ${(error as { reason?: string }).reason ?? (error as Error).message}\n`);
    return 1;
  }
  if (rule !== 'grants' && input.flow) io.out(`${describeFlowInput(input.flow)}\n`);
  io.out(`${rule} (WASM, revision ${engine.revision}):\n${JSON.stringify(decision, null, 2)}\n`);

  if (!sourceDir) {
    io.out(`\nrules that held: not available for a compiled policy (give --policy DIR); the reasons above are the policy's own account.\n`);
    return 0;
  }
  // opa eval reads the input from a file; stdin was consumed above.
  const scratch = await mkdtemp(path.join(tmpdir(), 'bastion-policy-eval-'));
  try {
    const inputFile = path.join(scratch, 'input.json');
    await writeFile(inputFile, JSON.stringify(input));
    const common = [
      ...SOURCE_IGNORES.filter((pattern) => pattern !== '.*').flatMap((pattern) => ['--ignore', pattern]),
      '--ignore', '*_test.rego',
      '--data', sourceDir,
      ...(values.data ? ['--data', path.resolve(values.data)] : []),
      '--input', inputFile,
    ];
    const rules = await opa.run(['eval', '--format', 'json', ...common, 'data.bastion']);
    if (!rules.ok) {
      io.err(`opa eval failed:\n${rules.output}\n`);
      return 1;
    }
    const value = (JSON.parse(rules.stdout) as { result?: { expressions?: { value?: unknown }[] }[] }).result?.[0]?.expressions?.[0]?.value;
    const data = dataBytes ? (JSON.parse(dataBytes.toString('utf8')) as { bastion?: unknown }).bastion : undefined;
    const dataKeys = new Set(data !== null && typeof data === 'object' ? Object.keys(data) : []);
    io.out(`\nrules that held (opa eval of ${sourceDir}):\n`);
    for (const line of heldRules(value, '', dataKeys)) io.out(`  ${line}\n`);
    const goDecision = (value as Record<string, unknown> | undefined)?.[rule];
    if (JSON.stringify(sortKeys(goDecision)) !== JSON.stringify(sortKeys(decision))) {
      io.out(`\nWARNING: Go OPA decides differently from the WASM module for this input:\n${JSON.stringify(goDecision, null, 2)}\n`);
    }
    if (values.explain) {
      const trace = await opa.run(['eval', '--format', 'pretty', '--explain', 'full', ...common, `data.bastion.${rule}`]);
      io.out(`\nopa eval --explain=full:\n${trace.output}\n`);
    }
    return 0;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(Object.keys(value).sort().map((key) => [key, sortKeys((value as Record<string, unknown>)[key])]));
}

/** "name = value" for every rule with a truthy value; site packages are descended into. */
function heldRules(value: unknown, prefix: string, dataKeys: Set<string>): string[] {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return [];
  const lines: string[] = [];
  for (const key of Object.keys(value).sort()) {
    const rule = (value as Record<string, unknown>)[key];
    if (prefix === '' && (key === 'decision' || dataKeys.has(key))) continue;
    if (prefix === '' && key === 'site') {
      for (const site of Object.keys((rule as object) ?? {}).sort()) {
        lines.push(...heldRules((rule as Record<string, unknown>)[site], `site.${site}.`, new Set()));
      }
      continue;
    }
    const empty = rule === false || rule === '' || (Array.isArray(rule) && rule.length === 0) || (rule !== null && typeof rule === 'object' && Object.keys(rule).length === 0);
    if (!empty) lines.push(`${prefix}${key} = ${JSON.stringify(rule)}`);
  }
  return lines;
}

async function fmt(argv: string[], opa: OpaCli, io: PolicyCommandIo): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { check: { type: 'boolean' }, help: { type: 'boolean' } } });
  if (values.help) return printed(io, `${HELP.fmt}\n`);
  const dir = oneDir(positionals);
  const result = await opa.run(values.check ? ['fmt', '--list', '--fail', '.'] : ['fmt', '--write', '--list', '.'], dir);
  if (values.check && !result.ok) {
    io.err(`not formatted (run bastion policy fmt):\n${result.output}\n`);
    return 1;
  }
  if (!result.ok) {
    io.err(`${result.output}\n`);
    return 1;
  }
  io.out(result.output ? `formatted:\n${result.output}\n` : 'all files formatted\n');
  return 0;
}

async function lint(argv: string[], opa: OpaCli, io: PolicyCommandIo): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { help: { type: 'boolean' } } });
  if (values.help) return printed(io, `${HELP.lint}\n`);
  const dir = oneDir(positionals);
  const checked = await opa.check(dir);
  if (!checked.ok) {
    io.err(`${checked.output}\n`);
    return 1;
  }
  io.out('opa check --strict: ok\n');
  const regal = new OpaCli({ binary: 'regal' });
  if (await regal.available()) {
    const linted = await regal.run(['lint', '.'], dir);
    report(io, linted.output);
    if (!linted.ok) return 1;
  }
  return 0;
}

async function schema(argv: string[], io: PolicyCommandIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { write: { type: 'boolean' }, help: { type: 'boolean' } } });
  if (values.help) return printed(io, `${HELP.schema}\n`);
  if (!values.write) return printed(io, formatPolicyInputSchema());
  await writeFile(POLICY_INPUT_SCHEMA_FILE, formatPolicyInputSchema());
  io.out(`wrote ${POLICY_INPUT_SCHEMA_FILE}\n`);
  return 0;
}

async function capabilities(argv: string[], opa: OpaCli, io: PolicyCommandIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { write: { type: 'boolean' }, help: { type: 'boolean' } } });
  if (values.help) return printed(io, `${HELP.capabilities}\n`);
  const current = await opa.run(['capabilities', '--current']);
  if (!current.ok) {
    io.err(`${current.output}\n`);
    return 1;
  }
  const text = formatCapabilities(wasmCapabilities(JSON.parse(current.stdout) as OpaCapabilities));
  if (!values.write) return printed(io, text);
  await writeFile(DEFAULT_CAPABILITIES, text);
  io.out(`wrote ${DEFAULT_CAPABILITIES}\n`);
  return 0;
}
