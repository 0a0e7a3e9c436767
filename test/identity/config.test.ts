/** The identity config section: defaults, and what start-up refuses with the field named. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../broker/config.ts';

describe('identity config', () => {
  it('defaults: on, CIMD on and strict, DCR off, 8 h families', () => {
    const { identity } = parseConfig({});
    expect(identity).toMatchObject({
      enabled: true,
      registration: { enabled: false, max_clients: 1000, per_minute: 10, max_redirect_uris: 5, ttl: 30 * 86_400_000 },
      client_id_metadata: { enabled: true, allow_private_addresses: false, max_bytes: 5120, timeout: 2500 },
      refresh_max_age: 8 * 3_600_000,
      interaction_ttl: 600_000,
    });
    expect(identity.upstream).toBeUndefined();
  });

  it.each([
    ['an http issuer off loopback', { issuer: 'http://idp.example', client_id: 'b' }, /https \(http only on a loopback host\)/],
    ['a secret and a key at once', { issuer: 'https://idp.example', client_id: 'b', client_secret_file: 's', private_key_file: 'k' }, /not both/],
    ['no client id', { issuer: 'https://idp.example' }, /identity\.upstream\.client_id/],
    ['an unknown field', { issuer: 'https://idp.example', client_id: 'b', password: 'x' }, /identity\.upstream/],
  ])('refuses %s', (_name, upstream, message) => {
    expect(() => parseConfig({ identity: { upstream } })).toThrow(message);
  });

  it('resolves its files relative to the config file', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-identity-config-'));
    try {
      const file = path.join(dir, 'bastion.json');
      await writeFile(file, JSON.stringify({ identity: { upstream: { issuer: 'https://idp.example', client_id: 'b', client_secret_file: 'idp.secret' }, client_id_metadata: { ca_file: 'ca.pem' } } }));
      const { identity } = await loadConfig(file);
      expect(identity.upstream!.client_secret_file).toBe(path.join(dir, 'idp.secret'));
      expect(identity.client_id_metadata.ca_file).toBe(path.join(dir, 'ca.pem'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
