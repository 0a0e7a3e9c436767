/**
 * Strings as stored text, for both backends: a JavaScript string may hold
 * lone surrogates, which UTF-8 (Redis key names, SQLite TEXT) would all turn
 * into U+FFFD, so two different keys would collide. `encode` keeps a
 * well-formed string as it is and spells any other as NUL + its JSON form;
 * it is injective, and `decode` inverts it.
 *
 * @example
 *   decode(encode('lone\uD800')) === 'lone\uD800'
 */
export function encode(part: string): string {
  return part.isWellFormed() && !part.startsWith('\0') ? part : `\0${JSON.stringify(part)}`;
}

export function decode(part: string): string {
  return part.startsWith('\0') ? (JSON.parse(part.slice(1)) as string) : part;
}

/** A ttl as a whole number of milliseconds; a non-finite one is a programming error, never stored. */
export function checkTtl(ttlMs: number | undefined): number | undefined {
  if (ttlMs === undefined) return undefined;
  if (!Number.isFinite(ttlMs)) throw new RangeError(`state ttl must be a finite number of milliseconds, got ${ttlMs}`);
  return Math.ceil(ttlMs);
}

/** What one entry of a namespace under a quota weighs: the UTF-8 bytes of its key and value. */
export function entryBytes(key: string, value: string): number {
  return Buffer.byteLength(key) + Buffer.byteLength(value);
}
