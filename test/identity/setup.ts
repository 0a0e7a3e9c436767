/**
 * What every sign-in test starts from: a work folder, the client's redirect
 * listener, the test's OpenID provider as the organisation's IdP (unless the
 * test wants the development IdP), a broker whose grants policy data the
 * test gives, and Chromium.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { launchChromium } from '../helpers/chromium.ts';
import { startTestIdp, type TestIdp } from '../helpers/idp.ts';
import { startRedirectListener, useRedirect } from './flow.ts';

export interface SignInSetup {
  work: string;
  redirect: string;
  /** The test's IdP; undefined with `devIdp`. */
  idp: TestIdp | undefined;
  t: TestBroker;
  browser: Browser;
  page: Page;
  close(): Promise<void>;
}

export async function startSignInSetup(options: {
  /** data.bastion for the grants policy (grants_by_group, grants_ttl_s, …). */
  grants: Record<string, unknown>;
  /** More broker config; its `identity` is merged over the IdP's. */
  broker?: Record<string, unknown>;
  /** Sign in at the broker's own development IdP instead of the test's. */
  devIdp?: boolean;
}): Promise<SignInSetup> {
  const work = await mkdtemp(path.join(tmpdir(), 'bastion-sign-in-'));
  const listener = await startRedirectListener();
  useRedirect(listener.uri);
  let t: TestBroker | undefined;
  const idp = options.devIdp ? undefined : await startTestIdp({ bastionCallbacks: () => [`${new URL(t!.url).origin}/oauth/callback`] });
  const data = path.join(work, 'data.json');
  await writeFile(data, JSON.stringify({ bastion: options.grants }));
  const { identity, policy, ...rest } = (options.broker ?? {}) as { identity?: object; policy?: object };
  t = await startTestBroker({
    ...rest,
    policy: { ...policy, data },
    identity: { ...(idp ? { upstream: await idp.upstreamConfig(work) } : {}), ...identity },
  });
  const browser = await launchChromium();
  const page = await browser.newPage();
  return {
    work,
    redirect: listener.uri,
    idp,
    t,
    browser,
    page,
    async close() {
      await browser.close();
      await t?.close();
      await idp?.close();
      await listener.close();
      await rm(work, { recursive: true, force: true });
    },
  };
}
