/**
 * The approval page driven in Debian's Chromium (playwright-core): calls
 * appear live without a reload, an approver approves or denies with a
 * click, the agent gets the result or the reason, and hostile arguments
 * render as inert text. Screenshots go to test-artifacts/.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { launchChromium } from '../helpers/chromium.ts';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { approverToken } from '../helpers/approver.ts';

const ARTIFACTS = path.join(ROOT, 'test-artifacts/approvals');
const HOSTILE = `<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>"><svg onload=window.pwned=3>`;

let t: TestBroker;
let browser: Browser;
let page: Page;


beforeAll(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  t = await startTestBroker();
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on('pageerror', (error) => console.log('PAGEERROR', error.message));
  const key = t.broker.devKey!;
  const token = await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:browser');
  await page.goto(`${new URL(t.url).origin}/approvals#token=${token}`);
  await page.waitForSelector('#queue:not([hidden])');
});
afterAll(async () => {
  await browser?.close();
  await t?.close();
});

/** Starts the call and returns at once; the caller awaits `result` after deciding. */
async function startWipe(sub: string, args: Record<string, unknown>): Promise<{ result: Promise<CallToolResult> }> {
  const client = await t.connect(await t.mint({ sub, cap: [{ tool: 'rec__wipe' }] }));
  const result = client.callTool({ name: 'rec__wipe', arguments: args }) as Promise<CallToolResult>;
  result.catch(() => undefined);
  return { result };
}

describe('approval page in Chromium', () => {
  it('signs in from the link and removes the token from the address bar', async () => {
    expect(page.url()).not.toContain('token=');
    await expect.poll(() => page.textContent('#who')).toContain('approver:browser');
  });

  it('says why a sign-in link opened a second time does not work, and what to do', async () => {
    const key = t.broker.devKey!;
    const link = `${new URL(t.url).origin}/approvals#token=${await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:twice')}`;
    // Each visit in its own browser context: no session cookie carries over.
    const first = await browser.newContext();
    const firstPage = await first.newPage();
    await firstPage.goto(link);
    await firstPage.waitForSelector('#queue:not([hidden])');
    await first.close();
    const second = await browser.newContext();
    const again = await second.newPage();
    await again.goto(link);
    await again.waitForSelector('#signin:not([hidden])');
    await expect.poll(() => again.textContent('#signin-error')).toContain('this sign-in link was already used');
    expect(await again.textContent('#signin-error')).toContain('ask for a new one');
    expect(again.url()).not.toContain('token=');
    expect(await again.isHidden('#queue')).toBe(true);
    await again.screenshot({ path: path.join(ARTIFACTS, '0-link-already-used.png') });
    await second.close();
  });

  it('shows a new call live, without a reload, and approving it returns the result to the agent', async () => {
    await page.evaluate('window.marker = 42');
    const { result } = await startWipe('agent:browser-ok', { reason_for_wipe: 'cleanup', long: 'x'.repeat(2000) });
    const card = page.locator('.card', { hasText: 'agent:browser-ok' });
    await card.waitFor();
    expect(await page.evaluate('window.marker')).toBe(42);
    await expect.poll(() => card.locator('details.fold summary').count()).toBe(1);
    await page.screenshot({ path: path.join(ARTIFACTS, '1-pending.png'), fullPage: true });
    await card.getByRole('button', { name: 'Approve' }).click();
    const outcome = await result;
    expect(outcome.content).toEqual([{ type: 'text', text: 'wiped' }]);
    await page.locator('#history li', { hasText: 'agent:browser-ok' }).waitFor();
    await page.screenshot({ path: path.join(ARTIFACTS, '2-approved.png'), fullPage: true });
  });

  it('denying needs a reason, and the agent receives it', async () => {
    const { result } = await startWipe('agent:browser-deny', {});
    const card = page.locator('.card', { hasText: 'agent:browser-deny' });
    await card.waitFor();
    await card.getByRole('button', { name: 'Deny' }).click();
    await expect.poll(() => card.locator('[role=alert]').textContent()).toContain('reason');
    await card.getByLabel('Reason').fill('not without a change ticket');
    await card.getByRole('button', { name: 'Deny' }).click();
    const outcome = await result;
    expect(outcome._meta?.['bastion/denial']).toMatchObject({ code: 'BASTION_APPROVAL_DENIED' });
    expect(JSON.stringify(outcome.content)).toContain('not without a change ticket');
    await page.screenshot({ path: path.join(ARTIFACTS, '3-denied.png'), fullPage: true });
  });

  it('renders HTML and script in arguments as inert text', async () => {
    let dialogs = 0;
    page.on('dialog', (dialog) => {
      dialogs++;
      void dialog.dismiss();
    });
    const { result } = await startWipe('agent:browser-xss', { note: HOSTILE, [HOSTILE]: 1 });
    const card = page.locator('.card', { hasText: 'agent:browser-xss' });
    await card.waitFor();
    expect(await card.locator('pre.args').textContent()).toContain('<script>window.pwned=2</script>');
    expect(await card.locator('img, script, svg').count()).toBe(0);
    expect(await page.evaluate('window.pwned')).toBeUndefined();
    expect(dialogs).toBe(0);
    await page.screenshot({ path: path.join(ARTIFACTS, '4-hostile-arguments.png'), fullPage: true });
    await card.getByLabel('Reason').fill('hostile input');
    await card.getByRole('button', { name: 'Deny' }).click();
    await result;
  });

  it('shows hidden and direction-changing characters as marked escapes, with a warning on the request', async () => {
    const violations: string[] = [];
    page.on('console', (message) => {
      if (/Content.Security.Policy|Refused to/i.test(message.text())) violations.push(message.text());
    });
    // Reads as "/srv/tmp/report.txt…" where the override turns the tail around; the zero-width
    // space splits a name that looks whole, and the agent's own name carries one too.
    const reversed = '/srv/tmp/\u202Etxt.exe';
    const sub = 'agent:browser\u200Bbidi';
    const { result } = await startWipe(sub, { path: reversed, note: 'rm\u200B -rf' });
    const card = page.locator('.card', { hasText: 'agent:browser' }).filter({ has: page.locator('.warning') });
    await card.waitFor();
    const args = (await card.locator('pre.args').textContent())!;
    // What is rendered differs from the raw value: the characters are gone, their escapes are there.
    expect(args).toContain('/srv/tmp/\\u202Etxt.exe');
    expect(args).toContain('rm\\u200B -rf');
    expect(args).not.toMatch(/[\u202E\u200B]/);
    expect(await card.locator('pre.args').innerText()).toContain('\\u202E');
    const marks = card.locator('pre.args mark.hidden-char');
    expect(await marks.count()).toBe(2);
    expect(await marks.first().getAttribute('title')).toBe('U+202E RIGHT-TO-LEFT OVERRIDE');
    // The agent's name too, and the warning says where.
    expect(await card.locator('.meta mark.hidden-char').first().textContent()).toBe('\\u200B');
    const warning = (await card.locator('.warning').textContent())!;
    expect(warning).toContain('Hidden characters');
    expect(warning).toContain('arguments.path: U+202E RIGHT-TO-LEFT OVERRIDE');
    expect(warning).toContain('principal.sub: U+200B ZERO WIDTH SPACE');
    expect(await card.locator('.warning').isVisible()).toBe(true);
    // Marked visibly: the mark has a background of its own.
    expect(
      await marks.first().evaluate((node) => (globalThis as unknown as { getComputedStyle(n: unknown): { backgroundColor: string } }).getComputedStyle(node).backgroundColor),
    ).not.toBe('rgba(0, 0, 0, 0)');
    expect(violations).toEqual([]);
    await page.screenshot({ path: path.join(ARTIFACTS, '6-hidden-characters.png'), fullPage: true });
    await card.getByLabel('Reason').fill('hidden characters');
    await card.getByRole('button', { name: 'Deny' }).click();
    await result;
    // The history line reveals them as well.
    const line = page.locator('#history li', { hasText: 'hidden characters' }).first();
    await line.waitFor();
    expect(await line.locator('mark.hidden-char').count()).toBeGreaterThan(0);
  });

  it('keeps the broker’s refusal of a vote on the card, so the approver sees why (self-approval)', async () => {
    const { result } = await startWipe('approver:browser', {});
    const card = page.locator('.card', { hasText: 'approver:browser' }).filter({ hasText: 'rec__wipe' }).first();
    await card.waitFor();
    await card.evaluate((node) => node.setAttribute('data-before-vote', ''));
    await card.getByRole('button', { name: 'Approve' }).click();
    // The refusal is answered and the list re-rendered (the card is a new element), the reason still shown.
    await expect.poll(() => card.getAttribute('data-before-vote')).toBeNull();
    expect(await card.locator('[role=alert]').textContent()).toContain('you cannot decide on a call you (or your delegation chain) requested');
    const other = await browser.newPage();
    const key = t.broker.devKey!;
    await other.goto(`${new URL(t.url).origin}/approvals#token=${await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:cleanup')}`);
    // Another approver ends it (the call is still pending: the refused vote changed nothing).
    const pending = other.locator('.card', { hasText: 'approver:browser' }).filter({ hasText: 'rec__wipe' });
    await pending.waitFor();
    await pending.getByLabel('Reason').fill('test cleanup');
    await pending.getByRole('button', { name: 'Deny' }).click();
    await result;
    await other.close();
  });

  it('works by keyboard: j to focus a call, a to approve', async () => {
    const { result } = await startWipe('agent:browser-keys', {});
    await page.locator('.card', { hasText: 'agent:browser-keys' }).waitFor();
    await page.locator('body').click({ position: { x: 5, y: 5 } });
    await page.keyboard.press('j');
    await page.keyboard.press('a');
    expect((await result).content).toEqual([{ type: 'text', text: 'wiped' }]);
  });

  it('is readable on a phone-sized screen', async () => {
    const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true });
    const key = t.broker.devKey!;
    await phone.goto(`${new URL(t.url).origin}/approvals#token=${await approverToken(key.privateJwk, key.issuer, t.door.resource, 'approver:phone')}`);
    await phone.waitForSelector('#queue:not([hidden])');
    const { result } = await startWipe('agent:browser-phone', { path: '/srv/tmp/a-rather-long-path/that/should/wrap/nicely/on/a/small/screen.txt' });
    const card = phone.locator('.card', { hasText: 'agent:browser-phone' });
    await card.waitFor();
    const width = await phone.evaluate<number>('document.documentElement.scrollWidth');
    expect(width).toBeLessThanOrEqual(390);
    await phone.screenshot({ path: path.join(ARTIFACTS, '5-phone.png'), fullPage: true });
    await card.getByLabel('Reason').fill('phone test');
    await card.getByRole('button', { name: 'Deny' }).click();
    await result;
    await phone.close();
  });
});
