/**
 * stopProcessTree: an upstream started through a wrapper (a shell here, npx
 * in practice) runs in a grandchild; stopping the child must stop it too,
 * also when it ignores stdin closing and SIGTERM.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { stopProcessTree } from '../../connectors/process-tree.ts';
import { eventually } from '../helpers/approver.ts';

const running = (pid: number) => existsSync(`/proc/${pid}`) && !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));

describe('stopProcessTree', () => {
  it('stops a wrapper and the stubborn grandchild it started', async () => {
    // The grandchild prints its pid, then ignores SIGTERM and keeps running.
    const stubborn = `process.on('SIGTERM', () => {}); console.log(process.pid); setInterval(() => {}, 1000);`;
    const wrapper = spawn('sh', ['-c', `"${process.execPath}" -e "${stubborn}"; echo done`], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    wrapper.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    const grandchild = await eventually(async () => (/^\d+\n/.test(out) ? Number(out.trim()) : undefined), 'the grandchild pid');
    expect(grandchild).not.toBe(wrapper.pid);
    expect(running(grandchild)).toBe(true);

    wrapper.stdin.end();
    await stopProcessTree(wrapper.pid!, { termAfterMs: 100, killAfterMs: 300 });
    await eventually(async () => (!running(grandchild) && !running(wrapper.pid!) ? true : undefined), 'the tree to be gone');
  });

  it('does not wait out its schedule for a process that is already gone', async () => {
    const child = spawn(process.execPath, ['-e', '0']);
    await new Promise((resolve) => child.once('exit', resolve));
    // A schedule far beyond the test's timeout: waiting it out would fail the test.
    await expect(stopProcessTree(child.pid!, { termAfterMs: 600_000, killAfterMs: 1_200_000 })).resolves.toBeUndefined();
  });
});
