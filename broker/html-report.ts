/**
 * The self-contained HTML reports (red team, flow chains, flow graph): one
 * page with inline CSS and SVG, no script and nothing fetched, declaring its
 * own Content-Security-Policy with the hash of its one style block, so it
 * stays safe to open from anywhere.
 *
 * @example
 *   await writeFile('report.html', reportPage('Bastion red team report', 'td.success{color:#c92a2a}', '<h1>…</h1>'));
 */
import { createHash } from 'node:crypto';

/** Text as HTML text or attribute value. */
export const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** The rules every report shares; each adds its own. */
const BASE_STYLE = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#212529;margin:24px auto;max-width:1100px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#495057}
svg text{font:12px system-ui,sans-serif;fill:#212529}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #dee2e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f5}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
`.trim();

/** The whole document: `body` is trusted markup the caller built with escapeHtml. */
export function reportPage(title: string, style: string, body: string): string {
  const css = `${BASE_STYLE}\n${style.trim()}`;
  const csp = `default-src 'none'; style-src 'sha256-${createHash('sha256').update(css).digest('base64')}'; img-src data:; base-uri 'none'; form-action 'none'`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${escapeHtml(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${css}</style>
</head>
<body>
${body.trim()}
</body>
</html>
`;
}
