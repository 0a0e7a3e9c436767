/**
 * Era translation for one process: a 2025-11-25 upstream that asks the client
 * mid-call (elicitation/create, sampling/createMessage, roots/list) while a
 * 2026-07-28 agent's call runs. The agent has no channel for server-to-client
 * requests, so the upstream's request is held here, the agent is answered
 * `input_required` (its requestState names the held exchange), and the
 * agent's retry delivers its answer to the waiting upstream request; the
 * upstream call then goes on (another request: another round; its result:
 * the call's result).
 *
 * A held exchange lives in this process only (the upstream call is an open
 * request on this process's connection): a retry that reaches another replica,
 * or comes after the exchange expired, finds nothing and is refused. Each
 * principal holds at most `maxPerPrincipal` exchanges; an expired one answers
 * the upstream's waiting request with an error and is forgotten.
 *
 * @example
 *   const exchange = new HeldExchange();
 *   const outcome = await exchange.next(upstreamCall(exchange.ask)); // { done } | { ask: { key, request } }
 *   if ('ask' in outcome && exchanges.hold(exchange, owner)) return inputRequired(outcome.ask);
 *   // on the retry: exchanges.take(id, owner)?.answer(key, response); await exchange.next(exchange.upstream)
 */
import { randomUUID } from 'node:crypto';
import { ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/server';
import type { Request, Result } from '@modelcontextprotocol/server';

/** How many upstream requests one principal may have held at once. */
export const HELD_EXCHANGES_PER_PRINCIPAL = 8;
/** How long a held upstream request waits for the agent's retry (the connector's call timeout may end it sooner). */
export const HELD_EXCHANGE_TTL_MS = 2 * 60_000;

/** What the upstream asked and waits for. */
export interface HeldRequest {
  key: string;
  request: Request;
}

export type ExchangeOutcome<T> = { done: T } | { failed: unknown } | { ask: HeldRequest };

interface Waiting extends HeldRequest {
  resolve: (result: Result) => void;
  reject: (error: Error) => void;
}

/** One upstream call in flight for a 2026 agent, and the request it is waiting on (if any). */
export class HeldExchange<T = unknown> {
  readonly id = randomUUID();
  /** Cancels the upstream call: linked to the agent's request only while a leg runs (the exchange outlives each leg). */
  readonly controller = new AbortController();
  /** The upstream call, settled or not; set once, by the first leg. */
  upstream: Promise<T> | undefined;
  #waiting: Waiting | undefined;
  #asked: ((request: HeldRequest) => void) | undefined;
  #rounds = 0;

  /** The origin's sendRequest while this call runs: the upstream's request waits for the agent's answer. */
  readonly ask = (request: Request): Promise<Result> =>
    new Promise<Result>((resolve, reject) => {
      if (this.#waiting) {
        reject(new ProtocolError(ProtocolErrorCode.InvalidRequest, 'Bastion relays one request at a time to a 2026-07-28 agent; this upstream already waits on one'));
        return;
      }
      this.#rounds += 1;
      const held: Waiting = { key: `${request.method.replace(/\W/g, '_')}_${this.#rounds}`, request, resolve, reject };
      this.#waiting = held;
      this.#asked?.({ key: held.key, request });
    });

  /** Waits for the upstream call to end, or to ask the agent something (whichever comes first). */
  next(upstream: Promise<T>): Promise<ExchangeOutcome<T>> {
    this.upstream ??= upstream;
    if (this.#waiting) return Promise.resolve({ ask: { key: this.#waiting.key, request: this.#waiting.request } });
    return new Promise<ExchangeOutcome<T>>((resolve) => {
      this.#asked = (ask) => {
        this.#asked = undefined;
        resolve({ ask });
      };
      upstream.then(
        (done) => resolve({ done }),
        (failed: unknown) => resolve({ failed }),
      );
    });
  }

  /** The agent's answer to the held request `key`; false when that is not what the upstream waits on. */
  answer(key: string, response: unknown): boolean {
    const waiting = this.#waiting;
    if (!waiting || waiting.key !== key) return false;
    this.#waiting = undefined;
    waiting.resolve(response as Result);
    return true;
  }

  /** Ends the wait with an error the upstream gets as the answer to its request. */
  refuse(message: string): void {
    const waiting = this.#waiting;
    this.#waiting = undefined;
    waiting?.reject(new ProtocolError(ProtocolErrorCode.InvalidRequest, message));
  }
}

interface Held {
  exchange: HeldExchange;
  owner: string;
  timer: NodeJS.Timeout;
}

export class HeldExchanges {
  readonly #held = new Map<string, Held>();
  readonly #maxPerPrincipal: number;
  readonly ttlMs: number;

  /**
   * @param options.maxPerPrincipal exchanges one principal may hold at once (its further upstream requests are refused).
   * @param options.ttlMs how long a held exchange waits for the agent's retry.
   */
  constructor(options: { maxPerPrincipal: number; ttlMs: number }) {
    this.#maxPerPrincipal = options.maxPerPrincipal;
    this.ttlMs = options.ttlMs;
  }

  /** Holds `exchange` for `owner` until its retry (or expiry); false when the owner holds too many already. */
  hold(exchange: HeldExchange, owner: { iss: string; sub: string }): boolean {
    const key = ownerKey(owner);
    let count = 0;
    for (const held of this.#held.values()) if (held.owner === key) count += 1;
    if (count >= this.#maxPerPrincipal) return false;
    const timer = setTimeout(() => {
      this.#held.delete(exchange.id);
      exchange.refuse('the agent did not answer in time (Bastion held this request for a 2026-07-28 agent, which never came back)');
      // The upstream's eventual result has no one to go to.
      exchange.upstream?.catch(() => undefined);
      exchange.controller.abort();
    }, this.ttlMs);
    timer.unref();
    this.#held.set(exchange.id, { exchange, owner: key, timer });
    return true;
  }

  /** Takes the exchange `id` back for its owner's retry (so no second retry can); undefined if not held here. */
  take(id: string, owner: { iss: string; sub: string }): HeldExchange | undefined {
    const held = this.#held.get(id);
    if (!held || held.owner !== ownerKey(owner)) return undefined;
    clearTimeout(held.timer);
    this.#held.delete(id);
    return held.exchange;
  }

  /** How many exchanges are held now (all principals). */
  get size(): number {
    return this.#held.size;
  }

  /** Ends every held exchange (shutdown). */
  close(): void {
    for (const held of this.#held.values()) {
      clearTimeout(held.timer);
      held.exchange.refuse('Bastion is shutting down');
      held.exchange.controller.abort();
    }
    this.#held.clear();
  }
}

function ownerKey(owner: { iss: string; sub: string }): string {
  return JSON.stringify([owner.iss, owner.sub]);
}
