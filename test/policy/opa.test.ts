/**
 * Runs the Rego unit tests with the real OPA CLI (the default policy's, and
 * each example site policy's on top of it) and proves the committed
 * policies/compiled/policy.wasm is a fresh build of policies/*.rego.
 * Requires the toolchain (opa on PATH): bash .ci/toolchain exec npx vitest run test/policy
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DEFAULT_POLICY_FILES } from './helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function run(command: string, args: string[]) {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8' });
  if (result.error) throw new Error(`could not run ${command} (run under bash .ci/toolchain exec): ${result.error.message}`);
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

describe('policies/', () => {
  it('passes its opa test suite', () => {
    const { status, output } = run('opa', ['test', 'policies/', '--ignore', 'compiled', '--ignore', 'examples', '-v']);
    expect(status, output).toBe(0);
    expect(output).toMatch(/^PASS: (\d+)\/\1$/m);
    expect(output).not.toMatch(/\bFAIL\b|\bERROR\b/);
  });

  const examples = readdirSync(`${ROOT}/policies/examples`).filter((name) => name.endsWith('_test.rego'));

  it('has example site policies, each with its own tests', () => {
    expect(examples.map((name) => name.replace(/_test\.rego$/, '')).sort()).toEqual([
      'argument_limits',
      'destructive_quorum',
      'production_approval',
      'read_only',
      'time_window',
      'untrusted_payments',
    ]);
  });

  it.each(examples)('passes examples/%s on top of the default policy', (testFile) => {
    const example = testFile.replace(/_test\.rego$/, '.rego');
    const { status, output } = run('opa', ['test', ...DEFAULT_POLICY_FILES.map((file) => `policies/${file}`), `policies/examples/${example}`, `policies/examples/${testFile}`, '-v']);
    expect(status, output).toBe(0);
    expect(output).toMatch(/^PASS: (\d+)\/\1$/m);
  });

  it('has a committed policy.wasm that matches a fresh build', () => {
    const { status, output } = run('bash', ['policies/build.sh', '--check']);
    expect(status, output).toBe(0);
    expect(output).toContain('policies/compiled/policy.wasm is current');
  });
});
