/**
 * Bastion's configuration: one zod schema, the type inferred from it.
 *
 * A config file (YAML or JSON) is optional; with none, Bastion runs the
 * embedded default: the demo connector, the default policy and a dev key.
 * A bad config stops start-up with a message naming the bad field.
 *
 * @example
 *   const config = await loadConfig('bastion.yaml'); // or loadConfig(undefined)
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { z } from 'zod';
import { CapabilitySchema } from './policy/schema.ts';
import { BUNDLE_ALGORITHMS } from './policy/signature.ts';
import { DescriptorCheckConfigSchema } from './filters/descriptor.ts';
import { ResultFilterConfigSchema } from './filters/result.ts';
import { LimitsConfigSchema } from './limits.ts';
import { ItemFlowSettingsSchema, ToolFlowSettingsSchema } from './flows/schema.ts';
import { IdentityConfigSchema, resolveIdentityPaths } from './identity/config.ts';
import { KV_DEFAULTS } from '../sandboxes/capabilities/kv.ts';
import { refusedClaims } from './source-names.ts';

/** The repository root, so defaults resolve the same from any working directory. */
export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const DURATION = /^(\d+)(ms|s|m|h)?$/;
const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;

/** Parses "90", "90s", "5m", "250ms" into milliseconds (bare numbers are seconds). */
export function parseDuration(value: string | number): number {
  if (typeof value === 'number') return value * 1000;
  const match = DURATION.exec(value.trim());
  if (!match) throw new Error(`not a duration: ${JSON.stringify(value)} (use e.g. 30s, 5m)`);
  const unit = (match[2] ?? 's') as keyof typeof UNIT_MS;
  return Number(match[1]) * UNIT_MS[unit];
}

const Duration = z
  .union([z.number().nonnegative(), z.string()])
  .transform((value, ctx) => {
    try {
      return parseDuration(value);
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: (error as Error).message });
      return z.NEVER;
    }
  });

const ConnectorName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,31}$/, 'lowercase letters, digits and "-", starting with a letter, at most 32')
  .refine((name) => !name.includes('__'), 'must not contain "__" (the namespace separator)');

/** Per tool: its risk, and its flow labels and egress arguments (broker/flows/labels.ts). */
const ToolOverrides = z.record(
  z.string(),
  z.strictObject({ risk: z.enum(['low', 'medium', 'high']).optional(), ...ToolFlowSettingsSchema.shape }),
);

/**
 * Who owns an upstream connection that carries per-client state (roots, log
 * level, subscriptions, sampling and elicitation, session resources):
 * `session` (the default) opens one per agent session, `principal` one per
 * principal, shared by its sessions (for upstreams the operator declares keep
 * nothing per client that one session of a principal must not see from another).
 * Bounded per connector and per principal; idle ones are closed.
 */
export const IsolationSchema = z
  .strictObject({
    mode: z.enum(['session', 'principal']).default('session'),
    /** Agent connections open at once on this connector (stdio: child processes). */
    max: z.int().min(1).max(10_000).default(32),
    /** Agent connections one principal may hold at once on this connector. */
    max_per_principal: z.int().min(1).max(10_000).default(8),
    /** An agent connection with no call in flight and no subscription is closed after this long. */
    idle: Duration.default(300_000).refine((ms) => ms >= 100, 'at least 100ms'),
  })
  .refine((isolation) => isolation.max_per_principal <= isolation.max, {
    message: 'max_per_principal must not exceed max',
    path: ['max_per_principal'],
  });
export type IsolationConfig = z.infer<typeof IsolationSchema>;

const ConnectorCommon = {
  name: ConnectorName,
  /** Upstream connections per agent session (default) or per principal, bounded. */
  isolation: IsolationSchema.prefault({}),
  /** Expose tools as `<name>__<tool>` (the default). Off only for a single-upstream setup; clashes are then hidden, never shadowed. */
  namespace: z.boolean().default(true),
  /** Per-tool settings; risk and flow labels otherwise come from the tool's annotations. */
  tools: ToolOverrides.default({}),
  /** Flow labels of the connector's resources and prompts (nothing in MCP says what they bring). */
  labels: ItemFlowSettingsSchema.prefault({}),
  /** Upstream call deadline. */
  timeout: Duration.default(60_000),
};

/**
 * The MCP revision spoken to the upstream: `auto` asks with server/discover and speaks 2026-07-28
 * to a server that offers it, 2025-11-25 (initialize) to any other; or one revision, pinned. The
 * default is `auto` over HTTP (the probe costs one request per connection) and 2025-11-25 over
 * stdio (there the probe starts a second copy of the upstream per connection).
 */
const Protocol = z.enum(['auto', '2025-11-25', '2026-07-28']);

const StdioConnector = z.strictObject({
  ...ConnectorCommon,
  transport: z.literal('stdio'),
  protocol: Protocol.default('2025-11-25'),
  command: z.string().min(1),
  args: z.array(z.string()).default([]),
  cwd: z.string().optional(),
  /** Upstream credentials live here, never with the agent. */
  env: z.record(z.string(), z.string()).default({}),
});

const HttpConnector = z.strictObject({
  ...ConnectorCommon,
  transport: z.literal('http'),
  protocol: Protocol.default('auto'),
  url: z.url(),
  /** Upstream credentials (e.g. Authorization) injected by Bastion, never taken from the agent. */
  headers: z.record(z.string(), z.string()).default({}),
});

export const ConnectorConfigSchema = z.discriminatedUnion('transport', [StdioConnector, HttpConnector]);

/** A plugin's kv store: per-plugin quotas (keys and bytes held) and per-operation caps. */
const KvGrantSchema = z
  .strictObject({
    /** UTF-8 bytes of all its keys and values together. */
    max_bytes: z.number().int().positive().default(KV_DEFAULTS.maxBytes),
    /** Keys held at once. */
    max_keys: z.number().int().positive().default(KV_DEFAULTS.maxKeys),
    /** JSON bytes of one value. */
    max_value_bytes: z.number().int().positive().default(KV_DEFAULTS.maxValueBytes),
    /** UTF-8 bytes of one key (the sandbox sends at most 4096 characters). */
    max_key_bytes: z.number().int().positive().max(4096).default(KV_DEFAULTS.maxKeyBytes),
  })
  .refine((kv) => kv.max_value_bytes <= kv.max_bytes, { message: 'must not exceed max_bytes (such a value could never be stored)', path: ['max_value_bytes'] });

export const PluginConfigSchema = z
  .strictObject({
    /** The plugin directory: plugin.json and its script. */
    dir: z.string().min(1),
    /** `bastion plugin pin <dir>` prints it; a plugin whose files differ is not loaded. */
    hash: z.string().regex(/^sha256:[0-9a-f]{64}$/, 'sha256:<64 hex digits>, from bastion plugin pin'),
    /**
     * The plugin's identity: namespace for its tools and its kv store. Default for tools: the
     * manifest's name (refused at load when another connector or plugin has it); required with kv.
     */
    name: ConnectorName.optional(),
    namespace: z.boolean().default(true),
    tools: ToolOverrides.default({}),
    /** What the operator allows; a plugin gets what its manifest asks for within this. */
    grants: z
      .strictObject({
        fetch: z
          .strictObject({
            origins: z.array(z.string()).min(1),
            methods: z.array(z.enum(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'])).default(['GET', 'HEAD']),
            timeout: Duration.default(5_000),
            max_response_bytes: z.number().int().positive().default(1_048_576),
          })
          .optional(),
        /** true (the default quotas), or the quotas; false: not granted. */
        kv: z
          .union([z.boolean(), KvGrantSchema])
          .default(false)
          .transform((kv) => (kv === true ? KvGrantSchema.parse({}) : kv)),
        log: z.boolean().default(false),
        max_capability_calls: z.number().int().min(0).default(64),
      })
      .prefault({}),
  })
  .refine((plugin) => plugin.grants.kv === false || plugin.name !== undefined, {
    message: "required when grants.kv is set: a plugin's kv store is keyed by the name the operator gives it, never by the name in its manifest",
    path: ['name'],
  });
export type PluginConfig = z.infer<typeof PluginConfigSchema>;

/** The demo plugin of the embedded default, pinned here (a test keeps the pin current). */
export const DEMO_PLUGIN_DIR = path.join(PROJECT_ROOT, 'sandboxes/examples/text-utils');
export const DEMO_PLUGIN_HASH = 'sha256:52eac37023cd9306e508b741b9ee4370321577341d85ed978c7b311c74e3b8c9';
export type ConnectorConfig = z.infer<typeof ConnectorConfigSchema>;

const IssuerSchema = z.union([
  z.strictObject({
    /** Exact `iss` claim value. */
    issuer: z.string().min(1),
    /** Local JWKS file with the issuer's public keys, looked up by `kid`; re-read when it changes. */
    jwks_file: z.string().min(1),
  }),
  z.strictObject({
    issuer: z.string().min(1),
    /** JWKS URL: fetched, cached, refreshed on an unknown `kid` (rate-limited). */
    jwks_url: z.url({ protocol: /^https?$/ }),
  }),
]);

/** Where the policy comes from, how it is checked, and what is logged about its decisions. */
const PolicyConfigSchema = z
  .strictObject({
    /** A compiled module (the default: policies/compiled/policy.wasm); watched and reloaded when it changes. */
    wasm: z.string().default(path.join(PROJECT_ROOT, 'policies/compiled/policy.wasm')),
    /** JSON data for `wasm` (data.bastion.tool_risk, teams, …), reloaded with it. */
    data: z.string().optional(),
    /** A Rego directory: rebuilt with opa build and swapped in only if its opa test passes. Needs the opa CLI. */
    dir: z.string().optional(),
    /** An OPA bundle file (opa build -t wasm -e bastion/decision), reloaded when it changes. */
    bundle: z.string().optional(),
    /** An OPA bundle URL, polled with If-None-Match. */
    bundle_url: z.url({ protocol: /^https?$/ }).optional(),
    /** Request headers for bundle_url (e.g. Authorization), never sent anywhere else. */
    bundle_headers: z.record(z.string(), z.string()).default({}),
    poll_interval: Duration.default(60_000),
    /** Last activated bundle from bundle_url, used when the server is down at start-up. Default <state_dir>/policy-bundle.tar.gz. */
    bundle_persist: z.string().optional(),
    signing: z
      .strictObject({
        /** Refuse bundles without a valid signature (opa build --signing-key). */
        required: z.boolean().default(false),
        /** The signer's public key: PEM (SPKI, PKCS#1, certificate) or JWK file. */
        public_key_file: z.string().optional(),
        algorithm: z.enum(BUNDLE_ALGORITHMS).default('RS256'),
        key_id: z.string().optional(),
        scope: z.string().optional(),
      })
      .prefault({})
      .refine((signing) => !signing.required || signing.public_key_file !== undefined, 'required signatures need public_key_file'),
    /** Watch file sources and reload on change (SIGHUP reloads too). */
    watch: z.boolean().default(true),
    /** Largest policy input evaluated; larger calls are denied. */
    max_input_bytes: z.number().int().positive().default(2 * 1024 * 1024),
    decision_log: z
      .strictObject({
        enabled: z.boolean().default(false),
        /** A file path (relative to state_dir), or "stderr" / "stdout" (never stdout with `bastion stdio`: it is the MCP channel). */
        destination: z.string().default('decisions.jsonl'),
        /** JSON pointers to erase, e.g. /input/arguments/password. */
        mask: z.array(z.string()).default([]),
        /** Erase every argument. */
        mask_arguments: z.boolean().default(false),
        /** Records waiting to be written before new ones are dropped (and counted). */
        max_queued: z.number().int().positive().default(10_000),
      })
      .prefault({}),
  })
  .refine(
    (policy) => [policy.dir, policy.bundle, policy.bundle_url].filter((source) => source !== undefined).length <= 1,
    'give at most one of policy.dir, policy.bundle and policy.bundle_url',
  );

const AnonymousSchema = z.strictObject({
  /** Off by default. Lets token-less loopback clients in with these capabilities (conformance runs only). */
  enabled: z.boolean().default(false),
  sub: z.string().default('anonymous'),
  cap: z.array(CapabilitySchema).default([]),
});

export const ConfigSchema = z.strictObject({
  server: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      port: z.number().int().min(0).max(65535).default(8080),
      /** The broker's resource identifier: the only `aud` accepted. Defaults to the MCP URL. */
      resource: z.string().optional(),
      /** Extra browser origins allowed to call /mcp (DNS-rebinding defence). */
      allowed_origins: z.array(z.string()).default([]),
      /** Largest JSON-RPC request body accepted. */
      max_body_bytes: z.number().int().positive().default(1_048_576),
      /** Serve HTTPS directly (PEM files). Without it, bind to loopback or put a TLS-terminating proxy in front. */
      tls: z.strictObject({ cert_file: z.string(), key_file: z.string() }).optional(),
      /** A client must send a whole request (headers and body) within this time; slow clients are cut off. */
      request_timeout: Duration.default(30_000),
      /** Sessions with no request for this long are closed (clients often vanish without DELETE). */
      session_idle: Duration.default(30 * 60_000),
      /** A file holding the bearer token GET /metrics then requires (at least 32 characters). Absent: /metrics is behind the Host/Origin checks only. */
      metrics_token_file: z.string().optional(),
    })
    .prefault({}),
  auth: z
    .strictObject({
      /** Trusted issuers. Empty means the dev issuer with a key made on first run. */
      issuers: z.array(IssuerSchema).default([]),
      algorithms: z.array(z.enum(['EdDSA', 'ES256'])).min(1).default(['EdDSA', 'ES256']),
      /** Required JOSE `typ` header; keeps other JWTs from the same issuer out. */
      token_type: z.string().default('bastion-cap+jwt'),
      /** Longest lifetime (exp − iat) a token may have. */
      max_ttl: Duration.default(15 * 60_000),
      clock_skew: Duration.default(30_000).refine((ms) => ms <= 30_000, 'at most 30s'),
      /** At most one JWKS re-read or fetch per issuer per this interval, however many unknown kids arrive. */
      jwks_min_refresh: Duration.default(30_000),
      dpop: z.strictObject({ max_age: Duration.default(60_000) }).prefault({}),
      delegation: z
        .strictObject({
          /** Lets a token holder mint narrower, shorter-lived tokens for sub-agents (POST /token/delegate). */
          enabled: z.boolean().default(true),
          max_ttl: Duration.default(5 * 60_000),
        })
        .prefault({}),
      anonymous: AnonymousSchema.prefault({}),
    })
    .prefault({}),
  policy: PolicyConfigSchema.prefault({}),
  /** Bastion as the MCP authorization server, signing users in at the organisation's IdP (broker/identity/config.ts). */
  identity: IdentityConfigSchema.prefault({}),
  audit: z
    .strictObject({
      /** Defaults to <state_dir>/audit.jsonl. */
      file: z.string().optional(),
      /**
       * When a call may be answered: once its record is on stable storage ("disk", O_DSYNC), or
       * once the kernel has it ("process": survives a broker crash, not a power cut; synced within 1 s).
       */
      durability: z.enum(['disk', 'process']).default('disk'),
      /** Signed checkpoints of the chain head in <file>.checkpoints.jsonl (proves truncation and rewrites). */
      checkpoints: z
        .strictObject({
          enabled: z.boolean().default(true),
          /** Private Ed25519 JWK; default <state_dir>/audit-checkpoint-signing-key.json, made on first run (its JWKS beside it). */
          key_file: z.string().optional(),
          /** Checkpoint after this many records… */
          every: z.number().int().positive().default(1000),
          /** …and at least this often while records arrive. */
          interval: Duration.default(60_000),
        })
        .prefault({}),
    })
    .prefault({}),
  /** Quotas and caps (stage 4). */
  limits: LimitsConfigSchema.prefault({}),
  /** Agents' 2025-11-25 tasks (broker/tasks/): live tasks per principal, and the longest a task is kept. */
  tasks: z
    .strictObject({
      max_per_principal: z.number().int().min(1).max(10_000).default(32),
      max_ttl: Duration.default(60 * 60_000).refine((ms) => ms >= 1000 && ms <= 7 * 24 * 60 * 60_000, 'between 1s and 7d'),
    })
    .prefault({}),
  /** Flow control: labels that follow an agent across calls (broker/flows/). */
  flows: z
    .strictObject({
      /** Off: policy gets no `input.flow`, so no flow rule can fire (and nothing is recorded). */
      enabled: z.boolean().default(true),
      /** A flow is forgotten this long after its last change; an operator can clear it sooner. */
      retention: Duration.default(24 * 3_600_000).refine((ms) => ms >= 60_000, 'at least 1m'),
      /** Earlier results kept in detail per flow (labels they brought are never dropped). */
      max_sources: z.number().int().min(4).max(64).default(32),
      /** Hashed value units kept per flow, untrusted and trusted each (8 bytes per unit). */
      max_units: z.number().int().min(64).max(65_536).default(4096),
      /** Value units taken from one result. */
      max_units_per_result: z.number().int().min(16).max(16_384).default(2048),
    })
    .prefault({}),
  filters: z
    .strictObject({
      /** Tool results: secret redaction, prompt-injection flags, hidden-Unicode stripping. */
      result: ResultFilterConfigSchema.prefault({}),
      /** Tool descriptions: poisoning checks; action warn | require_approval | block. */
      descriptor: DescriptorCheckConfigSchema.prefault({}),
    })
    .prefault({}),
  approvals: z
    .strictObject({
      /** Off: a call that needs approval is refused (fail closed). */
      enabled: z.boolean().default(true),
      /** How long a parked call waits when the policy does not say. */
      timeout: Duration.default(5 * 60_000),
      /** Upper bound for a policy's approval.timeout_s. */
      max_timeout: Duration.default(60 * 60_000),
      /** Interval of MCP progress notifications to a waiting agent. */
      progress_every: Duration.default(5_000),
      /**
       * 2026-07-28 agents over HTTP: how long one request watches a parked call before answering
       * input_required with a pickup requestState to come back with (below clients' request timeouts).
       */
      pickup_hold: Duration.default(20_000),
      /** Approver session lifetime. */
      session_ttl: Duration.default(8 * 3_600_000),
      /** POSTed a JSON summary and a link to the page for each new parked call (e.g. a chat webhook). */
      webhook: z.strictObject({ url: z.url(), timeout: Duration.default(5_000) }).optional(),
      /** Approvers sign in at the organisation's IdP (identity.upstream; code + PKCE, state, nonce). Approver tokens keep working. */
      sso: z
        .strictObject({
          enabled: z.boolean().default(false),
          /** Approver roles and the IdP groups that hold each, e.g. {approver: [sre], payments: [finance-leads]}; someone in none of them cannot sign in. */
          roles: z.record(z.string().min(1).max(64), z.array(z.string().min(1).max(256)).min(1).max(64)).default({}),
        })
        .prefault({})
        .refine((sso) => !sso.enabled || Object.keys(sso.roles).length > 0, { message: 'give at least one role and the groups that hold it', path: ['roles'] }),
    })
    .prefault({}),
  /** Where the dev key, audit file and embedded state journal live. */
  state_dir: z.string().default('.bastion'),
  state: z
    .discriminatedUnion('backend', [
      /** A journal in state_dir: durable, one process, no server. */
      z.strictObject({ backend: z.literal('embedded') }),
      /** Redis: several replicas share approvals, replay cache, revocations, quotas and pins. */
      z.strictObject({
        backend: z.literal('redis'),
        url: z.string().regex(/^rediss?:\/\//, 'a redis:// or rediss:// URL'),
        /** Prefix of every key, so several deployments can share one Redis. */
        prefix: z.string().default('bastion:'),
        /** A command that takes longer fails (and the call is denied). */
        command_timeout: Duration.default(2_000),
      }),
    ])
    .default({ backend: 'embedded' }),
  /**
   * For `bastion redteam` ablation runs only: defenses switched OFF to measure
   * what each one stops. Never set this in production; start-up logs it loudly.
   */
  defenses_off: z.array(z.enum(['tokens', 'policy', 'approvals', 'sandbox_limits', 'filters', 'quotas'])).default([]),
  /** Names this broker in audit records and approval ownership; defaults to host name and pid. */
  replica_id: z.string().min(1).max(128).optional(),
  log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Upstream MCP servers. Absent means the embedded demo connector. */
  connectors: z.array(ConnectorConfigSchema).optional(),
  /** Untrusted plugins run in isolated-vm sandboxes. Absent (with connectors absent too) means the demo plugin. */
  plugins: z.array(PluginConfigSchema).optional(),
  sandbox: z
    .strictObject({
      /** Supervised sandbox processes holding the isolates (never the broker's own process). */
      processes: z.number().int().min(1).max(32).default(2),
      /** Isolates one plugin may have busy at once: its concurrency. */
      max_isolates_per_plugin: z.number().int().min(1).max(64).default(4),
      /** Caps on what a manifest may ask for. */
      max_limits: z
        .strictObject({ memory_mb: z.number().int().min(8).optional(), cpu_ms: z.number().int().min(1).optional(), wall_ms: z.number().int().min(1).optional() })
        .prefault({}),
    })
    .prefault({}),
});

export type Config = z.infer<typeof ConfigSchema>;

/** The broker's resource identifier: server.resource, or the MCP URL it listens at. */
export function defaultResource(config: Config): string {
  const host = config.server.host.includes(':') ? `[${config.server.host}]` : config.server.host;
  return config.server.resource ?? `http://${host}:${config.server.port}/mcp`;
}

/** Rules across sections, checked after the schema. */
function crossSectionProblems(config: Config): string[] {
  return config.approvals.sso.enabled && !config.identity.upstream ? ['  approvals.sso.enabled: approver sign-in needs identity.upstream (the IdP approvers sign in at)'] : [];
}

/** The demo upstream shipped in this repo: one low-risk and one high-risk tool. */
export function demoConnector(): ConnectorConfig {
  return ConnectorConfigSchema.parse({
    name: 'demo',
    transport: 'stdio',
    command: process.execPath,
    args: [path.join(PROJECT_ROOT, 'connectors/demo-server.ts')],
  });
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** Validates a parsed config document; the error names each bad field by path. */
export function parseConfig(document: unknown, source = 'config'): Config {
  const result = ConfigSchema.safeParse(document ?? {});
  if (!result.success) {
    const lines = result.error.issues.map(
      (issue) => `  ${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`,
    );
    throw new ConfigError(`invalid ${source}:\n${lines.join('\n')}`);
  }
  // Connectors and plugins share one namespace (source-names.ts); names from manifests are checked at load.
  const claims = [
    ...(result.data.connectors ?? []).map((connector, i) => ({ name: connector.name, where: `connectors.${i}`, configured: true })),
    ...(result.data.plugins ?? []).flatMap((plugin, i) => (plugin.name === undefined ? [] : [{ name: plugin.name, where: `plugins.${i}`, configured: true }])),
  ];
  const clashes = refusedClaims(claims).flatMap((refusal, i) => (refusal === undefined ? [] : [`  ${claims[i]!.where}.name: ${refusal}`]));
  if (clashes.length > 0) throw new ConfigError(`invalid ${source}:\n${clashes.join('\n')}`);
  const problems = crossSectionProblems(result.data);
  if (problems.length > 0) throw new ConfigError(`invalid ${source}:\n${problems.join('\n')}`);
  return result.data;
}

/** Reads a YAML or JSON config file; `undefined` gives the embedded default. */
export async function loadConfig(file: string | undefined): Promise<Config> {
  if (!file) return parseConfig({}, 'embedded default');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`cannot read config ${file}: ${(error as Error).message}`);
  }
  let document: unknown;
  try {
    document = file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (error) {
    throw new ConfigError(`cannot parse config ${file}: ${(error as Error).message}`);
  }
  const config = parseConfig(document, `config ${file}`);
  // Relative paths in a config file are relative to that file, not the cwd.
  const base = path.dirname(path.resolve(file));
  const resolve = (p: string) => path.resolve(base, p);
  config.state_dir = resolve(config.state_dir);
  if (config.audit.file) config.audit.file = resolve(config.audit.file);
  config.policy.wasm = resolve(config.policy.wasm);
  for (const issuer of config.auth.issuers) if ('jwks_file' in issuer) issuer.jwks_file = resolve(issuer.jwks_file);
  if (config.server.metrics_token_file) config.server.metrics_token_file = resolve(config.server.metrics_token_file);
  if (config.server.tls) {
    config.server.tls.cert_file = resolve(config.server.tls.cert_file);
    config.server.tls.key_file = resolve(config.server.tls.key_file);
  }
  for (const connector of config.connectors ?? []) {
    if (connector.transport === 'stdio' && connector.cwd) connector.cwd = resolve(connector.cwd);
  }
  for (const plugin of config.plugins ?? []) plugin.dir = resolve(plugin.dir);
  resolveIdentityPaths(config.identity, resolve);
  return config;
}
