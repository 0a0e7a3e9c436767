/**
 * A grant the grants policy marks approval.required: after the user allows
 * it, it waits on the approval desk (as `oauth:grant`, with the client, its
 * redirect URI and the capabilities) while the user's browser waits; an
 * approver's approval releases the code, a denial ends the authorization
 * with access_denied, and the user cannot approve their own grant.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { approverToken, eventually, signInApprover, type ApproverClient } from '../helpers/approver.ts';
import { authorization, redeem, registerClient, walk } from './flow.ts';
import { startSignInSetup, type SignInSetup } from './setup.ts';

let setup: SignInSetup;
let origin: string;
let clientId: string;

beforeAll(async () => {
  setup = await startSignInSetup({
    grants: { grants_by_group: { contractors: [{ tool: 'rec__echo' }] }, grants_approval_groups: ['contractors'] },
    broker: { identity: { registration: { enabled: true } } },
  });
  setup.idp!.users.set('bob', { email: 'bob@example.com', groups: ['contractors'] });
  origin = new URL(setup.t.url).origin;
  clientId = await registerClient(origin, 'contractor agent');
}, 60_000);

afterAll(() => setup?.close());

async function approver(sub: string): Promise<ApproverClient> {
  const { devKey } = setup.t.broker;
  return signInApprover(setup.t.url, await approverToken(devKey!.privateJwk, devKey!.issuer, setup.t.door.resource, sub), sub);
}

/** Bob signs in and allows; returns once his browser waits for an approver, with the parked grant. */
async function bobWaits() {
  await setup.page.context().clearCookies();
  const auth = authorization(origin, setup.t.door.resource, clientId);
  const outcome = await walk(setup.page, auth.url, { idp: setup.idp!.issuer, login: 'bob' });
  expect(outcome).toMatchObject({ page: { status: 200, title: 'Waiting for an approver' } });
  const alice = await approver('approver:alice');
  const parked = await eventually(async () => (await alice.pending()).find((c) => c.tool === 'oauth:grant' && c.principal.sub === 'bob'), 'the parked grant');
  expect(parked.arguments).toEqual({ client_id: clientId, client_name: 'contractor agent', redirect_uri: setup.redirect, cap: [{ tool: 'rec__echo' }] });
  return { auth, alice, parked };
}

describe('a grant that needs an approver', () => {
  it('waits for one, and the approval releases the code', async () => {
    const { auth, alice, parked } = await bobWaits();
    // Bob cannot approve his own grant.
    const self = await approver('bob');
    expect((await self.decide(parked.id, 'approve', '', parked.call_hash)).status).toBe(403);
    expect((await alice.decide(parked.id, 'approve', '', parked.call_hash)).status).toBe(200);
    await setup.page.waitForURL((url) => url.href.startsWith(setup.redirect), { timeout: 20_000 });
    const callback = new URL(setup.page.url());
    const token = await redeem(origin, setup.t.door.resource, auth, callback);
    expect(token.status).toBe(200);
    const records = await setup.t.auditRecords();
    expect(records).toEqual(expect.arrayContaining([expect.objectContaining({ event: 'oauth/consent', outcome: 'ok', detail: expect.objectContaining({ approval_id: parked.id }) })]));
  }, 60_000);

  it('a denial ends the authorization with access_denied', async () => {
    const { alice, parked } = await bobWaits();
    expect((await alice.decide(parked.id, 'deny', 'not for contractors', parked.call_hash)).status).toBe(200);
    await setup.page.waitForURL((url) => url.href.startsWith(setup.redirect), { timeout: 20_000 });
    const params = Object.fromEntries(new URL(setup.page.url()).searchParams);
    expect(params).toMatchObject({ error: 'access_denied', error_description: expect.stringContaining('not for contractors') });
    expect(params).not.toHaveProperty('code');
  }, 60_000);
});
