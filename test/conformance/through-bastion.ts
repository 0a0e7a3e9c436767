/**
 * Runs the official MCP conformance suite through Bastion, once per protocol
 * revision, each at its own wire (`--requirements <revision>`: exactly the
 * server scenarios that revision requires):
 *
 *   conformance client ──HTTP──▶ bastion start ──HTTP──▶ test/fixtures/conformance-upstream.ts
 *
 * Each run has a baseline, test/conformance/expected-failures-<revision>.yaml,
 * naming the scenarios known to fail and why (2025-11-25: only one the suite
 * does not score): a listed scenario that fails is tolerated, an unlisted
 * failure or a listed scenario that now passes fails the run.
 *
 * The suite's client sends no token, so this run (and only this run) enables
 * the anonymous loopback principal; the upstream's names are exposed
 * unprefixed because the suite calls exact names. Everything else is the
 * real broker: policy, audit and the relay of progress, logging, sampling
 * and elicitation. Prints `conformance <revision>: N passed, N failed` per
 * revision, writes test-artifacts/conformance/eras.json, and exits non-zero
 * on any failure the baseline does not name.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const children: ChildProcess[] = [];

/** Spawns a node script and resolves with the first stdout match of `pattern`. */
function startAndWait(args: string[], pattern: RegExp, label: string): Promise<string> {
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`${label} did not start in time; output: ${seen}`)), 30_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString('utf8');
      const match = pattern.exec(seen);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    child.once('exit', (code) => reject(new Error(`${label} exited with ${code} before it was ready; output: ${seen}`)));
  });
}

/** Each revision's required server scenarios, at its own wire; the baseline names known failures. */
const REVISIONS: { revision: string; baseline?: string }[] = [
  { revision: '2025-11-25', baseline: 'test/conformance/expected-failures-2025-11-25.yaml' },
  { revision: '2026-07-28', baseline: 'test/conformance/expected-failures-2026-07-28.yaml' },
];

async function main(): Promise<number> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bastion-conformance-'));
  try {
    const upstream = await startAndWait(
      ['test/fixtures/conformance-upstream.ts', '--http', '0'],
      /listening (\S+)/,
      'conformance upstream',
    );
    const configFile = path.join(dir, 'bastion.yaml');
    await writeFile(
      configFile,
      YAML.stringify({
        state_dir: dir,
        log_level: 'warn',
        server: { port: 0 },
        auth: { anonymous: { enabled: true, sub: 'conformance-suite', cap: [{ tool: '*' }] } },
        // The suite opens a session per scenario and never closes one; all are the same anonymous principal.
        limits: { sessions_per_principal: 1000, principal: { requests_per_minute: 0, burst: 1 } },
        // One upstream session per scenario's session, as many as the sessions it leaves open.
        connectors: [
          // Pinned, as before HTTP connectors negotiated by default: the fixture speaks only 2025-11-25 over HTTP anyway.
          { name: 'conformance', transport: 'http', url: upstream, namespace: false, protocol: '2025-11-25', isolation: { max: 1000, max_per_principal: 1000 } },
          // The input-required-result-* tools, on a 2026-07-28 upstream: the suite's calls cross Bastion's relay.
          { name: 'mrtr', transport: 'stdio', command: process.execPath, args: [path.join(ROOT, 'test/fixtures/conformance-mrtr-upstream.ts')], protocol: '2026-07-28', namespace: false },
        ],
      }),
    );
    const bastion = await startAndWait(
      ['broker/cli.ts', 'start', '--config', configFile],
      /Bastion is listening at (\S+)/,
      'bastion',
    );
    process.stdout.write(`conformance: suite → ${bastion} → ${upstream}\n`);
    let code = 0;
    const eras: Record<string, unknown> = {};
    for (const { revision, baseline } of REVISIONS) {
      const outputDir = path.join(ROOT, 'test-artifacts', 'conformance', revision);
      const args = ['test/fixtures/run-conformance.ts', '--url', bastion, '--output-dir', outputDir];
      if (baseline) args.push('--expected-failures', path.join(ROOT, baseline));
      args.push('--', '--requirements', revision);
      const runner = spawn(process.execPath, args, { cwd: ROOT, stdio: 'inherit' });
      const exit: number = await new Promise((resolve) => runner.once('exit', (c) => resolve(c ?? 1)));
      const summary = JSON.parse(await readFile(path.join(outputDir, 'summary.json'), 'utf8')) as { scenarios?: { scenario: string; passed: boolean; expectedFailure: boolean }[] };
      const scenarios = summary.scenarios ?? [];
      const passed = scenarios.filter((s) => s.passed).map((s) => s.scenario);
      const failed = scenarios.filter((s) => !s.passed).map((s) => s.scenario);
      eras[revision] = { exit, passed: passed.length, failed: failed.length, failing: failed, baseline: baseline ?? null };
      process.stdout.write(`conformance ${revision}: ${passed.length} passed, ${failed.length} failed${baseline ? ' (failures named by the baseline are tolerated)' : ''}\n`);
      code ||= exit;
    }
    await writeFile(path.join(ROOT, 'test-artifacts', 'conformance', 'eras.json'), `${JSON.stringify(eras, null, 2)}\n`);
    const verify = spawn(process.execPath, ['broker/cli.ts', 'audit', 'verify', path.join(dir, 'audit.jsonl')], { cwd: ROOT, stdio: 'inherit' });
    const verified: number = await new Promise((resolve) => verify.once('exit', (c) => resolve(c ?? 1)));
    return code || verified;
  } finally {
    for (const child of children) child.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 300));
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (error: Error) => {
    process.stderr.write(`conformance: ${error.message}\n`);
    for (const child of children) child.kill('SIGKILL');
    process.exit(1);
  },
);
