/**
 * `bastion start` on the embedded default, as a user meets it: a fresh
 * folder, no config. The real CLI process makes its dev key under .bastion/,
 * starts the demo upstream, prints the URL and a demo token; an SDK client
 * with that token sees the demo tools and the policy's answers.
 */
import { execFile, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { verifyAuditFile } from '../../broker/audit/verify.ts';
import { ROOT } from '../helpers/broker.ts';
import { post, toolCall } from '../helpers/http.ts';
import { spawnCollecting } from '../helpers/spawn.ts';

const run = promisify(execFile);
const CLI = path.join(ROOT, 'broker/cli.ts');

interface Running {
  child: ChildProcessWithoutNullStreams;
  url: string;
  token: string;
  stdout: () => string;
  stderr: () => string;
  /** SIGTERM, then the exit status. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns `bastion start --port 0` in `cwd` and waits (bounded) for the URL and the demo token. */
async function startCli(cwd: string): Promise<Running> {
  const started = spawnCollecting(process.execPath, [CLI, 'start', '--port', '0'], { cwd });
  const { child, stdout, stderr, exited } = started;
  const tokenPattern = /^(eyJ[\w-]+\.[\w-]+\.[\w-]+)$/m;
  await started.waitFor((out) => tokenPattern.test(out), 120_000);
  const url = /Bastion is listening at (\S+)/.exec(stdout())?.[1];
  const token = tokenPattern.exec(stdout())?.[1];
  if (!url || !token) {
    child.kill('SIGKILL');
    throw new Error(`bastion start did not come up:\nstdout:\n${stdout()}\nstderr:\n${stderr()}`);
  }
  return {
    child,
    url,
    token,
    stdout,
    stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

function denialOf(result: CallToolResult): { stage: string; code: string; reason: string } {
  expect(result.isError).toBe(true);
  return result._meta?.['bastion/denial'] as { stage: string; code: string; reason: string };
}

interface AuditLine {
  event: string;
  tool?: string;
  outcome: string;
  denial?: { stage: string; code: string };
}

let cwd: string;

async function auditLines(): Promise<AuditLine[]> {
  try {
    return (await readFile(path.join(cwd, '.bastion', 'audit.jsonl'), 'utf8')).split('\n').filter(Boolean).map((line) => JSON.parse(line) as AuditLine);
  } catch {
    return [];
  }
}

let bastion: Running | undefined;
const clients: Client[] = [];

async function connect(url: string, token: string): Promise<Client> {
  const client = new Client({ name: 'bastion-cli-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  clients.push(client);
  return client;
}

beforeAll(async () => {
  cwd = await mkdtemp(path.join(tmpdir(), 'bastion-start-'));
  bastion = await startCli(cwd);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  await bastion?.stop();
  await rm(cwd, { recursive: true, force: true });
});

describe('bastion start on the embedded default', () => {
  it('prints the loopback MCP URL and a demo token', () => {
    expect(bastion!.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
    expect(bastion!.url).not.toBe('http://127.0.0.1:0/mcp');
    expect(bastion!.stdout()).toContain('Demo token (agent:demo');
    // Logs are on stderr, not mixed into what the user reads.
    expect(bastion!.stdout()).not.toContain('"level"');
  });

  it('prints how OAuth clients sign in (the development IdP), and serves the discovery documents they follow', async () => {
    expect(bastion!.stdout()).toMatch(/at the development IdP as user demo, password [A-Za-z0-9_-]{16}\n/);
    const origin = new URL(bastion!.url).origin;
    const resource = (await (await fetch(`${origin}/.well-known/oauth-protected-resource/mcp`)).json()) as { authorization_servers: string[] };
    expect(resource.authorization_servers).toEqual([origin]);
    const metadata = (await (await fetch(`${origin}/.well-known/oauth-authorization-server`)).json()) as Record<string, unknown>;
    expect(metadata).toMatchObject({
      issuer: origin,
      authorization_endpoint: `${origin}/oauth/auth`,
      token_endpoint: `${origin}/oauth/token`,
      code_challenge_methods_supported: ['S256'],
      response_types_supported: ['code'],
      authorization_response_iss_parameter_supported: true,
      client_id_metadata_document_supported: true,
    });
    expect(metadata).not.toHaveProperty('registration_endpoint'); // DCR is off unless the operator turns it on
    expect(metadata).not.toHaveProperty('userinfo_endpoint');
  });

  it('the demo token lists the demo connector tools and the sandboxed demo plugin', async () => {
    const client = await connect(bastion!.url, bastion!.token);
    const names = (await client.listTools()).tools.map((tool) => tool.name).sort();
    expect(names).toEqual(['demo__delete_file', 'demo__read_file', 'text-utils__json_format', 'text-utils__slugify', 'text-utils__word_count']);
    const slug = (await client.callTool({ name: 'text-utils__slugify', arguments: { text: 'Hello, Bastion!' } })) as CallToolResult;
    expect(slug.isError).toBeFalsy();
    expect(JSON.stringify(slug.content)).toContain('hello-bastion');
  });

  it('reading /srv/app/README.md works', async () => {
    const client = await connect(bastion!.url, bastion!.token);
    const result = (await client.callTool({ name: 'demo__read_file', arguments: { path: '/srv/app/README.md' } })) as CallToolResult;
    expect(result.isError).toBeFalsy();
    expect(result.content).toEqual([{ type: 'text', text: '# app\nA demo service behind Bastion.\n' }]);
  });

  it('reading /etc/passwd is refused by policy (path constraint)', async () => {
    const client = await connect(bastion!.url, bastion!.token);
    const result = (await client.callTool({ name: 'demo__read_file', arguments: { path: '/etc/passwd' } })) as CallToolResult;
    const denial = denialOf(result);
    expect(denial).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });
    expect(denial.reason).toContain('path');
    expect(JSON.stringify(result)).not.toContain('root:x:0');
  });

  it('a traversal out of /srv/ is refused too', async () => {
    const client = await connect(bastion!.url, bastion!.token);
    const result = (await client.callTool({ name: 'demo__read_file', arguments: { path: '/srv/../etc/passwd' } })) as CallToolResult;
    expect(denialOf(result)).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });
    expect(JSON.stringify(result)).not.toContain('root:x:0');
  });

  it('deleting /srv/tmp/scratch.txt (high risk) never runs without a human: refused with BASTION_APPROVAL_REQUIRED or parked', async () => {
    // Without approvals the call is refused outright (BASTION_APPROVAL_REQUIRED); with approvals it is
    // parked until a human decides. Either way the file must survive.
    const client = await connect(bastion!.url, bastion!.token);
    const controller = new AbortController();
    let settled: { result?: CallToolResult; error?: Error } | undefined;
    const outcome = client
      .callTool({ name: 'demo__delete_file', arguments: { path: '/srv/tmp/scratch.txt' } }, { signal: controller.signal, timeout: 600_000 })
      .then(
        (result) => (settled = { result: result as CallToolResult }),
        (error: Error) => (settled = { error }),
      );
    let parked: AuditLine | undefined;
    for (let i = 0; i < 400 && !settled && !parked; i++) {
      parked = (await auditLines()).find((r) => r.event === 'approval.requested' && r.tool === 'demo__delete_file');
      if (!parked) await new Promise((r) => setTimeout(r, 25));
    }
    if (settled?.result) {
      expect(denialOf(settled.result)).toMatchObject({ stage: 'approve', code: 'BASTION_APPROVAL_REQUIRED' });
    } else {
      expect(settled?.error).toBeUndefined();
      expect(parked).toMatchObject({ event: 'approval.requested', tool: 'demo__delete_file' });
      controller.abort(); // the agent gives up; the parked call must not run later
      await outcome;
      expect(settled?.error).toBeDefined();
      // The withdrawn call is audited as cancelled at the approve stage.
      let withdrawn: AuditLine | undefined;
      for (let i = 0; i < 400 && !withdrawn; i++) {
        withdrawn = (await auditLines()).find((r) => r.event === 'tools/call' && r.tool === 'demo__delete_file');
        if (!withdrawn) await new Promise((r) => setTimeout(r, 25));
      }
      expect(withdrawn).toMatchObject({ outcome: 'denied', denial: { stage: 'approve', code: 'BASTION_CANCELLED' } });
    }
    const read = (await client.callTool({ name: 'demo__read_file', arguments: { path: '/srv/tmp/scratch.txt' } })) as CallToolResult;
    expect(read.content).toEqual([{ type: 'text', text: 'temporary notes\n' }]);
  });

  it('deleting outside /srv/tmp/ is refused by policy before approval', async () => {
    const client = await connect(bastion!.url, bastion!.token);
    const result = (await client.callTool({ name: 'demo__delete_file', arguments: { path: '/srv/app/README.md' } })) as CallToolResult;
    expect(denialOf(result)).toMatchObject({ stage: 'authorize', code: 'BASTION_POLICY_DENIED' });
  });

  it('every call above is in an intact audit trail under .bastion/, without the token', async () => {
    const file = path.join(cwd, '.bastion', 'audit.jsonl');
    const report = await verifyAuditFile(file);
    expect(report.ok).toBe(true);
    const text = await readFile(file, 'utf8');
    const records = await auditLines();
    expect(records).toContainEqual(expect.objectContaining({ tool: 'demo__read_file', outcome: 'ok' }));
    // The high-risk call left evidence: its refusal, or its approval request.
    expect(records.some((r) => r.tool === 'demo__delete_file' && (r.denial?.code === 'BASTION_APPROVAL_REQUIRED' || r.event === 'approval.requested'))).toBe(true);
    expect(text).not.toContain(bastion!.token.split('.')[2]!);
  });

  it('the dev key files exist with mode 0600 in a 0700 folder', async () => {
    for (const name of ['dev-signing-key.json', 'dev-jwks.json']) {
      const info = await stat(path.join(cwd, '.bastion', name));
      expect(info.mode & 0o777).toBe(0o600);
    }
    expect((await stat(path.join(cwd, '.bastion', 'audit.jsonl'))).mode & 0o077).toBe(0);
    expect((await stat(path.join(cwd, '.bastion'))).mode & 0o077).toBe(0);
    const jwks = JSON.parse(await readFile(path.join(cwd, '.bastion', 'dev-jwks.json'), 'utf8')) as { keys: Record<string, unknown>[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).not.toHaveProperty('d'); // the public JWKS holds no private key
  });

  it('token mint in that folder produces a token the running broker accepts (with --aud)', async () => {
    const { stdout } = await run(process.execPath, [CLI, 'token', 'mint', '--sub', 'agent:minted', '--cap', 'demo__read_file', '--ttl', '2m', '--aud', bastion!.url], { cwd });
    const token = stdout.trim();
    expect(token).toMatch(/^eyJ[\w-]+\.[\w-]+\.[\w-]+$/);
    const client = await connect(bastion!.url, token);
    expect((await client.listTools()).tools.map((tool) => tool.name)).toEqual(['demo__read_file']);
    const result = (await client.callTool({ name: 'demo__read_file', arguments: { path: '/srv/app/config.yaml' } })) as CallToolResult;
    expect(result.content).toEqual([{ type: 'text', text: 'replicas: 3\nregion: eu-west-1\n' }]);
  });

  it('a minted token for another audience (the default :8080 URL) is refused with 401', async () => {
    const { stdout } = await run(process.execPath, [CLI, 'token', 'mint', '--sub', 'agent:minted', '--cap', 'demo__read_file', '--aud', 'http://127.0.0.1:1/mcp'], { cwd });
    const response = await post(
      bastion!.url,
      { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } },
      { authorization: `Bearer ${stdout.trim()}` },
    );
    expect(response.status).toBe(401);
    expect(response.json).toMatchObject({ code: 'BASTION_TOKEN_AUDIENCE_INVALID', stage: 'authenticate' });
  });

  it('the demo token cannot drive tools it does not name', async () => {
    const client = await connect(bastion!.url, bastion!.token);
    const error = await client.callTool({ name: 'demo__format_disk', arguments: {} }).then(
      () => undefined,
      (e: Error & { code?: number }) => e,
    );
    expect(error?.code).toBe(-32602);
  });
});

describe('restarting in the same folder', () => {
  it('SIGTERM stops it cleanly; a second start reuses the dev key and continues the audit chain', async () => {
    const jwksFile = path.join(cwd, '.bastion', 'dev-jwks.json');
    const kidBefore = (JSON.parse(await readFile(jwksFile, 'utf8')) as { keys: { kid: string }[] }).keys[0]!.kid;
    const keyBefore = await readFile(path.join(cwd, '.bastion', 'dev-signing-key.json'), 'utf8');
    const recordsBefore = await verifyAuditFile(path.join(cwd, '.bastion', 'audit.jsonl'));

    await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
    expect(await bastion!.stop()).toEqual({ code: 0, signal: null });

    bastion = await startCli(cwd);
    const kidAfter = (JSON.parse(await readFile(jwksFile, 'utf8')) as { keys: { kid: string }[] }).keys[0]!.kid;
    expect(kidAfter).toBe(kidBefore);
    expect(await readFile(path.join(cwd, '.bastion', 'dev-signing-key.json'), 'utf8')).toBe(keyBefore);
    expect(bastion.stdout()).toContain('Bastion is listening at');

    // The new process serves with the same key and appends to the same chain.
    const raw = await post(
      bastion.url,
      { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } },
      { authorization: `Bearer ${bastion.token}` },
    );
    expect(raw.status).toBe(200);
    const sessionId = raw.headers.get('mcp-session-id')!;
    const call = await post(bastion.url, toolCall('demo__read_file', { path: '/srv/app/README.md' }), {
      authorization: `Bearer ${bastion.token}`,
      'mcp-session-id': sessionId,
    });
    expect(call.json.result.content[0].text).toContain('# app');
    const recordsAfter = await verifyAuditFile(path.join(cwd, '.bastion', 'audit.jsonl'));
    expect(recordsAfter.ok).toBe(true);
    expect(recordsAfter.records).toBeGreaterThan(recordsBefore.records);

    expect(await bastion.stop()).toEqual({ code: 0, signal: null });
  });
});
