/**
 * /metrics: after real calls through a real broker (SDK client, HTTP front
 * door, compiled policy, stdio upstream), the Prometheus exposition counts
 * each call once with the right tool, outcome, stage and code, times the
 * stages the calls went through, and bounds what agents can put in labels.
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { BrokerMetrics, MAX_TOOL_LABELS, TOOL_OTHER_LABEL } from '../broker/metrics.ts';
import { startTestBroker, type TestBroker } from './helpers/broker.ts';
import { INITIALIZE, openSession, post, toolCall } from './helpers/http.ts';

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker();
});
afterAll(async () => {
  await t?.close();
});

type Sample = { name: string; labels: Record<string, string>; value: number };

function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]!] = pair[2]!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

async function scrape(): Promise<Sample[]> {
  const response = await fetch(new URL('/metrics', t.url));
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toContain('text/plain');
  return parse(await response.text());
}

/** The sum of every sample named `name` whose labels include `labels`. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

describe('GET /metrics after allowed and denied calls', () => {
  let before: Sample[];
  let after: Sample[];
  const delta = (name: string, labels: Record<string, string> = {}) => value(after, name, labels) - value(before, name, labels);

  beforeAll(async () => {
    before = await scrape();
    const client = await t.connect(await t.mint({ sub: 'agent:metrics', cap: [{ tool: 'rec__echo' }] }));
    for (let i = 0; i < 3; i++) {
      const result = (await client.callTool({ name: 'rec__echo', arguments: { text: `m${i}` } })) as CallToolResult;
      expect(result.isError).toBeFalsy();
    }
    for (let i = 0; i < 2; i++) {
      const result = (await client.callTool({ name: 'rec__transfer', arguments: { amount: 1, to: 'x' } })) as CallToolResult;
      expect(result._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_POLICY_DENIED' });
    }
    await expect(client.callTool({ name: 'rec__nope', arguments: {} })).rejects.toThrow(/Unknown tool/);
    // Refused before any tool call: a forged token on a live session.
    const sessionId = await openSession(t.url, await t.mint({ sub: 'agent:metrics-raw' }));
    const refused = await post(t.url, toolCall('rec__echo', { text: 'x' }), { authorization: 'Bearer not.a.token', 'mcp-session-id': sessionId });
    expect(refused.status).toBe(401);
    after = await scrape();
  });

  it('counts allowed calls by tool with outcome ok and no denial labels', () => {
    expect(delta('bastion_tool_calls_total', { tool: 'rec__echo', outcome: 'ok', stage: '', code: '' })).toBe(3);
  });

  it('counts policy denials with the stage and code that refused', () => {
    expect(delta('bastion_tool_calls_total', { tool: 'rec__transfer', outcome: 'denied', stage: 'authorize', code: 'BASTION_POLICY_DENIED' })).toBe(2);
    expect(delta('bastion_tool_calls_total', { tool: 'rec__transfer', outcome: 'ok' })).toBe(0);
  });

  it('labels unknown tools (unknown), never with the name an agent sent', () => {
    expect(delta('bastion_tool_calls_total', { tool: '(unknown)', outcome: 'denied', stage: 'resolve', code: 'BASTION_TOOL_UNKNOWN' })).toBe(1);
    expect(after.some((s) => s.labels.tool === 'rec__nope')).toBe(false);
  });

  it('counts front-door refusals separately from tool calls', () => {
    expect(delta('bastion_requests_refused_total', { stage: 'authenticate', code: 'BASTION_TOKEN_MALFORMED' })).toBe(1);
    expect(delta('bastion_tool_calls_total')).toBe(6);
  });

  it('times the stages each call went through', () => {
    const count = (stage: string) => delta('bastion_stage_duration_seconds_count', { stage });
    expect(count('execute')).toBe(3);
    expect(count('filter')).toBe(3);
    expect(count('audit')).toBe(6);
    expect(count('resolve')).toBe(5); // the unknown tool never resolved
    expect(count('authorize')).toBe(5);
    expect(count('limit')).toBe(3); // quotas are taken only for calls policy allows
    expect(count('approve')).toBe(0);
    // Every HTTP request to /mcp is authenticated, not only tools/call.
    expect(count('authenticate')).toBeGreaterThanOrEqual(7);
    expect(delta('bastion_stage_duration_seconds_sum', { stage: 'execute' })).toBeGreaterThan(0);
    const buckets = after.filter((s) => s.name === 'bastion_stage_duration_seconds_bucket' && s.labels.stage === 'execute');
    expect(buckets.at(-1)).toMatchObject({ labels: { le: '+Inf' }, value: value(after, 'bastion_stage_duration_seconds_count', { stage: 'execute' }) });
    expect(buckets.map((b) => b.value)).toEqual([...buckets.map((b) => b.value)].sort((a, b) => a - b));
  });

  it('counts audit records and their group commits', () => {
    expect(delta('bastion_audit_records_total')).toBeGreaterThanOrEqual(7);
    const syncs = delta('bastion_audit_sync_seconds_count');
    expect(syncs).toBeGreaterThan(0);
    expect(syncs).toBeLessThanOrEqual(delta('bastion_audit_records_total'));
  });

  it('admits every /mcp request through the per-turn cohort gate, before authentication', async () => {
    const sessionId = await openSession(t.url, await t.mint({ sub: 'agent:metrics-cohorts' }));
    const start = await scrape();
    // One after another, so each request is its own cohort; a forged token is refused after the gate.
    for (let i = 0; i < 3; i++) {
      const refused = await post(t.url, toolCall('rec__echo', { text: 'x' }), { authorization: 'Bearer not.a.token', 'mcp-session-id': sessionId });
      expect(refused.status).toBe(401);
    }
    const end = await scrape();
    const admitted = (name: string) => value(end, name) - value(start, name);
    expect(admitted('bastion_admission_cohort_size_sum')).toBe(3);
    expect(admitted('bastion_admission_cohort_size_count')).toBe(3);
  });

  it('reports approvals pending, quarantined tools and process metrics', () => {
    expect(after.find((s) => s.name === 'bastion_approvals_pending')?.value).toBe(0);
    expect(after.find((s) => s.name === 'bastion_tools_quarantined')?.value).toBe(0);
    expect(value(after, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(after.some((s) => s.name === 'nodejs_eventloop_lag_seconds')).toBe(true);
  });
});

describe('bastion_sessions_open', () => {
  it('counts the agent sessions the broker holds: up with an initialize, down with DELETE, untouched by a refused one', async () => {
    const token = await t.mint({ sub: 'agent:metrics-sessions' });
    const open = async () => value(await scrape(), 'bastion_sessions_open');
    const start = await open();
    const sessionId = await openSession(t.url, token);
    expect(await open()).toBe(start + 1);
    const refused = await post(t.url, INITIALIZE, { authorization: `Bearer ${token}`, accept: 'application/json' });
    expect(refused.status).toBe(406);
    expect(await open()).toBe(start + 1);
    const deleted = await fetch(t.url, { method: 'DELETE', headers: { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId } });
    expect(deleted.status).toBe(200);
    expect(await open()).toBe(start);
  });
});

describe('refusals and bounds', () => {
  it('refuses a scrape from a foreign Host (DNS rebinding), like /mcp', async () => {
    // fetch will not send a forged Host; node:http will.
    const status = await new Promise<number | undefined>((resolve, reject) => {
      const req = request(new URL('/metrics', t.url), { headers: { host: 'evil.example' } }, (res) => {
        res.resume();
        resolve(res.statusCode);
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(403);
  });

  it('stops adding tool labels past the bound', async () => {
    const own = new BrokerMetrics();
    for (let i = 0; i < MAX_TOOL_LABELS + 10; i++) own.toolCall(`c__tool_${i}`, 'denied', { stage: 'execute', code: 'BASTION_CONNECTOR_UNAVAILABLE' });
    own.toolCall('c__tool_0', 'ok');
    const samples = parse((await own.render()).body).filter((s) => s.name === 'bastion_tool_calls_total');
    expect(new Set(samples.map((s) => s.labels.tool)).size).toBe(MAX_TOOL_LABELS + 1);
    expect(value(samples, 'bastion_tool_calls_total', { tool: TOOL_OTHER_LABEL })).toBe(10);
    expect(value(samples, 'bastion_tool_calls_total', { tool: 'c__tool_0', outcome: 'ok' })).toBe(1);
  });

  it('counts sandbox disposals and policy reloads through their functions', async () => {
    const own = new BrokerMetrics();
    own.sandboxDisposed('memory');
    own.sandboxDisposed('memory');
    own.policyReloaded('failed');
    const samples = parse((await own.render()).body);
    expect(value(samples, 'bastion_sandbox_disposals_total', { reason: 'memory' })).toBe(2);
    expect(value(samples, 'bastion_policy_reloads_total', { outcome: 'failed' })).toBe(1);
  });
});
