/**
 * Where a trusted issuer's public keys come from: a local JWKS file (re-read
 * when it changes, so keys rotate without a restart) or a JWKS URL (fetched
 * and cached by jose, refreshed when a token names an unknown `kid`).
 *
 * Refreshes are bounded: a flood of tokens with random `kid`s triggers at
 * most one file stat or one fetch per `minRefreshMs`, whatever happens to the
 * fetches, so an attacker cannot make Bastion hammer the issuer.
 *
 * @example
 *   const keys = issuerKeys({ issuer: 'https://id.example', jwks_url: 'https://id.example/jwks.json' });
 *   await jwtVerify(token, keys.getKey, options);
 */
import { stat } from 'node:fs/promises';
import { createLocalJWKSet, createRemoteJWKSet, customFetch, errors, type JWTVerifyGetKey } from 'jose';
import { readJwksFile } from './keys.ts';

export type IssuerSource = { issuer: string; jwks_file: string } | { issuer: string; jwks_url: string };

export interface IssuerKeys {
  issuer: string;
  getKey: JWTVerifyGetKey;
  /** How many times the source was actually read or fetched (for tests and metrics). */
  readonly loads: number;
}

export interface KeySetOptions {
  minRefreshMs?: number;
  fetchTimeoutMs?: number;
  cacheMaxAgeMs?: number;
  now?: () => number;
}

function fileKeys(issuer: string, file: string, options: Required<Pick<KeySetOptions, 'minRefreshMs'>> & { now: () => number }): IssuerKeys {
  let keySet: JWTVerifyGetKey | undefined;
  let mtimeMs = -1;
  let lastCheck = -Infinity;
  let loads = 0;

  async function reload(force: boolean): Promise<void> {
    const nowMs = options.now();
    if (!force && nowMs - lastCheck < options.minRefreshMs) return;
    lastCheck = nowMs;
    const info = await stat(file);
    if (keySet && info.mtimeMs === mtimeMs) return;
    const jwks = await readJwksFile(file);
    loads++;
    keySet = createLocalJWKSet(jwks);
    mtimeMs = info.mtimeMs;
  }

  return {
    issuer,
    get loads() {
      return loads;
    },
    async getKey(header, token) {
      // A changed file is noticed within one interval, so a removed key stops working too.
      await reload(!keySet);
      try {
        return await keySet!(header, token);
      } catch (error) {
        if (!(error instanceof errors.JWKSNoMatchingKey)) throw error;
        // Unknown kid: the file may have been rotated since it was read.
        await reload(false);
        return keySet!(header, token);
      }
    },
  };
}

function urlKeys(issuer: string, url: string, options: Required<KeySetOptions>): IssuerKeys {
  let loads = 0;
  let lastAttempt = -Infinity;
  const remote = createRemoteJWKSet(new URL(url), {
    timeoutDuration: options.fetchTimeoutMs,
    cooldownDuration: options.minRefreshMs,
    cacheMaxAge: options.cacheMaxAgeMs,
    // jose's cooldown only starts after a successful fetch; this bounds failed ones too.
    [customFetch]: async (target, init) => {
      const nowMs = options.now();
      if (nowMs - lastAttempt < options.minRefreshMs) {
        throw new errors.JWKSNoMatchingKey('JWKS refresh is rate-limited; try again later');
      }
      lastAttempt = nowMs;
      loads++;
      return fetch(target, init);
    },
  });
  return {
    issuer,
    get loads() {
      return loads;
    },
    getKey: remote,
  };
}

export function issuerKeys(source: IssuerSource, options: KeySetOptions = {}): IssuerKeys {
  const resolved = {
    minRefreshMs: options.minRefreshMs ?? 30_000,
    fetchTimeoutMs: options.fetchTimeoutMs ?? 5_000,
    cacheMaxAgeMs: options.cacheMaxAgeMs ?? 600_000,
    now: options.now ?? Date.now,
  };
  return 'jwks_file' in source ? fileKeys(source.issuer, source.jwks_file, resolved) : urlKeys(source.issuer, source.jwks_url, resolved);
}

