/**
 * `bastion redteam`: runs the attack corpus against fresh brokers started
 * from the operator's configuration (every defense on, then each ablatable
 * defense off in turn) and reports per attack class how often attacks got
 * through, what stopped them, and what each defense costs in latency.
 *
 * @example
 *   const code = await redteamCommand(['--quick', '--report', 'redteam.html']);
 *   process.exit(code); // 1 when an attack succeeded against the full configuration
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { ConfigError, loadConfig } from '../config.ts';
import { CorpusError, DEFAULT_CORPUS_DIR, loadCorpus } from './corpus.ts';
import { htmlReport, terminalReport } from './report.ts';
import { defaultConfigurations, runCampaign } from './run.ts';

export const REDTEAM_HELP = `usage: bastion redteam [--config FILE] [--report OUT.html] [--json OUT.json] [--quick]
                      [--corpus DIR]... [--only CLASS]... [--repetitions N] [--parallel N]
       bastion redteam --chains [--config FILE] [--report OUT.html] [--json OUT.json]
                      [--chains-dir DIR]... [--parallel N]

Attacks Bastion the way a hostile agent, a stolen token or a turned upstream
would, and measures what each defense stops. For each configuration (every
defense on, then tokens, policy, approvals, filters and quotas switched off
one at a time) it starts a fresh broker from FILE in a temporary state
directory, with the recording test upstream as connector "rec" (plus a copy
with a poisoned tool description as "poisoned"), runs every case of the
corpus through the MCP SDK client or raw HTTP, and judges success by what
reached the upstream or the agent (for leaks, by the broker's live session
count on /metrics). Your connectors are not used; your policy, limits,
filters and approval settings are what is measured.

  --config FILE      base configuration (default: the embedded default)
  --report FILE      write a self-contained HTML report (no script, strict CSP)
  --json FILE        write every result as JSON
  --quick            one repetition per case, 30 benign calls, short waits
  --corpus DIR       add corpus files (YAML) from DIR, or one file; repeatable
                     (broker/redteam/corpus/known-races holds a case kept
                     out of the default run)
  --only CLASS       run only these attack classes; repeatable
  --repetitions N    attempts per case (default 3, quick 1)
  --parallel N       brokers attacked at once (default 3); benign calls are
                     timed first, round-robin across all brokers, with no
                     attack traffic

With --chains it runs the flow chains instead (broker/redteam/chains/*.yaml):
multi-step attacks (read then pay, exfiltrate, delete, book; a sub-agent as
confused deputy) and benign tasks over mail, calendar, files, chat,
payments, travel and web upstreams, played by a worst-case agent that obeys
every injected instruction with a token holding every tool of its
environment. Configurations: flow control off, on, on with each flow rule
off in turn, and on with each rule alone (policy data). It reports attack success (the harmful call
reached a tool with no human), utility (benign tasks done with no human),
approval burden and the p50 latency cost, per configuration. The harness
approves benign tasks' parked calls and denies attacks', only to count them.

  --chains           run the flow chains, not the corpus
  --chains-dir DIR   add chain files (YAML) from DIR, or one file; repeatable

Exit status: 0 when no attack succeeded against the full configuration,
1 when one did (or the full configuration could not be run), 2 on bad usage.
Attacking an already running broker (--url/--token) is not supported yet.`;

/** The operator's config document as written, with the relative paths Bastion resolves made absolute. */
async function baseDocument(file: string | undefined): Promise<Record<string, unknown>> {
  if (!file) return {};
  // Full validation first, for the same error messages `bastion start` gives.
  const config = await loadConfig(file);
  const text = await readFile(file, 'utf8');
  const document = (file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text)) ?? {};
  if (typeof document !== 'object' || Array.isArray(document)) throw new ConfigError(`config ${file}: not an object`);
  const base = document as Record<string, unknown>;
  if (base.policy && typeof base.policy === 'object') (base.policy as Record<string, unknown>).wasm = config.policy.wasm;
  const issuers = (base.auth as { issuers?: unknown[] } | undefined)?.issuers;
  if (Array.isArray(issuers)) {
    issuers.forEach((issuer, i) => {
      const resolved = config.auth.issuers[i];
      if (issuer && typeof issuer === 'object' && resolved && 'jwks_file' in resolved) (issuer as Record<string, unknown>).jwks_file = resolved.jwks_file;
    });
  }
  return base;
}

async function chainsCommand(values: { config?: string | undefined; report?: string | undefined; json?: string | undefined; parallel?: string | undefined; 'chains-dir'?: string[] | undefined }): Promise<number> {
  const { loadChains, DEFAULT_CHAINS_DIR } = await import('./chains.ts');
  const { runChainCampaign, chainConfigurations } = await import('./chain-run.ts');
  const { chainHtmlReport, chainTerminalReport } = await import('./chain-report.ts');
  const chains = await loadChains([DEFAULT_CHAINS_DIR, ...(values['chains-dir'] ?? []).map((dir) => path.resolve(dir))]);
  const parallel = positiveInteger('--parallel', values.parallel);
  const configurations = chainConfigurations();
  const scenarios = chains.environments.flatMap((e) => e.scenarios);
  process.stderr.write(
    `bastion redteam --chains: ${scenarios.filter((s) => s.kind === 'attack').length} attacks, ${scenarios.filter((s) => s.kind === 'benign').length} benign tasks, configurations ${configurations.map((c) => c.name).join(', ')}\n`,
  );
  const result = await runChainCampaign({
    chains,
    base: await baseDocument(values.config),
    configurations,
    ...(parallel ? { parallel } : {}),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(chainTerminalReport(result));
  await writeOutputs(values.report, () => chainHtmlReport(result), values.json, () => `${JSON.stringify(result, null, 2)}\n`);
  const full = result.configurations.find((c) => c.name === 'full');
  return !full || full.error || full.summary.attack_successes > 0 ? 1 : 0;
}

async function writeOutputs(report: string | undefined, html: () => string, json: string | undefined, text: () => string): Promise<void> {
  for (const [file, content] of [
    [report, html],
    [json, text],
  ] as const) {
    if (!file) continue;
    await mkdir(path.dirname(path.resolve(file)), { recursive: true });
    await writeFile(file, content());
    process.stderr.write(`wrote ${file}\n`);
  }
}

function positiveInteger(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 100) throw new UsageError(`${flag}: a whole number from 1 to 100`);
  return n;
}

class UsageError extends Error {}

/** Runs `bastion redteam` with `argv` (the words after "redteam"); resolves to the exit status. */
export async function redteamCommand(argv: string[]): Promise<number> {
  try {
    const { values } = parseArgs({
      args: argv,
      options: {
        config: { type: 'string' },
        report: { type: 'string' },
        json: { type: 'string' },
        quick: { type: 'boolean', default: false },
        corpus: { type: 'string', multiple: true },
        only: { type: 'string', multiple: true },
        repetitions: { type: 'string' },
        parallel: { type: 'string' },
        url: { type: 'string' },
        token: { type: 'string' },
        chains: { type: 'boolean', default: false },
        'chains-dir': { type: 'string', multiple: true },
        help: { type: 'boolean' },
      },
    });
    if (values.help) {
      process.stdout.write(`${REDTEAM_HELP}\n`);
      return 0;
    }
    if (values.chains) {
      if (values.corpus || values.only || values.repetitions || values.quick) throw new UsageError('--chains runs the flow chains; --corpus, --only, --repetitions and --quick are for the corpus');
      return await chainsCommand(values);
    }
    if (values['chains-dir']) throw new UsageError('--chains-dir goes with --chains');
    if (values.url || values.token) throw new UsageError('--url/--token (attacking a running broker) is not supported yet; bastion redteam starts its own brokers');
    const corpus = await loadCorpus([DEFAULT_CORPUS_DIR, ...(values.corpus ?? []).map((dir) => path.resolve(dir))]);
    if (values.only?.length) {
      const unknown = values.only.filter((id) => !corpus.classes.some((c) => c.id === id));
      if (unknown.length) throw new UsageError(`--only: no attack class ${unknown.join(', ')} (have: ${corpus.classes.map((c) => c.id).join(', ')})`);
      corpus.classes = corpus.classes.filter((c) => values.only!.includes(c.id));
    }
    const repetitions = positiveInteger('--repetitions', values.repetitions);
    const parallel = positiveInteger('--parallel', values.parallel);
    const base = await baseDocument(values.config);
    const configurations = defaultConfigurations();
    process.stderr.write(
      `bastion redteam: ${corpus.classes.length} attack classes, ${corpus.classes.reduce((n, c) => n + c.cases.length, 0)} cases, configurations ${configurations.map((c) => c.name).join(', ')}\n`,
    );
    const result = await runCampaign({
      corpus,
      base,
      quick: values.quick,
      configurations,
      ...(repetitions ? { repetitions } : {}),
      ...(parallel ? { parallel } : {}),
      log: (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(terminalReport(result));
    await writeOutputs(values.report, () => htmlReport(result), values.json, () => `${JSON.stringify(result, null, 2)}\n`);
    return result.breached ? 1 : 0;
  } catch (error) {
    if (error instanceof UsageError || (error instanceof TypeError && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS'))) {
      process.stderr.write(`bastion redteam: ${error.message}\n`);
      return 2;
    }
    if (error instanceof ConfigError || error instanceof CorpusError || (error instanceof Error && error.name === 'ChainsError')) {
      process.stderr.write(`bastion redteam: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
}

// Runnable on its own too (node broker/redteam/cli.ts ...), as `bastion redteam` is.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  redteamCommand(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      process.stderr.write(`bastion redteam: ${(error as Error).stack ?? String(error)}\n`);
      process.exit(1);
    },
  );
}
