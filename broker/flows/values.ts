/**
 * Values for argument provenance: what in a tool result an attacker could
 * plant for the agent to pass on, and what in a call's arguments could have
 * come from there. Both sides are cut into the same normalized units, so a
 * unit of an argument can be looked up among the units results brought in:
 *
 *   email    "Bob@Example.COM"              → "bob@example.com"
 *   url      "https://Evil.example/x?a=1)." → "https://evil.example/x?a=1" (and its host as a `domain`)
 *   iban     "DE89 3704 0044 0532 0130 00"  → "DE89370400440532013000" (ISO 13616 check)
 *   number   "1,500.00", 1500               → "1500" (three or more significant digits)
 *   path     "/home/ana/lease.txt"           → itself
 *   handle   "@Bob", "#general"             → "@bob", "#general"
 *   text     a short value as a whole        → lowercased, NFKC, spaces collapsed
 *            (two or more words, or one word of 8+ characters; at most 128)
 *
 * Results give whole-value `text` units from JSON leaves (a text item that
 * parses as JSON, structuredContent), from "Key: value" lines and from
 * quoted phrases and runs of capitalized words in prose; arguments give one
 * for each short string. Free text (an email body an agent writes) counts
 * only through the identifiers inside it.
 *
 * Units are stored as 53-bit hashes (cyrb53, seeded per deployment), never
 * as text: the flow state holds no content. Not cryptographic: a collision
 * can at worst misattribute one value, and the seed keeps an attacker from
 * computing one in advance.
 *
 * @example
 *   const units = resultUnits({ content: [{ type: 'text', text: 'Pay DE89 3704 0044 0532 0130 00 now' }] }, 4096);
 *   // [{ kind: 'iban', value: 'DE89370400440532013000' }, ...]
 */
import { isIban } from '../filters/secrets.ts';
import type { ValueKind } from './schema.ts';

export interface ValueUnit {
  kind: ValueKind;
  /** Normalized. */
  value: string;
}

/** An argument leaf (JSON pointer) and the units it holds, identifiers first. */
export interface ArgumentUnits {
  argument: string;
  units: ValueUnit[];
}

/**
 * cyrb53 (bryc, public domain): a fast 53-bit string hash, exact in a JS
 * number. `seed` is the deployment's secret.
 */
export function hashUnit(unit: ValueUnit, seed: number): number {
  const text = `${unit.kind}:${unit.value}`;
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

// Identifier patterns: bounded repetitions, no nested quantifiers over the same characters.
const EMAIL = /(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){1,8}/g;
const URL_PATTERN = /\b(?:https?|ftp|wss?):\/\/[^\s<>"'`\\^{}|]{1,2048}/gi;
const IBAN = /(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])/g;
// Not part of a word, a date or a time: digits next to -, /, : or letters are left to `text`.
const NUMBER = /(?<![\w.,:/-])(?:\d{1,3}(?:,\d{3}){1,6}|\d{1,18})(?:\.\d{1,8})?(?![\w:/-]|[.,]\d)/g;
const PATH = /(?<![\w:/.~-])(?:~|\.{1,2})?(?:\/[\w.@+-]{1,255}){2,32}/g;
const HANDLE = /(?<![\w@#])[@#][A-Za-z][\w.-]{1,63}/g;
const TRAILING_PUNCTUATION = /[.,;:!?)\]}'"]+$/;
const KEY_VALUE_LINE = /^[ \t]{0,8}[A-Za-z][\w .-]{0,31}:[ \t]{1,8}(\S.{0,127}?)[ \t]*$/gm;
const QUOTED = /["“«]([^"”»\n]{2,128})["”»]/g;
const CAPITALIZED_RUN = /(?<![\p{L}\p{N}])\p{Lu}[\p{L}\p{N}'’&-]{0,40}(?:[ \t]{1,3}(?:(?:of|de|du|la|le|the|and|von|van|di|da)[ \t]{1,3})?\p{Lu}[\p{L}\p{N}'’&-]{0,40}){1,5}/gu;

const MAX_TEXT = 128;

/** A whole short value as a `text` unit, or undefined when it is too short, too long or too common to mean anything. */
export function textUnit(raw: string): ValueUnit | undefined {
  const value = raw.normalize('NFKC').toLowerCase().replace(/\s+/g, ' ').trim();
  if (value.length > MAX_TEXT) return undefined;
  const words = value.split(' ').length;
  if (words >= 2 ? value.length < 5 : value.length < 8) return undefined;
  if (/^[\d.,\s-]+$/.test(value)) return undefined;
  return { kind: 'text', value };
}

function normalNumber(raw: string): string | undefined {
  const n = Number(raw.replaceAll(',', ''));
  if (!Number.isFinite(n)) return undefined;
  // Three or more significant digits: "5", "12" or "0.1" is in every document.
  const digits = String(Math.abs(n)).replace(/^0\.0*|\./g, '').replace(/e.*$/, '');
  return digits.length >= 3 ? String(n) : undefined;
}

/** Identifier units in a piece of text (emails, URLs and their hosts, IBANs, numbers, paths, handles). */
export function identifierUnits(text: string, out: ValueUnit[], max: number): void {
  const push = (unit: ValueUnit) => {
    if (out.length < max) out.push(unit);
  };
  // URLs, emails and IBANs are blanked once found, so their pieces are not read again as numbers, paths or handles.
  let rest = text;
  const blank = (m: RegExpMatchArray) => {
    rest = rest.slice(0, m.index) + ' '.repeat(m[0].length) + rest.slice(m.index! + m[0].length);
  };
  // Each pattern runs only when the character it needs is there: most leaves (ids, dates, names) need none.
  const at = text.includes('@');
  const digit = /\d/.test(text);
  if (text.includes('://')) for (const m of text.matchAll(URL_PATTERN)) {
    const raw = m[0].replace(TRAILING_PUNCTUATION, '');
    try {
      const url = new URL(raw);
      push({ kind: 'url', value: `${url.protocol}//${url.host}${url.pathname}${url.search}` });
      if (url.hostname) push({ kind: 'domain', value: url.hostname.replace(/^www\./, '') });
    } catch {
      // Not a URL after all.
    }
    blank(m);
  }
  if (at) {
    for (const m of rest.matchAll(EMAIL)) {
      push({ kind: 'email', value: m[0].toLowerCase() });
      blank(m);
    }
  }
  if (digit) {
    for (const m of rest.matchAll(IBAN)) {
      if (!isIban(m[0])) continue;
      push({ kind: 'iban', value: m[0].replaceAll(' ', '') });
      blank(m);
    }
  }
  if (rest.includes('/')) for (const m of rest.matchAll(PATH)) push({ kind: 'path', value: m[0].replace(TRAILING_PUNCTUATION, '') });
  if (at || rest.includes('#')) for (const m of rest.matchAll(HANDLE)) push({ kind: 'handle', value: m[0].replace(TRAILING_PUNCTUATION, '').toLowerCase() });
  if (digit) for (const m of rest.matchAll(NUMBER)) {
    const value = normalNumber(m[0]);
    if (value) push({ kind: 'number', value });
  }
}

/** Units of prose: identifiers, "Key: value" lines, quoted phrases and runs of capitalized words. */
function proseUnits(text: string, out: ValueUnit[], max: number): void {
  identifierUnits(text, out, max);
  const phrase = (raw: string) => {
    const unit = textUnit(raw.replace(TRAILING_PUNCTUATION, ''));
    if (unit && out.length < max) out.push(unit);
  };
  if (text.includes(':')) for (const m of text.matchAll(KEY_VALUE_LINE)) phrase(m[1]!);
  if (/["“«]/.test(text)) for (const m of text.matchAll(QUOTED)) phrase(m[1]!);
  // Two capitalized words in a row need at least two capitals.
  if (/\p{Lu}[\s\S]*\p{Lu}/u.test(text)) for (const m of text.matchAll(CAPITALIZED_RUN)) phrase(m[0]);
}

/** Units of one JSON leaf. */
function leafUnits(value: unknown, out: ValueUnit[], max: number): void {
  if (typeof value === 'number') {
    const n = normalNumber(String(value));
    if (n && out.length < max) out.push({ kind: 'number', value: n });
  } else if (typeof value === 'string') {
    const before = out.length;
    proseUnits(value, out, max);
    const whole = textUnit(value);
    // A leaf that is one identifier is that identifier, not also a phrase.
    if (whole && out.length < max && !out.slice(before).some((u) => u.value.toLowerCase() === whole.value)) out.push(whole);
  }
}

/** Walks a JSON value to its leaves, depth-bounded. */
function walk(value: unknown, visit: (leaf: unknown, path: (string | number)[]) => void, path: (string | number)[] = [], depth = 0): void {
  if (depth > 32) return;
  if (Array.isArray(value)) value.forEach((item, i) => walk(item, visit, [...path, i], depth + 1));
  else if (value !== null && typeof value === 'object') for (const [key, item] of Object.entries(value)) walk(item, visit, [...path, key], depth + 1);
  else visit(value, path);
}

/** A text that is a JSON document, parsed; undefined for prose. */
function asJson(text: string): unknown {
  const start = text.trimStart()[0];
  if (start !== '{' && start !== '[') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Every text a result carries, as is (text items, embedded resource texts), for scanners. */
export function resultStrings(result: unknown): string[] {
  const texts: string[] = [];
  resultTexts(
    result,
    (text) => texts.push(text),
    (json) => walk(json, (leaf) => void (typeof leaf === 'string' && texts.push(leaf))),
  );
  return texts;
}

/** The text a result carries: text items, embedded resource texts, structured content. */
function resultTexts(result: unknown, visitText: (text: string) => void, visitJson: (value: unknown) => void): void {
  const top = result as { content?: unknown; structuredContent?: unknown; contents?: unknown; messages?: unknown } | null;
  if (!top || typeof top !== 'object') return;
  const items: unknown[] = [
    ...(Array.isArray(top.content) ? top.content : []),
    ...(Array.isArray(top.contents) ? top.contents : []),
    // prompts/get: messages, each with one content item.
    ...(Array.isArray(top.messages) ? top.messages.map((m) => (m as { content?: unknown })?.content) : []),
  ];
  for (const item of items) {
    const entry = item as { text?: unknown; resource?: { text?: unknown } } | null;
    const text = typeof entry?.text === 'string' ? entry.text : typeof entry?.resource?.text === 'string' ? entry.resource.text : undefined;
    if (text === undefined) continue;
    const json = asJson(text);
    if (json === undefined) visitText(text);
    else visitJson(json);
  }
  if (top.structuredContent !== undefined) visitJson(top.structuredContent);
}

/**
 * The units a tool result (or resource contents, or prompt messages) brings
 * into the agent's context, at most `max`, duplicates removed.
 */
export function resultUnits(result: unknown, max: number): ValueUnit[] {
  const out: ValueUnit[] = [];
  resultTexts(
    result,
    (text) => proseUnits(text, out, max),
    (json) => walk(json, (leaf) => leafUnits(leaf, out, max)),
  );
  return dedupe(out);
}

/** The units of each argument leaf, by JSON pointer; leaves without units are left out. */
export function argumentUnits(args: Record<string, unknown>, maxPerLeaf = 64): ArgumentUnits[] {
  const found: ArgumentUnits[] = [];
  walk(args, (leaf, path) => {
    const units: ValueUnit[] = [];
    if (typeof leaf === 'string') identifierUnits(leaf, units, maxPerLeaf);
    const whole = typeof leaf === 'string' ? textUnit(leaf) : undefined;
    if (typeof leaf === 'number') leafUnits(leaf, units, maxPerLeaf);
    // The whole value last: an identifier names the finding better.
    if (whole && !units.some((u) => u.value.toLowerCase() === whole.value)) units.push(whole);
    if (units.length > 0) found.push({ argument: jsonPointer(path), units: dedupe(units) });
  });
  return found;
}

function dedupe(units: ValueUnit[]): ValueUnit[] {
  const seen = new Set<string>();
  return units.filter((u) => {
    const key = `${u.kind}:${u.value}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function jsonPointer(path: (string | number)[]): string {
  return path.map((segment) => `/${String(segment).replaceAll('~', '~0').replaceAll('/', '~1')}`).join('');
}
