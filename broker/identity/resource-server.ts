/**
 * The one resource Bastion's authorization server issues tokens for: the
 * broker's own MCP endpoint. Every grant (the library's and the headless
 * ones) issues its access token for this resource server: a JWT signed with
 * the authorization server's key, audience the broker's resource.
 *
 * @example
 *   getResourceServerInfo: () => resourceServerInfo({ resource, maxTtlMs, alg, kid }),
 */
import type { ResourceServer } from 'oidc-provider';

/** The scope of the broker's resource; MCP clients may ask for it or for nothing. */
export const RESOURCE_SCOPE = 'mcp';

export function resourceServerInfo(options: { resource: string; maxTtlMs: number; alg: 'EdDSA' | 'ES256'; kid: string | undefined }): ResourceServer {
  return {
    scope: RESOURCE_SCOPE,
    audience: options.resource,
    accessTokenFormat: 'jwt',
    accessTokenTTL: Math.max(1, Math.floor(options.maxTtlMs / 1000)),
    jwt: { sign: { alg: options.alg, ...(options.kid ? { kid: options.kid } : {}) } },
  };
}
