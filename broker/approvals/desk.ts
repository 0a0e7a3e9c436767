/**
 * Stage 5, approve: parks a call until humans decide, then releases it
 * exactly once.
 *
 * Every state change is a compare-and-set on the stored record, so racing
 * events (approve vs. timeout, two approvers, a withdrawal) resolve to one
 * outcome. The waiter is woken through the bus; the record in the state
 * store is the truth. An approval is bound to the call's hash, counts only
 * distinct approvers outside the requester's delegation chain, and is
 * consumed when the call is handed to the executor (`claimForExecution`),
 * so it cannot run twice.
 *
 * A record says only what is known (record.ts has the states). Every record
 * ends in a terminal state: the process that parked it settles it, and a
 * sweeper (at start and every few seconds, on every broker) resolves records
 * whose owner is gone (owners.ts): still pending → listed as "agent
 * disconnected" until it expires; approved → abandoned; dispatched →
 * interrupted (whether the tool ran is unknown). Each transition is audited.
 *
 * @example
 *   const parked = await desk.park(request, { signal, onWaiting });   // resolves when approved
 *   await desk.claimForExecution(parked.id, parked.call_hash);         // approved → dispatched, once
 *   await desk.settle(parked.id, 'executed', 'the upstream answered'); // dispatched → executed
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { importJWK, SignJWT, type JWK } from 'jose';
import type { AuditEvent } from '../audit/chain.ts';
import { Denial, type DenialCode } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { StateStore } from '../state/store.ts';
import { hiddenCharactersOf } from './hidden-text.ts';
import { ApprovalOwners, OWNER_TTL_MS } from './owners.ts';
import { APPROVALS, OPEN_STATUSES, PICKUP_GRACE_MS, PICKUP_OWNER, parseParkedCall, type ApproverDecision, type ParkedCall } from './record.ts';

/** Wakes waiters when a record changes; in-process here, Redis pub/sub across replicas. */
export interface ApprovalBus {
  publish(id: string): Promise<void>;
  subscribe(handler: (id: string) => void): () => void;
}

/** The bus over the state store's channels: in-process when embedded, Redis pub/sub across replicas. */
export function stateBus(state: Pick<StateStore, 'publish' | 'subscribe'>): ApprovalBus {
  return {
    publish: (id) => state.publish('approvals', id),
    subscribe: (handler) => state.subscribe('approvals', handler),
  };
}

/** An authenticated approver, as the approval page's session knows them. */
export interface Approver {
  sub: string;
  roles: string[];
  /** ISO time the approver signed in. */
  authTime: string;
}

export type ParkRequest = Omit<ParkedCall, 'id' | 'status' | 'created_at' | 'expires_at' | 'owner' | 'decisions' | 'outcome'> & {
  timeoutMs: number;
};

export interface WaitOptions {
  signal?: AbortSignal;
  /** Called every `progressEveryMs` while the call waits (for MCP progress notifications). */
  onWaiting?: (state: { approvals: number; quorum: number; secondsLeft: number }) => void;
}

export interface ApprovalDeskOptions {
  state: StateStore;
  bus: ApprovalBus;
  audit: (event: AuditEvent) => Promise<void>;
  log: Logger;
  /** The broker's signing key for approval evidence. */
  signingKey: JWK;
  /**
   * Names this broker across restarts (config replica_id, or its state folder), so a restarted
   * process fences its predecessor's parked calls at once (owners.ts). Default: a fresh name.
   */
  replica?: string;
  /** The state store is this process's alone (embedded, under the state folder's lock): every other owner is dead. */
  soleState?: boolean;
  progressEveryMs?: number;
  /** How often the sweeper settles records whose owner is gone (default 10 s). */
  sweepEveryMs?: number;
  /** Called once per new parked call (e.g. the webhook). */
  onParked?: (call: ParkedCall) => void;
  now?: () => number;
}

/** A refusal of an approver's action, with the HTTP status the page gets. */
export class ApprovalActionError extends Error {
  override readonly name = 'ApprovalActionError';
  readonly status: number;
  /** Set when the approver must sign in again, at most this many seconds before voting. */
  readonly reauthenticateWithinS: number | undefined;
  constructor(status: number, message: string, reauthenticateWithinS?: number) {
    super(message);
    this.status = status;
    this.reauthenticateWithinS = reauthenticateWithinS;
  }
}

/** How long decided records are kept for the page's history. */
const HISTORY_MS = 86_400_000;
const refuse = (code: DenialCode, reason: string) => new Denial('approve', code, reason);

export class ApprovalDesk {
  /** Emits 'changed' (record id) for live views such as the approval page. */
  readonly changes = new EventEmitter();
  private readonly options: ApprovalDeskOptions;
  private readonly now: () => number;
  private readonly owners: ApprovalOwners;
  /** Records this process parked and still answers for (a waiter, or a call between approval and its end). */
  private readonly inFlight = new Set<string>();
  private starting: Promise<void> | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private readonly unsubscribe: () => void;

  constructor(options: ApprovalDeskOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.owners = new ApprovalOwners({ state: options.state, replica: options.replica ?? randomUUID(), log: options.log, sole: options.soleState ?? false });
    this.changes.setMaxListeners(0);
    this.unsubscribe = options.bus.subscribe((id) => this.changes.emit('changed', id));
  }

  /** This process as the owner of the calls it parks (`replica#epoch`). */
  get owner(): string {
    return this.owners.self;
  }

  /**
   * Takes this replica's next epoch (its predecessors' parked calls are orphaned from now on),
   * starts the heartbeat, settles what the dead left behind, then sweeps every few seconds.
   */
  start(): Promise<void> {
    this.starting ??= (async () => {
      await this.owners.start();
      await this.sweep();
      this.sweeper = setInterval(
        () => void this.sweep().catch((e: Error) => this.options.log.warn({ err: e.message }, 'approval sweep failed')),
        this.options.sweepEveryMs ?? OWNER_TTL_MS / 3,
      );
      this.sweeper.unref();
    })();
    return this.starting;
  }

  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    this.unsubscribe();
    await this.owners.stop();
  }

  private async read(id: string): Promise<{ text: string; call: ParkedCall } | undefined> {
    const text = await this.options.state.get(APPROVALS, id);
    return text === undefined ? undefined : { text, call: parseParkedCall(text) };
  }

  /** Applies `change` with compare-and-set, retrying on concurrent writes. Returns the new record, or undefined if `change` declined. */
  private async update(id: string, change: (call: ParkedCall) => ParkedCall | undefined): Promise<ParkedCall | undefined> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const current = await this.read(id);
      if (!current) return undefined;
      const next = change(structuredClone(current.call));
      if (!next) return undefined;
      // The record keeps its retention (a day past expiry) across updates.
      const keep = Math.max(1, Date.parse(next.expires_at) + HISTORY_MS - this.now());
      if (await this.options.state.compareAndSet(APPROVALS, id, current.text, JSON.stringify(next), keep)) {
        await this.options.bus.publish(id);
        return next;
      }
    }
    throw new Error(`approval ${id}: too many concurrent updates`);
  }

  private audit(event: string, call: ParkedCall, detail: Record<string, unknown> = {}): Promise<void> {
    return this.options.audit({
      event,
      tool: call.tool,
      principal: { sub: call.principal.sub, iss: call.principal.iss },
      outcome: 'info',
      detail: { approval_id: call.id, call_hash: call.call_hash, status: call.status, ...detail },
    });
  }

  /** Moves a record from one of `from` to `to`, audited as `approval.<to>`; undefined when it was in another state. */
  private async transition(id: string, from: ParkedCall['status'][], to: ParkedCall['status'], outcome: string, detail: Record<string, unknown> = {}): Promise<ParkedCall | undefined> {
    const moved = await this.update(id, (call) => (from.includes(call.status) ? { ...call, status: to, outcome } : undefined));
    if (moved) await this.audit(`approval.${to}`, moved, detail);
    return moved;
  }

  /** Parks a call and waits; resolves with the approved record, or throws the approve-stage Denial. */
  async park(request: ParkRequest, wait: WaitOptions = {}): Promise<ParkedCall> {
    const call = await this.submit(request);
    return this.waitFor(call.id, Date.parse(call.expires_at), wait);
  }

  /**
   * Parks a request for approvers without waiting for it: the authorization server's grant
   * approvals are polled with get() from the user's browser, then claimed and settled like a
   * call. This process answers for the record (the sweeper expires it if nobody decides).
   */
  async submit(request: ParkRequest, options: { pickup?: boolean } = {}): Promise<ParkedCall> {
    await this.start();
    const { timeoutMs, ...fields } = request;
    const created = this.now();
    const call: ParkedCall = {
      ...fields,
      id: randomUUID(),
      status: 'pending',
      created_at: new Date(created).toISOString(),
      expires_at: new Date(created + timeoutMs).toISOString(),
      // A pickup call is nobody's until it is claimed: any replica serves the agent's return.
      owner: options.pickup ? PICKUP_OWNER : this.owner,
      decisions: [],
    };
    if (!options.pickup) this.inFlight.add(call.id);
    try {
      // Keep decided records for a day so the page can show history.
      await this.options.state.set(APPROVALS, call.id, JSON.stringify(call), timeoutMs + HISTORY_MS);
      const hidden = hiddenCharactersOf(call);
      await this.audit('approval.requested', call, { quorum: call.quorum, expires_at: call.expires_at, ...(hidden.length ? { hidden_characters: hidden } : {}) });
      await this.options.bus.publish(call.id);
    } catch (error) {
      this.inFlight.delete(call.id);
      throw error;
    }
    this.options.onParked?.(call);
    return call;
  }

  private waitFor(id: string, deadline: number, wait: WaitOptions): Promise<ParkedCall> {
    return new Promise<ParkedCall>((resolve, reject) => {
      let settled = false;
      const timers: NodeJS.Timeout[] = [];
      const finish = (error: Error | undefined, call?: ParkedCall) => {
        if (settled) return;
        settled = true;
        timers.forEach(clearTimeout);
        clearInterval(progress);
        unsubscribe();
        wait.signal?.removeEventListener('abort', onAbort);
        // Approved: the pipeline answers for the record now (claim, then settle; or abandon).
        if (error) this.inFlight.delete(id);
        if (error) reject(error);
        else resolve(call!);
      };

      // Once the agent cancels, the cancellation decides what the agent is told.
      let cancelling = false;
      const check = async () => {
        if (cancelling) return;
        const current = await this.read(id);
        if (!current) return finish(refuse('BASTION_APPROVAL_INVALID', 'the approval request disappeared'));
        const { call } = current;
        switch (call.status) {
          case 'pending':
            return;
          case 'approved':
            return finish(undefined, call);
          case 'denied':
            return finish(refuse('BASTION_APPROVAL_DENIED', call.outcome ?? 'denied by an approver'));
          case 'expired':
            return finish(refuse('BASTION_APPROVAL_TIMEOUT', 'no approver decided before the approval request expired'));
          case 'withdrawn':
            return finish(refuse('BASTION_APPROVAL_WITHDRAWN', 'the agent withdrew the request'));
          default:
            return finish(refuse('BASTION_APPROVAL_INVALID', `the approval request is ${call.status}`));
        }
      };
      const checkSafely = () => void check().catch((error: Error) => finish(refuse('BASTION_APPROVAL_UNAVAILABLE', `approval state unavailable: ${error.message}`)));
      const unsubscribe = this.options.bus.subscribe((changed) => {
        if (changed === id) checkSafely();
      });

      const expire = async () => {
        await this.transition(id, ['pending'], 'expired', 'timed out');
        await check();
      };
      timers.push(setTimeout(() => void expire().catch(() => checkSafely()), Math.max(0, deadline - this.now())));

      const onAbort = () => {
        const cancelled = 'the agent cancelled the call';
        cancelling = true;
        void (async () => {
          const withdrawn = await this.transition(id, ['pending'], 'withdrawn', cancelled);
          // Approved but not yet picked up (the approval and the cancel crossed): it will never run.
          if (!withdrawn) await this.transition(id, ['approved'], 'abandoned', `approved, but ${cancelled} before it ran; it will not run`);
          finish(refuse('BASTION_APPROVAL_WITHDRAWN', cancelled));
        })().catch(() => finish(refuse('BASTION_APPROVAL_WITHDRAWN', cancelled)));
      };
      if (wait.signal?.aborted) onAbort();
      wait.signal?.addEventListener('abort', onAbort, { once: true });

      const progress = setInterval(() => {
        void this.read(id)
          .then((current) => {
            // Decided but not woken: the bus message was lost (e.g. Redis pub/sub across a reconnect).
            if (current?.call.status !== 'pending') return checkSafely();
            wait.onWaiting?.({
              approvals: current.call.decisions.filter((d) => d.decision === 'approve').length,
              quorum: current.call.quorum,
              secondsLeft: Math.max(0, Math.round((deadline - this.now()) / 1000)),
            });
          })
          // State unavailable: skip this tick; the call stays parked (an unhandled rejection here would kill the broker).
          .catch(() => undefined);
      }, this.options.progressEveryMs ?? 5000);
      checkSafely();
    });
  }

  /**
   * Watches a pickup call for at most `holdMs` (one bounded HTTP response, never the whole wait):
   * resolves with the record as soon as it leaves `pending`, or as it is when the hold ends or
   * the agent goes away (the call stays parked: the agent can come back). A pending record past
   * its expiry is expired here. Undefined when the record is gone.
   */
  async hold(id: string, holdMs: number, wait: WaitOptions = {}): Promise<ParkedCall | undefined> {
    const settledOrNow = async (): Promise<{ call: ParkedCall | undefined; final: boolean }> => {
      let call = (await this.read(id))?.call;
      if (call?.status === 'pending' && Date.parse(call.expires_at) <= this.now()) {
        call = (await this.transition(id, ['pending'], 'expired', 'timed out')) ?? (await this.read(id))?.call;
      }
      return { call, final: call?.status !== 'pending' };
    };
    const first = await settledOrNow();
    if (first.final || holdMs <= 0 || wait.signal?.aborted) return first.call;
    const deadline = Math.min(this.now() + holdMs, Date.parse(first.call!.expires_at));
    return new Promise<ParkedCall | undefined>((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        clearInterval(progress);
        unsubscribe();
        wait.signal?.removeEventListener('abort', finish);
        // The last word is the store's, whatever woke this.
        void settledOrNow().then(
          ({ call }) => resolve(call),
          () => resolve(undefined),
        );
      };
      const look = () =>
        void settledOrNow().then(
          ({ final }) => final && finish(),
          () => undefined,
        );
      const unsubscribe = this.options.bus.subscribe((changed) => changed === id && look());
      const timer = setTimeout(finish, Math.max(0, deadline - this.now()));
      wait.signal?.addEventListener('abort', finish, { once: true });
      const progress = setInterval(() => {
        void this.read(id)
          .then((current) => {
            if (current?.call.status !== 'pending') return finish();
            wait.onWaiting?.({
              approvals: current.call.decisions.filter((d) => d.decision === 'approve').length,
              quorum: current.call.quorum,
              secondsLeft: Math.max(0, Math.round((Date.parse(current.call.expires_at) - this.now()) / 1000)),
            });
          })
          .catch(() => undefined);
      }, this.options.progressEveryMs ?? 5000);
      look();
    });
  }

  /**
   * Consumes an approval for the call about to run: approved → dispatched, exactly once,
   * same hash only, and only while this process is not fenced by a newer one of its replica.
   */
  async claimForExecution(id: string, expectedHash: string): Promise<void> {
    if (!(await this.owners.current())) {
      throw refuse('BASTION_APPROVAL_INVALID', 'a newer broker process of this replica has started; this one runs no approved call');
    }
    let problem = '';
    const dispatched = await this.update(id, (call) => {
      if (call.call_hash !== expectedHash) {
        problem = 'the approved call differs from the call about to run';
        return undefined;
      }
      if (call.status !== 'approved') {
        problem = `the approval is ${call.status}, not approved`;
        return undefined;
      }
      // The claimant answers for it from now on (for a pickup call, the replica the agent came back to).
      return { ...call, status: 'dispatched', owner: this.owner, outcome: 'handed to the executor' };
    });
    if (!dispatched) throw refuse('BASTION_APPROVAL_INVALID', problem || 'the approval request disappeared');
    this.inFlight.add(id);
    await this.audit('approval.dispatched', dispatched);
  }

  /** The executor came back: dispatched → executed (an answer arrived) or failed (it threw). */
  async settle(id: string, status: 'executed' | 'failed', outcome: string): Promise<void> {
    try {
      await this.transition(id, ['dispatched'], status, outcome);
    } finally {
      this.inFlight.delete(id);
    }
  }

  /** The approved call will not run after all (re-check refused it, the agent left): approved → abandoned. */
  async abandon(id: string, reason: string): Promise<void> {
    try {
      await this.transition(id, ['approved'], 'abandoned', `approved, but not run: ${reason}`);
    } finally {
      this.inFlight.delete(id);
    }
  }

  /** Whether anyone still waits to run this record: this process, or a live, unfenced owner elsewhere. */
  private async waitedFor(call: ParkedCall): Promise<boolean> {
    // A pickup call: its agent may come back (to any replica) while pending, and for a grace period once approved.
    if (call.owner === PICKUP_OWNER) return call.status === 'pending' || (call.status === 'approved' && this.now() < Date.parse(call.expires_at) + PICKUP_GRACE_MS);
    return call.owner === this.owners.self ? this.inFlight.has(call.id) : this.owners.isAlive(call.owner);
  }

  /**
   * Settles every record nobody can finish: past its expiry and still pending → expired;
   * approved or dispatched with its owner gone → abandoned or interrupted. Records of
   * live owners elsewhere are theirs to settle (their clock set the expiry); this
   * process's own pending records are expired here too, in case its waiter's timer
   * could not write. Safe on every replica at once (compare-and-set).
   */
  async sweep(): Promise<void> {
    for (const call of await this.all()) {
      if (!OPEN_STATUSES.has(call.status)) continue;
      const waited = await this.waitedFor(call);
      const mine = call.owner === this.owners.self || call.owner === PICKUP_OWNER;
      const swept = { swept_by: this.owners.self };
      if (call.status === 'pending' && (mine || !waited) && Date.parse(call.expires_at) <= this.now()) {
        await this.transition(call.id, ['pending'], 'expired', waited ? 'timed out' : 'timed out; the agent connection was already gone', swept);
      } else if (call.status === 'approved' && !waited) {
        await this.transition(call.id, ['approved'], 'abandoned', 'approved, but the broker process holding the agent connection is gone; the call will not run', swept);
      } else if (call.status === 'dispatched' && !waited) {
        await this.transition(
          call.id,
          ['dispatched'],
          'interrupted',
          'handed to the executor, but no answer was recorded (the broker process stopped, or could not write the record); whether the tool ran is unknown',
          swept,
        );
      }
    }
  }

  private async sign(call: ParkedCall, approver: Approver, decision: 'approve' | 'deny', reason: string): Promise<string> {
    const key = await importJWK(this.options.signingKey, this.options.signingKey.alg ?? 'EdDSA');
    return new SignJWT({ approval_id: call.id, call_hash: call.call_hash, approver: approver.sub, auth_time: approver.authTime, decision, reason })
      .setProtectedHeader({ alg: this.options.signingKey.alg ?? 'EdDSA', typ: 'bastion-approval+jwt', ...(this.options.signingKey.kid ? { kid: this.options.signingKey.kid } : {}) })
      .setIssuedAt()
      .sign(key);
  }

  /**
   * An approver's decision. `shownHash` is the call hash the page displayed:
   * if the record changed since, nothing is decided.
   */
  async decide(approver: Approver, id: string, decision: 'approve' | 'deny', reason: string, shownHash: string): Promise<ParkedCall> {
    reason = reason.trim().slice(0, 2000);
    if (decision === 'deny' && reason.length === 0) throw new ApprovalActionError(400, 'a denial needs a reason');
    const current = await this.read(id);
    if (!current) throw new ApprovalActionError(404, 'no such approval request');
    const call = current.call;
    if (call.call_hash !== shownHash) throw new ApprovalActionError(409, 'the call changed since it was shown; reload and look again');
    if (call.status !== 'pending') throw new ApprovalActionError(409, `the request is already ${call.status}`);
    if (Date.parse(call.expires_at) <= this.now()) throw new ApprovalActionError(409, 'the request has expired');
    const requesters = [call.principal.sub, ...call.principal.act.map((a) => a.sub)];
    if (requesters.includes(approver.sub)) throw new ApprovalActionError(403, 'you cannot decide on a call you (or your delegation chain) requested');
    if (call.roles.length > 0 && !call.roles.some((role) => approver.roles.includes(role))) {
      const refusal = new ApprovalActionError(403, `this call needs an approver with role ${call.roles.join(' or ')}`);
      await this.audit('approval.vote-refused', call, { approver: approver.sub, approver_roles: approver.roles, reason: refusal.message });
      throw refusal;
    }
    const signedInAgoS = Math.floor((this.now() - Date.parse(approver.authTime)) / 1000);
    if (call.max_auth_age_s !== undefined && !(signedInAgoS <= call.max_auth_age_s)) {
      const refusal = new ApprovalActionError(
        401,
        `this call needs a sign-in within the last ${call.max_auth_age_s} s; yours was ${Number.isNaN(signedInAgoS) ? 'at an unknown time' : `${signedInAgoS} s ago`}: sign in again, then decide`,
        call.max_auth_age_s,
      );
      await this.audit('approval.vote-refused', call, { approver: approver.sub, auth_time: approver.authTime, reason: refusal.message });
      throw refusal;
    }
    if (call.decisions.some((d) => d.approver === approver.sub)) throw new ApprovalActionError(409, 'you already decided on this request');

    const entry: ApproverDecision = {
      approver: approver.sub,
      decision,
      reason,
      at: new Date(this.now()).toISOString(),
      auth_time: approver.authTime,
      jws: await this.sign(call, approver, decision, reason),
    };
    const ownerAlive = await this.waitedFor(call);
    let refusal: ApprovalActionError | undefined;
    const updated = await this.update(id, (latest) => {
      if (latest.status !== 'pending' || latest.call_hash !== shownHash) {
        refusal = new ApprovalActionError(409, `the request is already ${latest.status}`);
        return undefined;
      }
      if (latest.decisions.some((d) => d.approver === approver.sub)) {
        refusal = new ApprovalActionError(409, 'you already decided on this request');
        return undefined;
      }
      const decisions = [...latest.decisions, entry];
      if (decision === 'deny') return { ...latest, decisions, status: 'denied', outcome: `denied by ${approver.sub}: ${reason}` };
      const approvals = decisions.filter((d) => d.decision === 'approve').length;
      if (approvals < latest.quorum) return { ...latest, decisions };
      return ownerAlive
        ? { ...latest, decisions, status: 'approved', outcome: `approved by ${decisions.map((d) => d.approver).join(', ')}` }
        : { ...latest, decisions, status: 'abandoned', outcome: 'approved, but the agent connection is gone; the call will not run' };
    });
    if (!updated) throw refusal ?? new ApprovalActionError(404, 'no such approval request');
    await this.audit(`approval.${decision === 'deny' ? 'denied' : updated.status === 'pending' ? 'vote' : updated.status}`, updated, {
      approver: approver.sub,
      reason,
      jws: entry.jws,
    });
    return updated;
  }

  /** Every record still waiting, oldest first. */
  async pending(): Promise<ParkedCall[]> {
    return (await this.all()).filter((c) => c.status === 'pending').sort((a, b) => a.created_at.localeCompare(b.created_at));
  }

  /** Recently decided records, newest first. */
  async history(limit = 50): Promise<ParkedCall[]> {
    return (await this.all())
      .filter((c) => c.status !== 'pending')
      .sort((a, b) => b.created_at.localeCompare(a.created_at))
      .slice(0, limit);
  }

  async get(id: string): Promise<ParkedCall | undefined> {
    return (await this.read(id))?.call;
  }

  /** Whether the process holding a call's agent connection is still alive and waiting for it. */
  ownerIsAlive(call: ParkedCall): Promise<boolean> {
    return this.waitedFor(call);
  }

  private async all(): Promise<ParkedCall[]> {
    const entries = await this.options.state.entries(APPROVALS);
    const calls: ParkedCall[] = [];
    for (const [, text] of entries) {
      try {
        calls.push(parseParkedCall(text));
      } catch {
        // A record that does not parse is never shown and never runs.
      }
    }
    return calls;
  }
}
