#!/usr/bin/env node
/**
 * The `bastion` command line. Each verb parses its own flags and has its
 * own --help; the texts here are the reference the README points to.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { DEV_ISSUER, ensureDevKey, generateSigningKey, writePrivate } from './auth/keys.ts';
import { importJWK, SignJWT, type JWK } from 'jose';
import { APPROVER_TOKEN_TYPE } from './approvals/approvers.ts';
import { mintToken } from './auth/mint.ts';
import { checkpointsFileFor, verifyCheckpoints } from './audit/checkpoint.ts';
import type { AuditRecord } from './audit/chain.ts';
import { recoverAuditFile, verifyRecovery } from './audit/recover.ts';
import { verifyAuditFile } from './audit/verify.ts';
import { readJwksFile, type Jwks } from './auth/keys.ts';
import { lockStateDir } from './state/lock.ts';
import { policyCommand } from './cli/policy.ts';
import { createBroker } from './broker.ts';
import { ConfigError, defaultResource, loadConfig, parseDuration, type Config } from './config.ts';
import { globRegex } from './limits.ts';
import { createLogger } from './log.ts';
import { CapabilitySchema, type Capability } from './policy/schema.ts';
import { FLOWS_GRANT, REVOKE_GRANT, TOOLS_GRANT } from './server/admin-routes.ts';
import { startHttp } from './server/http.ts';
import { serveStdio } from './server/stdio.ts';

const HELP: Record<string, string> = {
  main: `bastion — zero-trust broker for AI-agent tool calls

usage: bastion <command> [options]

commands:
  start          serve MCP over Streamable HTTP (default command)
  stdio          serve MCP over stdin/stdout (token from BASTION_TOKEN)
  token mint     sign a capability token with the dev key
  token delegate ask a running broker for a narrower token for a sub-agent
  token revoke   revoke a token (by jti) or a subject, on a running broker
  token exchange exchange a workload's JWT (Kubernetes, GitHub Actions, …) for a capability token (RFC 8693)
  token client-credentials  get a capability token as a configured client, signing with its own key (RFC 7523)
  keys generate  make an Ed25519 or P-256 signing key and its JWKS
  approver token sign an approver sign-in token with the dev key and print the page link
  tools review   list quarantined tools (descriptor changed since pinned, or look-alike name) with the diff
  tools approve  re-pin a quarantined tool after review
  audit verify   check an audit file's hash chain and its signed checkpoints
  audit recover  cut a torn last record off an audit file, keep it as evidence, continue the chain
  plugin pin     print a plugin directory's pin (the hash to put in config)
  redteam        attack fresh brokers with the corpus (or --chains: flow chains), each defense off in turn; report what got through
  flows graph    who can reach what: grants → tools → flow labels, toxic combinations and what the policy does about each
  flows show     an agent's flow on a running broker (labels in its context, the calls that brought them)
  flows clear    forget an agent's flow on a running broker (audited)
  policy         build, test, evaluate, format and lint Rego policies (bastion policy --help)

Run "bastion <command> --help" for a command's options.`,
  start: `usage: bastion start [--config FILE] [--host HOST] [--port PORT]

Serves MCP at http://HOST:PORT/mcp. With no --config, runs the embedded
default: the demo upstream over stdio, the default policy, and a dev signing
key made on first run under .bastion/. Prints the MCP URL and a demo token
for the demo tools the config has (none: no token), and how to mint others
(with --config FILE when given, so the token is signed by that config's key).

  --config FILE   YAML or JSON config (see README "Configuration")
  --host HOST     bind address (default 127.0.0.1)
  --port PORT     port (default 8080; 0 picks a free one)`,
  stdio: `usage: bastion stdio [--config FILE]

Serves one MCP session over stdin/stdout, for clients that spawn their
servers. The capability token is read from the BASTION_TOKEN environment
variable and re-verified on every request. Logs go to stderr.

It exits when the client closes its stdin, or on SIGTERM or SIGINT, after
stopping its upstream stdio processes (stdin closed, then SIGTERM after
0.4 s, SIGKILL after 0.9 s) and its plugin sandboxes.`,
  'token mint': `usage: bastion token mint --sub SUBJECT [--cap PATTERN]... [--cap-json JSON] [--ttl DURATION] [--aud URL] [--config FILE]

Signs a capability token with the dev key (embedded default only) and prints it.

  --sub SUBJECT    the agent identity, e.g. agent:ci-bot (required)
  --cap PATTERN    grant a tool pattern, e.g. 'demo__read_*' (repeatable)
  --cap-json JSON  grants with argument constraints, a JSON array, e.g.
                   '[{"tool":"demo__read_file","args":{"path":{"path_prefix":"/srv/"}}}]'
  --ttl DURATION   lifetime, e.g. 90s, 5m (default 5m; capped by auth.max_ttl)
  --aud URL        audience (default: the broker's MCP URL from config)`,
  'token delegate': `usage: bastion token delegate --token PARENT --sub SUBJECT [--cap PATTERN]... [--cap-json JSON] [--ttl DURATION] [--url BROKER]

Asks a running broker (POST /token/delegate) for a token for a sub-agent.
The requested capabilities must be covered by the parent token's; the new
token expires no later than the parent and records the chain in "act".

  --token PARENT   the parent capability token (or env BASTION_TOKEN)
  --sub SUBJECT    the sub-agent's identity (required)
  --cap, --cap-json  the narrower grants (as for token mint)
  --ttl DURATION   lifetime (default 5m; capped by auth.delegation.max_ttl)
  --url BROKER     the broker's base URL (default from config, e.g. http://127.0.0.1:8080)`,
  'token revoke': `usage: bastion token revoke (--jti JTI --iss ISSUER | --sub SUBJECT) [--url BROKER] [--token ADMIN] [--config FILE]

Revokes on a running broker (POST /admin/revoke), effective for the next
request. Revoking a subject also stops every token delegated from it, and
its OAuth sign-ins: its next refresh is refused (ending that refresh-token
family) and it cannot sign in again through the authorization server. The
admin token needs the literal grant "bastion:revoke"; with the embedded
default one is minted with the dev key when --token is not given.`,
  'approver token': `usage: bastion approver token --sub APPROVER [--role ROLE]... [--ttl DURATION] [--config FILE]

Signs a single-use approver token with the dev key (embedded default only;
in production your identity provider issues them with typ bastion-approver+jwt)
and prints the sign-in link for the approval page. The token is in the link's
fragment, which browsers never send to a server.

  --sub APPROVER   the approver's identity, e.g. approver:alice (required)
  --role ROLE      approver role the policy may require (repeatable)
  --ttl DURATION   lifetime of the sign-in link (default 15m, the maximum)`,
  'tools review': `usage: bastion tools review [--url BROKER] [--token ADMIN] [--config FILE]

Lists tools whose descriptors changed since Bastion pinned them (possible rug
pulls), with the field-level diff, and tools held on first sight because their
name looks like another tool's (mixed scripts, invisible characters, not NFKC,
a confusable skeleton), with the findings. They stay hidden and uncallable
until approved. The admin token needs the literal grant "bastion:tools"; with the
embedded default one is minted with the dev key.`,
  'tools approve': `usage: bastion tools approve TOOL [--url BROKER] [--token ADMIN] [--config FILE]

Re-pins TOOL (as agents see it, e.g. demo__read_file) to its new descriptor,
or pins a held look-alike, after you reviewed the diff. The decision is audited.`,
  'flows show': `usage: bastion flows show [--sub SUBJECT [--iss ISSUER]] [--url BROKER] [--token ADMIN] [--config FILE]

Shows an agent's flow on a running broker (GET /admin/flows): the labels in
its context and the most recent calls that brought each. A flow belongs to
the root principal: the subject at its issuer (default the dev issuer); a
delegated sub-agent shares its parent's. Without --sub, lists every flow.
The admin token needs the literal grant "bastion:flows"; with the embedded
default one is minted with the dev key.`,
  'flows clear': `usage: bastion flows clear --sub SUBJECT [--iss ISSUER] [--url BROKER] [--token ADMIN] [--config FILE]

Forgets an agent's flow on a running broker (POST /admin/flows/clear), so
its next calls are judged as if it had read nothing. The audit record keeps
what was forgotten (labels, how many sources brought each, the latest
sources). Needs the literal grant "bastion:flows".`,
  'plugin pin': `usage: bastion plugin pin DIR

Prints the plugin's name, version and pin: sha256 over its manifest and script
bytes. Put the hash in config (plugins: [{ dir, hash }]); a plugin whose files
no longer match is refused at start-up with both hashes named.`,
  'keys generate': `usage: bastion keys generate [--alg EdDSA|ES256] [--out DIR]

Writes DIR/signing-key.json (private JWK, mode 0600, keep it with the issuer)
and DIR/jwks.json (public; point auth.issuers[].jwks_file at it). Prints the kid.`,
  'audit verify': `usage: bastion audit verify FILE... [--checkpoints FILE] [--jwks FILE]

Checks every record's sequence number, prev link and hash, in each FILE (one
per replica when several share Redis: each replica keeps its own chain).
Prints, per file, the first broken, missing or reordered record; exits 1 if
any file is broken or unreadable, 0 when all are intact.

Then checks the signed checkpoints (default FILE.checkpoints.jsonl, when it
exists) against the checkpoint key's JWKS (default
audit-checkpoint-jwks.json beside FILE): a checkpoint naming a record the
file no longer has (truncation), or a record whose hash differs from the
signed one (rewrite), fails the check even when the chain itself is intact.

Recovery records written by "bastion audit recover" are listed as recoveries,
not errors; one whose signature does not verify with that JWKS fails the check.`,
  'audit recover': `usage: bastion audit recover FILE [--key FILE]

For an audit file that ends with a partial record (a broker killed or crashed
mid-write; the broker then refuses to start on it). Do not move the file
aside: its signed checkpoints still vouch for its records, and a new chain
would be reported as truncated for good. Recover holds the lock of FILE's
folder while it works, so no broker can start on it meanwhile.

  1. checks that every whole record before the torn bytes verifies (if not,
     this is not a torn write: nothing is changed, exit 1);
  2. keeps the torn bytes, unchanged, in FILE.torn-after-<seq> (mode 0600);
  3. cuts FILE back to its last whole record;
  4. appends a recovery record (event audit.recovered: torn byte count,
     SHA-256 and evidence file, signed with the checkpoint key) and a
     checkpoint for it.
A torn last line of FILE.checkpoints.jsonl is kept (FILE.checkpoints.jsonl.torn)
and cut off the same way. Then start the broker; "bastion audit verify FILE"
reports the recovery. A file that ends with a whole record is left as it is.

  --key FILE   the checkpoint private key (default audit-checkpoint-signing-key.json
               beside FILE, as the broker makes it; or audit.checkpoints.key_file)`,
};

function fail(message: string, code = 2): never {
  process.stderr.write(`bastion: ${message}\n`);
  process.exit(code);
}

/** Capabilities of the demo token: read under /srv/, delete only under /srv/tmp/ (high risk), the sandboxed text utilities. */
const DEMO_CAPABILITIES: Capability[] = [
  { tool: 'demo__read_file', args: { path: { path_prefix: '/srv/' } } },
  { tool: 'demo__delete_file', args: { path: { path_prefix: '/srv/tmp/' } } },
  { tool: 'text-utils__*' },
];

/** What a demo grant lets the demo token do, for the start-up text. */
function describeDemoGrant(cap: Capability): string {
  if (cap.tool === 'demo__read_file') return 'read files under /srv/';
  if (cap.tool === 'demo__delete_file') return 'delete under /srv/tmp/ with approval';
  return cap.tool === 'text-utils__*' ? 'text-utils plugin' : cap.tool;
}

/** `value` as one shell word (quoted only when it has to be). */
function shellQuote(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replaceAll("'", `'\\''`)}'`;
}

async function start(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: 'string' }, host: { type: 'string' }, port: { type: 'string' }, help: { type: 'boolean' } },
  });
  if (values.help) return void console.log(HELP.start);
  const config = await loadConfig(values.config);
  if (values.host) config.server.host = values.host;
  if (values.port !== undefined) {
    const port = Number(values.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port: not a port: ${values.port}`);
    config.server.port = port;
  }
  const log = createLogger(config.log_level);
  const broker = await createBroker(config, log);
  const door = await startHttp(broker);
  log.info({ url: door.url, resource: door.resource }, 'bastion listening');

  const lines = [``, `Bastion is listening at ${door.url}`];
  if (broker.devKey) {
    // The hints must reach this broker's dev key: with --config, the state folder is that config's.
    const configArg = values.config ? ` --config ${shellQuote(values.config)}` : '';
    const tools = [...broker.registry.tools().values()].sort((a, b) => a.exposedName.localeCompare(b.exposedName));
    const toolNames = tools.map((tool) => tool.exposedName);
    // Only the demo grants that name a tool this config serves (a custom config may have none of them).
    const demoCap = DEMO_CAPABILITIES.filter((cap) => toolNames.some((name) => globRegex(cap.tool).test(name)));
    if (demoCap.length > 0) {
      const token = await mintToken({
        key: broker.devKey.privateJwk,
        issuer: broker.devKey.issuer,
        audience: door.resource,
        sub: 'agent:demo',
        cap: demoCap,
        ttlMs: config.auth.max_ttl,
      });
      lines.push(
        ``,
        `Demo token (agent:demo, valid ${Math.round(config.auth.max_ttl / 60_000)} min; ${demoCap.map(describeDemoGrant).join(', ')}):`,
        ``,
        token,
        ``,
        `Connect any MCP client to ${door.url} with the header`,
        `  Authorization: Bearer <token>`,
      );
    } else {
      lines.push(``, `No demo token: this config has none of the demo tools (${toolNames.length} tools${toolNames.length ? `, e.g. ${toolNames.slice(0, 3).join(', ')}` : ''}).`);
    }
    // A tool of this config for the example grant: the demo read tool when it is there, else a low-risk one.
    const example = toolNames.includes('demo__read_file') ? 'demo__read_file' : ((tools.find((tool) => tool.risk === 'low') ?? tools[0])?.exposedName ?? '<connector>__<tool>');
    lines.push(`${demoCap.length > 0 ? 'Mint another' : 'Mint one'}: npm run bastion -- token mint${configArg} --sub agent:me --cap ${shellQuote(example)} --aud ${door.resource}`);
    if (broker.approvalPageUrl) {
      lines.push(
        ``,
        `Approval page (sign-in link for approver:demo, single use, valid 15 min):`,
        ``,
        await approverLink(config, broker.approvalPageUrl, door.resource, 'approver:demo', [], 15 * 60_000),
        ``,
        `Another approver: npm run bastion -- approver token${configArg} --sub approver:you`,
      );
    }
  }
  const devIdp = door.identity?.devIdp;
  if (devIdp) {
    lines.push(
      ``,
      `OAuth sign-in (MCP clients that do OAuth: Claude Code, VS Code, the MCP Inspector): point the client at ${door.url};`,
      `it signs in through your browser at the development IdP as user ${devIdp.user}, password ${devIdp.password}`,
      `(group bastion-demo: the demo token's tools). Configure identity.upstream to use your organisation's IdP.`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n\n`);

  const shutdown = async () => {
    log.info('shutting down');
    await door.close();
    await broker.stop();
    process.exit(0);
  };
  process.once('SIGINT', shutdown);
  process.once('SIGTERM', shutdown);
  // Reload the policy now (it is also watched); the holder logs the outcome.
  process.on('SIGHUP', () => void broker.policy.reload('SIGHUP'));
}

async function stdio(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { config: { type: 'string' }, help: { type: 'boolean' } } });
  if (values.help) return void console.log(HELP.stdio);
  const config = await loadConfig(values.config);
  const log = createLogger(config.log_level);
  const broker = await createBroker(config, log);
  await serveStdio(broker, process.env.BASTION_TOKEN, defaultResource(config));
  await broker.stop();
  process.exit(0);
}

/** --cap patterns plus --cap-json grants, validated like the token claim. */
function capabilitiesFrom(patterns: string[] | undefined, json: string | undefined): Capability[] {
  const cap: Capability[] = (patterns ?? []).map((tool) => ({ tool }));
  if (json) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch {
      fail('--cap-json: not valid JSON');
    }
    const grants = CapabilitySchema.array().safeParse(parsed);
    if (!grants.success) fail(`--cap-json: ${grants.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    cap.push(...grants.data);
  }
  return cap;
}

/** POSTs JSON to a running broker and prints the answer; exits 1 on refusal. */
async function postToBroker(url: string, token: string, body: unknown): Promise<Record<string, unknown>> {
  let response: Response;
  try {
    response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify(body) });
  } catch (error) {
    fail(`cannot reach ${url}: ${(error as Error).message}`, 1);
  }
  const answer = (await response.json().catch(() => ({}))) as Record<string, unknown>;
  if (!response.ok) fail(`${url} refused (${response.status}): ${String(answer.code ?? '')} ${String(answer.error_description ?? answer.error ?? '')}`, 1);
  return answer;
}

function brokerBase(config: Config, url: string | undefined): string {
  return url ?? new URL(defaultResource(config)).origin;
}

async function tokenDelegate(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      token: { type: 'string' },
      sub: { type: 'string' },
      cap: { type: 'string', multiple: true },
      'cap-json': { type: 'string' },
      ttl: { type: 'string', default: '5m' },
      url: { type: 'string' },
      config: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return void console.log(HELP['token delegate']);
  const parent = values.token ?? process.env.BASTION_TOKEN;
  if (!parent) fail('token delegate: --token (or BASTION_TOKEN) is required');
  if (!values.sub) fail('token delegate: --sub is required');
  const cap = capabilitiesFrom(values.cap, values['cap-json']);
  if (cap.length === 0) fail('token delegate: give at least one --cap or --cap-json grant');
  const config = await loadConfig(values.config);
  const answer = await postToBroker(`${brokerBase(config, values.url)}/token/delegate`, parent, { sub: values.sub, cap, ttl: values.ttl });
  process.stdout.write(`${String(answer.access_token)}\n`);
}

/** The operator token: given, or minted with the dev key for the embedded default. */
async function adminToken(config: Config, given: string | undefined, grant: string): Promise<string> {
  if (given) return given;
  if (config.auth.issuers.length > 0) fail('--token is required when issuers are configured');
  const dev = await ensureDevKey(config.state_dir);
  return mintToken({ key: dev.privateJwk, issuer: dev.issuer, audience: defaultResource(config), sub: 'operator:cli', cap: [{ tool: grant }], ttlMs: 60_000, tokenType: config.auth.token_type });
}

async function toolsCommand(verb: 'review' | 'approve', argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { url: { type: 'string' }, token: { type: 'string' }, config: { type: 'string' }, help: { type: 'boolean' } },
  });
  if (values.help) return void console.log(HELP[`tools ${verb}`]);
  const config = await loadConfig(values.config);
  const admin = await adminToken(config, values.token, TOOLS_GRANT);
  const base = brokerBase(config, values.url);
  if (verb === 'approve') {
    if (positionals.length !== 1) fail('tools approve: give exactly one TOOL');
    const answer = await postToBroker(`${base}/admin/tools/approve`, admin, { tool: positionals[0] });
    process.stdout.write(`re-pinned ${String(answer.approved)} at ${String(answer.hash)}\n`);
    return;
  }
  let response: Response;
  try {
    response = await fetch(`${base}/admin/tools/quarantine`, { headers: { authorization: `Bearer ${admin}` } });
  } catch (error) {
    fail(`cannot reach ${base}: ${(error as Error).message}`, 1);
  }
  const answer = (await response.json().catch(() => ({}))) as { quarantined?: { tool: string; since: string; diff: string[] }[]; error_description?: string };
  if (!response.ok) fail(`${base} refused (${response.status}): ${answer.error_description ?? ''}`, 1);
  const list = answer.quarantined ?? [];
  if (list.length === 0) return void process.stdout.write('no quarantined tools\n');
  for (const q of list) process.stdout.write(`${q.tool} (quarantined since ${q.since})\n${q.diff.map((line) => `  ${line}`).join('\n')}\n\n`);
}

async function flowsCommand(verb: 'show' | 'clear', argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { sub: { type: 'string' }, iss: { type: 'string' }, url: { type: 'string' }, token: { type: 'string' }, config: { type: 'string' }, help: { type: 'boolean' } },
  });
  if (values.help) return void console.log(HELP[`flows ${verb}`]);
  if (verb === 'clear' && !values.sub) fail('flows clear: --sub is required');
  const config = await loadConfig(values.config);
  const admin = await adminToken(config, values.token, FLOWS_GRANT);
  const base = brokerBase(config, values.url);
  const owner = { iss: values.iss ?? DEV_ISSUER, sub: values.sub };
  if (verb === 'clear') {
    const answer = await postToBroker(`${base}/admin/flows/clear`, admin, owner);
    process.stdout.write(answer.cleared ? `cleared the flow of ${String(answer.flow)}\n` : `${String(answer.flow)} had no flow\n`);
    return;
  }
  const query = values.sub ? `?iss=${encodeURIComponent(owner.iss)}&sub=${encodeURIComponent(values.sub)}` : '';
  let response: Response;
  try {
    response = await fetch(`${base}/admin/flows${query}`, { headers: { authorization: `Bearer ${admin}` } });
  } catch (error) {
    fail(`cannot reach ${base}: ${(error as Error).message}`, 1);
  }
  const answer = (await response.json().catch(() => ({}))) as Record<string, unknown>;
  if (!response.ok) fail(`${base} refused (${response.status}): ${String(answer.error_description ?? '')}`, 1);
  process.stdout.write(`${JSON.stringify(values.sub ? answer.flow : answer.flows, null, 2)}\n`);
}

async function tokenRevoke(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      jti: { type: 'string' },
      iss: { type: 'string' },
      sub: { type: 'string' },
      url: { type: 'string' },
      token: { type: 'string' },
      config: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return void console.log(HELP['token revoke']);
  if (Boolean(values.jti) === Boolean(values.sub)) fail('token revoke: give either --jti (with --iss) or --sub');
  const config = await loadConfig(values.config);
  const admin = await adminToken(config, values.token, REVOKE_GRANT);
  const body = values.jti ? { jti: values.jti, iss: values.iss ?? DEV_ISSUER } : { sub: values.sub };
  const answer = await postToBroker(`${brokerBase(config, values.url)}/admin/revoke`, admin, body);
  process.stdout.write(`revoked ${JSON.stringify(answer.revoked)}\n`);
}

/** A sign-in link for the approval page, with a fresh approver token in its fragment. */
async function approverLink(config: Config, pageUrl: string, audience: string, sub: string, roles: string[], ttlMs: number): Promise<string> {
  const dev = await ensureDevKey(config.state_dir);
  const key = await importJWK(dev.privateJwk, 'EdDSA');
  const iat = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ roles })
    .setProtectedHeader({ alg: 'EdDSA', typ: APPROVER_TOKEN_TYPE, kid: dev.privateJwk.kid! })
    .setIssuer(dev.issuer)
    .setSubject(sub)
    .setAudience(audience)
    .setIssuedAt(iat)
    .setExpirationTime(iat + Math.floor(ttlMs / 1000))
    .setJti(crypto.randomUUID())
    .sign(key);
  return `${pageUrl}#token=${token}`;
}

async function approverToken(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { sub: { type: 'string' }, role: { type: 'string', multiple: true }, ttl: { type: 'string', default: '15m' }, url: { type: 'string' }, config: { type: 'string' }, help: { type: 'boolean' } },
  });
  if (values.help) return void console.log(HELP['approver token']);
  if (!values.sub) fail('approver token: --sub is required');
  const config = await loadConfig(values.config);
  if (config.auth.issuers.length > 0) fail('approver token signs with the dev key, which exists only when no issuers are configured');
  let ttlMs: number;
  try {
    ttlMs = parseDuration(values.ttl);
  } catch (error) {
    fail(`--ttl: ${(error as Error).message}`);
  }
  if (ttlMs > 15 * 60_000) fail('--ttl: approver tokens live at most 15m');
  const page = values.url ?? `${new URL(defaultResource(config)).origin}/approvals`;
  process.stdout.write(`${await approverLink(config, page, defaultResource(config), values.sub, values.role ?? [], ttlMs)}\n`);
}

async function pluginPin(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { help: { type: 'boolean' } } });
  if (values.help) return void console.log(HELP['plugin pin']);
  if (positionals.length !== 1) fail('plugin pin: give exactly one DIR');
  const { readPlugin } = await import('../sandboxes/pin.ts');
  let plugin;
  try {
    plugin = await readPlugin(path.resolve(positionals[0]!));
  } catch (error) {
    fail(`plugin pin: ${(error as Error).message}`, 1);
  }
  process.stdout.write(`${plugin.manifest.name} ${plugin.manifest.version}\n${plugin.hash}\n`);
}

async function keysGenerate(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { alg: { type: 'string', default: 'EdDSA' }, out: { type: 'string', default: '.' }, help: { type: 'boolean' } } });
  if (values.help) return void console.log(HELP['keys generate']);
  if (values.alg !== 'EdDSA' && values.alg !== 'ES256') fail('keys generate: --alg must be EdDSA or ES256');
  const { privateJwk, jwks } = await generateSigningKey(values.alg);
  await mkdir(values.out, { recursive: true });
  const keyFile = path.join(values.out, 'signing-key.json');
  const jwksFile = path.join(values.out, 'jwks.json');
  await writePrivate(keyFile, JSON.stringify(privateJwk, null, 2));
  await writeFile(jwksFile, JSON.stringify(jwks, null, 2));
  process.stdout.write(`kid ${privateJwk.kid}\nprivate key ${keyFile} (mode 0600)\nJWKS ${jwksFile}\n`);
}

async function tokenMint(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      sub: { type: 'string' },
      cap: { type: 'string', multiple: true },
      'cap-json': { type: 'string' },
      ttl: { type: 'string', default: '5m' },
      aud: { type: 'string' },
      config: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return void console.log(HELP['token mint']);
  if (!values.sub) fail('token mint: --sub is required');
  const config = await loadConfig(values.config);
  if (config.auth.issuers.length > 0) fail('token mint signs with the dev key, which exists only when no issuers are configured');
  const cap = capabilitiesFrom(values.cap, values['cap-json']);
  let ttlMs: number;
  try {
    ttlMs = parseDuration(values.ttl);
  } catch (error) {
    fail(`--ttl: ${(error as Error).message}`);
  }
  if (ttlMs > config.auth.max_ttl) fail(`--ttl exceeds auth.max_ttl (${config.auth.max_ttl / 1000}s)`);
  const dev = await ensureDevKey(config.state_dir);
  const token = await mintToken({ key: dev.privateJwk, issuer: dev.issuer, audience: values.aud ?? defaultResource(config), sub: values.sub, cap, ttlMs, tokenType: config.auth.token_type });
  process.stdout.write(`${token}\n`);
}

/** Verifies one audit file and its checkpoints; prints the outcome, returns whether it is intact. */
async function verifyOneAuditFile(given: string, checkpointsFile: string | undefined, jwksOption: string | undefined): Promise<boolean> {
  const file = path.resolve(given);
  let report;
  try {
    report = await verifyAuditFile(file);
  } catch (error) {
    process.stderr.write(`bastion: audit verify: ${(error as Error).message}\n`);
    return false;
  }
  if (!report.ok) {
    process.stdout.write(`${file}: BROKEN at line ${report.line}: ${report.problem} (${report.records} records verified before it)\n`);
    return false;
  }
  process.stdout.write(`${file}: OK, ${report.records} records, head ${report.head}\n`);

  const jwksFile = path.resolve(jwksOption ?? path.join(path.dirname(file), 'audit-checkpoint-jwks.json'));
  const jwks = existsSync(jwksFile) ? await readJwksFile(jwksFile).catch((error: Error) => error) : undefined;
  if (!(await reportRecoveries(file, report.recoveries, jwks))) return false;

  const sidecar = path.resolve(checkpointsFile ?? checkpointsFileFor(file));
  if (!existsSync(sidecar)) {
    if (checkpointsFile) {
      process.stderr.write(`bastion: audit verify: no checkpoints file ${sidecar}\n`);
      return false;
    }
    process.stdout.write(`${file}: no signed checkpoints (${sidecar}); a truncated tail would not show\n`);
    return true;
  }
  let checkpoints;
  try {
    if (jwks instanceof Error) throw jwks;
    checkpoints = await verifyCheckpoints(file, sidecar, jwks ?? (await readJwksFile(jwksFile)));
  } catch (error) {
    process.stderr.write(`bastion: audit verify: checkpoints: ${(error as Error).message}\n`);
    return false;
  }
  if (!checkpoints.ok) {
    process.stdout.write(`${sidecar}: BROKEN at checkpoint ${checkpoints.line} (${checkpoints.code}): ${checkpoints.problem}\n`);
    return false;
  }
  const unsigned = checkpoints.records - checkpoints.signedSeq;
  process.stdout.write(`${sidecar}: OK, ${checkpoints.checkpoints} checkpoints, records up to ${checkpoints.signedSeq} signed${unsigned > 0 ? `, ${unsigned} after the last checkpoint` : ''}\n`);
  return true;
}

/** Lists the recoveries in a verified chain; false when one's signature does not verify. */
async function reportRecoveries(file: string, recoveries: AuditRecord[], jwks: Jwks | Error | undefined): Promise<boolean> {
  for (const record of recoveries) {
    const what = `${file}: RECOVERED at record ${record.seq}: ${String(record.detail?.torn_bytes)} torn bytes after record ${record.seq - 1} were cut off`;
    if (!jwks || jwks instanceof Error) {
      process.stdout.write(`${what} (kept in ${String(record.detail?.evidence_file)}); signature not checked: no checkpoint JWKS${jwks ? ` (${jwks.message})` : ''}\n`);
      continue;
    }
    const check = await verifyRecovery(file, record, jwks);
    if (!check.ok) {
      process.stdout.write(`${file}: BROKEN at line ${record.seq}: recovery record: ${check.problem}\n`);
      return false;
    }
    const evidence = { present: 'kept in', missing: 'evidence file missing:', altered: 'evidence file no longer matches:' }[check.evidence];
    process.stdout.write(`${what} (${evidence} ${check.claims.evidence_file}, ${check.claims.torn_sha256}); signed by the checkpoint key at ${check.claims.time}\n`);
  }
  return true;
}

async function auditRecover(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, options: { key: { type: 'string' }, help: { type: 'boolean' } }, allowPositionals: true });
  if (values.help) return void console.log(HELP['audit recover']);
  if (positionals.length !== 1) fail('audit recover: give exactly one FILE');
  const file = path.resolve(positionals[0]!);
  if (!existsSync(file)) fail(`audit recover: no such file ${file}`, 1);
  const keyFile = path.resolve(values.key ?? path.join(path.dirname(file), 'audit-checkpoint-signing-key.json'));
  let key: JWK;
  try {
    key = JSON.parse(await readFile(keyFile, 'utf8')) as JWK;
  } catch (error) {
    fail(`audit recover: cannot read the checkpoint key ${keyFile}: ${(error as Error).message}; give it with --key FILE (audit.checkpoints.key_file)`, 1);
  }
  if (typeof key.d !== 'string') fail(`audit recover: ${keyFile} is not a private key (no "d")`, 1);
  // A broker appending to the file right now would race the cut: hold the folder's lock meanwhile.
  let unlock: () => Promise<void>;
  try {
    unlock = await lockStateDir(path.dirname(file));
  } catch (error) {
    fail(`audit recover: ${(error as Error).message}`, 1);
  }
  try {
    const result = await recoverAuditFile(file, { key });
    if (result.checkpointEvidenceFile) process.stdout.write(`${checkpointsFileFor(file)}: torn last line cut off, kept in ${result.checkpointEvidenceFile}\n`);
    if (!result.recovered) {
      process.stdout.write(`${file}: ends with a whole record (${result.records} records); nothing to recover\n`);
      return;
    }
    const { seq, tornBytes, tornSha256, evidenceFile } = result.recovered;
    process.stdout.write(
      `${file}: ${tornBytes} torn bytes after record ${seq - 1} kept in ${evidenceFile} (${tornSha256}); cut off; recovery record ${seq} appended and signed. The broker can start.\n`,
    );
  } catch (error) {
    fail(`audit recover: ${(error as Error).message}`, 1);
  } finally {
    await unlock();
  }
}

async function auditVerify(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { checkpoints: { type: 'string' }, jwks: { type: 'string' }, help: { type: 'boolean' } },
    allowPositionals: true,
  });
  if (values.help) return void console.log(HELP['audit verify']);
  if (positionals.length === 0) fail('audit verify: give at least one FILE');
  if (positionals.length > 1 && (values.checkpoints || values.jwks)) fail('audit verify: --checkpoints and --jwks go with a single FILE');
  // Each replica keeps its own chain: every file is verified on its own, and all must hold.
  let intact = true;
  for (const file of positionals) intact = (await verifyOneAuditFile(file, values.checkpoints, values.jwks)) && intact;
  if (!intact) process.exit(1);
}

async function main(argv: string[]): Promise<void> {
  const [first, second, ...rest] = argv;
  if (first === undefined || first === 'start') return start(first === undefined ? [] : argv.slice(1));
  if (first === 'help' || first === '--help' || first === '-h') return void console.log(HELP.main);
  if (first === 'stdio') return stdio(argv.slice(1));
  if (first === 'token' && second === 'mint') return tokenMint(rest);
  if (first === 'token' && second === 'delegate') return tokenDelegate(rest);
  if (first === 'token' && second === 'revoke') return tokenRevoke(rest);
  if (first === 'token' && (second === 'exchange' || second === 'client-credentials')) {
    const { tokenExchangeCommand, clientCredentialsCommand } = await import('./cli/token-grants.ts');
    process.exitCode = await (second === 'exchange' ? tokenExchangeCommand : clientCredentialsCommand)(rest);
    return;
  }
  if (first === 'keys' && second === 'generate') return keysGenerate(rest);
  if (first === 'approver' && second === 'token') return approverToken(rest);
  if (first === 'plugin' && second === 'pin') return pluginPin(rest);
  if (first === 'tools' && (second === 'review' || second === 'approve')) return toolsCommand(second, rest);
  if (first === 'audit' && second === 'verify') return auditVerify(rest);
  if (first === 'audit' && second === 'recover') return auditRecover(rest);
  if (first === 'flows' && (second === 'show' || second === 'clear')) return flowsCommand(second, rest);
  if (first === 'flows' && second === 'graph') {
    const { flowsGraphCommand } = await import('./flows/cli.ts');
    process.exitCode = await flowsGraphCommand(rest);
    return;
  }
  if (first === 'policy') {
    process.exitCode = await policyCommand(argv.slice(1));
    return;
  }
  if (first === 'redteam') {
    // Loaded lazily: the other commands' start-up stays lean.
    const { redteamCommand } = await import('./redteam/cli.ts');
    process.exit(await redteamCommand(argv.slice(1)));
  }
  if (first.startsWith('-')) return start(argv);
  fail(`unknown command: ${argv.join(' ')}\n\n${HELP.main}`);
}

main(process.argv.slice(2)).catch((error: unknown) => {
  if (error instanceof ConfigError) fail(error.message, 1);
  if (error instanceof TypeError && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS')) fail(error.message);
  fail((error as Error).stack ?? String(error), 1);
});
