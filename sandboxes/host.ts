/**
 * PluginHost: one pinned plugin as a tool source, with the same surface as a
 * Connector (name, config, status, catalog, lastError, start, stop, callTool)
 * so the registry and the pipeline can treat both alike.
 *
 * start() reads the plugin once, refuses it unless its bytes match the pin,
 * validates the manifest, works out the granted capabilities (manifest ∩
 * operator grants) and the effective limits (manifest, capped by the host),
 * and loads it into the shared SandboxPool. A plugin that fails any of this
 * is `down` with `lastError` saying why; nothing else is affected.
 *
 * callTool() returns an MCP CallToolResult: the result as JSON text (plus
 * `structuredContent` when the tool declares an outputSchema), or
 * `isError: true` with `_meta['bastion/sandbox'] = {code, message}`. Either
 * way `_meta['bastion/capabilities']` lists the host capabilities the call
 * used (for the audit record; the broker should strip it before replying).
 *
 * @example
 *   const pool = new SandboxPool({ log });
 *   const host = new PluginHost({ dir: 'sandboxes/examples/text-utils', hash: 'sha256:…', pool, log });
 *   await host.start();
 *   const result = await host.callTool('word_count', { text: 'a b c' }, { signal });
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { CallToolResult, Prompt, Resource, ResourceTemplateType, Tool } from '@modelcontextprotocol/server';
import type { DenialCode } from '../broker/errors.ts';
import type { Logger } from '../broker/log.ts';
import { CallCapabilities, resolveGrants, type EffectiveGrants, type HostGrants } from './capabilities/grants.ts';
import type { KeyValueStore } from './capabilities/kv.ts';
import { snapshotUses, type CapabilityUse } from './capabilities/uses.ts';
import { SandboxError } from './errors.ts';
import { PluginNameSchema, requestedCapabilities, type PluginLimits, type PluginTool } from './manifest.ts';
import { loadPinnedPlugin, MANIFEST_FILE, type PluginSource } from './pin.ts';
import type { SandboxPool } from './pool.ts';
import { toolSchemas } from './protocol.ts';

export type PluginStatus = 'starting' | 'ready' | 'down' | 'stopped';
export type Risk = 'low' | 'medium' | 'high';

export const SANDBOX_META = 'bastion/sandbox';
export const CAPABILITIES_META = 'bastion/capabilities';

/** The most any manifest gets, unless the operator sets other caps. */
export const DEFAULT_MAX_LIMITS: PluginLimits = { memory_mb: 128, cpu_ms: 5000, wall_ms: 30_000, max_result_bytes: 1024 * 1024 };

export interface PluginHostOptions {
  /** The plugin directory (plugin.json and its script). */
  dir: string;
  /** The pin (`pluginHash(dir)`); any other content is refused. */
  hash: string;
  pool: SandboxPool;
  log: Logger;
  /**
   * The operator's name for the plugin: the namespace of its tools
   * (`<name>__<tool>`) and of its kv store. Default for tools: the name in its
   * manifest; kv is never keyed by a manifest's name, so a plugin granted kv
   * needs this.
   */
  name?: string;
  /** What the operator allows; the plugin gets what its manifest asks for within this. */
  grants?: HostGrants;
  /** Backing store for the kv capability (the broker's state store); default in memory. */
  kv?: KeyValueStore;
  /** Caps on the manifest's limits (default DEFAULT_MAX_LIMITS). */
  maxLimits?: Partial<PluginLimits>;
  /** Expose tools as `<name>__<tool>` (default true). */
  namespace?: boolean;
  /** Per-tool settings, as for connectors. */
  tools?: Record<string, { risk?: Risk | undefined }>;
  /** Largest accepted arguments (JSON bytes; default 1 MiB). */
  maxArgumentBytes?: number;
  onStatus?: (host: PluginHost, status: PluginStatus) => void;
}

export interface PluginCatalog {
  tools: Tool[];
  resources: Resource[];
  resourceTemplates: ResourceTemplateType[];
  prompts: Prompt[];
}

const EMPTY_CATALOG: PluginCatalog = { tools: [], resources: [], resourceTemplates: [], prompts: [] };
let instances = 0;

/** The capability uses recorded in a result from callTool. */
export function capabilityUsesOf(result: CallToolResult): CapabilityUse[] {
  const uses = result._meta?.[CAPABILITIES_META];
  return Array.isArray(uses) ? (uses as CapabilityUse[]) : [];
}

function capLimits(limits: PluginLimits, caps: Partial<PluginLimits> | undefined): PluginLimits {
  const max = { ...DEFAULT_MAX_LIMITS, ...caps };
  return {
    memory_mb: Math.min(limits.memory_mb, max.memory_mb),
    cpu_ms: Math.min(limits.cpu_ms, max.cpu_ms),
    wall_ms: Math.min(limits.wall_ms, max.wall_ms),
    max_result_bytes: Math.min(limits.max_result_bytes, max.max_result_bytes),
  };
}

function descriptor(tool: PluginTool): Tool {
  return {
    name: tool.name,
    ...(tool.title !== undefined ? { title: tool.title } : {}),
    description: tool.description,
    inputSchema: tool.inputSchema as Tool['inputSchema'],
    ...(tool.outputSchema !== undefined ? { outputSchema: tool.outputSchema as NonNullable<Tool['outputSchema']> } : {}),
    ...(tool.annotations !== undefined ? { annotations: tool.annotations } : {}),
  };
}

/**
 * The name the manifest declares, read before the pin is checked: it only
 * labels the host (the bytes are verified by start()). Falls back to the
 * directory's name.
 */
function declaredName(dir: string): string {
  try {
    const name = (JSON.parse(readFileSync(path.join(dir, MANIFEST_FILE), 'utf8')) as { name?: unknown }).name;
    if (typeof name === 'string') return name;
  } catch {
    // start() will report what is wrong with the plugin
  }
  return path.basename(path.resolve(dir));
}

function errorResult(error: SandboxError, uses: readonly CapabilityUse[]): CallToolResult {
  return {
    isError: true,
    content: [{ type: 'text', text: `${error.code}: ${error.message}` }],
    _meta: { [SANDBOX_META]: error.toJSON(), [CAPABILITIES_META]: snapshotUses(uses) },
  };
}

export class PluginHost {
  readonly name: string;
  /** Connector-shaped config, so the registry can namespace and rate risk alike. */
  readonly config: { name: string; namespace: boolean; tools: Record<string, { risk?: Risk | undefined }> };
  readonly serverCapabilities = { tools: {} };
  lastError: string | undefined;
  /** The denial code of calls under this plugin's name when it was refused before loading (see refuse()). */
  refusedWith: DenialCode | undefined;
  private readonly options: PluginHostOptions;
  private readonly key: string;
  private statusValue: PluginStatus = 'starting';
  private catalogValue: PluginCatalog = EMPTY_CATALOG;
  private source: PluginSource | undefined;
  private grants: EffectiveGrants | undefined;
  private limitsValue: PluginLimits | undefined;
  private toolsByName = new Map<string, PluginTool>();
  private startPromise: Promise<void> | undefined;

  constructor(options: PluginHostOptions) {
    this.options = options;
    const name = options.name ?? declaredName(options.dir);
    const checked = PluginNameSchema.safeParse(name);
    if (!checked.success) {
      throw new SandboxError('SANDBOX_MANIFEST_INVALID', `plugin name ${JSON.stringify(name)} (${options.dir}): ${checked.error.issues[0]?.message ?? 'invalid'}`);
    }
    this.name = checked.data;
    this.key = `${this.name}#${++instances}`;
    this.config = { name: this.name, namespace: options.namespace ?? true, tools: options.tools ?? {} };
  }

  get status(): PluginStatus {
    return this.statusValue;
  }

  get catalog(): PluginCatalog {
    return this.catalogValue;
  }

  /** The pinned hash of what is running (after start). */
  get hash(): string | undefined {
    return this.source?.hash;
  }

  /** The effective limits (after start). */
  get limits(): PluginLimits | undefined {
    return this.limitsValue;
  }

  private setStatus(status: PluginStatus): void {
    if (this.statusValue === status) return;
    this.statusValue = status;
    this.options.onStatus?.(this, status);
  }

  /**
   * Keeps the plugin from ever loading (its name is another source's): it is
   * down with `reason`, and calls under its name are refused with `code`.
   */
  refuse(code: DenialCode, reason: string): void {
    this.refusedWith = code;
    this.lastError = reason;
    this.startPromise ??= Promise.resolve();
    this.setStatus('down');
    this.options.log.warn({ plugin: this.name, err: reason }, 'plugin refused');
  }

  /** Loads once; resolves when ready or down (see status and lastError), never rejects. */
  start(): Promise<void> {
    this.startPromise ??= this.load();
    return this.startPromise;
  }

  private async load(): Promise<void> {
    const { log } = this.options;
    try {
      const source = await loadPinnedPlugin(this.options.dir, this.options.hash);
      const manifest = source.manifest;
      // The name was read before the pin was checked; a name taken from the manifest must be the pinned manifest's.
      if (this.options.name === undefined && manifest.name !== this.name) {
        throw new Error(`the pinned manifest names the plugin ${JSON.stringify(manifest.name)}, not ${JSON.stringify(this.name)}`);
      }
      const limits = capLimits(manifest.limits, this.options.maxLimits);
      const grants = resolveGrants(manifest, this.options.grants ?? {}, { store: this.options.kv, owner: this.options.name });
      if (grants.refused.length > 0) {
        log.warn({ plugin: this.name, refused: grants.refused }, 'plugin asks for capabilities the operator did not grant; its uses will be refused');
      }
      await this.options.pool.load({
        key: this.key,
        name: this.name,
        main: manifest.main,
        code: source.code,
        tools: toolSchemas(manifest.tools),
        limits,
        caps: requestedCapabilities(manifest),
        maxCapabilityCalls: grants.maxCapabilityCalls,
      });
      if (this.statusValue === 'stopped') {
        this.options.pool.unload(this.key);
        return;
      }
      this.source = source;
      this.grants = grants;
      this.limitsValue = limits;
      this.toolsByName = new Map(manifest.tools.map((t) => [t.name, t]));
      this.catalogValue = { ...EMPTY_CATALOG, tools: manifest.tools.map(descriptor) };
      this.lastError = undefined;
      this.setStatus('ready');
      log.info({ plugin: this.name, version: manifest.version, hash: source.hash, tools: manifest.tools.length, limits }, 'plugin ready');
    } catch (error) {
      this.lastError = (error as Error).message;
      if (this.statusValue !== 'stopped') this.setStatus('down');
      log.warn({ plugin: this.name, err: this.lastError }, 'plugin failed to load');
    }
  }

  async stop(): Promise<void> {
    this.setStatus('stopped');
    this.options.pool.unload(this.key);
  }

  /**
   * Runs one tool. Sandbox failures come back as `isError` results with a
   * stable code; only an unavailable plugin throws (SandboxError
   * SANDBOX_UNAVAILABLE), as an unavailable connector does.
   */
  async callTool(name: string, args: Record<string, unknown>, options: { signal?: AbortSignal | undefined } = {}): Promise<CallToolResult> {
    const { source, grants, limitsValue: limits } = this;
    if (this.statusValue !== 'ready' || !source || !grants || !limits) {
      throw new SandboxError('SANDBOX_UNAVAILABLE', `plugin ${this.name} is unavailable${this.lastError ? ` (${this.lastError})` : ''}`);
    }
    const tool = this.toolsByName.get(name);
    if (!tool) return errorResult(new SandboxError('SANDBOX_UNKNOWN_TOOL', `plugin ${this.name} has no tool ${name}`), []);
    let argsJson: string | undefined;
    try {
      argsJson = JSON.stringify(args ?? {});
    } catch (error) {
      return errorResult(new SandboxError('SANDBOX_INVALID_ARGUMENTS', `arguments are not JSON: ${(error as Error).message}`), []);
    }
    const maxArgs = this.options.maxArgumentBytes ?? 1024 * 1024;
    if (argsJson === undefined || Buffer.byteLength(argsJson) > maxArgs) {
      return errorResult(new SandboxError('SANDBOX_INVALID_ARGUMENTS', `arguments are missing or larger than ${maxArgs} bytes`), []);
    }
    const capabilities = new CallCapabilities(grants, this.name, this.options.log);
    try {
      const json = await this.options.pool.run(this.key, name, argsJson, { wallMs: limits.wall_ms, signal: options.signal, capabilities });
      return this.result(tool, json, limits, capabilities.uses);
    } catch (error) {
      let failure = error instanceof SandboxError ? error : new SandboxError('SANDBOX_CRASHED', (error as Error).message);
      const denial = capabilities.firstDenial;
      if (denial !== undefined && failure.code === 'SANDBOX_PLUGIN_ERROR') {
        failure = new SandboxError('SANDBOX_CAPABILITY_DENIED', `plugin ${this.name}: ${denial} (${failure.message})`);
      }
      return errorResult(failure, failure.capabilityUses.length > 0 ? failure.capabilityUses : capabilities.uses);
    }
  }

  /** The sandbox process is not trusted: size, JSON and shape are checked again here. */
  private result(tool: PluginTool, json: string, limits: PluginLimits, uses: readonly CapabilityUse[]): CallToolResult {
    const bytes = Buffer.byteLength(json);
    if (bytes > limits.max_result_bytes) {
      return errorResult(new SandboxError('SANDBOX_RESULT_TOO_LARGE', `the result of ${bytes} bytes exceeds the ${limits.max_result_bytes}-byte cap`), uses);
    }
    let value: unknown;
    try {
      // A `__proto__` key is inert data after JSON.parse, but code downstream that copies
      // objects by assignment would turn it into a prototype: drop it from structured results.
      value = JSON.parse(json, (key, item: unknown) => (key === '__proto__' ? undefined : item));
    } catch {
      return errorResult(new SandboxError('SANDBOX_INVALID_RESULT', 'the result is not JSON'), uses);
    }
    const structured = tool.outputSchema !== undefined;
    if (structured && (typeof value !== 'object' || value === null || Array.isArray(value))) {
      return errorResult(new SandboxError('SANDBOX_INVALID_RESULT', 'a tool with an output schema must return an object'), uses);
    }
    return {
      content: [{ type: 'text', text: json }],
      ...(structured ? { structuredContent: value as Record<string, unknown> } : {}),
      _meta: { [CAPABILITIES_META]: snapshotUses(uses) },
    };
  }
}
