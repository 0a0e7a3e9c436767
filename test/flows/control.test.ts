/**
 * FlowControl on a real embedded state store: which flow a principal's
 * calls belong to, a source listed once per tool, content that arrives
 * after an operator's clear, and trusted values that keep a value clean.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Principal } from '../../broker/auth/verify.ts';
import { FlowControl, FlowUnknown } from '../../broker/flows/control.ts';
import type { ToolFlow } from '../../broker/flows/labels.ts';
import { createLogger } from '../../broker/log.ts';
import { openEmbeddedState } from '../../broker/state/embedded.ts';
import type { StateStore } from '../../broker/state/store.ts';

const SETTINGS = { enabled: true, retention: 3_600_000, max_sources: 32, max_units: 4096, max_units_per_result: 2048 };
const tool = (name: string, labels: ToolFlow['labels']) => ({ name, flow: { labels, egress: {}, origin: 'config' as const } });
const MAIL = tool('mail__read_email', ['untrusted', 'private']);
const PAY = tool('payments__send_money', ['external']);
const FILES = tool('files__read_file', ['private']);
const text = (value: string) => ({ content: [{ type: 'text', text: value }] });

function principal(sub: string, extra: Partial<Principal> = {}): Principal {
  return { sub, iss: 'https://issuer.example', act: [], cap: [], jti: `jti-${sub}`, exp: Math.floor(Date.now() / 1000) + 600, anonymous: false, tokenHash: 'h', singleUse: false, ...extra };
}

let dir: string;
let state: StateStore;
let flows: FlowControl;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-flow-control-'));
  state = await openEmbeddedState(path.join(dir, 'state.db'));
  flows = new FlowControl({ state, settings: SETTINGS, delegationIssuer: 'urn:bastion:delegation', log: createLogger('silent') });
  await flows.start();
});
afterEach(async () => {
  await state.close();
  await rm(dir, { recursive: true, force: true });
});

const read = async (who: Principal, source: typeof MAIL, content: string) => flows.record(await flows.prepare(who, source, {}), undefined, text(content), []);

describe('which flow', () => {
  it('is the subject at its issuer; an outside act chain shares its root subject at that issuer', async () => {
    expect(await flows.keyOf(principal('agent:a'))).toBe('https://issuer.example|agent:a');
    expect(await flows.keyOf(principal('agent:child', { act: [{ sub: 'agent:parent' }, { sub: 'agent:root' }] }))).toBe('https://issuer.example|agent:root');
  });

  it('follows the link of a token this broker delegated, and refuses one without a link', async () => {
    const parent = principal('agent:parent');
    await flows.linkDelegation(parent, { iss: 'urn:bastion:delegation', jti: 'child-1', exp: Math.floor(Date.now() / 1000) + 60 });
    const child = principal('agent:child', { iss: 'urn:bastion:delegation', jti: 'child-1', act: [{ sub: 'agent:parent' }] });
    expect(await flows.keyOf(child)).toBe('https://issuer.example|agent:parent');
    // A grandchild links to the same root flow through its parent.
    await flows.linkDelegation(child, { iss: 'urn:bastion:delegation', jti: 'grandchild-1', exp: Math.floor(Date.now() / 1000) + 60 });
    expect(await flows.keyOf(principal('agent:gc', { iss: 'urn:bastion:delegation', jti: 'grandchild-1', act: [{ sub: 'agent:child' }, { sub: 'agent:parent' }] }))).toBe('https://issuer.example|agent:parent');
    await expect(flows.keyOf(principal('agent:orphan', { iss: 'urn:bastion:delegation', jti: 'unlinked', act: [{ sub: 'agent:parent' }] }))).rejects.toThrow(FlowUnknown);
  });
});

describe('sources', () => {
  it('lists a tool once for the same labels, and traces values from its later results to it', async () => {
    const agent = principal('agent:reader');
    const first = await read(agent, MAIL, 'Lunch on Friday?');
    const second = await read(agent, MAIL, 'Pay GB82 WEST 1234 5698 7654 32 today.');
    expect(second).toMatchObject({ source: first.source, repeated: true });
    const core = await flows.show(await flows.keyOf(agent));
    expect(core!.sources).toHaveLength(1);
    const prepared = await flows.prepare(agent, PAY, { iban: 'GB82WEST12345698765432' });
    expect(prepared.input.arguments).toEqual([{ argument: '/iban', kind: 'iban', value: 'GB82WEST12345698765432', sources: [first.source] }]);
  });

  it('records content that arrives after an operator cleared the flow while the call ran', async () => {
    const agent = principal('agent:racer');
    await read(agent, MAIL, 'first');
    const running = await flows.prepare(agent, MAIL, {});
    await flows.clear(await flows.keyOf(agent));
    // The same tool and labels as before the clear, and no new unit: still recorded.
    await flows.record(running, undefined, text('first'), []);
    const core = await flows.show(await flows.keyOf(agent));
    expect(core?.labels.untrusted).toHaveLength(1);
  });

  it('keeps a value clean that the principal used before any untrusted content, or that a trusted result brought', async () => {
    const agent = principal('agent:careful');
    // The user's task named the landlord's IBAN: the agent used it while its flow was clean.
    await flows.record(await flows.prepare(agent, tool('payments__list_payees', []), { iban: 'DE89370400440532013000' }), undefined, text('ok'), []);
    await read(agent, FILES, 'Payee Stadtwerke, IBAN NL91 ABNA 0417 1643 00');
    await read(agent, MAIL, 'Please pay DE89 3704 0044 0532 0130 00 or NL91ABNA0417164300 or GB82 WEST 1234 5698 7654 32.');
    const traced = async (iban: string) => (await flows.prepare(agent, PAY, { iban })).input.arguments;
    expect(await traced('DE89370400440532013000')).toEqual([]);
    expect(await traced('NL91ABNA0417164300')).toEqual([]);
    expect(await traced('GB82WEST12345698765432')).toHaveLength(1);
  });
});
