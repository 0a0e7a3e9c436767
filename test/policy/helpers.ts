/**
 * Shared fixtures for the policy suites: policy inputs, temp directories,
 * real `opa build` runs, and a logger whose lines the tests can read.
 * Requires the toolchain (opa on PATH): bash .ci/toolchain exec npx vitest run test/policy
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import type { Logger } from '../../broker/log.ts';
import type { Capability, PolicyInput } from '../../broker/policy/schema.ts';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const POLICIES = path.join(ROOT, 'policies');
export const COMPILED = path.join(POLICIES, 'compiled/policy.wasm');
export const CAPABILITIES = path.join(POLICIES, 'capabilities.json');

export function input(
  overrides: {
    sub?: string;
    cap?: Capability[];
    tool?: string;
    connector?: string;
    risk?: PolicyInput['tool']['risk'];
    args?: PolicyInput['arguments'];
    method?: PolicyInput['context']['method'];
    time?: string;
  } = {},
): PolicyInput {
  return {
    version: 1,
    principal: { sub: overrides.sub ?? 'agent:ci-bot', iss: 'https://issuer.example', act: [], cap: overrides.cap ?? [{ tool: '*' }], anonymous: false },
    tool: { name: overrides.tool ?? 'demo__read_file', connector: overrides.connector ?? 'demo', risk: overrides.risk ?? 'low', descriptor_hash: 'sha256:00' },
    arguments: overrides.args ?? {},
    context: { time: overrides.time ?? '2026-01-05T10:00:00Z', transport: 'http', session: 's-1', method: overrides.method ?? 'tools/call' },
  };
}

/** A temp directory removed by the returned cleanup. */
export function tempDir(prefix = 'bastion-policy-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The decision policy's source files (package bastion), without their tests; grants.rego is the other entrypoint. */
export const DEFAULT_POLICY_FILES = ['bastion.rego', 'flows.rego'] as const;

/** A copy of the default policy (decision, flow rules and grants) and its tests in `dir` (a Rego source directory). */
export function copyDefaultPolicy(dir: string): void {
  mkdirSync(dir, { recursive: true });
  for (const file of [...DEFAULT_POLICY_FILES, 'grants.rego']) {
    cpSync(path.join(POLICIES, file), path.join(dir, file));
    cpSync(path.join(POLICIES, file.replace(/\.rego$/, '_test.rego')), path.join(dir, file.replace(/\.rego$/, '_test.rego')));
  }
}

export function opa(args: string[], cwd?: string): string {
  return execFileSync('opa', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Builds Rego files with the real opa CLI into a bundle; returns the bundle path. */
export function buildBundle(
  dir: string,
  out: string,
  options: { entrypoint?: string; capabilities?: boolean; signingKey?: string; signingAlg?: string; revision?: string; extra?: string[] } = {},
): string {
  const args = ['build', '-t', 'wasm', '-e', options.entrypoint ?? 'bastion/decision', '-o', out, '--ignore', '*_test.rego'];
  if (options.capabilities !== false) args.push('--capabilities', CAPABILITIES);
  if (options.signingKey) args.push('--bundle', '--signing-key', options.signingKey, '--signing-alg', options.signingAlg ?? 'ES256');
  if (options.revision) args.push('--revision', options.revision);
  args.push(...(options.extra ?? []), '.');
  opa(args, dir);
  return out;
}

/** Writes `rego` into a fresh source dir and compiles it; returns the module bytes. */
export function compileRego(workDir: string, name: string, rego: string, options: { entrypoint?: string; capabilities?: boolean; extra?: string[] } = {}): Uint8Array {
  const src = path.join(workDir, name);
  mkdirSync(src, { recursive: true });
  writeFileSync(path.join(src, 'policy.rego'), rego);
  const bundle = buildBundle(src, path.join(workDir, `${name}.tar.gz`), options);
  return execFileSync('tar', ['-xzPf', bundle, '-O', '/policy.wasm']);
}

export function readJson(file: string): unknown {
  return JSON.parse(readFileSync(file, 'utf8'));
}

/** A pino logger that keeps its lines for assertions. */
export function capturingLogger(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines: () => lines };
}

/** Resolves after `ms`, or when `check` holds (polled every 10 ms). */
export async function waitFor(check: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
