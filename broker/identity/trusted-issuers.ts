/**
 * The issuers whose JWTs the token endpoint accepts as grants, built from
 * config: workload issuers for token exchange (identity.token_exchange.issuers:
 * a Kubernetes service-account issuer, GitHub Actions, …) and the
 * organisation's IdP for ID-JAGs. Keys come from a JWKS file, a JWKS URL,
 * or the issuer's OpenID discovery document (openid-client checks that it
 * names the same issuer); discovery happens on first use and a failed one
 * is retried on the next. Key refreshes are bounded as for stage 1's
 * issuers (auth/keysets.ts).
 *
 * @example
 *   const issuers = workloadIssuers(config.identity.token_exchange.issuers, { resource, minRefreshMs });
 *   await verifyPresentedToken(token, issuers, { clockSkewMs });
 */
import * as oidc from 'openid-client';
import { issuerKeys } from '../auth/keysets.ts';
import { insecureLoopback, type WorkloadIssuerConfig } from './config.ts';
import type { TrustedIssuer } from './presented-tokens.ts';

/** Memoizes a connection attempt; a failed one is retried on the next call. */
export function lazily<T>(connect: () => Promise<T>): () => Promise<T> {
  let pending: Promise<T> | undefined;
  return () => {
    pending ??= connect().catch((error: unknown) => {
      pending = undefined;
      throw error;
    });
    return pending;
  };
}

/** The jwks_uri of an issuer's OpenID discovery document. */
export async function discoverJwksUri(issuer: string, timeoutMs: number): Promise<string> {
  const url = new URL(issuer);
  const insecure = insecureLoopback(url);
  const timeout: oidc.CustomFetch = (target, init) => fetch(target, { ...init, signal: AbortSignal.timeout(timeoutMs) } as RequestInit);
  // No client: only the server's metadata is wanted. openid-client refuses a document for another issuer.
  const configuration = await oidc.discovery(url, 'bastion', undefined, oidc.None(), {
    ...(insecure ? { execute: [oidc.allowInsecureRequests] } : {}),
    [oidc.customFetch]: timeout,
  });
  const jwksUri = configuration.serverMetadata().jwks_uri;
  if (!jwksUri) throw new Error(`${issuer} publishes no jwks_uri`);
  return jwksUri;
}

/** Where an issuer's keys come from, as a lazy key lookup. */
export function keysOf(source: { issuer: string; jwks_file?: string; jwks_url?: string; timeout: number }, minRefreshMs: number): TrustedIssuer['keys'] {
  const options = { minRefreshMs, fetchTimeoutMs: source.timeout };
  if (source.jwks_file) return lazily(async () => issuerKeys({ issuer: source.issuer, jwks_file: source.jwks_file! }, options).getKey);
  if (source.jwks_url) return lazily(async () => issuerKeys({ issuer: source.issuer, jwks_url: source.jwks_url! }, options).getKey);
  return lazily(async () => issuerKeys({ issuer: source.issuer, jwks_url: await discoverJwksUri(source.issuer, source.timeout) }, options).getKey);
}

/** The token-exchange issuers, by `iss`. Their tokens must name `resource` as audience unless configured otherwise. */
export function workloadIssuers(configs: WorkloadIssuerConfig[], options: { resource: string; minRefreshMs: number }): Map<string, TrustedIssuer & { passClaims: string[] }> {
  return new Map(
    configs.map((config) => [
      config.issuer,
      {
        name: config.name,
        issuer: config.issuer,
        audience: config.audience ?? options.resource,
        algorithms: config.algorithms,
        typ: config.typ,
        maxLifetimeMs: config.max_lifetime,
        passClaims: config.pass_claims,
        keys: keysOf(config, options.minRefreshMs),
      },
    ]),
  );
}
