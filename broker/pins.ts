/**
 * Descriptor pinning against rug pulls: on first sight Bastion pins each
 * upstream tool's descriptor (name, title, description, schemas,
 * annotations). A later change quarantines the tool: it disappears from
 * `tools/list` and calls are refused until an operator reviews the diff and
 * re-pins it. Pins live behind the state interface, so every replica agrees.
 *
 * @example
 *   await pins.reconcile(connector);               // after a catalog (re)load
 *   pins.status('demo', tool, hash);               // 'pinned' | 'new' | 'quarantined'
 *   await pins.approve('demo__read_file');         // operator re-pins after review
 */
import type { Tool } from '@modelcontextprotocol/sdk/types.js';
import { canonicalJson, type AuditEvent } from './audit/chain.ts';
import type { Logger } from './log.ts';
import type { StateStore } from './state/store.ts';

const PINS = 'descriptor-pins';
const QUARANTINE = 'descriptor-quarantine';
const FIELDS = ['title', 'description', 'inputSchema', 'outputSchema', 'annotations'] as const;

export interface Pin {
  hash: string;
  descriptor: Tool;
  pinned_at: string;
}

export interface Quarantined {
  /** The tool's name as agents see it. */
  tool: string;
  connector: string;
  pinned: Pin;
  seen: { hash: string; descriptor: Tool };
  diff: string[];
  since: string;
}

/** Field-level diff of two descriptors, values shortened for a log line. */
export function descriptorDiff(before: Tool, after: Tool): string[] {
  const short = (value: unknown) => {
    const text = value === undefined ? '(absent)' : canonicalJson(value);
    return text.length > 400 ? `${text.slice(0, 400)}…` : text;
  };
  const lines: string[] = [];
  for (const field of FIELDS) {
    const a = before[field];
    const b = after[field];
    if ((a === undefined ? '' : canonicalJson(a)) !== (b === undefined ? '' : canonicalJson(b))) {
      lines.push(`- ${field}: ${short(a)}`, `+ ${field}: ${short(b)}`);
    }
  }
  return lines;
}

export interface PinSource {
  name: string;
  catalog: { tools: Tool[] };
}

export class DescriptorPins {
  private readonly state: StateStore;
  private readonly log: Logger;
  private readonly audit: (event: AuditEvent) => Promise<void>;
  private readonly hashOf: (tool: Tool) => string;
  private readonly exposedName: (connector: string, tool: string) => string;
  private pins = new Map<string, Pin>();
  /** Connectors whose last reconcile failed (state unavailable): their unpinned tools are held back, not served. */
  private readonly unverified = new Set<string>();

  constructor(options: {
    state: StateStore;
    log: Logger;
    audit: (event: AuditEvent) => Promise<void>;
    hashOf: (tool: Tool) => string;
    exposedName: (connector: string, tool: string) => string;
  }) {
    this.state = options.state;
    this.log = options.log;
    this.audit = options.audit;
    this.hashOf = options.hashOf;
    this.exposedName = options.exposedName;
  }

  private static key(connector: string, tool: string): string {
    return `${connector}|${tool}`;
  }

  /** Whether this descriptor matches its pin; synchronous, from the cache reconcile keeps. */
  status(connector: string, tool: string, hash: string): 'pinned' | 'new' | 'quarantined' {
    const pin = this.pins.get(DescriptorPins.key(connector, tool));
    // Fail closed: a tool that could not be pinned is not served as if it were new.
    if (!pin) return this.unverified.has(connector) ? 'quarantined' : 'new';
    return pin.hash === hash ? 'pinned' : 'quarantined';
  }

  /** Pins what is new, quarantines what changed, for one connector's catalog. */
  async reconcile(source: PinSource): Promise<void> {
    try {
      await this.reconcileTools(source);
      this.unverified.delete(source.name);
    } catch (error) {
      this.unverified.add(source.name);
      throw error;
    }
  }

  private async reconcileTools(source: PinSource): Promise<void> {
    for (const tool of source.catalog.tools) {
      const key = DescriptorPins.key(source.name, tool.name);
      const hash = this.hashOf(tool);
      const stored = await this.state.get(PINS, key);
      if (stored === undefined) {
        const pin: Pin = { hash, descriptor: tool, pinned_at: new Date().toISOString() };
        // First sight wins once, even when several replicas see the tool at the same moment.
        if (await this.state.compareAndSet(PINS, key, undefined, JSON.stringify(pin))) {
          this.pins.set(key, pin);
          await this.audit({ event: 'descriptor.pinned', tool: this.exposedName(source.name, tool.name), outcome: 'info', detail: { hash } });
          continue;
        }
      }
      const pin = JSON.parse((await this.state.get(PINS, key)) ?? 'null') as Pin | null;
      if (!pin) continue;
      this.pins.set(key, pin);
      if (pin.hash === hash) continue;
      const exposed = this.exposedName(source.name, tool.name);
      const existing = await this.state.get(QUARANTINE, key);
      if (existing !== undefined && (JSON.parse(existing) as Quarantined).seen.hash === hash) continue;
      const diff = descriptorDiff(pin.descriptor, tool);
      const record: Quarantined = { tool: exposed, connector: source.name, pinned: pin, seen: { hash, descriptor: tool }, diff, since: new Date().toISOString() };
      await this.state.set(QUARANTINE, key, JSON.stringify(record));
      this.log.warn({ tool: exposed, pinned: pin.hash, seen: hash, diff }, 'tool descriptor changed since it was pinned: quarantined until reviewed (bastion tools review)');
      await this.audit({ event: 'descriptor.quarantined', tool: exposed, outcome: 'info', detail: { pinned: pin.hash, seen: hash, diff } });
    }
  }

  /** Loads every pin, so status() answers from the start. */
  async load(): Promise<void> {
    this.pins = new Map((await this.state.entries(PINS)).map(([key, text]) => [key, JSON.parse(text) as Pin]));
  }

  async quarantined(): Promise<Quarantined[]> {
    return (await this.state.entries(QUARANTINE)).map(([, text]) => JSON.parse(text) as Quarantined);
  }

  /** Re-pins a quarantined tool to the descriptor it now has. Returns the record, or undefined if not quarantined. */
  async approve(tool: string, operator: string): Promise<Quarantined | undefined> {
    const record = (await this.quarantined()).find((q) => q.tool === tool);
    if (!record) return undefined;
    const key = DescriptorPins.key(record.connector, record.seen.descriptor.name);
    const pin: Pin = { hash: record.seen.hash, descriptor: record.seen.descriptor, pinned_at: new Date().toISOString() };
    await this.state.set(PINS, key, JSON.stringify(pin));
    await this.state.delete(QUARANTINE, key);
    this.pins.set(key, pin);
    await this.audit({ event: 'descriptor.approved', tool, outcome: 'info', detail: { hash: pin.hash, operator, diff: record.diff } });
    return record;
  }
}
