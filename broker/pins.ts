/**
 * Descriptor pinning against rug pulls: on first sight Bastion pins each
 * upstream tool's descriptor, every field an agent is shown (name, title,
 * description, schemas, annotations, `_meta`, icons, …). A later change
 * quarantines the tool: it disappears from `tools/list` and calls are
 * refused until an operator reviews the diff and re-pins it. Pins live
 * behind the state interface, so every replica agrees.
 *
 * A tool seen for the first time whose name looks like another exposed
 * name, or hides characters (filters/names.ts), is not pinned but held the
 * same way, its findings in place of a diff.
 *
 * Pins written before format 2 hashed only name, title, description,
 * schemas and annotations. Such a pin whose tool still has that old hash is
 * re-pinned under the new hash on the next reconcile (audited as
 * `descriptor.pin_upgraded`), so an upgrade quarantines nothing that did not
 * change in what the old pin covered; what it did not cover (`_meta`) is
 * pinned as it is at that moment.
 *
 * @example
 *   await pins.reconcile(connector);               // after a catalog (re)load
 *   pins.status('demo', tool, hash);               // 'pinned' | 'new' | 'quarantined'
 *   await pins.approve('demo__read_file');         // operator re-pins after review
 */
import type { Tool } from '@modelcontextprotocol/server';
import { canonicalJson, type AuditEvent } from './audit/chain.ts';
import { nameFindings } from './filters/names.ts';
import type { Logger } from './log.ts';
import type { StateStore } from './state/store.ts';

const PINS = 'descriptor-pins';
const QUARANTINE = 'descriptor-quarantine';
/** Fields listed first in a diff; any other field (`_meta`, icons, …) follows in name order. */
const FIELDS = ['name', 'title', 'description', 'inputSchema', 'outputSchema', 'annotations', '_meta'];
/** The pin format this version writes: its hash covers every field of the descriptor. */
const PIN_FORMAT = 2;

export interface Pin {
  hash: string;
  descriptor: Tool;
  pinned_at: string;
  /** 2: `hash` is over the whole descriptor. Absent: written before version 2 (see legacyHashOf). */
  format?: number;
}

export interface Quarantined {
  /** The tool's name as agents see it. */
  tool: string;
  connector: string;
  /** Absent when the tool was held on first sight (its name), before any pin. */
  pinned?: Pin;
  seen: { hash: string; descriptor: Tool };
  diff: string[];
  since: string;
}

/** Field-level diff of two descriptors (every field), values shortened for a log line. */
export function descriptorDiff(before: Tool | undefined, after: Tool): string[] {
  const short = (value: unknown) => {
    const text = value === undefined ? '(absent)' : canonicalJson(value);
    return text.length > 400 ? `${text.slice(0, 400)}…` : text;
  };
  const fields = new Set([...Object.keys(before ?? {}), ...Object.keys(after)]);
  const ordered = [...FIELDS.filter((f) => fields.has(f)), ...[...fields].filter((f) => !FIELDS.includes(f)).sort()];
  const lines: string[] = [];
  for (const field of ordered) {
    const a = (before as Record<string, unknown> | undefined)?.[field];
    const b = (after as Record<string, unknown>)[field];
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
  private readonly legacyHashOf: ((tool: Tool) => string) | undefined;
  private readonly exposedName: (connector: string, tool: string) => string;
  private readonly exposedNames: () => Iterable<string>;
  private pins = new Map<string, Pin>();
  /** Tools held on first sight (a look-alike name) until an operator approves them: no pin yet, not served. */
  private held = new Set<string>();
  /** Connectors whose last reconcile failed (state unavailable): their unpinned tools are held back, not served. */
  private readonly unverified = new Set<string>();

  constructor(options: {
    state: StateStore;
    log: Logger;
    audit: (event: AuditEvent) => Promise<void>;
    hashOf: (tool: Tool) => string;
    /** The hash pins had before format 2; such pins are upgraded when the tool still matches them. */
    legacyHashOf?: (tool: Tool) => string;
    exposedName: (connector: string, tool: string) => string;
    /** Every name agents are shown now, by any source (plugins included): what a new name must not look like. */
    exposedNames?: () => Iterable<string>;
  }) {
    this.state = options.state;
    this.log = options.log;
    this.audit = options.audit;
    this.hashOf = options.hashOf;
    this.legacyHashOf = options.legacyHashOf;
    this.exposedName = options.exposedName;
    this.exposedNames = options.exposedNames ?? (() => []);
  }

  private static key(connector: string, tool: string): string {
    return `${connector}|${tool}`;
  }

  /**
   * Whether this descriptor matches its pin; synchronous, from the cache
   * reconcile keeps. A pin of the old format matches when `descriptor`
   * still has the old hash (reconcile then upgrades it).
   */
  status(connector: string, tool: string, hash: string, descriptor?: Tool): 'pinned' | 'new' | 'quarantined' {
    const key = DescriptorPins.key(connector, tool);
    const pin = this.pins.get(key);
    // Fail closed: a tool that could not be pinned, or was held for its name, is not served as if it were new.
    if (!pin) return this.held.has(key) || this.unverified.has(connector) ? 'quarantined' : 'new';
    if (pin.format === PIN_FORMAT) return pin.hash === hash ? 'pinned' : 'quarantined';
    return descriptor && this.legacyHashOf?.(descriptor) === pin.hash ? 'pinned' : 'quarantined';
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
    const known = new Set([...this.pins.keys()].map((key) => this.exposedName(key.slice(0, key.indexOf('|')), key.slice(key.indexOf('|') + 1))));
    for (const name of this.exposedNames()) known.add(name);
    for (const tool of source.catalog.tools) {
      const key = DescriptorPins.key(source.name, tool.name);
      const hash = this.hashOf(tool);
      const exposed = this.exposedName(source.name, tool.name);
      const stored = await this.state.get(PINS, key);
      if (stored === undefined) {
        const findings = nameFindings(exposed, known);
        known.add(exposed);
        if (findings.length > 0) {
          await this.hold(source.name, key, exposed, tool, hash, findings);
          continue;
        }
        const pin: Pin = { hash, descriptor: tool, pinned_at: new Date().toISOString(), format: PIN_FORMAT };
        // First sight wins once, even when several replicas see the tool at the same moment.
        if (await this.state.compareAndSet(PINS, key, undefined, JSON.stringify(pin))) {
          this.pins.set(key, pin);
          await this.audit({ event: 'descriptor.pinned', tool: exposed, outcome: 'info', detail: { hash } });
          continue;
        }
      }
      const text = (await this.state.get(PINS, key)) ?? 'null';
      let pin = JSON.parse(text) as Pin | null;
      if (!pin) continue;
      if (pin.format !== PIN_FORMAT && this.legacyHashOf?.(tool) === pin.hash) pin = await this.upgrade(key, exposed, text, pin, tool, hash);
      this.pins.set(key, pin);
      if (pin.hash === hash) continue;
      const existing = await this.state.get(QUARANTINE, key);
      if (existing !== undefined && this.hashOf((JSON.parse(existing) as Quarantined).seen.descriptor) === hash) continue;
      const diff = descriptorDiff(pin.descriptor, tool);
      const record: Quarantined = { tool: exposed, connector: source.name, pinned: pin, seen: { hash, descriptor: tool }, diff, since: new Date().toISOString() };
      await this.state.set(QUARANTINE, key, JSON.stringify(record));
      this.log.warn({ tool: exposed, pinned: pin.hash, seen: hash, diff }, 'tool descriptor changed since it was pinned: quarantined until reviewed (bastion tools review)');
      await this.audit({ event: 'descriptor.quarantined', tool: exposed, outcome: 'info', detail: { pinned: pin.hash, seen: hash, diff } });
    }
  }

  /**
   * A pin written before format 2 whose tool still has the old hash: nothing
   * the old pin covered has changed, so it is re-pinned under the new hash
   * (which also covers `_meta` and every other field, as they are now).
   */
  private async upgrade(key: string, exposed: string, stored: string, pin: Pin, tool: Tool, hash: string): Promise<Pin> {
    const upgraded: Pin = { hash, descriptor: tool, pinned_at: pin.pinned_at, format: PIN_FORMAT };
    // Another replica may upgrade the same pin at the same moment: whichever wrote first, the result is the same.
    if (await this.state.compareAndSet(PINS, key, stored, JSON.stringify(upgraded))) {
      await this.audit({ event: 'descriptor.pin_upgraded', tool: exposed, outcome: 'info', detail: { from: pin.hash, to: hash, format: PIN_FORMAT } });
      return upgraded;
    }
    return (JSON.parse((await this.state.get(PINS, key)) ?? 'null') as Pin | null) ?? upgraded;
  }

  /** Holds a tool seen for the first time whose name looks like another's (or hides characters): not pinned, not served. */
  private async hold(connector: string, key: string, exposed: string, tool: Tool, hash: string, findings: { kind: string; detail: string }[]): Promise<void> {
    this.held.add(key);
    const existing = await this.state.get(QUARANTINE, key);
    if (existing !== undefined && this.hashOf((JSON.parse(existing) as Quarantined).seen.descriptor) === hash) return;
    const diff = findings.map((f) => `! name (${f.kind}): ${f.detail}`);
    const record: Quarantined = { tool: exposed, connector, seen: { hash, descriptor: tool }, diff, since: new Date().toISOString() };
    await this.state.set(QUARANTINE, key, JSON.stringify(record));
    this.log.warn({ tool: exposed, connector, findings }, 'tool name looks like another tool\'s or hides characters: held until reviewed (bastion tools review)');
    await this.audit({ event: 'descriptor.quarantined', tool: exposed, outcome: 'info', detail: { reason: 'suspicious_name', seen: hash, findings } });
  }

  /** Loads every pin and hold, so status() answers from the start. */
  async load(): Promise<void> {
    this.pins = new Map((await this.state.entries(PINS)).map(([key, text]) => [key, JSON.parse(text) as Pin]));
    this.held = new Set((await this.state.entries(QUARANTINE)).map(([key]) => key).filter((key) => !this.pins.has(key)));
  }

  async quarantined(): Promise<Quarantined[]> {
    return (await this.state.entries(QUARANTINE)).map(([, text]) => JSON.parse(text) as Quarantined);
  }

  /** Re-pins a quarantined tool to the descriptor it now has. Returns the record, or undefined if not quarantined. */
  async approve(tool: string, operator: string): Promise<Quarantined | undefined> {
    const record = (await this.quarantined()).find((q) => q.tool === tool);
    if (!record) return undefined;
    const key = DescriptorPins.key(record.connector, record.seen.descriptor.name);
    // The hash is computed afresh: a record written by an older version may carry an old-format hash.
    const pin: Pin = { hash: this.hashOf(record.seen.descriptor), descriptor: record.seen.descriptor, pinned_at: new Date().toISOString(), format: PIN_FORMAT };
    await this.state.set(PINS, key, JSON.stringify(pin));
    await this.state.delete(QUARANTINE, key);
    this.pins.set(key, pin);
    this.held.delete(key);
    await this.audit({ event: 'descriptor.approved', tool, outcome: 'info', detail: { hash: pin.hash, operator, diff: record.diff } });
    return { ...record, seen: { ...record.seen, hash: pin.hash } };
  }
}
