/**
 * The policy's contract, declared once as zod schemas with the types derived
 * from them: what the broker sends the policy (PolicyInput, version 1), the
 * capabilities a token carries (Capability), and what the policy must answer
 * (Decision).
 *
 * The semantics of capabilities live in the Rego (policies/bastion.rego);
 * these schemas only decide what is well-formed. They are strict (unknown
 * keys refused) so a field the policy does not understand can never be
 * silently ignored, and bounded so a token cannot make the policy do
 * unbounded work.
 *
 * @example
 *   const cap = CapabilitySchema.parse({ tool: 'fs__read_*', args: { path: { path_prefix: '/srv/' } } });
 *   const decision = DecisionSchema.parse(untrusted); // throws on any missing or malformed field
 */
import { z } from 'zod';
import { FlowDecisionSchema, FlowInputSchema } from '../flows/schema.ts';

/** Serialized-size cap for a JSON value carried in a constraint. */
function boundedJson(maxChars: number) {
  return z
    .json()
    .refine((value) => JSON.stringify(value).length <= maxChars, `at most ${maxChars} characters as JSON`);
}

/**
 * A condition on one argument of a call. Every field present must hold, and
 * at least one must be present (an empty constraint would read as "anything").
 *
 * @example
 *   ConstraintSchema.parse({ path_prefix: '/srv/', max_length: 256 });
 */
export const ConstraintSchema = z
  .strictObject({
    eq: boundedJson(4096).optional(),
    enum: z
      .array(z.json())
      .min(1)
      .max(64)
      .refine((values) => JSON.stringify(values).length <= 16_384, 'at most 16384 characters as JSON')
      .optional(),
    prefix: z.string().max(1024).optional(),
    /** Segment-aware: "/srv" covers "/srv" and "/srv/x", not "/srv-x". The policy also refuses "..", ".", "//", "\" and NUL. */
    path_prefix: z.string().min(1).max(1024).optional(),
    /** RE2 syntax, matched against the whole argument. */
    pattern: z.string().min(1).max(256).optional(),
    min: z.number().optional(),
    max: z.number().optional(),
    /** In Unicode code points, as the policy counts them. */
    max_length: z.number().int().min(0).optional(),
  })
  .refine(
    (constraint) => Object.values(constraint).some((value) => value !== undefined),
    'a constraint needs at least one field',
  );

export type Constraint = z.infer<typeof ConstraintSchema>;

const MAX_CONSTRAINED_ARGUMENTS = 32;

/**
 * One grant in a token's `cap` claim: a glob over namespaced tool names
 * ("*" matches any run of characters) and optional argument constraints.
 *
 * @example
 *   CapabilitySchema.parse({ tool: 'demo__*' });
 *   CapabilitySchema.parse({ tool: 'payments__refund', args: { amount: { min: 0, max: 100 } } });
 */
export const CapabilitySchema = z.strictObject({
  // The policy quotes glob pieces as \Q...\E; a backslash could end the quote,
  // so the policy would never match such a glob. Refuse it up front instead.
  tool: z
    .string()
    .min(1)
    .max(256)
    .refine((glob) => !glob.includes('\\'), 'must not contain a backslash'),
  args: z
    .record(z.string().min(1).max(128), ConstraintSchema)
    .refine(
      (args) => Object.keys(args).length <= MAX_CONSTRAINED_ARGUMENTS,
      `at most ${MAX_CONSTRAINED_ARGUMENTS} constrained arguments`,
    )
    .optional(),
});

export type Capability = z.infer<typeof CapabilitySchema>;

/**
 * What the broker asks the policy about, version 1. Built by the pipeline,
 * validated again by the engine before every evaluation.
 *
 * @example
 *   const input: PolicyInput = {
 *     version: 1,
 *     principal: { sub: 'agent:ci-bot', iss: 'https://issuer.example', act: [], cap: [{ tool: 'demo__*' }], anonymous: false },
 *     tool: { name: 'demo__read_file', connector: 'demo', risk: 'low', descriptor_hash: 'sha256:…' },
 *     arguments: { path: '/srv/a' },
 *     context: { time: new Date().toISOString(), transport: 'http', session: 's-1', method: 'tools/call' },
 *   };
 */
export const PolicyInputSchema = z.strictObject({
  version: z.literal(1),
  principal: z.strictObject({
    sub: z.string(),
    iss: z.string(),
    /** Delegation chain, nearest actor first. */
    act: z.array(z.strictObject({ sub: z.string() })),
    cap: z.array(CapabilitySchema).max(64),
    anonymous: z.boolean(),
  }),
  tool: z.strictObject({
    name: z.string().min(1),
    connector: z.string(),
    risk: z.enum(['low', 'medium', 'high']),
    descriptor_hash: z.string(),
  }),
  arguments: z.record(z.string(), z.json()),
  context: z.strictObject({
    time: z.iso.datetime({ offset: true }),
    transport: z.enum(['http', 'stdio']),
    session: z.string(),
    method: z.enum(['tools/call', 'tools/list']),
  }),
  /**
   * Additive in version 1: what earlier results brought into the agent's
   * context, this call's own flow labels and the arguments that came from
   * untrusted content (broker/flows/). Present on tools/call while flow
   * control is on; inputs without it are still valid.
   */
  flow: FlowInputSchema.optional(),
});

export type PolicyInput = z.infer<typeof PolicyInputSchema>;

/**
 * The policy's answer (`data.bastion.decision`). Strict: an unknown
 * obligation must not be dropped on the floor, so it fails validation and
 * the call is denied.
 *
 * @example
 *   const d: Decision = { allow: false, approval: { required: false, quorum: 1, reason: '' },
 *     reasons: ['no capability names tool demo__delete_file'], obligations: { redact: [], max_result_bytes: 1048576 } };
 */
export const DecisionSchema = z.strictObject({
  allow: z.boolean(),
  approval: z.strictObject({
    required: z.boolean(),
    quorum: z.number().int().min(1),
    reason: z.string(),
    /** Optional: only approvers holding one of these roles may decide. */
    roles: z.array(z.string().min(1).max(64)).max(16).optional(),
    /** Optional: how long the call may wait for approvers, capped by config. */
    timeout_s: z.number().int().min(1).optional(),
    /** Optional: an approver's vote counts only if they signed in at most this many seconds ago (else: sign in again). */
    max_auth_age_s: z.number().int().min(1).optional(),
  }),
  reasons: z.array(z.string()),
  obligations: z.strictObject({
    redact: z.array(z.string()),
    max_result_bytes: z.number().int().min(0),
  }),
  /** Present when the input had `flow`: the tool's effective labels and the flow rules that fired. */
  flow: FlowDecisionSchema.optional(),
});

export type Decision = z.infer<typeof DecisionSchema>;
