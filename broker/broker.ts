/**
 * Assembles a running broker from a Config: keys, policy, audit log,
 * connectors, registry and pipeline, built once at start-up so the per-call
 * path only verifies, decides, runs, filters and appends.
 *
 * @example
 *   const broker = await createBroker(config, log);
 *   const verifier = broker.verifierFor('http://127.0.0.1:8080/mcp');
 */
import path from 'node:path';
import type { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { createLocalJWKSet } from 'jose';
import { createAuthenticator, type Authenticator } from './auth/authenticate.ts';
import type { DelegationSigner } from './auth/delegate.ts';
import { ensureDelegationKey, ensureDevKey, readJwksFile, type DevKey } from './auth/keys.ts';
import { issuerKeys, type IssuerKeys } from './auth/keysets.ts';
import { createTokenVerifier, type Principal } from './auth/verify.ts';
import { openEmbeddedState } from './state/embedded.ts';
import type { StateStore } from './state/store.ts';
import { openAuditLog, type AuditLog } from './audit/log.ts';
import { demoConnector, type Config } from './config.ts';
import type { Logger } from './log.ts';
import { loadPolicy, type PolicyEngine } from './policy/engine.ts';
import { Pipeline } from './pipeline.ts';
import { ToolRegistry } from './registry.ts';
import { Connector } from '../connectors/upstream.ts';

interface LiveSession {
  server: Server;
  subscriptions: Set<string>;
}

/** The agent sessions connected right now, for notifications that fan out. */
export class SessionHub {
  private readonly sessions = new Map<string, LiveSession>();

  add(id: string, session: LiveSession): void {
    this.sessions.set(id, session);
  }

  remove(id: string): void {
    this.sessions.delete(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  /** Sends to every session; a session that cannot receive is skipped, never fatal. */
  broadcast(send: (session: LiveSession) => Promise<void>): void {
    for (const session of this.sessions.values()) void send(session).catch(() => undefined);
  }
}

export interface Broker {
  config: Config;
  log: Logger;
  pipeline: Pipeline;
  registry: ToolRegistry;
  connectors: Connector[];
  audit: AuditLog;
  sessions: SessionHub;
  state: StateStore;
  /** Present when no issuer is configured: the embedded default's signing key. */
  devKey: DevKey | undefined;
  issuers: IssuerKeys[];
  /** Stage 1 for tokens addressed to `audience` (the front door's resource identifier). */
  authenticatorFor(audience: string): Authenticator;
  /** Signs delegated tokens for `audience`; undefined when delegation is off. */
  delegationSignerFor(audience: string): DelegationSigner | undefined;
  /** The anonymous principal, when config enables it (loopback-only; checked by the front door). */
  anonymous: Principal | undefined;
  stop(): Promise<void>;
}

export async function createBroker(config: Config, log: Logger): Promise<Broker> {
  const devKey = config.auth.issuers.length === 0 ? await ensureDevKey(config.state_dir) : undefined;
  const sources = devKey ? [{ issuer: devKey.issuer, jwks_file: devKey.jwksFile }] : config.auth.issuers;
  const keyOptions = { minRefreshMs: config.auth.jwks_min_refresh };
  const issuers: IssuerKeys[] = sources.map((source) => issuerKeys(source, keyOptions));
  const delegationKey = config.auth.delegation.enabled ? await ensureDelegationKey(config.state_dir) : undefined;
  if (delegationKey) {
    const local = createLocalJWKSet(await readJwksFile(delegationKey.jwksFile));
    issuers.push({ issuer: delegationKey.issuer, getKey: local, loads: 1 });
  }
  const state = await openEmbeddedState(path.join(config.state_dir, 'state.jsonl'));

  const policy: PolicyEngine = await loadPolicy(config.policy.wasm);
  const audit = await openAuditLog(config.audit.file ?? path.join(config.state_dir, 'audit.jsonl'));
  const sessions = new SessionHub();

  const connectors: Connector[] = [];
  const registry = new ToolRegistry(connectors, log);
  for (const connectorConfig of config.connectors ?? [demoConnector()]) {
    connectors.push(
      new Connector(connectorConfig, {
        log,
        onStatus: () => {
          registry.invalidate();
          sessions.broadcast((s) => s.server.sendToolListChanged());
        },
        onListChanged: (_connector, kind) => {
          registry.invalidate();
          sessions.broadcast((s) =>
            kind === 'tools' ? s.server.sendToolListChanged() : kind === 'prompts' ? s.server.sendPromptListChanged() : s.server.sendResourceListChanged(),
          );
        },
        onResourceUpdated: (_connector, uri) => {
          sessions.broadcast(async (s) => {
            if (s.subscriptions.has(uri)) await s.server.sendResourceUpdated({ uri });
          });
        },
      }),
    );
  }
  await Promise.all(connectors.map((c) => c.start()));

  const anonymousConfig = config.auth.anonymous;
  if (anonymousConfig.enabled) {
    log.warn(
      { sub: anonymousConfig.sub, cap: anonymousConfig.cap },
      'ANONYMOUS ACCESS IS ENABLED: token-less loopback clients get these capabilities. Use only for conformance runs.',
    );
  }

  const pipeline = new Pipeline({ registry, policy: () => policy, audit, log });
  return {
    config,
    log,
    pipeline,
    registry,
    connectors,
    audit,
    sessions,
    state,
    devKey,
    issuers,
    anonymous: anonymousConfig.enabled
      ? { sub: anonymousConfig.sub, iss: 'urn:bastion:anonymous', act: [], cap: anonymousConfig.cap, jti: 'anonymous', exp: Number.MAX_SAFE_INTEGER, anonymous: true, tokenHash: 'none', singleUse: false }
      : undefined,
    authenticatorFor: (audience) =>
      createAuthenticator({
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
    async stop() {
      await Promise.all(connectors.map((c) => c.stop()));
      await audit.close();
      await state.close();
    },
  };
}
