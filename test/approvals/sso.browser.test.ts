/**
 * Approver single sign-on, driven in Debian's Chromium: approvers sign in to
 * the approval page at the organisation's IdP (a real oidc-provider started
 * here, its own login pages), their roles come from their IdP groups
 * (approvals.sso.roles), and the policy's approval document can demand a
 * role and a recent login (data.bastion.approval_roles,
 * approval_max_auth_age_s). An approver without the role cannot vote; an
 * approver whose login is older than the call allows is sent back to the IdP
 * (max_age, prompt=login) before their vote counts. Screenshots go to
 * test-artifacts/approvals/sso-*.png.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { CallToolResult } from '@modelcontextprotocol/server';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { launchChromium } from '../helpers/chromium.ts';
import { signInAtIdp, startTestIdp, type TestIdp } from '../helpers/idp.ts';

const ARTIFACTS = path.join(ROOT, 'test-artifacts/approvals');
const FRESH_S = 300;

let work: string;
let idp: TestIdp;
let t: TestBroker;
let origin: string;
let browser: Browser;

beforeAll(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  work = await mkdtemp(path.join(tmpdir(), 'bastion-approver-sso-'));
  idp = await startTestIdp({ bastionCallbacks: () => [`${origin}/oauth/callback`, `${origin}/approvals/sso/callback`] });
  idp.users.set('pat', { email: 'pat@example.com', groups: ['sre-leads'] });
  idp.users.set('sam', { email: 'sam@example.com', groups: ['finance-leads', 'engineering'] });
  idp.users.set('nobody', { email: 'nobody@example.com', groups: ['marketing'] });
  const data = path.join(work, 'data.json');
  await writeFile(data, JSON.stringify({ bastion: { approval_roles: ['payments'], approval_max_auth_age_s: FRESH_S } }));
  t = await startTestBroker({
    policy: { data },
    identity: { upstream: await idp.upstreamConfig(work) },
    approvals: { sso: { enabled: true, roles: { approver: ['sre-leads', 'finance-leads'], payments: ['finance-leads'] } } },
  });
  origin = new URL(t.url).origin;
  browser = await launchChromium();
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await t?.close();
  await idp?.close();
  await rm(work, { recursive: true, force: true });
});

const lastSeq = () => t.auditMark();
const recordsSince = (since: number, event: string) => t.auditSince(since, event);

/** A high-risk call in flight (parked for approval); await `result` after deciding. */
async function startWipe(sub: string): Promise<{ result: Promise<CallToolResult> }> {
  const client = await t.connect(await t.mint({ sub, cap: [{ tool: 'rec__wipe' }] }));
  const result = client.callTool({ name: 'rec__wipe', arguments: {} }, { timeout: 120_000 }) as Promise<CallToolResult>;
  result.catch(() => undefined);
  return { result };
}

/** A fresh browser (no cookies) that opens the approval page and signs in at the IdP as `login`. */
async function signInAs(login: string): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${origin}/approvals`);
  await page.waitForSelector('#signin-sso:not([hidden])');
  await Promise.all([page.waitForURL((url) => url.href.startsWith(idp.issuer)), page.click('#signin-sso-link')]);
  await signInAtIdp(page, idp.issuer, login);
  await page.waitForURL((url) => url.href.startsWith(`${origin}/approvals`));
  return { context, page };
}

describe('approver single sign-on', () => {
  it('signs an approver in at the IdP, with the roles their groups hold, on the page’s own session', async () => {
    const since = await lastSeq();
    const { context, page } = await signInAs('pat');
    await page.waitForSelector('#queue:not([hidden])');
    await expect.poll(() => page.textContent('#who')).toContain('pat (approver)');
    const cookies = await context.cookies(`${origin}/approvals`);
    expect(cookies.find((c) => c.name === 'bastion_approver')).toMatchObject({ httpOnly: true, sameSite: 'Strict', path: '/approvals' });
    await page.screenshot({ path: path.join(ARTIFACTS, 'sso-1-signed-in.png'), fullPage: true });
    expect(await recordsSince(since, 'oauth/approver-sign-in')).toContainEqual(expect.objectContaining({ outcome: 'ok', principal: { sub: 'pat', iss: idp.issuer }, detail: expect.objectContaining({ roles: ['approver'], groups: ['sre-leads'] }) }));
    await context.close();
  });

  it('refuses someone whose groups hold no approver role', async () => {
    const since = await lastSeq();
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${origin}/approvals`);
    await page.waitForSelector('#signin-sso:not([hidden])');
    await Promise.all([page.waitForURL((url) => url.href.startsWith(idp.issuer)), page.click('#signin-sso-link')]);
    await signInAtIdp(page, idp.issuer, 'nobody');
    await expect.poll(() => page.textContent('body')).toContain('You hold no approver role');
    await page.screenshot({ path: path.join(ARTIFACTS, 'sso-2-no-role.png'), fullPage: true });
    expect((await context.cookies(`${origin}/approvals`)).find((c) => c.name === 'bastion_approver')).toBeUndefined();
    expect(await recordsSince(since, 'oauth/approver-sign-in')).toContainEqual(expect.objectContaining({ outcome: 'denied', principal: { sub: 'nobody', iss: idp.issuer }, denial: expect.objectContaining({ code: 'oauth:access_denied' }) }));
    await context.close();
  });

  it('an approver whose group lacks the role the call needs cannot vote', async () => {
    const { result } = await startWipe('agent:needs-payments');
    const { context, page } = await signInAs('pat');
    const card = page.locator('.card', { hasText: 'agent:needs-payments' });
    await card.waitFor();
    const since = await lastSeq();
    await card.getByRole('button', { name: 'Approve' }).click();
    await expect.poll(() => card.locator('[role=alert]').textContent()).toContain('needs an approver with role payments');
    await page.screenshot({ path: path.join(ARTIFACTS, 'sso-3-role-missing.png'), fullPage: true });
    expect(await recordsSince(since, 'approval.vote-refused')).toContainEqual(expect.objectContaining({ detail: expect.objectContaining({ approver: 'pat', approver_roles: ['approver'] }) }));
    expect((await t.broker.approvals!.pending()).map((c) => c.principal.sub)).toContain('agent:needs-payments');
    await context.close();
    // Leave nothing parked for the next test.
    const { context: samContext, page: samPage } = await signInAs('sam');
    const samCard = samPage.locator('.card', { hasText: 'agent:needs-payments' });
    await samCard.getByLabel('Reason').fill('cleanup of the test');
    await samCard.getByRole('button', { name: 'Deny' }).click();
    await result;
    await samContext.close();
  });

  it('a stale login is sent back to the IdP before its vote counts, and the fresh one approves', async () => {
    const { result } = await startWipe('agent:needs-fresh-login');
    // sam signed in at the IdP an hour ago (the IdP says so in auth_time).
    idp.tamper = (claims) => ({ ...claims, auth_time: Math.floor(Date.now() / 1000) - 3600 });
    const { context, page } = await signInAs('sam');
    idp.tamper = undefined;
    const card = page.locator('.card', { hasText: 'agent:needs-fresh-login' });
    await card.waitFor();
    const since = await lastSeq();
    // The vote is refused and the page goes to the IdP, which asks for the password again (prompt=login, max_age).
    await Promise.all([page.waitForURL((url) => url.href.startsWith(idp.issuer)), card.getByRole('button', { name: 'Approve' }).click()]);
    expect(await page.locator('input[name="login"]').count()).toBe(1);
    await page.screenshot({ path: path.join(ARTIFACTS, 'sso-4-sign-in-again.png'), fullPage: true });
    expect((await t.broker.approvals!.pending()).find((c) => c.principal.sub === 'agent:needs-fresh-login')?.decisions).toEqual([]);
    const refused = await recordsSince(since, 'approval.vote-refused');
    expect(refused).toContainEqual(expect.objectContaining({ detail: expect.objectContaining({ approver: 'sam', reason: expect.stringMatching(new RegExp(`within the last ${FRESH_S} s`)) }) }));
    await signInAtIdp(page, idp.issuer, 'sam');
    await page.waitForURL((url) => url.href.startsWith(`${origin}/approvals`));
    const again = page.locator('.card', { hasText: 'agent:needs-fresh-login' });
    await again.getByRole('button', { name: 'Approve' }).click();
    const outcome = await result;
    expect(outcome.content).toEqual([{ type: 'text', text: 'wiped' }]);
    expect(await recordsSince(since, 'oauth/approver-sign-in')).toContainEqual(expect.objectContaining({ outcome: 'ok', principal: { sub: 'sam', iss: idp.issuer }, detail: expect.objectContaining({ max_age: FRESH_S }) }));
    await page.screenshot({ path: path.join(ARTIFACTS, 'sso-5-fresh-approved.png'), fullPage: true });
    await context.close();
  });

  it('an IdP answer this browser did not ask for opens nothing', async () => {
    const since = await lastSeq();
    const response = await fetch(`${origin}/approvals/sso/callback?code=stolen&state=forged`, { redirect: 'manual' });
    expect(response.status).toBe(400);
    expect(response.headers.get('set-cookie') ?? '').not.toContain('bastion_approver=');
    expect(await recordsSince(since, 'oauth/approver-sign-in')).toContainEqual(expect.objectContaining({ outcome: 'denied', denial: expect.objectContaining({ reason: expect.stringMatching(/state mismatch/) }) }));
  });

  it('the approver-token link keeps working beside single sign-on', async () => {
    const response = await fetch(`${origin}/approvals/api/sign-in`);
    expect(await response.json()).toEqual({ sso: { url: '/approvals/sso/start' }, token: true });
  });
});
