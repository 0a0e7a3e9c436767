/**
 * Notifies approvers elsewhere (a chat channel, a pager) that a call is
 * waiting: one JSON POST per parked call with a link to the page. Fire and
 * forget with its own deadline: a slow or failing webhook never holds a call.
 *
 * @example
 *   desk = new ApprovalDesk({ ..., onParked: webhookNotifier(config.approvals.webhook, () => pageUrl, log) });
 */
import type { Logger } from '../log.ts';
import type { ParkedCall } from './record.ts';

export function webhookNotifier(webhook: { url: string; timeout: number }, pageUrl: () => string | undefined, log: Logger): (call: ParkedCall) => void {
  return (call) => {
    const body = {
      text: `Bastion: ${call.principal.sub} wants to call ${call.tool} (${call.risk} risk); approval needed`,
      approval_id: call.id,
      tool: call.tool,
      agent: call.principal.sub,
      risk: call.risk,
      reason: call.approval_reason,
      expires_at: call.expires_at,
      link: pageUrl(),
    };
    fetch(webhook.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(webhook.timeout),
      redirect: 'error',
    })
      .then((response) => {
        if (!response.ok) log.warn({ status: response.status }, 'approval webhook answered with an error');
      })
      .catch((error: Error) => log.warn({ err: error.message }, 'approval webhook failed'));
  };
}
