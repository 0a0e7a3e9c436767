/**
 * Safe builds: policies/capabilities.json is current, lists exactly what
 * the WASM target and the broker's host builtins implement, and a policy
 * that reaches for anything else fails at build time, or at the latest at
 * load time, never at call time.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { afterAll, describe, expect, it } from 'vitest';
import { BASTION_BUILTINS, SDK_BUILTINS } from '../../broker/policy/builtins.ts';
import { formatCapabilities, WASM_NATIVE_BUILTINS, wasmCapabilities, type OpaCapabilities } from '../../broker/policy/capabilities.ts';
import { createPolicyEngine } from '../../broker/policy/engine.ts';
import { CAPABILITIES, compileRego, tempDir } from './helpers.ts';

const { dir: work, cleanup } = tempDir('bastion-capabilities-');
afterAll(cleanup);

const VALID = '{"allow": true, "approval": {"required": false, "quorum": 1, "reason": ""}, "reasons": [], "obligations": {"redact": [], "max_result_bytes": 1}}';
const committed = JSON.parse(readFileSync(CAPABILITIES, 'utf8')) as OpaCapabilities;

/** The builtins a compiled module imports from the host. */
function imports(wasm: Uint8Array): string[] {
  const sdk = createRequire(import.meta.url)('@open-policy-agent/opa-wasm') as typeof import('@open-policy-agent/opa-wasm');
  const policy = sdk.loadPolicySync(wasm) as unknown as { wasmInstance: { exports: Record<string, (addr?: number) => number> }; mem: { buffer: ArrayBuffer } };
  const { exports } = policy.wasmInstance;
  const start = exports.opa_json_dump!(exports.builtins!());
  const memory = new Uint8Array(policy.mem.buffer);
  let end = start;
  while (memory[end] !== 0) end++;
  return Object.keys(JSON.parse(new TextDecoder().decode(memory.subarray(start, end))) as object).sort();
}

describe('policies/capabilities.json', () => {
  it('is current: OPA\'s own capabilities for the pinned version, cut down to what WASM policies can run', () => {
    const current = JSON.parse(execFileSync('opa', ['capabilities', '--current'], { encoding: 'utf8' })) as OpaCapabilities;
    expect(readFileSync(CAPABILITIES, 'utf8'), 'stale: run bastion policy capabilities --write').toBe(formatCapabilities(wasmCapabilities(current)));
    expect(committed.features).toEqual(expect.arrayContaining(['rego_v1']));
  });

  it('excludes I/O, nondeterminism and backtracking regexes', () => {
    const names = new Set(committed.builtins.map((builtin) => builtin.name));
    for (const refused of ['http.send', 'net.lookup_ip_addr', 'opa.runtime', 'rand.intn', 'uuid.rfc4122', 'regex.split', 'io.jwt.decode_verify', 'crypto.x509.parse_certificates', 'trace', 'print']) {
      expect(names.has(refused), refused).toBe(false);
    }
  });

  it('lists natively compiled builtins the module never imports, and exactly the host builtins it does', () => {
    // One rule per allowed builtin, each called with arguments of unknown type.
    const callable = committed.builtins.filter(
      (builtin) => !('deprecated' in builtin) && !['eq', 'assign'].includes(builtin.name) && !builtin.name.startsWith('internal.'),
    );
    const rules = callable.map((builtin, i) => {
      const arity = ((builtin.decl as { args?: unknown[] }).args ?? []).length;
      return `r${i} := ${builtin.name}(${Array.from({ length: arity }, (_, j) => `input.arguments.a${j}`).join(', ')})`;
    });
    const refs = callable.map((_, i) => `r${i}`).join(', ');
    const wasm = compileRego(work, 'everything', `package bastion\n\n${rules.join('\n')}\n\ndecision := object.union(${VALID}, {"reasons": [json.marshal([${refs}])]})\n`);
    const expected = [...SDK_BUILTINS, ...BASTION_BUILTINS].filter((name) => !WASM_NATIVE_BUILTINS.includes(name)).sort();
    expect(imports(wasm)).toEqual(expected);
  });
});

describe('unsupported builtins', () => {
  it.each(['http.send({"method": "get", "url": "http://x"})', 'net.lookup_ip_addr("example.com")', 'opa.runtime()', 'regex.split("a+", "baab")', 'rand.intn("x", 10)'])(
    'fail the build: %s',
    (call) => {
      let output = '';
      try {
        compileRego(work, 'io', `package bastion\n\nx := ${call}\n\ndecision := object.union(${VALID}, {"reasons": [json.marshal(x)]})\n`);
      } catch (error) {
        const { stdout, stderr } = error as { stdout?: unknown; stderr?: unknown };
        output = `${String(stdout)}${String(stderr)}`; // opa build reports on stdout
      }
      expect(output).toMatch(/undefined function/);
    },
  );

  it('fail at load when built without the capabilities, naming the builtin', async () => {
    const wasm = compileRego(work, 'http', `package bastion\n\nx := http.send({"method": "get", "url": input.arguments.url})\n\ndecision := object.union(${VALID}, {"reasons": [json.marshal(x)]})\n`, { capabilities: false });
    await expect(createPolicyEngine({ wasm, source: 'http.wasm' })).rejects.toThrow(/calls builtin\(s\) the broker does not provide to WASM policies: http\.send/);
  });

  it('refuse regex.split at load although the SDK implements it (JavaScript regexes backtrack)', async () => {
    const wasm = compileRego(work, 'split', `package bastion\n\nx := regex.split(input.arguments.p, input.arguments.s)\n\ndecision := object.union(${VALID}, {"reasons": x})\n`, { capabilities: false });
    await expect(createPolicyEngine({ wasm, source: 'split.wasm' })).rejects.toThrow(/regex\.split/);
  });
});
