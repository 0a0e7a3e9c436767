/**
 * Denials: the one way a pipeline stage says "no".
 *
 * Every refusal carries the stage that refused, a stable machine-readable
 * `code` (callers branch on codes, never on messages) and a reason a person
 * can act on. The front door turns a Denial into the MCP error, the audit
 * record and the metric label; nothing else decides how a refusal looks.
 *
 * @example
 *   throw new Denial('authorize', 'BASTION_POLICY_DENIED', 'no capability names demo__delete_file');
 */
export type Stage =
  /** The front door's checks before authentication: Host/Origin, body size and syntax, session. */
  | 'admit'
  | 'authenticate'
  | 'resolve'
  | 'authorize'
  | 'limit'
  | 'approve'
  | 'execute'
  | 'filter'
  | 'audit';

export type DenialCode =
  // admit
  | 'BASTION_ORIGIN_REFUSED'
  | 'BASTION_REQUEST_INVALID'
  | 'BASTION_REQUEST_TOO_LARGE'
  | 'BASTION_SESSION_INVALID'
  | 'BASTION_METRICS_UNAUTHORIZED'
  | 'BASTION_HEADER_MISMATCH'
  | 'BASTION_ENVELOPE_INVALID'
  | 'BASTION_PROTOCOL_UNSUPPORTED'
  // authenticate
  | 'BASTION_TOKEN_MISSING'
  | 'BASTION_TOKEN_TOO_LARGE'
  | 'BASTION_TOKEN_MALFORMED'
  | 'BASTION_TOKEN_ALG_REFUSED'
  | 'BASTION_TOKEN_TYPE_REFUSED'
  | 'BASTION_TOKEN_HEADER_REFUSED'
  | 'BASTION_TOKEN_KEY_UNKNOWN'
  | 'BASTION_TOKEN_SIGNATURE_INVALID'
  | 'BASTION_TOKEN_ISSUER_UNTRUSTED'
  | 'BASTION_TOKEN_AUDIENCE_INVALID'
  | 'BASTION_TOKEN_EXPIRED'
  | 'BASTION_TOKEN_NOT_YET_VALID'
  | 'BASTION_TOKEN_LIFETIME_TOO_LONG'
  | 'BASTION_TOKEN_CLAIM_INVALID'
  | 'BASTION_TOKEN_REPLAYED'
  | 'BASTION_TOKEN_REVOKED'
  | 'BASTION_DPOP_MISSING'
  | 'BASTION_DPOP_INVALID'
  | 'BASTION_DPOP_REPLAYED'
  | 'BASTION_DELEGATION_REFUSED'
  | 'BASTION_STATE_UNAVAILABLE'
  // resolve
  | 'BASTION_TOOL_UNKNOWN'
  | 'BASTION_CONNECTOR_UNAVAILABLE'
  | 'BASTION_PLUGIN_NAME_TAKEN'
  | 'BASTION_TOOL_BLOCKED'
  | 'BASTION_TOOL_QUARANTINED'
  | 'BASTION_RESOURCE_AMBIGUOUS'
  /** A task-augmented call to a tool whose execution.taskSupport is forbidden or absent (spec: -32601). */
  | 'BASTION_TASK_NOT_SUPPORTED'
  /** tasks/get, result or cancel for an id the caller does not own (unknown, expired, or another principal's). */
  | 'BASTION_TASK_UNKNOWN'
  // limit
  | 'BASTION_RATE_LIMITED'
  | 'BASTION_ARGUMENTS_TOO_LARGE'
  | 'BASTION_SESSIONS_EXCEEDED'
  /** A connector holds as many agent connections as its isolation bounds allow. */
  | 'BASTION_UPSTREAM_SESSIONS_FULL'
  /** A principal holds as many tasks as the task table allows (broker/tasks/task-table.ts). */
  | 'BASTION_TASKS_FULL'
  // authorize
  | 'BASTION_POLICY_DENIED'
  | 'BASTION_POLICY_ERROR'
  // authorize: a multi-round-trip retry's requestState / inputResponses (broker/server/request-state.ts)
  | 'BASTION_STATE_MALFORMED'
  | 'BASTION_STATE_TAMPERED'
  | 'BASTION_STATE_EXPIRED'
  | 'BASTION_STATE_OTHER_PRINCIPAL'
  | 'BASTION_STATE_OTHER_CALL'
  | 'BASTION_INPUT_RESPONSES_UNEXPECTED'
  | 'BASTION_INPUT_REQUIRED_UNSUPPORTED'
  /** Era translation: the held upstream request a retry answers is not in this process (another replica, expired, answered). */
  | 'BASTION_EXCHANGE_UNAVAILABLE'
  // authorize (reading) and filter (recording): the agent's flow state could not be read or written
  | 'BASTION_FLOW_UNAVAILABLE'
  | 'BASTION_GRANT_DENIED'
  | 'BASTION_GRANT_POLICY_ERROR'
  // approve
  | 'BASTION_APPROVAL_REQUIRED'
  | 'BASTION_APPROVAL_DENIED'
  | 'BASTION_APPROVAL_TIMEOUT'
  | 'BASTION_APPROVAL_WITHDRAWN'
  | 'BASTION_APPROVAL_INVALID'
  // a 2026-07-28 retry's approval pickup (requestState) is not Bastion's, another principal's, or for another call
  | 'BASTION_APPROVAL_STATE_INVALID'
  | 'BASTION_APPROVAL_UNAVAILABLE'
  // execute
  | 'BASTION_UPSTREAM_ERROR'
  | 'BASTION_UPSTREAM_TIMEOUT'
  // filter
  | 'BASTION_RESULT_TOO_LARGE'
  | 'BASTION_OBLIGATION_UNSUPPORTED'
  // audit
  | 'BASTION_AUDIT_UNAVAILABLE'
  // any stage from approve on: the agent cancelled the call (notifications/cancelled, or its transport closed)
  | 'BASTION_CANCELLED';

export class Denial extends Error {
  override readonly name = 'Denial';
  readonly stage: Stage;
  readonly code: DenialCode;
  readonly reason: string;
  /** For limits: when trying again can succeed. */
  readonly retryAfterMs: number | undefined;

  constructor(stage: Stage, code: DenialCode, reason: string, retryAfterMs?: number) {
    super(`${code}: ${reason}`);
    this.stage = stage;
    this.code = code;
    this.reason = reason;
    this.retryAfterMs = retryAfterMs;
  }

  /** The structured form sent to agents and written to the audit trail. */
  toJSON(): { stage: Stage; code: DenialCode; reason: string; retry_after_ms?: number } {
    return { stage: this.stage, code: this.code, reason: this.reason, ...(this.retryAfterMs !== undefined ? { retry_after_ms: this.retryAfterMs } : {}) };
  }
}

/** Wraps any thrown value as a Denial of `stage`: fail closed, keep the why. */
export function asDenial(stage: Stage, code: DenialCode, error: unknown): Denial {
  if (error instanceof Denial) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new Denial(stage, code, message);
}
