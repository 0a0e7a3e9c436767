/**
 * The `identity` config section: Bastion's authorization server, the
 * organisation's identity provider it signs users in at, and how MCP
 * clients may register. One zod schema, the type inferred from it.
 *
 * @example
 *   identity:
 *     upstream: { issuer: https://example.okta.com, client_id: bastion, client_secret_file: okta.secret, groups_claim: groups }
 *     registration: { enabled: true }
 */
import { z } from 'zod';

/** Parses "90", "90s", "5m", "8h", "30d" into milliseconds (bare numbers are seconds). */
function durationMs(value: string | number): number {
  if (typeof value === 'number') return value * 1000;
  const match = /^(\d+)(ms|s|m|h|d)?$/.exec(value.trim());
  if (!match) throw new Error(`not a duration: ${JSON.stringify(value)} (use e.g. 30s, 5m, 8h, 30d)`);
  return Number(match[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(match[2] ?? 's') as 'ms' | 's' | 'm' | 'h' | 'd'];
}

const Duration = z.union([z.number().nonnegative(), z.string()]).transform((value, ctx) => {
  try {
    return durationMs(value);
  } catch (error) {
    ctx.addIssue({ code: 'custom', message: (error as Error).message });
    return z.NEVER;
  }
});

/** The organisation's OpenID provider: Bastion is its relying party. */
export const UpstreamIdpSchema = z
  .strictObject({
    /** Its issuer identifier; discovery at <issuer>/.well-known/openid-configuration. http only for loopback hosts (development). */
    issuer: z.url({ protocol: /^https?$/ }),
    client_id: z.string().min(1),
    /** A file holding the client secret (client_secret_basic)… */
    client_secret_file: z.string().optional(),
    /** …or a private JWK file (private_key_jwt, RFC 7523): no shared secret. */
    private_key_file: z.string().optional(),
    /** offline_access lets Bastion ask the IdP for the user's current groups at every refresh. */
    scopes: z.array(z.string().min(1)).default(['openid', 'email', 'profile', 'offline_access']),
    /** Where the user's groups or roles are in the ID token (e.g. groups, roles, or a namespaced claim). */
    groups_claim: z.string().min(1).default('groups'),
    /** Further ID-token claims handed to the grants policy as identity.claims. */
    pass_claims: z.array(z.string().min(1).max(128)).max(32).default([]),
    /** Extra authorization-request parameters some IdPs need (e.g. Google's access_type: offline). */
    authorization_params: z.record(z.string(), z.string()).default({}),
    /** Upstream requests (discovery, token, JWKS) that take longer fail. */
    timeout: Duration.default(10_000),
  })
  .refine((idp) => !(idp.client_secret_file && idp.private_key_file), 'give client_secret_file or private_key_file, not both')
  .refine((idp) => new URL(idp.issuer).protocol === 'https:' || ['127.0.0.1', 'localhost', '[::1]'].includes(new URL(idp.issuer).hostname), {
    message: 'the issuer must be https (http only on a loopback host)',
  });
export type UpstreamIdpConfig = z.infer<typeof UpstreamIdpSchema>;

/** A client known in advance (no registration needed). */
export const StaticClientSchema = z.strictObject({
  client_id: z.string().min(1).max(256),
  client_name: z.string().max(256).optional(),
  redirect_uris: z.array(z.url()).min(1).max(16),
  /** Confidential clients: a file holding the secret; absent: a public client (PKCE only). */
  client_secret_file: z.string().optional(),
});

export const IdentityConfigSchema = z.strictObject({
  /** Bastion's authorization server (OAuth 2.1 for its own resource). */
  enabled: z.boolean().default(true),
  /** The organisation's IdP. Absent: the embedded development IdP (one demo user, password printed at start-up). */
  upstream: UpstreamIdpSchema.optional(),
  clients: z.array(StaticClientSchema).default([]),
  /** RFC 7591 dynamic client registration, for clients that only do DCR. Off unless the operator turns it on. */
  registration: z
    .strictObject({
      enabled: z.boolean().default(false),
      /** Live registrations at most; further ones are refused. */
      max_clients: z.number().int().positive().default(1000),
      /** Registrations per client address per minute. */
      per_minute: z.number().int().positive().default(10),
      max_redirect_uris: z.number().int().min(1).max(32).default(5),
      /** A registration is forgotten this long after it was made. */
      ttl: Duration.default(30 * 86_400_000),
    })
    .prefault({}),
  /** Client ID Metadata Documents: a client_id that is the HTTPS URL of the client's metadata. */
  client_id_metadata: z
    .strictObject({
      enabled: z.boolean().default(true),
      /** Fetching from loopback, private or other special-use addresses is refused unless this is on (tests, labs). */
      allow_private_addresses: z.boolean().default(false),
      /** Extra PEM CA certificates to trust for the documents' hosts. */
      ca_file: z.string().optional(),
      max_bytes: z.number().int().positive().max(65_536).default(5120),
      timeout: Duration.default(2500),
    })
    .prefault({}),
  /** How long a refresh-token family lives from sign-in; the user signs in again after it. */
  refresh_max_age: Duration.default(8 * 3_600_000),
  /** How long a sign-in (IdP round trip and consent page) may take. */
  interaction_ttl: Duration.default(10 * 60_000),
});
export type IdentityConfig = z.infer<typeof IdentityConfigSchema>;

/** Makes the section's file paths relative to the config file (loadConfig calls this). */
export function resolveIdentityPaths(identity: IdentityConfig, resolve: (file: string) => string): void {
  const { upstream, client_id_metadata: cimd } = identity;
  if (upstream?.client_secret_file) upstream.client_secret_file = resolve(upstream.client_secret_file);
  if (upstream?.private_key_file) upstream.private_key_file = resolve(upstream.private_key_file);
  if (cimd.ca_file) cimd.ca_file = resolve(cimd.ca_file);
  for (const client of identity.clients) if (client.client_secret_file) client.client_secret_file = resolve(client.client_secret_file);
}
