import { describe, expect, it } from 'vitest';
import { generateSigningKey } from '../../broker/auth/keys.ts';
import { argumentsHash, RequestStateSealer, type StateBinding } from '../../broker/server/request-state.ts';

const binding: StateBinding = { iss: 'https://idp.example', sub: 'agent-a', tool: 'files__read', arguments: { path: '/a', mode: 'r' } };
const secret = 'x'.repeat(32);

function clock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => { now += ms; } };
}

describe('request-state sealing', () => {
  it('opens what it sealed for the same binding, with argument key order ignored', async () => {
    const states = RequestStateSealer.fromSecret(secret, 'mrtr');
    const token = await states.seal({ upstream: 'raw-state', n: 1 }, binding, 60_000);
    const opened = await states.open(token, { ...binding, arguments: { mode: 'r', path: '/a' } });
    expect(opened).toMatchObject({ ok: true, payload: { upstream: 'raw-state', n: 1 } });
  });

  it('hides the payload from the holder', async () => {
    const states = RequestStateSealer.fromSecret(secret, 'mrtr');
    const token = await states.seal({ upstream: 'raw-state-visible?' }, binding, 60_000);
    const decoded = token.split('.').map((part) => Buffer.from(part, 'base64url').toString('latin1')).join('|');
    expect(decoded).not.toContain('raw-state-visible');
    expect(decoded).not.toContain('agent-a');
  });

  it('derives the key from a private JWK (the broker key) deterministically', async () => {
    const { privateJwk } = await generateSigningKey('EdDSA');
    const token = await RequestStateSealer.fromPrivateJwk(privateJwk, 'mrtr').seal('p', binding, 60_000);
    expect(await RequestStateSealer.fromPrivateJwk(privateJwk, 'mrtr').open(token, binding)).toMatchObject({ ok: true, payload: 'p' });
    const other = await generateSigningKey('EdDSA');
    expect(await RequestStateSealer.fromPrivateJwk(other.privateJwk, 'mrtr').open(token, binding)).toMatchObject({ ok: false, refusal: { code: 'BASTION_STATE_TAMPERED' } });
  });
});

describe('request-state refusals', () => {
  it('refuses a state replayed by another principal (other sub, other iss)', async () => {
    const states = RequestStateSealer.fromSecret(secret, 'mrtr');
    const token = await states.seal('p', binding, 60_000);
    for (const who of [{ sub: 'agent-b' }, { iss: 'https://other-idp.example' }]) {
      const opened = await states.open(token, { ...binding, ...who });
      expect(opened.ok).toBe(false);
      if (!opened.ok) {
        expect(opened.refusal.code).toBe('BASTION_STATE_OTHER_PRINCIPAL');
        expect(opened.refusal.message).toMatch(/another principal/);
      }
    }
  });

  it('refuses a state brought to another call (other tool, other arguments)', async () => {
    const states = RequestStateSealer.fromSecret(secret, 'mrtr');
    const token = await states.seal('p', binding, 60_000);
    for (const call of [{ tool: 'files__write' }, { arguments: { path: '/b', mode: 'r' } }, { arguments: undefined }]) {
      expect(await states.open(token, { ...binding, ...call })).toMatchObject({ ok: false, refusal: { code: 'BASTION_STATE_OTHER_CALL' } });
    }
  });

  it('refuses an expired state (injected clock, no sleeping)', async () => {
    const time = clock();
    const states = RequestStateSealer.fromSecret(secret, 'mrtr', { now: time.now });
    const token = await states.seal('p', binding, 60_000);
    time.advance(59_999);
    expect(await states.open(token, binding)).toMatchObject({ ok: true });
    time.advance(1);
    const opened = await states.open(token, binding);
    expect(opened).toMatchObject({ ok: false, refusal: { code: 'BASTION_STATE_EXPIRED' } });
    if (!opened.ok) expect(opened.refusal.message).toMatch(/expired/);
  });

  it('refuses a tampered state (any flipped ciphertext, tag or header byte)', async () => {
    const states = RequestStateSealer.fromSecret(secret, 'mrtr');
    const token = await states.seal({ upstream: 'raw' }, binding, 60_000);
    const parts = token.split('.');
    for (const index of [0, 2, 3, 4]) {
      const bytes = Buffer.from(parts[index]!, 'base64url');
      bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
      const altered = [...parts];
      altered[index] = bytes.toString('base64url');
      expect(await states.open(altered.join('.'), binding)).toMatchObject({ ok: false });
    }
    const swapped = [...parts];
    swapped[3] = Buffer.from('{"v":1}').toString('base64url');
    expect(await states.open(swapped.join('.'), binding)).toMatchObject({ ok: false, refusal: { code: 'BASTION_STATE_TAMPERED' } });
  });

  it('refuses a forged state (another key, another purpose, an unencrypted token) and garbage', async () => {
    const states = RequestStateSealer.fromSecret(secret, 'mrtr');
    const forger = RequestStateSealer.fromSecret('y'.repeat(32), 'mrtr');
    expect(await states.open(await forger.seal('p', binding, 60_000), binding)).toMatchObject({ ok: false, refusal: { code: 'BASTION_STATE_TAMPERED' } });
    const approvals = RequestStateSealer.fromSecret(secret, 'approval');
    expect(await states.open(await approvals.seal('p', binding, 60_000), binding)).toMatchObject({ ok: false, refusal: { code: 'BASTION_STATE_TAMPERED' } });
    const unsigned = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ v: 1, ...binding })).toString('base64url')}.`;
    for (const garbage of [unsigned, '', 'a.b.c.d.e', 42, null, undefined, 'x'.repeat(70_000)]) {
      expect(await states.open(garbage, binding)).toMatchObject({ ok: false });
    }
    expect(await states.open('not-a-token', binding)).toMatchObject({ ok: false, refusal: { code: 'BASTION_STATE_MALFORMED' } });
  });

  it('refuses weak key material and a non-positive ttl', async () => {
    expect(() => RequestStateSealer.fromSecret('short', 'mrtr')).toThrow(/16 bytes/);
    expect(() => new RequestStateSealer(new Uint8Array(16))).toThrow(/32 bytes/);
    await expect(RequestStateSealer.fromSecret(secret, 'mrtr').seal('p', binding, 0)).rejects.toThrow(/ttl/);
  });

  it('hashes arguments canonically', () => {
    expect(argumentsHash({ b: 1, a: [1, { d: 2, c: 3 }] })).toBe(argumentsHash({ a: [1, { c: 3, d: 2 }], b: 1 }));
    expect(argumentsHash(undefined)).toBe(argumentsHash({}));
    expect(argumentsHash({ a: 1 })).not.toBe(argumentsHash({ a: '1' }));
  });
});
