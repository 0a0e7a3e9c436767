// Makes hidden text visible. Agents and upstreams choose the text an approver
// reads; characters that render as nothing (zero-width, tag characters,
// soft hyphens) or that reorder what follows (bidi overrides and isolates)
// let that text read differently from what will run. Each such character is
// shown instead as its escape (\u202E, \u{E0041}), marked.
//
// Shared, unchanged, by the approval page (served as /approvals/reveal.js)
// and the broker (webhook summaries, the pending view's warnings), so both
// flag exactly the same characters. Types: reveal.d.ts.

/**
 * Control and format characters, line and paragraph separators, lone
 * surrogates, and every default-ignorable code point (zero-width characters,
 * bidi controls, variation selectors, tag characters, Hangul fillers).
 */
const HIDDEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\p{Default_Ignorable_Code_Point}]/u;
/** In multi-line text (pretty-printed JSON, a folded value) line feeds and tabs are layout, not hidden. */
const LAYOUT = new Set(['\n', '\t']);

const NAMES = {
  0x00ad: 'SOFT HYPHEN',
  0x061c: 'ARABIC LETTER MARK',
  0x200b: 'ZERO WIDTH SPACE',
  0x200c: 'ZERO WIDTH NON-JOINER',
  0x200d: 'ZERO WIDTH JOINER',
  0x200e: 'LEFT-TO-RIGHT MARK',
  0x200f: 'RIGHT-TO-LEFT MARK',
  0x202a: 'LEFT-TO-RIGHT EMBEDDING',
  0x202b: 'RIGHT-TO-LEFT EMBEDDING',
  0x202c: 'POP DIRECTIONAL FORMATTING',
  0x202d: 'LEFT-TO-RIGHT OVERRIDE',
  0x202e: 'RIGHT-TO-LEFT OVERRIDE',
  0x2060: 'WORD JOINER',
  0x2066: 'LEFT-TO-RIGHT ISOLATE',
  0x2067: 'RIGHT-TO-LEFT ISOLATE',
  0x2068: 'FIRST STRONG ISOLATE',
  0x2069: 'POP DIRECTIONAL ISOLATE',
  0xfeff: 'ZERO WIDTH NO-BREAK SPACE',
};

const hex = (codePoint) => codePoint.toString(16).toUpperCase().padStart(4, '0');

/** U+202E RIGHT-TO-LEFT OVERRIDE, or U+E0041 for characters without a name here. */
export function describeCharacter(codePoint) {
  const name = NAMES[codePoint];
  return name ? `U+${hex(codePoint)} ${name}` : `U+${hex(codePoint)}`;
}

/** The escape shown in place of a hidden character: \u202E, or \u{E0041} beyond the BMP. */
export function escapeCharacter(codePoint) {
  return codePoint > 0xffff ? `\\u{${hex(codePoint)}}` : `\\u${hex(codePoint)}`;
}

function isHidden(character, multiline) {
  return HIDDEN.test(character) && !(multiline && LAYOUT.has(character));
}

/**
 * Splits text into plain runs (strings) and hidden characters
 * ({ escape, codePoint, description }), in order.
 */
export function revealSegments(text, multiline = false) {
  const segments = [];
  let plain = '';
  // for…of walks code points; a lone surrogate comes out on its own.
  for (const character of text) {
    if (!isHidden(character, multiline)) {
      plain += character;
      continue;
    }
    if (plain) segments.push(plain);
    plain = '';
    const codePoint = character.codePointAt(0);
    segments.push({ escape: escapeCharacter(codePoint), codePoint, description: describeCharacter(codePoint) });
  }
  if (plain) segments.push(plain);
  return segments;
}

/** The text with every hidden character replaced by its escape (for plain-text channels). */
export function revealText(text, multiline = false) {
  return revealSegments(text, multiline)
    .map((segment) => (typeof segment === 'string' ? segment : segment.escape))
    .join('');
}

/** The distinct hidden characters in text, described (empty when there are none). */
export function hiddenCharacters(text, multiline = false) {
  const found = new Set();
  for (const segment of revealSegments(text, multiline)) if (typeof segment !== 'string') found.add(segment.description);
  return [...found];
}
