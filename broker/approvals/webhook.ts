/**
 * Notifies approvers elsewhere (a chat channel, a pager) that a call is
 * waiting: one JSON POST per parked call with a link to the page. Fire and
 * forget with its own deadline: a slow or failing webhook never holds a call.
 *
 * @example
 *   desk = new ApprovalDesk({ ..., onParked: webhookNotifier(config.approvals.webhook, () => pageUrl, log) });
 */
import type { Logger } from '../log.ts';
import { hiddenCharactersOf } from './hidden-text.ts';
import { revealText } from './page/reveal.js';
import type { ParkedCall } from './record.ts';

/**
 * The JSON summary of a parked call. Agent-supplied text is shown with hidden
 * characters escaped (\u202E), as on the page, and a request that carries
 * any says so in its text and lists where.
 */
export function webhookSummary(call: ParkedCall, link: string | undefined): Record<string, unknown> {
  const hidden = hiddenCharactersOf(call);
  const warning = hidden.length ? ' WARNING: it contains hidden or direction-changing characters (shown as \\u escapes); review it on the page.' : '';
  return {
    text: `Bastion: ${revealText(call.principal.sub)} wants to call ${revealText(call.tool)} (${call.risk} risk); approval needed.${warning}`,
    approval_id: call.id,
    tool: revealText(call.tool),
    agent: revealText(call.principal.sub),
    risk: call.risk,
    reason: revealText(call.approval_reason),
    expires_at: call.expires_at,
    hidden_characters: hidden,
    link,
  };
}

export function webhookNotifier(webhook: { url: string; timeout: number }, pageUrl: () => string | undefined, log: Logger): (call: ParkedCall) => void {
  return (call) => {
    const body = webhookSummary(call, pageUrl());
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
