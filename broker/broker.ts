/**
 * Assembles a running broker from a Config: keys, policy, audit log,
 * connectors, registry and pipeline, built once at start-up so the per-call
 * path only verifies, decides, runs, filters and appends.
 *
 * @example
 *   const broker = await createBroker(config, log);
 *   const verifier = broker.verifierFor('http://127.0.0.1:8080/mcp');
 */
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Server } from '@modelcontextprotocol/server';
import type { JWK } from 'jose';
import { createLocalJWKSet, decodeJwt } from 'jose';
import { CapabilitySchema, type Decision, type PolicyInput } from './policy/schema.ts';
import { createAuthenticator, type Authenticator } from './auth/authenticate.ts';
import type { DelegationSigner } from './auth/delegate.ts';
import { RequestStateSealer } from './server/request-state.ts';
import { HELD_EXCHANGE_TTL_MS, HELD_EXCHANGES_PER_PRINCIPAL, HeldExchanges } from './server/held-exchanges.ts';
import { ensureAuditCheckpointKey, ensureDelegationKey, ensureDevKey, readJwksFile, type DevKey } from './auth/keys.ts';
import { issuerKeys, type IssuerKeys } from './auth/keysets.ts';
import { createTokenVerifier, type Principal } from './auth/verify.ts';
import { ApproverDirectory } from './approvals/approvers.ts';
import { ApprovalDesk, stateBus } from './approvals/desk.ts';
import { webhookNotifier } from './approvals/webhook.ts';
import { PickupTickets } from './approvals/pickup.ts';
import { sharedSecret } from './state/shared-secret.ts';
import { revocationOf } from './auth/revocation.ts';
import { Denial } from './errors.ts';
import { openEmbeddedState, STATE_DATABASE } from './state/embedded.ts';
import { PluginHost } from '../sandboxes/host.ts';
import type { KvGrant } from '../sandboxes/capabilities/kv.ts';
import { refusedClaims } from './source-names.ts';
import { SandboxPool } from '../sandboxes/pool.ts';
import { lockStateDir } from './state/lock.ts';
import { createDescriptorCheck } from './filters/descriptor.ts';
import { createResultFilter } from './filters/result.ts';
import { Limits } from './limits.ts';
import type { StateStore } from './state/store.ts';
import { AuditCheckpointer, withCheckpoints } from './audit/checkpoint.ts';
import { openAuditLog, type AuditLog } from './audit/log.ts';
import { DEMO_PLUGIN_DIR, DEMO_PLUGIN_HASH, demoConnector, PluginConfigSchema, type Config, type PluginConfig } from './config.ts';
import type { Logger } from './log.ts';
import { DecisionLog, type DecisionLogDestination } from './policy/decision-log.ts';
import type { PolicyEngine } from './policy/engine.ts';
import { PolicyHolder, type PolicySource } from './policy/holder.ts';
import { recordPolicyReload } from './metrics.ts';
import { readBundleKeyFile, type BundleVerification } from './policy/signature.ts';
import { Pipeline } from './pipeline.ts';
import { TaskTable } from './tasks/task-table.ts';
import { descriptorHash, exposed, legacyDescriptorHash, ToolRegistry } from './registry.ts';
import { DescriptorPins } from './pins.ts';
import { FlowControl } from './flows/control.ts';
import { Connector, type AgentChannel } from '../connectors/upstream.ts';

interface LiveSession {
  server: Server;
  subscriptions: Set<string>;
  /** The session as a whole, for what its own upstream connections send outside a request. */
  channel: AgentChannel;
}

/** A catalog kind whose list changed. */
export type ListChange = 'tools' | 'prompts' | 'resources';

/**
 * Every agent session's MCP server, from the moment a front door builds it
 * until it closes: for notifications that fan out, and the
 * bastion_sessions_open gauge. A front door closes every server it builds
 * (a failed initialize included), so nothing stays here past its session.
 * 2026-07-28 clients hold no session: their front door listens for list
 * changes here (`onChange`) and hands them to its `subscriptions/listen` streams.
 */
export class SessionHub {
  private readonly sessions = new Map<string, LiveSession>();
  private readonly closedListeners: ((id: string) => void)[] = [];
  private readonly listeners = new Set<(change: ListChange) => void>();

  add(id: string, session: LiveSession): void {
    this.sessions.set(id, session);
  }

  /** The session left: listeners tear down what it held (its upstream connections). */
  remove(id: string): void {
    if (!this.sessions.delete(id)) return;
    for (const listener of this.closedListeners) listener(id);
  }

  get(id: string): LiveSession | undefined {
    return this.sessions.get(id);
  }

  onClosed(listener: (id: string) => void): void {
    this.closedListeners.push(listener);
  }

  get size(): number {
    return this.sessions.size;
  }

  /** Sends to every session; a session that cannot receive is skipped, never fatal. */
  broadcast(send: (session: LiveSession) => Promise<void>): void {
    for (const session of this.sessions.values()) void send(session).catch(() => undefined);
  }

  /** Tells every session, and every listener, that a list changed. */
  listChanged(change: ListChange): void {
    this.broadcast((s) => (change === 'tools' ? s.server.sendToolListChanged() : change === 'prompts' ? s.server.sendPromptListChanged() : s.server.sendResourceListChanged()));
    for (const listener of this.listeners) {
      try {
        listener(change);
      } catch {
        // A listener that cannot take the change is skipped, like a session that cannot.
      }
    }
  }

  /** Calls `listener` on every list change until the returned function is called. */
  onChange(listener: (change: ListChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

export interface Broker {
  config: Config;
  log: Logger;
  pipeline: Pipeline;
  registry: ToolRegistry;
  connectors: Connector[];
  /** Sandboxed plugins (isolated-vm isolates in supervised sandbox processes). */
  plugins: PluginHost[];
  audit: AuditLog;
  /** The policy in force, hot-reloaded from its source; `reload()` on SIGHUP, `onReload` for metrics. */
  policy: PolicyHolder;
  decisionLog: DecisionLog | undefined;
  sessions: SessionHub;
  state: StateStore;
  /** Present when no issuer is configured: the embedded default's signing key. */
  devKey: DevKey | undefined;
  issuers: IssuerKeys[];
  /** Stage 1 for tokens addressed to `audience` (the front door's resource identifier). */
  authenticatorFor(audience: string): Authenticator;
  /** Signs delegated tokens for `audience`; undefined when delegation is off. */
  delegationSignerFor(audience: string): DelegationSigner | undefined;
  /** Parks calls that need human approval; undefined when approvals are off. */
  approvals: ApprovalDesk | undefined;
  approversFor(audience: string): ApproverDirectory;
  /** The approval page's URL, once the HTTP front door knows it (for links and webhooks). */
  approvalPageUrl: string | undefined;
  pins: DescriptorPins;
  /** Flow control (labels that follow an agent across calls); undefined when config turns it off. */
  flows: FlowControl | undefined;
  /** The anonymous principal, when config enables it (loopback-only; checked by the front door). */
  anonymous: Principal | undefined;
  stop(): Promise<void>;
}

/** Ablation only: a "policy" that allows everything, keeping approval for high-risk tools (a separate layer). */
function permissivePolicy(real: PolicyEngine): PolicyEngine {
  const decide = (input: PolicyInput): Decision => ({
    allow: true,
    approval: { required: input.tool.risk === 'high', quorum: 1, reason: `${input.tool.name} is a high-risk tool` },
    reasons: ['policy switched off (ablation run)'],
    obligations: { redact: [], max_result_bytes: 16 * 1024 * 1024 },
  });
  // Grants stay the real policy's: the ablation is about tool calls, not who gets a token.
  const evaluateGrants = (input: unknown) => real.evaluateGrants(input);
  return { revision: 'ablation:no-policy', bundleRevision: real.bundleRevision, source: real.source, decide, decideTrusted: decide, evaluateGrants };
}

/** Ablation only: believes a token's claims without verifying anything. */
function uncheckedAuthenticator(_options: Parameters<typeof createAuthenticator>[0]): Authenticator {
  return {
    async authenticate({ token }) {
      let claims: Record<string, unknown> = {};
      try {
        claims = token ? decodeJwt(token) : {};
      } catch {
        // An undecodable token still gets in: that is what "no token checks" means.
      }
      const cap = CapabilitySchema.array().safeParse(claims.cap);
      return {
        sub: typeof claims.sub === 'string' ? claims.sub : 'unverified',
        iss: typeof claims.iss === 'string' ? claims.iss : 'unverified',
        act: [],
        cap: cap.success ? cap.data : [],
        jti: typeof claims.jti === 'string' ? claims.jti : 'unverified',
        exp: Number.MAX_SAFE_INTEGER,
        anonymous: false,
        tokenHash: 'unverified',
        singleUse: false,
      };
    },
  };
}

/** What the operator's kv grant becomes for the host. */
function kvGrant(kv: PluginConfig['grants']['kv']): KvGrant | false {
  return kv && { maxBytes: kv.max_bytes, maxKeys: kv.max_keys, maxValueBytes: kv.max_value_bytes, maxKeyBytes: kv.max_key_bytes };
}

/**
 * Loads the configured plugins (or the demo plugin of the embedded default)
 * into one supervised pool of sandbox processes. A plugin whose files do not
 * match its pin, or whose name is another source's (source-names.ts), stays
 * down with an error saying why; the broker serves everything else.
 */
async function startPlugins(config: Config, state: StateStore, log: Logger, limitsOff: boolean): Promise<{ pool: SandboxPool | undefined; plugins: PluginHost[] }> {
  const configured: PluginConfig[] =
    config.plugins ?? (config.connectors === undefined ? [PluginConfigSchema.parse({ dir: DEMO_PLUGIN_DIR, hash: DEMO_PLUGIN_HASH })] : []);
  if (configured.length === 0) return { pool: undefined, plugins: [] };
  const pool = new SandboxPool({ log, size: config.sandbox.processes, maxIsolatesPerPlugin: config.sandbox.max_isolates_per_plugin });
  await pool.start();
  // Ablation only: "no sandbox limits" lifts the caps to the schema's maximums.
  const maxLimits = limitsOff ? { memory_mb: 4096, cpu_ms: 600_000, wall_ms: 3_600_000 } : config.sandbox.max_limits;
  const plugins = configured.map(
    (plugin) =>
      new PluginHost({
        dir: plugin.dir,
        hash: plugin.hash,
        pool,
        log,
        kv: state,
        namespace: plugin.namespace,
        tools: plugin.tools,
        maxLimits,
        ...(plugin.name ? { name: plugin.name } : {}),
        grants: {
          kv: kvGrant(plugin.grants.kv),
          log: plugin.grants.log,
          maxCapabilityCalls: plugin.grants.max_capability_calls,
          ...(plugin.grants.fetch
            ? { fetch: { origins: plugin.grants.fetch.origins, methods: plugin.grants.fetch.methods, timeoutMs: plugin.grants.fetch.timeout, maxResponseBytes: plugin.grants.fetch.max_response_bytes } }
            : {}),
        },
      }),
  );
  const connectors = config.connectors ?? [demoConnector()];
  const claims = [
    ...connectors.map((connector, i) => ({ name: connector.name, where: config.connectors ? `connectors.${i}` : 'the demo connector', configured: true })),
    ...plugins.map((plugin, i) => ({ name: plugin.name, where: config.plugins ? `plugins.${i}` : 'the demo plugin', configured: configured[i]!.name !== undefined })),
  ];
  refusedClaims(claims)
    .slice(connectors.length)
    .forEach((refusal, i) => refusal && plugins[i]!.refuse('BASTION_PLUGIN_NAME_TAKEN', `plugin ${claims[connectors.length + i]!.where} (${configured[i]!.dir}) is not loaded: ${refusal}`));
  await Promise.all(plugins.map((p) => p.start()));
  for (const plugin of plugins) {
    if (plugin.status !== 'ready') log.error({ plugin: plugin.name, err: plugin.lastError }, 'plugin not loaded');
  }
  return { pool, plugins };
}

/** The configured state backend; Redis is loaded only when configured. */
async function openState(config: Config): Promise<StateStore> {
  if (config.state.backend === 'redis') {
    const { openRedisState } = await import('./state/redis.ts');
    return openRedisState({ url: config.state.url, prefix: config.state.prefix, commandTimeoutMs: config.state.command_timeout });
  }
  return openEmbeddedState(path.join(config.state_dir, STATE_DATABASE));
}

/** Test seams: a clock for the approval desk and pickup tickets (never wall-clock sleeps in tests). */
export interface BrokerOptions {
  now?: () => number;
}

export async function createBroker(config: Config, log: Logger, options: BrokerOptions = {}): Promise<Broker> {
  const unlock = await lockStateDir(config.state_dir);
  const devKey = config.auth.issuers.length === 0 ? await ensureDevKey(config.state_dir) : undefined;
  const sources = devKey ? [{ issuer: devKey.issuer, jwks_file: devKey.jwksFile }] : config.auth.issuers;
  const keyOptions = { minRefreshMs: config.auth.jwks_min_refresh };
  const issuers: IssuerKeys[] = sources.map((source) => issuerKeys(source, keyOptions));
  // The broker's own key: signs delegated tokens and approval evidence.
  const brokerKey = await ensureDelegationKey(config.state_dir);
  const delegationKey = config.auth.delegation.enabled ? brokerKey : undefined;
  if (delegationKey) {
    const local = createLocalJWKSet(await readJwksFile(delegationKey.jwksFile));
    issuers.push({ issuer: delegationKey.issuer, getKey: local, loads: 1 });
  }
  const state = await openState(config);

  const policy = await PolicyHolder.open({
    source: policySource(config),
    log,
    verification: await bundleVerification(config.policy.signing),
    engine: { maxInputBytes: config.policy.max_input_bytes },
    watch: config.policy.watch,
  });
  // Every reload attempt (file watch, bundle poll, SIGHUP) is counted in bastion_policy_reloads_total{outcome}.
  policy.onReload((event) => recordPolicyReload(!event.ok ? 'failed' : event.changed ? 'changed' : 'unchanged'));
  const decisionLog = config.policy.decision_log.enabled ? await openDecisionLog(config, log) : undefined;
  const auditFile = config.audit.file ?? path.join(config.state_dir, 'audit.jsonl');
  const replicaId = config.replica_id ?? `${os.hostname()}:${process.pid}`;
  let audit = await openAuditLog(auditFile, { replica: replicaId, durability: config.audit.durability });
  if (config.audit.checkpoints.enabled) {
    const key = config.audit.checkpoints.key_file
      ? (JSON.parse(await readFile(config.audit.checkpoints.key_file, 'utf8')) as JWK)
      : (await ensureAuditCheckpointKey(config.state_dir)).privateJwk;
    const checkpointer = await AuditCheckpointer.open({
      auditFile,
      key,
      kid: key.kid ?? 'audit',
      every: config.audit.checkpoints.every,
      intervalMs: config.audit.checkpoints.interval,
    });
    audit = withCheckpoints(audit, checkpointer);
  }
  const sessions = new SessionHub();
  // Agents' tasks (2025-11-25): this process's, as the upstream connections that hold them are (broker/tasks/).
  const tasks = new TaskTable({ maxPerPrincipal: config.tasks.max_per_principal, maxTtlMs: config.tasks.max_ttl });

  const connectors: Connector[] = [];
  const off = new Set(config.defenses_off);
  // With filters switched off (ablation), poisoned descriptions are only logged.
  const { pool, plugins } = await startPlugins(config, state, log, off.has('sandbox_limits'));
  const registry = new ToolRegistry(
    connectors,
    log,
    createDescriptorCheck(off.has('filters') ? { ...config.filters.descriptor, action: 'warn' } : config.filters.descriptor),
    plugins,
  );
  const pins = new DescriptorPins({
    state,
    log,
    audit: async (event) => void (await audit.append(event)),
    hashOf: descriptorHash,
    legacyHashOf: legacyDescriptorHash,
    exposedName: (connector, tool) => {
      const owner = connectors.find((c) => c.name === connector);
      return owner ? exposed(owner, tool) : `${connector}__${tool}`;
    },
    exposedNames: () => [...connectors, ...plugins].flatMap((source) => source.catalog.tools.map((tool) => exposed(source, tool.name))),
  });
  await pins.load();
  registry.pinStatus = (connector, tool, hash, descriptor) => pins.status(connector, tool, hash, descriptor);
  registry.onInstructionsFlagged = ({ connector, hash, withheld, verdict }) =>
    void audit
      .append({
        event: 'instructions.flagged',
        outcome: 'info',
        detail: { connector, hash, withheld, action: verdict.action, findings: verdict.findings.map(({ kind, where }) => ({ kind, where })) },
      })
      .catch((error: Error) => log.error({ connector, err: error.message }, 'auditing flagged instructions failed'));
  /** Re-pins or quarantines after a catalog change, then tells every session the list changed. */
  const reconcile = (connector: Connector) =>
    pins
      .reconcile(connector)
      .catch((error: Error) => log.error({ connector: connector.name, err: error.message }, 'descriptor pinning failed'))
      .finally(() => {
        registry.invalidate();
        sessions.listChanged('tools');
      });
  for (const connectorConfig of config.connectors ?? [demoConnector()]) {
    connectors.push(
      new Connector(connectorConfig, {
        log,
        onStatus: (connector, status) => {
          registry.invalidate();
          sessions.listChanged('tools');
          if (status === 'ready') void reconcile(connector);
        },
        onListChanged: async (connector, kind) => {
          registry.invalidate();
          sessions.listChanged(kind);
          // Returned, so the connector's catalogSettled() covers re-pinning too.
          if (kind === 'tools') await reconcile(connector);
        },
        agentChannel: (sessionId) => sessions.get(sessionId)?.channel,
        // What an upstream says of its tasks reaches the owner under Bastion's ids; a task Bastion does not know is dropped.
        taskIdFor: (connector, connection, upstreamId) => tasks.byUpstream(connector.name, connection, upstreamId)?.id,
        onAgentRefused: (connector, origin, denial) => {
          log.warn({ connector: connector.name, session: origin.sessionId, sub: origin.owner.sub, code: denial.code }, denial.reason);
          void audit
            .append({
              event: 'upstream/connect',
              session: origin.sessionId,
              principal: { iss: origin.owner.iss, sub: origin.owner.sub },
              outcome: 'denied',
              denial: denial.toJSON(),
              detail: { connector: connector.name },
            })
            .catch((error: Error) => log.error({ err: error.message }, 'could not audit a refused upstream connection'));
        },
      }),
    );
  }
  // An agent session's upstream connections end with it (a stdio child process stops).
  sessions.onClosed((id) => {
    for (const connector of connectors) void connector.release(id);
  });
  await Promise.all(connectors.map((c) => c.start()));
  // Pin (or quarantine) before the first agent sees a tool list.
  await Promise.all(connectors.map((c) => reconcile(c)));

  const anonymousConfig = config.auth.anonymous;
  if (anonymousConfig.enabled) {
    log.warn(
      { sub: anonymousConfig.sub, cap: anonymousConfig.cap },
      'ANONYMOUS ACCESS IS ENABLED: token-less loopback clients get these capabilities. Use only for conformance runs.',
    );
  }

  let approvalPageUrl: string | undefined;
  const approvals = config.approvals.enabled
    ? new ApprovalDesk({
        state,
        bus: stateBus(state),
        audit: async (event) => void (await audit.append(event)),
        log,
        signingKey: brokerKey.privateJwk,
        // Stable across restarts, so a restarted broker fences its predecessor's parked calls at once
        // (approvals/owners.ts): the configured replica id, else this host's state folder.
        replica: config.replica_id ?? `${os.hostname()}:${path.resolve(config.state_dir)}`,
        // The embedded store is this process's alone (the state folder's lock): every other owner is dead.
        soleState: config.state.backend === 'embedded',
        progressEveryMs: config.approvals.progress_every,
        ...(options.now ? { now: options.now } : {}),
        ...(config.approvals.webhook ? { onParked: webhookNotifier(config.approvals.webhook, () => approvalPageUrl, log) } : {}),
      })
    : undefined;
  await approvals?.start();
  // 2026-07-28 pickups: sealed under a secret every replica shares (state store), so any replica opens what another issued.
  const tickets = approvals
    ? new PickupTickets(RequestStateSealer.fromSecret(await sharedSecret(state, 'request-state'), 'approval', options.now ? { now: options.now } : {}), options.now)
    : undefined;

  const recheck = async (principal: Principal) => {
    const revoked = await revocationOf(state, principal);
    if (revoked) throw new Denial('authenticate', 'BASTION_TOKEN_REVOKED', `${revoked} (revoked while the call waited)`);
    if (principal.exp * 1000 < Date.now()) throw new Denial('authenticate', 'BASTION_TOKEN_EXPIRED', 'the token expired while the call waited for approval');
  };
  if (off.size > 0) log.warn({ defenses_off: [...off] }, 'DEFENSES SWITCHED OFF FOR AN ABLATION RUN: this broker is not safe to use');
  const flows = config.flows.enabled ? new FlowControl({ state, settings: config.flows, delegationIssuer: delegationKey?.issuer, log }) : undefined;
  await flows?.start();
  const exchanges = new HeldExchanges({ maxPerPrincipal: HELD_EXCHANGES_PER_PRINCIPAL, ttlMs: HELD_EXCHANGE_TTL_MS });
  const pipeline = new Pipeline({
    registry,
    // Asked once per call, and that engine decides the whole call: a reload never changes it mid-call.
    policy: off.has('policy') ? () => permissivePolicy(policy.current()) : () => policy.current(),
    ...(decisionLog ? { decisionLog } : {}),
    audit,
    log,
    recheck,
    ...(flows ? { flows } : {}),
    // Multi-round-trip continuations: sealed under the secret every replica shares (state store), as pickups are.
    requestStates: RequestStateSealer.fromSecret(await sharedSecret(state, 'request-state'), 'mrtr', options.now ? { now: options.now } : {}),
    // Era translation (a 2025 upstream asking a 2026 agent mid-call): held in this process, bounded per principal.
    exchanges,
    tasks,
    filter: createResultFilter(off.has('filters') ? { redaction: { enabled: false }, injection: { enabled: false } } : config.filters.result),
    ...(off.has('quotas') ? {} : { limits: new Limits(config.limits, state) }),
    autoApprove: off.has('approvals'),
    ...(approvals ? { approvals: { desk: approvals, defaultTimeoutMs: config.approvals.timeout, maxTimeoutMs: config.approvals.max_timeout, ...(tickets ? { tickets } : {}) } } : {}),
  });
  const broker: Broker = {
    config,
    log,
    pipeline,
    registry,
    connectors,
    audit,
    policy,
    decisionLog,
    sessions,
    state,
    devKey,
    issuers,
    anonymous: anonymousConfig.enabled
      ? { sub: anonymousConfig.sub, iss: 'urn:bastion:anonymous', act: [], cap: anonymousConfig.cap, jti: 'anonymous', exp: Number.MAX_SAFE_INTEGER, anonymous: true, tokenHash: 'none', singleUse: false }
      : undefined,
    authenticatorFor: (audience) =>
      (off.has('tokens') ? uncheckedAuthenticator : createAuthenticator)({
        verifier: createTokenVerifier({
          issuers,
          audience,
          algorithms: config.auth.algorithms,
          tokenType: config.auth.token_type,
          maxTtlMs: config.auth.max_ttl,
          clockSkewMs: config.auth.clock_skew,
        }),
        state,
        algorithms: config.auth.algorithms,
        dpopMaxAgeMs: config.auth.dpop.max_age,
        clockSkewMs: config.auth.clock_skew,
      }),
    delegationSignerFor: (audience) =>
      delegationKey
        ? {
            key: delegationKey.privateJwk,
            issuer: delegationKey.issuer,
            audience,
            tokenType: config.auth.token_type,
            maxTtlMs: Math.min(config.auth.delegation.max_ttl, config.auth.max_ttl),
          }
        : undefined,
    approvals,
    pins,
    flows,
    plugins,
    approversFor: (audience) =>
      new ApproverDirectory({
        issuers,
        audience,
        algorithms: config.auth.algorithms,
        state,
        sessionTtlMs: config.approvals.session_ttl,
        clockSkewMs: config.auth.clock_skew,
      }),
    get approvalPageUrl() {
      return approvalPageUrl;
    },
    set approvalPageUrl(url) {
      approvalPageUrl = url;
    },
    async stop() {
      exchanges.close();
      await approvals?.stop();
      await Promise.all(connectors.map((c) => c.stop()));
      await Promise.all(plugins.map((p) => p.stop()));
      await pool?.stop();
      await policy.close();
      await decisionLog?.close();
      await audit.close();
      await state.close();
      await unlock();
    },
  };
  return broker;
}

/** The configured policy source: a Rego directory, a bundle file or URL, else the compiled module (+ data). */
export function policySource(config: Config): PolicySource {
  const { policy } = config;
  if (policy.dir) return { kind: 'rego', dir: policy.dir };
  if (policy.bundle) return { kind: 'bundle', path: policy.bundle };
  if (policy.bundle_url) {
    return {
      kind: 'url',
      url: policy.bundle_url,
      intervalMs: policy.poll_interval,
      headers: policy.bundle_headers,
      persist: policy.bundle_persist ?? path.join(config.state_dir, 'policy-bundle.tar.gz'),
    };
  }
  return { kind: 'wasm', path: policy.wasm, dataFile: policy.data };
}

async function bundleVerification(signing: Config['policy']['signing']): Promise<BundleVerification> {
  return {
    required: signing.required,
    algorithm: signing.algorithm,
    keyId: signing.key_id,
    scope: signing.scope,
    ...(signing.public_key_file ? { publicKey: await readBundleKeyFile(signing.public_key_file) } : {}),
  };
}

function openDecisionLog(config: Config, log: Logger): Promise<DecisionLog> {
  const settings = config.policy.decision_log;
  const { destination: where } = settings;
  const destination: DecisionLogDestination = where === 'stdout' || where === 'stderr' ? { stream: where } : { file: path.resolve(config.state_dir, where) };
  return DecisionLog.open({ destination, mask: settings.mask, maskArguments: settings.mask_arguments, maxQueued: settings.max_queued, log });
}
