/**
 * Decision logs: OPA-style records with masked fields, written to a file,
 * and a log that never holds up a decision: a stalled destination makes it
 * drop and count, not wait.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DecisionLog, type DecisionRecord } from '../../broker/policy/decision-log.ts';
import { loadPolicy } from '../../broker/policy/engine.ts';
import { COMPILED, input, tempDir } from './helpers.ts';

const { dir: work, cleanup } = tempDir('bastion-decisions-');
afterAll(cleanup);

const engine = await loadPolicy(COMPILED);
const call = input({ args: { user: 'ada', password: 'hunter2', 'a/b': 1, nested: { token: 't', keep: true } } });

function lines(file: string): DecisionRecord[] {
  return readFileSync(file, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as DecisionRecord);
}

describe('a decision record', () => {
  it('has the OPA fields, the revision, and the masked input', async () => {
    const file = path.join(work, 'decisions.jsonl');
    const log = await DecisionLog.open({
      destination: { file },
      mask: ['/input/arguments/password', '/input/arguments/nested/token', '/input/arguments/a~1b', '/input/arguments/absent'],
      now: () => Date.parse('2026-01-05T10:00:00.123Z'),
    });
    const result = engine.decide(call);
    const id = log.record({ input: call, result, revision: engine.revision, bundleRevision: 'v7' });
    await log.close();

    const [record] = lines(file);
    expect(record).toEqual({
      decision_id: id,
      path: 'bastion/decision',
      input: { ...call, arguments: { user: 'ada', nested: { keep: true } } },
      result,
      revision: engine.revision,
      bundle_revision: 'v7',
      timestamp: '2026-01-05T10:00:00.123Z',
      erased: ['/input/arguments/password', '/input/arguments/nested/token', '/input/arguments/a~1b'],
    });
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    // The caller's objects are never touched.
    expect(call.arguments.password).toBe('hunter2');
    expect((call.arguments.nested as { token?: string }).token).toBe('t');
  });

  it('can erase every argument, and records errors instead of results', async () => {
    const file = path.join(work, 'all-masked.jsonl');
    const log = await DecisionLog.open({ destination: { file }, maskArguments: true, mask: ['/result/reasons'] });
    const result = engine.decide(call);
    log.record({ input: call, result, revision: engine.revision, decisionId: 'call-1' });
    log.record({ input: call, error: 'policy evaluation failed: boom', revision: engine.revision, decisionId: 'call-2' });
    await log.close();
    const [first, second] = lines(file);
    expect(first!.input).not.toHaveProperty('arguments');
    expect(first!.result).not.toHaveProperty('reasons');
    expect(first!.erased).toEqual(['/input/arguments', '/result/reasons']);
    expect(JSON.stringify(first)).not.toContain('hunter2');
    expect(second).toMatchObject({ decision_id: 'call-2', error: 'policy evaluation failed: boom' });
    expect(second).not.toHaveProperty('result');
  });

  it('refuses masks outside /input and /result', async () => {
    await expect(DecisionLog.open({ destination: { file: path.join(work, 'x.jsonl') }, mask: ['/principal'] })).rejects.toThrow(/JSON pointer under \/input or \/result/);
  });
});

describe('never blocking a decision', () => {
  it('drops and counts when the destination stalls, instead of waiting', async () => {
    let release!: () => void;
    const stalled = new Promise<void>((resolve) => (release = resolve));
    const writes: string[] = [];
    const log = await DecisionLog.open({
      destination: {
        sink: {
          write: async (text) => {
            writes.push(text);
            await stalled;
          },
        },
      },
      maxQueued: 100,
    });
    const result = engine.decide(call);
    const started = performance.now();
    for (let i = 0; i < 1000; i++) log.record({ input: call, result, revision: engine.revision });
    const elapsed = performance.now() - started;
    expect(log.stats).toMatchObject({ dropped: 900, queued: 100, written: 0 });
    expect(elapsed).toBeLessThan(500); // 1,000 records queued or dropped without ever waiting on the sink

    await new Promise((resolve) => setImmediate(resolve)); // the drain takes the batch and stalls in write()
    for (let i = 0; i < 50; i++) log.record({ input: call, result, revision: engine.revision });
    expect(log.stats.dropped).toBe(900);

    release();
    await log.close();
    expect(log.stats).toMatchObject({ written: 150, dropped: 900, failed: 0, queued: 0 });
    expect(writes.join('').trim().split('\n')).toHaveLength(150);
    log.record({ input: call, result, revision: engine.revision });
    expect(log.stats.dropped).toBe(901);
  });

  it('counts a failing destination without throwing into the caller', async () => {
    const log = await DecisionLog.open({ destination: { sink: { write: async () => Promise.reject(new Error('disk full')) } } });
    expect(() => log.record({ input: call, revision: engine.revision })).not.toThrow();
    await log.flush();
    expect(log.stats).toMatchObject({ written: 0, failed: 1 });
  });
});
