/**
 * Audit records and metrics for the authorization server: every
 * authorization, sign-in, consent, refusal, token issued, refresh, reuse
 * detection, registration and revocation. Records name the user, the client
 * and what was granted; never a code, token or secret.
 *
 * @example
 *   await oauthAudit.record('oauth/consent', 'ok', { client_id, sub, tools });
 */
import { Counter } from 'prom-client';
import type { AuditEvent } from '../audit/chain.ts';
import { metrics } from '../metrics.ts';

export type OAuthEvent =
  | 'oauth/authorize'
  | 'oauth/sign-in'
  | 'oauth/approver-sign-in'
  | 'oauth/consent'
  | 'oauth/token'
  | 'oauth/refresh-reuse'
  | 'oauth/revoke'
  | 'oauth/register';

const outcomes = new Counter({
  name: 'bastion_oauth_events_total',
  help: 'Authorization-server events by event (authorize, sign-in, approver-sign-in, consent, token, refresh-reuse, revoke, register), outcome and OAuth error.',
  labelNames: ['event', 'outcome', 'error'],
  registers: [metrics.registry],
});

export interface OAuthAudit {
  record(event: OAuthEvent, outcome: 'ok' | 'denied' | 'error' | 'info', detail: Record<string, unknown>, refusal?: { error: string; description: string }): Promise<void>;
}

/** Wraps the broker's audit append; `detail.sub` (with `detail.idp`, its issuer) becomes the record's principal. */
export function oauthAudit(append: (event: AuditEvent) => Promise<void>): OAuthAudit {
  return {
    async record(event, outcome, detail, refusal) {
      outcomes.labels(event.slice('oauth/'.length), outcome, refusal?.error ?? '').inc();
      const { sub, idp, ...rest } = detail;
      await append({
        event,
        transport: 'http',
        outcome,
        ...(typeof sub === 'string' ? { principal: { sub, iss: typeof idp === 'string' ? idp : 'unknown' } } : {}),
        ...(refusal ? { denial: { stage: 'authenticate', code: `oauth:${refusal.error}`, reason: refusal.description } } : {}),
        detail: rest,
      });
    },
  };
}
