/**
 * Small text helpers shared by the filters: how findings name a place (a JSON
 * pointer) and quote a piece of text (an excerpt) without carrying invisible
 * or control characters into reports, logs or the audit trail, where a later
 * reader (a person, or a model summarising logs) would be exposed to them.
 *
 * @example
 *   pointer(['inputSchema', 'properties', 'a/b', 'description']); // '/inputSchema/properties/a~1b/description'
 *   visible('ab\u200Bc'); // 'ab\\u{200B}c'
 */

/**
 * Characters a reader cannot see or that change how text around them reads:
 * C0/C1 controls (except tab), zero-width and bidi controls, word joiners and
 * invisible operators, the BOM, variation selectors, Unicode tags, and line
 * and paragraph separators.
 */
const INVISIBLE =
  /[\u0000-\u0008\u000A-\u001F\u007F-\u009F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2064\u2066-\u206F\uFE00-\uFE0F\uFEFF\uFFF9-\uFFFB\u{E0000}-\u{E007F}\u{E0100}-\u{E01EF}]/gu;

/**
 * Makes text safe to quote in a report: invisible and control characters are
 * written as `\u{XXXX}`, and the result is cut to `max` code units (never in
 * the middle of a surrogate pair), ending in `…` when cut.
 *
 * @example
 *   visible('line\nbreak'); // 'line\\u{A}break'
 */
export function visible(text: string, max = 200): string {
  let cut = text.length > max ? text.slice(0, max) : text;
  const last = cut.charCodeAt(cut.length - 1);
  if (cut.length < text.length && last >= 0xd800 && last <= 0xdbff) cut = cut.slice(0, -1);
  const shown = cut.replace(INVISIBLE, (ch) => `\\u{${ch.codePointAt(0)!.toString(16).toUpperCase()}}`);
  return cut.length < text.length ? `${shown}…` : shown;
}

/**
 * An RFC 6901 JSON pointer to a place in a document, with each segment made
 * visible: a pointer is read by people, so a hidden character in a property
 * name is spelled out rather than carried along.
 *
 * @example
 *   pointer(['content', 0, 'text']); // '/content/0/text'
 */
export function pointer(segments: readonly (string | number)[]): string {
  let out = '';
  for (const segment of segments) {
    out += `/${visible(String(segment), 256).replaceAll('~', '~0').replaceAll('/', '~1')}`;
  }
  return out;
}

/** The text around [start, end): what a finding quotes, made visible and bounded. */
export function excerpt(text: string, start: number, end: number, max = 120): string {
  return visible(text.slice(start, Math.min(end, start + max)), max);
}
