/**
 * Runs the Rego unit tests with the real OPA CLI and proves the committed
 * policies/compiled/policy.wasm is a fresh build of policies/*.rego.
 * Requires the toolchain (opa on PATH): bash .ci/toolchain exec npx vitest run test/policy
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function run(command: string, args: string[]) {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8' });
  if (result.error) throw new Error(`could not run ${command} (run under bash .ci/toolchain exec): ${result.error.message}`);
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

describe('policies/', () => {
  it('passes its opa test suite', () => {
    const { status, output } = run('opa', ['test', 'policies/', '--ignore', 'compiled', '-v']);
    expect(status, output).toBe(0);
    expect(output).toMatch(/^PASS: (\d+)\/\1$/m);
    expect(output).not.toMatch(/\bFAIL\b|\bERROR\b/);
  });

  it('has a committed policy.wasm that matches a fresh build', () => {
    const { status, output } = run('bash', ['policies/build.sh', '--check']);
    expect(status, output).toBe(0);
    expect(output).toContain('policies/compiled/policy.wasm is current');
  });
});
