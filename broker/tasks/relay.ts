/**
 * `tasks/get`, `tasks/result`, `tasks/cancel` and `tasks/list` for agents
 * (MCP 2025-11-25): each names a task by Bastion's opaque id, which only the
 * principal that created it can use. Any other id, another principal's
 * included, gets exactly the answer an unknown task gets (the words the
 * reference SDK uses), and is audited with the code BASTION_TASK_UNKNOWN.
 *
 * A request goes to the upstream connection that holds the task, with the
 * upstream's id; what comes back carries Bastion's id instead. `tasks/result`
 * is the call's result: the token and policy are checked again (a principal
 * that lost the tool gets a denial, not the result), and it passes the same
 * result filters and flow record as a direct call, decided when the call was
 * authorized. `tasks/list` lists only the caller's tasks, each as its
 * upstream reports it now.
 *
 * @example
 *   const task = await relay.request(principal, call, 'tasks/get', 'bastion-task-…');
 */
import { ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/server';
import type { CallToolResult, Result } from '@modelcontextprotocol/server';
import type { Principal } from '../auth/verify.ts';
import type { AuditEvent } from '../audit/chain.ts';
import type { AuditLog } from '../audit/log.ts';
import { Denial } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { ResultFilter } from '../filters/result.ts';
import type { FlowControl } from '../flows/control.ts';
import type { CallContext } from '../pipeline.ts';
import { TaskConnectionGone, type Connector } from '../../connectors/upstream.ts';
import { RELATED_TASK, TaskPayloadSchema, TaskResultSchema } from './schemas.ts';
import type { TaskRecord, TaskTable } from './task-table.ts';

export type TaskMethod = 'tasks/get' | 'tasks/result' | 'tasks/cancel';

export interface TaskRelayParts {
  tasks: TaskTable;
  connector: (name: string) => Connector | undefined;
  audit: AuditLog;
  log: Logger;
  filter: ResultFilter;
  flows?: FlowControl;
  /** Whether policy still lets this principal make this call (tasks/result re-checks it). */
  stillAllowed: (principal: Principal, call: CallContext, tool: string, args: Record<string, unknown>) => { allow: boolean; reasons: string[] };
  /** Turns a Denial into the tool result the agent sees. */
  denialResult: (denial: Denial) => CallToolResult;
  principalForAudit: (principal: Principal) => NonNullable<AuditEvent['principal']>;
}

/** What an unknown task gets, in the words of the reference SDK, so Bastion's answer matches a direct one. */
function unknownTask(method: TaskMethod, id: string): ProtocolError {
  return new ProtocolError(ProtocolErrorCode.InvalidParams, method === 'tasks/get' ? 'Failed to retrieve task: Task not found' : `Task not found: ${id}`);
}

/** Replaces the upstream's task id with Bastion's wherever an upstream answer carries it. */
function withOurId<T>(value: T, record: TaskRecord): T {
  return JSON.parse(JSON.stringify(value), (_key, v: unknown) => (v === record.upstreamId ? record.id : v)) as T;
}

export class TaskRelay {
  private readonly parts: TaskRelayParts;

  constructor(parts: TaskRelayParts) {
    this.parts = parts;
  }

  /** tasks/get, tasks/result or tasks/cancel for one of the caller's tasks. */
  async request(principal: Principal, call: CallContext, method: TaskMethod, id: string): Promise<Result> {
    const event: AuditEvent = {
      event: method,
      session: call.session,
      transport: call.transport,
      ...(call.protocol !== undefined ? { protocol: call.protocol } : {}),
      principal: this.parts.principalForAudit(principal),
      outcome: 'ok',
      detail: { task: id },
    };
    const record = this.parts.tasks.find(principal, id);
    if (!record) {
      // The agent learns nothing about whose it is; the audit trail does.
      await this.refuse(event, new Denial('resolve', 'BASTION_TASK_UNKNOWN', `no task ${id} of this principal`), { foreign: this.parts.tasks.heldByAnother(principal, id) });
      throw unknownTask(method, id);
    }
    event.tool = record.tool;
    event.args_hash = record.argsHash;
    event.detail = { ...event.detail, connector: record.connector, upstream_id: record.upstreamId };
    const connector = this.parts.connector(record.connector);
    if (method === 'tasks/result') {
      const decision = this.parts.stillAllowed(principal, call, record.tool, record.args);
      if (!decision.allow) {
        const denial = new Denial('authorize', 'BASTION_POLICY_DENIED', `policy no longer allows this task's call: ${decision.reasons.join('; ') || 'denied'}`);
        await this.refuse(event, denial);
        return this.parts.denialResult(denial);
      }
    }
    let answer: Result;
    try {
      if (!connector) throw new TaskConnectionGone(`connector ${record.connector} is gone`);
      answer = await connector.onTaskConnection(record.connection, call.origin, (client) =>
        client.request({ method, params: { taskId: record.upstreamId } }, method === 'tasks/result' ? TaskPayloadSchema : TaskResultSchema, {
          // tasks/result waits for the task to end: as long as it may live, never less than any request.
          timeout: method === 'tasks/result' ? Math.max(connector.config.timeout, record.expiresAt - Date.now()) : connector.config.timeout,
          ...(call.signal ? { signal: call.signal } : {}),
        }),
      );
    } catch (error) {
      if (error instanceof TaskConnectionGone) {
        // The upstream session that held it has ended, and the task with it.
        this.parts.tasks.remove(record.id);
        await this.refuse(event, new Denial('resolve', 'BASTION_TASK_UNKNOWN', error.message));
        throw unknownTask(method, id);
      }
      const reason = (error as Error).message.replaceAll(record.upstreamId, record.id);
      await this.record(event, 'error', { denial: { stage: 'execute', code: call.signal?.aborted ? 'BASTION_CANCELLED' : 'BASTION_UPSTREAM_ERROR', reason } });
      if (error instanceof ProtocolError) throw new ProtocolError(error.code, reason);
      throw new ProtocolError(ProtocolErrorCode.InternalError, `upstream ${record.connector} failed: ${reason}`);
    }
    if (method !== 'tasks/result') {
      const task = withOurId(answer, record) as Result & { status?: string };
      await this.record(event, 'ok', { detail: { ...event.detail, status: task.status } });
      return task;
    }
    return this.filtered(principal, event, record, withOurId(answer, record) as CallToolResult);
  }

  /** tasks/list: the caller's tasks only, each as its upstream reports it now; tasks whose upstream lost them are dropped. */
  async list(principal: Principal, call: CallContext): Promise<{ tasks: Result[] }> {
    const records = this.parts.tasks.list(principal);
    const tasks: Result[] = [];
    for (const record of records) {
      const connector = this.parts.connector(record.connector);
      try {
        if (!connector) throw new TaskConnectionGone(`connector ${record.connector} is gone`);
        const task = await connector.onTaskConnection(record.connection, call.origin, (client) =>
          client.request({ method: 'tasks/get', params: { taskId: record.upstreamId } }, TaskResultSchema, { timeout: connector.config.timeout }),
        );
        const { _meta: _dropped, ...bare } = withOurId(task, record);
        tasks.push(bare);
      } catch (error) {
        if (error instanceof TaskConnectionGone || error instanceof ProtocolError) this.parts.tasks.remove(record.id);
        this.parts.log.debug({ task: record.id, err: (error as Error).message }, 'task left out of tasks/list');
      }
    }
    await this.parts.audit.append({
      event: 'tasks/list',
      session: call.session,
      transport: call.transport,
      ...(call.protocol !== undefined ? { protocol: call.protocol } : {}),
      principal: this.parts.principalForAudit(principal),
      outcome: 'ok',
      detail: { tasks: tasks.length },
    });
    return { tasks };
  }

  /** The task's final result through the result filters and the flow record decided with the call, as a direct call's. */
  private async filtered(principal: Principal, event: AuditEvent, record: TaskRecord, result: CallToolResult): Promise<CallToolResult> {
    let filtered: ReturnType<ResultFilter['filter']>;
    try {
      filtered = this.parts.filter.filter(result, record.filtering.obligations);
    } catch (error) {
      const denial = new Denial('filter', 'BASTION_RESULT_TOO_LARGE', (error as Error).message);
      await this.refuse(event, denial, {}, 'error');
      return this.parts.denialResult(denial);
    }
    const { report } = filtered;
    let flow: Record<string, unknown> | undefined;
    if (record.filtering.flow && this.parts.flows) {
      try {
        const recorded = await this.parts.flows.record(record.filtering.flow.prepared, record.filtering.flow.decided, filtered.result, report.flags);
        if (recorded.source) flow = { ...recorded };
      } catch (error) {
        const denial = new Denial('filter', 'BASTION_FLOW_UNAVAILABLE', `the result was withheld: the agent's flow state cannot be written (${(error as Error).message})`);
        await this.refuse(event, denial, {}, 'error');
        return this.parts.denialResult(denial);
      }
    }
    await this.record(event, result.isError ? 'error' : 'ok', {
      detail: {
        ...event.detail,
        result_bytes: report.bytes,
        ...(flow ? { flow } : {}),
        ...(Object.keys(report.redactions).length ? { redactions: report.redactions } : {}),
        ...(report.flags.length ? { flags: report.flags.map(({ kind, where }) => ({ kind, where })) } : {}),
      },
    });
    // The spec ties the result to its task: under Bastion's id (withOurId already replaced the upstream's).
    return { ...filtered.result, _meta: { ...filtered.result._meta, [RELATED_TASK]: { taskId: record.id } } };
  }

  private async refuse(event: AuditEvent, denial: Denial, detail: Record<string, unknown> = {}, outcome: AuditEvent['outcome'] = 'denied'): Promise<void> {
    this.parts.log.info({ event: event.event, denial: denial.toJSON() }, 'task request refused');
    await this.record(event, outcome, { denial: denial.toJSON(), detail: { ...event.detail, ...detail } });
  }

  private async record(event: AuditEvent, outcome: AuditEvent['outcome'], extra: Partial<AuditEvent>): Promise<void> {
    await this.parts.audit.append({ ...event, ...extra, outcome });
  }
}
