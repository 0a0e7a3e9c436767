/**
 * The broker under attack: a real `bastion start` child process per
 * configuration, with a fresh state directory, the recording upstream as
 * connector `rec` (and, when the corpus needs it, the same upstream with a
 * poisoned tool description as connector `poisoned`), and a red-team issuer
 * whose key signs the attacker's and approvers' tokens. The upstream writes
 * every call it receives to a file, which is how an attack's success is
 * judged: by what reached the tool, not by what the broker says.
 *
 * @example
 *   const issuer = await createRedteamIssuer(workDir);
 *   const target = await launchTarget({ workDir, name: 'full', defensesOff: [], issuer, base: {}, poisoned: true });
 *   const token = await target.mint({ sub: 'agent:x', cap: [{ tool: 'rec__echo' }] });
 *   await target.stop();
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import { importJWK, SignJWT, type JWK } from 'jose';
import { APPROVER_TOKEN_TYPE } from '../approvals/approvers.ts';
import type { AuditRecord } from '../audit/chain.ts';
import { generateSigningKey } from '../auth/keys.ts';
import { mintToken } from '../auth/mint.ts';
import { parseConfig, PROJECT_ROOT, type Config } from '../config.ts';
import type { Capability } from '../policy/schema.ts';
import { pluginHash } from '../../sandboxes/pin.ts';
import type { AblatableDefense } from './corpus.ts';
import { APPROVER_GROUP, VICTIM_GROUP, WORKLOAD_ISSUER, type RedteamIdp } from './idp.ts';

/** The attacker's workload's namespace (echo only) and the one whose workloads get every tool. */
export const WORKLOAD_NAMESPACE = 'rt-agents';
export const PRIVILEGED_NAMESPACE = 'rt-ops';

/** The issuer of every token the red team signs; trusted only by the brokers it starts. */
export const REDTEAM_ISSUER = 'urn:bastion:redteam';
export const RECORDING_UPSTREAM = path.join(PROJECT_ROOT, 'test/fixtures/recording-upstream.ts');
const CLI = path.join(PROJECT_ROOT, 'broker/cli.ts');

export interface RedteamIssuer {
  issuer: string;
  privateJwk: JWK;
  /** The public half, as the broker reads it. */
  jwksFile: string;
  publicJwk: JWK;
}

/** Makes the red team's signing key and writes its JWKS under `dir`. */
export async function createRedteamIssuer(dir: string): Promise<RedteamIssuer> {
  const { privateJwk, jwks } = await generateSigningKey('EdDSA');
  const jwksFile = path.join(dir, 'redteam-jwks.json');
  await writeFile(jwksFile, JSON.stringify(jwks, null, 2));
  return { issuer: REDTEAM_ISSUER, privateJwk, jwksFile, publicJwk: jwks.keys[0]! };
}

/** A call the upstream received, named as agents see the tool. */
export interface UpstreamCall {
  tool: string;
  args: Record<string, unknown>;
  /** The upstream process that ran it (a restarted upstream has a new pid). */
  pid?: number;
}

/** How many calls each upstream had recorded at some moment. */
export type UpstreamMark = Record<string, number>;

export interface Target {
  /** Configuration name: "full" or "no-<defense>". */
  name: string;
  defensesOff: AblatableDefense[];
  /** The MCP endpoint. */
  url: string;
  /** The broker's origin, for the approval page and admin routes. */
  origin: string;
  /** The only audience the broker accepts. */
  resource: string;
  /** The effective configuration, as the broker parsed it. */
  config: Config;
  issuer: RedteamIssuer;
  /** The red team's IdP, when the broker signs in there (authorization-server and headless-identity cases). */
  idp: RedteamIdp | undefined;
  mint(options: { sub: string; cap: Capability[]; ttlMs: number; use?: 'once'; jkt?: string }): Promise<string>;
  approverToken(sub: string): Promise<string>;
  /** Where each upstream's call log stands now. */
  upstreamMark(): Promise<UpstreamMark>;
  /** Calls each upstream received (after `since`, when given), in the order each received them. */
  upstreamCalls(since?: UpstreamMark): Promise<UpstreamCall[]>;
  auditRecords(): Promise<AuditRecord[]>;
  /** The broker's live MCP sessions now, from its bastion_sessions_open gauge; throws when /metrics cannot be read. */
  liveSessions(): Promise<number>;
  /** What the broker wrote on stderr (its logs), for diagnosing a failed start. */
  stderr(): string;
  stop(): Promise<void>;
}

export interface LaunchOptions {
  workDir: string;
  name: string;
  defensesOff: AblatableDefense[];
  issuer: RedteamIssuer;
  /** The operator's configuration document (raw, as written), the base every run starts from. */
  base: Record<string, unknown>;
  /** Add the poisoned-descriptor upstream as connector `poisoned`. */
  poisoned: boolean;
  /** Start-up deadline. */
  timeoutMs?: number;
  /** Hostile plugins from the corpus (install_plugin steps), written out and pinned for this broker. */
  plugins?: PluginSpec[];
  /** The red team's IdP (idp.ts): the broker signs its victim in there, for the authorization-server cases. */
  idp?: RedteamIdp;
}

/** A plugin an install_plugin step asks for: its name, tools and script. */
export interface PluginSpec {
  /** Its directory's name, and its configured name unless `manifestName` is set. */
  name: string;
  /** The name its manifest declares when not `name`; the plugin is then configured without one. */
  manifestName?: string;
  tools: { name: string; description: string; input_schema?: Record<string, unknown> | undefined }[];
  code: string;
  /** Host capabilities the manifest asks for (kv, log). */
  capabilities?: string[];
  /** Host capabilities the operator grants (kv with its default quotas, log). */
  grants?: ('kv' | 'log')[];
  /** Its wall-clock limit, when not REDTEAM_PLUGIN_LIMITS.wall_ms. */
  wallMs?: number;
}

/** A corpus plugin as the broker's config lists it. */
export interface PluginEntry {
  dir: string;
  hash: string;
  name?: string;
  grants: { kv?: boolean; log?: boolean };
}

/** Small limits, as a careful plugin author would declare them (the host caps them further). */
export const REDTEAM_PLUGIN_LIMITS = { memory_mb: 32, cpu_ms: 200, wall_ms: 1000 } as const;

/**
 * Writes each plugin as a directory (plugin.json and main.js) under `dir`
 * and returns the broker's `plugins` entries, each pinned with pluginHash.
 */
export async function materializePlugins(plugins: PluginSpec[], dir: string): Promise<PluginEntry[]> {
  const entries: PluginEntry[] = [];
  for (const plugin of plugins) {
    const pluginDir = path.join(dir, 'plugins', plugin.name);
    await mkdir(pluginDir, { recursive: true, mode: 0o700 });
    const manifest = {
      name: plugin.manifestName ?? plugin.name,
      version: '0.0.1',
      description: 'Hostile plugin from the red-team corpus.',
      main: 'main.js',
      tools: plugin.tools.map((t) => ({ name: t.name, description: t.description || t.name, inputSchema: t.input_schema ?? { type: 'object' } })),
      capabilities: Object.fromEntries(
        (plugin.capabilities ?? []).map((c) => {
          if (c !== 'kv' && c !== 'log') throw new Error(`plugin ${plugin.name}: the red team can only ask for kv or log, not ${c}`);
          return [c, {}];
        }),
      ),
      limits: { ...REDTEAM_PLUGIN_LIMITS, ...(plugin.wallMs !== undefined ? { wall_ms: plugin.wallMs } : {}) },
    };
    await writeFile(path.join(pluginDir, 'plugin.json'), JSON.stringify(manifest, null, 2));
    await writeFile(path.join(pluginDir, 'main.js'), plugin.code);
    entries.push({
      dir: pluginDir,
      hash: await pluginHash(pluginDir),
      ...(plugin.manifestName ? {} : { name: plugin.name }),
      grants: Object.fromEntries((plugin.grants ?? []).map((grant) => [grant, true])),
    });
  }
  return entries;
}

export async function readLines<T>(file: string): Promise<T[]> {
  try {
    const text = await readFile(file, 'utf8');
    return text
      .split('\n')
      .filter(Boolean)
      .flatMap((line) => {
        try {
          return [JSON.parse(line) as T];
        } catch {
          return []; // a line being written right now
        }
      });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

function asObject(value: unknown): Record<string, unknown> {
  return value && typeof value === 'object' && !Array.isArray(value) ? { ...(value as Record<string, unknown>) } : {};
}

/**
 * The configuration a run uses: the operator's document with what the red
 * team must own replaced: state in a fresh directory, loopback on a free
 * port, the recording upstreams instead of real connectors, the red-team
 * issuer added to the trusted ones, and the defenses switched off for this
 * run. Everything else (policy, limits, filters, approvals) is measured as
 * the operator configured it.
 */
export function targetDocument(
  options: LaunchOptions,
  dir: string,
  plugins: PluginEntry[] = [],
  signIn?: { upstream: Record<string, unknown>; grantsData: string },
): Record<string, unknown> {
  const base = asObject(options.base);
  const auth = asObject(base.auth);
  const issuers = Array.isArray(auth.issuers) ? [...(auth.issuers as unknown[])] : [];
  issuers.push({ issuer: options.issuer.issuer, jwks_file: options.issuer.jwksFile });
  const server = asObject(base.server);
  delete server.resource;
  delete server.tls;
  const audit = asObject(base.audit);
  delete audit.file;
  const connector = (name: string, env: Record<string, string>) => ({
    name,
    transport: 'stdio',
    command: process.execPath,
    args: [RECORDING_UPSTREAM],
    env,
    timeout: '20s',
  });
  const connectors = [connector('rec', { CALL_LOG: path.join(dir, 'rec-calls.jsonl') })];
  if (options.poisoned) connectors.push(connector('poisoned', { CALL_LOG: path.join(dir, 'poisoned-calls.jsonl'), POISON: '1' }));
  return {
    ...base,
    server: { ...server, host: '127.0.0.1', port: 0 },
    auth: { ...auth, issuers },
    audit,
    state_dir: dir,
    state: { backend: 'embedded' },
    log_level: 'warn',
    connectors,
    // The operator's plugins, if any, plus the corpus's hostile ones.
    plugins: [...(Array.isArray(base.plugins) ? (base.plugins as unknown[]) : []), ...plugins],
    // One sandbox process unless the operator set how many: every plugin then shares it, so a plugin
    // that stalls its process (a catastrophic schema pattern) is seen stalling the others too.
    sandbox: { processes: 1, ...asObject(base.sandbox) },
    defenses_off: options.defensesOff,
    // The authorization server signs the victim in at the red team's IdP; its group gets the rec tools.
    // It also trusts the IdP as a workload issuer (token exchange), and approvers sign in there (its rt-approvers group approves).
    ...(signIn
      ? {
          identity: {
            ...asObject(base.identity),
            upstream: signIn.upstream,
            registration: { ...asObject(asObject(base.identity).registration), enabled: true, per_minute: 10_000 },
            token_exchange: { issuers: [{ name: WORKLOAD_ISSUER, issuer: String(signIn.upstream.issuer), algorithms: ['ES256'], pass_claims: ['kubernetes.io'] }] },
          },
          policy: { ...asObject(base.policy), data: signIn.grantsData },
          approvals: { ...asObject(base.approvals), sso: { enabled: true, roles: { approver: [APPROVER_GROUP] } } },
        }
      : {}),
  };
}

/** What the authorization-server cases need, unless the operator's base configures its own IdP or policy source. */
async function signInSetup(options: LaunchOptions, dir: string): Promise<{ upstream: Record<string, unknown>; grantsData: string } | undefined> {
  const base = asObject(options.base);
  const policy = asObject(base.policy);
  if (!options.idp || asObject(base.identity).upstream || policy.data || policy.dir || policy.bundle || policy.bundle_url) return undefined;
  const grantsData = path.join(dir, 'grants-data.json');
  // A workload in namespace rt-agents may echo; one in rt-ops may do anything (what the token-exchange cases try to become).
  const grants_by_workload = [
    { issuer: WORKLOAD_ISSUER, match: { 'kubernetes.io/namespace': WORKLOAD_NAMESPACE }, cap: [{ tool: 'rec__echo' }] },
    { issuer: WORKLOAD_ISSUER, match: { 'kubernetes.io/namespace': PRIVILEGED_NAMESPACE }, cap: [{ tool: 'rec__*' }] },
  ];
  await writeFile(grantsData, JSON.stringify({ bastion: { grants_by_group: { [VICTIM_GROUP]: [{ tool: 'rec__*' }] }, grants_by_workload } }));
  return { upstream: await options.idp.upstreamFor(dir), grantsData };
}

/** Kills a child and waits for it: SIGTERM first (the broker shuts down cleanly), SIGKILL after a grace period. */
async function terminate(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** An approver sign-in token for `audience`, signed by the red-team issuer (10 minutes, single use). */
export async function signApproverToken(issuer: RedteamIssuer, audience: string, sub: string): Promise<string> {
  const iat = Math.floor(Date.now() / 1000);
  return new SignJWT({ roles: [] })
    .setProtectedHeader({ alg: 'EdDSA', typ: APPROVER_TOKEN_TYPE, kid: issuer.privateJwk.kid! })
    .setIssuer(issuer.issuer)
    .setSubject(sub)
    .setAudience(audience)
    .setIssuedAt(iat)
    .setExpirationTime(iat + 600)
    .setJti(crypto.randomUUID())
    .sign(await importJWK(issuer.privateJwk, 'EdDSA'));
}

/** A `bastion start` child process on a config document, up and listening. */
export interface BastionProcess {
  url: string;
  config: Config;
  stderr(): string;
  stop(): Promise<void>;
}

/**
 * Writes `document` as `dir`/bastion.yaml and starts `bastion start` on it
 * (validated here first, so a bad document fails with the parser's message
 * rather than a dead child); resolves once it listens.
 */
export async function startBastion(dir: string, name: string, document: Record<string, unknown>, timeoutMs = 120_000): Promise<BastionProcess> {
  const config = parseConfig(document, `red-team configuration ${name}`);
  const configFile = path.join(dir, 'bastion.yaml');
  await writeFile(configFile, YAML.stringify(document));

  const child = spawn(process.execPath, [CLI, 'start', '--config', configFile], {
    cwd: PROJECT_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env },
  });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.once('exit', () => process.off('exit', killOnExit));
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    // Keep the tail only: a flood can make a broker log a lot.
    stderr = (stderr + chunk).slice(-20_000);
  });

  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`broker ${name} did not start within ${timeoutMs} ms`)), timeoutMs);
    const onData = () => {
      const match = /Bastion is listening at (\S+)/.exec(stdout);
      if (match) done(undefined, match[1]!);
    };
    const onExit = (code: number | null) => done(new Error(`broker ${name} exited with ${code} before listening:\n${stderr.slice(-4000)}`));
    function done(error: Error | undefined, value?: string) {
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      child.off('exit', onExit);
      if (error) reject(error);
      else resolve(value!);
    }
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  }).catch(async (error: unknown) => {
    await terminate(child, 1_000);
    throw error;
  });
  return { url, config, stderr: () => stderr, stop: () => terminate(child) };
}

export async function launchTarget(options: LaunchOptions): Promise<Target> {
  const dir = path.join(options.workDir, options.name);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const document = targetDocument(options, dir, await materializePlugins(options.plugins ?? [], dir), await signInSetup(options, dir));
  const { url, config, stderr, stop } = await startBastion(dir, options.name, document, options.timeoutMs);
  // The operator's scrape token, if /metrics needs one (the live-session count is read there).
  const scrapeToken = config.server.metrics_token_file ? (await readFile(config.server.metrics_token_file, 'utf8')).trim() : undefined;

  const origin = new URL(url).origin;
  const issuer = options.issuer;
  const logs: [string, string][] = [['rec', path.join(dir, 'rec-calls.jsonl')]];
  if (options.poisoned) logs.push(['poisoned', path.join(dir, 'poisoned-calls.jsonl')]);
  return {
    name: options.name,
    defensesOff: options.defensesOff,
    idp: options.idp,
    url,
    origin,
    resource: url,
    config,
    issuer,
    mint: ({ sub, cap, ttlMs, use, jkt }) =>
      mintToken({ key: issuer.privateJwk, issuer: issuer.issuer, audience: url, sub, cap, ttlMs, tokenType: config.auth.token_type, ...(use ? { use } : {}), ...(jkt ? { jkt } : {}) }),
    approverToken: (sub) => signApproverToken(issuer, url, sub),
    async upstreamMark() {
      const mark: UpstreamMark = {};
      for (const [connector, file] of logs) mark[connector] = (await readLines(file)).length;
      return mark;
    },
    async upstreamCalls(since = {}) {
      const all: UpstreamCall[] = [];
      for (const [connector, file] of logs) {
        const records = await readLines<{ tool: string; args?: Record<string, unknown>; pid?: number }>(file);
        for (const record of records.slice(since[connector] ?? 0)) {
          all.push({ tool: `${connector}__${record.tool}`, args: record.args ?? {}, ...(typeof record.pid === 'number' ? { pid: record.pid } : {}) });
        }
      }
      return all;
    },
    auditRecords: () => readLines<AuditRecord>(path.join(dir, 'audit.jsonl')),
    async liveSessions() {
      const response = await fetch(`${origin}/metrics`, { headers: scrapeToken ? { authorization: `Bearer ${scrapeToken}` } : {} });
      const value = /^bastion_sessions_open (\S+)$/m.exec(await response.text())?.[1];
      if (response.status !== 200 || value === undefined) throw new Error(`cannot read bastion_sessions_open from ${origin}/metrics (HTTP ${response.status})`);
      return Number(value);
    },
    stderr,
    stop,
  };
}
