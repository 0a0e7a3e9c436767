/**
 * The campaign's report: a terminal table, and a self-contained HTML page
 * (inline CSS, inline SVG, no script, nothing fetched) that renders under a
 * strict Content-Security-Policy. The page declares that policy itself, with
 * the hash of its one style block, so it stays safe to open from anywhere.
 *
 * Charts: a heat map of attack success rate per class and configuration
 * (one `rect.cell` per pair), and bars of the benign-call p50 latency per
 * configuration (one `rect.bar` per configuration).
 *
 * @example
 *   process.stdout.write(terminalReport(result));
 *   await writeFile('redteam.html', htmlReport(result));
 */
import { escapeHtml, reportPage } from '../html-report.ts';
import type { CampaignResult, ClassCell } from './run.ts';

const escape = escapeHtml;

function cellText(cell: ClassCell | undefined): string {
  if (!cell || !cell.applicable) return 'n/a';
  if (cell.attempts === 0) return cell.errors ? `err ${cell.errors}` : '-';
  const base = `${cell.successes}/${cell.attempts}`;
  return cell.successes > 0 ? `${base} ${Math.round((cell.successes / cell.attempts) * 100)}%` : base;
}

function pad(text: string, width: number): string {
  return text.length >= width ? text : text + ' '.repeat(width - text.length);
}

function topStoppers(cell: ClassCell | undefined, limit = 3): string {
  if (!cell) return '';
  const entries = Object.entries(cell.stopped_by).sort((a, b) => b[1] - a[1]);
  const shown = entries.slice(0, limit).map(([label, n]) => `${label} ×${n}`);
  if (entries.length > limit) shown.push(`+${entries.length - limit} more`);
  return shown.join(', ');
}

const ms = (value: number | null | undefined) => (value === null || value === undefined || Number.isNaN(value) ? '-' : `${value.toFixed(2)} ms`);

/** The matrix and findings as plain text for a terminal. */
export function terminalReport(result: CampaignResult): string {
  const configs = result.configurations.map((c) => c.name);
  const full = result.configurations.find((c) => c.defenses_off.length === 0);
  const lines: string[] = [];
  lines.push(`Bastion red team: ${result.quick ? 'quick' : 'full'} run, ${result.repetitions} repetition(s) per case, ${result.generated_at}`);
  lines.push('Attack success (successes/attempts) per configuration; "full" has every defense on, "no-X" has X switched off.');
  lines.push('');
  const classWidth = Math.max(14, ...result.classes.map((c) => c.id.length)) + 2;
  const widths = configs.map((name) => Math.max(name.length, 9) + 2);
  lines.push(pad('attack class', classWidth) + pad('cases', 7) + configs.map((name, i) => pad(name, widths[i]!)).join(''));
  lines.push('-'.repeat(classWidth + 7 + widths.reduce((a, b) => a + b, 0)));
  for (const attackClass of result.classes) {
    const row = result.matrix[attackClass.id] ?? {};
    if (!attackClass.applicable) {
      lines.push(pad(attackClass.id, classWidth) + pad(String(attackClass.cases), 7) + (attackClass.not_applicable_reason ?? 'not applicable'));
      continue;
    }
    lines.push(pad(attackClass.id, classWidth) + pad(String(attackClass.cases), 7) + configs.map((name, i) => pad(cellText(row[name]), widths[i]!)).join(''));
  }
  if (full) {
    lines.push('', `What stopped each attack class (${full.name}):`);
    for (const attackClass of result.classes.filter((c) => c.applicable)) {
      lines.push(`  ${pad(attackClass.id, classWidth)}${topStoppers(result.matrix[attackClass.id]?.[full.name]) || '-'}`);
    }
  }
  lines.push('', 'Benign calls (rec__echo): p50 / p95 end to end, p50 inside the broker (audit latency_ms):');
  for (const c of result.configurations) {
    lines.push(`  ${pad(c.name, 16)}${c.benign ? `${pad(ms(c.benign.p50_ms), 11)}/ ${pad(ms(c.benign.p95_ms), 11)}${ms(c.benign.broker_p50_ms)}` : `failed: ${c.error ?? 'no data'}`}`);
  }
  if (full && Object.keys(full.refusal_p50_ms_by_stage).length) {
    lines.push('', `Time to refuse inside the broker, p50 by stage (${full.name}): ${Object.entries(full.refusal_p50_ms_by_stage).map(([stage, v]) => `${stage} ${ms(v)}`).join(', ')}`);
  }
  lines.push('', 'Findings:');
  for (const finding of result.findings) lines.push(`  - ${finding}`);
  lines.push('', result.breached ? 'RESULT: at least one attack succeeded against the full configuration.' : 'RESULT: no attack succeeded against the full configuration.');
  return `${lines.join('\n')}\n`;
}

/** Green (0%) through amber to red (100%), in HSL: hue 120 → 0. */
function rateColour(rate: number): string {
  return `hsl(${Math.round(120 * (1 - rate))}, 62%, ${rate === 0 ? 40 : 46}%)`;
}

function heatMap(result: CampaignResult): string {
  const configs = result.configurations.map((c) => c.name);
  const left = 190;
  const top = 70;
  const cellW = 96;
  const cellH = 30;
  const width = left + configs.length * cellW + 20;
  const height = top + result.classes.length * cellH + 20;
  const parts: string[] = [];
  parts.push(`<svg id="heatmap" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-labelledby="heatmap-title">`);
  parts.push(`<title id="heatmap-title">Attack success rate per attack class (rows) and configuration (columns)</title>`);
  configs.forEach((name, i) => {
    const x = left + i * cellW + cellW / 2;
    parts.push(`<text class="col" x="${x}" y="${top - 12}" text-anchor="middle">${escape(name)}</text>`);
  });
  result.classes.forEach((attackClass, row) => {
    const y = top + row * cellH;
    parts.push(`<text class="row" x="${left - 10}" y="${y + cellH / 2 + 4}" text-anchor="end">${escape(attackClass.id)}</text>`);
    configs.forEach((name, col) => {
      const cell = result.matrix[attackClass.id]?.[name];
      const x = left + col * cellW;
      const applicable = attackClass.applicable && cell && cell.rate !== null;
      const fill = applicable ? rateColour(cell!.rate!) : '#b9bec4';
      const label = applicable ? `${cell!.successes}/${cell!.attempts}` : 'n/a';
      const tooltip = applicable
        ? `${attackClass.id} × ${name}: ${cell!.successes} of ${cell!.attempts} attempts succeeded${Object.keys(cell!.stopped_by).length ? `; stopped by ${topStoppers(cell, 5)}` : ''}`
        : `${attackClass.id} × ${name}: ${attackClass.not_applicable_reason ?? 'no data'}`;
      parts.push(
        `<g><rect class="cell${applicable ? '' : ' na'}" data-class="${escape(attackClass.id)}" data-config="${escape(name)}" data-rate="${applicable ? cell!.rate : ''}" x="${x + 2}" y="${y + 2}" width="${cellW - 4}" height="${cellH - 4}" rx="3" fill="${fill}"><title>${escape(tooltip)}</title></rect>` +
          `<text class="cell-label" x="${x + cellW / 2}" y="${y + cellH / 2 + 4}" text-anchor="middle">${escape(label)}</text></g>`,
      );
    });
  });
  parts.push('</svg>');
  return parts.join('\n');
}

function latencyBars(result: CampaignResult): string {
  const configs = result.configurations;
  const left = 130;
  const barH = 24;
  const gap = 10;
  const chartW = 420;
  const top = 20;
  const max = Math.max(1, ...configs.map((c) => c.benign?.p50_ms ?? 0));
  const height = top + configs.length * (barH + gap) + 30;
  const width = left + chartW + 120;
  const parts: string[] = [];
  parts.push(`<svg id="latency" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-labelledby="latency-title">`);
  parts.push(`<title id="latency-title">p50 latency of benign calls per configuration</title>`);
  configs.forEach((c, i) => {
    const y = top + i * (barH + gap);
    const value = c.benign?.p50_ms ?? 0;
    const w = Math.max(1, (value / max) * chartW);
    parts.push(`<text class="row" x="${left - 10}" y="${y + barH / 2 + 4}" text-anchor="end">${escape(c.name)}</text>`);
    parts.push(
      `<rect class="bar" data-config="${escape(c.name)}" data-p50="${value}" x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH}" rx="2" fill="${c.defenses_off.length ? '#5c7cfa' : '#2b8a3e'}"><title>${escape(`${c.name}: p50 ${ms(c.benign?.p50_ms)}, p95 ${ms(c.benign?.p95_ms)}, broker p50 ${ms(c.benign?.broker_p50_ms)}`)}</title></rect>`,
    );
    parts.push(`<text class="value" x="${left + w + 6}" y="${y + barH / 2 + 4}">${escape(c.benign ? ms(value) : 'failed')}</text>`);
  });
  const axisY = top + configs.length * (barH + gap);
  parts.push(`<line x1="${left}" y1="${axisY}" x2="${left + chartW}" y2="${axisY}" stroke="#868e96"/>`);
  parts.push(`<text class="axis" x="${left}" y="${axisY + 16}">0</text><text class="axis" x="${left + chartW}" y="${axisY + 16}" text-anchor="end">${escape(ms(max))}</text>`);
  parts.push('</svg>');
  return parts.join('\n');
}

/** What this report adds to the shared report style. */
const STYLE = `
.verdict{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.verdict.ok{background:#d3f9d8;color:#1b4d2a}.verdict.breach{background:#ffe3e3;color:#7d1b1b}
svg text.cell-label{fill:#fff;font-weight:600}
svg text.col{font-weight:600}
td.success{color:#c92a2a;font-weight:600}
ul.findings li{margin:4px 0}
details{margin:6px 0}
`;

/** The whole report as one HTML document with no external resources and no script. */
export function htmlReport(result: CampaignResult): string {
  const full = result.configurations.find((c) => c.defenses_off.length === 0);
  const classRows = result.classes
    .map((c) => {
      const cell = full ? result.matrix[c.id]?.[full.name] : undefined;
      return `<tr><td><code>${escape(c.id)}</code><br>${escape(c.title)}</td><td>${escape(c.threat)}</td><td>${escape(c.defended_by.join(', '))}</td><td>${
        c.applicable ? escape(topStoppers(cell, 6) || '-') : escape(c.not_applicable_reason ?? 'not applicable')
      }</td></tr>`;
    })
    .join('\n');
  const attemptRows = result.configurations
    .flatMap((c) =>
      c.attempts.map(
        (a) =>
          `<tr><td>${escape(c.name)}</td><td><code>${escape(a.case)}</code></td><td class="${a.success ? 'success' : ''}">${a.error ? 'harness error' : a.success ? 'succeeded' : 'stopped'}</td><td>${escape(
            a.stopped_by ? `${a.stopped_by.defense} (${a.stopped_by.stage}, ${a.stopped_by.code})` : '',
          )}</td><td>${escape(a.error ? a.error.split('\n')[0]! : a.evidence)}</td></tr>`,
      ),
    )
    .join('\n');
  const latencyRows = result.configurations
    .map(
      (c) =>
        `<tr><td>${escape(c.name)}</td><td>${escape(c.defenses_off.join(', ') || '(none)')}</td><td>${escape(ms(c.benign?.p50_ms))}</td><td>${escape(ms(c.benign?.p95_ms))}</td><td>${escape(ms(c.benign?.broker_p50_ms))}</td><td>${escape(
          Object.entries(c.refusal_p50_ms_by_stage)
            .map(([stage, v]) => `${stage} ${ms(v)}`)
            .join(', ') || '-',
        )}</td></tr>`,
    )
    .join('\n');
  return reportPage('Bastion red team report', STYLE, `
<h1>Bastion red team report</h1>
<p class="meta">${escape(result.quick ? 'Quick run' : 'Full run')}, ${result.repetitions} repetition(s) per case, ${result.classes.length} attack classes, ${result.configurations.length} configurations. Generated ${escape(result.generated_at)}.</p>
<div class="verdict ${result.breached ? 'breach' : 'ok'}">${result.breached ? 'At least one attack succeeded against the full configuration.' : 'No attack succeeded against the full configuration.'}</div>
<h2>Attack success rate: class × configuration</h2>
<p class="meta">"full" has every defense on; "no-X" is a fresh broker with X switched off (<code>defenses_off: [X]</code>). Green is 0%, red is 100%, grey is not applicable.</p>
${heatMap(result)}
<h2>Benign call latency (p50) per configuration</h2>
${latencyBars(result)}
<table>
<thead><tr><th>configuration</th><th>switched off</th><th>p50</th><th>p95</th><th>p50 inside the broker</th><th>time to refuse, p50 by stage</th></tr></thead>
<tbody>
${latencyRows}
</tbody>
</table>
<h2>Findings</h2>
<ul class="findings">
${result.findings.map((f) => `<li>${escape(f)}</li>`).join('\n')}
</ul>
<h2>Attack classes</h2>
<table>
<thead><tr><th>class</th><th>threat</th><th>defended by</th><th>what stopped it (${escape(full?.name ?? 'full')})</th></tr></thead>
<tbody>
${classRows}
</tbody>
</table>
<h2>Every attempt</h2>
<details>
<summary>${result.configurations.reduce((n, c) => n + c.attempts.length, 0)} attempts</summary>
<table>
<thead><tr><th>configuration</th><th>case</th><th>outcome</th><th>stopped by</th><th>evidence</th></tr></thead>
<tbody>
${attemptRows}
</tbody>
</table>
</details>
`);
}
