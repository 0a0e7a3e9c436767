/**
 * The per-process registry of upstream requests held for 2026-07-28 agents
 * (era translation): bounded per principal, taken back once by its owner
 * only, and on expiry the upstream's waiting request is answered with an
 * error and the exchange forgotten.
 */
import { describe, expect, it } from 'vitest';
import { HeldExchange, HeldExchanges } from '../../broker/server/held-exchanges.ts';

const alice = { iss: 'https://issuer', sub: 'agent:alice' };
const bob = { iss: 'https://issuer', sub: 'agent:bob' };

/** An exchange whose upstream has asked once; `pending` is the upstream's wait for the answer. */
async function asking() {
  const exchange = new HeldExchange<string>();
  let pending!: Promise<unknown>;
  const upstream = new Promise<string>(() => undefined);
  const outcome = exchange.next(upstream);
  pending = exchange.ask({ method: 'elicitation/create', params: { message: 'ok?' } });
  expect(await outcome).toMatchObject({ ask: { key: 'elicitation_create_1', request: { method: 'elicitation/create' } } });
  return { exchange, pending };
}

describe('HeldExchanges', () => {
  it('holds at most maxPerPrincipal exchanges per principal; another principal is not affected; close refuses every held request', async () => {
    const exchanges = new HeldExchanges({ maxPerPrincipal: 2, ttlMs: 60_000 });
    const held = [await asking(), await asking(), await asking(), await asking()];
    expect(held.map(({ exchange }, i) => exchanges.hold(exchange, i === 3 ? bob : alice))).toEqual([true, true, false, true]);
    expect(exchanges.size).toBe(3);
    exchanges.close();
    expect(exchanges.size).toBe(0);
    for (const i of [0, 1, 3]) await expect(held[i]!.pending).rejects.toThrow(/shutting down/);
    held[2]!.exchange.refuse('not held');
    await expect(held[2]!.pending).rejects.toThrow(/not held/);
  });

  it('only the owner takes an exchange back, once; its answer reaches the waiting upstream request', async () => {
    const exchanges = new HeldExchanges({ maxPerPrincipal: 2, ttlMs: 60_000 });
    const { exchange, pending } = await asking();
    exchanges.hold(exchange, alice);
    expect(exchanges.take(exchange.id, bob)).toBeUndefined();
    const taken = exchanges.take(exchange.id, alice)!;
    expect(taken).toBe(exchange);
    expect(exchanges.take(exchange.id, alice)).toBeUndefined();
    expect(taken.answer('other_key', {})).toBe(false);
    expect(taken.answer('elicitation_create_1', { action: 'accept' })).toBe(true);
    await expect(pending).resolves.toEqual({ action: 'accept' });
  });

  it('an exchange nobody comes back for expires: the upstream gets an error, the call is cancelled, the slot is freed', async () => {
    const exchanges = new HeldExchanges({ maxPerPrincipal: 1, ttlMs: 20 });
    const { exchange, pending } = await asking();
    expect(exchanges.hold(exchange, alice)).toBe(true);
    await expect(pending).rejects.toThrow(/did not answer in time/);
    expect(exchange.controller.signal.aborted).toBe(true);
    expect(exchanges.take(exchange.id, alice)).toBeUndefined();
    const next = await asking();
    expect(exchanges.hold(next.exchange, alice)).toBe(true);
    exchanges.close();
    await expect(next.pending).rejects.toThrow(/shutting down/);
  });
});
