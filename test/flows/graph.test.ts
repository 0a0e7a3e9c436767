/**
 * `bastion flows graph` on a real deployment: the workspace upstreams
 * started as the broker would start them, the real compiled policy with
 * data, grants from a file. Each toxic combination is answered by the
 * policy; switching the flow rules off in data opens them, and the command
 * says so (exit 1). The HTML report is self-contained.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { flowsGraphCommand } from '../../broker/flows/cli.ts';
import type { FlowGraph } from '../../broker/flows/graph.ts';
import { workspaceConnectors, workspacePolicyData } from '../../broker/redteam/workspace.ts';

let dir: string;

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await flowsGraphCommand(argv, (t) => void (out += t), (t) => void (err += t));
  return { code, out, err };
}

async function deployment(name: string, flowData: Record<string, unknown> = {}): Promise<string> {
  const dataFile = path.join(dir, `${name}-data.json`);
  await writeFile(dataFile, JSON.stringify(workspacePolicyData(flowData)));
  const connectors = workspaceConnectors({ worldFile: path.join(dir, 'world.json'), callLog: path.join(dir, 'calls.jsonl'), suites: ['mail', 'files', 'payments', 'web'] });
  // A tool nobody labelled: no config entry, and the fixture gives no openWorld/destructive hint for it.
  (connectors[1]!.tools as Record<string, unknown>) = Object.fromEntries(Object.entries(connectors[1]!.tools as Record<string, unknown>).filter(([tool]) => tool !== 'write_file'));
  const config = path.join(dir, `${name}.json`);
  await writeFile(config, JSON.stringify({ state_dir: path.join(dir, `${name}-state`), policy: { data: dataFile }, connectors }));
  return config;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-flow-graph-'));
  await writeFile(path.join(dir, 'world.json'), '{}');
  await writeFile(
    path.join(dir, 'grants.yaml'),
    ['- name: support-bot', '  cap: [{ tool: "mail__*" }, { tool: "files__read_file" }]', '- name: researcher', '  cap: [{ tool: "web__*" }]', '- name: reader', '  cap: [{ tool: "files__read_file" }]'].join('\n'),
  );
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('bastion flows graph', () => {
  it('lists what each grant reaches and what the policy does about every toxic combination', async () => {
    const json = path.join(dir, 'graph.json');
    const report = path.join(dir, 'graph.html');
    const { code, out, err } = await run(['--config', await deployment('guarded'), '--grants', path.join(dir, 'grants.yaml'), '--json', json, '--report', report]);
    expect(code, err).toBe(0);
    const graph = JSON.parse(await readFile(json, 'utf8')) as FlowGraph;
    const grant = (name: string) => graph.grants.find((g) => g.name === name)!;
    expect(grant('support-bot').reaches.sort()).toEqual(['files__read_file', 'mail__list_inbox', 'mail__read_email', 'mail__search_emails', 'mail__send_email']);
    expect(grant('reader').combinations).toEqual([]);
    const trifecta = grant('support-bot').combinations.find((c) => c.kind === 'lethal_trifecta' && c.untrusted === 'mail__read_email');
    expect(trifecta).toMatchObject({ sink: 'mail__send_email', does: ['external'], outcome: 'approval', quorum: 2, why: 'flow rules: untrusted_sink, trifecta' });
    // A fetched page can name the next URL: the fetcher is its own sink.
    expect(grant('researcher').combinations).toContainEqual(expect.objectContaining({ untrusted: 'web__fetch', sink: 'web__fetch', outcome: 'approval' }));
    expect(graph.unlabeled).toEqual(['files__write_file']);
    expect(out).toContain('FINDING: nothing labels files__write_file');
    expect(out).toMatch(/Grant support-bot: reaches 5 tool\(s\)\n {2}lethal trifecta \(untrusted \+ private → outside\): 3 path\(s\), 0 refused, 3 need approval, 0 allowed/);
    const html = await readFile(report, 'utf8');
    expect(html).not.toMatch(/<script|\son[a-z]+=|\s(?:src|href)=/i);
    expect(html).toContain('<svg id="flow-graph"');
    expect((html.match(/class="tool"/g) ?? []).length).toBe(graph.tools.length);
  });

  it('shows the combinations a policy leaves open, and exits 1', async () => {
    const off = { enabled: false };
    const config = await deployment('open', { rules: { untrusted_sink: off, trifecta: off, tainted_argument: off } });
    const { code, out } = await run(['--config', config, '--grants', path.join(dir, 'grants.yaml')]);
    expect(code).toBe(1);
    expect(out).toContain('OPEN mail__read_email → mail__send_email: allowed (no flow rule fired)');
  });

  it('refuses a malformed grants file with the field named', async () => {
    await writeFile(path.join(dir, 'bad.yaml'), '- name: x\n  cap: [{ tool: "a", args: { n: {} } }]\n');
    const { code, err } = await run(['--config', await deployment('bad'), '--grants', path.join(dir, 'bad.yaml'), '--offline']);
    expect(code).toBe(2);
    expect(err).toMatch(/--grants .*bad\.yaml: 0\.cap\.0\.args\.n: a constraint needs at least one field/);
  });

  it('works offline from the tools config names', async () => {
    const { code, out } = await run(['--config', await deployment('offline'), '--offline']);
    expect(code).toBe(0);
    expect(out).toContain('mail__send_email  external when to, cc points outside  [config]');
    expect(out).not.toContain('mail__write_file');
  });
});
