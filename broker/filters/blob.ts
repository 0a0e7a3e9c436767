/**
 * The text inside an embedded resource's `blob` (base64), so the result
 * filter can scan it as the agent's client will read it, and put it back.
 *
 * Which blobs are text, exactly (the MIME type's essence, parameters and case
 * ignored; the SDK's own parser):
 *   - media, `image/*`, `audio/*`, `video/*`, `font/*`, `model/*`: never
 *     decoded, like image and audio content (but `image/svg+xml` and any other
 *     `+json`, `+xml` or `+yaml` type is text);
 *   - text-like types, `text/*`, the `+json`, `+xml`, `+yaml` suffixes and
 *     TEXT_LIKE below: decoded as UTF-8, or byte for byte as Latin-1 when the
 *     bytes are not valid UTF-8 (that finds an ASCII secret in any
 *     ASCII-compatible charset, and re-encoding keeps every other byte);
 *   - anything else, the type absent or unknown included: decoded when the
 *     bytes are valid UTF-8 with no NUL byte (text without a label), otherwise
 *     left alone as binary.
 * A blob that is not strictly base64 (after removing line breaks) is not what
 * it claims to be: it is scanned as the string it is.
 *
 * @example
 *   const inside = blobText(Buffer.from('token=AKIA…').toString('base64'), 'text/plain');
 *   // { text: 'token=AKIA…', encode: (text) => base64 of text in the same encoding }
 */
import { mediaTypeEssence } from './media-type.ts';

/** application/* types that are text without a structured-syntax suffix. */
export const TEXT_LIKE: ReadonlySet<string> = new Set([
  'application/json',
  'application/xml',
  'application/yaml',
  'application/x-yaml',
  'application/toml',
  'application/javascript',
  'application/x-javascript',
  'application/ecmascript',
  'application/sql',
  'application/graphql',
  'application/x-www-form-urlencoded',
  'application/x-sh',
  'application/x-ndjson',
  'application/jsonl',
]);

const MEDIA = /^(?:image|audio|video|font|model)\//;
const TEXT_SUFFIX = /\+(?:json|xml|yaml)$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export type BlobContent =
  /** Text to scan, and how to encode a changed text back into a blob. */
  | { kind: 'text'; text: string; encode: (text: string) => string }
  /** Binary: passed through untouched. */
  | { kind: 'binary' }
  /** Not base64: the string itself is what an agent might read. */
  | { kind: 'not_base64' };

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8(bytes: Buffer): string | undefined {
  try {
    return utf8.decode(bytes);
  } catch {
    return undefined;
  }
}

/** How an embedded resource's blob is read (see the module comment). */
export function blobText(blob: string, mimeType: string | undefined): BlobContent {
  const essence = mediaTypeEssence(mimeType);
  const textLike = essence !== undefined && (essence.startsWith('text/') || TEXT_SUFFIX.test(essence) || TEXT_LIKE.has(essence));
  if (!textLike && essence !== undefined && MEDIA.test(essence)) return { kind: 'binary' };
  const compact = blob.includes('\n') || blob.includes('\r') ? blob.replace(/\r?\n/g, '') : blob;
  if (!BASE64.test(compact)) return { kind: 'not_base64' };
  const bytes = Buffer.from(compact, 'base64');
  const text = decodeUtf8(bytes);
  if (text !== undefined && (textLike || !bytes.includes(0))) {
    return { kind: 'text', text, encode: (changed) => Buffer.from(changed, 'utf8').toString('base64') };
  }
  if (textLike) return { kind: 'text', text: bytes.toString('latin1'), encode: (changed) => Buffer.from(changed, 'latin1').toString('base64') };
  return { kind: 'binary' };
}
