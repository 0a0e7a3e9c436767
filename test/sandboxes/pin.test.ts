/**
 * Plugin pinning: the hash is defined exactly, covers both files, and a
 * plugin whose bytes changed is refused with a message naming it and both
 * hashes. Symlinks and paths out of the plugin directory are refused.
 */
import { createHash } from 'node:crypto';
import { appendFile, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SandboxError } from '../../sandboxes/errors.ts';
import { hashPluginBytes, loadPinnedPlugin, pluginHash, readPlugin } from '../../sandboxes/pin.ts';
import { EXAMPLES_DIR, pluginCopy, removePluginCopies } from './helpers.ts';

const TEXT_UTILS = path.join(EXAMPLES_DIR, 'text-utils');

afterAll(removePluginCopies);

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

async function refusal(promise: Promise<unknown>): Promise<SandboxError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(SandboxError);
  return error as SandboxError;
}

describe('pluginHash', () => {
  it('is sha256 over u64be(len(manifest)) || manifest || u64be(len(code)) || code', async () => {
    const manifest = await readFile(path.join(TEXT_UTILS, 'plugin.json'));
    const code = await readFile(path.join(TEXT_UTILS, 'main.js'));
    const expected = `sha256:${createHash('sha256').update(Buffer.concat([u64(manifest.length), manifest, u64(code.length), code])).digest('hex')}`;
    expect(await pluginHash(TEXT_UTILS)).toBe(expected);
    expect(hashPluginBytes(manifest, code)).toBe(expected);
  });

  it('cannot be shifted between the two files', () => {
    expect(hashPluginBytes(Buffer.from('ab'), Buffer.from('c'))).not.toBe(hashPluginBytes(Buffer.from('a'), Buffer.from('bc')));
  });

  it('refuses to pin a plugin whose manifest is invalid', async () => {
    const copy = await pluginCopy(TEXT_UTILS);
    const file = path.join(copy.dir, 'plugin.json');
    await writeFile(file, (await readFile(file, 'utf8')).replace('"text-utils"', '"Bad Name"'));
    const error = await refusal(pluginHash(copy.dir));
    expect(error.code).toBe('SANDBOX_MANIFEST_INVALID');
    expect(error.message).toMatch(/name: lowercase letters/);
  });
});

describe('loadPinnedPlugin', () => {
  it('loads a plugin whose bytes match its pin', async () => {
    const hash = await pluginHash(TEXT_UTILS);
    const plugin = await loadPinnedPlugin(TEXT_UTILS, hash);
    expect(plugin.hash).toBe(hash);
    expect(plugin.manifest.name).toBe('text-utils');
    expect(plugin.code).toBe(await readFile(path.join(TEXT_UTILS, 'main.js'), 'utf8'));
  });

  it.each([
    ['the script', 'main.js'],
    ['the manifest (even whitespace)', 'plugin.json'],
  ])('refuses a plugin when %s changed, naming it and both hashes', async (_what, file) => {
    const copy = await pluginCopy(TEXT_UTILS);
    await appendFile(path.join(copy.dir, file), '\n');
    const now = (await readPlugin(copy.dir)).hash;
    const error = await refusal(loadPinnedPlugin(copy.dir, copy.hash));
    expect(error.code).toBe('SANDBOX_PIN_MISMATCH');
    expect(error.message).toContain('plugin text-utils');
    expect(error.message).toContain(copy.hash);
    expect(error.message).toContain(now);
    expect(now).not.toBe(copy.hash);
  });

  it('refuses a script that is a symlink', async () => {
    const copy = await pluginCopy(TEXT_UTILS);
    await rm(path.join(copy.dir, 'main.js'));
    await symlink(path.join(TEXT_UTILS, 'main.js'), path.join(copy.dir, 'main.js'));
    const error = await refusal(loadPinnedPlugin(copy.dir, copy.hash));
    expect(error.code).toBe('SANDBOX_MANIFEST_INVALID');
    expect(error.message).toMatch(/not a regular file/);
  });

  it.each(['../escape.js', '/etc/passwd', 'sub/main.js', '.hidden.js'])('refuses main %j (not a file in the plugin directory)', async (main) => {
    const copy = await pluginCopy(TEXT_UTILS);
    const file = path.join(copy.dir, 'plugin.json');
    const manifest = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    await writeFile(file, JSON.stringify({ ...manifest, main }));
    const error = await refusal(loadPinnedPlugin(copy.dir, 'sha256:whatever'));
    expect(error.code).toBe('SANDBOX_MANIFEST_INVALID');
  });

  it('refuses a script that is not UTF-8', async () => {
    const copy = await pluginCopy(TEXT_UTILS);
    await writeFile(path.join(copy.dir, 'main.js'), Buffer.from([0x74, 0xff, 0xfe]));
    const hash = (await refusal(pluginHash(copy.dir))).message;
    expect(hash).toMatch(/not valid UTF-8/);
  });
});
