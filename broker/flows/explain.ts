/**
 * Why a flow rule stopped a call, as approvers and the audit trail see it:
 * the rules that fired, then the path, in order: the earlier results that
 * brought untrusted or private content (tool, time, the flagged excerpt),
 * the argument values that came from them, and what this call does
 * (its labels, its destinations outside the organisation).
 *
 * The approval page renders this as text only (textContent), never as
 * markup: every string in it may come from an attacker. The audit form
 * carries the same explanation, except argument values, which the audit
 * trail never stores: they are replaced by their SHA-256 (the approval
 * record and the page show the value itself).
 *
 * @example
 *   const why = explainFlow(prepared, decision.flow);
 *   if (why) park({ ..., flow: why });
 */
import { z } from 'zod';
import { sha256 } from '../audit/chain.ts';
import type { PreparedFlow } from './control.ts';
import { EgressTargetSchema, FlowFindingSchema, FlowLabelSchema, FlowSourceSchema, TaintedArgumentSchema, type FlowDecision, type FlowInput } from './schema.ts';

export const FlowExplanationSchema = z.strictObject({
  rules: z.array(FlowFindingSchema.pick({ rule: true, effect: true, quorum: true, reason: true })).max(16),
  /** The earlier results the rules name, oldest first. */
  sources: z.array(FlowSourceSchema).max(64),
  /** Argument values that came from those results. */
  arguments: z.array(TaintedArgumentSchema).max(64),
  call: z.strictObject({
    tool: z.string(),
    labels: z.array(FlowLabelSchema),
    /** Destinations this call names (the policy judged which are outside). */
    egress: z.array(EgressTargetSchema).max(64),
  }),
});
export type FlowExplanation = z.infer<typeof FlowExplanationSchema>;

/** The explanation of a decision's flow findings; undefined when no flow rule fired. */
export function explainFlow(prepared: PreparedFlow, decided: FlowDecision | undefined): FlowExplanation | undefined {
  if (!decided || decided.findings.length === 0) return undefined;
  const named = new Set(decided.findings.flatMap((f) => f.sources));
  const argumentsNamed = new Set(decided.findings.flatMap((f) => f.arguments));
  const sources = prepared.input.sources.filter((s) => named.has(s.id)).sort((a, b) => a.at.localeCompare(b.at));
  return {
    rules: decided.findings.map(({ rule, effect, quorum, reason }) => ({ rule, effect, quorum, reason })),
    sources,
    arguments: prepared.input.arguments.filter((a) => argumentsNamed.has(a.argument)),
    call: { tool: prepared.tool.name, labels: decided.labels, egress: prepared.input.tool.egress },
  };
}

/** The explanation as the audit record carries it: argument values replaced by their hash. */
export function auditExplanation(explanation: FlowExplanation): Record<string, unknown> {
  return {
    rules: explanation.rules,
    sources: explanation.sources,
    arguments: explanation.arguments.map(({ value, ...rest }) => ({ ...rest, value_hash: sha256(value) })),
    call: {
      tool: explanation.call.tool,
      labels: explanation.call.labels,
      egress: explanation.call.egress.map(({ argument, kind, host }) => ({ argument, kind, host })),
    },
  };
}

/** One line for logs and denial reasons: "rule trifecta: … (path: web__fetch at 10:02:03Z → /to)". */
export function explanationSummary(explanation: FlowExplanation): string {
  const path = [
    ...explanation.sources.map((s) => `${s.tool} at ${s.at}`),
    ...explanation.arguments.map((a) => `argument ${a.argument}`),
  ].join(' → ');
  return `${explanation.rules.map((r) => r.rule).join(', ')}${path ? ` (path: ${path} → ${explanation.call.tool})` : ''}`;
}

/** `input.flow` in words, for the policy kit's eval. */
export function describeFlowInput(flow: FlowInput): string {
  const byId = new Map(flow.sources.map((s) => [s.id, s]));
  const lines = ['flow (input.flow):'];
  for (const label of ['untrusted', 'private'] as const) {
    const ids = flow.labels[label] ?? [];
    if (ids.length === 0) continue;
    const from = ids.map((id) => {
      const source = byId.get(id);
      return source ? `${source.tool} (${id}, ${source.at})` : `${id} (no detail)`;
    });
    lines.push(`  ${label} in context, from: ${from.join(', ')}`);
  }
  if (lines.length === 1) lines.push('  nothing untrusted or private in context');
  lines.push(`  this call's labels: ${flow.tool.labels.join(', ') || 'none'}`);
  for (const target of flow.tool.egress) lines.push(`  destination ${target.argument}: ${target.host || '(unreadable)'} (${target.kind})`);
  for (const a of flow.arguments) lines.push(`  argument ${a.argument} (${a.kind} ${JSON.stringify(a.value)}) came from untrusted ${a.sources.join(', ')}`);
  return lines.join('\n');
}
