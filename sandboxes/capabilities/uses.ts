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
  /** A request the host could not even parse (it is refused; `denied` when it was also over the per-call cap). */
  | { cap: 'invalid'; outcome: 'error' | 'denied'; reason: string };

/** A copy of the uses as they stand now (later completions do not change a record already handed out). */
export function snapshotUses(uses: readonly CapabilityUse[]): CapabilityUse[] {
  return uses.map((use) => ({ ...use }));
}

/** How many uses an audit record lists one by one; the rest are only counted. */
export const AUDITED_USES = 16;

/**
 * What an audit record keeps of a call's capability uses: the first
 * AUDITED_USES in full, and counts per capability and outcome of all of
 * them, so a plugin cannot make one call's record arbitrarily large.
 *
 * @example
 *   summarizeUses(uses);
 *   // { capability_uses: [...first 16], capability_counts: { log: { denied: 65 } }, capability_uses_omitted: 49 }
 */
export function summarizeUses(uses: readonly CapabilityUse[]): {
  capability_uses: CapabilityUse[];
  capability_counts: Record<string, Partial<Record<CapabilityOutcome, number>>>;
  capability_uses_omitted?: number;
} {
  const counts: Record<string, Partial<Record<CapabilityOutcome, number>>> = {};
  for (const use of uses) {
    const byOutcome = (counts[use.cap] ??= {});
    byOutcome[use.outcome] = (byOutcome[use.outcome] ?? 0) + 1;
  }
  const omitted = uses.length - AUDITED_USES;
  return { capability_uses: snapshotUses(uses.slice(0, AUDITED_USES)), capability_counts: counts, ...(omitted > 0 ? { capability_uses_omitted: omitted } : {}) };
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
