/**
 * The grants policy adapter: a verified identity in, the capabilities its
 * agent's token may carry out, decided by Rego (`bastion/grants`,
 * policies/grants.rego) and validated as strictly as the decision document.
 * Any failure (no entrypoint, an evaluation error, a missing, extra or
 * malformed field) is a GrantRefusal: no token.
 *
 * @example
 *   const grant = decideGrant(broker.policy.current(), { version: 1, identity, client, scopes: [], grant_type: 'authorization_code', context: { time } });
 *   // grant.cap, grant.ttlMs (capped by auth.max_ttl by the caller), grant.approval
 */
import { z } from 'zod';
import { Denial } from '../errors.ts';
import type { PolicyEngine } from '../policy/engine.ts';
import { CapabilitySchema } from '../policy/schema.ts';

const Text = (max: number) => z.string().min(1).max(max);

/** The identity the upstream IdP vouched for (its ID token, checked), as the policy sees it. */
export const GrantIdentitySchema = z.strictObject({
  /** The upstream IdP's issuer. */
  iss: Text(1024),
  sub: Text(255),
  email: z.string().max(320).optional(),
  email_verified: z.boolean().optional(),
  name: z.string().max(256).optional(),
  /** Groups or roles, from the configured claim; as they are now (refresh asks the IdP again). */
  groups: z.array(Text(256)).max(512),
  /** The claims the operator chose to pass on (identity.upstream.pass_claims, or the workload issuer's). */
  claims: z.record(z.string().max(128), z.json()).refine((claims) => JSON.stringify(claims).length <= 16_384, 'at most 16384 characters as JSON'),
  /**
   * Who vouched: the organisation's IdP (sign-in, refresh, ID-JAG; also when absent), a trusted
   * workload issuer (token exchange), or the client itself (client credentials).
   */
  source: z.enum(['idp', 'workload', 'client']).optional(),
  /** For a workload: the configured name of its issuer (identity.token_exchange.issuers[].name). */
  issuer_name: Text(32).optional(),
});
export type GrantIdentity = z.infer<typeof GrantIdentitySchema>;

/** The verified actor of a token exchange (its actor_token): who acts for the identity. */
export const GrantActorSchema = GrantIdentitySchema.pick({ iss: true, sub: true, claims: true, issuer_name: true });
export type GrantActor = z.infer<typeof GrantActorSchema>;

/** The grant types the policy decides on; the headless ones are issue 22's. */
export const GRANT_TYPES = ['authorization_code', 'refresh_token', 'token_exchange', 'client_credentials', 'jwt_bearer'] as const;
export type GrantType = (typeof GRANT_TYPES)[number];

export const GrantsInputSchema = z.strictObject({
  version: z.literal(1),
  identity: GrantIdentitySchema,
  client: z.strictObject({
    id: Text(2048),
    name: z.string().max(256).optional(),
    redirect_uri: z.string().max(2048).optional(),
    /** How Bastion knows the client: configured, registered by DCR, a Client ID Metadata Document, or Bastion's own CLI client. */
    registration: z.enum(['static', 'dynamic', 'metadata_document', 'builtin']),
  }),
  /** token_exchange with an actor_token: the party acting for the identity. */
  actor: GrantActorSchema.optional(),
  scopes: z.array(Text(256)).max(64),
  grant_type: z.enum(GRANT_TYPES),
  context: z.strictObject({ time: z.iso.datetime() }),
});
export type GrantsInput = z.infer<typeof GrantsInputSchema>;

/** What the policy must answer, exactly (unknown fields refused). */
export const GrantsDecisionSchema = z.strictObject({
  allow: z.boolean(),
  cap: z.array(CapabilitySchema).max(64),
  /** Token lifetime the policy wants; the broker caps it at auth.max_ttl. */
  ttl_s: z.number().int().min(1).max(86_400),
  approval: z.strictObject({ required: z.boolean(), reason: z.string().max(1024) }),
  reasons: z.array(z.string().max(1024)).max(64),
});
export type GrantsDecision = z.infer<typeof GrantsDecisionSchema>;

export interface Grant {
  cap: GrantsDecision['cap'];
  ttlMs: number;
  approval: GrantsDecision['approval'];
  reasons: string[];
}

export type GrantRefusalCode = 'BASTION_GRANT_POLICY_ERROR' | 'BASTION_GRANT_DENIED';

/** No token: the policy failed (`BASTION_GRANT_POLICY_ERROR`) or granted nothing (`BASTION_GRANT_DENIED`). */
export class GrantRefusal extends Denial {
  constructor(code: GrantRefusalCode, reason: string) {
    super('authorize', code, reason);
  }
}

function summarize(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((issue) => `${issue.path.length ? issue.path.map(String).join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
}

/**
 * The grants document for a sign-in: input and answer validated strictly.
 * Throws GrantRefusal('BASTION_GRANT_POLICY_ERROR') on any failure; an
 * answer that grants nothing is returned as it is (`bastion policy eval`).
 */
export function evaluateGrants(engine: PolicyEngine, input: GrantsInput): GrantsDecision {
  const parsedInput = GrantsInputSchema.safeParse(input);
  if (!parsedInput.success) throw new GrantRefusal('BASTION_GRANT_POLICY_ERROR', `invalid grants policy input: ${summarize(parsedInput.error)}`);
  let raw: unknown;
  try {
    raw = engine.evaluateGrants(parsedInput.data);
  } catch (error) {
    throw new GrantRefusal('BASTION_GRANT_POLICY_ERROR', (error as Denial).reason ?? (error as Error).message);
  }
  const decision = GrantsDecisionSchema.safeParse(raw);
  if (!decision.success) throw new GrantRefusal('BASTION_GRANT_POLICY_ERROR', `grants policy result is malformed: ${summarize(decision.error)}`);
  return decision.data;
}

/**
 * Asks the grants policy. Throws GrantRefusal unless it allows a non-empty
 * capability list; `maxTtlMs` caps the lifetime whatever the policy says.
 */
export function decideGrant(engine: PolicyEngine, input: GrantsInput, maxTtlMs: number): Grant {
  const { allow, cap, ttl_s, approval, reasons } = evaluateGrants(engine, input);
  if (!allow || cap.length === 0) {
    throw new GrantRefusal('BASTION_GRANT_DENIED', reasons.length > 0 ? reasons.join('; ') : 'the grants policy grants this identity nothing');
  }
  return { cap, ttlMs: Math.min(ttl_s * 1000, maxTtlMs), approval, reasons };
}
