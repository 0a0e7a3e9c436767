/**
 * Sandbox errors: one class, a stable machine-readable `code` per way a
 * plugin call or a plugin load can fail. Callers branch on codes, never on
 * messages. A failed call also carries the host capabilities it used before
 * it failed, so the audit record shows what happened either way.
 *
 * @example
 *   try { await pool.run(...) } catch (error) {
 *     if (error instanceof SandboxError && error.code === 'SANDBOX_TIMEOUT') ...
 *   }
 */
import type { CapabilityUse } from './capabilities/uses.ts';

export type SandboxErrorCode =
  // a call
  | 'SANDBOX_TIMEOUT' // CPU budget or wall-clock deadline exceeded
  | 'SANDBOX_MEMORY' // the isolate hit its memory limit
  | 'SANDBOX_CRASHED' // the sandbox process died under the call
  | 'SANDBOX_RESULT_TOO_LARGE'
  | 'SANDBOX_INVALID_ARGUMENTS' // arguments do not match the tool's inputSchema
  | 'SANDBOX_INVALID_RESULT' // not JSON, or does not match the tool's outputSchema
  | 'SANDBOX_CAPABILITY_DENIED' // a host capability was refused and the call failed
  | 'SANDBOX_PLUGIN_ERROR' // the plugin threw (or returned a promise that can never settle)
  | 'SANDBOX_CANCELLED' // the caller aborted
  | 'SANDBOX_UNKNOWN_TOOL'
  | 'SANDBOX_UNAVAILABLE' // the plugin is not loaded, or the pool is stopped
  // loading a plugin
  | 'SANDBOX_PIN_MISMATCH'
  | 'SANDBOX_MANIFEST_INVALID'
  | 'SANDBOX_LOAD_FAILED';

export const SANDBOX_ERROR_CODES: ReadonlySet<string> = new Set<SandboxErrorCode>([
  'SANDBOX_TIMEOUT',
  'SANDBOX_MEMORY',
  'SANDBOX_CRASHED',
  'SANDBOX_RESULT_TOO_LARGE',
  'SANDBOX_INVALID_ARGUMENTS',
  'SANDBOX_INVALID_RESULT',
  'SANDBOX_CAPABILITY_DENIED',
  'SANDBOX_PLUGIN_ERROR',
  'SANDBOX_CANCELLED',
  'SANDBOX_UNKNOWN_TOOL',
  'SANDBOX_UNAVAILABLE',
  'SANDBOX_PIN_MISMATCH',
  'SANDBOX_MANIFEST_INVALID',
  'SANDBOX_LOAD_FAILED',
]);

export function isSandboxErrorCode(value: unknown): value is SandboxErrorCode {
  return typeof value === 'string' && SANDBOX_ERROR_CODES.has(value);
}

export class SandboxError extends Error {
  override readonly name = 'SandboxError';
  readonly code: SandboxErrorCode;
  /** Host capabilities the call used before it failed (empty for load errors). */
  capabilityUses: CapabilityUse[];

  constructor(code: SandboxErrorCode, message: string, capabilityUses: CapabilityUse[] = []) {
    super(message);
    this.code = code;
    this.capabilityUses = capabilityUses;
  }

  toJSON(): { code: SandboxErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}
