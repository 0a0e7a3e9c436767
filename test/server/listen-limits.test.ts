/**
 * 2026-07-28 listen streams hold a connection each (the SDK's handler also caps
 * its open streams for everyone), so a principal holds at most
 * `limits.sessions_per_principal` of them: one principal cannot use up the
 * places of another. A refused stream is audited; a closed one frees its place.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { envelope, MODERN } from '../helpers/modern.ts';

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker({ limits: { sessions_per_principal: 2 } });
});
afterAll(async () => {
  await t?.close();
});

/** Opens a listen stream (list changes only) and reads until its acknowledgement; `close()` ends it. */
async function listen(token: string): Promise<{ status: number; body?: { error?: { code: number; message: string; data?: { code?: string } } }; close(): Promise<void> }> {
  const controller = new AbortController();
  const response = await fetch(t.url, {
    method: 'POST',
    signal: controller.signal,
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${token}`,
      'mcp-protocol-version': MODERN,
      'mcp-method': 'subscriptions/listen',
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'subscriptions/listen', params: { notifications: { toolsListChanged: true }, _meta: envelope() } }),
  });
  const close = async () => {
    controller.abort();
  };
  if (!response.headers.get('content-type')?.startsWith('text/event-stream')) {
    return { status: response.status, body: (await response.json()) as never, close };
  }
  // The stream is open once its acknowledgement arrives.
  const reader = response.body!.getReader();
  let seen = '';
  while (!seen.includes('notifications/subscriptions/acknowledged')) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the listen stream ended before its acknowledgement: ${seen}`);
    seen += new TextDecoder().decode(value);
  }
  return {
    status: response.status,
    close: async () => {
      controller.abort();
      await reader.cancel().catch(() => undefined);
    },
  };
}

describe('listen streams per principal', () => {
  it('a principal holds at most the cap; the next is refused and audited; another principal is unaffected; a closed stream frees its place', async () => {
    const alice = await t.mint({ sub: 'agent:listen-alice' });
    const bob = await t.mint({ sub: 'agent:listen-bob' });
    const first = await listen(alice);
    const second = await listen(alice);
    expect([first.status, second.status]).toEqual([200, 200]);

    const mark = await t.auditMark();
    const third = await listen(alice);
    expect(third.status).toBe(429);
    expect(third.body?.error?.data).toMatchObject({ code: 'BASTION_SESSIONS_EXCEEDED' });
    expect(third.body?.error?.message).toContain('already holds 2 listen streams (limit 2)');
    const records = await t.auditSince(mark);
    expect(records.some((r) => r.outcome === 'denied' && r.denial?.code === 'BASTION_SESSIONS_EXCEEDED' && r.principal?.sub === 'agent:listen-alice')).toBe(true);

    const bobs = await listen(bob);
    expect(bobs.status).toBe(200);

    await first.close();
    // The place comes back when the server sees the stream close; retry until it has.
    let again = await listen(alice);
    for (let attempt = 0; again.status === 429 && attempt < 100; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      again = await listen(alice);
    }
    expect(again.status).toBe(200);
    await Promise.all([second.close(), bobs.close(), again.close()]);
  });
});
