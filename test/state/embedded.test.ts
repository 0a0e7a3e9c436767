/**
 * The embedded state store: atomic claims, expiry, durability across a
 * restart, and a torn journal tail after a crash.
 */
import { appendFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openEmbeddedState } from '../../broker/state/embedded.ts';
import { stateContract } from './contract.ts';

stateContract('embedded', () => {
  let contractDir = '';
  return {
    async open() {
      contractDir = await mkdtemp(path.join(tmpdir(), 'bastion-state-contract-'));
      return openEmbeddedState(path.join(contractDir, 'state.jsonl'));
    },
    cleanup: () => rm(contractDir, { recursive: true, force: true }),
  };
});

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-state-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('embedded state', () => {
  it('claim succeeds exactly once among concurrent callers', async () => {
    const state = await openEmbeddedState(path.join(dir, 'state.jsonl'));
    const results = await Promise.all(Array.from({ length: 100 }, () => state.claim('jti', 'same', 60_000)));
    expect(results.filter(Boolean)).toHaveLength(1);
    await state.close();
  });

  it('makes a write durable that arrives while the journal is being compacted (it used to wait forever)', async () => {
    const state = await openEmbeddedState(path.join(dir, 'state.jsonl'));
    // One burst past the compaction threshold (50,000 journal lines): one flush, then the compaction.
    await Promise.all(Array.from({ length: 50_001 }, (_, i) => state.set('bulk', `k${i}`, 'v')));
    // These arrive while that flush compacts the journal.
    const late = Promise.all(Array.from({ length: 10 }, (_, i) => state.set('late', `k${i}`, 'v')));
    let timer: NodeJS.Timeout | undefined;
    const stuck = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('writes made during a compaction never settled')), 20_000)));
    await Promise.race([late, stuck]).finally(() => clearTimeout(timer));
    await state.close();
    const reopened = await openEmbeddedState(path.join(dir, 'state.jsonl'));
    expect(await reopened.get('late', 'k9')).toBe('v');
    expect(await reopened.get('bulk', 'k50000')).toBe('v');
    await reopened.close();
  });

  it('entries expire with their ttl', async () => {
    let now = 1_000_000;
    const state = await openEmbeddedState(path.join(dir, 'state.jsonl'), () => now);
    expect(await state.claim('jti', 'a', 1000)).toBe(true);
    expect(await state.claim('jti', 'a', 1000)).toBe(false);
    now += 1001;
    expect(await state.claim('jti', 'a', 1000)).toBe(true);
    await state.set('ns', 'k', 'v', 10);
    now += 11;
    expect(await state.get('ns', 'k')).toBeUndefined();
    await state.close();
  });

  it('survives a restart: what was acknowledged is there, expired entries are compacted away', async () => {
    let now = 5_000_000;
    const file = path.join(dir, 'state.jsonl');
    const first = await openEmbeddedState(file, () => now);
    await first.set('revoked', 'sub:agent:x', '{"sub":"agent:x"}');
    await first.claim('jti', 'short', 10);
    await first.set('approvals', 'a1', 'pending');
    expect(await first.compareAndSet('approvals', 'a1', 'pending', 'approved')).toBe(true);
    expect(await first.compareAndSet('approvals', 'a1', 'pending', 'denied')).toBe(false);
    expect(await first.delete('approvals', 'missing')).toBe(false);
    await first.close();
    now += 100;
    const second = await openEmbeddedState(file, () => now);
    expect(await second.get('revoked', 'sub:agent:x')).toBe('{"sub":"agent:x"}');
    expect(await second.get('approvals', 'a1')).toBe('approved');
    expect(await second.claim('jti', 'short', 10)).toBe(true);
    expect(await second.entries('revoked')).toEqual([['sub:agent:x', '{"sub":"agent:x"}']]);
    await second.close();
  });

  it('drops a torn last line left by a crash mid-append and keeps the rest', async () => {
    const file = path.join(dir, 'state.jsonl');
    const first = await openEmbeddedState(file);
    await first.set('ns', 'kept', '1');
    await first.close();
    await appendFile(file, '{"op":"set","ns":"ns","key":"torn","val');
    const second = await openEmbeddedState(file);
    expect(await second.get('ns', 'kept')).toBe('1');
    expect(await second.get('ns', 'torn')).toBeUndefined();
    await second.set('ns', 'after', '2');
    await second.close();
    const third = await openEmbeddedState(file);
    expect(await third.get('ns', 'after')).toBe('2');
    await third.close();
  });
});

describe('state folder lock', () => {
  it('refuses a second broker on a folder held by a live process, and takes over a stale lock', async () => {
    const { writeFile } = await import('node:fs/promises');
    const { spawnSync } = await import('node:child_process');
    const { lockStateDir } = await import('../../broker/state/lock.ts');
    await writeFile(path.join(dir, 'broker.lock'), String(process.ppid));
    await expect(lockStateDir(dir)).rejects.toThrow(`in use by broker process ${process.ppid}`);
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
    await writeFile(path.join(dir, 'broker.lock'), dead);
    const release = await lockStateDir(dir);
    await expect(lockStateDir(path.join(dir))).resolves.toBeTypeOf('function'); // same process re-entering is not a second broker
    await release();
  });
});
