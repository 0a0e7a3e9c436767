/**
 * Attenuated delegation: an agent holding a token asks Bastion for a token
 * for a sub-agent. The new token's capabilities must be covered by the
 * parent's, it expires no later than the parent, and its `act` claim
 * records the chain (RFC 8693), so policy sees who delegated to whom.
 *
 * @example
 *   const { token } = await delegate(parent, { sub: 'agent:child', cap: [{ tool: 'fs__read_*' }], ttl: '2m' }, signer);
 */
import { z } from 'zod';
import { Denial } from '../errors.ts';
import { CapabilitySchema } from '../policy/schema.ts';
import { parseDuration } from '../config.ts';
import { nestActChain, type ActClaim } from './act.ts';
import { attenuationProblem } from './attenuate.ts';
import { mintToken } from './mint.ts';
import type { JWK } from 'jose';
import type { Principal } from './verify.ts';

export const DelegationRequestSchema = z.strictObject({
  sub: z.string().min(1).max(256),
  cap: z.array(CapabilitySchema).min(1).max(64),
  ttl: z.union([z.number().positive(), z.string()]).default('5m'),
  /** Bind the child token to the sub-agent's key. */
  cnf: z.strictObject({ jkt: z.string().regex(/^[A-Za-z0-9_-]{43}$/) }).optional(),
});
export type DelegationRequest = z.input<typeof DelegationRequestSchema>;

export interface DelegationSigner {
  key: JWK;
  issuer: string;
  audience: string;
  tokenType: string;
  maxTtlMs: number;
  now?: () => number;
}

const refuse = (reason: string) => new Denial('authorize', 'BASTION_DELEGATION_REFUSED', reason);

/** Nests the parent's chain under the parent: `{ sub: parent, act: { sub: grandparent } }`. */
function chainOf(parent: Principal): ActClaim {
  return nestActChain([{ sub: parent.sub }, ...parent.act])!;
}

export async function delegate(parent: Principal, body: unknown, signer: DelegationSigner): Promise<{ token: string; exp: number }> {
  if (parent.anonymous) throw refuse('anonymous principals cannot delegate');
  const parsed = DelegationRequestSchema.safeParse(body);
  if (!parsed.success) {
    throw refuse(parsed.error.issues.map((i) => `${i.path.join('.') || 'request'}: ${i.message}`).join('; '));
  }
  const request = parsed.data;
  const problem = attenuationProblem(parent.cap, request.cap);
  if (problem) throw refuse(problem);
  if (parent.act.length >= 8) throw refuse('delegation chain is too long');
  let ttlMs: number;
  try {
    ttlMs = parseDuration(request.ttl);
  } catch (error) {
    throw refuse(`ttl: ${(error as Error).message}`);
  }
  if (ttlMs > signer.maxTtlMs) throw refuse(`ttl exceeds the ${signer.maxTtlMs / 1000}s cap`);
  const now = (signer.now ?? Date.now)();
  const exp = Math.min(parent.exp, Math.floor((now + ttlMs) / 1000));
  if (exp <= Math.floor(now / 1000)) throw refuse('the parent token expires too soon to delegate');
  const token = await mintToken({
    key: signer.key,
    issuer: signer.issuer,
    audience: signer.audience,
    sub: request.sub,
    cap: request.cap,
    ttlMs,
    exp,
    now,
    tokenType: signer.tokenType,
    act: chainOf(parent),
    ...(request.cnf ? { jkt: request.cnf.jkt } : {}),
  });
  return { token, exp };
}
