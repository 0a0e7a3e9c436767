/**
 * The real OPA toolchain, run as a child process: Bastion never compiles or
 * tests Rego itself. Used by the hot-reloading holder (build and test a
 * directory before swapping) and by `bastion policy`.
 *
 * @example
 *   const opa = new OpaCli();
 *   const tests = await opa.test('policies');
 *   if (tests.ok) { const { bundle } = await opa.buildWasm('policies'); }
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ENTRYPOINT, GRANTS_ENTRYPOINT } from './engine.ts';

/** policies/capabilities.json in this repository. */
export const DEFAULT_CAPABILITIES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../policies/capabilities.json');

/** Never part of a policy: hidden files, the committed build output, example site policies. */
export const SOURCE_IGNORES: readonly string[] = ['.*', 'compiled', 'examples'];

export interface OpaRun {
  ok: boolean;
  /** stdout and stderr together, for messages. */
  output: string;
  stdout: string;
}

export class OpaNotFound extends Error {
  override readonly name = 'OpaNotFound';
}

export interface OpaOptions {
  /** The opa binary (default: `opa` on PATH). */
  binary?: string;
  /** Default DEFAULT_CAPABILITIES. */
  capabilities?: string;
  timeoutMs?: number;
}

export interface WasmBuild {
  /** The bundle.tar.gz bytes opa wrote. */
  bundle: Uint8Array;
}

function ignores(extra: readonly string[] = []): string[] {
  return [...SOURCE_IGNORES, ...extra].flatMap((pattern) => ['--ignore', pattern]);
}

export class OpaCli {
  readonly binary: string;
  readonly capabilities: string;
  readonly #timeoutMs: number;

  constructor(options: OpaOptions = {}) {
    this.binary = options.binary ?? 'opa';
    this.capabilities = options.capabilities ?? DEFAULT_CAPABILITIES;
    this.#timeoutMs = options.timeoutMs ?? 60_000;
  }

  /** Runs opa; resolves with its outcome (a non-zero exit is `ok: false`), rejects with OpaNotFound when there is no opa. */
  run(args: string[], cwd?: string): Promise<OpaRun> {
    return new Promise((resolve, reject) => {
      execFile(this.binary, args, { cwd, timeout: this.#timeoutMs, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (error, stdout, stderr) => {
        if (error && (error as NodeJS.ErrnoException).code === 'ENOENT') {
          reject(new OpaNotFound(`the opa CLI (${this.binary}) is not installed or not on PATH; run under bash .ci/toolchain exec`));
          return;
        }
        resolve({ ok: !error, stdout, output: `${stdout}${stderr}`.trim() || (error?.message ?? '') });
      });
    });
  }

  async available(): Promise<boolean> {
    try {
      return (await this.run(['version'])).ok;
    } catch {
      return false;
    }
  }

  /**
   * `opa build -t wasm -e bastion/decision -e bastion/grants --capabilities …` of a
   * directory's sources (tests excluded). Built from inside the directory so the file
   * names the compiler embeds do not depend on the caller's cwd: the module
   * is byte-identical to policies/build.sh's. A directory that defines no
   * `grants` rule is built with the decision entrypoint alone (it then issues no
   * tokens through the authorization server).
   */
  async buildWasm(dir: string, options: { extra?: string[]; bundleMode?: boolean } = {}): Promise<WasmBuild & OpaRun> {
    const out = await mkdtemp(path.join(tmpdir(), 'bastion-opa-build-'));
    try {
      const bundleFile = path.join(out, 'bundle.tar.gz');
      // Signing needs bundle mode (-b), where the directory is the bundle root
      // (its .manifest is used) and an ignore pattern of ".*" would match the
      // root itself, so hidden files are not ignored there.
      const ignored = options.bundleMode
        ? [...SOURCE_IGNORES.filter((pattern) => pattern !== '.*'), '*_test.rego'].flatMap((pattern) => ['--ignore', pattern])
        : ignores(['*_test.rego']);
      const build = (entrypoints: string[]) =>
        this.run(
          [
            'build', ...(options.bundleMode ? ['--bundle'] : []), '--target', 'wasm', ...entrypoints.flatMap((e) => ['--entrypoint', e]),
            '--capabilities', this.capabilities, ...ignored, ...(options.extra ?? []), '--output', bundleFile, '.',
          ],
          dir,
        );
      let run = await build([ENTRYPOINT, GRANTS_ENTRYPOINT]);
      if (!run.ok && run.output.includes(`entrypoint "${GRANTS_ENTRYPOINT}" does not refer to a rule`)) run = await build([ENTRYPOINT]);
      return { ...run, bundle: run.ok ? await readFile(bundleFile) : new Uint8Array() };
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  }

  /** `opa test` of a directory (its own tests, examples excluded). */
  test(dir: string, extra: string[] = []): Promise<OpaRun> {
    return this.run(['test', ...ignores(), ...extra, '.'], dir);
  }

  /** `opa check --strict`: sources against Bastion's capabilities, then everything (tests included) against OPA's. */
  async check(dir: string): Promise<OpaRun> {
    const sources = await this.run(['check', '--strict', '--capabilities', this.capabilities, ...ignores(['*_test.rego']), '.'], dir);
    if (!sources.ok) return sources;
    return this.run(['check', '--strict', ...ignores(), '.'], dir);
  }
}
