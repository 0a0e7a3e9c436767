/**
 * `bastion redteam --quick` end to end: the real command starts a real
 * broker per configuration (full, then each defense switched off) and runs
 * the shipped corpus. With every defense on nothing may get through; with a
 * defense off, the classes it exists for must get through, which proves both
 * that the defense works and that the attack is real. The HTML report is
 * then opened in Chromium under a strict CSP and its charts counted.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import { DEFAULT_CORPUS_DIR, loadCorpus } from '../../broker/redteam/corpus.ts';
import type { CampaignResult } from '../../broker/redteam/run.ts';
import { ROOT } from '../helpers/broker.ts';

const ARTIFACTS = path.join(ROOT, 'test-artifacts/redteam');

let dir: string;
let result: CampaignResult;
let html: string;
let exitCode: number | null;
let stdout: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-redteam-test-'));
  const json = path.join(dir, 'redteam.json');
  const report = path.join(dir, 'redteam.html');
  const outcome = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      [path.join(ROOT, 'broker/redteam/cli.ts'), '--quick', '--json', json, '--report', report],
      { cwd: ROOT, maxBuffer: 16 * 1024 * 1024, timeout: 240_000 },
      (error, out, err) => resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout: out, stderr: err }),
    );
  });
  exitCode = outcome.code;
  stdout = outcome.stdout;
  if (outcome.code !== 0 && outcome.code !== 1) throw new Error(`bastion redteam failed (${outcome.code}):\n${outcome.stderr}`);
  result = JSON.parse(await readFile(json, 'utf8')) as CampaignResult;
  html = await readFile(report, 'utf8');
  await mkdir(ARTIFACTS, { recursive: true });
}, 260_000);

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A sandbox limit ended the call: CPU or wall clock, memory, or the process the isolate took down. */
const SANDBOX_LIMIT_CODES = ['SANDBOX_TIMEOUT', 'SANDBOX_MEMORY', 'SANDBOX_CRASHED'];

const cell = (attackClass: string, configuration: string) => result.matrix[attackClass]?.[configuration];
const rate = (attackClass: string, configuration: string) => cell(attackClass, configuration)?.rate ?? null;

describe('bastion redteam --quick against the default configuration', () => {
  it('runs the full configuration and one ablation per switchable defense, each to completion', () => {
    expect(result.configurations.map((c) => c.name)).toEqual(['full', 'no-tokens', 'no-policy', 'no-approvals', 'no-filters', 'no-quotas']);
    for (const configuration of result.configurations) {
      expect(configuration.error, configuration.name).toBeUndefined();
      expect(configuration.benign?.calls, configuration.name).toBeGreaterThanOrEqual(20);
      expect(configuration.attempts.filter((a) => a.error).map((a) => `${a.case}: ${a.error}`), configuration.name).toEqual([]);
    }
  });

  it('reports every attack class of the corpus and runs every case, the plugin cases included', async () => {
    const corpus = await loadCorpus([DEFAULT_CORPUS_DIR]);
    expect(result.classes.map((c) => c.id).sort()).toEqual(corpus.classes.map((c) => c.id).sort());
    for (const attackClass of result.classes) {
      expect(Object.keys(result.matrix[attackClass.id] ?? {}).sort(), attackClass.id).toEqual(result.configurations.map((c) => c.name).sort());
      expect(attackClass.applicable, attackClass.id).toBe(true);
      expect(cell(attackClass.id, 'full')?.attempts, attackClass.id).toBe(corpus.classes.find((c) => c.id === attackClass.id)!.cases.length);
    }
    const plugins = result.classes.find((c) => c.id === 'plugin_sandbox');
    expect(plugins).toMatchObject({ applicable: true, cases: 6 });
    expect(plugins?.not_applicable_reason).toBeUndefined();
    expect(stdout).not.toMatch(/not applicable in this build/);
    // Each plugin case really ran: its plugin was installed and its hostile call got an answer from the sandbox.
    for (const configuration of result.configurations) {
      const attempts = configuration.attempts.filter((a) => a.class === 'plugin_sandbox');
      expect(attempts.map((a) => a.case).sort(), configuration.name).toEqual([
        'plugin-audit-flood',
        'plugin-cpu-bomb',
        'plugin-escape-constructor',
        'plugin-escape-require',
        'plugin-memory-bomb',
        'plugin-redos-schema',
      ]);
      for (const attempt of attempts) expect(attempt.steps.find((s) => s.kind === 'install_plugin'), `${configuration.name} ${attempt.case}`).toMatchObject({ ok: true });
    }
  });

  it('stops every plugin case with all defenses on, in the sandbox (sandbox_limits, execute stage)', () => {
    expect(cell('plugin_sandbox', 'full')).toMatchObject({ applicable: true, attempts: 6, successes: 0, rate: 0, errors: 0 });
    const full = result.configurations.find((c) => c.name === 'full')!;
    const byCase = Object.fromEntries(full.attempts.filter((a) => a.class === 'plugin_sandbox').map((a) => [a.case, a]));
    for (const attempt of Object.values(byCase)) expect(attempt, attempt.case).toMatchObject({ success: false, stopped_by: { defense: 'sandbox_limits', stage: 'execute' } });
    // The escapes find no require and no Function constructor in the isolate: the plugin throws.
    expect(byCase['plugin-escape-require']!.stopped_by!.code).toBe('SANDBOX_PLUGIN_ERROR');
    expect(byCase['plugin-escape-constructor']!.stopped_by!.code).toBe('SANDBOX_PLUGIN_ERROR');
    // The bombs hit one of the manifest's limits (which one first depends on how loaded the machine is),
    // and the broker kept answering its health check.
    for (const id of ['plugin-cpu-bomb', 'plugin-memory-bomb']) expect(SANDBOX_LIMIT_CODES, id).toContain(byCase[id]!.stopped_by!.code);
    for (const id of ['plugin-cpu-bomb', 'plugin-memory-bomb']) expect(byCase[id]!.evidence, id).toMatch(/health check answered in \d+ ms; \w+ ended/);
    // A log flood without the grant ends at the per-call cap; its audit record stays small.
    expect(byCase['plugin-audit-flood']!.stopped_by!.code).toBe('SANDBOX_CAPABILITY_DENIED');
    expect(byCase['plugin-audit-flood']!.evidence).toMatch(/the largest audit record of hostile-logflood__flood is \d{3,4} bytes/);
    // The catastrophic pattern runs on RE2: the argument is refused at once and the bystander answers.
    expect(byCase['plugin-redos-schema']!.stopped_by!.code).toBe('SANDBOX_INVALID_ARGUMENTS');
    expect(byCase['plugin-redos-schema']!.evidence).toMatch(/health check answered in \d+ ms; the agent received text matching \/pong from the bystander\//);
    expect(stdout).toMatch(/plugin_sandbox\s+6\s+0\/6/);
    // No other layer is what stops them: the plugin cases stay stopped with any one of them off.
    for (const configuration of result.configurations) expect(rate('plugin_sandbox', configuration.name), configuration.name).toBe(0);
  });

  it('stops the plugin overreach cases in every configuration: the impostor is never loaded (plugin_identity), the hoarder meets its kv quota (sandbox_limits)', () => {
    expect(cell('plugin_overreach', 'full')).toMatchObject({ applicable: true, attempts: 2, successes: 0, rate: 0, errors: 0 });
    const full = result.configurations.find((c) => c.name === 'full')!;
    const byCase = Object.fromEntries(full.attempts.filter((a) => a.class === 'plugin_overreach').map((a) => [a.case, a]));
    expect(byCase['plugin-identity-theft']).toMatchObject({ success: false, stopped_by: { defense: 'plugin_identity', stage: 'resolve', code: 'BASTION_PLUGIN_NAME_TAKEN' } });
    expect(byCase['plugin-kv-quota-exhaustion']).toMatchObject({ success: false, stopped_by: { defense: 'sandbox_limits', stage: 'execute', code: 'SANDBOX_CAPABILITY_DENIED' } });
    // Both plugins of the theft were installed; the impostor was refused at load, not missing.
    expect(byCase['plugin-identity-theft']!.steps.filter((s) => s.kind === 'install_plugin' && s.ok)).toHaveLength(2);
    for (const configuration of result.configurations) expect(rate('plugin_overreach', configuration.name), configuration.name).toBe(0);
  });

  it('lets no attack through with every defense on, and exits 0', () => {
    const through = result.configurations.find((c) => c.name === 'full')!.attempts.filter((a) => a.success).map((a) => `${a.case}: ${a.evidence}`);
    expect(through).toEqual([]);
    expect(result.breached).toBe(false);
    expect(exitCode).toBe(0);
    expect(stdout).toContain('RESULT: no attack succeeded against the full configuration.');
  });

  it('names the defense that stopped each attempt with all defenses on', () => {
    const full = result.configurations.find((c) => c.name === 'full')!;
    for (const attempt of full.attempts) expect(attempt.stopped_by?.defense, attempt.case).not.toBe('unknown');
    const stoppers = (attackClass: string) => Object.keys(cell(attackClass, 'full')!.stopped_by).join(' ');
    expect(stoppers('forged_token')).toMatch(/^(tokens \(BASTION_TOKEN_[A-Z_]+\) ?)+$/);
    expect(stoppers('token_replay')).toContain('BASTION_TOKEN_REPLAYED');
    expect(stoppers('capability_escape')).toContain('policy (BASTION_POLICY_DENIED)');
    expect(stoppers('argument_constraints')).toBe('policy (BASTION_POLICY_DENIED)');
    expect(stoppers('delegation_escalation')).toBe('delegation (BASTION_DELEGATION_REFUSED)');
    expect(stoppers('approval_bypass')).toMatch(/^(approvals \([A-Z0-9_]+\) ?)+$/);
    expect(stoppers('tool_poisoning')).toContain('approvals');
    expect(stoppers('rug_pull')).toBe('pins (BASTION_TOOL_QUARANTINED)');
    expect(stoppers('secret_leak')).toContain('filters (redacted');
    expect(stoppers('result_injection')).toContain('filters (flagged');
    expect(stoppers('flood')).toContain('quotas (BASTION_RATE_LIMITED)');
    expect(stoppers('payload_bomb')).toContain('front_door (BASTION_REQUEST_INVALID)');
    // Refused at the door before any session work, so the broker's live session count stays put.
    expect(stoppers('session_exhaustion')).toBe('front_door (BASTION_REQUEST_INVALID)');
    for (const attempt of full.attempts.filter((a) => a.class === 'session_exhaustion')) expect(attempt.evidence, attempt.case).toMatch(/live sessions before the attempt and \d+ after it \(\+0\)/);
    expect(stoppers('plugin_sandbox')).toMatch(/^(sandbox_limits \(SANDBOX_[A-Z_]+\) ?)+$/);
    expect(Object.keys(cell('plugin_overreach', 'full')!.stopped_by).sort()).toEqual(['plugin_identity (BASTION_PLUGIN_NAME_TAKEN)', 'sandbox_limits (SANDBOX_CAPABILITY_DENIED)']);
    expect(stoppers('authorization_server')).toMatch(/^(authorization_server \(invalid_[a-z_]+\) ?)+$/);
    expect(stoppers('headless_identity')).toMatch(/^(authorization_server \((invalid_request|access_denied)\) ?)+$/);
    // Each forged or leaked workload token was refused for what is wrong with it.
    const forged = full.attempts.find((a) => a.case === 'exchange-forged-workload')!;
    expect(JSON.stringify(forged)).toMatch(/alg none\): BASTION_TOKEN_ALG_REFUSED.*public key: BASTION_TOKEN_ALG_REFUSED.*kid: BASTION_TOKEN_SIGNATURE_INVALID.*own issuer: BASTION_TOKEN_ISSUER_UNTRUSTED.*jwk header\): BASTION_TOKEN_HEADER_REFUSED.*another server: BASTION_TOKEN_AUDIENCE_INVALID.*expired: BASTION_TOKEN_EXPIRED.*a day: BASTION_TOKEN_LIFETIME_TOO_LONG.*workload token: BASTION_TOKEN_AUDIENCE_INVALID.*ID-JAG: BASTION_TOKEN_TYPE_REFUSED/);
  });

  it('shows each defense stopping the classes it exists for: switch it off and they get through', () => {
    expect(rate('forged_token', 'no-tokens')).toBe(1);
    expect(rate('token_replay', 'no-tokens')).toBe(1);
    expect(rate('capability_escape', 'no-policy')).toBeGreaterThan(0);
    expect(rate('argument_constraints', 'no-policy')).toBe(1);
    expect(rate('approval_bypass', 'no-approvals')).toBe(1);
    // One case follows the description (parked for a human: approvals stop it), one reads the
    // listing (the description is withheld: the descriptor check, under filters, stops it).
    expect(rate('tool_poisoning', 'no-approvals')).toBe(0.5);
    expect(rate('tool_poisoning', 'no-filters')).toBe(1);
    expect(rate('secret_leak', 'no-filters')).toBe(1);
    expect(rate('result_injection', 'no-filters')).toBe(1);
    expect(rate('flood', 'no-quotas')).toBe(1);
    expect(rate('payload_bomb', 'no-quotas')).toBeGreaterThan(0);
    // ...and only those: a defense switched off opens no unrelated class.
    expect(rate('forged_token', 'no-policy')).toBe(0);
    expect(rate('secret_leak', 'no-tokens')).toBe(0);
    expect(rate('flood', 'no-filters')).toBe(0);
    // The high-risk call outside the capability: with policy off, approval still holds it.
    const wipe = result.configurations.find((c) => c.name === 'no-policy')!.attempts.find((a) => a.case === 'cap-high-risk-tool')!;
    expect(wipe).toMatchObject({ success: false, stopped_by: { defense: 'approvals' } });
  });

  it('prints a finding for each ablation, and names layers whose removal changes nothing', () => {
    for (const defense of ['tokens', 'policy', 'approvals', 'filters', 'quotas']) {
      expect(result.findings.some((f) => f.startsWith(`Without ${defense}:`) || f.includes(`switching off ${defense} changed nothing`)), defense).toBe(true);
    }
    expect(result.findings.some((f) => f.startsWith('No ablation run for sandbox_limits: switching it off only lifts'))).toBe(true);
    // A class that names a defense which, switched off alone, let none of it through is called out
    for (const attackClass of result.classes.filter((c) => c.applicable)) {
      for (const defense of attackClass.defended_by) {
        const ablation = `no-${defense}`;
        if (!result.configurations.some((c) => c.name === ablation)) continue;
        const opened = (rate(attackClass.id, ablation) ?? 0) > (rate(attackClass.id, 'full') ?? 0);
        expect(opened || result.findings.some((f) => f.startsWith(`FINDING: ${attackClass.id} names ${defense}`)), `${attackClass.id} / ${defense}`).toBe(true);
      }
    }
    for (const configuration of result.configurations) expect(configuration.benign?.p50_ms, configuration.name).toBeGreaterThan(0);
    expect(stdout).toMatch(/Latency cost of policy on a benign call/);
  });
});

describe('the HTML report', () => {
  let browser: Browser;
  let server: Server;

  beforeAll(async () => {
    // Served under a strict CSP: nothing but the page's own style block, by hash; no script at all.
    const style = /<style>([\s\S]*?)<\/style>/.exec(html)![1]!;
    const csp = `default-src 'none'; style-src 'sha256-${createHash('sha256').update(style).digest('base64')}'; script-src 'none'`;
    server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': csp });
      res.end(html);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await new Promise((resolve) => server?.close(resolve));
  });

  it('is self-contained: no script, no external resource', () => {
    expect(html).not.toMatch(/<script/i);
    expect(html).not.toMatch(/\son[a-z]+=/i);
    expect(html).not.toMatch(/\s(?:src|href)=/i);
    expect(html).not.toMatch(/\sstyle=/i);
    expect(html).toContain('http-equiv="Content-Security-Policy"');
  });

  it('renders the heat map and the latency bars in Chromium under a strict CSP, and a screenshot is saved', async () => {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    const violations: string[] = [];
    const requests: string[] = [];
    page.on('console', (message) => {
      if (/Content.Security.Policy|Refused to/i.test(message.text())) violations.push(message.text());
    });
    page.on('request', (request) => requests.push(request.url()));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/report.html`;
    await page.goto(url);
    await page.waitForSelector('#heatmap');

    const cells = await page.locator('#heatmap rect.cell').count();
    expect(cells).toBe(result.classes.length * result.configurations.length);
    expect(await page.locator('#heatmap rect.cell.na').count()).toBe(0);
    expect(await page.locator('#heatmap rect.cell[data-class="plugin_sandbox"][data-config="full"]').getAttribute('data-rate')).toBe('0');
    expect(await page.locator('#latency rect.bar').count()).toBe(result.configurations.length);
    // Cells carry the rate they draw: the forged-token row is red without token checks and green with them.
    expect(await page.locator('#heatmap rect.cell[data-class="forged_token"][data-config="no-tokens"]').getAttribute('data-rate')).toBe('1');
    expect(await page.locator('#heatmap rect.cell[data-class="forged_token"][data-config="full"]').getAttribute('data-rate')).toBe('0');
    const box = await page.locator('#heatmap').boundingBox();
    expect(box!.width).toBeGreaterThan(500);
    expect(await page.locator('#latency rect.bar').first().boundingBox()).not.toBeNull();
    // The inline style applied (it would not, had the CSP refused it).
    expect(await page.evaluate<string>("getComputedStyle(document.querySelector('h1')).fontSize")).toBe('22px');
    expect(violations).toEqual([]);
    expect(requests.filter((r) => !r.endsWith('/favicon.ico'))).toEqual([url]);
    await page.screenshot({ path: path.join(ARTIFACTS, 'report.png'), fullPage: true });
    await page.close();
  });
});
