/**
 * `bastion flows graph` output: the graph as text for a terminal, and as a
 * self-contained HTML page (inline CSS and SVG, no script, its own CSP, like
 * the red-team report). The picture has three columns, grants → tools →
 * labels; a tool's edge to a label is red when the label makes it part of a
 * combination the policy lets through, amber when only with an approval.
 *
 * @example
 *   process.stdout.write(graphText(graph));
 *   await writeFile('flows.html', graphHtml(graph));
 */
import { escapeHtml, reportPage } from '../html-report.ts';
import type { Combination, FlowGraph } from './graph.ts';

const escape = escapeHtml;

function outcomeText(c: Combination): string {
  if (c.outcome === 'approval') return `approval (quorum ${c.quorum ?? 1})`;
  return c.outcome;
}

function path(c: Combination): string {
  return c.private ? `${c.untrusted} + ${c.private} → ${c.sink}` : `${c.untrusted} → ${c.sink}`;
}

/** The graph as plain text. */
export function graphText(graph: FlowGraph): string {
  const lines: string[] = [`Flow graph (policy ${graph.policy_revision})`, '', 'Tools and their flow labels:'];
  for (const tool of graph.tools) {
    const labels = [...tool.labels, ...(tool.egress.length ? [`external when ${tool.egress.join(', ')} points outside`] : [])];
    lines.push(`  ${tool.name}  ${labels.join(', ') || '(no labels)'}  [${tool.origin}]`);
  }
  if (graph.unlabeled.length) lines.push('', `FINDING: nothing labels ${graph.unlabeled.join(', ')} (no config, no annotations): flow control cannot see what these bring or do; label them in config.`);
  for (const grant of graph.grants) {
    lines.push('', `Grant ${grant.name}: reaches ${grant.reaches.length} tool(s)`);
    const byKind = (kind: Combination['kind']) => grant.combinations.filter((c) => c.kind === kind);
    for (const [kind, title] of [
      ['lethal_trifecta', 'lethal trifecta (untrusted + private → outside)'],
      ['injection_to_action', 'injection → action (untrusted → external or destructive)'],
    ] as const) {
      const combos = byKind(kind);
      if (combos.length === 0) continue;
      const open = combos.filter((c) => c.outcome === 'allowed' || c.outcome === 'error');
      lines.push(`  ${title}: ${combos.length} path(s), ${combos.filter((c) => c.outcome === 'refused').length} refused, ${combos.filter((c) => c.outcome === 'approval').length} need approval, ${open.length} allowed`);
      for (const c of open) lines.push(`    OPEN ${path(c)}: ${outcomeText(c)} (${c.why})`);
      const shown = combos.filter((c) => !open.includes(c)).slice(0, 8);
      for (const c of shown) lines.push(`    ${path(c)}: ${outcomeText(c)} (${c.why})`);
      if (combos.length - open.length > shown.length) lines.push(`    … ${combos.length - open.length - shown.length} more guarded path(s)`);
    }
    if (grant.combinations.length === 0) lines.push('  no toxic combination reachable');
  }
  return `${lines.join('\n')}\n`;
}

/** What this report adds to the shared report style. */
const STYLE = `
td.allowed,td.error{color:#c92a2a;font-weight:600}td.approval{color:#b35c00}td.refused{color:#2b8a3e}
`;

const LABELS = ['untrusted', 'private', 'external', 'destructive'] as const;

function picture(graph: FlowGraph): string {
  const rowH = 22;
  const colX = [20, 330, 700];
  const height = 40 + Math.max(graph.grants.length, graph.tools.length, LABELS.length) * rowH + 20;
  const width = 900;
  const grantY = new Map(graph.grants.map((g, i) => [g.name, 40 + i * rowH]));
  const toolY = new Map(graph.tools.map((t, i) => [t.name, 40 + i * rowH]));
  const labelY = new Map(LABELS.map((l, i) => [l, 40 + i * rowH * 2]));
  // A tool's worst standing across grants: part of an allowed combination, or one that needs approval.
  const standing = new Map<string, 'allowed' | 'approval'>();
  for (const c of graph.grants.flatMap((g) => g.combinations)) {
    for (const name of [c.untrusted, c.private, c.sink]) {
      if (!name) continue;
      if (c.outcome === 'allowed' || c.outcome === 'error') standing.set(name, 'allowed');
      else if (c.outcome === 'approval' && standing.get(name) !== 'allowed') standing.set(name, 'approval');
    }
  }
  const colour = (tool: string) => (standing.get(tool) === 'allowed' ? '#e03131' : standing.get(tool) === 'approval' ? '#f08c00' : '#adb5bd');
  const parts = [`<svg id="flow-graph" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-labelledby="flow-graph-title">`];
  parts.push('<title id="flow-graph-title">Grants (left) reach tools (middle), which carry flow labels (right); red: part of a combination the policy allows, amber: only with approval</title>');
  parts.push(`<text x="${colX[0]}" y="20" font-weight="600">grants</text><text x="${colX[1]}" y="20" font-weight="600">tools</text><text x="${colX[2]}" y="20" font-weight="600">labels</text>`);
  for (const grant of graph.grants) {
    for (const tool of grant.reaches) {
      parts.push(`<line class="reach" x1="${colX[0]! + 150}" y1="${grantY.get(grant.name)! - 4}" x2="${colX[1]! - 6}" y2="${toolY.get(tool)! - 4}" stroke="#ced4da"/>`);
    }
  }
  for (const tool of graph.tools) {
    const labels = [...tool.labels, ...(tool.egress.length && !tool.labels.includes('external') ? (['external'] as const) : [])];
    for (const label of labels) {
      parts.push(
        `<line class="label-edge" data-tool="${escape(tool.name)}" data-label="${label}" x1="${colX[1]! + 250}" y1="${toolY.get(tool.name)! - 4}" x2="${colX[2]! - 6}" y2="${labelY.get(label)! - 4}" stroke="${colour(tool.name)}"${tool.egress.length && label === 'external' && !tool.labels.includes('external') ? ' stroke-dasharray="4 3"' : ''}/>`,
      );
    }
  }
  for (const grant of graph.grants) parts.push(`<text class="grant" x="${colX[0]}" y="${grantY.get(grant.name)}">${escape(grant.name)}</text>`);
  for (const tool of graph.tools) parts.push(`<text class="tool" x="${colX[1]}" y="${toolY.get(tool.name)}" fill="${colour(tool.name)}">${escape(tool.name)}</text>`);
  for (const label of LABELS) parts.push(`<text class="label" x="${colX[2]}" y="${labelY.get(label)}">${label}</text>`);
  parts.push('</svg>');
  return parts.join('\n');
}

/** The graph as one HTML document with no external resources and no script. */
export function graphHtml(graph: FlowGraph): string {
  const rows = graph.grants
    .flatMap((grant) =>
      grant.combinations.map(
        (c) =>
          `<tr><td>${escape(grant.name)}</td><td>${c.kind === 'lethal_trifecta' ? 'lethal trifecta' : 'injection → action'}</td><td><code>${escape(path(c))}</code></td><td>${escape(c.does.join(', '))}</td><td class="${c.outcome}">${escape(outcomeText(c))}</td><td>${escape(c.why)}</td></tr>`,
      ),
    )
    .join('\n');
  const tools = graph.tools
    .map((t) => `<tr><td><code>${escape(t.name)}</code></td><td>${escape(t.labels.join(', ') || '-')}</td><td>${escape(t.egress.join(', ') || '-')}</td><td>${escape(t.origin)}</td></tr>`)
    .join('\n');
  return reportPage('Bastion flow graph', STYLE, `
<h1>Bastion flow graph</h1>
<p class="meta">Who can reach what: grants → tools → flow labels, and the toxic combinations each grant could reach, put to the policy (revision ${escape(graph.policy_revision)}) as the calls they would be.</p>
${graph.unlabeled.length ? `<p class="meta"><strong>No labels</strong> on ${escape(graph.unlabeled.join(', '))}: flow control cannot see what these bring or do.</p>` : ''}
${picture(graph)}
<h2>Toxic combinations</h2>
<table>
<thead><tr><th>grant</th><th>kind</th><th>path</th><th>the sink</th><th>policy</th><th>why</th></tr></thead>
<tbody>
${rows}
</tbody>
</table>
<h2>Tools</h2>
<table>
<thead><tr><th>tool</th><th>labels</th><th>egress arguments</th><th>labels from</th></tr></thead>
<tbody>
${tools}
</tbody>
</table>
`);
}
