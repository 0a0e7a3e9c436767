/**
 * `bastion token exchange` and `bastion token client-credentials` as a
 * script runs them: the real CLI process against a running broker, a
 * stand-in Kubernetes issuer's token in a file, a client key made by
 * `bastion keys generate`.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startWorkloadIssuer, type WorkloadIssuer } from '../helpers/workload-issuer.ts';

const CLI = path.join(ROOT, 'broker/cli.ts');
const exec = promisify(execFile);

let work: string;
let k8s: WorkloadIssuer;
let t: TestBroker;
let origin: string;

/** Runs the CLI; resolves with its exit status and output (never throws on a non-zero exit). */
async function bastion(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [CLI, ...args], { cwd: work });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'bastion-cli-grants-'));
  k8s = await startWorkloadIssuer();
  expect((await bastion('keys', 'generate', '--alg', 'ES256', '--out', path.join(work, 'nightly'))).code).toBe(0);
  const data = path.join(work, 'data.json');
  await writeFile(
    data,
    JSON.stringify({
      bastion: {
        grants_by_workload: [{ issuer: 'kubernetes', match: { 'kubernetes.io/namespace': 'agents' }, cap: [{ tool: 'rec__echo' }] }],
        grants_by_client: { 'nightly-report': [{ tool: 'rec__echo' }] },
      },
    }),
  );
  t = await startTestBroker({
    policy: { data },
    identity: {
      token_exchange: { issuers: [{ name: 'kubernetes', issuer: k8s.issuer, algorithms: ['RS256'], pass_claims: ['kubernetes.io'] }] },
      clients: [{ client_id: 'nightly-report', grant_types: ['client_credentials'], jwks_file: path.join(work, 'nightly', 'jwks.json') }],
    },
  });
  origin = new URL(t.url).origin;
}, 60_000);

afterAll(async () => {
  await t?.close();
  await k8s?.close();
  await rm(work, { recursive: true, force: true });
});

describe('bastion token exchange', () => {
  it('prints the capability token for a workload token in a file', async () => {
    const file = path.join(work, 'k8s-token');
    await writeFile(file, `${await k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'ci-bot', audience: t.door.resource })}\n`);
    const { code, stdout } = await bastion('token', 'exchange', '--subject-token-file', file, '--url', origin);
    expect(code).toBe(0);
    expect(decodeJwt(stdout.trim())).toMatchObject({ sub: 'kubernetes:system:serviceaccount:agents:ci-bot', cap: [{ tool: 'rec__echo' }] });
  });

  it('prints the broker’s OAuth error and exits 1 when refused', async () => {
    const file = path.join(work, 'wrong-audience');
    await writeFile(file, await k8s.kubernetesToken({ namespace: 'agents', serviceAccount: 'ci-bot', audience: 'https://other.example' }));
    const { code, stdout, stderr } = await bastion('token', 'exchange', '--subject-token-file', file, '--url', origin);
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toMatch(/refused \(400\): invalid_request: subject_token refused \(BASTION_TOKEN_AUDIENCE_INVALID\)/);
  });

  it('exits 2 on bad usage, saying what is missing', async () => {
    expect(await bastion('token', 'exchange', '--url', origin)).toMatchObject({ code: 2, stderr: expect.stringMatching(/--subject-token-file is required/) });
    expect(await bastion('token', 'exchange', '--subject-token-file', path.join(work, 'nope'), '--url', origin)).toMatchObject({ code: 2, stderr: expect.stringMatching(/ENOENT/) });
  });

  it('has --help', async () => {
    const { code, stdout } = await bastion('token', 'exchange', '--help');
    expect(code).toBe(0);
    expect(stdout).toMatch(/^usage: bastion token exchange --subject-token-file FILE/);
  });
});

describe('bastion token client-credentials', () => {
  it('signs a client assertion with the client’s key and prints the token', async () => {
    const { code, stdout, stderr } = await bastion('token', 'client-credentials', '--client-id', 'nightly-report', '--key-file', path.join(work, 'nightly', 'signing-key.json'), '--url', origin);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(decodeJwt(stdout.trim())).toMatchObject({ sub: 'client:nightly-report', cap: [{ tool: 'rec__echo' }] });
  });

  it('refuses a public key in place of the private one', async () => {
    const jwks = JSON.parse(await readFile(path.join(work, 'nightly', 'jwks.json'), 'utf8')) as { keys: object[] };
    const file = path.join(work, 'public.json');
    await writeFile(file, JSON.stringify(jwks.keys[0]));
    expect(await bastion('token', 'client-credentials', '--client-id', 'nightly-report', '--key-file', file, '--url', origin)).toMatchObject({ code: 2, stderr: expect.stringMatching(/not a private key/) });
  });

  it('prints the refusal for a client the broker does not know', async () => {
    const { code, stderr } = await bastion('token', 'client-credentials', '--client-id', 'stranger', '--key-file', path.join(work, 'nightly', 'signing-key.json'), '--url', origin);
    expect(code).toBe(1);
    expect(stderr).toMatch(/refused \(401\): invalid_client/);
  });

  it('has --help', async () => {
    expect((await bastion('token', 'client-credentials', '--help')).stdout).toMatch(/^usage: bastion token client-credentials --client-id ID --key-file FILE/);
  });
});
