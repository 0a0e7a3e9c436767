/**
 * One broker per state folder. The audit chain and the state journal are
 * appended by exactly one process; a second broker on the same folder would
 * interleave writes and break the chain, so it is refused at start-up.
 * (Several replicas share state through Redis, each with its own folder.)
 *
 * @example
 *   const release = await lockStateDir('.bastion');  // throws if another live broker holds it
 */
import { mkdir, open, readFile, unlink } from 'node:fs/promises';
import path from 'node:path';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function lockStateDir(dir: string): Promise<() => Promise<void>> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, 'broker.lock');
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(file, 'wx', 0o600);
      await handle.writeFile(String(process.pid));
      await handle.close();
      return async () => {
        await unlink(file).catch(() => undefined);
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const holder = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && alive(holder)) {
        throw new Error(`state folder ${dir} is in use by broker process ${holder}; run one broker per state folder (replicas share state through Redis)`);
      }
      // A lock left by a process that died: take it over.
      await unlink(file).catch(() => undefined);
    }
  }
  throw new Error(`could not lock state folder ${dir}`);
}
