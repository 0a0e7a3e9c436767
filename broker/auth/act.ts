/**
 * The delegation chain of a token: RFC 8693 §4.1 `act`, one object per
 * actor, the current actor outermost and prior actors nested inside
 * (`{ sub: "agent:b", act: { sub: "agent:a" } }`). Stage 1 flattens it for
 * policy and separation of duties; the token-exchange grant reads it from a
 * presented token and nests a new actor on top.
 *
 * A malformed chain (not an object, a link without a string `sub`, deeper
 * than MAX_ACT_DEPTH) is refused whole, never cut short or skipped: a chain
 * quietly shortened would hide actors from separation of duties.
 *
 * @example
 *   const chain = parseActChain(claims.act);   // [{ sub: 'agent:b' }, { sub: 'agent:a' }]; throws ActChainError
 *   const act = nestActChain(chain);           // back to the nested claim
 */

/** Deepest chain accepted (a link per actor). */
export const MAX_ACT_DEPTH = 16;

export interface ActClaim {
  sub: string;
  act?: ActClaim;
}

export class ActChainError extends Error {
  override readonly name = 'ActChainError';
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** The chain, current actor first; [] when there is no `act`. Throws ActChainError when it is malformed. */
export function parseActChain(act: unknown): { sub: string }[] {
  const chain: { sub: string }[] = [];
  let link = act;
  while (link !== undefined) {
    if (chain.length === MAX_ACT_DEPTH) throw new ActChainError(`deeper than ${MAX_ACT_DEPTH} actors`);
    if (!isObject(link)) throw new ActChainError(`actor ${chain.length + 1} is not an object`);
    const { sub } = link;
    if (typeof sub !== 'string' || sub.length === 0 || sub.length > 256) throw new ActChainError(`actor ${chain.length + 1} has no sub of 1 to 256 characters`);
    chain.push({ sub });
    link = link.act;
  }
  return chain;
}

/** The nested `act` claim for a chain (current actor first); undefined for an empty chain. */
export function nestActChain(chain: readonly { sub: string }[]): ActClaim | undefined {
  let act: ActClaim | undefined;
  for (const link of [...chain].reverse()) act = act ? { sub: link.sub, act } : { sub: link.sub };
  return act;
}
