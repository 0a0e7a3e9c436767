/**
 * The builtins a WASM policy may call that the OPA WebAssembly module does
 * not implement itself. The module imports them from the host: a few come
 * from the opa-wasm SDK's JavaScript, the rest are implemented here to match
 * Go OPA's semantics for the inputs policies actually give them.
 *
 * Everything else the module might import (I/O such as http.send, randomness,
 * crypto, and builtins whose JavaScript implementation could backtrack, such
 * as the SDK's regex.split on a JS RegExp) is refused when the policy loads,
 * and `opa build --capabilities policies/capabilities.json` refuses it even
 * earlier, at build time.
 *
 * Like Go OPA, a builtin given a value it cannot handle returns undefined
 * (the expression is undefined, not an error); the engine treats a missing
 * decision as a denial.
 *
 * @example
 *   const host = hostBuiltins(() => evaluationTimeNs);
 *   opaWasm.loadPolicySync(module, memory, host);
 */

/** Implemented by the opa-wasm SDK in JavaScript (its own table wins over ours, so we only allow or refuse them). */
export const SDK_BUILTINS: readonly string[] = ['json.is_valid', 'sprintf', 'yaml.is_valid', 'yaml.marshal', 'yaml.unmarshal'];

/** Implemented by the SDK, but refused: `regex.split` runs a policy-supplied pattern on JavaScript's backtracking RegExp. */
export const REFUSED_SDK_BUILTINS: readonly string[] = ['regex.split'];

/** Implemented below. */
export const BASTION_BUILTINS: readonly string[] = [
  'strings.any_prefix_match',
  'strings.any_suffix_match',
  'time.clock',
  'time.date',
  'time.now_ns',
  'time.parse_rfc3339_ns',
  'time.weekday',
];

/** Every builtin the host provides to a WASM policy. */
export const HOST_BUILTINS: ReadonlySet<string> = new Set([...SDK_BUILTINS, ...BASTION_BUILTINS]);

type Builtin = (...args: unknown[]) => unknown;

const encoder = new TextEncoder();

/** A JSON number written exactly: the SDK passes an ArrayBuffer through as raw JSON text, so nanoseconds keep every digit. */
function exactNumber(value: bigint): ArrayBuffer {
  const bytes = encoder.encode(value.toString());
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const NS_PER_MS = 1_000_000n;

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(?:Z|([+-])(\d{2}):(\d{2}))$/;

/**
 * Go's time.Parse(time.RFC3339, s).UnixNano(), with OPA's int64 range check;
 * undefined where Go errors. Go's own leniencies are kept: a comma before the
 * fraction, digits past the ninth truncated, offsets up to ±24:60.
 */
export function parseRfc3339Ns(value: unknown): bigint | undefined {
  if (typeof value !== 'string') return undefined;
  const m = RFC3339.exec(value);
  if (!m) return undefined;
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4], m[5], m[6]].map(Number) as [number, number, number, number, number, number];
  if (month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59) return undefined;
  const daysInMonth = [31, isLeap(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]!;
  if (day < 1 || day > daysInMonth) return undefined;
  let offsetSeconds = 0;
  if (m[8] !== undefined) {
    const oh = Number(m[9]);
    const om = Number(m[10]);
    if (oh > 24 || om > 60) return undefined;
    offsetSeconds = (m[8] === '-' ? -1 : 1) * (oh * 3600 + om * 60);
  }
  // Date.UTC maps years 0-99 to 1900-1999; setUTCFullYear does not.
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute, second, 0);
  const fraction = BigInt((m[7] ?? '').slice(0, 9).padEnd(9, '0'));
  const ns = (BigInt(date.getTime()) - BigInt(offsetSeconds) * 1000n) * NS_PER_MS + fraction;
  return ns < INT64_MIN || ns > INT64_MAX ? undefined : ns;
}

function isLeap(year: number): boolean {
  return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
}

interface CivilTime {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
  weekday: string;
}

const WEEKDAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const zoneFormats = new Map<string, Intl.DateTimeFormat>();

function zoneFormat(zone: string): Intl.DateTimeFormat | undefined {
  let format = zoneFormats.get(zone);
  if (!format) {
    try {
      format = new Intl.DateTimeFormat('en-US', {
        timeZone: zone,
        hourCycle: 'h23',
        year: 'numeric',
        month: 'numeric',
        day: 'numeric',
        hour: 'numeric',
        minute: 'numeric',
        second: 'numeric',
        weekday: 'long',
        era: 'short',
      });
    } catch {
      return undefined; // unknown zone: Go's time.LoadLocation fails too
    }
    if (zoneFormats.size < 64) zoneFormats.set(zone, format);
  }
  return format;
}

/**
 * The civil time for OPA's `x` operand: a number of nanoseconds, or
 * [ns, zone] with zone "", "UTC", "Local" or an IANA name. The SDK hands us
 * numbers as doubles, so a timestamp may be off by a few hundred nanoseconds;
 * that can only matter within a microsecond of a second boundary.
 */
function civil(x: unknown): CivilTime | undefined {
  let ns: unknown = x;
  let zone = 'UTC';
  if (Array.isArray(x)) {
    if (x.length === 0) return undefined;
    ns = x[0];
    if (x.length > 1) {
      if (typeof x[1] !== 'string') return undefined;
      zone = x[1] === '' ? 'UTC' : x[1] === 'Local' ? Intl.DateTimeFormat().resolvedOptions().timeZone : x[1];
    }
  }
  if (typeof ns !== 'number' || !Number.isInteger(ns)) return undefined;
  const ms = Math.floor(ns / 1e6);
  const date = new Date(ms);
  if (Number.isNaN(date.getTime())) return undefined;
  if (zone === 'UTC') {
    return {
      year: date.getUTCFullYear(),
      month: date.getUTCMonth() + 1,
      day: date.getUTCDate(),
      hour: date.getUTCHours(),
      minute: date.getUTCMinutes(),
      second: date.getUTCSeconds(),
      weekday: WEEKDAYS[date.getUTCDay()]!,
    };
  }
  const format = zoneFormat(zone);
  if (!format) return undefined;
  const parts: Record<string, string> = {};
  for (const part of format.formatToParts(date)) parts[part.type] = part.value;
  const year = Number(parts.year);
  return {
    year: parts.era === 'BC' ? 1 - year : year,
    month: Number(parts.month),
    day: Number(parts.day),
    hour: Number(parts.hour),
    minute: Number(parts.minute),
    second: Number(parts.second),
    weekday: parts.weekday ?? '',
  };
}

/** OPA accepts a string, an array or a set (arrives as an array) of strings. */
function strings(value: unknown): string[] | undefined {
  if (typeof value === 'string') return [value];
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) return undefined;
  return value as string[];
}

function anyAffixMatch(search: unknown, base: unknown, suffix: boolean): boolean | undefined {
  const candidates = strings(search);
  const affixes = strings(base);
  if (!candidates || !affixes) return undefined;
  return candidates.some((s) => affixes.some((affix) => (suffix ? s.endsWith(affix) : s.startsWith(affix))));
}

/**
 * The builtins Bastion implements, for opa-wasm's `customBuiltins`.
 * `nowNs` gives the time of the current evaluation: like Go OPA's
 * time.now_ns, it is one value for every call within an evaluation.
 *
 * @example
 *   let now = 0n;
 *   const policy = opaWasm.loadPolicySync(module, memory, hostBuiltins(() => now));
 *   now = BigInt(Date.now()) * 1_000_000n; policy.evaluate(input);
 */
export function hostBuiltins(nowNs: () => bigint): Record<string, Builtin> {
  const civilField = (pick: (t: CivilTime) => unknown) => (x: unknown) => {
    const t = civil(x);
    return t === undefined ? undefined : pick(t);
  };
  return {
    'time.now_ns': () => exactNumber(nowNs()),
    'time.parse_rfc3339_ns': (value) => {
      const ns = parseRfc3339Ns(value);
      return ns === undefined ? undefined : exactNumber(ns);
    },
    'time.clock': civilField((t) => [t.hour, t.minute, t.second]),
    'time.date': civilField((t) => [t.year, t.month, t.day]),
    'time.weekday': civilField((t) => t.weekday),
    'strings.any_prefix_match': (search, base) => anyAffixMatch(search, base, false),
    'strings.any_suffix_match': (search, base) => anyAffixMatch(search, base, true),
  };
}
