/**
 * The 2025-11-25 task shapes Bastion reads from upstreams. The v2 SDK exports
 * the types but not these schemas, and its `tools/call` result schema has no
 * room for a CreateTaskResult, so task requests go through `client.request`
 * with these (as the SDK documents for results a method key cannot express).
 *
 * @example
 *   const created = await client.request({ method: 'tools/call', params: { name, arguments: args, task: {} } }, CreateTaskResultSchema);
 */
import { z } from 'zod';

export const TASK_STATUSES = ['working', 'input_required', 'completed', 'failed', 'cancelled'] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];

export const TaskSchema = z.looseObject({
  taskId: z.string(),
  status: z.enum(TASK_STATUSES),
  ttl: z.number().nullable().optional(),
  createdAt: z.string().optional(),
  lastUpdatedAt: z.string().optional(),
  pollInterval: z.number().optional(),
  statusMessage: z.string().optional(),
});
export type UpstreamTask = z.infer<typeof TaskSchema>;

export const CreateTaskResultSchema = z.looseObject({ task: TaskSchema, _meta: z.record(z.string(), z.unknown()).optional() });
/** tasks/get and tasks/cancel answer the task itself. */
export const TaskResultSchema = TaskSchema.extend({ _meta: z.record(z.string(), z.unknown()).optional() });
/** tasks/result answers the call's own result (for tools/call, a CallToolResult), checked where it is used. */
export const TaskPayloadSchema = z.looseObject({});

export function isTerminal(status: TaskStatus): boolean {
  return status === 'completed' || status === 'failed' || status === 'cancelled';
}

/** The `_meta` key the spec uses to tie a result or message to its task. */
export const RELATED_TASK = 'io.modelcontextprotocol/related-task';
