/**
 * Summarises a V8 CPU profile (node --cpu-prof): self time by function and
 * by package, so a profile can be read without a browser.
 *
 *   node bench/lib/profile-summary.ts FILE.cpuprofile [--top 40]
 *   node bench/lib/profile-summary.ts FILE.cpuprofile --callers writeUtf8String   (who spends it)
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function packageOf(url: string): string {
  if (!url) return '(native/vm)';
  const modules = url.lastIndexOf('node_modules/');
  if (modules >= 0) {
    const rest = url.slice(modules + 'node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  if (url.startsWith('node:')) return 'node:internal';
  const repo = /\/(broker|connectors|sandboxes|bench)\/.*$/.exec(url);
  return repo ? repo[0].slice(1) : url;
}

export function summarizeProfile(profile: Profile, top = 30): string {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const byFunction = new Map<string, number>();
  const byPackage = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const { callFrame } = byId.get(id)!;
    const where = `${callFrame.functionName || '(anonymous)'}  ${packageOf(callFrame.url)}:${callFrame.lineNumber + 1}`;
    byFunction.set(where, (byFunction.get(where) ?? 0) + us);
    const pkg = packageOf(callFrame.url).split(':')[0]!;
    byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us);
  }
  const pct = (us: number) => `${((us / total) * 100).toFixed(1).padStart(5)} %`;
  const lines = [`total sampled ${(total / 1e6).toFixed(2)} s`, '', 'self time by package/file:'];
  for (const [pkg, us] of [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`${pct(us)}  ${pkg}`);
  lines.push('', 'self time by function:');
  for (const [fn, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`${pct(us)}  ${fn}`);
  return lines.join('\n');
}

/** The call stacks (callers first) that lead to self time in functions named `name`, heaviest first. */
export function callersOf(profile: Profile, name: string, top = 10, depth = 8): string {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const stacks = new Map<string, number>();
  for (const [id, us] of selfUs) {
    if (byId.get(id)!.callFrame.functionName !== name) continue;
    const frames: string[] = [];
    for (let at: number | undefined = id; at !== undefined && frames.length < depth; at = parent.get(at)) {
      const { callFrame } = byId.get(at)!;
      frames.push(`${callFrame.functionName || '(anonymous)'} ${packageOf(callFrame.url)}:${callFrame.lineNumber + 1}`);
    }
    const key = frames.join('\n    ← ');
    stacks.set(key, (stacks.get(key) ?? 0) + us);
  }
  return [...stacks].sort((a, b) => b[1] - a[1]).slice(0, top).map(([stack, us]) => `${(us / 1000).toFixed(0)} ms  ${stack}`).join('\n');
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '30' }, callers: { type: 'string' } } });
  if (!positionals[0]) {
    process.stderr.write('usage: node bench/lib/profile-summary.ts FILE.cpuprofile [--top N]\n');
    process.exit(2);
  }
  const profile = JSON.parse(await readFile(positionals[0], 'utf8')) as Profile;
  console.log(values.callers ? callersOf(profile, values.callers, Number(values.top)) : summarizeProfile(profile, Number(values.top)));
}
