/**
 * Plugin pinning: a plugin is the exact bytes of its manifest and its script,
 * and Bastion runs it only when those bytes hash to the value the operator
 * pinned. A changed plugin is refused until it is re-pinned.
 *
 * The hash is SHA-256 over a length-prefixed concatenation, so no two
 * different (manifest, code) pairs can produce the same input:
 *
 *   pluginHash = "sha256:" + hex(SHA-256( u64be(len(M)) || M || u64be(len(C)) || C ))
 *
 * where M is the raw bytes of `plugin.json` as stored on disk and C the raw
 * bytes of the script `main` names. The bytes that are hashed are the bytes
 * that are sent to the sandbox: the files are read once, so there is no
 * window between checking and loading.
 *
 * @example
 *   const hash = await pluginHash('sandboxes/examples/text-utils');  // `bastion plugin pin <dir>`
 *   const plugin = await loadPinnedPlugin('sandboxes/examples/text-utils', hash);
 */
import { createHash } from 'node:crypto';
import { lstat, readFile } from 'node:fs/promises';
import path from 'node:path';
import { SandboxError } from './errors.ts';
import { parseManifest, type PluginManifest } from './manifest.ts';

export const MANIFEST_FILE = 'plugin.json';
const MAX_MANIFEST_BYTES = 256 * 1024;
const MAX_CODE_BYTES = 4 * 1024 * 1024;

/** A plugin read from disk, verified against its pin. */
export interface PluginSource {
  dir: string;
  manifest: PluginManifest;
  manifestBytes: Buffer;
  code: string;
  codeBytes: Buffer;
  hash: string;
}

function u64be(n: number): Buffer {
  const buffer = Buffer.alloc(8);
  buffer.writeBigUInt64BE(BigInt(n));
  return buffer;
}

/** The pin of a (manifest, code) byte pair. */
export function hashPluginBytes(manifestBytes: Uint8Array, codeBytes: Uint8Array): string {
  const hash = createHash('sha256');
  hash.update(u64be(manifestBytes.byteLength)).update(manifestBytes);
  hash.update(u64be(codeBytes.byteLength)).update(codeBytes);
  return `sha256:${hash.digest('hex')}`;
}

async function readRegularFile(file: string, limit: number, what: string): Promise<Buffer> {
  let stats;
  try {
    stats = await lstat(file);
  } catch (error) {
    throw new SandboxError('SANDBOX_MANIFEST_INVALID', `cannot read ${what} ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  if (!stats.isFile()) throw new SandboxError('SANDBOX_MANIFEST_INVALID', `${what} ${file} is not a regular file (symlinks are refused)`);
  if (stats.size > limit) throw new SandboxError('SANDBOX_MANIFEST_INVALID', `${what} ${file} is larger than ${limit} bytes`);
  const bytes = await readFile(file);
  if (bytes.byteLength > limit) throw new SandboxError('SANDBOX_MANIFEST_INVALID', `${what} ${file} is larger than ${limit} bytes`);
  return bytes;
}

/** The script file name, read from a manifest that has not been validated yet. */
function mainOf(manifestBytes: Buffer, dir: string): string {
  let raw: unknown;
  try {
    raw = JSON.parse(manifestBytes.toString('utf8'));
  } catch (error) {
    throw new SandboxError('SANDBOX_MANIFEST_INVALID', `invalid ${path.join(dir, MANIFEST_FILE)}: not JSON (${(error as Error).message})`);
  }
  const main = (raw as { main?: unknown } | null)?.main;
  if (typeof main !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(main)) {
    throw new SandboxError('SANDBOX_MANIFEST_INVALID', `invalid ${path.join(dir, MANIFEST_FILE)}: main must be a file name in the plugin directory`);
  }
  return main;
}

function nameOf(manifestBytes: Buffer, dir: string): string {
  try {
    const name = (JSON.parse(manifestBytes.toString('utf8')) as { name?: unknown }).name;
    if (typeof name === 'string' && name.length <= 64) return name;
  } catch {
    // fall through to the directory name
  }
  return path.basename(dir);
}

async function readPluginBytes(dir: string): Promise<{ manifestBytes: Buffer; codeBytes: Buffer; main: string }> {
  const manifestBytes = await readRegularFile(path.join(dir, MANIFEST_FILE), MAX_MANIFEST_BYTES, 'manifest');
  const main = mainOf(manifestBytes, dir);
  const codeBytes = await readRegularFile(path.join(dir, main), MAX_CODE_BYTES, 'script');
  return { manifestBytes, codeBytes, main };
}

/**
 * The hash to pin for the plugin in `dir` (what `bastion plugin pin <dir>`
 * prints). The manifest is validated too, so a broken plugin cannot be pinned.
 */
export async function pluginHash(dir: string): Promise<string> {
  return (await readPlugin(dir)).hash;
}

/** Reads and validates a plugin without checking a pin (for pinning and tooling). */
export async function readPlugin(dir: string): Promise<PluginSource> {
  const { manifestBytes, codeBytes } = await readPluginBytes(dir);
  const hash = hashPluginBytes(manifestBytes, codeBytes);
  return { dir, ...decode(dir, manifestBytes, codeBytes), manifestBytes, codeBytes, hash };
}

function decode(dir: string, manifestBytes: Buffer, codeBytes: Buffer): { manifest: PluginManifest; code: string } {
  const manifest = parseManifest(JSON.parse(manifestBytes.toString('utf8')), path.join(dir, MANIFEST_FILE));
  let code: string;
  try {
    code = new TextDecoder('utf-8', { fatal: true }).decode(codeBytes);
  } catch {
    throw new SandboxError('SANDBOX_MANIFEST_INVALID', `script ${path.join(dir, manifest.main)} is not valid UTF-8`);
  }
  return { manifest, code };
}

/**
 * Reads the plugin in `dir` and returns it only if its bytes hash to
 * `expectedHash`; otherwise throws SANDBOX_PIN_MISMATCH naming the plugin and
 * both hashes. The manifest is parsed only after the pin matched.
 */
export async function loadPinnedPlugin(dir: string, expectedHash: string): Promise<PluginSource> {
  const { manifestBytes, codeBytes } = await readPluginBytes(dir);
  const hash = hashPluginBytes(manifestBytes, codeBytes);
  if (hash !== expectedHash) {
    throw new SandboxError(
      'SANDBOX_PIN_MISMATCH',
      `plugin ${nameOf(manifestBytes, dir)} (${dir}) does not match its pin: expected ${expectedHash}, found ${hash}; re-pin it after review`,
    );
  }
  return { dir, ...decode(dir, manifestBytes, codeBytes), manifestBytes, codeBytes, hash };
}
