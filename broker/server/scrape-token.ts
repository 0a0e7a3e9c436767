/**
 * The optional bearer token that guards GET /metrics
 * (`server.metrics_token_file`). Metrics name every tool and show call
 * volumes and refusals, which tell an attacker what a deployment can do; a
 * scrape token keeps that to the monitoring system (Prometheus sends it with
 * `authorization: { credentials_file: … }`).
 *
 * The token is compared by SHA-256 digest with a constant-time comparison, so
 * neither its length nor its content leaks through timing.
 *
 * @example
 *   const expected = await loadScrapeToken('/etc/bastion/metrics.token');
 *   if (!presentsScrapeToken(req.headers.authorization, expected)) res.status(401).end();
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { ConfigError } from '../config.ts';

/** Shorter tokens are refused at start-up: a scrape token must not be guessable. */
export const MIN_SCRAPE_TOKEN_CHARS = 32;

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** Reads the token (surrounding whitespace trimmed) and returns its digest; throws a ConfigError naming the file. */
export async function loadScrapeToken(file: string): Promise<Buffer> {
  let token: string;
  try {
    token = (await readFile(file, 'utf8')).trim();
  } catch (error) {
    throw new ConfigError(`server.metrics_token_file ${file} cannot be read: ${(error as Error).message}`);
  }
  if (token.length < MIN_SCRAPE_TOKEN_CHARS) {
    throw new ConfigError(
      `server.metrics_token_file ${file} holds ${token.length} characters; a scrape token needs at least ${MIN_SCRAPE_TOKEN_CHARS} (e.g. openssl rand -hex 32)`,
    );
  }
  if (/\s/.test(token)) throw new ConfigError(`server.metrics_token_file ${file}: the token must not contain whitespace`);
  return digest(token);
}

/** True when `authorization` is `Bearer <token>` with the expected token. */
export function presentsScrapeToken(authorization: string | undefined, expected: Buffer): boolean {
  const match = authorization === undefined ? null : /^Bearer ([^\s]+)$/i.exec(authorization);
  return match !== null && timingSafeEqual(digest(match[1]!), expected);
}
