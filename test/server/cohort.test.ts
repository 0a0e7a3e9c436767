/**
 * Per-turn admission (broker/server/cohort.ts): requests that reach the gate
 * in one event-loop turn go on together at the end of that turn, in arrival
 * order; later arrivals form the next cohort. The gate only orders: every
 * request is let through.
 */
import { describe, expect, it } from 'vitest';
import { cohortGate } from '../../broker/server/cohort.ts';

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('cohortGate', () => {
  it('holds a turn’s arrivals until the turn ends, then lets them on in arrival order', async () => {
    const sizes: number[] = [];
    const admit = cohortGate((size) => sizes.push(size));
    const order: number[] = [];
    const admitted = [0, 1, 2].map((i) => admit().then(() => order.push(i)));
    // Microtasks of this turn run first: nobody is through yet.
    await Promise.resolve();
    await Promise.resolve();
    expect(order).toEqual([]);
    await Promise.all(admitted);
    expect(order).toEqual([0, 1, 2]);
    expect(sizes).toEqual([3]);
  });

  it('starts a new cohort for arrivals in a later turn', async () => {
    const sizes: number[] = [];
    const admit = cohortGate((size) => sizes.push(size));
    const first = admit();
    await nextTurn();
    await first;
    await admit();
    expect(sizes).toEqual([1, 1]);
  });

  it('puts a request that arrives while a cohort is let on into the next cohort', async () => {
    const sizes: number[] = [];
    const admit = cohortGate((size) => sizes.push(size));
    let late: Promise<void> | undefined;
    const early = admit().then(() => {
      late = admit();
    });
    await Promise.all([early, admit()]);
    expect(sizes).toEqual([2]);
    await late;
    expect(sizes).toEqual([2, 1]);
  });

  it('lets every request through, however many arrive in one turn', async () => {
    const admit = cohortGate();
    const through = await Promise.all(Array.from({ length: 10_000 }, (_, i) => admit().then(() => i)));
    expect(through).toHaveLength(10_000);
    expect(through[9_999]).toBe(9_999);
  });
});
