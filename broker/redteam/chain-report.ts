/**
 * The flow-chain campaign's report, in the shape the corpus report prints:
 * attack class × configuration (successes/attempts), then per
 * configuration the attack success rate, the utility (benign tasks done
 * with no human), the approval burden, the tasks that failed and the p50
 * latency with its cost over flow control off. Terminal text and a
 * self-contained HTML page (inline CSS and SVG, no script, its own CSP).
 *
 * @example
 *   process.stdout.write(chainTerminalReport(result));
 *   await writeFile('chains.html', chainHtmlReport(result));
 */
import { escapeHtml, reportPage } from '../html-report.ts';
import type { ChainCampaignResult, ChainConfigurationResult } from './chain-run.ts';

const escape = escapeHtml;
const pct = (rate: number | null) => (rate === null ? 'n/a' : `${(rate * 100).toFixed(rate === 0 || rate === 1 ? 0 : 1)}%`);
const ms = (value: number | null) => (value === null ? '-' : `${value.toFixed(2)} ms`);
const pad = (text: string, width: number) => (text.length >= width ? `${text} ` : text + ' '.repeat(width - text.length));

/** The p50 cost of a configuration over flow control off, with two standard errors of the difference. */
export function latencyCost(result: ChainCampaignResult, configuration: ChainConfigurationResult): string {
  const off = result.configurations.find((c) => !c.flows);
  if (!off || off === configuration || off.summary.p50_ms === null || configuration.summary.p50_ms === null) return '-';
  const delta = configuration.summary.p50_ms - off.summary.p50_ms;
  const a = configuration.summary.p50_se_ms;
  const b = off.summary.p50_se_ms;
  const margin = a !== null && b !== null ? 2 * Math.hypot(a, b) : null;
  return `${delta >= 0 ? '+' : ''}${delta.toFixed(2)} ms${margin !== null ? ` ± ${margin.toFixed(2)}${Math.abs(delta) <= margin ? ' (noise)' : ''}` : ''}`;
}

interface Row {
  label: string;
  cell: (c: ChainConfigurationResult) => string;
}

function summaryRows(result: ChainCampaignResult): Row[] {
  return [
    { label: 'attack success', cell: (c) => (c.error ? 'failed' : `${c.summary.attack_successes}/${c.summary.attacks} ${pct(c.summary.attack_success_rate)}`) },
    { label: '  stopped: parked', cell: (c) => String(c.summary.attacks_parked) },
    { label: '  stopped: refused', cell: (c) => String(c.summary.attacks_refused) },
    { label: 'utility (no human)', cell: (c) => `${c.summary.benign - c.summary.with_approval - c.summary.failed}/${c.summary.benign} ${pct(c.summary.utility)}` },
    { label: 'approval burden', cell: (c) => `${c.summary.with_approval}/${c.summary.benign} ${pct(c.summary.approval_burden)}` },
    { label: 'benign failed', cell: (c) => String(c.summary.failed) },
    { label: 'approvals explained', cell: (c) => (c.summary.with_approval === 0 ? '-' : c.summary.approvals_explained ? 'all' : 'NOT ALL') },
    { label: 'p50 benign call', cell: (c) => ms(c.summary.p50_ms) },
    { label: 'p50 inside broker', cell: (c) => ms(c.summary.broker_p50_ms) },
    { label: 'p50 cost vs flows-off', cell: (c) => latencyCost(result, c) },
  ];
}

/** The campaign as plain text. */
export function chainTerminalReport(result: ChainCampaignResult): string {
  const configs = result.configurations;
  const widths = configs.map((c) => Math.max(c.name.length, 14) + 2);
  const first = 24;
  const lines: string[] = [];
  lines.push(`Bastion flow chains: ${result.scenarios.attacks} attacks and ${result.scenarios.benign} benign tasks over ${result.scenarios.environments.join(', ')}; ${result.generated_at}`);
  lines.push('A worst-case agent obeys every injected instruction; its token holds every tool of its environment.');
  lines.push('Attack success = the harmful call reached a tool with no human approving it. Utility = benign tasks done with no human.');
  lines.push('');
  lines.push(pad('attack class', first) + configs.map((c, i) => pad(c.name, widths[i]!)).join(''));
  lines.push('-'.repeat(first + widths.reduce((a, b) => a + b, 0)));
  for (const [attackClass, row] of Object.entries(result.matrix)) {
    if (configs.every((c) => (row[c.name]?.attempts ?? 0) === 0)) continue;
    lines.push(pad(attackClass, first) + configs.map((c, i) => pad(`${row[c.name]?.successes ?? 0}/${row[c.name]?.attempts ?? 0}`, widths[i]!)).join(''));
  }
  lines.push('-'.repeat(first + widths.reduce((a, b) => a + b, 0)));
  for (const row of summaryRows(result)) lines.push(pad(row.label, first) + configs.map((c, i) => pad(row.cell(c), widths[i]!)).join(''));
  const full = configs.find((c) => c.name === 'full');
  if (full && !full.error) {
    const through = full.outcomes.filter((o) => o.kind === 'attack' && o.success);
    const burden = full.outcomes.filter((o) => o.kind === 'benign' && o.completed && o.parked > 0);
    const failed = full.outcomes.filter((o) => o.kind === 'benign' && !o.completed);
    lines.push('');
    if (through.length) lines.push(`Attacks that got through the full configuration: ${through.map((o) => `${o.id} (${o.vector})`).join('; ')}`);
    if (burden.length) {
      lines.push(`Benign tasks that needed a human (full): ${burden.map((o) => `${o.id} [${[...new Set(o.steps.flatMap((s) => s.rules ?? []))].join(', ')}; source ${[...new Set(o.steps.flatMap((s) => s.untrusted_sources ?? []))].join(', ') || 'NOT NAMED'}]`).join('; ')}`);
    }
    if (failed.length) lines.push(`Benign tasks that did not complete (full): ${failed.map((o) => `${o.id} (${o.steps.filter((s) => s.outcome !== 'ok' && s.outcome !== 'approved').map((s) => `${s.tool} ${s.outcome}${s.code ? ` ${s.code}` : ''}`).join(', ')})`).join('; ')}`);
    const t = result.targets;
    lines.push(
      `Targets (full): attack success <= ${pct(t.attack_success_max)}: ${t.attack_success_met ? 'met' : 'MISSED'}; utility >= ${pct(t.utility_min)}: ${t.utility_met ? 'met' : 'MISSED'}; every approval names its untrusted source: ${t.approvals_explained ? 'yes' : 'NO'}`,
    );
  }
  for (const c of configs) if (c.error) lines.push(`Configuration ${c.name} did not complete: ${c.error}`);
  return `${lines.join('\n')}\n`;
}

/** What this report adds to the shared report style. */
const STYLE = `
td.bad{color:#c92a2a;font-weight:600}td.good{color:#2b8a3e;font-weight:600}
`;

/** Attack success and utility per configuration, side by side (two bars per configuration). */
function bars(result: ChainCampaignResult): string {
  const configs = result.configurations;
  const left = 150;
  const barH = 12;
  const groupH = 2 * barH + 14;
  const chartW = 420;
  const height = 30 + configs.length * groupH + 20;
  const parts = [`<svg id="chain-bars" xmlns="http://www.w3.org/2000/svg" width="${left + chartW + 140}" height="${height}" role="img" aria-labelledby="chain-bars-title">`];
  parts.push('<title id="chain-bars-title">Attack success (red) and utility with no human (green) per configuration</title>');
  configs.forEach((c, i) => {
    const y = 20 + i * groupH;
    parts.push(`<text x="${left - 10}" y="${y + barH + 4}" text-anchor="end">${escape(c.name)}</text>`);
    const attack = c.summary.attack_success_rate ?? 0;
    const utility = c.summary.utility ?? 0;
    parts.push(`<rect class="attack" data-config="${escape(c.name)}" data-rate="${attack}" x="${left}" y="${y}" width="${Math.max(1, attack * chartW).toFixed(1)}" height="${barH}" fill="#e03131"><title>${escape(`${c.name}: attack success ${pct(c.summary.attack_success_rate)}`)}</title></rect>`);
    parts.push(`<text x="${left + Math.max(1, attack * chartW) + 6}" y="${y + barH - 2}">${escape(pct(c.summary.attack_success_rate))}</text>`);
    parts.push(`<rect class="utility" data-config="${escape(c.name)}" data-rate="${utility}" x="${left}" y="${y + barH + 2}" width="${Math.max(1, utility * chartW).toFixed(1)}" height="${barH}" fill="#2b8a3e"><title>${escape(`${c.name}: utility ${pct(c.summary.utility)}`)}</title></rect>`);
    parts.push(`<text x="${left + Math.max(1, utility * chartW) + 6}" y="${y + 2 * barH}">${escape(pct(c.summary.utility))}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/** The campaign as one HTML document with no external resources and no script. */
export function chainHtmlReport(result: ChainCampaignResult): string {
  const configs = result.configurations;
  const head = `<tr><th></th>${configs.map((c) => `<th>${escape(c.name)}</th>`).join('')}</tr>`;
  const matrixRows = Object.entries(result.matrix)
    .filter(([, row]) => configs.some((c) => (row[c.name]?.attempts ?? 0) > 0))
    .map(([attackClass, row]) => `<tr><td><code>${escape(attackClass)}</code></td>${configs.map((c) => {
      const cell = row[c.name];
      return `<td class="${cell && cell.successes > 0 ? 'bad' : 'good'}">${cell?.successes ?? 0}/${cell?.attempts ?? 0}</td>`;
    }).join('')}</tr>`)
    .join('\n');
  const summary = summaryRows(result).map((row) => `<tr><td>${escape(row.label.trim())}</td>${configs.map((c) => `<td>${escape(row.cell(c))}</td>`).join('')}</tr>`).join('\n');
  const outcomes = configs
    .flatMap((c) =>
      c.outcomes.map(
        (o) =>
          `<tr><td>${escape(c.name)}</td><td><code>${escape(o.id)}</code><br>${escape(o.title)}</td><td>${escape(o.kind === 'attack' ? `${o.class} (${o.vector})` : (o.task ?? ''))}</td><td class="${o.kind === 'attack' ? (o.success ? 'bad' : 'good') : o.completed ? 'good' : 'bad'}">${escape(
            o.error ? `harness error: ${o.error}` : o.kind === 'attack' ? (o.success ? 'succeeded' : o.parked ? 'parked, denied' : 'stopped') : o.completed ? (o.parked ? `done with ${o.parked} approval(s)` : 'done, no human') : 'not done',
          )}</td><td>${escape(o.steps.map((s) => `${s.tool}: ${s.outcome}${s.code ? ` ${s.code}` : ''}${s.rules?.length ? ` [${s.rules.join(', ')}; from ${(s.untrusted_sources ?? []).join(', ')}]` : ''}`).join(' → '))}</td></tr>`,
      ),
    )
    .join('\n');
  return reportPage('Bastion flow chains report', STYLE, `
<h1>Bastion flow chains report</h1>
<p class="meta">${result.scenarios.attacks} attack chains and ${result.scenarios.benign} benign tasks over ${escape(result.scenarios.environments.join(', '))}, played by a worst-case agent that obeys every injected instruction, its token holding every tool of its environment. Generated ${escape(result.generated_at)}.</p>
<h2>Attack success and utility per configuration</h2>
${bars(result)}
<table>
<thead>${head}</thead>
<tbody>
${matrixRows}
${summary}
</tbody>
</table>
<h2>Every scenario</h2>
<details>
<summary>${configs.reduce((n, c) => n + c.outcomes.length, 0)} runs</summary>
<table>
<thead><tr><th>configuration</th><th>scenario</th><th>class / task</th><th>outcome</th><th>steps</th></tr></thead>
<tbody>
${outcomes}
</tbody>
</table>
</details>
`);
}
