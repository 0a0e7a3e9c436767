/**
 * The pipeline: every tool call passes resolve → authorize → approve →
 * execute → filter → audit, in that order, with the principal already
 * authenticated by the front door. With flow control on, authorize also
 * reads the agent's flow (what earlier results brought into its context)
 * and filter records what this result brings (broker/flows/). Each stage either hands its outcome to
 * the next or throws a Denial; a Denial ends the call with a clear error and
 * an audit record, and the tool is never touched.
 *
 * The pipeline holds no business rules: who may call what is the policy's
 * decision, and the pipeline only enforces it (fail closed).
 *
 * @example
 *   const result = await pipeline.callTool(principal, call, 'demo__read_file', { path: '/srv/a' });
 */
import { ProtocolError, ProtocolErrorCode, SdkErrorCode, SdkError } from '@modelcontextprotocol/server';
import type { CallToolResult, ClientCapabilities, InputRequiredResult, Tool } from '@modelcontextprotocol/server';
import type { Principal } from './auth/verify.ts';
import { canonicalJson, sha256, type AuditEvent } from './audit/chain.ts';
import type { AuditLog } from './audit/log.ts';
import { asDenial, Denial } from './errors.ts';
import type { Logger } from './log.ts';
import type { DecisionLog } from './policy/decision-log.ts';
import type { PolicyEngine } from './policy/engine.ts';
import type { Decision, PolicyInput } from './policy/schema.ts';
import type { ToolEntry, ToolRegistry, Risk } from './registry.ts';
import { Connector, ConnectorUnavailable, isInputRequired, type CallOrigin, type UpstreamInputRequired } from '../connectors/upstream.ts';
import type { TaskFiltering, TaskTable } from './tasks/task-table.ts';
import { TaskResultSchema } from './tasks/schemas.ts';
import { TaskRelay } from './tasks/relay.ts';
import { SandboxError } from '../sandboxes/errors.ts';
import { summarizeUses } from '../sandboxes/capabilities/uses.ts';
import { capabilityUsesOf, PluginHost, SANDBOX_META } from '../sandboxes/host.ts';
import type { ApprovalDesk } from './approvals/desk.ts';
import { callHash, type ParkedCall } from './approvals/record.ts';
import type { PickupTickets } from './approvals/pickup.ts';
import type { ResultFilter } from './filters/result.ts';
import type { Limits } from './limits.ts';
import { metrics, TOOL_UNAUTHENTICATED_LABEL } from './metrics.ts';
import type { FlowControl, PreparedFlow } from './flows/control.ts';
import type { RequestStateSealer } from './server/request-state.ts';
import { HeldExchange, type HeldExchanges, type HeldRequest } from './server/held-exchanges.ts';
import { MODERN_REVISION } from './server/eras.ts';
import { auditExplanation, explainFlow, type FlowExplanation } from './flows/explain.ts';
import type { ContextLabel, FlowInput } from './flows/schema.ts';

/** Where a call came from: the agent's session and its relay channel. */
export interface CallContext {
  session: string;
  transport: 'http' | 'stdio';
  /** The MCP revision the request speaks: its `_meta` envelope's (2026-07-28) or its session's. */
  protocol?: string;
  origin: CallOrigin;
  signal?: AbortSignal;
  /** Present when the agent asked for progress notifications. */
  progressToken?: string | number;
  /**
   * A 2026-07-28 request over HTTP: a call that waits for approval is watched for at most `holdMs`,
   * then answered `input_required` with a pickup ticket the agent's retry presents (`state`, its
   * echoed requestState), on any replica (approvals/pickup.ts). Absent: the response is held until
   * approvers decide (2025-era sessions, stdio).
   */
  pickup?: { state?: unknown; holdMs: number };
  /** What a 2026-07-28 request declared it can answer (sampling, elicitation, roots); the upstream is told only these. */
  clientCapabilities?: ClientCapabilities;
  /** A 2026-07-28 retry's multi-round-trip fields, lifted off the request by the SDK (untrusted). */
  continuation?: { inputResponses?: Record<string, unknown>; requestState?: string };
  /** A 2025-11-25 task-augmented call (`params.task`): answered with a CreateTaskResult once every stage passed. */
  task?: { ttl?: number };
}

/** What a task-augmented call answers: the task under Bastion's own id (broker/tasks/). */
export interface CreatedTaskResult {
  task: Record<string, unknown> & { taskId: string; status: string };
  [key: string]: unknown;
}

/** What Bastion seals into the requestState it hands a 2026-07-28 agent for an upstream's input_required. */
interface ContinuationState {
  /** The connector whose upstream asked. */
  c: string;
  /** The inputRequests keys the agent was given: the only inputResponses keys it may send. */
  k: string[];
  /** The upstream's own requestState, never shown to the agent. */
  s?: string;
  /** Era translation: the exchange this process holds (a 2025 upstream's request waiting on the agent's answer). */
  x?: string;
}

/** How long an agent has to answer an upstream's input_required (its retry must come within it). */
export const CONTINUATION_TTL_MS = 10 * 60_000;

/** What a call that is still waiting answers a 2026-07-28 agent: come back with this requestState. */
export type PickupResult = InputRequiredResult & { resultType: 'input_required'; requestState: string };

export interface PipelineParts {
  registry: ToolRegistry;
  /** The policy in force (PolicyHolder.current); asked once per call, and that engine decides the whole call. */
  policy: () => PolicyEngine;
  /** Records each tools/call decision; never awaited, never blocks (drops when full). */
  decisionLog?: DecisionLog;
  audit: AuditLog;
  log: Logger;
  /** Absent: approvals are off and a call that needs one is refused. */
  approvals?: {
    desk: ApprovalDesk;
    defaultTimeoutMs: number;
    maxTimeoutMs: number;
    /** Seals and opens approval pickups for 2026-07-28 agents; absent: their calls are held like 2025 ones. */
    tickets?: PickupTickets;
  };
  /** Stage 7: redaction, injection flags, size cap. */
  filter: ResultFilter;
  /** Stage 4: quotas and argument caps. */
  limits?: Limits;
  /** Ablation runs only: calls that need approval run without one. */
  autoApprove?: boolean;
  /** Re-checks a principal after a wait (revocation, expiry); throws a Denial. */
  recheck?: (principal: Principal) => Promise<void>;
  /** Flow control (broker/flows/); absent when config turns it off. */
  flows?: FlowControl;
  /** Seals the requestState of relayed input_required results; absent: they are refused. */
  requestStates?: RequestStateSealer;
  /** Era translation: a 2025 upstream's mid-call requests held for a 2026 agent's retry; absent: they are refused. */
  exchanges?: HeldExchanges;
  /** Bastion's tasks (2025-11-25 task-augmented calls); absent: task-augmented calls are refused. */
  tasks?: TaskTable;
  now?: () => Date;
}

/** What policy sees for a prompt or a resource: a pseudo-tool named `prompt:<name>` or `resource:<uri>`. */
export type ItemKind = 'prompt' | 'resource';

export function principalForAudit(principal: Principal): NonNullable<AuditEvent['principal']> {
  return { sub: principal.sub, iss: principal.iss, jti: principal.jti, token_hash: principal.tokenHash, anonymous: principal.anonymous };
}

/** An MCP tool result that tells the agent which stage refused and why. */
export function denialResult(denial: Denial): CallToolResult {
  return {
    isError: true,
    content: [
      { type: 'text', text: `Bastion refused this call at the ${denial.stage} stage (${denial.code}): ${denial.reason}` },
    ],
    _meta: { 'bastion/denial': denial.toJSON() },
  };
}

/**
 * The denial to record for a call that ended with `denial`: when the agent had
 * cancelled it by then, the call was cancelled (at the stage it had reached),
 * whatever the stage that noticed said (a withdrawn approval, the SDK's abort
 * reported as a request timeout, a sandbox stopped mid-call).
 */
function cancelledOr(call: CallContext, denial: Denial): Denial {
  if (!call.signal?.aborted || denial.code === 'BASTION_CANCELLED') return denial;
  // Often not the user: a client that waits without a progress token hears nothing and gives up at its own timeout.
  const why =
    denial.stage === 'approve' && call.progressToken === undefined
      ? `; it sent no progressToken, so it got no progress while it waited and its own request timeout (60 s by default in the TypeScript SDK) may have ended the wait: a client should send a progressToken (with resetTimeoutOnProgress in the TypeScript SDK) or raise its request timeout above the approval timeout`
      : '';
  return new Denial(denial.stage, 'BASTION_CANCELLED', `the agent cancelled the call at the ${denial.stage} stage${why}`);
}

/** Wraps an origin so its notifications go out one after another and can be awaited. */
function orderedRelay(origin: CallOrigin): { origin: CallOrigin; drained: () => Promise<void> } {
  let tail: Promise<void> = Promise.resolve();
  return {
    origin: {
      ...origin,
      sendNotification: (notification) => {
        tail = tail.then(() => origin.sendNotification(notification)).catch(() => undefined);
        return tail;
      },
    },
    drained: () => tail,
  };
}

/** The approve-stage Denial for a pickup whose record was decided otherwise (or already used). */
function pickupRefusal(record: ParkedCall): Denial {
  switch (record.status) {
    case 'denied':
      return new Denial('approve', 'BASTION_APPROVAL_DENIED', record.outcome ?? 'denied by an approver');
    case 'expired':
      return new Denial('approve', 'BASTION_APPROVAL_TIMEOUT', 'no approver decided before the approval request expired');
    case 'withdrawn':
      return new Denial('approve', 'BASTION_APPROVAL_WITHDRAWN', record.outcome ?? 'the request was withdrawn');
    default:
      // dispatched, executed, failed, interrupted, abandoned: the approval was used (or can no longer be); it runs once.
      return new Denial('approve', 'BASTION_APPROVAL_INVALID', `the approval is ${record.status}, not approved: an approval runs its call once; retry without requestState to ask again`);
  }
}

export class Pipeline {
  private readonly parts: PipelineParts;
  private readonly now: () => Date;
  /** tasks/get, result, cancel and list for agents (broker/tasks/relay.ts); absent when tasks are off. */
  readonly tasks: TaskRelay | undefined;

  constructor(parts: PipelineParts) {
    this.parts = parts;
    this.now = parts.now ?? (() => new Date());
    this.tasks = parts.tasks
      ? new TaskRelay({
          tasks: parts.tasks,
          connector: (name) => parts.registry.connectorNamed(name),
          audit: parts.audit,
          log: parts.log,
          filter: parts.filter,
          ...(parts.flows ? { flows: parts.flows } : {}),
          stillAllowed: (principal, call, tool, args) => this.stillAllowed(principal, call, tool, args),
          denialResult,
          principalForAudit,
        })
      : undefined;
  }

  /** Whether policy, as it is now, still lets this principal make this call (a task's result is fetched later). */
  private stillAllowed(principal: Principal, call: CallContext, tool: string, args: Record<string, unknown>): { allow: boolean; reasons: string[] } {
    try {
      const entry = this.parts.registry.resolveTool(tool);
      const decision = this.parts.policy().decideTrusted(
        this.input(principal, call, 'tools/call', { name: entry.exposedName, connector: entry.connector.name, risk: entry.risk, descriptor_hash: entry.descriptorHash }, args),
      );
      return { allow: decision.allow, reasons: decision.reasons };
    } catch (error) {
      return { allow: false, reasons: [error instanceof Denial ? error.reason : (error as Error).message] };
    }
  }

  private input(
    principal: Principal,
    call: CallContext,
    method: PolicyInput['context']['method'],
    tool: { name: string; connector: string; risk: Risk; descriptor_hash: string },
    args: Record<string, unknown>,
    flow?: FlowInput,
  ): PolicyInput {
    return {
      version: 1,
      principal: { sub: principal.sub, iss: principal.iss, act: principal.act, cap: principal.cap, anonymous: principal.anonymous },
      tool,
      // Arguments arrived as parsed JSON, so every value is JSON; the principal's caps were validated with its token.
      arguments: args as PolicyInput['arguments'],
      context: { time: this.now().toISOString(), transport: call.transport, session: call.session, method },
      ...(flow ? { flow } : {}),
    };
  }

  /** Reads the agent's flow for this call; a store that cannot answer refuses the call. */
  private async prepareFlow(principal: Principal, entry: ToolEntry, args: Record<string, unknown>): Promise<PreparedFlow | undefined> {
    if (!this.parts.flows) return undefined;
    return this.parts.flows.prepare(principal, { name: entry.exposedName, flow: entry.flow }, args).catch((error: unknown) => {
      throw asDenial('authorize', 'BASTION_FLOW_UNAVAILABLE', new Error(`the agent's flow state cannot be read: ${(error as Error).message}`));
    });
  }

  /**
   * Records what a resource read or a prompt brought into the agent's flow
   * (labels from the connector's config, raised to untrusted when flagged).
   * Throws a Denial when the flow cannot be written: the content is then
   * withheld, never handed over unrecorded.
   */
  async recordItemFlow(principal: Principal, kind: ItemKind, name: string, labels: readonly ContextLabel[], contents: unknown): Promise<void> {
    const flows = this.parts.flows;
    if (!flows) return;
    try {
      const recorded = await flows.recordItem(principal, `${kind}:${name}`, labels, contents);
      if (recorded.source) {
        await this.parts.audit.append({
          event: `${kind}s/flow`,
          principal: principalForAudit(principal),
          tool: `${kind}:${name}`,
          outcome: 'info',
          detail: { flow: recorded },
        });
      }
    } catch (error) {
      throw asDenial('filter', 'BASTION_FLOW_UNAVAILABLE', new Error(`the agent's flow state cannot be written: ${(error as Error).message}`));
    }
  }

  /** Stage 3 for listings: true when policy would let this principal use the item at all. */
  private allowedToSee(principal: Principal, call: CallContext, input: Parameters<Pipeline['input']>[3], method: PolicyInput['context']['method']): boolean {
    try {
      return this.parts.policy().decideTrusted(this.input(principal, call, method, input, {})).allow;
    } catch (error) {
      this.parts.log.warn({ err: (error as Error).message, item: input.name }, 'policy error while listing; item hidden');
      return false;
    }
  }

  /** `tools/list`: only the tools policy lets this principal call. */
  listTools(principal: Principal, call: CallContext): Tool[] {
    const visible: Tool[] = [];
    for (const entry of this.parts.registry.tools().values()) {
      const tool = { name: entry.exposedName, connector: entry.connector.name, risk: entry.risk, descriptor_hash: entry.descriptorHash };
      if (this.allowedToSee(principal, call, tool, 'tools/list')) visible.push(entry.descriptor);
    }
    return visible;
  }

  /** Whether a prompt or resource may be listed or used by this principal. */
  mayUse(principal: Principal, call: CallContext, kind: ItemKind, name: string, connector: string): boolean {
    const tool = { name: `${kind}:${name}`, connector, risk: 'low' as const, descriptor_hash: '' };
    return this.allowedToSee(principal, call, tool, 'tools/list');
  }

  /** Throws the authorize-stage Denial when a prompt or resource is not allowed. */
  authorizeItem(principal: Principal, call: CallContext, kind: ItemKind, name: string, connector: string): void {
    if (!this.mayUse(principal, call, kind, name, connector)) {
      throw new Denial('authorize', 'BASTION_POLICY_DENIED', `no capability covers ${kind} ${name}`);
    }
  }

  /** Records an event outside tool calls (delegation, revocation). */
  async recordEvent(event: AuditEvent): Promise<void> {
    await this.parts.audit.append(event);
  }

  /** Records a refusal that happened before the pipeline (e.g. at the HTTP front door). */
  async recordDenial(event: Omit<AuditEvent, 'outcome'>, denial: Denial): Promise<void> {
    this.parts.log.info({ ...event, denial: denial.toJSON() }, 'request refused');
    await this.parts.audit.append({ ...event, outcome: 'denied', denial: denial.toJSON() });
    if (event.event !== 'tools/call') metrics.requestRefused(denial);
    else metrics.toolCall(denial.stage === 'authenticate' || denial.stage === 'admit' ? TOOL_UNAUTHENTICATED_LABEL : (event.tool ?? ''), 'denied', denial);
  }

  /**
   * `tools/call` through every stage. Returns the (filtered) upstream result,
   * or a tool error naming the stage that refused. Throws McpError only for
   * protocol-level problems: an unknown tool, or an upstream protocol error.
   */
  async callTool(principal: Principal, call: CallContext, name: string, args: Record<string, unknown>): Promise<CallToolResult | PickupResult | CreatedTaskResult> {
    const started = performance.now();
    // Arguments nested too deeply to canonicalize (stack overflow) used to throw here, before any
    // stage: the agent got a bare -32603 and no audit record was written. Keep the error and refuse
    // the call below, after resolve, with a Denial and a record like any other refusal (fail closed).
    let argsHash: string | undefined;
    let argsBytes = 0;
    let argsError: Error | undefined;
    try {
      const canonical = canonicalJson(args);
      argsBytes = Buffer.byteLength(canonical);
      argsHash = sha256(canonical);
    } catch (error) {
      argsError = error instanceof Error ? error : new Error(String(error));
    }
    const event: AuditEvent = {
      event: 'tools/call',
      session: call.session,
      transport: call.transport,
      ...(call.protocol !== undefined ? { protocol: call.protocol } : {}),
      principal: principalForAudit(principal),
      tool: name,
      args_hash: argsHash,
      outcome: 'ok',
    };
    const finish = async (outcome: AuditEvent['outcome'], extra: Partial<AuditEvent> = {}) => {
      event.outcome = outcome;
      const detail = extra.detail || event.detail ? { ...event.detail, ...extra.detail } : undefined;
      Object.assign(event, extra, { detail });
      event.latency_ms = Math.round((performance.now() - started) * 1000) / 1000;
      const appending = performance.now();
      try {
        await this.parts.audit.append(event);
      } catch (error) {
        metrics.toolCall(name, 'error', { stage: 'audit', code: 'BASTION_AUDIT_UNAVAILABLE' });
        throw error;
      }
      metrics.stageTime('audit', appending);
      metrics.toolCall(name, outcome === 'ok' ? 'ok' : outcome === 'denied' ? 'denied' : 'error', event.denial);
    };

    const slots: { release?: () => Promise<void> } = {};
    try {
      return await this.runStages(principal, call, name, args, { event, finish, argsBytes, argsError, slots });
    } finally {
      // Concurrency slots are held until the call has ended, whatever the outcome.
      await slots.release?.();
    }
  }

  private async runStages(
    principal: Principal,
    call: CallContext,
    name: string,
    args: Record<string, unknown>,
    ctx: {
      event: AuditEvent;
      finish: (outcome: AuditEvent['outcome'], extra?: Partial<AuditEvent>) => Promise<void>;
      argsBytes: number;
      argsError: Error | undefined;
      slots: { release?: () => Promise<void> };
    },
  ): Promise<CallToolResult | PickupResult | CreatedTaskResult> {
    const { event, finish, argsBytes, argsError, slots } = ctx;
    let entry: ToolEntry;
    let decision: Decision | undefined;
    let prepared: PreparedFlow | undefined;
    let explanation: FlowExplanation | undefined;
    // An approval this call holds, until it is handed to the executor; a refusal before that abandons it.
    let approval: { id: string; hash: string } | undefined;
    let continuation: ContinuationState | undefined;
    // inputResponses sent without a requestState: never forwarded as they are (see answerFromUnasked).
    let unasked: Record<string, unknown> | undefined;
    // Era translation: the upstream call this retry answers, held by this process since an earlier leg.
    let resumed: HeldExchange<CallToolResult | UpstreamInputRequired> | undefined;
    try {
      let mark = performance.now();
      entry = this.parts.registry.resolveTool(name);
      metrics.stageTime('resolve', mark);
      // Which upstream, and the revision Bastion speaks to it (plugins have none).
      const upstreamProtocol = 'protocol' in entry.connector ? entry.connector.protocol : undefined;
      event.detail = { ...event.detail, connector: { name: entry.connector.name, ...(upstreamProtocol ? { protocol: upstreamProtocol } : {}) } };
      if (call.task) {
        event.detail = { ...event.detail, task: { requested: true } };
        // The spec's answer to a task for a tool that does not take one (-32601, below); plugins take none,
        // nor does a tool whose upstream never said it accepts task-augmented calls.
        if (taskSupportOf(entry) === 'forbidden' || !(entry.connector instanceof Connector) || !entry.connector.offersToolTasks || !this.parts.tasks) {
          const why = entry.connector instanceof Connector && !entry.connector.offersToolTasks ? `upstream ${entry.connector.name} does not offer tasks` : `its execution.taskSupport is ${taskSupportOf(entry)}`;
          throw new Denial('resolve', 'BASTION_TASK_NOT_SUPPORTED', `tool ${name} cannot be called as a task (${why})`);
        }
      }
      mark = performance.now();
      if (argsError) throw new Denial('limit', 'BASTION_ARGUMENTS_TOO_LARGE', `arguments cannot be evaluated: ${argsError.message}`);
      this.parts.limits?.checkArguments(argsBytes, args);
      const argumentCapsMs = performance.now() - mark;
      mark = performance.now();
      prepared = await this.prepareFlow(principal, entry, args);
      const policy = this.parts.policy();
      event.policy_revision = policy.revision;
      decision = this.decideLogged(
        policy,
        this.input(
          principal,
          call,
          'tools/call',
          { name: entry.exposedName, connector: entry.connector.name, risk: entry.risk, descriptor_hash: entry.descriptorHash },
          args,
          prepared?.input,
        ),
        event,
      );
      metrics.stageTime('authorize', mark);
      event.decision = { allow: decision.allow, reasons: decision.reasons, approval_required: decision.approval.required };
      // Why a flow rule fired, for the approval page and the audit trail (argument values hashed there).
      explanation = prepared ? explainFlow(prepared, decision.flow) : undefined;
      if (explanation) event.detail = { ...event.detail, flow: { key: prepared!.key, call: prepared!.call, explanation: auditExplanation(explanation) } };
      if (!decision.allow) {
        throw new Denial('authorize', 'BASTION_POLICY_DENIED', decision.reasons.join('; ') || 'policy denied the call');
      }
      // An obligation the filter cannot honour refuses the call before the tool runs.
      this.parts.filter.checkObligations(decision.obligations);
      // A multi-round-trip retry: its state must be one Bastion issued, to this principal, for this call.
      continuation = await this.openContinuation(principal, call, entry, args);
      if (continuation) event.detail = { ...event.detail, input_responses: Object.keys(call.continuation?.inputResponses ?? {}) };
      if (continuation?.x !== undefined) {
        resumed = this.parts.exchanges?.take(continuation.x, principal) as typeof resumed;
        if (!resumed) {
          throw new Denial(
            'authorize',
            'BASTION_EXCHANGE_UNAVAILABLE',
            'the upstream request this retry answers is not held by this Bastion process: the retry reached another replica (a 2025-11-25 upstream asking mid-call ties the call to the process that holds it), or the exchange expired or was already answered; retry the call without requestState to start over',
          );
        }
      }
      unasked = unaskedResponses(call);
      if (unasked) event.detail = { ...event.detail, unasked_input_responses: { keys: Object.keys(unasked).slice(0, 20), used: [] as string[] } };
      // Stage 4: quotas are taken only for calls policy allows, so refused calls cannot drain them.
      mark = performance.now();
      if (this.parts.limits) {
        slots.release = await this.parts.limits.enter(principal, entry.exposedName).catch((error: unknown) => {
          throw asDenial('limit', 'BASTION_STATE_UNAVAILABLE', error);
        });
      }
      // A principal's tasks are bounded: a full table refuses before anything is made upstream.
      if (call.task) this.parts.tasks!.checkCapacity(principal);
      metrics.stageMs('limit', argumentCapsMs + performance.now() - mark);
      const poisoned = entry.descriptorVerdict.action === 'require_approval';
      if ((decision.approval.required || poisoned) && !this.parts.autoApprove) {
        const needs: Decision = poisoned
          ? {
              ...decision,
              approval: {
                ...decision.approval,
                required: true,
                reason: [decision.approval.reason, `the tool's description was flagged (${entry.descriptorVerdict.findings.map((f) => f.kind).join(', ')})`].filter(Boolean).join('; '),
              },
            }
          : decision;
        mark = performance.now();
        const pickup = call.pickup && this.parts.approvals?.tickets ? call.pickup : undefined;
        const outcome = await (pickup ? this.approveForPickup(principal, call, pickup, entry, args, needs, explanation) : this.approve(principal, call, entry, args, needs, explanation)).catch(
          (error: unknown) => {
            throw asDenial('approve', 'BASTION_APPROVAL_UNAVAILABLE', error);
          },
        );
        metrics.stageTime('approve', mark);
        if ('requestState' in outcome) {
          // Still waiting: this response ends here, the call stays parked for the agent's retry.
          await this.parts.audit.append({ ...event, outcome: 'info', detail: { ...event.detail, approval_id: outcome.id, pickup: 'input_required' } });
          return { resultType: 'input_required', requestState: outcome.requestState };
        }
        approval = outcome;
        event.detail = { ...event.detail, approval_id: approval.id };
        await this.recheckAfterApproval(principal, call, entry, args);
      } else if (call.pickup?.state !== undefined && !continuation) {
        // openContinuation left this state to the approve stage, which does not run: it is neither a
        // continuation nor a ticket this call can redeem, so it is refused, never silently ignored.
        throw new Denial('authorize', 'BASTION_APPROVAL_STATE_INVALID', 'the requestState is neither an input request nor a pending approval Bastion issued for this call; retry the call without it');
      }
      // The upstream may have announced a changed tool while this call was decided:
      // run only against the descriptor that was authorized (rug-pull race).
      if (entry.connector.catalogSettled) {
        await entry.connector.catalogSettled();
        if (this.parts.registry.resolveTool(name).descriptorHash !== entry.descriptorHash) {
          throw new Denial('resolve', 'BASTION_TOOL_QUARANTINED', 'the tool descriptor changed while the call was being decided');
        }
      }
      // A call the agent cancelled while it was being decided is not handed to the executor at all.
      if (call.signal?.aborted) throw new Denial('execute', 'BASTION_CANCELLED', 'the agent cancelled the call before it ran');
      // Consumed only now, as the call is handed to the executor: the record says dispatched, not executed.
      if (approval) {
        // A claim lost to another retry of the same call (it runs there) is not this call's to abandon.
        const held = approval;
        approval = undefined;
        await this.parts.approvals!.desk.claimForExecution(held.id, held.hash);
        approval = held;
      }
    } catch (error) {
      const denial = cancelledOr(call, asDenial('authorize', 'BASTION_POLICY_ERROR', error));
      if (approval) {
        const { id } = approval;
        await this.parts.approvals!.desk.abandon(id, denial.reason).catch((e: Error) => this.parts.log.warn({ err: e.message, approval_id: id }, 'could not mark the approval abandoned; the sweeper will'));
      }
      resumed?.refuse(`the agent's retry was refused (${denial.code})`);
      await this.recordAndLog(finish, denial);
      if (denial.code === 'BASTION_TOOL_UNKNOWN') {
        throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Unknown tool: ${name}`, denial.toJSON());
      }
      if (isStateRefusal(denial)) throw stateRefusalError(denial);
      if (denial.code === 'BASTION_TASK_NOT_SUPPORTED') throw new ProtocolError(ProtocolErrorCode.MethodNotFound, denial.reason, denial.toJSON());
      return denialResult(denial);
    }

    if (call.task) {
      return this.startTask(principal, call, entry, args, { finish, approval, argsHash: event.args_hash, filtering: { obligations: decision.obligations, ...(prepared ? { flow: { prepared, decided: decision.flow } } : {}) } });
    }

    // Relayed notifications (progress, logging) must reach the agent before the
    // result does: the result closes the call's stream, and later sends are lost.
    const relay = orderedRelay(call.origin);
    let answer: CallToolResult | UpstreamInputRequired | undefined;
    const executing = performance.now();
    // A 2026-07-28 agent has no channel for a 2025 upstream's mid-call requests: they are held (HeldExchange).
    // Only a 2025-era upstream asks mid-call (a 2026 one answers input_required; a plugin asks nothing).
    const asksMidCall = 'protocol' in entry.connector && entry.connector.protocol !== undefined && entry.connector.protocol !== MODERN_REVISION;
    const exchange = resumed ?? (call.protocol === MODERN_REVISION && asksMidCall && this.parts.exchanges ? new HeldExchange<CallToolResult | UpstreamInputRequired>() : undefined);
    const unlink = exchange ? linkAbort(call.signal, exchange.controller) : () => undefined;
    let held: HeldRequest | undefined;
    const upstreamCall = (inputResponses: Record<string, unknown> | undefined, requestState: string | undefined) =>
      entry.connector.callTool(entry.upstreamName, args, {
        origin: exchange ? { ...relay.origin, sendRequest: exchange.ask } : relay.origin,
        // A 2026-07-28 agent gets an upstream's input_required to answer itself (retrying through Bastion).
        ...(call.protocol === MODERN_REVISION
          ? {
              inputRequired: {
                manual: true as const,
                ...(call.clientCapabilities ? { clientCapabilities: call.clientCapabilities } : {}),
                ...(inputResponses ? { inputResponses } : {}),
                ...(requestState !== undefined ? { requestState } : {}),
              },
            }
          : {}),
        ...(exchange ? { signal: exchange.controller.signal } : call.signal ? { signal: call.signal } : {}),
        // A tool that runs only as a task, for an agent that asked for none: Bastion runs the task and waits.
        ...(taskSupportOf(entry) === 'required' ? { viaTask: true as const } : {}),
        ...(call.progressToken !== undefined
          ? {
              onprogress: (progress) => {
                void relay.origin.sendNotification({ method: 'notifications/progress', params: { ...progress, progressToken: call.progressToken! } });
              },
            }
          : {}),
      });
    try {
      if (exchange) {
        if (resumed) {
          // The agent's answer goes to the upstream request that has waited for it.
          const key = continuation!.k[0]!;
          const response = call.continuation?.inputResponses?.[key];
          if (response === undefined || !resumed.answer(key, response)) resumed.refuse(`the agent's retry carried no answer to ${key}`);
        }
        const upstream = resumed?.upstream ?? upstreamCall(continuation ? call.continuation?.inputResponses : undefined, continuation?.s);
        const outcome = await this.nextHeld(exchange, upstream, principal, call, entry);
        if ('failed' in outcome) throw outcome.failed;
        if ('ask' in outcome) held = outcome.ask;
        else answer = outcome.done;
      } else {
        answer = await upstreamCall(continuation ? call.continuation?.inputResponses : undefined, continuation?.s);
      }
      // Responses the agent sent unasked answer only what the upstream asks now, in this call.
      const preanswered = !held && unasked && isInputRequired(answer!) ? answerFromUnasked(answer as UpstreamInputRequired, unasked) : undefined;
      if (preanswered) {
        (event.detail!.unasked_input_responses as { used: string[] }).used = Object.keys(preanswered);
        answer = await upstreamCall(preanswered, (answer as UpstreamInputRequired).requestState);
      }
      await relay.drained();
      metrics.stageTime('execute', executing);
    } catch (error) {
      unlink();
      metrics.stageTime('execute', executing);
      // The SDK rejects an aborted request as a timeout; the agent's own signal tells the two apart.
      // (The upstream was told: the SDK sent it notifications/cancelled; a sandbox call is stopped.)
      if (call.signal?.aborted) {
        const denial = new Denial('execute', 'BASTION_CANCELLED', `the agent cancelled the call while ${entry.connector.name} ran it`);
        if (approval) await this.settleApproval(approval.id, 'failed', denial.reason);
        await this.recordAndLog(finish, denial, 'error');
        return denialResult(denial);
      }
      if (approval) await this.settleApproval(approval.id, 'failed', `the executor failed: ${(error as Error).message}`);
      // v2 splits errors: ProtocolError is what the upstream answered, SdkError what went wrong locally (timeout, closed).
      if (error instanceof ProtocolError) {
        // The upstream answered with a protocol error (e.g. invalid params): pass it on as is.
        await finish('error', { denial: { stage: 'execute', code: 'BASTION_UPSTREAM_ERROR', reason: error.message } });
        throw error;
      }
      const denial =
        // The agent's own upstream connection could not be opened within the connector's bounds.
        error instanceof Denial
          ? error
          : error instanceof ConnectorUnavailable || error instanceof SandboxError
          ? new Denial('execute', 'BASTION_CONNECTOR_UNAVAILABLE', error.message)
          : error instanceof SdkError && error.code === SdkErrorCode.RequestTimeout
            ? new Denial('execute', 'BASTION_UPSTREAM_TIMEOUT', `upstream ${entry.connector.name} did not answer in time`)
            : new Denial('execute', 'BASTION_UPSTREAM_ERROR', `upstream ${entry.connector.name} failed: ${(error as Error).message}`);
      await this.recordAndLog(finish, denial, error instanceof Denial ? 'denied' : 'error');
      return denialResult(denial);
    }

    // A sandbox answers a call it stopped for the agent with a tool error; the record says cancelled.
    if (call.signal?.aborted && entry.connector instanceof PluginHost && ((answer as CallToolResult)._meta?.[SANDBOX_META] as { code?: string } | undefined)?.code === 'SANDBOX_CANCELLED') {
      const denial = new Denial('execute', 'BASTION_CANCELLED', `the agent cancelled the call while plugin ${entry.connector.name} ran it`);
      if (approval) await this.settleApproval(approval.id, 'failed', denial.reason);
      await this.recordAndLog(finish, denial, 'error');
      return denialResult(denial);
    }
    unlink();
    if (held) {
      if (approval) await this.settleApproval(approval.id, 'executed', 'the upstream asked the agent for input mid-call (held for its retry)');
      return this.relayHeld(principal, entry, name, args, exchange!, held, finish);
    }
    answer = answer!;
    if (isInputRequired(answer)) {
      if (approval) await this.settleApproval(approval.id, 'executed', 'the upstream asked the agent for input (input_required)');
      return this.relayInputRequired(principal, entry, name, args, answer, finish);
    }
    const result = answer;
    if (approval) await this.settleApproval(approval.id, 'executed', result.isError ? 'the upstream answered with a tool error' : 'the upstream answered');

    // Stage 7. A result that cannot be scanned or measured (too big, too deep) is withheld, never passed through.
    let filtered: ReturnType<ResultFilter['filter']>;
    const filtering = performance.now();
    try {
      filtered = this.parts.filter.filter(result, decision.obligations);
      metrics.stageTime('filter', filtering);
    } catch (error) {
      const denial = asDenial('filter', 'BASTION_RESULT_TOO_LARGE', error);
      await this.recordAndLog(finish, denial, 'error');
      return denialResult(denial);
    }
    const { report } = filtered;
    // What this result brings into the agent's flow is recorded before the agent sees it;
    // if it cannot be, the result is withheld (an unrecorded untrusted read would launder the flow).
    let flowRecord: Awaited<ReturnType<FlowControl['record']>> | undefined;
    if (prepared && this.parts.flows) {
      try {
        flowRecord = await this.parts.flows.record(prepared, decision.flow, filtered.result, report.flags);
      } catch (error) {
        const denial = asDenial('filter', 'BASTION_FLOW_UNAVAILABLE', new Error(`the result was withheld: the agent's flow state cannot be written (${(error as Error).message})`));
        await this.recordAndLog(finish, denial, 'error');
        return denialResult(denial);
      }
    }
    // Host capabilities a plugin used (fetches, kv keys) go to the audit record, summarized so a
    // plugin cannot bloat it; the filter already dropped them from what the agent gets. Only the
    // sandbox host reports them: the same _meta key from an upstream is not evidence.
    const capabilityUses = entry.connector instanceof PluginHost ? capabilityUsesOf(result) : [];
    await finish(result.isError ? 'error' : 'ok', {
      detail: {
        result_bytes: report.bytes,
        ...(flowRecord?.source ? { flow: { ...(event.detail?.flow as object | undefined), ...flowRecord } } : {}),
        ...(capabilityUses.length ? summarizeUses(capabilityUses) : {}),
        // What was redacted and flagged, by kind and place; never the content.
        ...(Object.keys(report.redactions).length ? { redactions: report.redactions } : {}),
        ...(report.flags.length ? { flags: report.flags.map(({ kind, where }) => ({ kind, where })) } : {}),
      },
    });
    return filtered.result;
  }

  /**
   * Stage 6 for a task-augmented call (every earlier stage passed): the upstream task is made on
   * the agent's own connection, recorded under a new opaque id bound to this principal, and the
   * agent gets the CreateTaskResult with that id (never the upstream's). Its result is filtered
   * when the agent fetches it (tasks/result, broker/tasks/relay.ts).
   */
  private async startTask(
    principal: Principal,
    call: CallContext,
    entry: ToolEntry,
    args: Record<string, unknown>,
    ctx: {
      finish: (outcome: AuditEvent['outcome'], extra?: Partial<AuditEvent>) => Promise<void>;
      approval: { id: string } | undefined;
      argsHash: string | undefined;
      filtering: TaskFiltering;
    },
  ): Promise<CallToolResult | CreatedTaskResult> {
    const connector = entry.connector as Connector;
    const { finish, approval } = ctx;
    let created: Awaited<ReturnType<Connector['createTask']>>;
    try {
      created = await connector.createTask(entry.upstreamName, args, call.task!, { origin: call.origin, holdMaxMs: this.parts.tasks!.maxTtlMs, ...(call.signal ? { signal: call.signal } : {}) });
    } catch (error) {
      const denial = call.signal?.aborted
        ? new Denial('execute', 'BASTION_CANCELLED', `the agent cancelled the call while ${connector.name} created its task`)
        : error instanceof Denial
          ? error
          : new Denial('execute', 'BASTION_UPSTREAM_ERROR', `upstream ${connector.name} did not create the task: ${(error as Error).message}`);
      if (approval) await this.settleApproval(approval.id, 'failed', denial.reason);
      await this.recordAndLog(finish, denial, error instanceof Denial ? 'denied' : 'error');
      if (error instanceof ProtocolError && !call.signal?.aborted) throw error;
      return denialResult(denial);
    }
    let record: ReturnType<TaskTable['add']>;
    try {
      record = this.parts.tasks!.add({
        owner: { iss: principal.iss, sub: principal.sub },
        connector: connector.name,
        connection: created.connection,
        session: call.session,
        upstreamId: created.task.taskId,
        tool: entry.exposedName,
        args,
        argsHash: ctx.argsHash,
        ttlMs: created.task.ttl,
        filtering: ctx.filtering,
      });
    } catch (error) {
      // Full since the limit stage (a concurrent call): the upstream task is not left running unowned.
      await connector
        .onTaskConnection(created.connection, call.origin, (client) => client.request({ method: 'tasks/cancel', params: { taskId: created.task.taskId } }, TaskResultSchema))
        .catch(() => undefined);
      const denial = asDenial('limit', 'BASTION_TASKS_FULL', error);
      if (approval) await this.settleApproval(approval.id, 'failed', denial.reason);
      await this.recordAndLog(finish, denial);
      return denialResult(denial);
    }
    if (approval) await this.settleApproval(approval.id, 'executed', `the upstream created task ${record.id}`);
    await finish('ok', { detail: { task: { id: record.id, upstream_id: created.task.taskId, status: created.task.status, expires_at: new Date(record.expiresAt).toISOString() } } });
    return { task: { ...created.task, taskId: record.id, ttl: record.expiresAt - record.createdAt } };
  }

  /**
   * Opens a 2026-07-28 retry's requestState (refusing one Bastion did not issue to this principal
   * for this tool, arguments and connector, or one past its time) and checks its inputResponses
   * answer only requests the agent was given. Undefined: not a retry.
   */
  private async openContinuation(principal: Principal, call: CallContext, entry: Pick<ToolEntry, 'exposedName'> & { connector: { name: string } }, args: Record<string, unknown>): Promise<ContinuationState | undefined> {
    const { inputResponses, requestState } = call.continuation ?? {};
    const answered = Object.keys(inputResponses ?? {});
    // inputResponses with no state answer nothing Bastion asked: runStages holds them back (unaskedResponses).
    if (requestState === undefined) return undefined;
    if (!this.parts.requestStates) throw new Denial('authorize', 'BASTION_STATE_MALFORMED', 'this Bastion issues no requestState; retry the call without it');
    const opened = await this.parts.requestStates.open<ContinuationState>(requestState, binding(principal, entry.exposedName, args));
    if (!opened.ok) {
      // Not a continuation Bastion sealed: with no inputResponses it may be an approval pickup ticket,
      // which the approve stage redeems (or refuses) itself.
      const notOurs = opened.refusal.code === 'BASTION_STATE_TAMPERED' || opened.refusal.code === 'BASTION_STATE_MALFORMED';
      if (notOurs && answered.length === 0 && call.pickup?.state !== undefined) return undefined;
      throw new Denial('authorize', opened.refusal.code, opened.refusal.message);
    }
    // A continuation, not a pickup ticket: an approval this leg needs starts afresh.
    if (call.pickup) call.pickup = { holdMs: call.pickup.holdMs };
    const state = opened.payload;
    if (state.c !== entry.connector.name) throw new Denial('authorize', 'BASTION_STATE_OTHER_CALL', 'requestState belongs to a call to another upstream; retry without it');
    const unexpected = answered.filter((key) => !state.k.includes(key));
    if (unexpected.length > 0) {
      throw new Denial('authorize', 'BASTION_INPUT_RESPONSES_UNEXPECTED', `inputResponses ${unexpected.slice(0, 5).join(', ')} answer no request in this call's input_required (it asked for: ${state.k.join(', ') || 'nothing'})`);
    }
    return state;
  }

  /**
   * `prompts/get` or `resources/read` for a 2026-07-28 agent: an upstream's input_required
   * reaches the agent under a state Bastion sealed, exactly as for `tools/call`, bound to the
   * principal, the method and the prompt name or resource URI (so a tool call's state never
   * opens here, nor one item's for another), the arguments hash and an expiry; a retry's state
   * is opened and its inputResponses checked before the upstream is asked. `run` asks the
   * upstream (on the agent's own connection) with what to forward; its input_required answer
   * comes back to be relayed. Refusals are audited; a refused state is a JSON-RPC error.
   * Returns the upstream's complete result, or the input_required to hand the agent.
   */
  async itemRound<T>(
    principal: Principal,
    call: CallContext,
    item: { method: 'prompts/get' | 'resources/read'; name: string; connector: string; arguments: Record<string, unknown> },
    run: (forward: { inputResponses?: Record<string, unknown>; requestState?: string; clientCapabilities?: ClientCapabilities }) => Promise<T | UpstreamInputRequired>,
  ): Promise<T | InputRequiredResult> {
    const bound = { exposedName: `${item.method} ${item.name}`, connector: { name: item.connector } };
    const event: AuditEvent = {
      event: item.method,
      session: call.session,
      transport: call.transport,
      ...(call.protocol !== undefined ? { protocol: call.protocol } : {}),
      principal: principalForAudit(principal),
      tool: item.name,
      outcome: 'ok',
      detail: { connector: { name: item.connector } },
    };
    let continuation: ContinuationState | undefined;
    try {
      continuation = await this.openContinuation(principal, call, bound, item.arguments);
    } catch (error) {
      const denial = asDenial('authorize', 'BASTION_POLICY_ERROR', error);
      await this.recordDenial(event, denial);
      throw isStateRefusal(denial) ? stateRefusalError(denial) : denial;
    }
    const caps = call.clientCapabilities ? { clientCapabilities: call.clientCapabilities } : {};
    let answer = await run({ ...caps, ...(continuation ? { inputResponses: call.continuation?.inputResponses ?? {} } : {}), ...(continuation?.s !== undefined ? { requestState: continuation.s } : {}) });
    const unasked = unaskedResponses(call);
    const preanswered = unasked && isInputRequired(answer) ? answerFromUnasked(answer, unasked) : undefined;
    if (preanswered) answer = await run({ ...caps, inputResponses: preanswered, ...((answer as UpstreamInputRequired).requestState !== undefined ? { requestState: (answer as UpstreamInputRequired).requestState } : {}) });
    if (unasked) event.detail = { ...event.detail, unasked_input_responses: { keys: Object.keys(unasked).slice(0, 20), used: Object.keys(preanswered ?? {}) } };
    if (continuation) event.detail = { ...event.detail, input_responses: Object.keys(call.continuation?.inputResponses ?? {}) };
    if (!isInputRequired(answer)) {
      if (continuation || unasked) await this.parts.audit.append(event);
      return answer;
    }
    if (!this.parts.requestStates) {
      const denial = new Denial('execute', 'BASTION_INPUT_REQUIRED_UNSUPPORTED', `upstream ${item.connector} asked for input, and this Bastion cannot carry multi-round-trip state`);
      await this.recordDenial(event, denial);
      throw denial;
    }
    const keys = Object.keys(answer.inputRequests ?? {});
    const state: ContinuationState = { c: item.connector, k: keys, ...(answer.requestState !== undefined ? { s: answer.requestState } : {}) };
    const sealed = await this.parts.requestStates.seal(state, binding(principal, bound.exposedName, item.arguments), CONTINUATION_TTL_MS);
    const methods = Object.values(answer.inputRequests ?? {}).map((request) => String((request as { method?: unknown })?.method ?? 'unknown'));
    await this.parts.audit.append({ ...event, detail: { ...event.detail, input_required: { keys, methods } } });
    return { resultType: 'input_required', ...(answer.inputRequests ? { inputRequests: answer.inputRequests } : {}), requestState: sealed } as InputRequiredResult;
  }

  /**
   * Era translation: waits for the held upstream call to end or to ask the agent something it
   * declared it can answer, and holds the exchange for the agent's retry. A request the agent
   * cannot answer (not declared), or one past the principal's bound on held exchanges, is
   * refused to the upstream (which turns the error into its answer) and the wait goes on.
   */
  private async nextHeld(
    exchange: HeldExchange<CallToolResult | UpstreamInputRequired>,
    upstream: Promise<CallToolResult | UpstreamInputRequired>,
    principal: Principal,
    call: CallContext,
    entry: ToolEntry,
  ) {
    for (;;) {
      const outcome = await exchange.next(upstream);
      if (!('ask' in outcome)) return outcome;
      const needs = CAPABILITY_FOR[outcome.ask.request.method];
      if (!needs || !call.clientCapabilities?.[needs]) {
        exchange.refuse(`Bastion cannot relay ${outcome.ask.request.method}: the calling agent (${MODERN_REVISION}) did not declare the ${needs ?? 'matching'} capability`);
      } else if (!this.parts.exchanges!.hold(exchange, principal)) {
        exchange.refuse(`Bastion cannot relay ${outcome.ask.request.method}: this principal holds as many unanswered upstream requests as Bastion allows; answer or abandon those first`);
      } else {
        this.parts.log.debug({ connector: entry.connector.name, exchange: exchange.id, method: outcome.ask.request.method }, 'upstream request held for the agent');
        return outcome;
      }
    }
  }

  /** The agent gets the held upstream request as an input_required, under a state that names the exchange. */
  private async relayHeld(
    principal: Principal,
    entry: ToolEntry,
    name: string,
    args: Record<string, unknown>,
    exchange: HeldExchange,
    held: HeldRequest,
    finish: (outcome: AuditEvent['outcome'], extra?: Partial<AuditEvent>) => Promise<void>,
  ): Promise<CallToolResult> {
    const state: ContinuationState = { c: entry.connector.name, k: [held.key], x: exchange.id };
    const sealed = await this.parts.requestStates!.seal(state, binding(principal, name, args), this.parts.exchanges!.ttlMs);
    const { _meta: _dropped, ...params } = (held.request.params ?? {}) as Record<string, unknown>;
    await finish('ok', { detail: { input_required: { keys: [held.key], methods: [held.request.method], held: true } } });
    return { resultType: 'input_required', inputRequests: { [held.key]: { method: held.request.method, params } }, requestState: sealed } as unknown as CallToolResult;
  }

  /**
   * An upstream asked the agent for input (2026-07-28 input_required): the agent gets its
   * inputRequests and a requestState Bastion sealed (the upstream's own state inside, bound to
   * this principal, tool and arguments). The final result of the retried call is filtered as usual.
   */
  private async relayInputRequired(
    principal: Principal,
    entry: ToolEntry,
    name: string,
    args: Record<string, unknown>,
    answer: UpstreamInputRequired,
    finish: (outcome: AuditEvent['outcome'], extra?: Partial<AuditEvent>) => Promise<void>,
  ): Promise<CallToolResult> {
    const keys = Object.keys(answer.inputRequests ?? {});
    if (!this.parts.requestStates) {
      const denial = new Denial('execute', 'BASTION_INPUT_REQUIRED_UNSUPPORTED', `upstream ${entry.connector.name} asked for input, and this Bastion cannot carry multi-round-trip state`);
      await this.recordAndLog(finish, denial, 'error');
      return denialResult(denial);
    }
    const state: ContinuationState = { c: entry.connector.name, k: keys, ...(answer.requestState !== undefined ? { s: answer.requestState } : {}) };
    const sealed = await this.parts.requestStates.seal(state, binding(principal, name, args), CONTINUATION_TTL_MS);
    const methods = Object.values(answer.inputRequests ?? {}).map((request) => String((request as { method?: unknown })?.method ?? 'unknown'));
    await finish('ok', { detail: { input_required: { keys, methods } } });
    return { resultType: 'input_required', ...(answer.inputRequests ? { inputRequests: answer.inputRequests } : {}), requestState: sealed } as unknown as CallToolResult;
  }

  /**
   * Stage 5: parks the call until approvers decide. Returns the approved
   * record's id and hash; runStages re-checks, then consumes it (claimForExecution)
   * as it hands the call to the executor, or abandons it.
   */
  private async approve(
    principal: Principal,
    call: CallContext,
    entry: ToolEntry,
    args: Record<string, unknown>,
    decision: Decision,
    explanation: FlowExplanation | undefined,
  ): Promise<{ id: string; hash: string }> {
    const approvals = this.parts.approvals;
    if (!approvals) {
      throw new Denial(
        'approve',
        'BASTION_APPROVAL_REQUIRED',
        `this call needs human approval (${decision.approval.reason || 'policy requires it'}), and approvals are disabled on this broker`,
      );
    }
    const hash = callHash(principal, entry.exposedName, args, entry.descriptorHash);
    const parked = await approvals.desk.park(this.parkRequest(principal, entry, args, decision, explanation, hash), {
      ...(call.signal ? { signal: call.signal } : {}),
      onWaiting: this.progressTo(call),
    });
    return { id: parked.id, hash };
  }

  /**
   * Stage 5 for a 2026-07-28 agent over HTTP (approvals/pickup.ts): the first request parks the
   * call for pickup; a retry presents its ticket (bound to this principal, tool and arguments;
   * its call hash must still match, descriptor included). Either way the record is watched for
   * a bounded hold: approved → the call goes on (claimForExecution then lets one retry run it);
   * still pending → a ticket to come back with; decided otherwise → the approve-stage Denial.
   */
  private async approveForPickup(
    principal: Principal,
    call: CallContext,
    pickup: NonNullable<CallContext['pickup']>,
    entry: ToolEntry,
    args: Record<string, unknown>,
    decision: Decision,
    explanation: FlowExplanation | undefined,
  ): Promise<{ id: string; hash: string } | { id: string; requestState: string }> {
    const approvals = this.parts.approvals!;
    const tickets = approvals.tickets!;
    const hash = callHash(principal, entry.exposedName, args, entry.descriptorHash);
    const binding = { iss: principal.iss, sub: principal.sub, tool: entry.exposedName, arguments: args };
    let id: string;
    if (pickup.state === undefined) {
      id = (await approvals.desk.submit(this.parkRequest(principal, entry, args, decision, explanation, hash), { pickup: true })).id;
    } else {
      const ticket = await tickets.redeem(pickup.state, binding);
      if (ticket.call_hash !== hash) {
        throw new Denial('approve', 'BASTION_APPROVAL_INVALID', 'the tool changed (its descriptor) since this call was parked: the approval was for another call; retry without requestState to ask again');
      }
      id = ticket.approval_id;
    }
    const record = await approvals.desk.hold(id, pickup.holdMs, { ...(call.signal ? { signal: call.signal } : {}), onWaiting: this.progressTo(call) });
    if (!record) throw new Denial('approve', 'BASTION_APPROVAL_INVALID', 'the approval request disappeared');
    if (record.call_hash !== hash) throw new Denial('approve', 'BASTION_APPROVAL_INVALID', 'the approved call differs from the call about to run');
    if (record.status === 'approved') return { id, hash };
    if (record.status === 'pending') return { id, requestState: await tickets.issue({ approval_id: id, call_hash: hash }, binding, Date.parse(record.expires_at)) };
    throw pickupRefusal(record);
  }

  /** The approval request for this call, as approvers see it. */
  private parkRequest(principal: Principal, entry: ToolEntry, args: Record<string, unknown>, decision: Decision, explanation: FlowExplanation | undefined, hash: string) {
    const approvals = this.parts.approvals!;
    const timeoutMs = Math.min(decision.approval.timeout_s ? decision.approval.timeout_s * 1000 : approvals.defaultTimeoutMs, approvals.maxTimeoutMs);
    return {
      call_hash: hash,
      principal: { sub: principal.sub, iss: principal.iss, act: principal.act },
      tool: entry.exposedName,
      connector: entry.connector.name,
      risk: entry.risk,
      descriptor_hash: entry.descriptorHash,
      arguments: args,
      reasons: decision.reasons,
      approval_reason: decision.approval.reason,
      quorum: decision.approval.quorum,
      roles: decision.approval.roles ?? [],
      ...(decision.approval.max_auth_age_s ? { max_auth_age_s: decision.approval.max_auth_age_s } : {}),
      ...(explanation ? { flow: explanation } : {}),
      timeoutMs,
    };
  }

  /** Progress notifications to an agent that asked for them, while its call waits. */
  private progressTo(call: CallContext): (state: { approvals: number; quorum: number; secondsLeft: number }) => void {
    return ({ approvals: given, quorum, secondsLeft }) => {
      if (call.progressToken === undefined) return;
      void call.origin
        .sendNotification({
          method: 'notifications/progress',
          params: { progressToken: call.progressToken, progress: given, total: quorum, message: `waiting for human approval: ${given}/${quorum}, ${secondsLeft}s left` },
        })
        .catch(() => undefined);
    };
  }

  /** After a wait: the token (revoked, expired) and the policy may have changed; either stops the call. */
  private async recheckAfterApproval(principal: Principal, call: CallContext, entry: ToolEntry, args: Record<string, unknown>): Promise<void> {
    await this.parts.recheck?.(principal);
    // The flow may have grown while the call waited (the agent read more elsewhere): decide on it as it is now.
    const flow = await this.prepareFlow(principal, entry, args);
    const again = this.parts.policy().decideTrusted(
      this.input(principal, call, 'tools/call', { name: entry.exposedName, connector: entry.connector.name, risk: entry.risk, descriptor_hash: entry.descriptorHash }, args, flow?.input),
    );
    if (!again.allow) {
      throw new Denial('authorize', 'BASTION_POLICY_DENIED', `policy no longer allows this call after approval: ${again.reasons.join('; ')}`);
    }
  }

  /** Records what the executor did with an approved call; a state failure is logged (the sweeper settles it later). */
  private async settleApproval(id: string, status: 'executed' | 'failed', outcome: string): Promise<void> {
    await this.parts.approvals?.desk.settle(id, status, outcome).catch((error: Error) => this.parts.log.warn({ err: error.message, approval_id: id }, 'could not settle the approval record'));
  }

  /** Stage 3 for a call: the decision, and its decision log id on the audit event (also when the policy fails). */
  private decideLogged(policy: PolicyEngine, input: PolicyInput, event: AuditEvent): Decision {
    const log = this.parts.decisionLog;
    const entry = { input, revision: policy.revision, bundleRevision: policy.bundleRevision };
    let decision: Decision;
    try {
      decision = policy.decideTrusted(input);
    } catch (error) {
      event.decision_id = log?.record({ ...entry, error: error instanceof Denial ? error.reason : String(error) });
      throw error;
    }
    event.decision_id = log?.record({ ...entry, result: decision });
    return decision;
  }

  private async recordAndLog(
    finish: (outcome: AuditEvent['outcome'], extra?: Partial<AuditEvent>) => Promise<void>,
    denial: Denial,
    outcome: AuditEvent['outcome'] = 'denied',
  ): Promise<void> {
    this.parts.log.info({ denial: denial.toJSON() }, 'call refused');
    await finish(outcome, { denial: denial.toJSON() });
  }
}

/**
 * A 2026-07-28 call's inputResponses that come without a requestState: they answer no request
 * Bastion issued, so they are never forwarded as they are (an agent must not feed an upstream
 * answers to questions it was not asked). Undefined when there are none.
 */
function unaskedResponses(call: CallContext): Record<string, unknown> | undefined {
  const { inputResponses, requestState } = call.continuation ?? {};
  if (requestState !== undefined || !inputResponses || Object.keys(inputResponses).length === 0) return undefined;
  return inputResponses;
}

/**
 * When the upstream, called without them, asks in this very call for keys the agent already
 * answered unasked, those answers (and only those) are its answers; anything else, or a
 * question the agent did not answer, goes back to the agent as a sealed input_required.
 */
function answerFromUnasked(answer: UpstreamInputRequired, unasked: Record<string, unknown>): Record<string, unknown> | undefined {
  const keys = Object.keys(answer.inputRequests ?? {});
  if (keys.length === 0 || !keys.every((key) => Object.hasOwn(unasked, key))) return undefined;
  return Object.fromEntries(keys.map((key) => [key, unasked[key]]));
}

/** The client capability each server-to-client request needs. */
const CAPABILITY_FOR: Record<string, 'elicitation' | 'sampling' | 'roots'> = {
  'elicitation/create': 'elicitation',
  'sampling/createMessage': 'sampling',
  'roots/list': 'roots',
};

/** Aborts `controller` when `signal` aborts, until the returned unlink is called (a held exchange outlives its leg). */
function linkAbort(signal: AbortSignal | undefined, controller: AbortController): () => void {
  if (!signal) return () => undefined;
  if (signal.aborted) controller.abort(signal.reason);
  const onAbort = () => controller.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

/**
 * A retry's requestState that Bastion refused to open (forged, altered, another principal's or
 * call's, expired), or one that is no state Bastion issued for this call (an approval pickup that
 * fails its checks, or neither a continuation nor a pickup).
 */
const STATE_REFUSALS = new Set(['BASTION_STATE_MALFORMED', 'BASTION_STATE_TAMPERED', 'BASTION_STATE_OTHER_PRINCIPAL', 'BASTION_STATE_OTHER_CALL', 'BASTION_STATE_EXPIRED', 'BASTION_APPROVAL_STATE_INVALID']);

export function isStateRefusal(denial: Denial): boolean {
  return STATE_REFUSALS.has(denial.code);
}

/**
 * The spec wants a state that fails its integrity check rejected with a JSON-RPC error
 * (invalid params), not a result: the denial rides in the message and in `data`.
 */
export function stateRefusalError(denial: Denial): ProtocolError {
  return new ProtocolError(ProtocolErrorCode.InvalidParams, `Bastion refused this request at the ${denial.stage} stage (${denial.code}): ${denial.reason}`, denial.toJSON());
}

/** A tool's `execution.taskSupport` as the agent sees it (absent: forbidden, as the spec says). */
export function taskSupportOf(entry: ToolEntry): 'forbidden' | 'optional' | 'required' {
  return entry.descriptor.execution?.taskSupport ?? 'forbidden';
}

/** What a sealed continuation is bound to: the principal, the exposed tool and its arguments. */
function binding(principal: Principal, tool: string, args: Record<string, unknown>) {
  return { iss: principal.iss, sub: principal.sub, tool, arguments: args };
}
