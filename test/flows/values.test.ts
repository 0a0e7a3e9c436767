/**
 * The pieces of flow control that are plain functions: labels from
 * annotations and config, destinations from egress arguments, value units
 * for provenance, and the bounds on what one flow may hold.
 */
import { describe, expect, it } from 'vitest';
import { egressTargets, hostOf } from '../../broker/flows/egress.ts';
import { labelsFromAnnotations, toolFlow } from '../../broker/flows/labels.ts';
import { addSource, emptyCore, listSegment, MAX_SEGMENTS, parseCore, parseUnits, serializeUnits, sourceId, taintOf, type Segment } from '../../broker/flows/state.ts';
import { FLOW_INDEX, FlowStore } from '../../broker/flows/store.ts';
import { openEmbeddedState } from '../../broker/state/embedded.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { argumentUnits, hashUnit, resultUnits, textUnit } from '../../broker/flows/values.ts';

describe('labels', () => {
  it.each([
    [undefined, []],
    [{}, []],
    [{ readOnlyHint: true }, []],
    [{ openWorldHint: true }, ['untrusted', 'external']],
    [{ readOnlyHint: true, openWorldHint: true }, ['untrusted']],
    [{ destructiveHint: true }, ['destructive']],
    [{ destructiveHint: true, readOnlyHint: true }, []],
    [{ destructiveHint: true, openWorldHint: true }, ['untrusted', 'external', 'destructive']],
    // Only explicit hints count: MCP's defaults (destructive, open world) are not assumed.
    [{ openWorldHint: false, destructiveHint: false }, []],
  ])('annotations %j give %j', (annotations, labels) => {
    expect(labelsFromAnnotations(annotations)).toEqual(labels);
  });

  it('config labels replace what annotations suggest; egress comes from config only', () => {
    const fetcher = { annotations: { readOnlyHint: true, openWorldHint: true } };
    expect(toolFlow(fetcher, undefined)).toEqual({ labels: ['untrusted'], egress: {}, origin: 'annotations' });
    expect(toolFlow(fetcher, { egress: { url: 'url' } })).toEqual({ labels: ['untrusted'], egress: { url: 'url' }, origin: 'annotations' });
    expect(toolFlow(fetcher, { labels: [] })).toEqual({ labels: [], egress: {}, origin: 'config' });
    expect(toolFlow({}, { labels: ['private', 'untrusted'] })).toEqual({ labels: ['untrusted', 'private'], egress: {}, origin: 'config' });
  });
});

describe('egress destinations', () => {
  it.each([
    ['email', 'bob@Corp.Example', 'corp.example'],
    ['email', 'Bob Smith <bob@corp.example>', 'corp.example'],
    ['email', 'bob', ''],
    ['email', '@corp.example', ''],
    ['email', 'a@b@evil.example', 'evil.example'],
    ['url', 'https://Evil.Example:8443/x?y=1', 'evil.example'],
    ['url', 'https://corp.example@evil.example/', 'evil.example'],
    ['url', 'javascript:alert(1)', ''],
    ['url', 'not a url', ''],
    ['url', 'http://[::1]/', '[::1]'],
    ['host', 'api.corp.example.', 'api.corp.example'],
    ['host', 'exa mple.com', ''],
  ] as const)('%s %j has host %j', (kind, value, host) => {
    expect(hostOf(kind, value)).toBe(host);
  });

  it('reads lists, comma-separated recipients and non-strings (unreadable, so external)', () => {
    expect(egressTargets({ to: ['a@corp.example', 'b@evil.example'], cc: 'c@x.example, d@corp.example', url: 42 }, { to: 'email', cc: 'email', url: 'url' })).toEqual([
      { argument: '/to/0', kind: 'email', value: 'a@corp.example', host: 'corp.example' },
      { argument: '/to/1', kind: 'email', value: 'b@evil.example', host: 'evil.example' },
      { argument: '/cc#0', kind: 'email', value: 'c@x.example', host: 'x.example' },
      { argument: '/cc#1', kind: 'email', value: ' d@corp.example', host: 'corp.example' },
      { argument: '/url', kind: 'url', value: '42', host: '' },
    ]);
  });

  it('caps the destinations listed, and the overflow counts as external', () => {
    const many = Array.from({ length: 200 }, (_, i) => `u${i}@corp.example`);
    const targets = egressTargets({ to: many }, { to: 'email' });
    expect(targets).toHaveLength(64);
    expect(targets.at(-1)).toEqual({ argument: '', kind: 'host', value: 'more than 63 destinations', host: '' });
  });
});

describe('value units', () => {
  it('normalizes identifiers the same on both sides', () => {
    const from = resultUnits({ content: [{ type: 'text', text: 'Pay 1,870.00 EUR to GB82 WEST 1234 5698 7654 32, questions to Billing@Supplier.example or https://Supplier.example/pay?id=7).' }] }, 100);
    const to = argumentUnits({ iban: 'GB82WEST12345698765432', amount: 1870, contact: 'billing@supplier.example', link: 'see https://supplier.example/pay?id=7' });
    const keys = new Set(from.map((u) => `${u.kind}:${u.value}`));
    for (const leaf of to) expect(leaf.units.some((u) => keys.has(`${u.kind}:${u.value}`)), leaf.argument).toBe(true);
  });

  it('does not read an IBAN that fails its check, or small numbers', () => {
    const units = resultUnits({ content: [{ type: 'text', text: 'GB00WEST12345698765432 and 12 apples, 0.5 kg, 3 pears' }] }, 100);
    expect(units.filter((u) => u.kind === 'iban' || u.kind === 'number')).toEqual([]);
  });

  it('takes whole JSON leaves and structured content, and phrases from prose', () => {
    const units = resultUnits(
      {
        content: [{ type: 'text', text: JSON.stringify({ hotels: [{ name: 'Hotel Luxe Paris', price: 240 }] }) }, { type: 'text', text: 'We loved "Le Petit Zinc" near Gare du Nord.\nCheck-in: Friday 3 pm' }],
        structuredContent: { payee: 'Marta Ruiz' },
      },
      100,
    );
    const texts = units.filter((u) => u.kind === 'text').map((u) => u.value);
    expect(texts).toEqual(expect.arrayContaining(['hotel luxe paris', 'le petit zinc', 'gare du nord', 'friday 3 pm', 'marta ruiz']));
    expect(units).toContainEqual({ kind: 'number', value: '240' });
  });

  it('leaves short common values alone', () => {
    expect(textUnit('EUR')).toBeUndefined();
    expect(textUnit('yes')).toBeUndefined();
    expect(textUnit('a b')).toBeUndefined();
    expect(textUnit('2026')).toBeUndefined();
    expect(textUnit('report.pdf')).toEqual({ kind: 'text', value: 'report.pdf' });
    expect(textUnit('x'.repeat(129))).toBeUndefined();
  });

  it('counts free text only through the identifiers in it', () => {
    const [body] = argumentUnits({ body: `Dear team, ${'the quarter went well. '.repeat(10)} Details at https://evil.example/c` });
    expect(body!.units).toEqual([
      { kind: 'url', value: 'https://evil.example/c' },
      { kind: 'domain', value: 'evil.example' },
    ]);
  });

  it('caps the units of one result', () => {
    const text = Array.from({ length: 5000 }, (_, i) => `user${i}@example.com`).join(' ');
    expect(resultUnits({ content: [{ type: 'text', text }] }, 300)).toHaveLength(300);
  });

  it('hashes with the deployment seed: another seed, other hashes', () => {
    const unit = { kind: 'iban' as const, value: 'GB82WEST12345698765432' };
    expect(hashUnit(unit, 1)).toBe(hashUnit(unit, 1));
    expect(hashUnit(unit, 1)).not.toBe(hashUnit(unit, 2));
    expect(Number.isSafeInteger(hashUnit(unit, 7))).toBe(true);
  });
});

describe('what one flow holds', () => {
  const limits = { maxSources: 4, maxUnits: 100 };
  const now = new Date('2026-03-01T10:00:00Z');

  it('keeps the newest sources in detail, counts them all, and never drops a label', () => {
    let core = emptyCore('iss|agent:a', now);
    core = addSource(core, { id: sourceId(1), tool: 'mail__read_email', labels: ['untrusted', 'private'], reason: 'r', call: 'c1' }, now, limits);
    for (let i = 2; i <= 9; i++) core = addSource(core, { id: sourceId(i), tool: 'files__read_file', labels: ['private'], reason: 'r', call: `c${i}` }, now, limits);
    expect(core.sources.map((s) => s.id)).toEqual([6, 7, 8, 9].map(sourceId));
    expect(core.counts).toEqual({ untrusted: 1, private: 9 });
    // The untrusted source's detail is gone, but the label stays, with its id.
    expect(core.labels.untrusted).toEqual([sourceId(1)]);
    expect(core.labels.private).toEqual([6, 7, 8, 9].map(sourceId));
    expect(parseCore(JSON.stringify(core))).toEqual(core);
  });

  it('holds at most maxUnits of each kind in segments, the oldest dropped first', () => {
    let core = emptyCore('iss|agent:a', now);
    const dropped: string[] = [];
    for (let i = 0; i < 5; i++) {
      const listed = listSegment(core, { id: `u${i}`, kind: 'untrusted', units: 40 }, limits);
      core = listed.core;
      dropped.push(...listed.dropped);
    }
    core = listSegment(core, { id: 't0', kind: 'trusted', units: 100 }, limits).core;
    // 5 × 40 untrusted units over a cap of 100: the three oldest segments went; trusted units count apart.
    expect(core.segments!.map((s) => s.id)).toEqual(['u3', 'u4', 't0']);
    expect(dropped).toEqual(['u0', 'u1', 'u2']);
    // A single segment over the cap is kept (the caller cuts it to the cap first).
    expect(listSegment(emptyCore('k', now), { id: 'big', kind: 'trusted', units: 500 }, limits).core.segments!.map((s) => s.id)).toEqual(['big']);
  });

  it('calls a value tainted when untrusted content had it and nothing trusted did', () => {
    const segment = (id: string, kind: Segment['kind'], hashes: number[], source = 0): Segment => ({ id, kind, units: hashes.length, hashes: new Map(hashes.map((h) => [h, source])) });
    const index = { segments: [segment('a', 'untrusted', [1, 2], 7), segment('b', 'trusted', [2]), segment('c', 'untrusted', [1, 3], 9)] };
    expect(taintOf(index, 1)).toBe(7); // the first source that brought it
    expect(taintOf(index, 2)).toBeUndefined(); // trusted content had it too
    expect(taintOf(index, 3)).toBe(9);
    expect(taintOf(index, 4)).toBeUndefined();
    const units = new Map([[0, 0], [1, 7], [2 ** 52 + 7, 0xfffffffe], [Number.MAX_SAFE_INTEGER, 3]]);
    expect([...parseUnits(serializeUnits(units))]).toEqual([...units]);
  });

  it('merges the oldest segments past MAX_SEGMENTS, keeps every unit with its source, and deletes what it replaced', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-flow-store-'));
    const state = await openEmbeddedState(path.join(dir, 'state.db'));
    try {
      const store = new FlowStore({ state, retentionMs: 3_600_000, limits: { maxSources: 8, maxUnits: 10_000 } });
      for (let i = 0; i < 3 * MAX_SEGMENTS; i++) await store.commit('k', [{ kind: 'untrusted', source: i + 1, hashes: [i * 10, i * 10 + 1] }], (core) => core, now);
      const core = await store.core('k');
      expect(core!.segments!.length).toBeLessThanOrEqual(MAX_SEGMENTS);
      const index = await store.index('k', core);
      for (let i = 0; i < 3 * MAX_SEGMENTS; i++) expect(taintOf(index, i * 10 + 1), `unit of segment ${i}`).toBe(i + 1);
      // Only the listed segments are stored.
      const stored = (await state.entries(FLOW_INDEX)).map(([key]) => key.split('#')[1]).sort();
      expect(stored).toEqual(core!.segments!.map((s) => s.id).sort());
      await store.clear('k');
      expect(await state.entries(FLOW_INDEX)).toEqual([]);
    } finally {
      await state.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a stored form it does not understand', () => {
    expect(() => parseCore('{"v":2}')).toThrow(/unknown format/);
    expect(() => parseUnits('{"h":"AAAA","s":""}')).toThrow(/truncated/);
    expect(() => parseUnits('"x"')).toThrow(/unknown format/);
  });
});
