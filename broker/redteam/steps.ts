/**
 * The executors: one branch of Attempt.dispatch per step kind of the corpus. An attempt runs
 * a case's steps in order against one target, keeping what it obtained
 * (tokens, keys, sessions, pending calls, approver sessions) by name, and
 * records for every step whether it went through and, if not, the refusal
 * Bastion gave. Nothing here decides whether the attack worked; that is the
 * predicates' job, over what reached the upstream and what the agent got.
 *
 * @example
 *   const attempt = new Attempt(target, observer, { maxWaitMs: 1000 });
 *   for (const step of attackCase.steps) await attempt.run(step);
 *   await attempt.close();
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { generateDpopKey, type DpopKey } from '../auth/dpop-client.ts';
import { parseDuration } from '../config.ts';
import type { Capability } from '../policy/schema.ts';
import { callThrough, connectAgent, filterEvidence, openRawSession, rawPost, receivedText, refusalIn, type CallOutcome, type ConnectedAgent, type Refusal } from './agent.ts';
import type { Step } from './corpus.ts';
import { forgeToken } from './forge.ts';
import { VICTIM } from './idp.ts';
import { oauthAttack, type OAuthAttack } from './oauth.ts';
import { HEADLESS_ATTACKS, headlessAttack, type HeadlessAttack } from './headless.ts';
import type { Target } from './target.ts';

/** An approval-page session: what an approver's browser holds. */
export interface ApproverSession {
  sub: string;
  cookie: string;
  csrf: string;
}

/** One step's outcome, as the report shows it. */
export interface StepRecord {
  kind: string;
  setup: boolean;
  /** The step did what the attacker wanted (the request went through). */
  ok: boolean;
  refusal?: Refusal;
  /** The result filter changed what the agent got (redacted, flagged). */
  filtered?: string;
  note?: string;
}

export interface FloodRecord {
  tool: string;
  sent: number;
  startedAt: number;
  endedAt: number;
  refused: Record<string, number>;
}

interface PendingCall {
  tool: string;
  sub: string;
  controller: AbortController;
  promise: Promise<CallOutcome>;
  outcome?: CallOutcome;
  parked?: { id: string; call_hash: string };
}

interface HeldToken {
  token: string;
  sub: string;
}

export class NotApplicable extends Error {
  override readonly name = 'NotApplicable';
}

/** Signs in to the approval page with an approver token. */
export async function signInApprover(target: Target, sub: string): Promise<ApproverSession | Refusal> {
  const response = await fetch(`${target.origin}/approvals/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token: await target.approverToken(sub) }),
  });
  const body = (await response.json().catch(() => ({}))) as { csrf?: string; error?: string };
  if (response.status !== 200 || !body.csrf) return { stage: 'approve', code: `HTTP_${response.status}`, reason: body.error ?? 'sign-in failed', status: response.status };
  return { sub, cookie: (response.headers.get('set-cookie') ?? '').split(';')[0]!, csrf: body.csrf };
}

interface PendingView {
  id: string;
  call_hash: string;
  tool: string;
  status: string;
  principal: { sub: string };
  /** Where the page warns of hidden characters (absent on brokers that do not). */
  hidden_characters?: { where: string; characters: string[] }[];
}

/** The approval page's list of waiting calls, as this approver (or the observer) sees it. */
async function pendingCalls(target: Target, observer: ApproverSession): Promise<PendingView[]> {
  const response = await fetch(`${target.origin}/approvals/api/pending`, { headers: { cookie: observer.cookie } });
  if (response.status !== 200) return [];
  return ((await response.json()) as { calls: PendingView[] }).calls;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export interface AttemptOptions {
  /** Upper bound on any wait a case asks for (quick mode keeps runs short). */
  maxWaitMs: number;
}

/** The state of one attempt at one case. */
export class Attempt {
  readonly target: Target;
  readonly marker: string;
  readonly records: StepRecord[] = [];
  /** Everything the agent received (tool results and tool lists), as text. */
  readonly received: string[] = [];
  /** Subjects this attempt acted as (to find its audit records). */
  readonly subjects = new Set<string>();
  flood: FloodRecord | undefined;
  /** The attempt started calls that may still be settling (parked, cancelled). */
  startedCalls = false;
  /** Started calls that were neither answered nor parked when the agent stopped waiting (await_call). */
  readonly unanswered = new Set<string>();

  private readonly id: string;
  private readonly observer: ApproverSession | undefined;
  private readonly options: AttemptOptions;
  private readonly tokens = new Map<string, HeldToken>();
  private readonly keys = new Map<string, DpopKey>();
  private readonly agents = new Map<string, ConnectedAgent>();
  private readonly sessions = new Map<string, { session: string; token: string }>();
  private readonly calls = new Map<string, PendingCall>();
  private readonly approvers = new Map<string, ApproverSession>();
  private readonly claimedParkings = new Set<string>();
  private readonly listChangesSeen = new Map<string, number>();

  constructor(target: Target, observer: ApproverSession | undefined, options: AttemptOptions) {
    this.target = target;
    this.observer = observer;
    this.options = options;
    this.id = randomBytes(4).toString('hex');
    this.marker = `rt-${randomBytes(6).toString('hex')}`;
  }

  /** Fills the placeholders (see corpus.ts) in every string of a value. */
  fill<T>(value: T): T {
    const walk = (v: unknown): unknown => {
      if (typeof v === 'string') return fillPlaceholders(v, this.marker, (name) => this.held(name).sub);
      if (Array.isArray(v)) return v.map(walk);
      if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
      return v;
    };
    return walk(value) as T;
  }

  private held(name: string): HeldToken {
    const held = this.tokens.get(name);
    if (!held) throw new StepSkipped(`no token named "${name}" (an earlier step did not obtain it)`);
    return held;
  }

  private async key(name: string): Promise<DpopKey> {
    let key = this.keys.get(name);
    if (!key) {
      key = await generateDpopKey();
      this.keys.set(name, key);
    }
    return key;
  }

  private async agent(tokenName: string, dpopKeyName: string | undefined): Promise<ConnectedAgent> {
    const cacheKey = `${tokenName}|${dpopKeyName ?? ''}`;
    const cached = this.agents.get(cacheKey);
    if (cached?.client) return cached;
    const held = this.held(tokenName);
    const agent = await connectAgent(this.target.url, held.token, { ...(dpopKeyName ? { dpopKey: await this.key(dpopKeyName) } : {}) });
    if (agent.client) this.agents.set(cacheKey, agent);
    return agent;
  }

  private note(record: StepRecord): void {
    this.records.push(record);
  }

  private noteCall(kind: string, setup: boolean, outcome: CallOutcome): void {
    if (outcome.result) this.received.push(receivedText(outcome.result));
    const filtered = outcome.result ? filterEvidence(outcome.result) : undefined;
    this.note({
      kind,
      setup,
      ok: outcome.ok,
      ...(outcome.refusal ? { refusal: outcome.refusal } : {}),
      ...(filtered ? { filtered } : {}),
      ...(outcome.error ? { note: outcome.error } : {}),
    });
  }

  async run(step: Step): Promise<void> {
    try {
      await this.dispatch(step);
    } catch (error) {
      if (error instanceof StepSkipped) {
        this.note({ kind: stepKind(step), setup: step.setup, ok: false, note: `skipped: ${error.message}` });
        return;
      }
      throw error;
    }
  }

  private async dispatch(step: Step): Promise<void> {
    const setup = step.setup;
    if ('oauth' in step) {
      const spec = step.oauth;
      const outcome = (HEADLESS_ATTACKS as readonly string[]).includes(spec.attack) ? await headlessAttack(this.target, spec.attack as HeadlessAttack) : await oauthAttack(this.target, spec.attack as OAuthAttack);
      if (outcome.token) {
        this.tokens.set(spec.name, { token: outcome.token, sub: VICTIM });
        this.subjects.add(VICTIM);
      }
      this.note({ kind: 'oauth', setup, ok: outcome.ok, note: `${spec.attack}: ${outcome.note}`, ...(outcome.refusal ? { refusal: outcome.refusal } : {}) });
      return;
    }
    if ('token' in step) {
      const spec = this.fill(step.token);
      const sub = spec.sub ?? `agent:rt-${this.id}-${spec.name}`;
      const ttlMs = parseDuration(spec.ttl);
      const cap = spec.cap as Capability[];
      let token: string;
      if (spec.forge) {
        token = await forgeToken(spec.forge, {
          issuer: this.target.issuer,
          audience: this.target.resource,
          tokenType: this.target.config.auth.token_type,
          sub,
          cap,
          ...(spec.claimed_cap ? { claimedCap: spec.claimed_cap as Capability[] } : {}),
          ttlMs,
        });
      } else {
        token = await this.target.mint({ sub, cap, ttlMs, ...(spec.use_once ? { use: 'once' as const } : {}), ...(spec.bind_key ? { jkt: (await this.key(spec.bind_key)).jkt } : {}) });
      }
      this.tokens.set(spec.name, { token, sub });
      this.subjects.add(sub);
      this.note({ kind: 'token', setup, ok: true, note: `${spec.name}: ${spec.forge ?? 'genuine'} token for ${sub}` });
      return;
    }
    if ('call' in step) {
      const spec = this.fill(step.call);
      const agent = await this.agent(spec.token, spec.dpop_key);
      this.noteCall('call', setup, await callThrough(agent, spec.tool, spec.arguments));
      return;
    }
    if ('start_call' in step) {
      const spec = this.fill(step.start_call);
      const agent = await this.agent(spec.token, spec.dpop_key);
      const controller = new AbortController();
      const pending: PendingCall = {
        tool: spec.tool,
        sub: this.held(spec.token).sub,
        controller,
        promise: callThrough(agent, spec.tool, spec.arguments, { signal: controller.signal }),
      };
      pending.promise.then((outcome) => (pending.outcome = outcome)).catch(() => undefined);
      this.calls.set(spec.name, pending);
      this.startedCalls = true;
      this.note({ kind: 'start_call', setup, ok: true, note: `${spec.name}: ${spec.tool} started` });
      return;
    }
    if ('wait_parked' in step) {
      const spec = step.wait_parked;
      const pending = this.pendingCall(spec.call);
      const deadline = Date.now() + Math.min(spec.within_ms, this.options.maxWaitMs * 4);
      while (!pending.parked && !pending.outcome && Date.now() < deadline && this.observer) {
        const found = (await pendingCalls(this.target, this.observer)).find(
          (c) => c.principal.sub === pending.sub && c.tool === pending.tool && c.status === 'pending' && !this.claimedParkings.has(c.id),
        );
        if (found) {
          pending.parked = { id: found.id, call_hash: found.call_hash };
          this.claimedParkings.add(found.id);
        } else await sleep(40);
      }
      this.note({
        kind: 'wait_parked',
        setup,
        ok: true,
        note: pending.parked ? `${spec.call} is parked for approval` : pending.outcome ? `${spec.call} ended without being parked` : `${spec.call} was not seen parked`,
      });
      return;
    }
    if ('await_call' in step) {
      const spec = step.await_call;
      const pending = this.pendingCall(spec.call);
      const within = Math.min(spec.within_ms, this.options.maxWaitMs);
      const settled = (ms: number) => Promise.race([pending.promise, sleep(ms).then(() => undefined)]);
      let outcome = await settled(within);
      // The patience is for a human's approval. A call that is not parked is running: on a loaded
      // machine it may need longer, and cutting it off would count as a defense what was only slowness.
      for (let extra = 0; !outcome && extra < 3 * within; extra += 250) {
        if (!pending.parked && this.observer) {
          const found = (await pendingCalls(this.target, this.observer)).find((c) => c.principal.sub === pending.sub && c.tool === pending.tool && c.status === 'pending');
          if (found) pending.parked = { id: found.id, call_hash: found.call_hash };
        }
        if (pending.parked || !this.observer) break;
        outcome = await settled(250);
      }
      if (outcome) {
        this.noteCall('await_call', setup, outcome);
        return;
      }
      if (!pending.parked) this.unanswered.add(spec.call);
      pending.controller.abort();
      this.note({
        kind: 'await_call',
        setup,
        ok: false,
        refusal: pending.parked
          ? { stage: 'approve', code: 'STILL_PARKED', reason: `still waiting for human approval after ${within} ms; the agent gave up` }
          : { stage: 'unknown', code: 'NO_ANSWER', reason: `no answer within ${within} ms` },
      });
      return;
    }
    if ('approver' in step) {
      const spec = this.fill(step.approver);
      const sub = spec.sub_of ? this.held(spec.sub_of).sub : (spec.sub ?? `approver:rt-${this.id}-${spec.name}`);
      const session = await signInApprover(this.target, sub);
      if ('cookie' in session) {
        this.approvers.set(spec.name, session);
        this.note({ kind: 'approver', setup, ok: true, note: `${spec.name} signed in as ${sub}` });
      } else this.note({ kind: 'approver', setup, ok: false, refusal: session });
      return;
    }
    if ('decide' in step) {
      const spec = step.decide;
      const approver = this.approvers.get(spec.approver);
      if (!approver) throw new StepSkipped(`no approver named "${spec.approver}" signed in`);
      const pending = this.pendingCall(spec.call);
      if (!pending.parked) throw new StepSkipped(`${spec.call} is not parked for approval`);
      const headers: Record<string, string> = { 'content-type': 'application/json', cookie: approver.cookie };
      if (spec.csrf === 'valid') headers['x-csrf-token'] = approver.csrf;
      if (spec.csrf === 'wrong') headers['x-csrf-token'] = randomBytes(32).toString('base64url');
      if (spec.origin) headers.origin = spec.origin;
      const callHash = spec.call_hash === 'actual' ? pending.parked.call_hash : `sha256:${randomBytes(32).toString('hex')}`;
      let decision: 'approve' | 'deny' = spec.decision === 'deny' ? 'deny' : 'approve';
      let read = '';
      if (spec.decision === 'approve_unless_warned') {
        // The approver reads the request as the page shows it, and heeds a warning.
        const id = pending.parked.id;
        const shown = (await pendingCalls(this.target, approver)).find((c) => c.id === id);
        const warned = shown?.hidden_characters ?? [];
        if (warned.length > 0) decision = 'deny';
        read = warned.length
          ? ` (the page warned of hidden characters: ${warned.map((w) => `${w.where} ${w.characters.join(', ')}`).join('; ')})`
          : ' (the page showed no warning)';
      }
      const response = await fetch(`${this.target.origin}/approvals/api/${pending.parked.id}/decision`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ decision, reason: 'red team', call_hash: callHash }),
      });
      const body = (await response.json().catch(() => ({}))) as { error?: string; status?: string };
      this.note(
        response.status === 200
          ? { kind: 'decide', setup, ok: true, note: `${decision}d ${spec.call}: ${body.status}${read}` }
          : { kind: 'decide', setup, ok: false, refusal: { stage: 'approve', code: `HTTP_${response.status}`, reason: body.error ?? '', status: response.status } },
      );
      return;
    }
    if ('delegate' in step) {
      const spec = this.fill(step.delegate);
      const parent = this.held(spec.token);
      const sub = spec.sub ?? `agent:rt-${this.id}-${spec.name}`;
      const response = await fetch(`${this.target.origin}/token/delegate`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${parent.token}` },
        body: JSON.stringify({ sub, cap: spec.cap, ttl: spec.ttl }),
      });
      const body = (await response.json().catch(() => ({}))) as { access_token?: string };
      if (response.status === 200 && body.access_token) {
        this.tokens.set(spec.name, { token: body.access_token, sub });
        this.subjects.add(sub);
        this.note({ kind: 'delegate', setup, ok: true, note: `the broker issued ${spec.name} for ${sub}` });
      } else {
        const refusal =
          refusalIn(body, response.status) ??
          (response.status === 404
            ? { stage: 'authorize', code: 'DELEGATION_DISABLED', reason: 'delegation is switched off on this broker', status: 404 }
            : { stage: 'authorize', code: `HTTP_${response.status}`, status: response.status });
        this.note({ kind: 'delegate', setup, ok: false, refusal });
      }
      return;
    }
    if ('open_session' in step) {
      const spec = step.open_session;
      const held = this.held(spec.token);
      const opened = await openRawSession(this.target.url, held.token);
      if (opened.session) {
        this.sessions.set(spec.name, { session: opened.session, token: held.token });
        this.note({ kind: 'open_session', setup, ok: true, note: `session ${spec.name} opened` });
      } else this.note({ kind: 'open_session', setup, ok: false, ...(opened.refusal ? { refusal: opened.refusal } : {}), ...(opened.error ? { note: opened.error } : {}) });
      return;
    }
    if ('raw' in step) {
      const spec = this.fill(step.raw);
      const headers: Record<string, string> = { ...spec.headers };
      if (spec.token) headers.authorization = `Bearer ${this.held(spec.token).token}`;
      if (spec.session) {
        const session = this.sessions.get(spec.session);
        if (!session) throw new StepSkipped(`no session named "${spec.session}"`);
        headers['mcp-session-id'] = session.session;
      }
      // Repeated requests are recorded as one step: it went through if any did; the first refusal names the defense.
      let ok = false;
      let firstRefusal: Refusal | undefined;
      const statuses: Record<number, number> = {};
      for (let i = 0; i < spec.repeat; i++) {
        const response = await rawPost(this.target.url, spec.body, headers);
        statuses[response.status] = (statuses[response.status] ?? 0) + 1;
        const result = (response.body as { result?: CallToolResult } | undefined)?.result;
        const refusal = refusalIn(response.body, response.status);
        if (result?.content) this.received.push(receivedText(result));
        const through = response.status < 400 && !refusal && !(response.body as { error?: unknown } | undefined)?.error && !result?.isError;
        ok ||= through;
        firstRefusal ??= refusal ?? (!through ? { stage: 'http', code: `HTTP_${response.status}`, reason: response.text.slice(0, 200), status: response.status } : undefined);
      }
      this.note({
        kind: 'raw',
        setup,
        ok,
        ...(firstRefusal && !ok ? { refusal: firstRefusal } : {}),
        ...(spec.repeat > 1 ? { note: `${spec.repeat} requests, answered ${Object.entries(statuses).map(([status, n]) => `${status} ×${n}`).join(', ')}` } : {}),
      });
      return;
    }
    if ('flood' in step) {
      const spec = this.fill(step.flood);
      const agent = await this.agent(spec.token, undefined);
      const count = spec.count === 'auto' ? 2 * this.target.config.limits.principal.burst + 30 : spec.count;
      const refused: Record<string, number> = {};
      let firstRefusal: Refusal | undefined;
      let sent = 0;
      let ok = 0;
      const startedAt = Date.now();
      const worker = async () => {
        while (sent < count) {
          sent++;
          const outcome = await callThrough(agent, spec.tool, spec.arguments);
          if (outcome.ok) ok++;
          else {
            const code = outcome.refusal?.code ?? 'ERROR';
            refused[code] = (refused[code] ?? 0) + 1;
            firstRefusal ??= outcome.refusal;
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(spec.concurrency, count) }, worker));
      this.flood = { tool: spec.tool, sent: count, startedAt, endedAt: Date.now(), refused };
      this.note({ kind: 'flood', setup, ok: ok === count, ...(firstRefusal ? { refusal: firstRefusal } : {}), note: `${ok}/${count} calls answered` });
      return;
    }
    if ('list_tools' in step) {
      const agent = await this.agent(step.list_tools.token, undefined);
      if (!agent.client) {
        this.note({ kind: 'list_tools', setup, ok: false, ...(agent.refusal ? { refusal: agent.refusal } : {}) });
        return;
      }
      const { tools } = await agent.client.listTools();
      // Descriptions are read by the model too: they count as received.
      const listed = JSON.stringify(tools);
      this.received.push(listed);
      // The broker withholds a flagged description (filters.descriptor): that is the descriptor check stopping it.
      const withheld = listed.includes("Bastion withheld this tool's description");
      this.note({ kind: 'list_tools', setup, ok: true, note: `${tools.length} tools listed`, ...(withheld ? { filtered: 'DESCRIPTION_WITHHELD' } : {}) });
      return;
    }
    if ('wait_list_changed' in step) {
      const spec = step.wait_list_changed;
      const agent = await this.agent(spec.token, undefined);
      const key = `${spec.token}|`;
      const seen = this.listChangesSeen.get(key) ?? 0;
      const deadline = Date.now() + Math.min(spec.within_ms, this.options.maxWaitMs);
      while (agent.toolListChanges <= seen && Date.now() < deadline) await sleep(20);
      this.listChangesSeen.set(key, agent.toolListChanges);
      this.note({ kind: 'wait_list_changed', setup, ok: true, note: agent.toolListChanges > seen ? 'the broker announced a tool list change' : 'no tool list change announced in time' });
      return;
    }
    if ('sleep' in step) {
      await sleep(Math.min(step.sleep.ms, this.options.maxWaitMs));
      this.note({ kind: 'sleep', setup, ok: true });
      return;
    }
    if ('install_plugin' in step) {
      // The plugin was written out, pinned and configured before the broker started (target.ts).
      const spec = step.install_plugin;
      // Its directory carries the install name; its configured name may be absent (manifest_name).
      if (!(this.target.config.plugins ?? []).some((p) => path.basename(p.dir) === spec.name)) throw new NotApplicable(`plugin ${spec.name} is not installed on this broker`);
      const prefix = spec.manifest_name ?? spec.name;
      this.note({ kind: 'install_plugin', setup, ok: true, note: `${spec.name} installed (${spec.tools.map((t) => `${prefix}__${t.name}`).join(', ')})` });
      return;
    }
    const never: never = step;
    throw new Error(`unknown step ${JSON.stringify(never)}`);
  }

  private pendingCall(name: string): PendingCall {
    const pending = this.calls.get(name);
    if (!pending) throw new StepSkipped(`no call named "${name}" was started`);
    return pending;
  }

  /** Cancels calls still pending and closes every client (DELETE on the session). */
  async close(): Promise<void> {
    for (const pending of this.calls.values()) if (!pending.outcome) pending.controller.abort();
    await Promise.all([...this.calls.values()].map((p) => p.promise.catch(() => undefined)));
    await Promise.all([...this.agents.values()].map((a) => a.close()));
  }
}

const PLACEHOLDER = /\$\{(marker|sub|tags|pad|nested_json)(?::([^}]*))?\}/g;
const MAX_EXPANSION = 2_000_000;

/**
 * ${marker}, ${sub:NAME}, ${tags:TEXT} (TEXT in invisible Unicode tag
 * characters), ${pad:N} (N filler characters), ${nested_json:N} (a JSON
 * object nested N levels deep, for raw bodies).
 */
export function fillPlaceholders(text: string, marker: string, subOf: (name: string) => string): string {
  return text.replace(PLACEHOLDER, (whole, kind: string, arg: string | undefined) => {
    const count = () => {
      const n = Number(arg);
      if (!Number.isInteger(n) || n < 0 || n > MAX_EXPANSION) throw new Error(`${whole}: give a whole number up to ${MAX_EXPANSION}`);
      return n;
    };
    switch (kind) {
      case 'marker':
        return marker;
      case 'sub':
        return subOf(arg ?? '');
      case 'tags':
        return [...(arg ?? '')].map((c) => String.fromCodePoint(0xe0000 + (c.codePointAt(0)! & 0x7f))).join('');
      case 'pad':
        return 'x'.repeat(count());
      default: {
        const depth = count();
        return `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
      }
    }
  });
}

class StepSkipped extends Error {
  override readonly name = 'StepSkipped';
}

export function stepKind(step: Step): string {
  return Object.keys(step).find((k) => k !== 'setup') ?? 'unknown';
}
