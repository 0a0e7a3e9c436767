/**
 * Secret and personal-data detection in text, and redaction that replaces
 * each finding with `[REDACTED:<kind>]`. Only counts per kind come back:
 * never the secret itself.
 *
 * Every detector is compiled once, when the scanner is made. The built-in
 * patterns are written to stay linear in the input on JavaScript's
 * backtracking engine:
 *   - every quantifier is bounded;
 *   - a token pattern starts with a negative lookbehind for its own alphabet,
 *     so an attempt starts only where a run of token characters starts, not at
 *     every character inside a long run;
 *   - a quantified group is only ever followed by, or made of, pieces whose
 *     first characters are disjoint from it (`(?:\.[a-z]{1,63}){0,6}`), so
 *     there is one way to split any input between them;
 *   - PEM blocks are found with a scanner that searches for each END marker
 *     at most once, not with a lazy `[\s\S]*?`.
 * Input longer than `maxScanChars` is not scanned at all: the caller gets
 * `too_large` and decides (the result filter refuses the result).
 *
 * Extra patterns from configuration are checked before they are accepted:
 * at most 512 characters, they must compile (with the `u` flag), and the
 * shapes that make a backtracking engine blow up are refused (unbounded or
 * very large quantifiers, a quantified group that itself contains a
 * quantifier or an alternation, backreferences). See `patternRisk`.
 *
 * @example
 *   const scanner = createSecretScanner();
 *   const out = scanner.redact('key AKIAIOSFODNN7EXAMPLE', new Set(SECRET_KINDS));
 *   // out = { status: 'ok', text: 'key [REDACTED:aws_access_key]', counts: { aws_access_key: 1 } }
 */
import { z } from 'zod';

/** Secret kinds: on by default in the result filter. */
export const SECRET_KINDS = [
  'private_key',
  'aws_access_key',
  'aws_secret_key',
  'github_token',
  'slack_token',
  'stripe_key',
  'google_api_key',
  'anthropic_key',
  'openai_key',
  'jwt',
  'bearer_token',
  'url_password',
  'generic_secret',
] as const;

/** Personal-data kinds: off by default, turned on by configuration or by a policy obligation. */
export const PII_KINDS = ['email', 'iban', 'credit_card', 'phone'] as const;

export const BUILTIN_KINDS = [...SECRET_KINDS, ...PII_KINDS] as const;

export type SecretKind = (typeof SECRET_KINDS)[number];
export type PiiKind = (typeof PII_KINDS)[number];
export type BuiltinKind = (typeof BUILTIN_KINDS)[number];

/** Names that stand for several kinds at once, in configuration and in obligations. */
export const KIND_GROUPS: Readonly<Record<'secrets' | 'pii', readonly BuiltinKind[]>> = {
  secrets: SECRET_KINDS,
  pii: PII_KINDS,
};

/** 4 MiB of UTF-16 code units: the default for the longest text scanned in one piece. */
export const DEFAULT_MAX_SCAN_CHARS = 4 * 1024 * 1024;

/** The longest extra pattern accepted, in characters of source. */
export const MAX_PATTERN_CHARS = 512;

/** The largest repetition bound an extra pattern may use. */
export const MAX_PATTERN_REPEAT = 1024;

/** A redaction's replacement text. */
export function redactionMarker(kind: string): string {
  return `[REDACTED:${kind}]`;
}

// ---------------------------------------------------------------------------
// Extra patterns from configuration

/**
 * Why an extra pattern's source could make a backtracking engine take
 * super-linear time, or `undefined` when none of the refused shapes is
 * present. Conservative and syntactic: it reads the source in `u` mode.
 *
 * Refused: `*`, `+` and `{n,}` (write `{1,64}`), bounds over 1024, a
 * quantified group that contains a quantifier or an alternation
 * (`(a+)+`, `(a|ab){1,9}`), and backreferences (`\1`, `\k<name>`).
 *
 * @example
 *   patternRisk('EMP-[0-9]{6}');   // undefined
 *   patternRisk('(a+)+$');         // 'unbounded quantifier "+" …'
 */
export function patternRisk(source: string): string | undefined {
  interface Frame {
    quantified: boolean;
    alternation: boolean;
  }
  const stack: Frame[] = [{ quantified: false, alternation: false }];
  // What the last atom was: a group (with what it contained) or a single item.
  let lastAtom: { group: Frame | undefined } | undefined;
  let i = 0;
  const n = source.length;

  const readQuantifier = (): { max: number; text: string } | undefined => {
    const ch = source[i];
    if (ch === '*' || ch === '+') return { max: Infinity, text: ch };
    if (ch === '?') return { max: 1, text: ch };
    if (ch === '{') {
      const m = /^\{(\d{1,9})(,(\d{0,9}))?\}/.exec(source.slice(i, i + 24));
      if (!m) return undefined;
      const min = Number(m[1]);
      const max = m[2] === undefined ? min : m[3] === '' || m[3] === undefined ? Infinity : Number(m[3]);
      return { max, text: m[0] };
    }
    return undefined;
  };

  while (i < n) {
    const ch = source[i]!;
    const quantifier = readQuantifier();
    if (quantifier) {
      if (!lastAtom) return `quantifier "${quantifier.text}" has nothing to repeat`;
      if (quantifier.max === Infinity) {
        return `unbounded quantifier "${quantifier.text}": use a bounded one such as {1,${MAX_PATTERN_REPEAT}}`;
      }
      if (quantifier.max > MAX_PATTERN_REPEAT) return `repetition bound ${quantifier.max} is over ${MAX_PATTERN_REPEAT}`;
      if (quantifier.max > 1 && lastAtom.group && (lastAtom.group.quantified || lastAtom.group.alternation)) {
        return 'a repeated group contains a quantifier or an alternation (nested repetition can backtrack exponentially)';
      }
      stack[stack.length - 1]!.quantified = true;
      i += quantifier.text.length;
      if (source[i] === '?') i += 1; // lazy
      lastAtom = undefined;
      continue;
    }
    if (ch === '\\') {
      const next = source[i + 1];
      if (next === undefined) return 'pattern ends with a backslash';
      if (/[1-9]/.test(next) || next === 'k') return 'backreferences are not allowed';
      if ((next === 'p' || next === 'P' || next === 'u') && source[i + 2] === '{') {
        const close = source.indexOf('}', i + 3);
        if (close < 0) return 'unterminated escape';
        i = close + 1;
      } else {
        i += 2;
      }
      lastAtom = { group: undefined };
      continue;
    }
    if (ch === '[') {
      let j = i + 1;
      if (source[j] === '^') j += 1;
      if (source[j] === ']') j += 1;
      while (j < n && source[j] !== ']') j += source[j] === '\\' ? 2 : 1;
      if (j >= n) return 'unterminated character class';
      i = j + 1;
      lastAtom = { group: undefined };
      continue;
    }
    if (ch === '(') {
      stack.push({ quantified: false, alternation: false });
      const head = /^\(\?(?::|=|!|<=|<!|<[A-Za-z_$][\w$]*>)/.exec(source.slice(i, i + 64));
      i += head ? head[0].length : 1;
      lastAtom = undefined;
      continue;
    }
    if (ch === ')') {
      if (stack.length < 2) return 'unbalanced parenthesis';
      const group = stack.pop()!;
      const parent = stack[stack.length - 1]!;
      parent.quantified ||= group.quantified;
      parent.alternation ||= group.alternation;
      i += 1;
      lastAtom = { group };
      continue;
    }
    if (ch === '|') {
      stack[stack.length - 1]!.alternation = true;
      i += 1;
      lastAtom = undefined;
      continue;
    }
    i += 1;
    lastAtom = ch === '^' || ch === '$' ? undefined : { group: undefined };
  }
  if (stack.length !== 1) return 'unbalanced parenthesis';
  return undefined;
}

const KIND_NAME = /^[a-z][a-z0-9_]{0,47}$/;
const RESERVED_KINDS = new Set<string>([...BUILTIN_KINDS, ...Object.keys(KIND_GROUPS), 'all']);

/**
 * One operator-supplied pattern: a kind name for reports and markers, and a
 * JavaScript regular expression source compiled with the `u` flag (plus `i`
 * when `ignore_case`). When the pattern has capturing groups, only the first
 * group that took part in a match is redacted: use `(?:…)` for grouping.
 *
 * @example
 *   ExtraPatternSchema.parse({ kind: 'employee_id', pattern: 'EMP-[0-9]{6}' });
 */
export const ExtraPatternSchema = z
  .strictObject({
    kind: z
      .string()
      .regex(KIND_NAME, 'lowercase letters, digits and _, starting with a letter, at most 48 characters')
      .refine((kind) => !RESERVED_KINDS.has(kind), 'is a built-in kind or group name'),
    pattern: z.string().min(1).max(MAX_PATTERN_CHARS),
    ignore_case: z.boolean().default(false),
    /** Applied to every result unless false; an obligation naming the kind applies it anyway. */
    enabled: z.boolean().default(true),
  })
  .superRefine((extra, ctx) => {
    try {
      new RegExp(extra.pattern, 'u');
    } catch (error) {
      ctx.addIssue({ code: 'custom', path: ['pattern'], message: `does not compile: ${(error as Error).message}` });
      return;
    }
    const risk = patternRisk(extra.pattern);
    if (risk) ctx.addIssue({ code: 'custom', path: ['pattern'], message: `refused: ${risk}` });
    if (new RegExp(`^(?:${extra.pattern})$`, 'u').test('')) {
      ctx.addIssue({ code: 'custom', path: ['pattern'], message: 'matches the empty string' });
    }
  });

export type ExtraPattern = z.input<typeof ExtraPatternSchema>;

// ---------------------------------------------------------------------------
// Detectors

interface Span {
  start: number;
  end: number;
  kind: string;
  /** Position in the detector list: the earlier detector wins a tie. */
  rank: number;
}

interface Detector {
  readonly kind: string;
  find(text: string, rank: number, out: Span[]): void;
}

/** Values that stand for a secret rather than being one. */
const PLACEHOLDER =
  /^(?:\$\{.{0,256}\}|\$[A-Z_][A-Z0-9_]{0,127}|\{\{.{0,256}\}\}|<[^>]{0,256}>|%[A-Za-z_][\w]{0,63}%?|\*{1,512}|x{3,512}|X{3,512}|\.{3,512}|…|null|none|nil|undefined|true|false|\[REDACTED:[a-z0-9_]{1,48}\])$/i;

function notPlaceholder(value: string): boolean {
  return !PLACEHOLDER.test(value.trim());
}

function captureGroupCount(source: string, flags: string): number {
  return new RegExp(`(?:${source})|`, flags).exec('')!.length - 1;
}

/**
 * A detector from one regular expression. The span redacted is the first
 * capturing group that took part in the match, or the whole match.
 */
function regexDetector(kind: string, source: string, flags: string, validate?: (value: string) => boolean): Detector {
  const groups = captureGroupCount(source, flags);
  const re = new RegExp(source, `${flags}g${groups > 0 ? 'd' : ''}`);
  return {
    kind,
    find(text, rank, out) {
      re.lastIndex = 0;
      for (let m = re.exec(text); m !== null; m = re.exec(text)) {
        if (m[0].length === 0) {
          re.lastIndex += 1;
          continue;
        }
        let start = m.index;
        let end = start + m[0].length;
        if (groups > 0 && m.indices) {
          for (let g = 1; g <= groups; g += 1) {
            const at = m.indices[g];
            if (at) {
              [start, end] = at;
              break;
            }
          }
        }
        if (end <= start) continue;
        if (validate && !validate(text.slice(start, end))) continue;
        out.push({ start, end, kind, rank });
      }
    },
  };
}

/**
 * PEM private keys. A BEGIN marker is redacted with everything up to its END
 * marker when one follows within 64 KiB; otherwise (a truncated key, or a key
 * whose END was cut off) with the base64 body that follows it. Each END
 * marker is searched for at most once, so many BEGIN markers without an END
 * cost linear time.
 */
function pemDetector(): Detector {
  const begin = /-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----/g;
  const endMarker = /-----END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----/g;
  // The body of a key: base64, whitespace, escaped newlines (\n in JSON), and
  // header lines such as "Proc-Type: 4,ENCRYPTED"; it stops at "-----".
  const body = /(?:[A-Za-z0-9+/=\s\\:,.]|-(?!----)){0,65536}/y;
  const MAX_BODY = 65_536;
  return {
    kind: 'private_key',
    find(text, rank, out) {
      let nextEndStart = -1; // -1: not searched yet; Infinity: none left
      let nextEndStop = -1;
      begin.lastIndex = 0;
      for (let m = begin.exec(text); m !== null; m = begin.exec(text)) {
        const start = m.index;
        const afterMarker = start + m[0].length;
        if (nextEndStart !== Infinity && nextEndStart < afterMarker) {
          endMarker.lastIndex = afterMarker;
          const end = endMarker.exec(text);
          nextEndStart = end ? end.index : Infinity;
          nextEndStop = end ? end.index + end[0].length : -1;
        }
        let stop: number;
        if (nextEndStart !== Infinity && nextEndStart - afterMarker <= MAX_BODY) {
          stop = nextEndStop;
        } else {
          body.lastIndex = afterMarker;
          body.exec(text);
          stop = body.lastIndex;
        }
        out.push({ start, end: stop, kind: 'private_key', rank });
        begin.lastIndex = stop;
      }
    },
  };
}

function luhn(digits: string): boolean {
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i -= 1) {
    let d = digits.charCodeAt(i) - 48;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return sum % 10 === 0;
}

/** Card numbers: a known issuer prefix, 13–19 digits, a valid Luhn check digit, not one repeated digit. */
function isCardNumber(value: string): boolean {
  const digits = value.replace(/[ -]/g, '');
  if (digits.length < 13 || digits.length > 19) return false;
  if (/^(\d)\1*$/.test(digits)) return false;
  if (!/^(?:4|5[1-5]|2[2-7]|3[47]|3[0689]|6[0-9])/.test(digits)) return false;
  return luhn(digits);
}

/** IBANs: 15–34 characters and the ISO 13616 mod-97 check. */
export function isIban(value: string): boolean {
  const compact = value.replace(/ /g, '');
  if (compact.length < 15 || compact.length > 34) return false;
  const rotated = compact.slice(4) + compact.slice(0, 4);
  let remainder = 0;
  for (const ch of rotated) {
    const code = ch.charCodeAt(0);
    const n = code >= 65 ? code - 55 : code - 48;
    remainder = (n >= 10 ? remainder * 100 + n : remainder * 10 + n) % 97;
  }
  return remainder === 1;
}

/** International numbers: 8–15 digits (E.164), no doubled separators, balanced parentheses. */
function isPhoneNumber(value: string): boolean {
  const digits = value.replace(/\D/g, '');
  if (digits.length < 8 || digits.length > 15) return false;
  if (/[ .()-]{2}/.test(value.replace(/\) /g, ')').replace(/ \(/g, '('))) return false;
  return (value.match(/\(/g)?.length ?? 0) === (value.match(/\)/g)?.length ?? 0);
}

function mixedCaseWithDigit(value: string): boolean {
  return /[0-9]/.test(value) && /[A-Z]/.test(value) && /[a-z]/.test(value);
}

const GENERIC_KEY =
  // Not after a path separator: "/etc/passwd: No such file" is not an assignment.
  '(?<![/\\\\])(?:passw(?:or)?d|passphrase|secret|api[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|session[_-]?token|api[_-]?token|client[_-]?secret|private[_-]?key|secret[_-]?key)' +
  // Anything may follow the keyword up to the separator (DB_PASSWORD_FILE, secret_key_base): over-redacting beats leaking.
  '[A-Za-z0-9_.-]{0,32}';
// A quoted value may contain escaped quotes; an unquoted one ends at whitespace or punctuation, and never starts with "=" (so `password == x` is a comparison, not a value).
const GENERIC_VALUE =
  // A ${VAR} reference is captured whole, so the placeholder check can skip it.
  '(?:(\\$\\{[^}\\s]{1,256}\\})|"((?:[^"\\\\\\r\\n]|\\\\.){1,512})"|\'((?:[^\'\\\\\\r\\n]|\\\\.){1,512})\'|([^\\s"\'`&,;<>(){}\\[\\]=][^\\s"\'`&,;<>(){}\\[\\]]{0,511}))';

/** The built-in detectors, most specific first: on a tie, the earlier one names the kind. */
function builtinDetectors(): Detector[] {
  return [
    pemDetector(),
    regexDetector('aws_access_key', '(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])', ''),
    regexDetector(
      'aws_secret_key',
      '(?:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)["\']?\\s{0,4}(?:=>|:=|[:=])\\s{0,4}["\']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])',
      'i',
    ),
    regexDetector('github_token', '(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,242})', ''),
    regexDetector('slack_token', '(?<![A-Za-z0-9-])(?:xox[abprs]|xapp)-[A-Za-z0-9-]{10,250}', '', (v) => /[0-9]/.test(v)),
    regexDetector('stripe_key', '(?<![A-Za-z0-9_])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}', ''),
    regexDetector('google_api_key', '(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])', ''),
    regexDetector('anthropic_key', '(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,250}', ''),
    regexDetector('openai_key', '(?<![A-Za-z0-9_-])sk-(?!ant-)[A-Za-z0-9_-]{20,250}', '', (v) => mixedCaseWithDigit(v.slice(3))),
    regexDetector(
      'jwt',
      '(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,8192}\\.eyJ[A-Za-z0-9_-]{5,16384}\\.[A-Za-z0-9_-]{16,8192}',
      '',
    ),
    // An Authorization header's credentials, whatever the scheme (Basic credentials may have no digit).
    regexDetector(
      'bearer_token',
      '\\bauthorization["\']?\\s{0,4}[:=]\\s{0,4}["\']?(?:[A-Za-z]{1,16}\\s{1,4})?([A-Za-z0-9._~+/-]{8,4096}={0,2})',
      'i',
      notPlaceholder,
    ),
    // A bare "Bearer <token>": a real token has a digit somewhere, prose after "bearer" does not.
    regexDetector('bearer_token', '\\bbearer\\s{1,4}([A-Za-z0-9._~+/-]{8,4096}={0,2})', 'i', (v) => /[0-9]/.test(v)),
    regexDetector(
      'url_password',
      '(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{1,31}://[^\\s/?#@:"\'<>]{0,256}:([^\\s/?#"\'<>]{1,256})@',
      '',
      notPlaceholder,
    ),
    regexDetector('generic_secret', `${GENERIC_KEY}["']?\\s{0,4}(?:=>|:=|[:=])\\s{0,4}${GENERIC_VALUE}`, 'i', notPlaceholder),
    regexDetector(
      'email',
      '(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\\.[A-Za-z0-9-]{1,63}){0,6}\\.[A-Za-z]{2,24}(?![A-Za-z0-9-])',
      '',
    ),
    regexDetector('iban', '(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])', '', isIban),
    regexDetector('credit_card', '(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])', '', isCardNumber),
    regexDetector('phone', '(?<![A-Za-z0-9+])\\+[1-9][0-9 .()-]{6,20}[0-9](?![0-9])', '', isPhoneNumber),
    regexDetector('phone', '(?<![A-Za-z0-9(])(?:\\([0-9]{3}\\) ?|[0-9]{3}[.-])[0-9]{3}[.-][0-9]{4}(?![A-Za-z0-9])', ''),
  ];
}

/** Property names whose string value is a secret whatever it looks like (`"password": "hunter2"`). */
const SECRET_KEY_SUFFIXES = [
  'password',
  'passwd',
  'passphrase',
  'secret',
  'apikey',
  'apitoken',
  'accesstoken',
  'authtoken',
  'refreshtoken',
  'sessiontoken',
  'bearertoken',
  'clientsecret',
  'privatekey',
  'secretkey',
  'secretaccesskey',
  'passwordhash',
] as const;

function kindForKey(key: string): 'aws_secret_key' | 'generic_secret' | undefined {
  if (key.length > 128) return undefined;
  const folded = key.toLowerCase().replace(/[^a-z0-9]/g, '');
  if (folded.endsWith('secretaccesskey')) return 'aws_secret_key';
  return SECRET_KEY_SUFFIXES.some((suffix) => folded.endsWith(suffix)) ? 'generic_secret' : undefined;
}

// ---------------------------------------------------------------------------
// The scanner

export type Redaction =
  | { status: 'ok'; text: string; counts: Record<string, number> }
  | { status: 'too_large'; length: number; limit: number };

export interface SecretScannerOptions {
  /** Validated extra patterns (see ExtraPatternSchema). */
  extra?: readonly ExtraPattern[];
  /** Longest text scanned in one piece, in UTF-16 code units. Default 4 MiB. */
  maxScanChars?: number;
}

export interface SecretScanner {
  /** Every kind this scanner can redact: the built-in kinds and the configured extra kinds. */
  readonly kinds: ReadonlySet<string>;
  /**
   * Redacts the given kinds in `text`. With `key` (the property name the text
   * is the value of, in structured data), a value under a secret-sounding
   * name (`password`, `client_secret`, `apiKey`, …) is redacted whole when no
   * detector found anything more specific in it. Throws RangeError for a kind
   * the scanner does not know: callers validate kinds first.
   */
  redact(text: string, kinds: ReadonlySet<string>, context?: { key?: string }): Redaction;
}

/**
 * Builds a scanner: every detector is compiled here, once.
 *
 * @example
 *   const scanner = createSecretScanner({ extra: [{ kind: 'employee_id', pattern: 'EMP-[0-9]{6}' }] });
 *   scanner.redact('EMP-123456', new Set(['employee_id']));
 *   // { status: 'ok', text: '[REDACTED:employee_id]', counts: { employee_id: 1 } }
 */
export function createSecretScanner(options: SecretScannerOptions = {}): SecretScanner {
  const maxScanChars = options.maxScanChars ?? DEFAULT_MAX_SCAN_CHARS;
  const detectors = builtinDetectors();
  for (const raw of options.extra ?? []) {
    const extra = ExtraPatternSchema.parse(raw);
    detectors.push(regexDetector(extra.kind, extra.pattern, extra.ignore_case ? 'iu' : 'u'));
  }
  const kinds = new Set<string>(detectors.map((d) => d.kind));

  return {
    kinds,
    redact(text, wanted, context) {
      for (const kind of wanted) {
        if (!kinds.has(kind)) throw new RangeError(`unknown redaction kind: ${kind}`);
      }
      if (text.length > maxScanChars) return { status: 'too_large', length: text.length, limit: maxScanChars };
      const spans: Span[] = [];
      if (wanted.size > 0) {
        detectors.forEach((detector, rank) => {
          if (wanted.has(detector.kind)) detector.find(text, rank, spans);
        });
      }
      if (spans.length === 0) {
        const keyKind = context?.key === undefined ? undefined : kindForKey(context.key);
        if (keyKind && wanted.has(keyKind) && text.length > 0 && notPlaceholder(text)) {
          return { status: 'ok', text: redactionMarker(keyKind), counts: { [keyKind]: 1 } };
        }
        return { status: 'ok', text, counts: {} };
      }
      return { status: 'ok', ...applySpans(text, spans) };
    },
  };
}

/**
 * Replaces spans with markers. Overlapping spans are merged into the one that
 * starts first (on the same start, the more specific detector's), stretched to
 * cover them all, so a secret is never partly left behind and is counted once.
 */
function applySpans(text: string, spans: Span[]): { text: string; counts: Record<string, number> } {
  spans.sort((a, b) => a.start - b.start || a.rank - b.rank);
  const counts: Record<string, number> = {};
  const parts: string[] = [];
  let cursor = 0;
  let open: Span | undefined;
  const close = () => {
    if (!open) return;
    parts.push(redactionMarker(open.kind));
    counts[open.kind] = (counts[open.kind] ?? 0) + 1;
    cursor = open.end;
    open = undefined;
  };
  for (const span of spans) {
    if (open && span.start < open.end) {
      if (span.end > open.end) open = { ...open, end: span.end };
      continue;
    }
    close();
    parts.push(text.slice(cursor, span.start));
    open = span;
  }
  close();
  parts.push(text.slice(cursor));
  return { text: parts.join(''), counts };
}
