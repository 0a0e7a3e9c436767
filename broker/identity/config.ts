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

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

/** OAuth needs https; plain http is tolerated only on a loopback host (development). */
export function httpAllowed(url: URL): boolean {
  return url.protocol === 'https:' || LOOPBACK_HOSTS.has(url.hostname);
}

/** An http URL on a loopback host: the one place requests without TLS are allowed. */
export function insecureLoopback(url: URL): boolean {
  return url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname);
}

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
  .refine((idp) => httpAllowed(new URL(idp.issuer)), {
    message: 'the issuer must be https (http only on a loopback host)',
  });
export type UpstreamIdpConfig = z.infer<typeof UpstreamIdpSchema>;

/** The grants a configured client may use: sign-in (code and refresh) and the headless ones. */
export const CLIENT_GRANTS = ['authorization_code', 'refresh_token', 'token_exchange', 'client_credentials', 'jwt_bearer'] as const;
export type ClientGrant = (typeof CLIENT_GRANTS)[number];

/** A client known in advance (no registration needed). */
export const StaticClientSchema = z
  .strictObject({
    client_id: z.string().min(1).max(256),
    client_name: z.string().max(256).optional(),
    /** Needed for sign-in (authorization_code); headless clients have none. */
    redirect_uris: z.array(z.url()).max(16).default([]),
    grant_types: z.array(z.enum(CLIENT_GRANTS)).min(1).default(['authorization_code', 'refresh_token']),
    /** Confidential clients: a file holding the secret… */
    client_secret_file: z.string().optional(),
    /** …or its public keys (private_key_jwt, RFC 7523): a JWKS file… */
    jwks_file: z.string().optional(),
    /** …or an https JWKS URL (fetched under client_id_metadata's rules: addresses, ca_file, size). Absent all three: a public client (PKCE only). */
    jwks_uri: z.url({ protocol: /^https$/ }).optional(),
  })
  .refine((c) => [c.client_secret_file, c.jwks_file, c.jwks_uri].filter(Boolean).length <= 1, 'give at most one of client_secret_file, jwks_file and jwks_uri')
  .refine((c) => !c.grant_types.includes('authorization_code') || c.redirect_uris.length > 0, { message: 'authorization_code needs at least one redirect URI', path: ['redirect_uris'] })
  .refine((c) => !c.grant_types.includes('client_credentials') || Boolean(c.jwks_file ?? c.jwks_uri), {
    message: 'client_credentials needs the client\'s public keys (jwks_file or jwks_uri): no shared secrets',
    path: ['grant_types'],
  })
  .refine((c) => !c.grant_types.includes('jwt_bearer') || Boolean(c.client_secret_file ?? c.jwks_file ?? c.jwks_uri), {
    message: 'jwt_bearer (ID-JAG) is for confidential clients: give jwks_file, jwks_uri or client_secret_file',
    path: ['grant_types'],
  });

/** JWS algorithms a presented token may use: asymmetric only (no none, no HMAC: no key confusion). */
export const PRESENTED_TOKEN_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;

/**
 * An issuer whose JWTs may be exchanged (RFC 8693): a Kubernetes service-account issuer, GitHub
 * Actions, a cloud workload identity. Its keys come from OIDC discovery unless a JWKS is given.
 */
export const WorkloadIssuerSchema = z
  .strictObject({
    /** Names the issuer in the grants policy (identity.issuer_name) and prefixes the token's subject (<name>:<sub>). */
    name: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'lowercase letters, digits and "-", starting with a letter, at most 32'),
    /** Exact `iss` claim value. */
    issuer: z.url({ protocol: /^https?$/ }),
    /** Keys from a JWKS URL… */
    jwks_url: z.url({ protocol: /^https?$/ }).optional(),
    /** …or a local JWKS file; with neither, from <issuer>/.well-known/openid-configuration. */
    jwks_file: z.string().optional(),
    /** The `aud` its tokens must carry (exactly). Default: the broker's resource identifier. */
    audience: z.string().min(1).optional(),
    /** Pinned signature algorithms. */
    algorithms: z.array(z.enum(PRESENTED_TOKEN_ALGORITHMS)).min(1).default(['RS256', 'ES256']),
    /** The JOSE `typ` its tokens carry, when it sets one (then required); absent: typ is not checked. */
    typ: z.string().min(1).optional(),
    /** Longest lifetime (exp − iat) accepted. */
    max_lifetime: Duration.default(3_600_000),
    /** Claims handed to the grants policy as identity.claims (e.g. repository, workflow; kubernetes.io). */
    pass_claims: z.array(z.string().min(1).max(128)).max(32).default([]),
    /** Upstream requests (discovery, JWKS) that take longer fail. */
    timeout: Duration.default(5000),
  })
  .refine((i) => !(i.jwks_url && i.jwks_file), 'give jwks_url or jwks_file, not both')
  .refine((i) => Boolean(i.jwks_file) || httpAllowed(new URL(i.issuer)), {
    message: 'discovery needs an https issuer (http only on a loopback host), or give jwks_file',
  });
export type WorkloadIssuerConfig = z.infer<typeof WorkloadIssuerSchema>;

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
  /** RFC 8693 token exchange: the issuers whose JWTs an agent may exchange for a capability token. */
  token_exchange: z
    .strictObject({
      issuers: z.array(WorkloadIssuerSchema).max(32).default([]),
      /** The public client `bastion-cli` (no secret: the subject token is the credential) for scripts and `bastion token exchange`. */
      cli_client: z.boolean().default(true),
    })
    .prefault({})
    .refine((x) => new Set(x.issuers.map((i) => i.name)).size === x.issuers.length, 'issuer names must be unique')
    .refine((x) => new Set(x.issuers.map((i) => i.issuer)).size === x.issuers.length, 'each issuer once'),
  /**
   * Enterprise-managed authorization: identity assertion grants (ID-JAG,
   * draft-ietf-oauth-identity-assertion-authz-grant-06) that identity.upstream issues for this
   * broker, exchanged with the jwt-bearer grant (RFC 7523) by configured confidential clients.
   */
  id_jag: z
    .strictObject({
      enabled: z.boolean().default(false),
      /** Longest lifetime (exp − iat) of an ID-JAG accepted. */
      max_lifetime: Duration.default(300_000),
      /** Pinned signature algorithms of the IdP's ID-JAGs. */
      algorithms: z.array(z.enum(PRESENTED_TOKEN_ALGORITHMS)).min(1).default(['RS256', 'ES256', 'EdDSA']),
    })
    .prefault({}),
  /** How long a refresh-token family lives from sign-in; the user signs in again after it. */
  refresh_max_age: Duration.default(8 * 3_600_000),
  /** How long a sign-in (IdP round trip and consent page) may take. */
  interaction_ttl: Duration.default(10 * 60_000),
}).refine((identity) => !identity.id_jag.enabled || identity.upstream !== undefined, { message: 'id_jag needs identity.upstream (the IdP that issues the grants)', path: ['id_jag'] });
export type IdentityConfig = z.infer<typeof IdentityConfigSchema>;

/** Makes the section's file paths relative to the config file (loadConfig calls this). */
export function resolveIdentityPaths(identity: IdentityConfig, resolve: (file: string) => string): void {
  const { upstream, client_id_metadata: cimd } = identity;
  if (upstream?.client_secret_file) upstream.client_secret_file = resolve(upstream.client_secret_file);
  if (upstream?.private_key_file) upstream.private_key_file = resolve(upstream.private_key_file);
  if (cimd.ca_file) cimd.ca_file = resolve(cimd.ca_file);
  for (const client of identity.clients) {
    if (client.client_secret_file) client.client_secret_file = resolve(client.client_secret_file);
    if (client.jwks_file) client.jwks_file = resolve(client.jwks_file);
  }
  for (const issuer of identity.token_exchange.issuers) if (issuer.jwks_file) issuer.jwks_file = resolve(issuer.jwks_file);
}
