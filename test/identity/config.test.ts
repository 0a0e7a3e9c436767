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

  it.each([
    ['client_credentials without public keys (no shared secrets)', { clients: [{ client_id: 'c', grant_types: ['client_credentials'], client_secret_file: 's' }] }, /client_credentials needs the client's public keys/],
    ['sign-in without a redirect URI', { clients: [{ client_id: 'c' }] }, /identity\.clients\.0\.redirect_uris: authorization_code needs/],
    ['an ID-JAG client with no credentials', { clients: [{ client_id: 'c', grant_types: ['jwt_bearer'] }] }, /jwt_bearer \(ID-JAG\) is for confidential clients/],
    ['two kinds of client credential', { clients: [{ client_id: 'c', grant_types: ['client_credentials'], jwks_file: 'a', jwks_uri: 'https://c.example/jwks' }] }, /at most one of/],
    ['a workload issuer over http off loopback, to be discovered', { token_exchange: { issuers: [{ name: 'k8s', issuer: 'http://k8s.example' }] } }, /discovery needs an https issuer/],
    ['HS256 for a workload issuer', { token_exchange: { issuers: [{ name: 'k8s', issuer: 'https://k8s.example', algorithms: ['HS256'] }] } }, /algorithms/],
    ['two workload issuers of one name', { token_exchange: { issuers: [{ name: 'k8s', issuer: 'https://a.example' }, { name: 'k8s', issuer: 'https://b.example' }] } }, /issuer names must be unique/],
    ['ID-JAG with no IdP to issue them', { id_jag: { enabled: true } }, /id_jag needs identity\.upstream/],
  ])('refuses %s', (_name, identity, message) => {
    expect(() => parseConfig({ identity })).toThrow(message);
  });

  it.each([
    ['approver sign-in without an IdP', { approvals: { sso: { enabled: true, roles: { approver: ['sre'] } } } }, /approvals\.sso\.enabled: approver sign-in needs identity\.upstream/],
    ['approver sign-in without roles', { identity: { upstream: { issuer: 'https://idp.example', client_id: 'b' } }, approvals: { sso: { enabled: true } } }, /approvals\.sso\.roles: give at least one role/],
  ])('refuses %s', (_name, config, message) => {
    expect(() => parseConfig(config)).toThrow(message);
  });

  it('a headless client: no redirect URI, keys instead of a secret', () => {
    const { identity } = parseConfig({ identity: { clients: [{ client_id: 'nightly', grant_types: ['client_credentials'], jwks_uri: 'https://nightly.example/jwks.json' }] } });
    expect(identity.clients[0]).toMatchObject({ client_id: 'nightly', redirect_uris: [], grant_types: ['client_credentials'] });
  });

  it('resolves its files relative to the config file', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bastion-identity-config-'));
    try {
      const file = path.join(dir, 'bastion.json');
      await writeFile(
        file,
        JSON.stringify({
          identity: {
            upstream: { issuer: 'https://idp.example', client_id: 'b', client_secret_file: 'idp.secret' },
            client_id_metadata: { ca_file: 'ca.pem' },
            clients: [{ client_id: 'c', grant_types: ['client_credentials'], jwks_file: 'c.jwks.json' }],
            token_exchange: { issuers: [{ name: 'k8s', issuer: 'https://k8s.example', jwks_file: 'k8s.jwks.json' }] },
          },
        }),
      );
      const { identity } = await loadConfig(file);
      expect(identity.upstream!.client_secret_file).toBe(path.join(dir, 'idp.secret'));
      expect(identity.client_id_metadata.ca_file).toBe(path.join(dir, 'ca.pem'));
      expect(identity.clients[0]!.jwks_file).toBe(path.join(dir, 'c.jwks.json'));
      expect(identity.token_exchange.issuers[0]!.jwks_file).toBe(path.join(dir, 'k8s.jwks.json'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
