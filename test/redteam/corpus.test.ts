/**
 * The red team's parts that need no broker: the corpus format (what a
 * security team writes), placeholders, forged tokens, the quota yardstick,
 * the verdict's attribution of refusals, and the report's charts.
 */
import { describe, expect, it } from 'vitest';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseConfig } from '../../broker/config.ts';
import { CorpusError, DEFAULT_CORPUS_DIR, loadCorpus, parseClassFile } from '../../broker/redteam/corpus.ts';
import { forgeToken } from '../../broker/redteam/forge.ts';
import { htmlReport, terminalReport } from '../../broker/redteam/report.ts';
import { findingsOf, type CampaignResult, type ConfigurationResult } from '../../broker/redteam/run.ts';
import { fillPlaceholders } from '../../broker/redteam/steps.ts';
import { createRedteamIssuer, materializePlugins } from '../../broker/redteam/target.ts';
import { defenseOf, quotaAllowance } from '../../broker/redteam/verdict.ts';

describe('the shipped corpus', () => {
  it('loads, with every class the issue names and unique case ids', async () => {
    const corpus = await loadCorpus([DEFAULT_CORPUS_DIR]);
    const ids = corpus.classes.map((c) => c.id);
    for (const id of [
      'forged_token',
      'token_replay',
      'delegation_escalation',
      'capability_escape',
      'argument_constraints',
      'approval_bypass',
      'rug_pull',
      'tool_poisoning',
      'result_injection',
      'secret_leak',
      'plugin_sandbox',
      'plugin_overreach',
      'flood',
      'session_exhaustion',
    ]) {
      expect(ids).toContain(id);
    }
    const cases = corpus.classes.flatMap((c) => c.cases.map((k) => k.id));
    expect(new Set(cases).size).toBe(cases.length);
    expect(corpus.classes.find((c) => c.id === 'plugin_sandbox')!.cases.every((k) => k.requires.includes('plugins'))).toBe(true);
  });

  it('keeps the known race out of the default run, loadable on request; the poisoned listing is in it', async () => {
    const extra = await loadCorpus([DEFAULT_CORPUS_DIR, path.join(DEFAULT_CORPUS_DIR, 'known-races')]);
    const ids = (corpus: typeof extra) => corpus.classes.flatMap((c) => c.cases.map((k) => k.id));
    expect(ids(extra)).toContain('rugpull-race-refresh');
    expect(ids(await loadCorpus([DEFAULT_CORPUS_DIR]))).not.toContain('rugpull-race-refresh');
    expect(ids(await loadCorpus([DEFAULT_CORPUS_DIR]))).toContain('poison-description-listed');
  });
});

describe('corpus format refusals', () => {
  const minimal = (cases: string) => `class: x\ntitle: X\nthreat: t\ndefended_by: [policy]\ncases:\n${cases}`;

  it('accepts a minimal case', () => {
    const parsed = parseClassFile(
      minimal(`  - id: c1\n    description: d\n    steps:\n      - token: { name: a, cap: [{ tool: rec__echo }] }\n      - call: { token: a, tool: rec__echo, arguments: { text: hi } }\n    success: { upstream_called: { tool: rec__echo } }\n`),
      'x.yaml',
    );
    expect(parsed.cases[0]!.steps[1]).toEqual({ call: { token: 'a', tool: 'rec__echo', arguments: { text: 'hi' } }, setup: false });
  });

  it('accepts a repeated raw request judged by the live session count', () => {
    const parsed = parseClassFile(
      minimal(`  - id: c1\n    description: d\n    steps:\n      - raw: { body: { jsonrpc: "2.0", id: 1, method: initialize }, headers: { accept: application/json }, repeat: 40 }\n    success: { sessions_grew: {} }\n`),
      'x.yaml',
    );
    expect(parsed.cases[0]!.steps[0]).toMatchObject({ raw: { repeat: 40, headers: { accept: 'application/json' } } });
    expect(parsed.cases[0]!.success).toEqual({ sessions_grew: { min: 1 } });
  });

  it.each([
    ['a raw request repeated more than 1,000 times', `  - id: c1\n    description: d\n    steps: [{ raw: { body: {}, repeat: 1001 } }]\n    success: { sessions_grew: {} }\n`],
    ['an unknown step kind', `  - id: c1\n    description: d\n    steps: [{ shell: { cmd: id } }]\n    success: { upstream_called: { tool: t } }\n`],
    ['two kinds in one step', `  - id: c1\n    description: d\n    steps: [{ sleep: { ms: 1 }, list_tools: { token: a } }]\n    success: { upstream_called: { tool: t } }\n`],
    ['a missing success predicate', `  - id: c1\n    description: d\n    steps: [{ sleep: { ms: 1 } }]\n`],
    ['an unknown forgery', `  - id: c1\n    description: d\n    steps: [{ token: { name: a, forge: magic } }]\n    success: { upstream_called: { tool: t } }\n`],
    ['an invalid capability', `  - id: c1\n    description: d\n    steps: [{ token: { name: a, cap: [{ tool: t, args: { x: {} } }] } }]\n    success: { upstream_called: { tool: t } }\n`],
  ])('refuses %s, naming the file and the path', (_what, cases) => {
    expect(() => parseClassFile(minimal(cases), 'bad.yaml')).toThrow(CorpusError);
    expect(() => parseClassFile(minimal(cases), 'bad.yaml')).toThrow(/bad\.yaml[\s\S]*cases\.0/);
  });

  it('refuses a plugin case that does not declare requires: [plugins]', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-corpus-'));
    await writeFile(
      path.join(dir, 'p.yaml'),
      minimal(`  - id: p1\n    description: d\n    steps: [{ install_plugin: { name: h, code: "tools.x = () => 1", tools: [{ name: x }] } }]\n    success: { broker_degraded: {} }\n`),
    );
    await expect(loadCorpus([dir])).rejects.toThrow(/requires: \[plugins\]/);
  });

  it('refuses kv granted to a plugin installed without a configured name (a configuration Bastion itself refuses)', () => {
    expect(() =>
      parseClassFile(
        minimal(
          `  - id: p1\n    description: d\n    requires: [plugins]\n    steps: [{ install_plugin: { name: h, manifest_name: other, grants: [kv], code: "tools.x = () => 1", tools: [{ name: x }] } }]\n    success: { broker_degraded: {} }\n`,
        ),
        'p.yaml',
      ),
    ).toThrow(/grants: a plugin configured without a name cannot be granted kv/);
  });

  it('writes each plugin out as the operator would configure it: its own name and grants, or, with manifest_name, no name and that name in the manifest', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-corpus-plugins-'));
    try {
      const code = 'tools.x = () => 1;';
      const tools = [{ name: 'x', description: 'x' }];
      const entries = await materializePlugins(
        [
          { name: 'victim', tools, code, capabilities: ['kv'], grants: ['kv'] },
          { name: 'impostor', manifestName: 'victim', tools, code, capabilities: ['kv'] },
        ],
        dir,
      );
      expect(entries).toEqual([
        { dir: path.join(dir, 'plugins/victim'), hash: expect.stringMatching(/^sha256:/), name: 'victim', grants: { kv: true } },
        { dir: path.join(dir, 'plugins/impostor'), hash: expect.stringMatching(/^sha256:/), grants: {} },
      ]);
      const manifest = JSON.parse(await readFile(path.join(dir, 'plugins/impostor/plugin.json'), 'utf8')) as { name: string; capabilities: unknown };
      expect(manifest).toMatchObject({ name: 'victim', capabilities: { kv: {} } });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses two different plugins under one name (every plugin is installed on every broker)', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-corpus-'));
    const plugin = (id: string, code: string) =>
      `  - id: ${id}\n    description: d\n    requires: [plugins]\n    steps: [{ install_plugin: { name: h, code: "${code}", tools: [{ name: x }] } }]\n    success: { broker_degraded: {} }\n`;
    await writeFile(path.join(dir, 'p.yaml'), minimal(plugin('p1', 'tools.x = () => 1') + plugin('p2', 'tools.x = () => 1')));
    await expect(loadCorpus([dir])).resolves.toBeDefined();
    await writeFile(path.join(dir, 'p.yaml'), minimal(plugin('p1', 'tools.x = () => 1') + plugin('p2', 'tools.x = () => 2')));
    await expect(loadCorpus([dir])).rejects.toThrow(/plugin named "h" that differs from the one case "p1" installs/);
  });

  it('refuses a case id used twice across files', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-corpus-'));
    const body = minimal(`  - id: same\n    description: d\n    steps: [{ sleep: { ms: 1 } }]\n    success: { upstream_called: { tool: t } }\n`);
    await writeFile(path.join(dir, 'a.yaml'), body);
    await writeFile(path.join(dir, 'b.yaml'), body);
    await expect(loadCorpus([dir])).rejects.toThrow(/"same" is used twice/);
  });
});

describe('placeholders', () => {
  it('fills marker, subjects, hidden tags, padding and nesting', () => {
    const subs = (name: string) => `agent:${name}`;
    expect(fillPlaceholders('to-${marker} as ${sub:victim}', 'm1', subs)).toBe('to-m1 as agent:victim');
    expect(fillPlaceholders('a${tags:hi}', 'm', subs)).toBe(`a${String.fromCodePoint(0xe0068, 0xe0069)}`);
    expect(fillPlaceholders('${pad:3}', 'm', subs)).toBe('xxx');
    expect(JSON.parse(fillPlaceholders('${nested_json:3}', 'm', subs))).toEqual({ a: { a: { a: 1 } } });
    expect(() => fillPlaceholders('${pad:99999999}', 'm', subs)).toThrow(/whole number/);
  });
});

describe('forged tokens', () => {
  it('are each wrong in the one way they claim', async () => {
    const issuer = await createRedteamIssuer(await mkdtemp(path.join(tmpdir(), 'bastion-forge-')));
    const options = { issuer, audience: 'http://127.0.0.1:1/mcp', tokenType: 'bastion-cap+jwt', sub: 'agent:f', cap: [{ tool: 'rec__echo' }], ttlMs: 60_000 };
    const none = await forgeToken('alg_none', options);
    expect(decodeProtectedHeader(none).alg).toBe('none');
    expect(none.endsWith('.')).toBe(true);
    const tampered = await forgeToken('tampered_cap', { ...options, claimedCap: [{ tool: '*' }] });
    expect(decodeJwt(tampered).cap).toEqual([{ tool: '*' }]);
    const expired = decodeJwt(await forgeToken('expired', options));
    expect(expired.exp!).toBeLessThan(Date.now() / 1000);
    expect(decodeJwt(await forgeToken('wrong_audience', options)).aud).not.toBe(options.audience);
    expect(decodeProtectedHeader(await forgeToken('hs256_public_key', options)).alg).toBe('HS256');
    expect(decodeProtectedHeader(await forgeToken('wrong_key', options)).kid).toBe(issuer.privateJwk.kid);
  });
});

describe('verdict helpers', () => {
  it('attributes refusals to defenses by code, then by stage', () => {
    expect(defenseOf({ stage: 'authenticate', code: 'BASTION_TOKEN_EXPIRED' })).toBe('tokens');
    expect(defenseOf({ stage: 'authorize', code: 'BASTION_DELEGATION_REFUSED' })).toBe('delegation');
    expect(defenseOf({ stage: 'resolve', code: 'BASTION_TOOL_QUARANTINED' })).toBe('pins');
    expect(defenseOf({ stage: 'resolve', code: 'BASTION_PLUGIN_NAME_TAKEN' })).toBe('plugin_identity');
    expect(defenseOf({ stage: 'resolve', code: 'BASTION_TOOL_BLOCKED' })).toBe('filters');
    expect(defenseOf({ stage: 'limit', code: 'BASTION_RATE_LIMITED' })).toBe('quotas');
    expect(defenseOf({ stage: 'admit', code: 'BASTION_SESSION_INVALID' })).toBe('front_door');
    expect(defenseOf({ stage: 'approve', code: 'HTTP_403' })).toBe('approvals');
  });

  it('measures a flood against the tightest quota, or the default one when quotas are configured away', () => {
    const config = parseConfig({ limits: { principal: { requests_per_minute: 600, burst: 60 }, tools: [{ tool: 'rec__*', requests_per_minute: 60, burst: 5 }] } });
    expect(quotaAllowance(config, 'rec__echo', 2_000)).toBe(5 + 2);
    expect(quotaAllowance(config, 'other__x', 2_000)).toBe(60 + 20);
    const none = parseConfig({ limits: { principal: { requests_per_minute: 0, burst: 1 } } });
    expect(quotaAllowance(none, 'rec__echo', 1_000)).toBe(60 + 10);
  });
});

describe('report', () => {
  const configuration = (name: string, off: string[], successes: number): ConfigurationResult => ({
    name,
    defenses_off: off as ConfigurationResult['defenses_off'],
    benign: { calls: 30, p50_ms: 3, p95_ms: 6, p50_se_ms: 0.2, broker_p50_ms: 1, broker_p50_se_ms: 0.05 },
    refusal_p50_ms_by_stage: { authenticate: 0.1 },
    attempts: Array.from({ length: 2 }, (_, i) => ({
      case: `c${i}`,
      class: 'forged_token',
      repetition: 1,
      success: i < successes,
      ...(i < successes ? {} : { stopped_by: { defense: 'tokens' as const, stage: 'authenticate', code: 'BASTION_TOKEN_EXPIRED' } }),
      evidence: '<script>alert(1)</script>',
      steps: [],
      ms: 1,
    })),
    ms: 1,
  });
  const sample = (): CampaignResult => {
    const configurations = [configuration('full', [], 0), configuration('no-tokens', ['tokens'], 2), configuration('no-policy', ['policy'], 0)];
    const classes = [
      { id: 'forged_token', title: 'Forged', threat: 't', defended_by: ['tokens' as const], cases: 2, applicable: true },
      { id: 'plugin_sandbox', title: 'Plugins', threat: 't', defended_by: ['sandbox_limits' as const], cases: 1, applicable: false, not_applicable_reason: 'not applicable in this build' },
    ];
    const matrix: CampaignResult['matrix'] = { forged_token: {}, plugin_sandbox: {} };
    for (const c of configurations) {
      const successes = c.attempts.filter((a) => a.success).length;
      matrix.forged_token![c.name] = { applicable: true, attempts: 2, successes, rate: successes / 2, stopped_by: successes ? {} : { 'tokens (BASTION_TOKEN_EXPIRED)': 2 }, errors: 0 };
      matrix.plugin_sandbox![c.name] = { applicable: false, attempts: 0, successes: 0, rate: null, stopped_by: {}, errors: 0 };
    }
    const corpus = { classes: classes.map((c) => ({ id: c.id, title: c.title, threat: c.threat, defendedBy: [...c.defended_by], requires: [], cases: [], sources: [] })) };
    return { generated_at: 'now', quick: true, repetitions: 1, classes, configurations, matrix, findings: findingsOf(corpus, configurations, matrix), breached: false };
  };

  it('finds the layer whose removal changes nothing', () => {
    const findings = sample().findings;
    expect(findings).toContain('Without tokens: forged_token 0% → 100%.');
    expect(findings.some((f) => f.startsWith('FINDING: switching off policy changed nothing'))).toBe(true);
    expect(findings.some((f) => f.includes('Latency cost of tokens') && f.includes('(within noise)'))).toBe(true);
  });

  it('draws one heat-map cell per class and configuration and one bar per configuration, escaping evidence', () => {
    const html = htmlReport(sample());
    expect(html.match(/<rect class="cell/g)).toHaveLength(2 * 3);
    expect(html.match(/<rect class="cell na"/g)).toHaveLength(3);
    expect(html.match(/<rect class="bar"/g)).toHaveLength(3);
    expect(html).not.toContain('<script>alert(1)</script>');
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
  });

  it('prints the matrix for a terminal', () => {
    const text = terminalReport(sample());
    expect(text).toMatch(/forged_token\s+2\s+0\/2\s+2\/2 100%\s+0\/2/);
    expect(text).toMatch(/plugin_sandbox\s+1\s+not applicable in this build/);
  });
});
