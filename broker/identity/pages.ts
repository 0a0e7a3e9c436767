/**
 * The pages a person sees during sign-in: the consent page and the error
 * page. Served like the approval page: a strict Content-Security-Policy (no
 * script at all, styles from the broker only, forms post only to the
 * broker, no framing), and every value a client or IdP supplied rendered as
 * escaped text, never as markup.
 *
 * @example
 *   sendPage(res, 200, consentPage({ client, redirectUri, cap, csrf, action }));
 */
import type { Response } from 'express';
import type { Capability } from '../policy/schema.ts';

/** `formTargets`: where a form's submission may end up after redirects (the consent form ends at the client's redirect URI). */
export function pageCsp(formTargets: string[] = []): string {
  return `default-src 'none'; style-src 'self'; form-action 'self'${formTargets.map((t) => ` ${t}`).join('')}; frame-ancestors 'none'; base-uri 'none'`;
}

/** The CSP source for a redirect URI: its origin, or its scheme for a private-use scheme (RFC 8252). */
export function formTarget(redirectUri: string): string[] {
  const url = URL.parse(redirectUri);
  if (!url) return [];
  if (url.protocol === 'http:' || url.protocol === 'https:') return [url.origin];
  return /^[a-z][a-z0-9+.-]*:$/i.test(url.protocol) ? [url.protocol] : [];
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text for an HTML text node or quoted attribute. */
export function text(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

function layout(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${text(title)}</title><link rel="stylesheet" href="/oauth/static/page.css"></head>
<body><main>${body}</main></body></html>`;
}

/** One capability as a line a person can read: the tool glob and each argument bound. */
export function describeCapability(cap: Capability): string {
  const bounds = Object.entries(cap.args ?? {}).map(
    ([name, constraint]) => `${name}: ${Object.entries(constraint).map(([kind, value]) => `${kind} ${JSON.stringify(value)}`).join(', ')}`,
  );
  return bounds.length === 0 ? `${cap.tool} (any arguments)` : `${cap.tool} with ${bounds.join('; ')}`;
}

export interface ConsentView {
  clientId: string;
  clientName: string | undefined;
  redirectUri: string;
  registration: string;
  user: string;
  cap: Capability[];
  /** The token lifetime, for people ("15 minutes"). */
  ttl: string;
  csrf: string;
  action: string;
  /** Set when an approver must confirm the grant after the user allows it. */
  approvalReason?: string;
}

export function consentPage(view: ConsentView): string {
  const tools = view.cap.map((cap) => `<li><code>${text(describeCapability(cap))}</code></li>`).join('');
  return layout(
    'Allow this agent?',
    `<h1>Allow this agent to use tools as you?</h1>
<dl>
<dt>Client</dt><dd id="client-name">${text(view.clientName ?? '(no name given)')}</dd>
<dt>Client id</dt><dd id="client-id"><code>${text(view.clientId)}</code> (${text(view.registration)})</dd>
<dt>Sends you back to</dt><dd id="redirect-uri"><code>${text(view.redirectUri)}</code></dd>
<dt>Signed in as</dt><dd id="user">${text(view.user)}</dd>
</dl>
<h2>It would get exactly these tools</h2>
<ul id="tools">${tools}</ul>
<p>Each token lasts at most ${text(view.ttl)}; it is renewed while you stay in the groups that grant these tools.</p>
${view.approvalReason !== undefined ? `<p id="approval-needed">An approver must confirm this grant after you allow it: ${text(view.approvalReason)}.</p>` : ''}
<form method="post" action="${text(view.action)}">
<input type="hidden" name="csrf" value="${text(view.csrf)}">
<button type="submit" name="decision" value="approve" id="approve">Allow</button>
<button type="submit" name="decision" value="refuse" id="refuse">Refuse</button>
</form>`,
  );
}

/** The page a user waits on while an approver decides on their grant; it reloads itself (no script). */
export function waitingPage(reason: string): string {
  return layout('Waiting for an approver', `<h1>Waiting for an approver</h1><p id="waiting">An approver must confirm this grant: ${text(reason)}. This page checks again every few seconds.</p>`);
}

export function errorPage(title: string, message: string): string {
  return layout(title, `<h1>${text(title)}</h1><p id="error">${text(message)}</p>`);
}

export const PAGE_CSS = `body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}
main{max-width:40rem;margin:2rem auto;padding:1.5rem;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002}
h1{font-size:1.4rem}h2{font-size:1.1rem}dt{font-weight:600}dd{margin:0 0 .5rem;word-break:break-all}
code{background:#eef;padding:0 .2rem;border-radius:3px}button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}
#approve{background:#1a7f37;color:#fff;border:0;border-radius:4px}#refuse{background:#fff;border:1px solid #999;border-radius:4px}`;

/** Sends a page with the page headers (strict CSP, no caching, no referrer). */
export function sendPage(res: Response, status: number, html: string, formTargets: string[] = [], refreshSeconds?: number): void {
  if (refreshSeconds !== undefined) res.setHeader('Refresh', String(refreshSeconds));
  res.status(status);
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Content-Security-Policy', pageCsp(formTargets));
  res.setHeader('Cache-Control', 'no-store');
  // same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with the form, and the origin check needs the real one.
  res.setHeader('Referrer-Policy', 'same-origin');
  res.setHeader('X-Frame-Options', 'DENY');
  res.end(html);
}
