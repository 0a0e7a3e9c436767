/**
 * The embedded state store (SQLite, WAL, synchronous=FULL): the shared
 * StateStore contract, expiry on an injected clock, durability across a
 * restart and across kill -9, import of the journal the store used to keep,
 * and a clear refusal of a file that is not a state database.
 */
import { readdir, readFile, writeFile, copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openEmbeddedState } from '../../broker/state/embedded.ts';
import { StateUnavailable } from '../../broker/state/store.ts';
import { spawnCollecting } from '../helpers/spawn.ts';
import { stateContract } from './contract.ts';

const ACKNOWLEDGING_WRITER = fileURLToPath(new URL('./fixtures/acknowledging-writer.ts', import.meta.url));

stateContract('embedded', () => {
  let contractDir = '';
  return {
    async open() {
      contractDir = await mkdtemp(path.join(tmpdir(), 'bastion-state-contract-'));
      return openEmbeddedState(path.join(contractDir, 'state.db'));
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
  it('entries expire with their ttl', async () => {
    let now = 1_000_000;
    const state = await openEmbeddedState(path.join(dir, 'state.db'), () => now);
    expect(await state.claim('jti', 'a', 1000)).toBe(true);
    expect(await state.claim('jti', 'a', 1000)).toBe(false);
    now += 1001;
    expect(await state.claim('jti', 'a', 1000)).toBe(true);
    await state.set('ns', 'k', 'v', 10);
    now += 11;
    expect(await state.get('ns', 'k')).toBeUndefined();
    expect(await state.entries('ns')).toEqual([]);
    await state.close();
  });

  it('survives a restart: what was acknowledged is there, expired entries are gone', async () => {
    let now = 5_000_000;
    const file = path.join(dir, 'state.db');
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
    // The expired claim is gone from the file, not only hidden.
    const db = new DatabaseSync(file, { readOnly: true });
    expect(db.prepare("SELECT count(*) AS n FROM entries WHERE ns = 'jti'").get()).toEqual({ n: 1 });
    db.close();
  });

  it('deletes expired entries while changes arrive, a batch per commit until none is left', async () => {
    let now = 1_000_000;
    const file = path.join(dir, 'state.db');
    const state = await openEmbeddedState(file, () => now);
    await Promise.all(Array.from({ length: 2500 }, (_, i) => state.claim('jti', `j${i}`, 10)));
    const rows = () => {
      const db = new DatabaseSync(file, { readOnly: true });
      try {
        return (db.prepare("SELECT count(*) AS n FROM entries WHERE ns = 'jti'").get() as { n: number }).n;
      } finally {
        db.close();
      }
    };
    expect(rows()).toBe(2500);
    now += 61_000;
    // Each set is its own commit: 1,000, then 1,000, then the last 500.
    await state.set('ns', 'a', 'v');
    expect(rows()).toBe(1500);
    await state.set('ns', 'b', 'v');
    await state.set('ns', 'c', 'v');
    expect(rows()).toBe(0);
    await state.close();
  });

  it('a write after close is refused, never lost silently', async () => {
    const state = await openEmbeddedState(path.join(dir, 'state.db'));
    await state.close();
    await expect(state.set('ns', 'k', 'v')).rejects.toBeInstanceOf(StateUnavailable);
    await expect(state.get('ns', 'k')).rejects.toBeInstanceOf(StateUnavailable);
    expect(await state.ready()).toBe(false);
  });

  it('refuses a file that is not a state database, naming it', async () => {
    const file = path.join(dir, 'state.db');
    await writeFile(file, 'this is not a database, just text that is long enough to be read as a header '.repeat(20));
    const opening = openEmbeddedState(file);
    await expect(opening).rejects.toBeInstanceOf(StateUnavailable);
    await expect(opening).rejects.toThrow(`cannot open state database ${file}`);
  });

  it('every write acknowledged before kill -9 is there after reopening', async () => {
    const file = path.join(dir, 'state.db');
    const writer = spawnCollecting(process.execPath, [ACKNOWLEDGING_WRITER, file]);
    const acked = () => [...writer.stdout().matchAll(/^ack (\d+)$/gm)].map((m) => Number(m[1]));
    try {
      // Generous bound: a loaded machine may take a while to start the child.
      expect(await writer.waitFor(() => acked().length >= 400, 60_000), writer.stderr()).toBe(true);
    } finally {
      writer.child.kill('SIGKILL');
    }
    expect(await writer.exited).toMatchObject({ signal: 'SIGKILL' });
    const acknowledged = acked();
    const state = await openEmbeddedState(file);
    try {
      const sets = new Map(await state.entries('acked'));
      for (const id of acknowledged) {
        if (id % 2 === 0) expect(sets.get(`k${id}`), `k${id}`).toBe(`value ${id} ${'x'.repeat(id % 500)}`);
        else expect(await state.claim('jti', `j${id}`, 60_000), `j${id}`).toBe(false);
      }
    } finally {
      await state.close();
    }
  });
});

describe('importing the journal the embedded store used to keep (state.jsonl)', () => {
  const journal = [
    { op: 'set', ns: 'pins', key: 'demo/echo', value: '{"hash":"sha256:1"}' },
    { op: 'set', ns: 'approvals', key: 'a1', value: 'pending' },
    { op: 'set', ns: 'approvals', key: 'a1', value: 'approved' },
    { op: 'set', ns: 'revoked', key: 'gone', value: 'x' },
    { op: 'del', ns: 'revoked', key: 'gone' },
    { op: 'set', ns: 'jti', key: 'expired', value: '1', exp: 1 },
    { op: 'set', ns: 'jti', key: 'live', value: '1', exp: 9_999_999_999_999 },
    { op: 'set', ns: 'odd', key: 'lone\uD800', value: 'v' },
    { op: 'set', ns: 'plugin:x', key: 'a', value: '"1"' },
  ]
    .map((line) => JSON.stringify(line))
    .join('\n');

  it('imports live entries on first open, drops a torn last line, and renames the journal aside', async () => {
    // A namespace under a quota that already has usage in the database (e.g. after a downgrade and upgrade).
    const before = await openEmbeddedState(path.join(dir, 'state.db'));
    expect(await before.setWithinQuota('plugin:x', 'pre', '"0"', { maxKeys: 10, maxBytes: 1000 })).toMatchObject({ stored: true, keys: 1 });
    await before.close();
    await writeFile(path.join(dir, 'state.jsonl'), `${journal}\n{"op":"set","ns":"pins","key":"torn","val`);
    const state = await openEmbeddedState(path.join(dir, 'state.db'));
    expect(await state.get('pins', 'demo/echo')).toBe('{"hash":"sha256:1"}');
    expect(await state.get('approvals', 'a1')).toBe('approved');
    expect(await state.get('revoked', 'gone')).toBeUndefined();
    expect(await state.get('pins', 'torn')).toBeUndefined();
    expect(await state.entries('jti')).toEqual([['live', '1']]);
    expect(await state.get('odd', 'lone\uD800')).toBe('v');
    // A plugin's imported entries count against its quota.
    expect(await state.setWithinQuota('plugin:x', 'b', '"2"', { maxKeys: 2, maxBytes: 1000 })).toEqual({ stored: false, exceeded: 'keys', keys: 2, bytes: 10 });
    await state.close();
    expect((await readdir(dir)).filter((name) => name.startsWith('state.jsonl'))).toEqual(['state.jsonl.imported']);
  });

  it('a journal already imported (a crash before the rename) is only renamed, never imported over newer changes', async () => {
    await writeFile(path.join(dir, 'state.jsonl'), `${journal}\n`);
    const first = await openEmbeddedState(path.join(dir, 'state.db'));
    await first.set('approvals', 'a1', 'executed');
    await first.close();
    // As if the broker died between committing the import and renaming the file.
    await copyFile(path.join(dir, 'state.jsonl.imported'), path.join(dir, 'state.jsonl'));
    const second = await openEmbeddedState(path.join(dir, 'state.db'));
    expect(await second.get('approvals', 'a1')).toBe('executed');
    await second.close();
    expect((await readdir(dir)).filter((name) => name.startsWith('state.jsonl')).sort()).toEqual(['state.jsonl.imported', expect.stringMatching(/^state\.jsonl\.imported-\d+$/)]);
    expect(await readFile(path.join(dir, 'state.jsonl.imported'), 'utf8')).toBe(`${journal}\n`);
  });
});

describe('state folder lock', () => {
  it('refuses a second broker on a folder held by a live process, and takes over a stale lock', async () => {
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
