/**
 * Revocation: a deny-list behind the state interface. Revoking a `jti`
 * stops that token; revoking a `sub` stops every token of that subject and
 * every token delegated from it (its `act` chain names it). Effective for
 * the next request; nothing is cached past the store.
 *
 * @example
 *   await revoke(state, { sub: 'agent:compromised' }, config.auth.max_ttl);
 */
import type { StateStore } from '../state/store.ts';
import type { Principal } from './verify.ts';

export const REVOCATIONS = 'revoked';

export type Revocation = { jti: string; iss: string } | { sub: string };

const keyOf = (r: Revocation) => ('jti' in r ? `jti:${r.iss}|${r.jti}` : `sub:${r.sub}`);

/** Records a revocation. A jti entry outlives any token it could match (no token lives past max_ttl). */
export async function revoke(state: StateStore, revocation: Revocation, maxTtlMs: number): Promise<void> {
  const record = JSON.stringify({ ...revocation, at: new Date().toISOString() });
  await state.set(REVOCATIONS, keyOf(revocation), record, 'jti' in revocation ? maxTtlMs + 60_000 : undefined);
}

/** Whether `sub` itself is revoked (the authorization server asks before signing a user in or refreshing). */
export async function subjectRevoked(state: StateStore, sub: string): Promise<boolean> {
  return (await state.get(REVOCATIONS, keyOf({ sub }))) !== undefined;
}

/** The revocation that applies to this principal, if any. */
export async function revocationOf(state: StateStore, principal: Principal): Promise<string | undefined> {
  const candidates: Revocation[] = [
    { jti: principal.jti, iss: principal.iss },
    { sub: principal.sub },
    ...principal.act.map((link) => ({ sub: link.sub })),
  ];
  for (const candidate of candidates) {
    if ((await state.get(REVOCATIONS, keyOf(candidate))) !== undefined) {
      return 'jti' in candidate ? `token ${candidate.jti} is revoked` : `subject ${candidate.sub} is revoked`;
    }
  }
  return undefined;
}
