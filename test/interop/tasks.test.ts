/**
 * Tasks (MCP 2025-11-25) with server-everything, directly and through
 * Bastion, over stdio and Streamable HTTP: a task-augmented call, tasks/get,
 * tasks/list, tasks/result and tasks/cancel give the same answers both ways,
 * less the task ids and timestamps (each side's own). What differs on
 * purpose (README "Tasks"): Bastion's task ids are its own; a tool whose
 * `execution.taskSupport` is `required` can be called without a task
 * through Bastion (it runs the task and waits), where the server refuses it;
 * a task for a tool that takes none is refused with -32601, as the spec says.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/client';
import { z } from 'zod';
import { CreateTaskResultSchema, RELATED_TASK, TaskPayloadSchema, TaskResultSchema, TaskSchema } from '../../broker/tasks/schemas.ts';
import { eventually, everythingOver, expectEquivalent, openPair, type Pair, type Side } from './harness.ts';

const CONNECTOR = 'everything';
const RESEARCH = 'simulate-research-query';
const ListSchema = z.looseObject({ tasks: z.array(TaskSchema), nextCursor: z.string().optional() });

/** Each side's own: the task id (Bastion's or the server's) and the server's clock. */
function masked<T>(value: T, taskId: string): T {
  return JSON.parse(JSON.stringify(value), (key, v: unknown) => {
    if (v === taskId) return '<task>';
    if (key === 'createdAt' || key === 'lastUpdatedAt') return '<time>';
    return v;
  }) as T;
}

const create = (side: Side, name: string, args: Record<string, unknown>) =>
  side.client.request({ method: 'tools/call', params: { name: side.tool(name), arguments: args, task: { ttl: 120_000 } } }, CreateTaskResultSchema);
const get = (side: Side, taskId: string) => side.client.request({ method: 'tasks/get', params: { taskId } }, TaskResultSchema);

describe.each(['stdio', 'http'] as const)('tasks with server-everything over %s: direct and through Bastion', (transport) => {
  let pair: Pair;
  let server: Awaited<ReturnType<typeof everythingOver>> | undefined;
  /** The report a research task made directly, for the call without a task through Bastion. */
  let directReport: unknown;

  beforeAll(async () => {
    server = await everythingOver(transport);
    const { upstream } = server;
    pair = await openPair(CONNECTOR, upstream);
  });

  afterAll(async () => {
    await pair?.close();
    await server?.close();
  });

  it('capabilities: the same tasks capability (list, cancel, task-augmented tools/call)', () => {
    const direct = pair.direct.client.getServerCapabilities()!;
    expect(direct.tasks).toEqual({ list: {}, cancel: {}, requests: { tools: { call: {} } } });
    expect(pair.bastion.client.getServerCapabilities()!.tasks).toEqual(direct.tasks);
  });

  it('a task-augmented call, tasks/get, tasks/list and tasks/result: the same lifecycle', async () => {
    const lifecycle = async (side: Side) => {
      const statuses: z.infer<typeof TaskSchema>[] = [];
      side.client.setNotificationHandler('notifications/tasks/status', { params: TaskSchema }, (params) => void statuses.push(params));
      const created = await create(side, RESEARCH, { topic: 'interop' });
      const id = created.task.taskId;
      const got = await get(side, id);
      const listed = await side.client.request({ method: 'tasks/list', params: {} }, ListSchema);
      // tasks/result blocks until the task ends (about four seconds of simulated stages).
      const result = await side.client.request({ method: 'tasks/result', params: { taskId: id } }, TaskPayloadSchema, { timeout: 120_000 });
      const done = await get(side, id);
      // Status notifications: the last one says completed (earlier ones may race the CreateTaskResult; README).
      expect(await eventually(() => statuses.some((s) => s.status === 'completed'))).toBe(true);
      const completed = statuses.find((s) => s.status === 'completed');
      side.client.removeNotificationHandler('notifications/tasks/status');
      return {
        id,
        view: masked(
          { created, working: { status: got.status, keys: Object.keys(got).sort() }, listed: listed.tasks.filter((t) => t.taskId === id).length, result, done, completed, notified: [...new Set(statuses.map((s) => s.taskId))] },
          id,
        ),
      };
    };
    // Both at once: the stages take seconds, the same either way.
    const [direct, via] = await Promise.all([lifecycle(pair.direct), lifecycle(pair.bastion)]);
    expect(direct.view.created.task.status).toBe('working');
    expect(direct.view.listed).toBe(1);
    expect(direct.view.done.status).toBe('completed');
    expect(direct.view.notified).toEqual(['<task>']);
    expect((direct.view.result as { _meta?: Record<string, unknown> })._meta?.[RELATED_TASK]).toEqual({ taskId: '<task>' });
    expectEquivalent(direct.view, via.view, CONNECTOR);
    // Bastion's id is its own, never the server's.
    expect(via.id).toMatch(/^bastion-task-[A-Za-z0-9_-]{22}$/);
    directReport = (direct.view.result as { content: unknown }).content;
  });

  it('a task that needs input (input_required): its elicitation reaches the agent through tasks/result, naming the task by the id the agent knows', async () => {
    const ambiguous = async (side: Side) => {
      const asked = side.observed.elicitations.length;
      const created = await create(side, RESEARCH, { topic: 'python', ambiguous: true });
      const id = created.task.taskId;
      const result = await side.client.request({ method: 'tasks/result', params: { taskId: id } }, TaskPayloadSchema, { timeout: 120_000 });
      return masked({ elicitations: side.observed.elicitations.slice(asked), result }, id);
    };
    const [direct, via] = await Promise.all([ambiguous(pair.direct), ambiguous(pair.bastion)]);
    expect(direct.elicitations).toHaveLength(1);
    expect((direct.elicitations[0] as { _meta?: Record<string, unknown> })._meta?.[RELATED_TASK]).toEqual({ taskId: '<task>' });
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('tasks/cancel: the task ends cancelled, the same both ways', async () => {
    const cancel = async (side: Side) => {
      const created = await create(side, RESEARCH, { topic: 'to be cancelled' });
      const id = created.task.taskId;
      const cancelled = await side.client.request({ method: 'tasks/cancel', params: { taskId: id } }, TaskResultSchema);
      const after = await get(side, id);
      return masked({ cancelled, after }, id);
    };
    const [direct, via] = await Promise.all([cancel(pair.direct), cancel(pair.bastion)]);
    expect(direct.cancelled.status).toBe('cancelled');
    expect(direct.after.status).toBe('cancelled');
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('an unknown task id: the same refusal both ways', async () => {
    const [direct, via] = await pair.both(async (side) => {
      const refused = await get(side, 'no-such-task').catch((error: unknown) => error);
      expect(refused).toBeInstanceOf(ProtocolError);
      // The server's SDK (1.x) writes its error code into the message text too.
      return { code: (refused as ProtocolError).code, message: (refused as ProtocolError).message.replace(/^MCP error -?\d+: /, '') };
    });
    expect(direct.code).toBe(ProtocolErrorCode.InvalidParams);
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('a tool that requires a task, called without one: the server refuses it, Bastion runs the task and answers its result', async () => {
    // The server's SDK turns its -32601 into a tool error.
    const direct = await pair.direct.client.callTool({ name: RESEARCH, arguments: { topic: 'interop' } });
    expect(direct.isError).toBe(true);
    expect(JSON.stringify(direct.content)).toContain('requires task augmentation');
    const via = await pair.bastion.client.callTool({ name: pair.bastion.tool(RESEARCH), arguments: { topic: 'interop' } }, { timeout: 120_000 });
    expect(via.isError ?? false).toBe(false);
    expect(directReport).toBeDefined();
    expect(via.content).toEqual(directReport);
    // The agent made no task: no task reference reaches it.
    expect(via._meta?.[RELATED_TASK]).toBeUndefined();
  });

  it('a task for a tool that takes none (taskSupport forbidden): refused by Bastion with -32601, as the spec says', async () => {
    const refused = await create(pair.bastion, 'echo', { message: 'no task for me' }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(ProtocolError);
    expect((refused as ProtocolError).code).toBe(ProtocolErrorCode.MethodNotFound);
    expect((refused as ProtocolError).data).toMatchObject({ stage: 'resolve', code: 'BASTION_TASK_NOT_SUPPORTED' });
  });
});
