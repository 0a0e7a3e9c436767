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
import { ensureDevKey, readJwksFile, type DevKey } from './auth/keys.ts';
import { createTokenVerifier, type Principal, type TokenVerifier, type TrustedIssuer } from './auth/verify.ts';
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
  /** Present when no issuer is configured: the embedded default's signing key. */
  devKey: DevKey | undefined;
  issuers: TrustedIssuer[];
  verifierFor(audience: string): TokenVerifier;
  /** The anonymous principal, when config enables it (loopback-only; checked by the front door). */
  anonymous: Principal | undefined;
  stop(): Promise<void>;
}

export async function createBroker(config: Config, log: Logger): Promise<Broker> {
  const devKey = config.auth.issuers.length === 0 ? await ensureDevKey(config.state_dir) : undefined;
  const issuerFiles = devKey ? [{ issuer: devKey.issuer, jwks_file: devKey.jwksFile }] : config.auth.issuers;
  const issuers = await Promise.all(
    issuerFiles.map(async (i) => ({ issuer: i.issuer, jwks: await readJwksFile(i.jwks_file) })),
  );

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
    devKey,
    issuers,
    anonymous: anonymousConfig.enabled
      ? { sub: anonymousConfig.sub, iss: 'urn:bastion:anonymous', act: [], cap: anonymousConfig.cap, jti: 'anonymous', exp: Number.MAX_SAFE_INTEGER, anonymous: true, tokenHash: 'none' }
      : undefined,
    verifierFor: (audience) =>
      createTokenVerifier({
        issuers,
        audience,
        algorithms: config.auth.algorithms,
        tokenType: config.auth.token_type,
        maxTtlMs: config.auth.max_ttl,
        clockSkewMs: config.auth.clock_skew,
      }),
    async stop() {
      await Promise.all(connectors.map((c) => c.stop()));
      await audit.close();
    },
  };
}
