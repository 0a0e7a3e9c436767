/**
 * Which characters the approval page and the webhook reveal, and how they
 * are written: the shared reveal.js module and where a parked call hides
 * them (hidden-text.ts).
 */
import { describe, expect, it } from 'vitest';
import { hiddenCharactersOf } from '../../broker/approvals/hidden-text.ts';
import { hiddenCharacters, revealSegments, revealText } from '../../broker/approvals/page/reveal.js';

const call = (overrides: Partial<Parameters<typeof hiddenCharactersOf>[0]> = {}) => ({
  tool: 'fs__write_file',
  connector: 'fs',
  principal: { sub: 'agent:a', iss: 'https://issuer', act: [] },
  approval_reason: 'writes',
  reasons: ['allowed'],
  arguments: {},
  ...overrides,
});

describe('reveal', () => {
  it('escapes bidi controls, zero-width characters, tag characters, soft hyphens, BOM, lone surrogates and controls', () => {
    expect(revealText('a\u202Eb\u2066c\u2069')).toBe('a\\u202Eb\\u2066c\\u2069');
    expect(revealText('x\u200By\u200Dz\u2060\uFEFF\u00AD')).toBe('x\\u200By\\u200Dz\\u2060\\uFEFF\\u00AD');
    expect(revealText('hi\u{E0041}\u{E0042}')).toBe('hi\\u{E0041}\\u{E0042}');
    expect(revealText('\uD800lone')).toBe('\\uD800lone');
    expect(revealText('bell\u0007 and C1 \u0085 and \u2028')).toBe('bell\\u0007 and C1 \\u0085 and \\u2028');
    expect(hiddenCharacters('a\u202Eb\u202E')).toEqual(['U+202E RIGHT-TO-LEFT OVERRIDE']);
  });

  it('leaves ordinary text alone, including other scripts, emoji and visible spaces', () => {
    for (const text of ['/srv/tmp/report.txt', 'Grüße, 世界', 'שלום', 'a b\u00A0c', 'rocket 🚀', '\\u202E typed out']) {
      expect(revealText(text), text).toBe(text);
    }
  });

  it('line feeds and tabs are layout in multi-line text, hidden on one line', () => {
    expect(revealText('a\nb\tc', true)).toBe('a\nb\tc');
    expect(revealText('a\nb\tc')).toBe('a\\u000Ab\\u0009c');
    expect(revealText('a\rb', true)).toBe('a\\u000Db');
  });

  it('splits into plain runs and described characters, in order', () => {
    expect(revealSegments('ab\u202Ec')).toEqual(['ab', { escape: '\\u202E', codePoint: 0x202e, description: 'U+202E RIGHT-TO-LEFT OVERRIDE' }, 'c']);
  });
});

describe('where a parked call hides characters', () => {
  it('finds them in names, the delegation chain, reasons and argument keys and values, nested', () => {
    const findings = hiddenCharactersOf(
      call({
        tool: 'fs__write\u200B_file',
        principal: { sub: 'agent:a', iss: 'https://issuer', act: [{ sub: 'agent:b\u2067' }] },
        reasons: ['ok', 'fine\u00AD'],
        arguments: { path: '/srv/\u202Etxt.exe', nested: { list: ['x', 'y\u{E0041}'] }, 'odd\u200Bkey': 1 },
      }),
    );
    expect(findings).toEqual([
      { where: 'tool', characters: ['U+200B ZERO WIDTH SPACE'] },
      { where: 'principal.act[0].sub', characters: ['U+2067 RIGHT-TO-LEFT ISOLATE'] },
      { where: 'reasons[1]', characters: ['U+00AD SOFT HYPHEN'] },
      { where: 'arguments.path', characters: ['U+202E RIGHT-TO-LEFT OVERRIDE'] },
      { where: 'arguments["odd\\\\u200Bkey"] (the key)', characters: ['U+200B ZERO WIDTH SPACE'] },
      { where: 'arguments.nested.list[1]', characters: ['U+E0041'] },
    ]);
  });

  it('a clean call has no findings; a multi-line argument value is not flagged for its line feeds', () => {
    expect(hiddenCharactersOf(call({ arguments: { content: 'line 1\nline 2\tend' } }))).toEqual([]);
  });

  it('bounds the list for a call full of them', () => {
    const args = Object.fromEntries(Array.from({ length: 80 }, (_, i) => [`k${i}`, '\u200B']));
    const findings = hiddenCharactersOf(call({ arguments: args }));
    expect(findings).toHaveLength(51);
    expect(findings.at(-1)).toEqual({ where: '30 more places', characters: [] });
  });
});
