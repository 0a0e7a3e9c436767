/**
 * Reads the gzip-compressed tar files OPA writes as bundles. Only what
 * `opa build` produces is accepted: regular files and directories in ustar
 * or PAX form. Links, devices, duplicate names, `..` segments and anything
 * larger than the configured limits are refused, so a hostile bundle cannot
 * make the reader (or a later signature check) see something other than
 * what was signed.
 *
 * @example
 *   const files = readTarGz(await readFile('bundle.tar.gz'));
 *   const wasm = files.get('/policy.wasm');
 */
import { gunzipSync } from 'node:zlib';

export interface TarLimits {
  /** Total size after decompression. */
  maxBytes?: number;
  maxEntries?: number;
}

const BLOCK = 512;
const decoder = new TextDecoder('utf-8', { fatal: true });

export class TarError extends Error {
  override readonly name = 'TarError';
}

function text(block: Uint8Array, offset: number, length: number): string {
  const field = block.subarray(offset, offset + length);
  const end = field.indexOf(0);
  return decoder.decode(end === -1 ? field : field.subarray(0, end));
}

function octal(block: Uint8Array, offset: number, length: number, what: string): number {
  const field = block.subarray(offset, offset + length);
  if ((field[0]! & 0x80) !== 0) throw new TarError(`${what}: base-256 numbers are not supported`);
  const digits = text(block, offset, length).trim();
  if (digits === '') return 0;
  if (!/^[0-7]+$/.test(digits)) throw new TarError(`${what}: not an octal number`);
  const value = Number.parseInt(digits, 8);
  if (!Number.isSafeInteger(value)) throw new TarError(`${what}: out of range`);
  return value;
}

function checksumOk(block: Uint8Array): boolean {
  const stored = octal(block, 148, 8, 'checksum');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  return sum === stored;
}

/** PAX extended header records: "<len> <key>=<value>\n". */
function paxRecords(data: Uint8Array): Map<string, string> {
  const records = new Map<string, string>();
  const body = decoder.decode(data);
  let at = 0;
  while (at < body.length) {
    const space = body.indexOf(' ', at);
    const length = Number(body.slice(at, space));
    if (space === -1 || !Number.isInteger(length) || length <= 0) throw new TarError('malformed PAX header');
    // The length counts bytes; OPA's names are ASCII, and a mismatch only fails closed.
    const record = body.slice(space + 1, at + length - 1);
    const eq = record.indexOf('=');
    if (eq === -1 || body[at + length - 1] !== '\n') throw new TarError('malformed PAX record');
    records.set(record.slice(0, eq), record.slice(eq + 1));
    at += length;
  }
  return records;
}

/** "/a/b" for "a/b", "./a/b" or "/a/b"; refuses "..", empty and "." segments. */
function normalize(name: string): string {
  const segments = name.replace(/^\.?\/+/, '').split('/');
  if (segments[segments.length - 1] === '') segments.pop();
  if (segments.length === 0 || segments.some((s) => s === '' || s === '.' || s === '..' || s.includes('\\') || s.includes('\0'))) {
    throw new TarError(`unsafe entry name ${JSON.stringify(name)}`);
  }
  return `/${segments.join('/')}`;
}

/**
 * Decompresses and reads a .tar.gz into a map of "/path" → bytes (regular files only).
 * Throws TarError on anything unexpected.
 */
export function readTarGz(compressed: Uint8Array, limits: TarLimits = {}): Map<string, Uint8Array> {
  const maxBytes = limits.maxBytes ?? 64 * 1024 * 1024;
  const maxEntries = limits.maxEntries ?? 10_000;
  let tar: Uint8Array;
  try {
    tar = gunzipSync(compressed, { maxOutputLength: maxBytes });
  } catch (error) {
    throw new TarError(`not a gzip file within ${maxBytes} bytes: ${(error as Error).message}`);
  }
  const files = new Map<string, Uint8Array>();
  let pax: Map<string, string> | undefined;
  let entries = 0;
  let at = 0;
  while (at + BLOCK <= tar.length) {
    const header = tar.subarray(at, at + BLOCK);
    if (header.every((byte) => byte === 0)) break; // end-of-archive marker
    if (++entries > maxEntries) throw new TarError(`more than ${maxEntries} entries`);
    if (!checksumOk(header)) throw new TarError(`entry at byte ${at}: bad header checksum`);
    const size = octal(header, 124, 12, 'size');
    const type = String.fromCharCode(header[156]!);
    const dataStart = at + BLOCK;
    const dataEnd = dataStart + size;
    if (dataEnd > tar.length) throw new TarError(`entry at byte ${at}: truncated`);
    const data = tar.subarray(dataStart, dataEnd);
    at = dataStart + Math.ceil(size / BLOCK) * BLOCK;

    if (type === 'x') {
      pax = paxRecords(data);
      continue;
    }
    if (type === 'g') continue; // global PAX header: nothing in it changes what a file is
    const magic = text(header, 257, 6);
    const prefix = magic === 'ustar' ? text(header, 345, 155) : '';
    const rawName = pax?.get('path') ?? (prefix ? `${prefix}/${text(header, 0, 100)}` : text(header, 0, 100));
    const paxSize = pax?.get('size');
    pax = undefined;
    if (paxSize !== undefined && Number(paxSize) !== size) throw new TarError(`${rawName}: PAX size is not supported`);
    if (type === '5') continue; // directory
    if (type !== '0' && type !== '\0') {
      throw new TarError(`${rawName}: entry type ${JSON.stringify(type)} is not a regular file (links and devices are refused)`);
    }
    const name = normalize(rawName);
    if (files.has(name)) throw new TarError(`${name} appears twice`);
    files.set(name, data);
  }
  return files;
}
