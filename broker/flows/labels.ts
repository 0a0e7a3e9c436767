/**
 * A tool's flow labels, decided once per descriptor: from the connector's
 * or plugin's config (`tools.<name>.labels`, `tools.<name>.egress`) when it
 * says anything, else from the upstream's MCP annotations. Policy data
 * (`data.bastion.flows.tools`) can still replace them per call (flows.rego);
 * the decision then carries the effective labels.
 *
 * From annotations (hints from an upstream that may lie; set labels in
 * config for tools that matter), only when a hint is given explicitly:
 *   openWorldHint: true       → results `untrusted`; unless readOnlyHint is
 *                               also true, the call is `external` too
 *   destructiveHint: true     → `destructive`, unless readOnlyHint is true
 *   readOnlyHint: true        → never `external` or `destructive` by itself
 *   no annotations            → no labels
 * Nothing in MCP annotations says a result is `private`: say so in config.
 *
 * @example
 *   toolFlow({ name: 'fetch', inputSchema: { type: 'object' }, annotations: { readOnlyHint: true, openWorldHint: true } }, undefined);
 *   // { labels: ['untrusted'], egress: {}, origin: 'annotations' }
 */
import type { Tool } from '@modelcontextprotocol/server';
import type { EgressKind, FlowLabel, ToolFlowSettings } from './schema.ts';
import { FLOW_LABELS } from './schema.ts';

/** The labels a tool carries and the arguments that name its destinations. */
export interface ToolFlow {
  labels: FlowLabel[];
  /** Argument name → how to read it as a destination. */
  egress: Record<string, EgressKind>;
  /** Where the labels came from, for `bastion flows` and the README's promise that config wins. */
  origin: 'config' | 'annotations' | 'none';
}

const ORDER = new Map(FLOW_LABELS.map((label, i) => [label, i]));
const sorted = (labels: Iterable<FlowLabel>): FlowLabel[] => [...new Set(labels)].sort((a, b) => ORDER.get(a)! - ORDER.get(b)!);

/** Labels suggested by a descriptor's annotations (see the module comment). */
export function labelsFromAnnotations(annotations: Tool['annotations']): FlowLabel[] {
  if (!annotations) return [];
  const labels: FlowLabel[] = [];
  const readOnly = annotations.readOnlyHint === true;
  if (annotations.openWorldHint === true) {
    labels.push('untrusted');
    if (!readOnly) labels.push('external');
  }
  if (annotations.destructiveHint === true && !readOnly) labels.push('destructive');
  return sorted(labels);
}

/** The flow of one tool: configured labels replace what the annotations suggest; egress arguments come from config only. */
export function toolFlow(tool: Pick<Tool, 'annotations'>, settings: ToolFlowSettings | undefined): ToolFlow {
  const fromAnnotations = labelsFromAnnotations(tool.annotations);
  const labels = settings?.labels ?? fromAnnotations;
  return {
    labels: sorted(labels),
    egress: { ...(settings?.egress ?? {}) },
    origin: settings?.labels !== undefined ? 'config' : fromAnnotations.length > 0 ? 'annotations' : 'none',
  };
}
