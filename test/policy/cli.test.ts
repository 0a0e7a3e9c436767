/**
 * `bastion policy`: every verb against the real OPA CLI, with its output
 * captured through the command's io.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { policyCommand } from '../../broker/cli/policy.ts';
import { readBundle } from '../../broker/policy/bundle.ts';
import { CAPABILITIES, COMPILED, copyDefaultPolicy, input, POLICIES, tempDir } from './helpers.ts';

const { dir: work, cleanup } = tempDir('bastion-cli-');
afterAll(cleanup);

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await policyCommand(argv, { out: (text) => (out += text), err: (text) => (err += text), stdin: async () => '' });
  return { code, out, err };
}

describe('bastion policy', () => {
  it.each(['build', 'test', 'eval', 'fmt', 'lint', 'schema', 'capabilities'])('%s --help', async (verb) => {
    const { code, out } = await run(verb, '--help');
    expect(code).toBe(0);
    expect(out).toMatch(new RegExp(`^usage: bastion policy ${verb}`));
  });

  it('explains itself, and refuses unknown commands and flags', async () => {
    expect((await run('--help')).out).toMatch(/commands:[\s\S]*build[\s\S]*eval/);
    expect((await run('frobnicate')).code).toBe(2);
    expect((await run('test', '--nope')).code).toBe(2);
    expect((await run('eval')).err).toMatch(/--input FILE is required/);
  });

  it('build writes the same module as policies/build.sh, and a signed bundle', async () => {
    const dir = path.join(work, 'build');
    copyDefaultPolicy(dir);
    const out = path.join(work, 'out', 'policy.wasm');
    expect((await run('build', dir, '--out', out)).code).toBe(0);
    expect(readFileSync(out).equals(readFileSync(COMPILED))).toBe(true);

    const { generateKeyPairSync } = await import('node:crypto');
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const key = path.join(work, 'signing.pem');
    writeFileSync(key, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const bundle = path.join(work, 'out', 'bundle.tar.gz');
    const built = await run('build', dir, '--out', out, '--bundle', bundle, '--signing-key', key, '--signing-alg', 'ES256', '--revision', 'r9');
    expect(built.code, built.err).toBe(0);
    const read = await readBundle(readFileSync(bundle), { required: true, algorithm: 'ES256', publicKey: pair.publicKey.export({ format: 'pem', type: 'spki' }) as string });
    expect(read).toMatchObject({ signed: true, revision: 'r9' });
  });

  it('build reports a builtin WASM policies may not use', async () => {
    const dir = path.join(work, 'io');
    copyDefaultPolicy(dir);
    writeFileSync(path.join(dir, 'fetch.rego'), 'package bastion.site.fetch\n\ndeny contains "x" if http.send({"method": "get", "url": "http://x"}).status_code != 200\n');
    const { code, err } = await run('build', dir, '--out', path.join(work, 'io.wasm'));
    expect(code).toBe(1);
    expect(err).toMatch(/undefined function http\.send/);
  });

  it('test runs the policy\'s and each example\'s tests and prints the coverage', async () => {
    const { code, out } = await run('test', POLICIES);
    expect(code).toBe(0);
    expect(out).toMatch(/^policies: ok$/m);
    expect(out).toMatch(/^examples\/time_window\.rego: ok$/m);
    expect(out).toMatch(/^coverage: \d+\.\d%$/m);
    expect((await run('test', POLICIES, '--threshold', '101')).code).toBe(2);
  });

  it('test fails on a failing test', async () => {
    const dir = path.join(work, 'failing');
    copyDefaultPolicy(dir);
    writeFileSync(path.join(dir, 'more_test.rego'), 'package bastion_more_test\n\ntest_fails if false\n');
    const { code, out } = await run('test', dir);
    expect(code).toBe(1);
    expect(out).toMatch(/FAILED[\s\S]*test_fails/);
  });

  it('eval prints the decision and the rules that held', async () => {
    const file = path.join(work, 'call.json');
    writeFileSync(file, JSON.stringify(input({ tool: 'demo__delete_file', risk: 'high', cap: [{ tool: 'demo__*' }] })));
    const { code, out, err } = await run('eval', '--input', file);
    expect(code, err).toBe(0);
    expect(out).toMatch(/^decision \(WASM, revision sha256:[0-9a-f]{64}\):/);
    expect(out).toContain('"reason": "demo__delete_file is a high-risk tool"');
    expect(out).toMatch(/^ {2}allow = true$/m);
    expect(out).toMatch(/^ {2}granting = \[0\]$/m);
    expect(out).toMatch(/^ {2}approval_reasons = \["demo__delete_file is a high-risk tool"\]$/m);
    expect(out).not.toMatch(/WARNING/);
  });

  it('eval with data, and with a compiled module', async () => {
    const file = path.join(work, 'call.json');
    const data = path.join(work, 'data.json');
    writeFileSync(file, JSON.stringify(input()));
    writeFileSync(data, JSON.stringify({ bastion: { tool_risk: { demo__read_file: 'high' } } }));
    const withData = await run('eval', '--input', file, '--data', data);
    expect(withData.out).toMatch(/^ {2}risk = "high"$/m);
    expect(withData.out).not.toMatch(/^ {2}tool_risk/m);
    const compiled = await run('eval', '--input', file, '--policy', COMPILED);
    expect(compiled.code).toBe(0);
    expect(compiled.out).toMatch(/rules that held: not available for a compiled policy/);
  });

  it('eval shows the flow input and the flow rules that held', async () => {
    const file = path.join(work, 'flow-call.json');
    const source = { id: 's1', tool: 'mail__read_email', at: '2026-01-05T09:59:00Z', age_s: 60, labels: ['untrusted', 'private'], reason: 'tool labels (config): untrusted, private', call: 'c1' };
    writeFileSync(
      file,
      JSON.stringify({
        ...input({ tool: 'payments__send_money', cap: [{ tool: 'payments__*' }], args: { iban: 'GB82WEST12345698765432' } }),
        flow: {
          labels: { untrusted: ['s1'], private: ['s1'] },
          sources: [source],
          tool: { labels: ['external'], egress: [] },
          arguments: [{ argument: '/iban', kind: 'iban', value: 'GB82WEST12345698765432', sources: ['s1'] }],
        },
      }),
    );
    const { code, out, err } = await run('eval', '--input', file);
    expect(code, err).toBe(0);
    expect(out).toContain('untrusted in context, from: mail__read_email (s1, 2026-01-05T09:59:00Z)');
    expect(out).toContain(`this call's labels: external`);
    expect(out).toContain('argument /iban (iban "GB82WEST12345698765432") came from untrusted s1');
    expect(out).toMatch(/"rule": "trifecta"/);
    expect(out).toMatch(/^ {2}flow_call_labels = \["external"\]$/m);
    expect(out).toMatch(/^ {2}flow_untrusted = \["s1"\]$/m);
  });

  it('eval says when the broker would deny for want of a decision', async () => {
    const file = path.join(work, 'bad-call.json');
    writeFileSync(file, JSON.stringify({ version: 2 }));
    const { code, out } = await run('eval', '--input', file, '--policy', COMPILED);
    expect(code).toBe(1);
    expect(out).toMatch(/no decision \(the broker denies\): invalid policy input/);
  });

  it('eval --entrypoint grants shows what a sign-in would be granted, and the rules that held', async () => {
    const file = path.join(work, 'sign-in.json');
    const signIn = {
      version: 1,
      identity: { iss: 'https://idp.example', sub: 'alice', groups: ['engineering'], claims: {} },
      client: { id: 'https://client.example/cimd.json', registration: 'metadata_document' },
      scopes: [],
      grant_type: 'authorization_code',
      context: { time: '2026-01-01T00:00:00.000Z' },
    };
    writeFileSync(file, JSON.stringify(signIn));
    const { code, out, err } = await run('eval', '--input', file);
    expect(code, err).toBe(0);
    expect(out).toMatch(/^grants \(WASM, revision sha256:[0-9a-f]{64}\):/);
    expect(out).toContain('"reasons": [\n    "group engineering grants demo__read_file"');
    expect(out).toMatch(/^ {2}grants_allow = true$/m);
    expect(out).not.toMatch(/WARNING/);
    writeFileSync(file, JSON.stringify({ ...signIn, grant_type: 'password' }));
    const refused = await run('eval', '--input', file, '--entrypoint', 'grants', '--policy', COMPILED);
    expect(refused.code).toBe(1);
    expect(refused.out).toMatch(/no grant \(the broker issues no token\): invalid grants policy input: grant_type/);
    expect((await run('eval', '--input', file, '--entrypoint', 'everything')).err).toMatch(/--entrypoint is decision or grants/);
  });

  it('fmt --check and lint pass on policies/, and catch problems elsewhere', async () => {
    expect((await run('fmt', POLICIES, '--check')).code).toBe(0);
    expect((await run('lint', POLICIES)).out).toMatch(/opa check --strict: ok/);
    const dir = path.join(work, 'ugly');
    copyDefaultPolicy(dir);
    writeFileSync(path.join(dir, 'ugly.rego'), 'package bastion.site.ugly\ndeny contains  "x"   if { false }\n');
    const unformatted = await run('fmt', dir, '--check');
    expect(unformatted.code).toBe(1);
    expect(unformatted.err).toContain('ugly.rego');
    writeFileSync(path.join(dir, 'ugly.rego'), 'package bastion.site.ugly\n\nimport data.nothing\n\ndeny contains x if x := input.y\n');
    expect((await run('lint', dir)).code).toBe(1);
    expect((await run('fmt', dir)).code).toBe(0);
    expect((await run('fmt', dir, '--check')).code).toBe(0);
  });

  it('schema and capabilities print the committed files', async () => {
    expect((await run('schema')).out).toBe(readFileSync(path.join(POLICIES, 'input.schema.json'), 'utf8'));
    expect((await run('capabilities')).out).toBe(readFileSync(CAPABILITIES, 'utf8'));
    expect(existsSync(CAPABILITIES)).toBe(true);
  });
});
