#!/usr/bin/env node
/**
 * The `bastion` command line. Each verb parses its own flags and has its
 * own --help; the texts here are the reference the README points to.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ensureDevKey } from './auth/keys.ts';
import { mintToken } from './auth/mint.ts';
import { verifyAuditFile } from './audit/verify.ts';
import { createBroker } from './broker.ts';
import { ConfigError, loadConfig, parseDuration, type Config } from './config.ts';
import { createLogger } from './log.ts';
import { CapabilitySchema, type Capability } from './policy/schema.ts';
import { startHttp } from './server/http.ts';
import { serveStdio } from './server/stdio.ts';

const HELP: Record<string, string> = {
  main: `bastion — zero-trust broker for AI-agent tool calls

usage: bastion <command> [options]

commands:
  start          serve MCP over Streamable HTTP (default command)
  stdio          serve MCP over stdin/stdout (token from BASTION_TOKEN)
  token mint     sign a capability token with the dev key
  audit verify   check an audit file's hash chain

Run "bastion <command> --help" for a command's options.`,
  start: `usage: bastion start [--config FILE] [--host HOST] [--port PORT]

Serves MCP at http://HOST:PORT/mcp. With no --config, runs the embedded
default: the demo upstream over stdio, the default policy, and a dev signing
key made on first run under .bastion/. Prints the MCP URL and a demo token.

  --config FILE   YAML or JSON config (see README "Configuration")
  --host HOST     bind address (default 127.0.0.1)
  --port PORT     port (default 8080; 0 picks a free one)`,
  stdio: `usage: bastion stdio [--config FILE]

Serves one MCP session over stdin/stdout, for clients that spawn their
servers. The capability token is read from the BASTION_TOKEN environment
variable and re-verified on every request. Logs go to stderr.`,
  'token mint': `usage: bastion token mint --sub SUBJECT [--cap PATTERN]... [--cap-json JSON] [--ttl DURATION] [--aud URL] [--config FILE]

Signs a capability token with the dev key (embedded default only) and prints it.

  --sub SUBJECT    the agent identity, e.g. agent:ci-bot (required)
  --cap PATTERN    grant a tool pattern, e.g. 'demo__read_*' (repeatable)
  --cap-json JSON  grants with argument constraints, a JSON array, e.g.
                   '[{"tool":"demo__read_file","args":{"path":{"path_prefix":"/srv/"}}}]'
  --ttl DURATION   lifetime, e.g. 90s, 5m (default 5m; capped by auth.max_ttl)
  --aud URL        audience (default: the broker's MCP URL from config)`,
  'audit verify': `usage: bastion audit verify FILE

Checks every record's sequence number, prev link and hash. Prints the first
broken, missing or reordered record and exits 1; exits 0 when intact.`,
};

function fail(message: string, code = 2): never {
  process.stderr.write(`bastion: ${message}\n`);
  process.exit(code);
}

function defaultResource(config: Config): string {
  const host = config.server.host.includes(':') ? `[${config.server.host}]` : config.server.host;
  return config.server.resource ?? `http://${host}:${config.server.port}/mcp`;
}

/** Capabilities of the demo token: read under /srv/, delete only under /srv/tmp/ (high risk). */
const DEMO_CAPABILITIES: Capability[] = [
  { tool: 'demo__read_file', args: { path: { path_prefix: '/srv/' } } },
  { tool: 'demo__delete_file', args: { path: { path_prefix: '/srv/tmp/' } } },
];

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
    const token = await mintToken({
      key: broker.devKey.privateJwk,
      issuer: broker.devKey.issuer,
      audience: door.resource,
      sub: 'agent:demo',
      cap: DEMO_CAPABILITIES,
      ttlMs: config.auth.max_ttl,
    });
    lines.push(
      ``,
      `Demo token (agent:demo, valid ${Math.round(config.auth.max_ttl / 60_000)} min; read files under /srv/, delete under /srv/tmp/ with approval):`,
      ``,
      token,
      ``,
      `Connect any MCP client to ${door.url} with the header`,
      `  Authorization: Bearer <token>`,
      `Mint another: npm run bastion -- token mint --sub agent:me --cap 'demo__read_file'`,
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
  const cap: Capability[] = (values.cap ?? []).map((tool) => ({ tool }));
  if (values['cap-json']) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(values['cap-json']);
    } catch {
      fail('--cap-json: not valid JSON');
    }
    const grants = CapabilitySchema.array().safeParse(parsed);
    if (!grants.success) fail(`--cap-json: ${grants.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    cap.push(...grants.data);
  }
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

async function auditVerify(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, options: { help: { type: 'boolean' } }, allowPositionals: true });
  if (values.help) return void console.log(HELP['audit verify']);
  if (positionals.length !== 1) fail('audit verify: give exactly one FILE');
  const file = path.resolve(positionals[0]!);
  let report;
  try {
    report = await verifyAuditFile(file);
  } catch (error) {
    fail(`audit verify: ${(error as Error).message}`, 1);
  }
  if (report.ok) {
    process.stdout.write(`${file}: OK, ${report.records} records, head ${report.head}\n`);
  } else {
    process.stdout.write(`${file}: BROKEN at line ${report.line}: ${report.problem} (${report.records} records verified before it)\n`);
    process.exit(1);
  }
}

async function main(argv: string[]): Promise<void> {
  const [first, second, ...rest] = argv;
  if (first === undefined || first === 'start') return start(first === undefined ? [] : argv.slice(1));
  if (first === 'help' || first === '--help' || first === '-h') return void console.log(HELP.main);
  if (first === 'stdio') return stdio(argv.slice(1));
  if (first === 'token' && second === 'mint') return tokenMint(rest);
  if (first === 'audit' && second === 'verify') return auditVerify(rest);
  if (first.startsWith('-')) return start(argv);
  fail(`unknown command: ${argv.join(' ')}\n\n${HELP.main}`);
}

main(process.argv.slice(2)).catch((error: unknown) => {
  if (error instanceof ConfigError) fail(error.message, 1);
  if (error instanceof TypeError && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS')) fail(error.message);
  fail((error as Error).stack ?? String(error), 1);
});
