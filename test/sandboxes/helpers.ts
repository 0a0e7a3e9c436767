/**
 * Shared by the sandbox suites: plugin fixtures, a quiet logger, and small
 * accessors for sandbox results. Everything runs for real: real isolates in
 * real sandbox processes, no mocks.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { pino } from 'pino';
import type { Logger } from '../../broker/log.ts';
import { pluginHash } from '../../sandboxes/pin.ts';

export const HOSTILE_DIR = fileURLToPath(new URL('./fixtures/hostile/', import.meta.url));
export const EXAMPLES_DIR = fileURLToPath(new URL('../../sandboxes/examples/', import.meta.url));

export function quietLog(): Logger {
  return pino({ level: 'silent' });
}

/** A logger whose lines land in `lines` (parsed). */
export function capturingLog(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines };
}

const copies: string[] = [];

/** Removes the directories pluginCopy made (call from afterAll). */
export async function removePluginCopies(): Promise<void> {
  await Promise.all(copies.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
}

/**
 * Copies a plugin to a temporary directory, lets `patch` edit its manifest
 * (e.g. to allow-list a test server's ephemeral port), and pins the copy.
 */
export async function pluginCopy(source: string, patch: (manifest: Record<string, any>) => void = () => undefined): Promise<{ dir: string; hash: string }> {
  const parent = await mkdtemp(path.join(os.tmpdir(), 'bastion-plugin-'));
  copies.push(parent);
  const dir = path.join(parent, path.basename(source));
  await cp(source, dir, { recursive: true });
  const file = path.join(dir, 'plugin.json');
  const manifest = JSON.parse(await readFile(file, 'utf8')) as Record<string, any>;
  patch(manifest);
  await writeFile(file, JSON.stringify(manifest, null, 2));
  return { dir, hash: await pluginHash(dir) };
}

export function sandboxCode(result: CallToolResult): string | undefined {
  return (result._meta?.['bastion/sandbox'] as { code?: string } | undefined)?.code;
}

export function textOf(result: CallToolResult): string {
  const first = result.content[0];
  return first?.type === 'text' ? first.text : '';
}

/** The JSON value a successful call returned. */
export function valueOf(result: CallToolResult): unknown {
  if (result.isError) throw new Error(`call failed: ${textOf(result)}`);
  return JSON.parse(textOf(result));
}
