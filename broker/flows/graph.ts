/**
 * The static view of flow control: who can reach what. From the
 * deployment's own parts (its tools and their labels, the compiled policy
 * with its data, and the grants tokens are minted with) it builds the graph
 * grants → tools → labels, and lists for each grant the toxic combinations
 * a token could reach:
 *
 *   injection → action      a tool that brings untrusted content, and one
 *                           that acts outside or destroys
 *   lethal trifecta         untrusted content, private data, and a way out
 *
 * and what the policy does about each: every combination is put to the real
 * policy as the call it would be (the sink after the sources, with a
 * destination outside the organisation), so the answer (refused, approval
 * with its quorum, or allowed) is the deployment's, not this module's.
 * Reachability is the policy's too: a tool is reachable when the policy
 * would list it for the grant.
 *
 * @example
 *   const graph = flowGraph({ tools, grants: [{ name: 'support-bot', cap: [{ tool: 'mail__*' }] }], policy: engine });
 *   graph.grants[0].combinations.filter((c) => c.outcome === 'allowed'); // unguarded paths
 */
import type { Capability, Decision, PolicyInput } from '../policy/schema.ts';
import type { PolicyEngine } from '../policy/engine.ts';
import type { ToolFlow } from './labels.ts';
import type { FlowInput, FlowLabel } from './schema.ts';

/** A tool as the graph sees it: its exposed name, where it lives, its configured or derived flow. */
export interface GraphTool {
  name: string;
  connector: string;
  risk: 'low' | 'medium' | 'high';
  flow: ToolFlow;
}

export interface Grant {
  name: string;
  cap: Capability[];
}

export interface ToolNode {
  name: string;
  connector: string;
  /** Effective labels, as the policy states them (data may relabel). */
  labels: FlowLabel[];
  /** Arguments that name a destination: the tool is external when one points outside. */
  egress: string[];
  origin: ToolFlow['origin'];
}

export type Outcome = 'refused' | 'approval' | 'allowed' | 'error';

export interface Combination {
  kind: 'injection_to_action' | 'lethal_trifecta';
  /** The tools that bring untrusted content (and private data, for the trifecta). */
  untrusted: string;
  private?: string;
  sink: string;
  /** What the sink does: external, destructive. */
  does: FlowLabel[];
  outcome: Outcome;
  quorum?: number;
  /** The flow rules (or other reasons) behind the outcome. */
  why: string;
}

export interface GrantNode {
  name: string;
  cap: Capability[];
  /** Tools the policy lists for this grant. */
  reaches: string[];
  combinations: Combination[];
}

export interface FlowGraph {
  tools: ToolNode[];
  grants: GrantNode[];
  /** Tools with no labels: flow control cannot see what they bring or do. */
  unlabeled: string[];
  policy_revision: string;
}

/** A destination no organisation owns: the graph asks the policy about egress to "outside". */
export const OUTSIDE_HOST = 'outside.invalid';
const TIME = '2026-01-01T00:00:00.000Z';

function input(grant: Grant, tool: GraphTool, method: PolicyInput['context']['method'], flow?: FlowInput): PolicyInput {
  return {
    version: 1,
    principal: { sub: `grant:${grant.name}`, iss: 'urn:bastion:flows-graph', act: [], cap: grant.cap, anonymous: false },
    tool: { name: tool.name, connector: tool.connector, risk: tool.risk, descriptor_hash: '' },
    arguments: {},
    context: { time: TIME, transport: 'http', session: 'flows-graph', method },
    ...(flow ? { flow } : {}),
  };
}

function decide(policy: PolicyEngine, value: PolicyInput): Decision | undefined {
  try {
    return policy.decideTrusted(value);
  } catch {
    return undefined;
  }
}

/** The call a combination stands for: the sink, after the sources brought their labels, naming a destination outside. */
function comboFlow(sink: GraphTool, sources: { untrusted: string; private?: string | undefined }): FlowInput {
  const at = TIME;
  const untrusted = { id: 's1', tool: sources.untrusted, at, age_s: 0, labels: ['untrusted' as const], reason: 'graph', call: 'graph' };
  const privateSource = sources.private ? [{ id: 's2', tool: sources.private, at, age_s: 0, labels: ['private' as const], reason: 'graph', call: 'graph' }] : [];
  return {
    labels: { untrusted: ['s1'], ...(sources.private ? { private: ['s2'] } : {}) },
    sources: [untrusted, ...privateSource],
    tool: {
      labels: sink.flow.labels,
      egress: Object.entries(sink.flow.egress).map(([argument, kind]) => ({
        argument: `/${argument}`,
        kind,
        value: kind === 'url' ? `https://${OUTSIDE_HOST}/` : kind === 'email' ? `someone@${OUTSIDE_HOST}` : OUTSIDE_HOST,
        host: OUTSIDE_HOST,
      })),
    },
    arguments: [],
  };
}

function outcomeOf(decision: Decision | undefined): { outcome: Outcome; quorum?: number; why: string } {
  if (!decision) return { outcome: 'error', why: 'the policy gave no decision (the broker would refuse)' };
  const rules = decision.flow?.findings.map((f) => f.rule) ?? [];
  const why = rules.length ? `flow rules: ${rules.join(', ')}` : decision.allow ? (decision.approval.required ? decision.approval.reason : 'no flow rule fired') : decision.reasons.join('; ');
  if (!decision.allow) return { outcome: 'refused', why };
  if (decision.approval.required) return { outcome: 'approval', quorum: decision.approval.quorum, why };
  return { outcome: 'allowed', why };
}

export function flowGraph(options: { tools: GraphTool[]; grants: Grant[]; policy: PolicyEngine }): FlowGraph {
  const { policy } = options;
  const probe: Grant = { name: 'labels', cap: [{ tool: '*' }] };
  const tools: ToolNode[] = options.tools.map((tool) => {
    // The labels the policy holds for the tool (data can relabel it); egress decided with no destination.
    const decided = decide(policy, input(probe, tool, 'tools/call', { labels: {}, sources: [], tool: { labels: tool.flow.labels, egress: [] }, arguments: [] }));
    return { name: tool.name, connector: tool.connector, labels: decided?.flow?.labels ?? tool.flow.labels, egress: Object.keys(tool.flow.egress), origin: tool.flow.origin };
  });
  const byName = new Map(options.tools.map((t) => [t.name, t]));
  const nodes = new Map(tools.map((t) => [t.name, t]));
  const grants: GrantNode[] = options.grants.map((grant) => {
    const reaches = options.tools.filter((tool) => decide(policy, input(grant, tool, 'tools/list'))?.allow).map((t) => t.name);
    const reached = reaches.map((name) => nodes.get(name)!);
    const untrusted = reached.filter((t) => t.labels.includes('untrusted'));
    const privates = reached.filter((t) => t.labels.includes('private'));
    const acts = (t: ToolNode): FlowLabel[] => [...new Set<FlowLabel>([...t.labels.filter((l): l is FlowLabel => l === 'external' || l === 'destructive'), ...(t.egress.length ? (['external'] as FlowLabel[]) : [])])];
    const sinks = reached.filter((t) => acts(t).length > 0);
    const combinations: Combination[] = [];
    for (const sink of sinks) {
      const tool = byName.get(sink.name)!;
      // A tool may be its own sink: a fetched page can name the next URL to fetch.
      for (const source of untrusted) {
        combinations.push({ kind: 'injection_to_action', untrusted: source.name, sink: sink.name, does: acts(sink), ...outcomeOf(decide(policy, { ...input(grant, tool, 'tools/call', comboFlow(tool, { untrusted: source.name })) })) });
        if (!acts(sink).includes('external')) continue;
        // A source that brings private data itself is a trifecta on its own; others pair with each private source.
        for (const secret of source.labels.includes('private') ? [source] : privates) {
          combinations.push({
            kind: 'lethal_trifecta',
            untrusted: source.name,
            ...(secret !== source ? { private: secret.name } : {}),
            sink: sink.name,
            does: acts(sink),
            ...outcomeOf(decide(policy, input(grant, tool, 'tools/call', comboFlow(tool, { untrusted: source.name, private: secret.name })))),
          });
        }
      }
    }
    return { name: grant.name, cap: grant.cap, reaches, combinations };
  });
  // A tool configured with no labels is a decision; one nobody labelled (no config, no annotations) is a blind spot.
  return { tools, grants, unlabeled: tools.filter((t) => t.origin === 'none' && t.labels.length === 0 && t.egress.length === 0).map((t) => t.name), policy_revision: policy.revision };
}
