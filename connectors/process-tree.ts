/**
 * Stopping a stdio upstream's processes on a short schedule.
 *
 * MCP's stdio shutdown is: close the server's stdin, then SIGTERM, then
 * SIGKILL. The SDK waits 2 s before each step, longer than an MCP client
 * gives `bastion stdio` itself to exit (also 2 s) before it signals Bastion,
 * and it signals only its direct child, while an upstream started through
 * npx or a shell runs in a grandchild. So Bastion signals the child and its
 * descendants itself: SIGTERM to whatever is still running shortly after
 * stdin was closed, SIGKILL a little later. Descendants are found by their
 * parent pids in /proc (Linux); elsewhere only the child itself is signalled.
 *
 * @example
 *   await stopProcessTree(transport.pid, { termAfterMs: 400, killAfterMs: 900 });
 */
import { readdirSync, readFileSync } from 'node:fs';

export interface StopSchedule {
  /** SIGTERM to every process of the tree still running after this long. */
  termAfterMs: number;
  /** SIGKILL to every one still running after this long. */
  killAfterMs: number;
}

const POLL_MS = 25;

/** A process as /proc shows it: its state, parent and start time (a reused pid has another), or undefined when it is gone. */
function procStat(pid: number): { state: string; ppid: number; started: string } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces: fields count from after its closing one.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0] ?? '', ppid: Number(fields[1]), started: fields[19] ?? '' };
  } catch {
    return undefined;
  }
}

const HAS_PROC = procStat(process.pid) !== undefined;

/** Start times by pid of `pid` and its descendants as they are now (only `pid` without /proc). */
function processTree(pid: number): Map<number, string> {
  const root = procStat(pid);
  if (!HAS_PROC || !root) return new Map(HAS_PROC ? [] : [[pid, '']]);
  const children = new Map<number, { pid: number; started: string }[]>();
  for (const name of readdirSync('/proc')) {
    const child = Number(name);
    const stat = Number.isInteger(child) ? procStat(child) : undefined;
    if (stat) children.set(stat.ppid, [...(children.get(stat.ppid) ?? []), { pid: child, started: stat.started }]);
  }
  const tree = new Map([[pid, root.started]]);
  const queue = [pid];
  while (queue.length > 0) {
    for (const child of children.get(queue.shift()!) ?? []) {
      if (tree.has(child.pid)) continue;
      tree.set(child.pid, child.started);
      queue.push(child.pid);
    }
  }
  return tree;
}

/** Whether the process recorded as (`pid`, `started`) still runs: not gone, not a zombie, not a reused pid. */
function running(pid: number, started: string): boolean {
  if (!HAS_PROC) {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }
  const stat = procStat(pid);
  return stat !== undefined && stat.state !== 'Z' && stat.started === started;
}

/**
 * Resolves once `pid` and every descendant seen along the way have exited, or
 * just after SIGKILL was sent to those still running. Never rejects.
 */
export async function stopProcessTree(pid: number, schedule: StopSchedule): Promise<void> {
  const started = performance.now();
  // Descendants are looked up while their parent links hold: a process whose parent died is re-parented.
  const seen = processTree(pid);
  const rootStarted = seen.get(pid);
  let termed = false;
  for (;;) {
    if (rootStarted !== undefined && running(pid, rootStarted)) for (const [member, at] of processTree(pid)) if (!seen.has(member)) seen.set(member, at);
    const alive = [...seen].filter(([member, at]) => running(member, at)).map(([member]) => member);
    if (alive.length === 0) return;
    const elapsed = performance.now() - started;
    const name: NodeJS.Signals | undefined = elapsed >= schedule.killAfterMs ? 'SIGKILL' : !termed && elapsed >= schedule.termAfterMs ? 'SIGTERM' : undefined;
    if (name) {
      termed = true;
      for (const member of alive) {
        try {
          process.kill(member, name);
        } catch {
          // Gone meanwhile, or not ours to signal.
        }
      }
      if (name === 'SIGKILL') return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}
