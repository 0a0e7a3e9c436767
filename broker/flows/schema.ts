/**
 * Flow control's shapes, declared once as zod schemas with the types derived
 * from them: the labels, how a tool's labels are configured, the `flow`
 * member of the policy input (what the agent's context holds, the call's
 * own labels, the arguments that came from untrusted content) and the
 * `flow` member of the decision (the tool's effective labels, the rules
 * that fired). Every list and string is bounded, so a flow can never make
 * the policy do unbounded work.
 *
 * @example
 *   const spec = ToolFlowSettingsSchema.parse({ labels: ['external'], egress: { to: 'email' } });
 *   const flow: FlowInput = { labels: {}, sources: [], tool: { labels: ['external'], egress: [] }, arguments: [] };
 */
import { z } from 'zod';

/**
 * `untrusted` and `private` describe what a result brings into the agent's
 * context; `external` and `destructive` what a call does.
 */
export const FLOW_LABELS = ['untrusted', 'private', 'external', 'destructive'] as const;
export type FlowLabel = (typeof FLOW_LABELS)[number];
export const FlowLabelSchema = z.enum(FLOW_LABELS);

/** The labels a result carries into the flow. */
export const CONTEXT_LABELS = ['untrusted', 'private'] as const;
export type ContextLabel = (typeof CONTEXT_LABELS)[number];
export const ContextLabelSchema = z.enum(CONTEXT_LABELS);

/** How an argument names where data goes: a URL, an email address, or a bare host name. */
export const EGRESS_KINDS = ['url', 'email', 'host'] as const;
export type EgressKind = (typeof EGRESS_KINDS)[number];

const uniqueLabels = <T extends z.ZodType<string>>(item: T) =>
  z
    .array(item)
    .max(FLOW_LABELS.length)
    .refine((labels) => new Set(labels).size === labels.length, 'labels must be unique');

/**
 * A tool's flow settings in connector or plugin config
 * (`connectors[].tools.<name>`): its labels, replacing what the annotations
 * suggest, and the arguments that name a destination (`egress`): a call
 * whose destination lies outside the organisation is `external`, whatever
 * the tool's name says.
 *
 * @example
 *   ToolFlowSettingsSchema.parse({ labels: ['untrusted'], egress: { url: 'url' } }); // a web fetcher
 */
export const ToolFlowSettingsSchema = z.strictObject({
  labels: uniqueLabels(FlowLabelSchema).optional(),
  egress: z
    .record(z.string().min(1).max(128), z.enum(EGRESS_KINDS))
    .refine((args) => Object.keys(args).length <= 16, 'at most 16 egress arguments')
    .optional(),
});
export type ToolFlowSettings = z.infer<typeof ToolFlowSettingsSchema>;

/** Labels of a connector's resources and prompts (no annotations say anything about trust there). */
export const ItemFlowSettingsSchema = z.strictObject({
  resources: uniqueLabels(ContextLabelSchema).default([]),
  prompts: uniqueLabels(ContextLabelSchema).default([]),
});
export type ItemFlowSettings = z.infer<typeof ItemFlowSettingsSchema>;

// ---------------------------------------------------------------------------
// Policy input

export const SourceIdSchema = z.string().min(1).max(32);

/** What a value is, as provenance reads it. */
export const VALUE_KINDS = ['email', 'url', 'domain', 'iban', 'number', 'path', 'handle', 'text'] as const;
export type ValueKind = (typeof VALUE_KINDS)[number];

/** One earlier result (or resource, or prompt) that brought labels into the flow. */
export const FlowSourceSchema = z.strictObject({
  /** Unique within the flow ("s1", "s2", …). */
  id: SourceIdSchema,
  /** The exposed tool name, or `resource:<uri>` / `prompt:<name>`. */
  tool: z.string().min(1).max(512),
  at: z.iso.datetime({ offset: true }),
  /** Seconds between `at` and this call (in the policy input only), so a policy can let labels expire without a time builtin. */
  age_s: z.number().min(0).optional(),
  labels: uniqueLabels(ContextLabelSchema),
  /** Why: "tool labels (config)", "the result filter flagged …". */
  reason: z.string().max(512),
  /** The flagged text, when the injection filter raised the label (already secret-redacted). */
  excerpt: z.string().max(400).optional(),
  /** Correlates with the audit record of that call (`detail.flow.call`). */
  call: z.string().min(1).max(64),
});
export type FlowSource = z.infer<typeof FlowSourceSchema>;

/** A destination this call names through an egress argument. `host` is "" when the value could not be read as one. */
export const EgressTargetSchema = z.strictObject({
  /** JSON pointer into the arguments, e.g. "/to" or "/cc/1". */
  argument: z.string().max(512),
  kind: z.enum(EGRESS_KINDS),
  value: z.string().max(512),
  host: z.string().max(255),
});
export type EgressTarget = z.infer<typeof EgressTargetSchema>;

/** An argument value that appeared in untrusted content and in nothing trusted. */
export const TaintedArgumentSchema = z.strictObject({
  argument: z.string().max(512),
  kind: z.enum(VALUE_KINDS),
  /** The matching value (normalized), cut at 256 characters. */
  value: z.string().max(256),
  sources: z.array(SourceIdSchema).min(1).max(8),
});
export type TaintedArgument = z.infer<typeof TaintedArgumentSchema>;

/**
 * `input.flow`: present on tools/call when flow control is on.
 *
 * @example
 *   { labels: { untrusted: ['s1'] }, sources: [{ id: 's1', tool: 'web__fetch', at: '…', labels: ['untrusted'], reason: 'tool labels (config)', call: 'c-…' }],
 *     tool: { labels: ['external'], egress: [] }, arguments: [] }
 */
export const FlowInputSchema = z.strictObject({
  /** Label → the sources (most recent last) that brought it. */
  labels: z.strictObject({
    untrusted: z.array(SourceIdSchema).max(64).optional(),
    private: z.array(SourceIdSchema).max(64).optional(),
  }),
  sources: z.array(FlowSourceSchema).max(64),
  tool: z.strictObject({
    labels: uniqueLabels(FlowLabelSchema),
    egress: z.array(EgressTargetSchema).max(64),
  }),
  arguments: z.array(TaintedArgumentSchema).max(64),
});
export type FlowInput = z.infer<typeof FlowInputSchema>;

// ---------------------------------------------------------------------------
// Decision

/** One flow rule that fired. */
export const FlowFindingSchema = z.strictObject({
  rule: z.string().min(1).max(64),
  effect: z.enum(['approve', 'deny']),
  quorum: z.number().int().min(1),
  sources: z.array(SourceIdSchema).max(64),
  arguments: z.array(z.string().max(512)).max(64),
  reason: z.string().max(2000),
});
export type FlowFinding = z.infer<typeof FlowFindingSchema>;

/** `decision.flow`: the tool's effective labels and the rules that fired. */
export const FlowDecisionSchema = z.strictObject({
  labels: z.array(FlowLabelSchema).max(FLOW_LABELS.length),
  findings: z.array(FlowFindingSchema).max(16),
});
export type FlowDecision = z.infer<typeof FlowDecisionSchema>;
