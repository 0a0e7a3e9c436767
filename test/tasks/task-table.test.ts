/**
 * Bastion's task table: opaque ids bound to a principal, bounded per
 * principal, expiring. The refusals matter most: another principal's id
 * finds nothing (as an unknown one), a full table refuses, expired is gone.
 */
import { describe, expect, it } from 'vitest';
import { Denial } from '../../broker/errors.ts';
import { TaskTable } from '../../broker/tasks/task-table.ts';

const alice = { iss: 'https://issuer.test', sub: 'agent:alice' };
const bob = { iss: 'https://issuer.test', sub: 'agent:bob' };
/** Same subject, another issuer: another principal. */
const aliceElsewhere = { iss: 'https://other.test', sub: 'agent:alice' };

function entry(owner: typeof alice, upstreamId = 'up-1', ttlMs: number | null = 60_000) {
  return { owner, connector: 'every', connection: 'session:s1', session: 's1', upstreamId, tool: 'every__slow', args: {}, argsHash: 'h', ttlMs, filtering: { obligations: { redact: [], max_result_bytes: 1024 } } };
}

describe('TaskTable', () => {
  it('gives each task a fresh 128-bit opaque id, never the upstream one', () => {
    const table = new TaskTable();
    const a = table.add(entry(alice, 'same-upstream-id'));
    const b = table.add(entry(alice, 'same-upstream-id'));
    expect(a.id).toMatch(/^bastion-task-[A-Za-z0-9_-]{22}$/);
    expect(a.id).not.toBe(b.id);
    expect(a.id).not.toContain('same-upstream-id');
  });

  it("finds a task for its owner only: another principal (another subject, or the same subject from another issuer) finds nothing", () => {
    const table = new TaskTable();
    const task = table.add(entry(alice));
    expect(table.find(alice, task.id)).toBe(task);
    expect(table.find(bob, task.id)).toBeUndefined();
    expect(table.find(aliceElsewhere, task.id)).toBeUndefined();
    expect(table.list(bob)).toEqual([]);
    expect(table.heldByAnother(bob, task.id)).toBe(true);
    expect(table.heldByAnother(alice, task.id)).toBe(false);
  });

  it('refuses a principal over its bound (BASTION_TASKS_FULL, stage limit), without touching another principal', () => {
    const table = new TaskTable({ maxPerPrincipal: 2, maxTtlMs: 60_000 });
    table.add(entry(alice, 'a'));
    table.add(entry(alice, 'b'));
    let refused: unknown;
    try {
      table.add(entry(alice, 'c'));
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(Denial);
    expect(refused).toMatchObject({ stage: 'limit', code: 'BASTION_TASKS_FULL' });
    expect(() => table.checkCapacity(alice)).toThrow(Denial);
    expect(table.add(entry(bob, 'c')).owner).toEqual(bob);
    expect(table.list(alice)).toHaveLength(2);
  });

  it('expires tasks at their ttl, capped at max_ttl (an unlimited upstream ttl included), freeing their place', () => {
    let now = 1_000;
    const table = new TaskTable({ maxPerPrincipal: 1, maxTtlMs: 10_000, now: () => now });
    const short = table.add(entry(alice, 'a', 5_000));
    expect(short.expiresAt - short.createdAt).toBe(5_000);
    now += 5_000;
    expect(table.find(alice, short.id)).toBeUndefined();
    const unlimited = table.add(entry(alice, 'b', null));
    expect(unlimited.expiresAt - unlimited.createdAt).toBe(10_000);
    expect(table.byUpstream('every', 'session:s1', 'b')).toBe(unlimited);
    const longer = { ...entry(bob, 'c', 3_600_000) };
    expect(table.add(longer).expiresAt - now).toBe(10_000);
    now += 10_000;
    expect(table.list(alice)).toEqual([]);
    expect(table.byUpstream('every', 'session:s1', 'b')).toBeUndefined();
    table.checkCapacity(alice);
    expect(table.size).toBe(0);
  });
});
