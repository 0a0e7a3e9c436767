/**
 * The pipeline evaluates the policy with input it builds itself and does not
 * validate that input again (PolicyEngine.decideTrusted). This holds it to
 * the contract: every input a real broker hands its real policy engine, for
 * listings, allowed, refused and constrained calls, passes the same
 * PolicyInputSchema that `decide` enforces on outside input.
 */
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { PolicyInput } from '../../broker/policy/schema.ts';
import type { DecisionRecord } from '../../broker/policy/decision-log.ts';
import { PolicyInputSchema } from '../../broker/policy/schema.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker({ policy: { decision_log: { enabled: true, destination: 'decisions.jsonl' } } });
});
afterAll(async () => {
  await t.close();
});

describe('policy input built by the pipeline', () => {
  it('always satisfies the input schema', async () => {
    const token = await t.mint({
      sub: 'agent:contract',
      cap: [{ tool: 'rec__echo', args: { text: { max_length: 64, pattern: '[a-z ]*' } } }, { tool: 'rec__transfer', args: { amount: { max: 10 } } }, { tool: 'rec__w*' }],
    });
    // Watch what the engine in force is handed; it still decides every call itself.
    const engine = t.broker.policy.current();
    const seen: PolicyInput[] = [];
    const real = engine.decideTrusted.bind(engine);
    vi.spyOn(engine, 'decideTrusted').mockImplementation((input) => {
      seen.push(structuredClone(input));
      return real(input);
    });
    const client = await t.connect(token);
    await client.listTools();
    const calls: [string, Record<string, unknown>][] = [
      ['rec__echo', { text: 'hello there' }],
      ['rec__echo', { text: 'NOT ALLOWED', extra: { nested: [1, 2.5, null, true, { deep: ['x'] }] } }],
      ['rec__transfer', { amount: 500, to: 'mallory' }],
      ['rec__transfer', { amount: 5, to: 'ada', memo: 'ünïcødé \u{1F600}' }],
      ['rec__leak', {}],
    ];
    for (const [name, args] of calls) await client.callTool({ name, arguments: args });
    await client.close();
    await t.broker.stop(); // flushes the decision log

    const records = (await readFile(path.join(t.dir, 'decisions.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as DecisionRecord);
    const loggedCalls = records.filter((r) => (r.input as { context: { method: string } }).context.method === 'tools/call');
    expect(loggedCalls).toHaveLength(calls.length);
    // Some allowed and some refused, so both shapes of call were covered.
    expect(new Set(loggedCalls.map((r) => (r.result as { allow: boolean }).allow))).toEqual(new Set([true, false]));
    expect(seen.filter((input) => input.context.method === 'tools/list').length).toBeGreaterThan(0);
    expect(seen.filter((input) => input.context.method === 'tools/call')).toHaveLength(calls.length);
    for (const input of seen) {
      const parsed = PolicyInputSchema.safeParse(input);
      expect(parsed.error?.issues ?? []).toEqual([]);
      expect(parsed.data).toEqual(input);
    }
    // The decision log holds what the policy was given.
    expect(loggedCalls.map((r) => r.input)).toEqual(seen.filter((input) => input.context.method === 'tools/call'));
  });
});
