/**
 * The filter stage's one entry point: what the pipeline does to a tool's
 * result before the agent sees it.
 *
 * Every string an agent would receive is scanned: text content, embedded
 * resource text and URIs, resource-link names and descriptions, every string
 * in `structuredContent` and `_meta`, and any other member the upstream
 * sent. An embedded resource's `blob` is scanned as the text inside it when
 * it holds text (decoded from base64, and encoded back when the filter
 * changed it; blob.ts says exactly which blobs). Binary payloads are not:
 * image and audio `data`, binary blobs and `icons` pass through untouched.
 * For each scanned string, in this order:
 *   1. hidden Unicode is flagged (with what tag characters spell);
 *   2. when `strip` is on, hidden characters are removed, before redaction,
 *      so a secret split by zero-width characters is still found;
 *   3. secrets (and personal data when asked) are redacted;
 *   4. the redacted text is scanned for injection phrases.
 * Then, when anything was flagged and `annotate` is on, a warning text item is
 * put first and `_meta['bastion/flags']` lists kinds and places; when `wrap`
 * is on, every text item is wrapped in untrusted-content delimiters. An
 * upstream's own `_meta['bastion/…']` keys are dropped: only Bastion speaks
 * for Bastion. The input is never mutated, and the report never holds a
 * secret: flag details are themselves redacted for every secret kind.
 *
 * Policy obligations (`decision.obligations.redact`), each entry one of:
 *   "<kind>"                         e.g. "email"
 *   "result.content[*].text:<kind>"  e.g. "result.content[*].text:secrets"
 * where <kind> is a built-in kind (SECRET_KINDS, PII_KINDS), a configured
 * extra-pattern kind, or a group: "secrets" (every secret kind) or "pii"
 * (every personal-data kind). A named kind is applied even if configuration
 * turned it off. The selector is accepted as the policy's way of saying
 * "what the agent reads"; the filter applies the kind to every scanned string
 * of the result, which is never less than asked. Anything else (another
 * selector, an unknown kind, a malformed entry) throws ObligationUnsupported:
 * the pipeline fails closed rather than return an unredacted result.
 *
 * @example
 *   const filter = createResultFilter({ redaction: { kinds: { email: true } } });
 *   const { result, report } = filter.filter(upstreamResult, { redact: ['result.content[*].text:secrets'], max_result_bytes: 65536 });
 *   // report = { redactions: { aws_access_key: 1 }, flags: [], bytes: 123 }
 */
import type { CallToolResult } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { canonicalJson } from '../audit/chain.ts';
import { ObligationUnsupported, ResultTooLarge } from './errors.ts';
import { blobText } from './blob.ts';
import { createInjectionScanner, warningText, wrapUntrusted, type InjectionFlag } from './injection.ts';
import {
  BUILTIN_KINDS,
  createSecretScanner,
  DEFAULT_MAX_SCAN_CHARS,
  ExtraPatternSchema,
  KIND_GROUPS,
  SECRET_KINDS,
  type SecretScanner,
} from './secrets.ts';
import { pointer, visible } from './text.ts';

export { ObligationUnsupported, ResultTooLarge } from './errors.ts';

/** The only selector an obligation may carry. */
export const REDACT_SELECTOR = 'result.content[*].text';

const MAX_DEPTH = 64;

/** Members passed through unscanned: binary payloads, and fields that name a format rather than carry text. */
const ITEM_RAW: Readonly<Record<string, ReadonlySet<string>>> = {
  image: new Set(['type', 'data', 'mimeType', 'icons']),
  audio: new Set(['type', 'data', 'mimeType', 'icons']),
};
const DEFAULT_RAW: ReadonlySet<string> = new Set(['type', 'mimeType', 'icons']);
const RESOURCE_RAW: ReadonlySet<string> = new Set(['mimeType']);
const TOP_RAW: ReadonlySet<string> = new Set(['isError']);
const NONE: ReadonlySet<string> = new Set();

function unique<T>(values: readonly T[]): boolean {
  return new Set(values).size === values.length;
}

/**
 * How results are filtered. Every field is optional; the defaults redact
 * every secret kind (not personal data), flag injection, annotate flagged
 * results and strip hidden Unicode.
 *
 * @example
 *   ResultFilterConfigSchema.parse({});
 *   // { redaction: { enabled: true, kinds: {}, extra_patterns: [] },
 *   //   injection: { enabled: true, actions: ['annotate', 'strip'], phrases: true, hidden_unicode: true },
 *   //   max_scan_chars: 4194304, max_total_scan_chars: 16777216, max_flags: 100 }
 */
export const ResultFilterConfigSchema = z.strictObject({
  redaction: z
    .strictObject({
      /** false: nothing is redacted unless a policy obligation asks. */
      enabled: z.boolean().default(true),
      /** Per built-in kind on/off. Unlisted: secret kinds on, personal-data kinds off. */
      kinds: z.partialRecord(z.enum(BUILTIN_KINDS), z.boolean()).default({}),
      /** Operator patterns, `{ kind, pattern, ignore_case?, enabled? }` (see ExtraPatternSchema). */
      extra_patterns: z
        .array(ExtraPatternSchema)
        .max(64)
        .refine((extras) => unique(extras.map((extra) => extra.kind)), 'extra pattern kinds must be unique')
        .default([]),
    })
    .prefault({}),
  injection: z
    .strictObject({
      /** false: no flags, no annotation, no wrapping, no stripping. */
      enabled: z.boolean().default(true),
      /** annotate: warning item + _meta['bastion/flags']; wrap: delimit every text item; strip: remove hidden Unicode. */
      actions: z
        .array(z.enum(['annotate', 'wrap', 'strip']))
        .max(3)
        .refine(unique, 'actions must be unique')
        .default(['annotate', 'strip']),
      phrases: z.boolean().default(true),
      hidden_unicode: z.boolean().default(true),
    })
    .prefault({}),
  /** Longest single string scanned, in UTF-16 code units; a longer one refuses the result. */
  max_scan_chars: z.number().int().min(1024).max(64 * 1024 * 1024).default(DEFAULT_MAX_SCAN_CHARS),
  /** Most characters scanned across one result. */
  max_total_scan_chars: z.number().int().min(1024).max(256 * 1024 * 1024).default(16 * 1024 * 1024),
  /** Most flags reported per result; a `flags_truncated` flag says there were more. */
  max_flags: z.number().int().min(1).max(10_000).default(100),
});

export type ResultFilterConfig = z.infer<typeof ResultFilterConfigSchema>;
export type ResultFilterConfigInput = z.input<typeof ResultFilterConfigSchema>;

/** The part of a policy decision the filter enforces. */
export interface FilterObligations {
  redact: string[];
  max_result_bytes: number;
}

export interface FilterFlag {
  kind: string;
  detail: string;
  /** JSON pointer into the filtered result as delivered (after any warning item was inserted). */
  where: string;
  /** UTF-16 offset: into the original string for hidden Unicode, into the delivered string for phrases. */
  index: number;
}

export interface FilterReport {
  /** Redactions made, by kind. */
  redactions: Record<string, number>;
  flags: FilterFlag[];
  /** Size of the filtered result: its RFC 8785 canonical JSON, in bytes. */
  bytes: number;
}

export interface ResultFilter {
  /**
   * Filters one result. Throws ObligationUnsupported for an obligation it
   * cannot honour and ResultTooLarge when the filtered result is over
   * `max_result_bytes` or something in it is over a scan bound.
   */
  filter(result: CallToolResult, obligations: FilterObligations): { result: CallToolResult; report: FilterReport };
  /**
   * The kinds a call's obligations turn on; throws ObligationUnsupported
   * like `filter`. Lets the pipeline refuse a call before the tool runs.
   */
  checkObligations(obligations: FilterObligations): ReadonlySet<string>;
  /** Every kind an obligation may name (built-in, extra, and the groups). */
  readonly kinds: ReadonlySet<string>;
}

type Json = unknown;

/**
 * Builds the filter: configuration is validated and every pattern compiled
 * here, once. Throws a ZodError for invalid configuration.
 *
 * @example
 *   const filter = createResultFilter();
 *   filter.filter({ content: [{ type: 'text', text: 'token ghp_…' }] }, { redact: [], max_result_bytes: 1 << 20 });
 */
export function createResultFilter(config: ResultFilterConfigInput = {}): ResultFilter {
  const options = ResultFilterConfigSchema.parse(config);
  const secrets: SecretScanner = createSecretScanner({
    extra: options.redaction.extra_patterns,
    maxScanChars: options.max_scan_chars,
  });
  const injectionOn = options.injection.enabled;
  const actions = new Set(injectionOn ? options.injection.actions : []);
  const injection = createInjectionScanner({
    phrases: options.injection.phrases,
    hiddenUnicode: options.injection.hidden_unicode,
  });

  const baseKinds = new Set<string>();
  if (options.redaction.enabled) {
    for (const kind of BUILTIN_KINDS) {
      const on = options.redaction.kinds[kind] ?? (SECRET_KINDS as readonly string[]).includes(kind);
      if (on) baseKinds.add(kind);
    }
    for (const extra of options.redaction.extra_patterns) if (extra.enabled) baseKinds.add(extra.kind);
  }
  const nameable = new Set<string>([...secrets.kinds, ...Object.keys(KIND_GROUPS)]);

  const checkObligations = (obligations: FilterObligations): ReadonlySet<string> => {
    if (obligations === null || typeof obligations !== 'object') {
      throw new ObligationUnsupported('', 'obligations must be an object');
    }
    const limit: unknown = obligations.max_result_bytes;
    if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 0) {
      throw new ObligationUnsupported('max_result_bytes', 'max_result_bytes must be a non-negative integer');
    }
    if (!Array.isArray(obligations.redact)) throw new ObligationUnsupported('redact', 'redact must be an array of strings');
    if (obligations.redact.length === 0) return baseKinds; // the common case: nothing beyond the configured kinds
    const kinds = new Set(baseKinds);
    for (const entry of obligations.redact as unknown[]) {
      for (const kind of kindsOfObligation(entry, nameable)) kinds.add(kind);
    }
    return kinds;
  };

  const baseDetailKinds: ReadonlySet<string> = new Set<string>([...SECRET_KINDS, ...baseKinds]);
  const detailKinds = (active: ReadonlySet<string>): ReadonlySet<string> =>
    active === baseKinds ? baseDetailKinds : new Set<string>([...SECRET_KINDS, ...active]);

  return {
    kinds: nameable,
    checkObligations,
    filter(result, obligations) {
      const kinds = checkObligations(obligations);
      const safeKinds = detailKinds(kinds);
      const scanning = kinds.size > 0 || injectionOn;
      const redactions: Record<string, number> = {};
      const flags: { kind: string; detail: string; path: (string | number)[]; index: number }[] = [];
      let flagsTruncated = false;
      let scanned = 0;

      const safeDetail = (detail: string): string => {
        const out = secrets.redact(detail, safeKinds);
        return out.status === 'ok' ? out.text : '[detail withheld]';
      };

      const addFlags = (found: InjectionFlag[], path: (string | number)[]): void => {
        for (const flag of found) {
          if (flag.kind === 'flags_truncated') {
            flagsTruncated = true;
            continue;
          }
          flags.push({ kind: flag.kind, detail: safeDetail(flag.detail), path, index: flag.index });
        }
      };

      const remainingFlags = (): number => Math.max(0, options.max_flags - flags.length);

      /** Steps 1–4 of the module comment, for one string. */
      const scanString = (text: string, path: (string | number)[], key: string | undefined): string => {
        if (!scanning) return text;
        if (text.length > options.max_scan_chars) {
          throw new ResultTooLarge(
            'item_chars',
            text.length,
            options.max_scan_chars,
            `a string of ${text.length} characters at ${pointer(path)} is over the ${options.max_scan_chars}-character scan limit, so it cannot be delivered`,
          );
        }
        scanned += text.length;
        if (scanned > options.max_total_scan_chars) {
          throw new ResultTooLarge(
            'total_scan_chars',
            scanned,
            options.max_total_scan_chars,
            `the result has more than ${options.max_total_scan_chars} characters of text to scan`,
          );
        }
        let out = text;
        if (injectionOn) addFlags(injection.scanHidden(out, remainingFlags()), path);
        if (actions.has('strip')) out = injection.sanitize(out).text;
        if (kinds.size > 0) {
          const redacted = secrets.redact(out, kinds, key === undefined ? undefined : { key });
          // Sanitizing only shortens a string, so it is still within the scan limit.
          if (redacted.status !== 'ok') throw new Error('unreachable: redaction input over the scan limit');
          out = redacted.text;
          for (const [kind, count] of Object.entries(redacted.counts)) redactions[kind] = (redactions[kind] ?? 0) + count;
        }
        if (injectionOn) addFlags(injection.scanPhrases(out, remainingFlags()), path);
        return out;
      };

      /** Copies a JSON value, scanning its strings unless `raw`; `key` is the nearest property name. */
      const walk = (value: Json, path: (string | number)[], key: string | undefined, depth: number, raw: boolean): Json => {
        if (typeof value === 'string') return raw ? value : scanString(value, path, key);
        if (value === null || typeof value !== 'object') return value;
        if (depth >= MAX_DEPTH) {
          throw new ResultTooLarge('depth', depth, MAX_DEPTH, `the result is nested deeper than ${MAX_DEPTH} levels at ${pointer(path)}`);
        }
        if (Array.isArray(value)) return value.map((item, index) => walk(item, [...path, index], key, depth + 1, raw));
        return Object.fromEntries(
          Object.entries(value).map(([k, v]) => [k, walk(v, [...path, k], k, depth + 1, raw)]),
        );
      };

      /** Copies an object, leaving the members named in `rawKeys` unscanned. */
      const walkObject = (
        value: Record<string, Json>,
        path: (string | number)[],
        depth: number,
        rawKeys: ReadonlySet<string>,
        special: Record<string, (child: Json, childPath: (string | number)[]) => Json> = {},
      ): Record<string, Json> =>
        Object.fromEntries(
          Object.entries(value).map(([k, v]) => {
            const childPath = [...path, k];
            const handler = Object.hasOwn(special, k) ? special[k] : undefined;
            if (handler) return [k, handler(v, childPath)];
            return [k, walk(v, childPath, k, depth + 1, rawKeys.has(k))];
          }),
        );

      /** An embedded resource's blob: the text inside it scanned (and encoded back if changed), a binary one untouched. */
      const filterBlob = (blob: Json, mimeType: Json, path: (string | number)[]): Json => {
        if (typeof blob !== 'string') return walk(blob, path, 'blob', 3, false);
        const inside = blobText(blob, typeof mimeType === 'string' ? mimeType : undefined);
        if (inside.kind === 'binary') return blob;
        if (inside.kind === 'not_base64') return scanString(blob, path, 'blob');
        const scanned = scanString(inside.text, path, undefined);
        return scanned === inside.text ? blob : inside.encode(scanned);
      };

      const filterItem = (item: Json, index: number): Json => {
        const path = ['content', index];
        if (item === null || typeof item !== 'object' || Array.isArray(item)) return walk(item, path, undefined, 1, false);
        const record = item as Record<string, Json>;
        const type = typeof record.type === 'string' ? record.type : '';
        if (type === 'resource') {
          return walkObject(record, path, 1, DEFAULT_RAW, {
            resource: (child, childPath) =>
              child !== null && typeof child === 'object' && !Array.isArray(child)
                ? walkObject(child as Record<string, Json>, childPath, 2, RESOURCE_RAW, {
                    blob: (blob, blobPath) => filterBlob(blob, (child as Record<string, Json>).mimeType, blobPath),
                  })
                : walk(child, childPath, 'resource', 2, false),
          });
        }
        return walkObject(record, path, 1, Object.hasOwn(ITEM_RAW, type) ? ITEM_RAW[type]! : DEFAULT_RAW);
      };

      const source = result as Record<string, Json>;
      const out: Record<string, Json> = walkObject(source, [], 0, TOP_RAW, {
        content: (child) => (Array.isArray(child) ? child.map(filterItem) : walk(child, ['content'], 'content', 1, false)),
        // An upstream's own "bastion/…" keys are dropped unread: only Bastion speaks for Bastion.
        _meta: (child, childPath) =>
          child !== null && typeof child === 'object' && !Array.isArray(child)
            ? walkObject(
                Object.fromEntries(Object.entries(child).filter(([k]) => !k.startsWith('bastion/'))),
                childPath,
                1,
                NONE,
              )
            : walk(child, childPath, '_meta', 1, false),
      });

      if (flagsTruncated || flags.length > options.max_flags) {
        flags.length = Math.min(flags.length, options.max_flags);
        flags.push({ kind: 'flags_truncated', detail: `more than ${options.max_flags} findings; the rest are not listed`, path: [], index: 0 });
      }

      if (actions.has('wrap') && Array.isArray(out.content)) {
        out.content = out.content.map((item: Json) => {
          const record = item as Record<string, Json> | null;
          return record && typeof record === 'object' && record.type === 'text' && typeof record.text === 'string'
            ? { ...record, text: wrapUntrusted(record.text) }
            : item;
        });
      }
      const annotate = actions.has('annotate') && flags.length > 0;
      const reported: FilterFlag[] = flags.map(({ kind, detail, path, index }) => ({
        kind,
        detail,
        // The warning goes first, so every content item moves down one place.
        where: pointer(annotate && path[0] === 'content' && typeof path[1] === 'number' ? ['content', path[1] + 1, ...path.slice(2)] : path),
        index,
      }));
      if (annotate) {
        const existing = Array.isArray(out.content) ? out.content : [];
        out.content = [{ type: 'text', text: warningText(flags.map((flag) => flag.kind)) }, ...existing];
        const meta = out._meta !== null && typeof out._meta === 'object' && !Array.isArray(out._meta) ? (out._meta as Record<string, Json>) : {};
        // Kinds and places only: the details may spell out the injected text, which must not ride along to the agent.
        out._meta = { ...meta, 'bastion/flags': reported.map(({ kind, where, index }) => ({ kind, where, index })) };
      }

      const filtered = out as CallToolResult;
      const bytes = Buffer.byteLength(canonicalJson(filtered));
      if (bytes > obligations.max_result_bytes) {
        throw new ResultTooLarge(
          'result_bytes',
          bytes,
          obligations.max_result_bytes,
          `filtered result of ${bytes} bytes exceeds the ${obligations.max_result_bytes}-byte cap`,
        );
      }
      return { result: filtered, report: { redactions, flags: reported, bytes } };
    },
  };
}

/** The kinds one obligation entry names; throws ObligationUnsupported for anything else. */
function kindsOfObligation(entry: unknown, nameable: ReadonlySet<string>): readonly string[] {
  if (typeof entry !== 'string') throw new ObligationUnsupported(visible(String(entry), 100), 'a redact obligation must be a string');
  const shown = visible(entry, 100);
  const colon = entry.indexOf(':');
  const selector = colon >= 0 ? entry.slice(0, colon) : undefined;
  const kind = colon >= 0 ? entry.slice(colon + 1) : entry;
  if (selector !== undefined && selector !== REDACT_SELECTOR) {
    throw new ObligationUnsupported(shown, `redact obligation "${shown}": unsupported selector; accepted forms are "<kind>" and "${REDACT_SELECTOR}:<kind>"`);
  }
  if (!nameable.has(kind)) {
    throw new ObligationUnsupported(
      shown,
      `redact obligation "${shown}": unknown kind; known kinds are ${[...nameable].sort().join(', ')}`,
    );
  }
  return Object.hasOwn(KIND_GROUPS, kind) ? KIND_GROUPS[kind as keyof typeof KIND_GROUPS] : [kind];
}
