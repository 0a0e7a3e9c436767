/**
 * What Bastion tells an agent at the handshake: the capabilities it offers
 * and its instructions. Both mirror the connectors behind it, so a client
 * sees what it would see talking to the upstreams directly, less only what
 * Bastion deliberately withholds.
 *
 * Capabilities are the union of the connectors' (as of their last
 * handshake), plus tools when a plugin is loaded. A connector that never
 * completed a handshake (down since start) is assumed to offer everything,
 * so a session opened while it is down does not lose its features for good;
 * its lists are simply empty until it comes up. Bastion always announces
 * `listChanged` for what it offers: its own catalog changes when a connector
 * goes down or comes back, or a tool is quarantined, whatever the upstream
 * declares.
 *
 * Tasks (2025-11-25) are advertised to 2025-era sessions only, and only when
 * a connector offers task-augmented `tools/call` (broker/tasks/).
 *
 * Instructions are Bastion's own sentence, then each connector's
 * instructions under a heading that names the connector and its namespace.
 * An upstream's instructions go to the model like a tool description, so
 * they pass the same poisoning check (registry.instructions()): flagged
 * ones are replaced by a note saying so.
 *
 * @example
 *   const server = new Server(info, { capabilities: advertisedCapabilities(broker), instructions: agentInstructions(broker.registry) });
 */
import type { ServerCapabilities } from '@modelcontextprotocol/server';
import type { Connector } from '../../connectors/upstream.ts';
import { NAMESPACE_SEPARATOR, type ConnectorInstructions } from '../registry.ts';

export const BASTION_INSTRUCTIONS = 'Bastion mediates every tool call: each one is checked against your capability token and policy, and audited.';

/** What a connector is assumed to offer before its first handshake. */
const UNKNOWN: ServerCapabilities = { tools: {}, resources: { subscribe: true }, prompts: {}, logging: {}, completions: {} };

export function advertisedCapabilities(sources: { connectors: Connector[]; plugins: unknown[] }): ServerCapabilities {
  const offered = sources.connectors.map((c) => c.knownCapabilities ?? UNKNOWN);
  const any = (capability: keyof ServerCapabilities) => offered.some((c) => c[capability] !== undefined);
  return {
    ...(any('tools') || sources.plugins.length > 0 ? { tools: { listChanged: true } } : {}),
    ...(any('resources') ? { resources: { listChanged: true, ...(offered.some((c) => c.resources?.subscribe) ? { subscribe: true } : {}) } } : {}),
    ...(any('prompts') ? { prompts: { listChanged: true } } : {}),
    ...(any('logging') ? { logging: {} } : {}),
    ...(any('completions') ? { completions: {} } : {}),
    // Task-augmented tools/call only where a connector takes it (a connector not yet seen is not assumed to);
    // tasks/list is Bastion's own (the caller's tasks), tasks/cancel the upstream's.
    ...(sources.connectors.some((c) => c.offersToolTasks)
      ? { tasks: { list: {}, ...(sources.connectors.some((c) => c.offersToolTasks && c.offersTaskCancel) ? { cancel: {} } : {}), requests: { tools: { call: {} } } } }
      : {}),
  };
}

/** The heading of one connector's section: which server speaks, and how its names appear here. */
export function instructionsHeading(connector: { name: string; config: { namespace: boolean } }): string {
  const names = connector.config.namespace ? `its tools and prompts are named ${connector.name}${NAMESPACE_SEPARATOR}<name> here` : 'its tools and prompts keep their own names here';
  return `## Instructions from upstream server "${connector.name}" (${names})`;
}

/** Bastion's sentence, then each connector's instructions (or the note that replaced flagged ones). */
export function agentInstructions(sections: ConnectorInstructions[]): string {
  const parts = [BASTION_INSTRUCTIONS];
  for (const section of sections) {
    const body =
      section.withheld === undefined
        ? section.text
        : `[Bastion withheld these instructions: flagged as possibly poisoned (${section.withheld.join(', ')})]`;
    parts.push(`${instructionsHeading(section.connector)}\n\n${body}`);
  }
  return parts.join('\n\n');
}
