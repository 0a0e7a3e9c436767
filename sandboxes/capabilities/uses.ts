/**
 * What a plugin did with host capabilities during one call. Every use,
 * granted, refused or failed, is recorded by the host (never reported by the
 * plugin) and returned with the call's result or error, so the broker can put
 * it in the audit record.
 *
 * @example
 *   { cap: 'fetch', method: 'GET', url: 'https://api.example.com/x', outcome: 'ok', status: 200, bytes: 512 }
 *   { cap: 'fetch', method: 'GET', url: 'http://169.254.169.254/', outcome: 'denied', reason: 'origin … is not allow-listed' }
 */
/** `unfinished`: still running when the call ended (it was then aborted). */
export type CapabilityOutcome = 'ok' | 'denied' | 'error' | 'unfinished';

export type CapabilityUse =
  | {
      cap: 'fetch';
      method: string;
      url: string;
      outcome: CapabilityOutcome;
      status?: number;
      /** Where the last hop went, when redirects were followed. */
      finalUrl?: string;
      redirects?: number;
      bytes?: number;
      reason?: string;
    }
  | { cap: 'kv'; op: 'get' | 'set' | 'delete'; key: string; outcome: CapabilityOutcome; reason?: string }
  | { cap: 'log'; level: string; outcome: CapabilityOutcome; reason?: string }
  /** A request the host could not even parse (it is refused). */
  | { cap: 'invalid'; outcome: 'error'; reason: string };

/** A copy of the uses as they stand now (later completions do not change a record already handed out). */
export function snapshotUses(uses: readonly CapabilityUse[]): CapabilityUse[] {
  return uses.map((use) => ({ ...use }));
}

/** A capability use the host refused: not granted, not allow-listed, over a cap. */
export class CapabilityDenied extends Error {
  override readonly name = 'CapabilityDenied';
}

/** A granted capability use that failed (network error, store error, deadline). */
export class CapabilityFailed extends Error {
  override readonly name = 'CapabilityFailed';
}

/** Rejects when `promise` does not settle within `ms` or `signal` aborts. */
export function withDeadline<T>(promise: Promise<T>, ms: number, what: string, signal?: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new CapabilityFailed(`${what} did not finish within ${ms} ms`)), Math.max(0, ms));
    const onAbort = () => reject(new CapabilityFailed(`${what} was cancelled`));
    signal?.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => resolve(value),
      (error: unknown) => reject(error instanceof Error ? error : new CapabilityFailed(String(error))),
    ).finally(() => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    });
  });
}
