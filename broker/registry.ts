/**
 * Stage 2, resolve: maps the names agents see to the connector that serves
 * them. Tools and prompts are exposed as `<connector>__<name>` unless a
 * connector opts out of namespacing; a name offered by two connectors is
 * hidden from both (and logged) rather than letting one shadow the other.
 * Resource URIs are not renamed (they are the upstream's own identifiers and
 * appear inside results): a URI that two connectors could serve, by listing
 * it or by a matching template, is hidden the same way and reading it is
 * refused with BASTION_RESOURCE_AMBIGUOUS naming both.
 *
 * @example
 *   const entry = registry.resolveTool('demo__read_file'); // or throws Denial
 */
import { UriTemplate } from '@modelcontextprotocol/server';
import type { Prompt, Resource, ResourceTemplateType, Tool, CallToolResult } from '@modelcontextprotocol/server';
import { SUBSCHEMA, SUBSCHEMA_LIST, SUBSCHEMA_MAP } from '../sandboxes/schema-patterns.ts';
import { canonicalJson, sha256 } from './audit/chain.ts';
import { lookalikesOf } from './filters/names.ts';
import { Denial, type DenialCode } from './errors.ts';
import type { Logger } from './log.ts';
import type { CallOptions, Connector, UpstreamInputRequired } from '../connectors/upstream.ts';

/**
 * What serves tools: an upstream connector or a sandboxed plugin. The
 * pipeline does not care which runs a tool.
 */
export interface ToolSource {
  readonly name: string;
  readonly config: { namespace: boolean; tools: Record<string, ToolSettings> };
  readonly status: string;
  readonly catalog: { tools: Tool[] };
  lastError: string | undefined;
  /** Set when the source was refused before loading (a plugin claiming a taken name): the code its calls are denied with. */
  readonly refusedWith?: DenialCode | undefined;
  callTool(name: string, args: Record<string, unknown>, options: CallOptions): Promise<CallToolResult | UpstreamInputRequired>;
  /** Connectors: resolves once an announced catalog change is processed. */
  catalogSettled?(): Promise<void>;
}
import type { DescriptorVerdict } from './filters/descriptor.ts';
import { toolFlow, type ToolFlow } from './flows/labels.ts';
import type { ToolFlowSettings } from './flows/schema.ts';

/** What config says about one tool: its risk and its flow labels. */
export type ToolSettings = { risk?: Risk | undefined } & { [K in keyof ToolFlowSettings]?: ToolFlowSettings[K] | undefined };

/** Judges a tool descriptor for poisoning (broker/filters/descriptor.ts). */
export type DescriptorCheck = (tool: Tool) => DescriptorVerdict;
const CLEAN: DescriptorVerdict = { flagged: false, action: 'allow', findings: [] };

export type Risk = 'low' | 'medium' | 'high';

export interface ToolEntry {
  exposedName: string;
  upstreamName: string;
  connector: ToolSource;
  /** The descriptor as agents see it (renamed). */
  descriptor: Tool;
  risk: Risk;
  /** Flow labels and egress arguments (config, else annotations). */
  flow: ToolFlow;
  /** sha256 over the upstream descriptor's canonical form. */
  descriptorHash: string;
  /** The descriptor as the upstream listed it. */
  upstreamDescriptor: Tool;
  /** The poisoning check's verdict on the upstream descriptor. */
  descriptorVerdict: DescriptorVerdict;
}

export interface PromptEntry {
  exposedName: string;
  upstreamName: string;
  connector: Connector;
  descriptor: Prompt;
}

export const NAMESPACE_SEPARATOR = '__';

/** One connector's `instructions` as agents get them: the text, or the finding kinds it was withheld for. */
export interface ConnectorInstructions {
  connector: Connector;
  text: string;
  /** Set when the poisoning check flagged the text and its action withholds (require_approval, block). */
  withheld?: string[] | undefined;
}

/** What is reported once when a connector's instructions are flagged. */
export interface InstructionsFlag {
  connector: string;
  hash: string;
  withheld: boolean;
  verdict: DescriptorVerdict;
}

/** Whether an RFC 6570 template matches a URI; a template the SDK cannot parse matches nothing. */
function templateMatches(template: string, uri: string): boolean {
  try {
    return new UriTemplate(template).match(uri) !== null;
  } catch {
    return false;
  }
}

/** Upstream annotations are hints from an untrusted party; config overrides them. */
function riskOf(tool: Tool, override: Risk | undefined): Risk {
  if (override) return override;
  if (tool.annotations?.destructiveHint === true) return 'high';
  if (tool.annotations?.readOnlyHint === true) return 'low';
  return 'medium';
}

/** Keywords that constrain values: kept in a withheld schema, since a call must still satisfy them. */
const VALIDATION_KEYWORDS = new Set([
  'type', 'enum', 'const', 'multipleOf', 'maximum', 'exclusiveMaximum', 'minimum', 'exclusiveMinimum', 'maxLength', 'minLength',
  'pattern', 'maxItems', 'minItems', 'uniqueItems', 'maxContains', 'minContains', 'maxProperties', 'minProperties', 'required',
  'dependentRequired', 'format', '$ref', '$schema', '$id', '$anchor', '$dynamicRef', '$dynamicAnchor', '$recursiveRef', '$recursiveAnchor',
]);
/** Tool annotations that are plain booleans (hints); `title` and anything else is text an upstream chose. */
const HINTS = ['readOnlyHint', 'destructiveHint', 'idempotentHint', 'openWorldHint'] as const;

/**
 * A JSON Schema reduced to what validates: applicator keywords are followed,
 * validation keywords kept, and everything else (title, description,
 * default, examples, $comment, deprecated, vendor keywords) dropped, so no
 * text of the upstream's choosing rides along in annotations.
 */
function validationOnly(schema: unknown): unknown {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) return schema;
  const source = schema as Record<string, unknown>;
  const kept: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(source)) {
    if (VALIDATION_KEYWORDS.has(key)) kept[key] = value;
    else if (SUBSCHEMA_LIST.includes(key) && Array.isArray(value)) kept[key] = value.map(validationOnly);
    else if (SUBSCHEMA.includes(key)) kept[key] = validationOnly(value);
    else if (SUBSCHEMA_MAP.includes(key) && value !== null && typeof value === 'object' && !Array.isArray(value)) {
      // `dependencies` may map to a list of property names rather than a schema.
      kept[key] = Object.fromEntries(Object.entries(value).map(([name, sub]) => [name, Array.isArray(sub) ? sub : validationOnly(sub)]));
    }
  }
  return kept;
}

/**
 * A flagged descriptor as agents see it: the name, Bastion's note in place
 * of the description, the schemas reduced to what validates, and the
 * annotations' boolean hints (and task support). Title, annotation text,
 * `_meta`, icons and any other field the upstream added are withheld.
 */
function withheldDescriptor(tool: Tool, verdict: DescriptorVerdict): Tool {
  const hints = Object.fromEntries(HINTS.filter((hint) => typeof tool.annotations?.[hint] === 'boolean').map((hint) => [hint, tool.annotations![hint]]));
  return {
    name: tool.name,
    description: `[Bastion withheld this tool's description: flagged as possibly poisoned (${[...new Set(verdict.findings.map((f) => f.kind))].join(', ')}); every call needs human approval]`,
    inputSchema: validationOnly(tool.inputSchema) as Tool['inputSchema'],
    ...(tool.outputSchema ? { outputSchema: validationOnly(tool.outputSchema) as Tool['outputSchema'] } : {}),
    ...(Object.keys(hints).length ? { annotations: hints } : {}),
    // How the tool must be called (tasks), when it is one of the protocol's values: no free text.
    ...(['required', 'optional', 'forbidden'].includes(tool.execution?.taskSupport as string) ? { execution: { taskSupport: tool.execution!.taskSupport } } : {}),
  };
}

/**
 * The pin of a descriptor: sha256 over the canonical form of everything an
 * agent is shown (every field, `_meta` and icons included). Version 2 of the
 * hash; see legacyDescriptorHash for the pins written before it.
 */
export function descriptorHash(tool: Tool): string {
  return sha256(canonicalJson(tool));
}

/** The hash pins had before version 2: name, title, description, schemas and annotations only. */
export function legacyDescriptorHash(tool: Tool): string {
  const { name, title, description, inputSchema, outputSchema, annotations } = tool;
  return sha256(canonicalJson({ name, title, description, inputSchema, outputSchema, annotations }));
}

export function exposed(connector: Pick<ToolSource, 'name' | 'config'>, name: string): string {
  return connector.config.namespace ? `${connector.name}${NAMESPACE_SEPARATOR}${name}` : name;
}

/** Builds name → entry, dropping every name that more than one source offers. */
function uniqueByName<T extends { exposedName: string }>(entries: T[], kind: string, log: Logger): Map<string, T> {
  const byName = new Map<string, T>();
  const clashes = new Set<string>();
  for (const entry of entries) {
    if (byName.has(entry.exposedName)) clashes.add(entry.exposedName);
    else byName.set(entry.exposedName, entry);
  }
  for (const name of clashes) {
    byName.delete(name);
    log.warn({ [kind]: name }, `${kind} offered by more than one connector; hidden to prevent shadowing`);
  }
  return byName;
}

export class ToolRegistry {
  private readonly connectors: Connector[];
  private readonly plugins: ToolSource[];
  private readonly log: Logger;
  private readonly check: DescriptorCheck;
  /** Pin status of a descriptor; a changed one is quarantined (see pins.ts). */
  pinStatus: (connector: string, tool: string, hash: string, descriptor: Tool) => 'pinned' | 'new' | 'quarantined' = () => 'new';
  private quarantinedNames = new Set<string>();
  private toolIndex: Map<string, ToolEntry> | undefined;
  /** Tools whose descriptors the check blocked: never listed, calls refused with the reason. */
  private blocked = new Map<string, DescriptorVerdict>();
  private readonly warned = new Set<string>();
  private promptIndex: Map<string, PromptEntry> | undefined;
  /** Verdicts on connectors' instructions, by connector name and text hash. */
  private readonly instructionVerdicts = new Map<string, DescriptorVerdict>();
  /** Told once per connector and text when instructions are flagged (the broker audits it). */
  onInstructionsFlagged: (flag: InstructionsFlag) => void = () => undefined;

  constructor(connectors: Connector[], log: Logger, check: DescriptorCheck = () => CLEAN, plugins: ToolSource[] = []) {
    this.connectors = connectors;
    this.plugins = plugins;
    this.log = log;
    this.check = check;
  }

  /** Runs the poisoning check once per descriptor; logs each flagged descriptor once. */
  private judge(connector: ToolSource, tool: Tool, hash: string): DescriptorVerdict {
    const verdict = this.check(tool);
    if (verdict.flagged && !this.warned.has(hash)) {
      this.warned.add(hash);
      this.log.warn({ connector: connector.name, tool: tool.name, action: verdict.action, findings: verdict.findings }, 'tool description flagged as possibly poisoned');
    }
    return verdict;
  }

  /**
   * Replaces a flagged entry's descriptor with its withheld form, then checks
   * what is left (property names, enum and const values, patterns): poison
   * there cannot be withheld without breaking the tool, so the tool is
   * blocked instead.
   */
  private withhold(entry: ToolEntry): void {
    const withheld = withheldDescriptor(entry.descriptor, entry.descriptorVerdict);
    const residue = this.check({ ...withheld, description: '' });
    if (!residue.flagged) {
      entry.descriptor = withheld;
      return;
    }
    entry.descriptorVerdict = { ...entry.descriptorVerdict, action: 'block', findings: residue.findings };
    if (!this.warned.has(`${entry.descriptorHash}|residue`)) {
      this.warned.add(`${entry.descriptorHash}|residue`);
      this.log.warn(
        { connector: entry.connector.name, tool: entry.exposedName, findings: residue.findings },
        'tool descriptor flagged in text that cannot be withheld (property names, enum or const values): blocked',
      );
    }
  }

  /** Drops the cached indexes; called when a catalog or a connector status changes. */
  invalidate(): void {
    this.toolIndex = undefined;
    this.promptIndex = undefined;
  }

  private ready(): Connector[] {
    return this.connectors.filter((c) => c.status === 'ready');
  }

  /** Every ready source of tools: connectors and plugins. */
  private readyToolSources(): ToolSource[] {
    return [...this.ready(), ...this.plugins.filter((p) => p.status === 'ready')];
  }

  tools(): Map<string, ToolEntry> {
    if (this.toolIndex) return this.toolIndex;
    const entries = this.readyToolSources().flatMap((connector) =>
      connector.catalog.tools.map((tool): ToolEntry => {
        const exposedName = exposed(connector, tool.name);
        const hash = descriptorHash(tool);
        const entry: ToolEntry = {
          exposedName,
          upstreamName: tool.name,
          connector,
          descriptor: { ...tool, name: exposedName },
          risk: riskOf(tool, connector.config.tools[tool.name]?.risk),
          flow: toolFlow(tool, connector.config.tools[tool.name]),
          descriptorHash: hash,
          upstreamDescriptor: tool,
          descriptorVerdict: this.judge(connector, tool, hash),
        };
        // A flagged description must not reach the model that it tries to instruct:
        // agents see the tool (its calls need a human) but not the suspect text.
        if (entry.descriptorVerdict.action === 'require_approval') this.withhold(entry);
        return entry;
      }),
    );
    const index = uniqueByName(entries, 'tool', this.log);
    this.blocked = new Map();
    this.quarantinedNames = new Set();
    // Pinning holds a look-alike name on first sight (pins.ts); this catches one that slipped past it
    // (its twin appeared later, or on another replica at the same moment, or it was pinned before).
    const names = [...index.keys()];
    for (const name of names) {
      const twins = lookalikesOf(name, names);
      if (twins.length === 0) continue;
      index.delete(name);
      this.quarantinedNames.add(name);
      if (!this.warned.has(`lookalike|${name}`)) {
        this.warned.add(`lookalike|${name}`);
        this.log.warn({ tool: name, lookalikes: twins }, 'tool name looks like another exposed name: hidden (bastion tools review)');
      }
    }
    for (const [name, entry] of index) {
      if (this.pinStatus(entry.connector.name, entry.upstreamName, entry.descriptorHash, entry.upstreamDescriptor) === 'quarantined') {
        index.delete(name);
        this.quarantinedNames.add(name);
        continue;
      }
      if (entry.descriptorVerdict.action === 'block') {
        index.delete(name);
        this.blocked.set(name, entry.descriptorVerdict);
      }
    }
    this.toolIndex = index;
    return index;
  }

  prompts(): Map<string, PromptEntry> {
    this.promptIndex ??= uniqueByName(
      this.ready().flatMap((connector) =>
        connector.catalog.prompts.map((prompt) => {
          const exposedName = exposed(connector, prompt.name);
          return { exposedName, upstreamName: prompt.name, connector, descriptor: { ...prompt, name: exposedName } };
        }),
      ),
      'prompt',
      this.log,
    );
    return this.promptIndex;
  }

  /**
   * Each ready connector's instructions, checked like a tool description:
   * the same poisoning check runs over the text (as an `instructions` field,
   * so the description length limit does not apply; the descriptor size
   * limit does). A flagged text is logged and reported once, and withheld
   * unless the configured action is `warn`.
   */
  instructions(): ConnectorInstructions[] {
    return this.ready().flatMap((connector): ConnectorInstructions[] => {
      const text = connector.instructions;
      if (!text) return [];
      const hash = sha256(text);
      const key = `${connector.name}|${hash}`;
      let verdict = this.instructionVerdicts.get(key);
      if (!verdict) {
        verdict = this.check({ name: connector.name, instructions: text, inputSchema: { type: 'object' } } as Tool);
        this.instructionVerdicts.set(key, verdict);
        if (verdict.flagged) {
          const withheld = verdict.action !== 'warn';
          this.log.warn(
            { connector: connector.name, action: verdict.action, findings: verdict.findings },
            `instructions of connector ${connector.name} flagged as possibly poisoned${withheld ? ': withheld from agents' : ''}`,
          );
          this.onInstructionsFlagged({ connector: connector.name, hash, withheld, verdict });
        }
      }
      const withheld = verdict.flagged && verdict.action !== 'warn';
      return [{ connector, text, ...(withheld ? { withheld: [...new Set(verdict.findings.map((f) => f.kind))] } : {}) }];
    });
  }

  /** Names a connector that is configured but not ready, so the error can say so. */
  private unavailableOwner(name: string): ToolSource | undefined {
    return [...this.connectors, ...this.plugins].find(
      (c) => c.status !== 'ready' && (!c.config.namespace || name.startsWith(`${c.name}${NAMESPACE_SEPARATOR}`)),
    );
  }

  private unknown(kind: string, name: string): Denial {
    const down = this.unavailableOwner(name);
    if (down?.refusedWith) return new Denial('resolve', down.refusedWith, down.lastError ?? `${down.name} was refused`);
    if (down) {
      return new Denial('resolve', 'BASTION_CONNECTOR_UNAVAILABLE', `connector ${down.name} is unavailable${down.lastError ? `: ${down.lastError}` : ''}`);
    }
    return new Denial('resolve', 'BASTION_TOOL_UNKNOWN', `unknown ${kind}: ${name}`);
  }

  resolveTool(name: string): ToolEntry {
    const entry = this.tools().get(name);
    if (this.quarantinedNames.has(name)) {
      throw new Denial(
        'resolve',
        'BASTION_TOOL_QUARANTINED',
        `the tool's descriptor does not match its pin (it changed since it was pinned, could not be pinned, or its name looks like another tool's); it stays unavailable until an operator reviews it (bastion tools review)`,
      );
    }
    const blocked = this.blocked.get(name);
    if (blocked) {
      throw new Denial('resolve', 'BASTION_TOOL_BLOCKED', `the tool's descriptor looks poisoned (${[...new Set(blocked.findings.map((f) => f.kind))].join(', ')}); it is blocked`);
    }
    if (!entry) throw this.unknown('tool', name);
    return entry;
  }

  resolvePrompt(name: string): PromptEntry {
    const entry = this.prompts().get(name);
    if (!entry) throw this.unknown('prompt', name);
    return entry;
  }

  /**
   * Every connector that could serve `uri`: those listing it and those with a
   * template matching it. More than one is a clash: no connector may shadow
   * another's resources, so a clashing URI is neither listed nor served.
   */
  private resourceOwners(uri: string): Connector[] {
    const owners = new Set<Connector>();
    for (const connector of this.ready()) {
      const { resources, resourceTemplates } = connector.catalog;
      if (resources.some((r) => r.uri === uri) || resourceTemplates.some((t) => templateMatches(t.uriTemplate, uri))) owners.add(connector);
    }
    return [...owners];
  }

  /** Logs a resource clash once per URI (or template) and set of connectors. */
  private warnClash(kind: 'resource' | 'resource template', what: string, owners: Connector[]): void {
    const names = owners.map((c) => c.name).sort();
    const key = `clash|${kind}|${what}|${names.join(',')}`;
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.log.warn({ [kind === 'resource' ? 'resource' : 'resourceTemplate']: what, connectors: names }, `${kind} offered by more than one connector; hidden to prevent shadowing`);
  }

  /** Listed resources no other connector also offers (by listing the URI or by a matching template). */
  resources(): { resource: Resource; connector: Connector }[] {
    return this.ready().flatMap((connector) =>
      connector.catalog.resources.flatMap((resource) => {
        const owners = this.resourceOwners(resource.uri);
        if (owners.length > 1) {
          this.warnClash('resource', resource.uri, owners);
          return [];
        }
        return [{ resource, connector }];
      }),
    );
  }

  /** Resource templates whose exact template text no other connector also offers. */
  resourceTemplates(): { template: ResourceTemplateType; connector: Connector }[] {
    const all = this.ready().flatMap((connector) => connector.catalog.resourceTemplates.map((template) => ({ template, connector })));
    return all.filter(({ template }) => {
      const owners = [...new Set(all.filter((t) => t.template.uriTemplate === template.uriTemplate).map((t) => t.connector))];
      if (owners.length === 1) return true;
      this.warnClash('resource template', template.uriTemplate, owners);
      return false;
    });
  }

  /** The one connector serving a URI (listing it or matching it with a template); a clash is refused by name. */
  resolveResource(uri: string): Connector {
    const owners = this.resourceOwners(uri);
    if (owners.length === 1) return owners[0]!;
    if (owners.length > 1) {
      this.warnClash('resource', uri, owners);
      throw new Denial(
        'resolve',
        'BASTION_RESOURCE_AMBIGUOUS',
        `resource ${uri} is offered by more than one connector (${owners.map((c) => c.name).sort().join(', ')}); Bastion serves it from none of them rather than let one shadow another`,
      );
    }
    throw new Denial('resolve', 'BASTION_TOOL_UNKNOWN', `unknown resource: ${uri}`);
  }

  /** The connector with this name, whatever its status (a task's requests say themselves why it cannot answer). */
  connectorNamed(name: string): Connector | undefined {
    return this.connectors.find((c) => c.name === name);
  }

  connectorsWith(capability: 'completions' | 'logging' | 'resources'): Connector[] {
    return this.ready().filter((c) => c.serverCapabilities[capability] !== undefined);
  }
}
