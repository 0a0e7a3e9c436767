/**
 * Messages between the broker (SandboxPool) and a sandbox process, declared
 * once. The broker validates everything a sandbox process sends with these
 * schemas: a process a plugin took over is an adversary, and a message that
 * does not fit gets the process killed.
 *
 * Plugin arguments, results and capability payloads travel as JSON text, so
 * nothing but plain data ever crosses.
 */
import { z } from 'zod';
import type { CapabilityName, PluginLimits, PluginTool } from './manifest.ts';

/** What a sandbox process needs to run one plugin. */
export interface LoadMessage {
  t: 'load';
  plugin: string;
  name: string;
  main: string;
  code: string;
  tools: { name: string; inputSchema: Record<string, unknown>; outputSchema?: Record<string, unknown> | undefined }[];
  limits: PluginLimits;
  caps: CapabilityName[];
  /** Capability requests one call may send; the process forwards one more (which the broker refuses and ends the call on), then drops them. */
  maxCapabilityCalls: number;
  isolates: { max: number; warm: number; maxCalls: number };
  clockMs: number;
}

/** What a sandbox process needs of each manifest tool: its name and schemas. */
export function toolSchemas(tools: PluginTool[]): LoadMessage['tools'] {
  return tools.map((t) => ({ name: t.name, inputSchema: t.inputSchema, outputSchema: t.outputSchema }));
}

/** Why the broker ends a call early: its deadline, its caller, or too many capability uses. */
export type CancelCode = 'SANDBOX_TIMEOUT' | 'SANDBOX_CANCELLED' | 'SANDBOX_CAPABILITY_DENIED';

export type ToChild =
  | LoadMessage
  | { t: 'unload'; plugin: string }
  | { t: 'call'; call: number; plugin: string; tool: string; args: string }
  | { t: 'capResult'; call: number; req: number; ok: boolean; payload: string }
  | { t: 'cancel'; call: number; code: CancelCode }
  | { t: 'health'; id: number };

const id = z.int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const text = (max: number) => z.string().max(max);

export const FromChildSchema = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('ready'), pid: id }),
  z.strictObject({ t: z.literal('loaded'), plugin: text(200), ok: z.boolean(), error: text(8000).optional() }),
  z.strictObject({ t: z.literal('cap'), call: id, req: id, payload: z.string() }),
  z.strictObject({ t: z.literal('result'), call: id, json: z.string() }),
  z.strictObject({ t: z.literal('failed'), call: id, code: text(64), message: text(8000) }),
  z.strictObject({ t: z.literal('fatal'), call: id.optional(), message: text(8000) }),
  z.strictObject({
    t: z.literal('health'),
    id,
    pid: id,
    isolates: id,
    prototypesIntact: z.boolean(),
    heapUsedBytes: id,
  }),
]);
export type FromChild = z.infer<typeof FromChildSchema>;
