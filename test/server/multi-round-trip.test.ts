/**
 * Multi-round-trip through Bastion (MCP 2026-07-28 `input_required`), with the
 * real v2 SDK on both sides: an upstream (test/fixtures/modern-upstream.ts)
 * that asks for elicitation, sampling and roots, and agents pinned to
 * 2026-07-28 or left on 2025-11-25. Bastion relays the upstream's inputRequests
 * to the calling agent under a requestState it sealed (the upstream's own state
 * inside), and refuses, with an audited denial and no upstream call, a state
 * that is forged, tampered with, replayed by another principal, brought to
 * another call or expired, and inputResponses for requests it never issued.
 * The same for prompts/get and resources/read. Era translation: a 2025-11-25
 * upstream's mid-call request is held for a 2026-07-28 agent and answered by
 * its retry. And what a 2026-07-28 request is told: only its declared
 * capabilities reach the upstream, only logs at its logLevel reach it.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CallToolResult } from '@modelcontextprotocol/client';
import { sharedSecret } from '../../broker/state/shared-secret.ts';
import { ROOT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { RequestStateSealer } from '../../broker/server/request-state.ts';
import { envelope, MODERN, modernCall, modernRequest } from '../helpers/modern.ts';

const MODERN_UPSTREAM = path.join(ROOT, 'test/fixtures/modern-upstream.ts');

let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker({
    connectors: [
      { name: 'modern', transport: 'stdio', command: process.execPath, args: [MODERN_UPSTREAM], env: { VAULT: '1' }, timeout: '20s', protocol: '2026-07-28' },
      // The same upstream spoken to in 2025-11-25: it asks the client mid-call instead.
      { name: 'legacy', transport: 'stdio', command: process.execPath, args: [MODERN_UPSTREAM], timeout: '20s' },
    ],
  });
});

afterAll(async () => {
  await t.close();
});

/** An agent with handlers for everything an upstream may ask, recording what it was asked. */
async function agent(token: string, era: 'modern' | 'legacy') {
  const asked: { method: string; params: unknown }[] = [];
  const client = new Client(
    { name: 'mrtr-agent', version: '1.0.0' },
    {
      capabilities: { elicitation: { form: {} }, sampling: {}, roots: {} },
      ...(era === 'modern' ? { versionNegotiation: { mode: { pin: MODERN } } } : {}),
    },
  );
  client.setRequestHandler('elicitation/create', async (request) => {
    asked.push({ method: request.method, params: request.params });
    return { action: 'accept', content: { ok: true } };
  });
  client.setRequestHandler('sampling/createMessage', async (request) => {
    asked.push({ method: request.method, params: request.params });
    return { role: 'assistant', content: { type: 'text', text: 'short' }, model: 'test-model' };
  });
  client.setRequestHandler('roots/list', async (request) => {
    asked.push({ method: request.method, params: request.params });
    return { roots: [{ uri: 'file:///work', name: 'work' }] };
  });
  await client.connect(new StreamableHTTPClientTransport(new URL(t.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  return { client, asked };
}

const text = (result: unknown) => ((result as CallToolResult).content as { text: string }[]).map((c) => c.text).join('');

/** One raw 2026-07-28 tools/call from an agent that can answer elicitation, sampling and roots; extra params (inputResponses, requestState) as given. */
async function rawCall(token: string, name: string, args: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  const { message } = await modernCall(t.url, token, { name, arguments: args, extra, capabilities: { elicitation: { form: {} }, sampling: {}, roots: {} } });
  return message as { result?: Record<string, unknown> & { requestState?: string; inputRequests?: Record<string, { method: string }> }; error?: { code: number; message: string; data?: unknown } };
}

describe('a 2026-07-28 agent behind a 2026-07-28 upstream', () => {
  it('the SDK agent answers elicitation, sampling and roots through Bastion and gets the final result', async () => {
    const token = await t.mint({ sub: 'agent:mrtr', cap: [{ tool: 'modern__*' }] });
    const { client, asked } = await agent(token, 'modern');
    try {
      const mark = await t.auditMark();
      expect(text(await client.callTool({ name: 'modern__confirm', arguments: { what: 'deploy' } }))).toBe('confirm deploy: accept {"ok":true} (state confirm:deploy)');
      expect(text(await client.callTool({ name: 'modern__summarize', arguments: { text: 'long text' } }))).toBe('summary: short (state summarize:1)');
      expect(text(await client.callTool({ name: 'modern__where', arguments: {} }))).toBe('roots: file:///work (state where:1)');
      expect(text(await client.callTool({ name: 'modern__stepwise', arguments: {} }))).toBe('stepwise done: step:2:file:///work {"action":"accept","content":{"ok":true}}');
      expect(asked.map((a) => a.method)).toEqual(['elicitation/create', 'sampling/createMessage', 'roots/list', 'roots/list', 'elicitation/create']);
      expect(asked[0]!.params).toMatchObject({ message: 'Confirm deploy?' });
      // Each leg is its own audited tools/call: the asking one records what was asked, the retry what was answered.
      const records = await t.auditSince(mark, 'tools/call');
      expect(records).toHaveLength(9);
      expect(records.every((r) => r.outcome === 'ok' && r.protocol === MODERN && r.principal?.sub === 'agent:mrtr')).toBe(true);
      expect(records[0]!.detail).toMatchObject({ input_required: { keys: ['confirm'], methods: ['elicitation/create'] } });
      expect(records[1]!.detail).toMatchObject({ input_responses: ['confirm'] });
      expect(records[1]!.detail?.input_required).toBeUndefined();
    } finally {
      await client.close();
    }
  });

  it('a tool with an output schema: the asking leg passes, and the final structured result is validated and relayed', async () => {
    const token = await t.mint({ sub: 'agent:typed', cap: [{ tool: 'modern__confirm_typed' }] });
    const { client, asked } = await agent(token, 'modern');
    try {
      const result = (await client.callTool({ name: 'modern__confirm_typed', arguments: {} })) as CallToolResult;
      expect(result.structuredContent).toEqual({ answer: 'accept' });
      expect(asked.map((a) => a.method)).toEqual(['elicitation/create']);
    } finally {
      await client.close();
    }
    // The final result of a retry is still held to the output schema: content that breaks it never reaches the agent.
    const first = await rawCall(token, 'modern__confirm_typed', {});
    expect(first.result?.resultType).toBe('input_required');
    const broken = await rawCall(token, 'modern__confirm_typed', {}, { requestState: first.result!.requestState, inputResponses: { confirm: { action: 'decline' } } });
    expect(broken.result?.isError).toBe(true);
    expect(broken.result?.structuredContent).toBeUndefined();
    expect(text(broken.result)).toMatch(/Output validation error/);
  });

  it("the agent gets Bastion's sealed requestState, never the upstream's", async () => {
    const token = await t.mint({ sub: 'agent:raw', cap: [{ tool: 'modern__*' }] });
    const first = await rawCall(token, 'modern__confirm', { what: 'x' });
    expect(first.result).toMatchObject({ resultType: 'input_required', inputRequests: { confirm: { method: 'elicitation/create' } } });
    const state = first.result!.requestState!;
    expect(state.split('.')).toHaveLength(5);
    expect(state).not.toContain('confirm:x');
    const done = await rawCall(token, 'modern__confirm', { what: 'x' }, { requestState: state, inputResponses: { confirm: { action: 'decline' } } });
    expect(text(done.result)).toBe('confirm x: decline {} (state confirm:x)');
  });
});

describe('who answers', () => {
  it("Bastion answers as itself: an upstream's serverInfo stamp never reaches the agent, on a result or an input_required", async () => {
    const token = await t.mint({ sub: 'agent:who-answers', cap: [{ tool: 'modern__*' }] });
    const stamp = (result: Record<string, unknown> | undefined) => (result?._meta as Record<string, { name?: string }> | undefined)?.['io.modelcontextprotocol/serverInfo'];
    const done = await rawCall(token, 'modern__echo', { text: 'hi' });
    expect(text(done.result)).toContain('hi');
    expect(stamp(done.result)).toMatchObject({ name: 'bastion' });
    const asking = await rawCall(token, 'modern__confirm', { what: 'who' });
    expect(asking.result).toMatchObject({ resultType: 'input_required' });
    expect(stamp(asking.result)).toMatchObject({ name: 'bastion' });
    expect(JSON.stringify([done, asking])).not.toContain('modern-upstream');
  });
});

describe("the agent's declared capabilities", () => {
  it('the upstream is told only what the agent declared, so it never asks for input the agent cannot give', async () => {
    const token = await t.mint({ sub: 'agent:no-elicitation', cap: [{ tool: 'modern__*' }] });
    const mark = await t.auditMark();
    const { message } = await modernCall(t.url, token, { name: 'modern__confirm', arguments: { what: 'a' }, capabilities: { sampling: {} } });
    // The upstream itself refused (it saw no elicitation), not Bastion's front door after a relay.
    expect(message.error).toMatchObject({ code: -32021, data: { requiredCapabilities: { elicitation: {} } } });
    const records = await t.auditSince(mark, 'tools/call');
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ outcome: 'error', denial: { code: 'BASTION_UPSTREAM_ERROR' } });
    expect(records[0]!.detail?.input_required).toBeUndefined();
  });

  it("one principal's requests declaring different capabilities share its one connection to a 2026 upstream (each request carries its own)", async () => {
    const sub = 'agent:varying-declarations';
    const token = await t.mint({ sub, cap: [{ tool: 'modern__*' }] });
    const own = () => t.broker.connectors.find((c) => c.name === 'modern')!.agentConnections().filter((c) => c.owner.sub === sub);
    const narrow = await modernCall(t.url, token, { name: 'modern__confirm', arguments: { what: 'b' }, capabilities: { sampling: {} } });
    expect(narrow.message.error).toMatchObject({ code: -32021 });
    const wide = await modernCall(t.url, token, { name: 'modern__confirm', arguments: { what: 'b' }, capabilities: { elicitation: { form: {} } } });
    expect(wide.message.result).toMatchObject({ resultType: 'input_required', inputRequests: { confirm: { method: 'elicitation/create' } } });
    // A stdio upstream: a connection per declaration would be a process per declaration.
    expect(own()).toHaveLength(1);
  });
});

describe('inputResponses sent without a requestState (answering nothing Bastion asked)', () => {
  const accept = { action: 'accept', content: { ok: true } };

  it('are never forwarded as they are: the upstream is called without them and its question goes to the agent, sealed', async () => {
    const token = await t.mint({ sub: 'agent:unasked-wrong', cap: [{ tool: 'modern__*' }] });
    const mark = await t.auditMark();
    const answer = await rawCall(token, 'modern__inputs_seen', {}, { inputResponses: { wrong_key: accept } });
    expect(answer.result).toMatchObject({ resultType: 'input_required', inputRequests: { confirm: { method: 'elicitation/create' } } });
    expect(answer.result!.requestState!.split('.')).toHaveLength(5);
    const [record] = await t.auditSince(mark, 'tools/call');
    expect(record!.detail).toMatchObject({ unasked_input_responses: { keys: ['wrong_key'], used: [] }, input_required: { keys: ['confirm'] } });
    // The sealed retry completes, and the upstream saw only the answer to its own question.
    const done = await rawCall(token, 'modern__inputs_seen', {}, { requestState: answer.result!.requestState, inputResponses: { confirm: accept } });
    expect(text(done.result)).toBe('seen: confirm');
  });

  it('answer only what the upstream asks in that same call; extra keys never reach it', async () => {
    const token = await t.mint({ sub: 'agent:unasked-extra', cap: [{ tool: 'modern__*' }] });
    const mark = await t.auditMark();
    const answer = await rawCall(token, 'modern__inputs_seen', {}, { inputResponses: { confirm: accept, sneaky: accept } });
    expect(text(answer.result)).toBe('seen: confirm');
    const [record] = await t.auditSince(mark, 'tools/call');
    expect(record).toMatchObject({ outcome: 'ok', detail: { unasked_input_responses: { keys: ['confirm', 'sneaky'], used: ['confirm'] } } });
    // The upstream's own state still binds the answer to its question.
    expect(text((await rawCall(token, 'modern__confirm', { what: 'q' }, { inputResponses: { confirm: accept } })).result)).toBe('confirm q: accept {"ok":true} (state confirm:q)');
  });
});

/** One raw 2026-07-28 request of any method (prompts/get, resources/read), as a stateless client sends it. */
async function rawRequest(token: string, method: string, params: Record<string, unknown>, nameHeader: string, meta: Record<string, unknown> = {}) {
  return (await rawExchange(token, method, params, nameHeader, meta)).response;
}

/** The same, with every message the response stream carried (notifications before the response). */
async function rawExchange(token: string, method: string, params: Record<string, unknown>, nameHeader: string, meta: Record<string, unknown> = {}) {
  const { message, messages } = await modernRequest(t.url, token, { method, params, name: nameHeader, capabilities: { elicitation: { form: {} } }, meta });
  return { response: message, messages };
}

describe('log messages from a 2025-11-25 upstream to a 2026-07-28 request', () => {
  it('reach it only at or above the logLevel its envelope names, and not at all without one', async () => {
    const token = await t.mint({ sub: 'agent:logs', cap: [{ tool: 'legacy__*' }] });
    const logs = async (meta: Record<string, unknown>) => {
      const { response, messages } = await rawExchange(token, 'tools/call', { name: 'legacy__chatty', arguments: {} }, 'legacy__chatty', meta);
      expect(text(response.result)).toBe('chatted');
      return messages.filter((m) => m.method === 'notifications/message').map((m) => m.params.data);
    };
    expect(await logs({})).toEqual([]);
    expect(await logs({ 'io.modelcontextprotocol/logLevel': 'warning' })).toEqual(['warning from chatty']);
    expect(await logs({ 'io.modelcontextprotocol/logLevel': 'debug' })).toEqual(['info from chatty', 'warning from chatty']);
  });
});

describe('input_required on prompts/get and resources/read', () => {
  const accept = (content: Record<string, unknown>) => ({ action: 'accept', content });
  const caps = [{ tool: 'modern__*' }, { tool: 'prompt:modern__briefing' }, { tool: 'resource:mrtr://vault' }];

  it('the SDK agent answers a prompt\'s and a resource\'s questions through Bastion and gets the final result', async () => {
    const token = await t.mint({ sub: 'agent:items', cap: caps });
    const { client, asked } = await agent(token, 'modern');
    try {
      const prompt = await client.getPrompt({ name: 'modern__briefing', arguments: { audience: 'ops' } });
      expect(prompt.messages[0]!.content).toMatchObject({ type: 'text', text: 'brief ops on undefined' });
      const read = await client.readResource({ uri: 'mrtr://vault' });
      expect(read.contents[0]).toMatchObject({ text: 'vault contents' });
      expect(asked.map((a) => a.method)).toEqual(['elicitation/create', 'elicitation/create']);
    } finally {
      await client.close();
    }
  });

  it("raw rounds: the agent gets Bastion's sealed state, and the retry with it completes; each leg is audited", async () => {
    const token = await t.mint({ sub: 'agent:items-raw', cap: caps });
    const mark = await t.auditMark();
    const first = await rawRequest(token, 'prompts/get', { name: 'modern__briefing', arguments: { audience: 'dev' } }, 'modern__briefing');
    expect(first.result).toMatchObject({ resultType: 'input_required', inputRequests: { topic: { method: 'elicitation/create' } } });
    const state = first.result.requestState as string;
    expect(state.split('.')).toHaveLength(5);
    expect(state).not.toContain('briefing:dev');
    const done = await rawRequest(token, 'prompts/get', { name: 'modern__briefing', arguments: { audience: 'dev' }, requestState: state, inputResponses: { topic: accept({ topic: 'dns' }) } }, 'modern__briefing');
    expect(done.result.messages[0].content.text).toBe('brief dev on dns');
    const records = await t.auditSince(mark, 'prompts/get');
    expect(records.map((r) => r.detail?.input_required ?? r.detail?.input_responses)).toEqual([{ keys: ['topic'], methods: ['elicitation/create'] }, ['topic']]);
  });

  it('refusals: a tool call\'s state on prompts/get, one prompt\'s state on other arguments or a resource, another principal, keys never asked; each refusal audited', async () => {
    const token = await t.mint({ sub: 'agent:items-refused', cap: caps });
    const mallory = await t.mint({ sub: 'agent:items-mallory', cap: caps });
    const toolState = (await rawCall(token, 'modern__confirm', { what: 'a' })).result!.requestState!;
    const promptState = (await rawRequest(token, 'prompts/get', { name: 'modern__briefing', arguments: { audience: 'x' } }, 'modern__briefing')).result.requestState as string;
    const answer = { topic: accept({ topic: 't' }) };
    const cases: [string, string, Record<string, unknown>, string, string][] = [
      [token, 'prompts/get', { name: 'modern__briefing', arguments: { audience: 'x' }, requestState: toolState, inputResponses: answer }, 'modern__briefing', 'BASTION_STATE_OTHER_CALL'],
      [token, 'prompts/get', { name: 'modern__briefing', arguments: { audience: 'y' }, requestState: promptState, inputResponses: answer }, 'modern__briefing', 'BASTION_STATE_OTHER_CALL'],
      [token, 'resources/read', { uri: 'mrtr://vault', requestState: promptState, inputResponses: { confirm: accept({ ok: true }) } }, 'mrtr://vault', 'BASTION_STATE_OTHER_CALL'],
      [mallory, 'prompts/get', { name: 'modern__briefing', arguments: { audience: 'x' }, requestState: promptState, inputResponses: answer }, 'modern__briefing', 'BASTION_STATE_OTHER_PRINCIPAL'],
      [token, 'prompts/get', { name: 'modern__briefing', arguments: { audience: 'x' }, requestState: `${promptState}x`, inputResponses: answer }, 'modern__briefing', 'BASTION_STATE_TAMPERED'],
    ];
    for (const [who, method, params, nameHeader, code] of cases) {
      const mark = await t.auditMark();
      const refused = await rawRequest(who, method, params, nameHeader);
      expect(refused.result, code).toBeUndefined();
      expect(refused.error, code).toMatchObject({ code: -32602, data: { stage: 'authorize', code } });
      expect(await t.auditSince(mark, method), code).toMatchObject([{ outcome: 'denied', denial: { code } }]);
    }
    const mark = await t.auditMark();
    const extra = await rawRequest(token, 'prompts/get', { name: 'modern__briefing', arguments: { audience: 'x' }, requestState: promptState, inputResponses: { ...answer, sneaky: accept({}) } }, 'modern__briefing');
    expect(extra.error?.message).toMatch(/BASTION_INPUT_RESPONSES_UNEXPECTED.*sneaky/);
    expect(await t.auditSince(mark, 'prompts/get')).toMatchObject([{ outcome: 'denied', denial: { code: 'BASTION_INPUT_RESPONSES_UNEXPECTED' } }]);
  });
});

describe('refusals of a retry', () => {
  /**
   * Sends a retry, expects a denial with `code`, an audit record of it, and no upstream completion.
   * A refused requestState is a JSON-RPC error (-32602, as the spec asks of a state that fails its
   * integrity check), the denial in its data; other refusals are tool errors.
   */
  async function refused(token: string, name: string, args: Record<string, unknown>, extra: Record<string, unknown>, code: string, message: RegExp) {
    const mark = await t.auditMark();
    const answer = await rawCall(token, name, args, extra);
    if (code.startsWith('BASTION_STATE_') || code === 'BASTION_APPROVAL_STATE_INVALID') {
      expect(answer.result).toBeUndefined();
      expect(answer.error).toMatchObject({ code: -32602, data: { stage: 'authorize', code } });
      expect(answer.error!.message).toMatch(message);
      expect(answer.error!.message).toContain(code);
    } else {
      expect(answer.result?.isError).toBe(true);
      expect(answer.result?.resultType).not.toBe('input_required');
      expect(text(answer.result)).toMatch(message);
      expect(JSON.stringify(answer.result)).toContain(code);
    }
    const records = await t.auditSince(mark, 'tools/call');
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ outcome: 'denied', tool: name, denial: { stage: 'authorize', code } });
  }

  async function issued(token: string, args = { what: 'a' }) {
    const first = await rawCall(token, 'modern__confirm', args);
    return first.result!.requestState!;
  }

  it('a state replayed by another principal', async () => {
    const alice = await t.mint({ sub: 'agent:alice', cap: [{ tool: 'modern__*' }] });
    const mallory = await t.mint({ sub: 'agent:mallory', cap: [{ tool: 'modern__*' }] });
    const state = await issued(alice);
    await refused(mallory, 'modern__confirm', { what: 'a' }, { requestState: state, inputResponses: { confirm: { action: 'accept', content: { ok: true } } } }, 'BASTION_STATE_OTHER_PRINCIPAL', /another principal/);
  });

  it('a state brought to another call (other arguments, other tool)', async () => {
    const token = await t.mint({ sub: 'agent:other-call', cap: [{ tool: 'modern__*' }] });
    const state = await issued(token);
    const answer = { confirm: { action: 'accept', content: { ok: true } } };
    await refused(token, 'modern__confirm', { what: 'b' }, { requestState: state, inputResponses: answer }, 'BASTION_STATE_OTHER_CALL', /another call/);
    await refused(token, 'modern__where', {}, { requestState: state, inputResponses: answer }, 'BASTION_STATE_OTHER_CALL', /another call/);
  });

  it('a forged state and a tampered one', async () => {
    const token = await t.mint({ sub: 'agent:forger', cap: [{ tool: 'modern__*' }] });
    const forged = await RequestStateSealer.fromSecret('not-the-broker-key-material', 'mrtr').seal({ c: 'modern', k: ['confirm'], s: 'confirm:a' }, { iss: 'x', sub: 'agent:forger', tool: 'modern__confirm', arguments: { what: 'a' } }, 60_000);
    await refused(token, 'modern__confirm', { what: 'a' }, { requestState: forged, inputResponses: { confirm: { action: 'accept' } } }, 'BASTION_STATE_TAMPERED', /not issued by this Bastion or was altered/);
    const state = await issued(token);
    const parts = state.split('.');
    const ciphertext = Buffer.from(parts[3]!, 'base64url');
    ciphertext[0]! ^= 0xff;
    parts[3] = ciphertext.toString('base64url');
    await refused(token, 'modern__confirm', { what: 'a' }, { requestState: parts.join('.'), inputResponses: { confirm: { action: 'accept' } } }, 'BASTION_STATE_TAMPERED', /altered/);
    await refused(token, 'modern__confirm', { what: 'a' }, { requestState: 'confirm:a', inputResponses: { confirm: { action: 'accept' } } }, 'BASTION_STATE_MALFORMED', /not a state Bastion issued/);
  });

  it('a state on a call that asked for nothing and needs no approval is refused, not ignored', async () => {
    const token = await t.mint({ sub: 'agent:stray-state', cap: [{ tool: 'modern__*' }] });
    await refused(token, 'modern__echo', { text: 'hi' }, { requestState: 'anything' }, 'BASTION_APPROVAL_STATE_INVALID', /neither an input request nor a pending approval/);
    const forged = await RequestStateSealer.fromSecret('not-the-broker-key-material', 'approval').seal({ id: 'x' }, { iss: 'x', sub: 'agent:stray-state', tool: 'modern__echo', arguments: { text: 'hi' } }, 60_000);
    await refused(token, 'modern__echo', { text: 'hi' }, { requestState: forged }, 'BASTION_APPROVAL_STATE_INVALID', /retry the call without it/);
  });

  it('an expired state (sealed with the broker key under a clock in the past)', async () => {
    const token = await t.mint({ sub: 'agent:late', cap: [{ tool: 'modern__*' }] });
    const secret = await sharedSecret(t.broker.state, 'request-state');
    const past = RequestStateSealer.fromSecret(secret, 'mrtr', { now: () => Date.now() - 3_600_000 });
    const iss = t.broker.devKey!.issuer;
    const stale = await past.seal({ c: 'modern', k: ['confirm'], s: 'confirm:a' }, { iss, sub: 'agent:late', tool: 'modern__confirm', arguments: { what: 'a' } }, 600_000);
    await refused(token, 'modern__confirm', { what: 'a' }, { requestState: stale, inputResponses: { confirm: { action: 'accept', content: { ok: true } } } }, 'BASTION_STATE_EXPIRED', /expired/);
    // The same state, fresh, is accepted: the refusal above was about time alone.
    const fresh = await RequestStateSealer.fromSecret(secret, 'mrtr').seal({ c: 'modern', k: ['confirm'], s: 'confirm:a' }, { iss, sub: 'agent:late', tool: 'modern__confirm', arguments: { what: 'a' } }, 600_000);
    expect(text((await rawCall(token, 'modern__confirm', { what: 'a' }, { requestState: fresh, inputResponses: { confirm: { action: 'accept', content: { ok: true } } } })).result)).toBe('confirm a: accept {"ok":true} (state confirm:a)');
  });

  it('inputResponses with a state but keys outside the sealed set', async () => {
    const token = await t.mint({ sub: 'agent:unasked', cap: [{ tool: 'modern__*' }] });
    const state = await issued(token);
    await refused(token, 'modern__confirm', { what: 'a' }, { requestState: state, inputResponses: { confirm: { action: 'accept' }, sneaky: { action: 'accept' } } }, 'BASTION_INPUT_RESPONSES_UNEXPECTED', /sneaky/);
  });

  it('a retry is authorized like any call: a principal that lost the tool is refused by policy', async () => {
    const iss = t.broker.devKey!.issuer;
    const full = await t.mint({ sub: 'agent:narrowed', cap: [{ tool: 'modern__*' }] });
    const state = await issued(full);
    const narrowed = await t.mint({ sub: 'agent:narrowed', cap: [{ tool: 'modern__where' }] });
    const mark = await t.auditMark();
    const answer = await rawCall(narrowed, 'modern__confirm', { what: 'a' }, { requestState: state, inputResponses: { confirm: { action: 'accept' } } });
    expect(answer.result?.isError).toBe(true);
    expect((await t.auditSince(mark, 'tools/call'))[0]).toMatchObject({ outcome: 'denied', denial: { code: 'BASTION_POLICY_DENIED' }, principal: { sub: 'agent:narrowed', iss } });
  });
});

describe('across eras', () => {
  it('a 2025-11-25 agent behind a 2026-07-28 upstream gets elicitation, sampling and roots as server-to-client requests on its session', async () => {
    const token = await t.mint({ sub: 'agent:legacy', cap: [{ tool: 'modern__*' }] });
    const { client, asked } = await agent(token, 'legacy');
    try {
      expect(client.getProtocolEra()).not.toBe('modern');
      expect(text(await client.callTool({ name: 'modern__confirm', arguments: { what: 'ship' } }))).toBe('confirm ship: accept {"ok":true} (state confirm:ship)');
      expect(text(await client.callTool({ name: 'modern__summarize', arguments: { text: 't' } }))).toBe('summary: short (state summarize:1)');
      expect(text(await client.callTool({ name: 'modern__stepwise', arguments: {} }))).toBe('stepwise done: step:2:file:///work {"action":"accept","content":{"ok":true}}');
      expect(asked.map((a) => a.method)).toEqual(['elicitation/create', 'sampling/createMessage', 'roots/list', 'elicitation/create']);
    } finally {
      await client.close();
    }
  });

  it('a 2025-11-25 agent behind a 2025-11-25 upstream still gets mid-call requests relayed', async () => {
    const token = await t.mint({ sub: 'agent:legacy2', cap: [{ tool: 'legacy__*' }] });
    const { client, asked } = await agent(token, 'legacy');
    try {
      expect(text(await client.callTool({ name: 'legacy__where', arguments: {} }))).toBe('roots: file:///work (state legacy)');
      expect(asked.map((a) => a.method)).toEqual(['roots/list']);
    } finally {
      await client.close();
    }
  });

  it('a 2026-07-28 agent behind a 2025-11-25 upstream that asks mid-call: the request is held, the agent answers it as input_required, the call goes on', async () => {
    const token = await t.mint({ sub: 'agent:modern-on-legacy', cap: [{ tool: 'legacy__*' }] });
    const { client, asked } = await agent(token, 'modern');
    try {
      const mark = await t.auditMark();
      expect(text(await client.callTool({ name: 'legacy__confirm', arguments: { what: 'z' } }))).toBe('confirm z: accept {"ok":true} (state legacy)');
      expect(text(await client.callTool({ name: 'legacy__summarize', arguments: { text: 't' } }))).toBe('summary: short (state legacy)');
      // Two requests in one upstream call: two rounds, each its own input_required.
      expect(text(await client.callTool({ name: 'legacy__stepwise', arguments: {} }))).toBe('stepwise legacy roots file:///work {"action":"accept","content":{"ok":true}}');
      expect(asked.map((a) => a.method)).toEqual(['elicitation/create', 'sampling/createMessage', 'roots/list', 'elicitation/create']);
      const records = await t.auditSince(mark, 'tools/call');
      expect(records[0]!.detail).toMatchObject({ input_required: { keys: ['elicitation_create_1'], methods: ['elicitation/create'], held: true } });
      expect(records[1]).toMatchObject({ outcome: 'ok', detail: { input_responses: ['elicitation_create_1'] } });
    } finally {
      await client.close();
    }
  });
});

describe('era translation refusals (a 2025-11-25 upstream request held for a 2026-07-28 agent)', () => {
  const accept = { action: 'accept', content: { ok: true } };
  /** The first leg: the upstream asks mid-call, the agent gets the held request and its state. */
  async function held(token: string, what: string) {
    const first = await rawCall(token, 'legacy__confirm', { what });
    expect(first.result).toMatchObject({ resultType: 'input_required', inputRequests: { elicitation_create_1: { method: 'elicitation/create', params: { message: `Confirm ${what}?` } } } });
    return first.result!.requestState!;
  }

  it("another principal's retry and a retry for another call are refused, and the held request still waits for its own agent", async () => {
    const alice = await t.mint({ sub: 'agent:held-alice', cap: [{ tool: 'legacy__*' }] });
    const mallory = await t.mint({ sub: 'agent:held-mallory', cap: [{ tool: 'legacy__*' }] });
    const state = await held(alice, 'a');
    const stolen = await rawCall(mallory, 'legacy__confirm', { what: 'a' }, { requestState: state, inputResponses: { elicitation_create_1: accept } });
    expect(stolen.error).toMatchObject({ code: -32602, data: { code: 'BASTION_STATE_OTHER_PRINCIPAL' } });
    const other = await rawCall(alice, 'legacy__confirm', { what: 'b' }, { requestState: state, inputResponses: { elicitation_create_1: accept } });
    expect(other.error).toMatchObject({ code: -32602, data: { code: 'BASTION_STATE_OTHER_CALL' } });
    const done = await rawCall(alice, 'legacy__confirm', { what: 'a' }, { requestState: state, inputResponses: { elicitation_create_1: accept } });
    expect(text(done.result)).toBe('confirm a: accept {"ok":true} (state legacy)');
  });

  it('a retry whose exchange this process does not hold (another replica, already answered) is refused with BASTION_EXCHANGE_UNAVAILABLE, audited', async () => {
    const token = await t.mint({ sub: 'agent:held-gone', cap: [{ tool: 'legacy__*' }] });
    const state = await held(token, 'c');
    const retry = { requestState: state, inputResponses: { elicitation_create_1: accept } };
    expect(text((await rawCall(token, 'legacy__confirm', { what: 'c' }, retry)).result)).toBe('confirm c: accept {"ok":true} (state legacy)');
    const mark = await t.auditMark();
    const replayed = await rawCall(token, 'legacy__confirm', { what: 'c' }, retry);
    expect(replayed.result?.isError).toBe(true);
    expect(text(replayed.result)).toMatch(/BASTION_EXCHANGE_UNAVAILABLE.*another replica/);
    expect(await t.auditSince(mark, 'tools/call')).toMatchObject([{ outcome: 'denied', denial: { stage: 'authorize', code: 'BASTION_EXCHANGE_UNAVAILABLE' } }]);
    // A state naming an exchange held elsewhere (sealed with the shared key, as another replica would).
    const secret = await sharedSecret(t.broker.state, 'request-state');
    const elsewhere = await RequestStateSealer.fromSecret(secret, 'mrtr').seal(
      { c: 'legacy', k: ['elicitation_create_1'], x: '00000000-0000-4000-8000-000000000000' },
      { iss: t.broker.devKey!.issuer, sub: 'agent:held-gone', tool: 'legacy__confirm', arguments: { what: 'd' } },
      60_000,
    );
    const remote = await rawCall(token, 'legacy__confirm', { what: 'd' }, { requestState: elsewhere, inputResponses: { elicitation_create_1: accept } });
    expect(text(remote.result)).toMatch(/BASTION_EXCHANGE_UNAVAILABLE/);
  });

  it('a request the agent did not declare it can answer is refused to the upstream, never held', async () => {
    const token = await t.mint({ sub: 'agent:held-undeclared', cap: [{ tool: 'legacy__*' }] });
    const { message } = await modernCall(t.url, token, { name: 'legacy__confirm', arguments: { what: 'e' }, capabilities: { sampling: {} } });
    expect(message.result?.resultType).not.toBe('input_required');
    // Its upstream connection never declared elicitation (it follows the agent), so the upstream's request is refused with that reason.
    expect(JSON.stringify(message)).toMatch(/did not declare elicitation, so Bastion did not declare it upstream either/);
  });
});
