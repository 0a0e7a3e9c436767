// The approval page. Everything shown comes from agents and is attacker
// controlled, so it is only ever inserted with textContent, never as HTML,
// and always through reveal(): characters that hide or reorder text are
// shown as marked escapes, so what the approver reads is what will run.
import { revealSegments } from './reveal.js';

// errors: why the broker refused this approver's last action on a call, by call id (kept across re-renders).
const state = { csrf: '', me: '', pending: [], history: [], errors: new Map() };
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/**
 * Agent- or upstream-supplied text as a span: plain runs as text nodes, each
 * hidden character as a marked escape (\u202E) naming it. `tally.hidden`
 * counts the marks, for the request's warning.
 */
function reveal(text, { multiline = false, tally } = {}) {
  const span = el('span', { class: 'revealed' });
  for (const segment of revealSegments(String(text), multiline)) {
    if (typeof segment === 'string') span.append(segment);
    else {
      span.append(el('mark', { class: 'hidden-char', title: segment.description, text: segment.escape }));
      if (tally) tally.hidden++;
    }
  }
  return span;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: 'same-origin',
    ...options,
    headers: { 'content-type': 'application/json', 'x-csrf-token': state.csrf, ...(options.headers || {}) },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(body.error || response.statusText), { status: response.status, body });
  return body;
}

const LONG = 400;
/** Pretty JSON with long string values folded behind a disclosure. */
function renderArguments(args, tally) {
  const container = el('div');
  const folded = [];
  const text = JSON.stringify(
    args,
    (key, value) => {
      if (typeof value === 'string' && value.length > LONG) {
        folded.push({ key, value });
        return `${value.slice(0, 120)}… [${value.length} characters, shown below]`;
      }
      return value;
    },
    2,
  );
  container.append(el('pre', { class: 'args' }, reveal(text, { multiline: true, tally })));
  for (const { key, value } of folded) {
    container.append(
      el(
        'details',
        { class: 'fold' },
        el('summary', {}, 'full value of "', reveal(key), `" (${value.length} characters)`),
        el('pre', { class: 'args' }, reveal(value, { multiline: true })),
      ),
    );
  }
  return container;
}

const LABEL_WORDS = { untrusted: 'untrusted content', private: 'private data', external: 'sends data or acts outside the organisation', destructive: 'destroys data' };

function clockTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/**
 * Why a flow rule parked this call: the rules, then the path from the earlier
 * result that brought untrusted content, through the argument values that came
 * from it, to this call. Every string is agent- or attacker-supplied: text only.
 */
function renderFlow(flow, tally) {
  const show = (text, multiline = false) => reveal(text, { multiline, tally });
  const byId = new Map(flow.sources.map((source) => [source.id, source]));
  const rules = el(
    'ul',
    { class: 'flow-rules' },
    ...flow.rules.map((rule) =>
      el(
        'li',
        { 'data-rule': rule.rule },
        el('strong', { text: rule.rule }),
        ` ${rule.effect === 'deny' ? '(refuses)' : `(needs ${rule.quorum} approver${rule.quorum > 1 ? 's' : ''})`}: `,
        show(rule.reason),
      ),
    ),
  );
  const steps = [];
  for (const source of flow.sources) {
    const step = el(
      'li',
      { class: 'flow-source', 'data-source': source.id },
      el('span', { class: 'when', text: clockTime(source.at) }),
      ' ',
      el('code', {}, show(source.tool)),
      ` brought ${source.labels.map((label) => LABEL_WORDS[label] || label).join(' and ')} into the agent's context`,
      el('div', { class: 'meta' }, 'why: ', show(source.reason), ` · source ${source.id} · audit detail.flow.call ${source.call}`),
    );
    if (source.excerpt) step.append(el('blockquote', { class: 'excerpt' }, show(source.excerpt, true)));
    steps.push(step);
  }
  for (const argument of flow.arguments) {
    const from = argument.sources.map((id) => (byId.get(id) ? `${byId.get(id).tool} (${id})` : id)).join(', ');
    steps.push(
      el(
        'li',
        { class: 'flow-argument', 'data-argument': argument.argument },
        'argument ',
        el('code', {}, show(argument.argument)),
        ' = ',
        el('code', { class: 'value' }, show(JSON.stringify(argument.value))),
        ` (${argument.kind}) came from `,
        show(from),
        ', and from nothing the agent was given or read from a trusted source',
      ),
    );
  }
  const outside = flow.call.egress.filter(() => flow.call.labels.includes('external')).map((target) => target.host || `(unreadable: ${target.value})`);
  steps.push(
    el(
      'li',
      { class: 'flow-call' },
      'this call: ',
      el('code', {}, show(flow.call.tool)),
      ` ${flow.call.labels.length ? flow.call.labels.map((label) => LABEL_WORDS[label] || label).join(', ') : 'has no flow labels'}`,
      outside.length ? el('span', {}, ' (destinations: ', show(outside.join(', ')), ')') : null,
    ),
  );
  return el('section', { class: 'flow', 'aria-label': 'Why a flow rule asks for approval' }, el('h3', { text: "Why: what entered this agent's context earlier" }), rules, el('ol', { class: 'flow-path' }, ...steps));
}

function timeLeft(iso) {
  const seconds = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
  return seconds >= 60 ? `${Math.floor(seconds / 60)} min ${seconds % 60} s left` : `${seconds} s left`;
}

/** The request's warning when it hides characters: where, and which. */
function hiddenWarning(call, tally) {
  const findings = call.hidden_characters || [];
  if (findings.length === 0 && tally.hidden === 0) return null;
  const list = el('ul');
  for (const finding of findings) list.append(el('li', {}, reveal(finding.where), finding.characters.length ? `: ${finding.characters.join(', ')}` : ''));
  return el(
    'div',
    { class: 'warning', role: 'note' },
    el('strong', { text: 'Hidden characters. ' }),
    'This request contains characters that are invisible or change the direction of text. Each is shown marked, as its escape (for example \\u202E); the text may not read the way it will run.',
    findings.length ? list : null,
  );
}

function renderCard(call) {
  const chain = call.principal.act.map((a) => a.sub);
  const tally = { hidden: 0 };
  const approvals = call.decisions.filter((d) => d.decision === 'approve').length;
  const reason = el('input', { type: 'text', placeholder: 'Reason (required to deny)', 'aria-label': 'Reason', maxlength: '2000' });
  const status = el('span', { class: 'error', role: 'alert', text: state.errors.get(call.id) || '' });
  const decide = async (decision) => {
    if (decision === 'deny' && !reason.value.trim()) {
      status.textContent = 'Give a reason to deny.';
      reason.focus();
      return;
    }
    card.querySelectorAll('button').forEach((b) => (b.disabled = true));
    try {
      await api(`/approvals/api/${encodeURIComponent(call.id)}/decision`, {
        method: 'POST',
        body: JSON.stringify({ decision, reason: reason.value, call_hash: call.call_hash }),
      });
      state.errors.delete(call.id);
      status.textContent = '';
    } catch (error) {
      state.errors.set(call.id, error.message);
      status.textContent = error.message;
      card.querySelectorAll('button').forEach((b) => (b.disabled = false));
      // The policy wants a recent sign-in for this call: off to the identity provider, back here to decide.
      const again = error.body && error.body.reauthenticate;
      if (again && again.url) {
        location.assign(again.url);
        return;
      }
      if (again) state.errors.set(call.id, (status.textContent = `${error.message} (open a new approver sign-in link)`));
    }
    await refresh();
  };
  reason.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') decide('deny');
  });
  const clock = el('span', { class: 'meta countdown', 'data-expires': call.expires_at, text: timeLeft(call.expires_at) });
  const card = el(
    'article',
    { class: `card risk-${call.risk}`, tabindex: '0', 'data-id': call.id },
    el(
      'div',
      { class: 'row' },
      el('span', { class: 'tool' }, reveal(call.tool, { tally })),
      el('span', { class: `badge ${call.risk === 'high' ? 'high' : ''}`, text: `${call.risk} risk` }),
      el('span', { class: 'badge' }, 'connector ', reveal(call.connector, { tally })),
      call.owner_alive === false ? el('span', { class: 'badge gone', text: 'agent disconnected: approving will not run it' }) : null,
      clock,
    ),
    el(
      'div',
      { class: 'meta' },
      'agent ',
      reveal(call.principal.sub, { tally }),
      ...(chain.length ? [' · delegated by ', ...chain.flatMap((sub, i) => (i ? [' ← ', reveal(sub, { tally })] : [reveal(sub, { tally })]))] : []),
      ' · issuer ',
      reveal(call.principal.iss, { tally }),
      ` · approvals ${approvals}/${call.quorum}`,
    ),
    el('ul', { class: 'reasons' }, ...[call.approval_reason, ...call.reasons].filter(Boolean).map((r) => el('li', {}, reveal(r, { tally })))),
    call.flow ? renderFlow(call.flow, tally) : null,
    renderArguments(call.arguments, tally),
    el('div', { class: 'meta', text: `call ${call.call_hash}` }),
    el(
      'div',
      { class: 'actions' },
      reason,
      el('button', { class: 'approve', type: 'button', onclick: () => decide('approve'), text: 'Approve' }),
      el('button', { class: 'deny', type: 'button', onclick: () => decide('deny'), text: 'Deny' }),
      status,
    ),
  );
  // Placed after the row, once everything shown has been revealed (and counted).
  const warning = hiddenWarning(call, tally);
  if (warning) card.insertBefore(warning, card.children[1]);
  card._decide = decide;
  card._reason = reason;
  return card;
}

function render() {
  const pending = $('pending');
  const focusedId = document.activeElement?.closest?.('.card')?.dataset.id;
  pending.replaceChildren(...state.pending.map(renderCard));
  $('pending-count').textContent = String(state.pending.length);
  $('empty').hidden = state.pending.length > 0;
  if (focusedId) pending.querySelector(`[data-id="${CSS.escape(focusedId)}"]`)?.focus();
  $('history').replaceChildren(
    ...state.history.map((call) =>
      el(
        'li',
        {},
        el('span', { class: call.status, text: call.status }),
        ' · ',
        reveal(call.tool),
        ' · ',
        reveal(call.principal.sub),
        ...(call.outcome ? [' · ', reveal(call.outcome)] : []),
        (call.hidden_characters || []).length ? el('span', { class: 'badge gone', text: 'hidden characters' }) : null,
        ` · ${new Date(call.created_at).toLocaleString()}`,
      ),
    ),
  );
}

async function refresh() {
  try {
    const [pending, history] = await Promise.all([api('/approvals/api/pending'), api('/approvals/api/history')]);
    state.pending = pending.calls;
    state.history = history.calls;
    render();
  } catch (error) {
    if (error.status === 401) showSignIn('Your session has ended: sign in again.');
  }
}

function showSignIn(message = '') {
  $('signin').hidden = false;
  $('queue').hidden = true;
  $('signin-error').textContent = message;
  // Single sign-on at the organisation's identity provider, when the broker offers it.
  api('/approvals/api/sign-in')
    .then((options) => {
      if (!options.sso) return;
      $('signin-sso-link').href = options.sso.url;
      $('signin-sso').hidden = false;
    })
    .catch(() => undefined);
}

/** Exchanges a token for a session; returns why it failed ('' when it worked). */
async function signIn(token) {
  try {
    const session = await api('/approvals/login', { method: 'POST', body: JSON.stringify({ token }) });
    state.csrf = session.csrf;
    return '';
  } catch (error) {
    const reason = `Sign-in failed: ${error.message || `HTTP ${error.status}`}`;
    showSignIn(reason);
    return reason;
  }
}

async function start() {
  // A sign-in link carries the token in the fragment, which never reaches the server or its logs.
  const fragment = new URLSearchParams(location.hash.slice(1));
  let linkRefused = '';
  if (fragment.has('token')) {
    const token = fragment.get('token');
    history.replaceState(null, '', location.pathname);
    linkRefused = await signIn(token);
  }
  let session;
  try {
    session = await api('/approvals/api/session');
  } catch {
    // No session: the sign-in form, still saying why the link did not work (e.g. it was already used).
    showSignIn(linkRefused);
    return;
  }
  state.csrf = session.csrf;
  state.me = session.sub;
  $('who').replaceChildren('signed in as ', reveal(session.sub), session.roles.length ? ` (${session.roles.join(', ')})` : '');
  $('signin').hidden = true;
  $('queue').hidden = false;
  // Subscribe first, and refresh once the stream is open (and after every reconnect),
  // so a call parked between the first fetch and the subscription is never missed.
  const events = new EventSource('/approvals/events');
  events.addEventListener('changed', () => refresh());
  events.addEventListener('open', () => refresh());
  await refresh();
  setInterval(() => {
    document.querySelectorAll('.countdown').forEach((node) => (node.textContent = timeLeft(node.dataset.expires)));
  }, 1000);
}

$('signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  if ((await signIn($('signin-token').value.trim())) === '') location.reload();
});

document.addEventListener('keydown', (event) => {
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) return;
  const cards = [...document.querySelectorAll('#pending .card')];
  const current = document.activeElement?.closest?.('.card');
  const index = cards.indexOf(current);
  if (event.key === 'j' || event.key === 'k') {
    const next = cards[Math.min(cards.length - 1, Math.max(0, index + (event.key === 'j' ? 1 : -1)))];
    next?.focus();
    event.preventDefault();
  } else if (current && event.key === 'a') {
    current._decide('approve');
  } else if (current && event.key === 'd') {
    current._reason.focus();
    event.preventDefault();
  }
});

start();
