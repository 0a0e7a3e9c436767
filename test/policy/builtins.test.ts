/**
 * Builtins policies commonly use, run in WASM by the broker's engine and by
 * Go OPA (opa eval) on the same Rego and the same input: the answers must be
 * the same. Covers the host builtins Bastion implements in JavaScript
 * (time.*, strings.any_*_match), the SDK's sprintf, and natively compiled
 * ones (glob.match, regex.match, net.cidr_contains). Also runs the time
 * window example, which depends on them, in WASM.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBundle } from '../../broker/policy/bundle.ts';
import { createPolicyEngine, type PolicyEngine } from '../../broker/policy/engine.ts';
import { parseRfc3339Ns } from '../../broker/policy/builtins.ts';
import type { PolicyInput } from '../../broker/policy/schema.ts';
import { buildBundle, DEFAULT_POLICY_FILES, input, POLICIES, tempDir } from './helpers.ts';

const { dir: work, cleanup } = tempDir('bastion-builtins-');
afterAll(cleanup);

// The results travel as json.marshal text in `reasons`, so numbers keep every digit.
const POLICY = `package bastion

results := {
	"parse_rfc3339_ns": {s: ns | some s in input.arguments.times; ns := time.parse_rfc3339_ns(s)},
	"clock": {k: c | some ns in input.arguments.instants; some zone in input.arguments.zones; k := concat(" ", [json.marshal(ns), zone]); c := time.clock([ns, zone])},
	"date": {k: d | some ns in input.arguments.instants; some zone in input.arguments.zones; k := concat(" ", [json.marshal(ns), zone]); d := time.date([ns, zone])},
	"weekday": {k: w | some ns in input.arguments.instants; some zone in input.arguments.zones; k := concat(" ", [json.marshal(ns), zone]); w := time.weekday([ns, zone])},
	"bare_ns": [time.clock(input.arguments.instants[0]), time.date(input.arguments.instants[0]), time.weekday(input.arguments.instants[0])],
	"bad_operands": [x | some v in input.arguments.bad; x := time.clock(v)],
	"any_prefix": [[i, r] | some i, c in input.arguments.affix_cases; r := strings.any_prefix_match(c[0], c[1])],
	"any_suffix": [[i, r] | some i, c in input.arguments.affix_cases; r := strings.any_suffix_match(c[0], c[1])],
	"glob": [[i, r] | some i, c in input.arguments.globs; r := glob.match(c[0], c[1], c[2])],
	"regex": [[i, r] | some i, c in input.arguments.regexes; r := regex.match(c[0], c[1])],
	"cidr": [[i, r] | some i, c in input.arguments.cidrs; r := net.cidr_contains(c[0], c[1])],
	"sprintf": [sprintf("%s has %d items", ["cart", 3]), sprintf("%s", [input.tool.name])],
	"now_ns": time.now_ns(),
}

decision := {
	"allow": true,
	"approval": {"required": false, "quorum": 1, "reason": ""},
	"reasons": [json.marshal(results)],
	"obligations": {"redact": [], "max_result_bytes": 1},
}
`;

const ARGUMENTS = {
  times: [
    '2026-01-01T00:00:00Z',
    '2026-01-01T00:00:00.123456789Z',
    '2026-01-01T00:00:00,5Z',
    '2026-07-01T12:00:00+02:00',
    '2026-07-01T12:00:00-09:30',
    '2024-02-29T23:59:59.999Z',
    '1970-01-01T00:00:00Z',
    '1969-12-31T23:59:59.5Z',
    '2026-02-30T00:00:00Z',
    '2025-02-29T00:00:00Z',
    '2026-01-01T24:00:00Z',
    '2026-01-01T00:60:00Z',
    '2026-01-01T00:00:60Z',
    '2026-13-01T00:00:00Z',
    '2026-01-01t00:00:00z',
    '2026-01-01T00:00:00',
    '2026-01-01T00:00:00.Z',
    '2026-01-01T00:00:00.1234567891Z',
    '2026-01-01T00:00:00+24:00',
    '2026-01-01T00:00:00+00:60',
    '2026-01-01T00:00:00+25:00',
    '2026-01-01T00:00:00-00:61',
    '2026-01-01T00:00:00.12345678912345Z',
    '0001-01-01T00:00:00Z',
    '2300-01-01T00:00:00Z',
    ' 2026-01-01T00:00:00Z',
    'yesterday',
  ],
  // Whole seconds (exact as doubles) around midnight, noon, DST changes and a leap day.
  instants: [1767225600000000000, 1767268800000000000, 1774746000000000000, 1774749600000000000, 1792890000000000000, 1709251199000000000, 0, -86400000000000],
  zones: ['', 'UTC', 'Europe/Paris', 'America/New_York', 'Asia/Kolkata', 'Australia/Lord_Howe', 'Nope/Nowhere'],
  bad: ['2026-01-01', [], ['x'], [1767225600000000000, 7], 1.5],
  affix_cases: [
    ['/srv/app', '/srv/'],
    ['/srv/app', ['/tmp/', '/srv/']],
    [['/etc/x', '/srv/y'], '/srv/'],
    [['/etc/x'], ['/srv/', '/tmp/']],
    ['', ''],
    ['abc', []],
    [7, '/srv/'],
    ['/srv/app', [7]],
  ],
  globs: [
    ['*.example.com', ['.'], 'api.example.com'],
    ['*.example.com', ['.'], 'a.b.example.com'],
    ['**.example.com', ['.'], 'a.b.example.com'],
    ['demo__*', null, 'demo__read_file'],
    ['demo__*', [], 'demo.x__read'],
    ['{read,list}_*', null, 'list_files'],
    ['[a-c]?', null, 'bz'],
  ],
  regexes: [
    ['^[a-z]+$', 'abc'],
    ['^[a-z]+$', 'abc\nrm'],
    ['(?i)^ABC', 'abc'],
    ['^(a+)+$', `${'a'.repeat(5000)}b`],
  ],
  cidrs: [
    ['10.0.0.0/8', '10.1.2.3'],
    ['10.0.0.0/8', '11.0.0.1'],
    ['10.0.0.0/8', '10.2.0.0/16'],
    ['2001:db8::/32', '2001:db8::1'],
    ['192.168.0.0/16', '192.168.1.0/24'],
  ],
};

/** JSON with every number kept as its source text, so 1767225600123456789 is not rounded before comparing. */
function exact(text: string): unknown {
  return JSON.parse(text, (_key, value: unknown, context?: { source?: string }) =>
    typeof value === 'number' ? { number: context?.source } : value,
  );
}

let dir: string;
let engine: PolicyEngine;
const NOW_MS = 1767225600123;
let call: PolicyInput;

beforeAll(async () => {
  dir = path.join(work, 'policy');
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'policy.rego'), POLICY);
  const bundle = await readBundle(execFileSync('cat', [buildBundle(dir, path.join(work, 'b.tar.gz'))]));
  engine = await createPolicyEngine({ wasm: bundle.wasm, source: 'builtins' }, { now: () => NOW_MS });
  call = input({ args: ARGUMENTS as unknown as PolicyInput['arguments'] });
});

function goResults(): Record<string, unknown> {
  const inputFile = path.join(work, 'input.json');
  writeFileSync(inputFile, JSON.stringify(call));
  const output = execFileSync('opa', ['eval', '--format', 'json', '--data', dir, '--input', inputFile, '--ignore', '*.tar.gz', 'data.bastion.decision.reasons[0]'], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const text = (JSON.parse(output) as { result: { expressions: { value: string }[] }[] }).result[0]!.expressions[0]!.value;
  return exact(text) as Record<string, unknown>;
}

describe('builtins in WASM agree with Go OPA', () => {
  let wasm: Record<string, unknown>;
  let go: Record<string, unknown>;
  beforeAll(() => {
    wasm = exact(engine.decide(call).reasons[0]!) as Record<string, unknown>;
    go = goResults();
  });

  it.each(['parse_rfc3339_ns', 'clock', 'date', 'weekday', 'bare_ns', 'bad_operands', 'any_prefix', 'any_suffix', 'glob', 'regex', 'cidr', 'sprintf'])('%s', (name) => {
    expect(wasm[name]).toBeDefined();
    expect(wasm[name]).toEqual(go[name]);
  });

  it('time.now_ns is the evaluation\'s time, exact to the nanosecond', () => {
    expect(wasm.now_ns).toEqual({ number: `${NOW_MS}000000` });
  });

  it('parses RFC 3339 the way Go does for the cases above (exact nanoseconds)', () => {
    expect(parseRfc3339Ns('2026-01-01T00:00:00.123456789Z')).toBe(1767225600123456789n);
    expect(parseRfc3339Ns('2026-07-01T12:00:00-09:30')).toBe(1782941400000000000n);
    expect(parseRfc3339Ns('2026-02-30T00:00:00Z')).toBeUndefined();
  });
});

describe('the time window example in WASM', () => {
  let windowed: PolicyEngine;
  beforeAll(async () => {
    const src = path.join(work, 'time-window');
    mkdirSync(src);
    execFileSync('cp', [...DEFAULT_POLICY_FILES.map((file) => path.join(POLICIES, file)), path.join(POLICIES, 'examples/time_window.rego'), src]);
    const bundle = await readBundle(execFileSync('cat', [buildBundle(src, path.join(work, 'tw.tar.gz'))]));
    windowed = await createPolicyEngine({ wasm: bundle.wasm, source: 'time_window' });
  });

  it.each([
    ['2026-01-05T07:00:00Z', true], // Monday 08:00 Paris
    ['2026-01-05T16:59:59Z', true],
    ['2026-01-05T17:00:00Z', false], // 18:00 Paris
    ['2026-07-06T05:59:00Z', false], // 07:59 Paris, summer time
    ['2026-07-06T06:00:00Z', true],
    ['2026-01-10T10:00:00Z', false], // Saturday
    ['2026-01-05T09:30:00+01:00', true],
  ])('at %s a medium-risk call is allowed: %s', (time, allow) => {
    expect(windowed.decide(input({ tool: 'deploy__restart', risk: 'medium', time })).allow).toBe(allow);
  });
});
