/**
 * `bastion flows graph`: the static graph of a deployment's flows (who can
 * reach what), from its config, its compiled policy and its grants. Tools
 * come from the configured connectors (each started, listed and stopped, as
 * the broker would see them) and plugin manifests, or with --offline from
 * the tools config names; reachability and the answer to every toxic
 * combination come from the policy itself (broker/flows/graph.ts).
 *
 * @example
 *   process.exitCode = await flowsGraphCommand(['--config', 'bastion.yaml', '--grants', 'grants.yaml', '--report', 'flows.html']);
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { z } from 'zod';
import { policySource } from '../broker.ts';
import { demoConnector, loadConfig, type Config } from '../config.ts';
import { createLogger } from '../log.ts';
import { PolicyHolder } from '../policy/holder.ts';
import { CapabilitySchema } from '../policy/schema.ts';
import { exposed, ToolRegistry } from '../registry.ts';
import { Connector } from '../../connectors/upstream.ts';
import { readPlugin } from '../../sandboxes/pin.ts';
import { flowGraph, type GraphTool, type Grant } from './graph.ts';
import { toolFlow } from './labels.ts';
import { graphHtml, graphText } from './report.ts';

export const FLOWS_GRAPH_HELP = `usage: bastion flows graph [--config FILE] [--grants FILE] [--report OUT.html] [--json OUT.json] [--offline]

Builds the graph grants → tools → flow labels of this deployment and lists,
for each grant, the toxic combinations a token holding it could reach: a
tool that brings untrusted content with one that acts outside or destroys
(injection → action), and untrusted content with private data and a way
out (the lethal trifecta). Each combination is put to the configured policy
as the call it would be (the sink after the sources, naming a destination
outside the organisation), so it reports what your policy does: refused,
approval (with its quorum) or ALLOWED. Exits 1 when a combination is allowed.

  --config FILE   the deployment's config (default: the embedded default)
  --grants FILE   YAML or JSON: a list of {name, cap} (the capability lists
                  your issuer grants); default one grant of every tool ("*")
  --report FILE   write a self-contained HTML report (SVG picture, no script)
  --json FILE     write the graph as JSON
  --offline       do not start the connectors: only tools named in config`;

const GrantsSchema = z.union([
  z.array(z.strictObject({ name: z.string().min(1).max(128), cap: z.array(CapabilitySchema).max(64) })).min(1),
  z.strictObject({ grants: z.array(z.strictObject({ name: z.string().min(1).max(128), cap: z.array(CapabilitySchema).max(64) })).min(1) }),
]);

class UsageError extends Error {}

async function readGrants(file: string | undefined): Promise<Grant[]> {
  if (!file) return [{ name: 'every tool', cap: [{ tool: '*' }] }];
  const text = await readFile(file, 'utf8');
  const parsed = GrantsSchema.safeParse(file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text));
  if (!parsed.success) throw new UsageError(`--grants ${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return Array.isArray(parsed.data) ? parsed.data : parsed.data.grants;
}

/** The deployment's tools as the broker would resolve them. */
async function deploymentTools(config: Config, offline: boolean): Promise<{ tools: GraphTool[]; problems: string[] }> {
  const log = createLogger('silent');
  const problems: string[] = [];
  const connectorConfigs = config.connectors ?? [demoConnector()];
  const tools: GraphTool[] = [];
  if (offline) {
    for (const connector of connectorConfigs) {
      for (const [name, settings] of Object.entries(connector.tools)) {
        tools.push({ name: exposed({ name: connector.name, config: connector }, name), connector: connector.name, risk: settings.risk ?? 'medium', flow: toolFlow({}, settings) });
      }
    }
  } else {
    const connectors = connectorConfigs.map((c) => new Connector(c, { log }));
    try {
      await Promise.all(connectors.map((c) => c.start()));
      for (const c of connectors) if (c.status !== 'ready') problems.push(`connector ${c.name} is not ready (${c.lastError ?? c.status}); its tools are missing from the graph`);
      const registry = new ToolRegistry(connectors, log);
      for (const entry of registry.tools().values()) tools.push({ name: entry.exposedName, connector: entry.connector.name, risk: entry.risk, flow: entry.flow });
    } finally {
      await Promise.all(connectors.map((c) => c.stop()));
    }
  }
  for (const plugin of config.plugins ?? []) {
    try {
      const source = await readPlugin(plugin.dir);
      const namespace = plugin.name ?? source.manifest.name;
      for (const tool of source.manifest.tools) {
        const settings = plugin.tools[tool.name];
        tools.push({ name: exposed({ name: namespace, config: plugin }, tool.name), connector: namespace, risk: settings?.risk ?? 'medium', flow: toolFlow(tool, settings) });
      }
    } catch (error) {
      problems.push(`plugin ${plugin.dir}: ${(error as Error).message}`);
    }
  }
  return { tools: tools.sort((a, b) => a.name.localeCompare(b.name)), problems };
}

/** Runs `bastion flows graph` with the words after "graph"; resolves to the exit status. */
export async function flowsGraphCommand(argv: string[], out: (text: string) => void = (t) => void process.stdout.write(t), err: (text: string) => void = (t) => void process.stderr.write(t)): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        config: { type: 'string' },
        grants: { type: 'string' },
        report: { type: 'string' },
        json: { type: 'string' },
        offline: { type: 'boolean', default: false },
        help: { type: 'boolean' },
      },
    }));
  } catch (error) {
    err(`bastion flows graph: ${(error as Error).message}\n`);
    return 2;
  }
  if (values.help) {
    out(`${FLOWS_GRAPH_HELP}\n`);
    return 0;
  }
  let grants: Grant[];
  try {
    grants = await readGrants(values.grants);
  } catch (error) {
    err(`bastion flows graph: ${(error as Error).message}\n`);
    return 2;
  }
  const config = await loadConfig(values.config);
  const { tools, problems } = await deploymentTools(config, values.offline);
  for (const problem of problems) err(`bastion flows graph: ${problem}\n`);
  const holder = await PolicyHolder.open({ source: policySource(config), log: createLogger('silent'), watch: false });
  let graph;
  try {
    graph = flowGraph({ tools, grants, policy: holder.current() });
  } finally {
    await holder.close();
  }
  out(graphText(graph));
  for (const [file, content] of [
    [values.report, () => graphHtml(graph)],
    [values.json, () => `${JSON.stringify(graph, null, 2)}\n`],
  ] as const) {
    if (!file) continue;
    await mkdir(path.dirname(path.resolve(file)), { recursive: true });
    await writeFile(file, content());
    err(`wrote ${file}\n`);
  }
  return graph.grants.some((g) => g.combinations.some((c) => c.outcome === 'allowed' || c.outcome === 'error')) ? 1 : 0;
}
