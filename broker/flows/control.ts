/**
 * Flow control's two steps in the pipeline, and the operator's view of it.
 *
 *   prepare (before authorize)  reads the agent's flow and builds
 *                               `input.flow`: the labels in its context with
 *                               their sources, this call's labels and egress
 *                               destinations, and the arguments whose values
 *                               came from untrusted content
 *   record  (after filter)      adds what the result brings: the tool's
 *                               result labels (as the decision states them),
 *                               `untrusted` when the injection filter flagged
 *                               it, and the hashed value units for provenance
 *
 * A flow belongs to the agent's identity, never to a transport session: the
 * key is `<iss>|<sub>` of the root principal. A token delegated by this
 * broker (issuer `delegationIssuer`) is linked at delegation time to its
 * parent's flow and shares it, so a sub-agent starts where its parent is
 * and what it reads taints the family; a token whose `act` chain comes from
 * another issuer shares the flow of the chain's root subject at that issuer.
 *
 * Values the principal supplied: the arguments of calls made while the flow
 * held no untrusted content. Those, and the units of results without the
 * `untrusted` label, are the trusted side of provenance. While a flow is
 * still clean they are kept on this replica only (bounded), and written
 * with the index when the first untrusted content arrives; what another
 * replica saw is then unknown here, which can only make a value look
 * tainted, never clean.
 *
 * @example
 *   const flows = new FlowControl({ state, settings: config.flows, delegationIssuer, log });
 *   await flows.start();
 *   const prepared = await flows.prepare(principal, { name: 'mail__send_email', flow }, args);
 *   // … decide with input.flow = prepared.input, run, filter …
 *   const detail = await flows.record(prepared, decision.flow, filteredResult, report.flags);
 */
import { randomBytes } from 'node:crypto';
import type { Principal } from '../auth/verify.ts';
import type { Logger } from '../log.ts';
import type { StateStore } from '../state/store.ts';
import { visible } from '../filters/text.ts';
import { egressTargets } from './egress.ts';
import type { ToolFlow } from './labels.ts';
import { CONTEXT_LABELS, type ContextLabel, type FlowDecision, type FlowInput, type TaintedArgument } from './schema.ts';
import { addSource, hasLabel, hasUntrustedUnits, holds, newSourceNumber, sourceId, taintOf, type FlowCore, type FlowLimits, type ProvenanceIndex } from './state.ts';
import { FlowStore, Lru } from './store.ts';
import { argumentUnits, hashUnit, resultStrings, resultUnits, type ArgumentUnits, type ValueUnit } from './values.ts';
import { createInjectionScanner } from '../filters/injection.ts';

export interface FlowSettings {
  enabled: boolean;
  /** A flow is forgotten this long after its last change (ms). */
  retention: number;
  max_sources: number;
  max_units: number;
  /** Value units taken from one result. */
  max_units_per_result: number;
}

export interface FlowControlOptions {
  state: StateStore;
  settings: FlowSettings;
  /** Issuer of the tokens this broker delegates; their flows come from the link made at delegation. */
  delegationIssuer?: string | undefined;
  log: Logger;
  now?: () => Date;
}

/** A tool as flow control sees it. */
export interface FlowTool {
  name: string;
  flow: ToolFlow;
}

/** What prepare learned, handed to record (and to the explanation). */
export interface PreparedFlow {
  key: string;
  tool: FlowTool;
  /** The flow as it stood before this call. */
  core: FlowCore | undefined;
  input: FlowInput;
  argUnits: ArgumentUnits[];
  /** Correlates this call's audit record with the source it may become. */
  call: string;
}

/** What record adds to the call's audit record (`detail.flow`). */
export interface FlowRecord {
  key: string;
  call: string;
  /** The source this result became, with the labels it brought; absent when it brought none. */
  source?: string;
  labels?: ContextLabel[];
  reason?: string;
  /** The source was already listed (the same tool brought the same labels before): this call added units only. */
  repeated?: boolean;
}

/** A flag from the result filter: what raised `untrusted`, and where in the delivered result it is. */
export interface RaisingFlag {
  kind: string;
  detail: string;
  /** JSON pointer to the flagged string in the result the agent receives. */
  where?: string;
  /** UTF-16 offset of the finding in that string. */
  index?: number;
}

/** Trusted units kept per clean flow on this replica, and clean flows kept. */
const PENDING_UNITS = 1024;
const PENDING_FLOWS = 2048;
/** Argument leaves traced per call. */
const MAX_TRACED_ARGUMENTS = 64;

const isContextLabel = (label: string): label is ContextLabel => (CONTEXT_LABELS as readonly string[]).includes(label);

export class FlowControl {
  readonly store: FlowStore;
  readonly settings: FlowSettings;
  private readonly delegationIssuer: string | undefined;
  private readonly log: Logger;
  private readonly now: () => Date;
  private readonly pending = new Lru<string, Set<number>>(PENDING_FLOWS);
  private readonly scanner = createInjectionScanner({ maxFlags: 8 });
  private seed: number | undefined;

  constructor(options: FlowControlOptions) {
    const limits: FlowLimits = { maxSources: options.settings.max_sources, maxUnits: options.settings.max_units };
    this.store = new FlowStore({ state: options.state, retentionMs: options.settings.retention, limits });
    this.settings = options.settings;
    this.delegationIssuer = options.delegationIssuer;
    this.log = options.log;
    this.now = options.now ?? (() => new Date());
  }

  async start(): Promise<void> {
    this.seed = await this.store.seed();
  }

  private hash(units: readonly ValueUnit[]): number[] {
    if (this.seed === undefined) throw new Error('flow control is not started');
    const seed = this.seed;
    return units.map((unit) => hashUnit(unit, seed));
  }

  /**
   * The flow a principal's calls belong to. A token delegated by this
   * broker without a recorded link is refused: its parent's flow is
   * unknown, and a fresh one would launder it.
   */
  async keyOf(principal: Pick<Principal, 'iss' | 'sub' | 'act' | 'jti'>): Promise<string> {
    if (principal.act.length === 0) return flowKey(principal.iss, principal.sub);
    if (principal.iss === this.delegationIssuer) {
      const parent = await this.store.linked(flowKey(principal.iss, principal.jti));
      if (parent === undefined) throw new FlowUnknown(`no flow is recorded for delegated token ${principal.jti}; its parent's flow cannot be followed`);
      return parent;
    }
    return flowKey(principal.iss, principal.act[principal.act.length - 1]!.sub);
  }

  /** Links a token this broker just delegated to its parent's flow, for as long as the token lives. */
  async linkDelegation(parent: Principal, child: { iss: string; jti: string; exp: number }): Promise<void> {
    const ttlMs = Math.max(1_000, child.exp * 1000 - this.now().getTime() + 60_000);
    await this.store.link(flowKey(child.iss, child.jti), await this.keyOf(parent), ttlMs);
  }

  /** Before authorize: this call's `input.flow`. */
  async prepare(principal: Principal, tool: FlowTool, args: Record<string, unknown>): Promise<PreparedFlow> {
    const key = await this.keyOf(principal);
    const core = await this.store.core(key);
    const now = this.now().getTime();
    const argUnits = argumentUnits(args).slice(0, MAX_TRACED_ARGUMENTS);
    const tainted = hasLabel(core, 'untrusted') && argUnits.length > 0 ? await this.trace(key, core!, argUnits) : [];
    return {
      key,
      tool,
      core,
      argUnits,
      call: randomBytes(8).toString('hex'),
      input: {
        labels: core ? { ...core.labels } : {},
        sources: core ? core.sources.map((source) => ({ ...source, age_s: Math.max(0, Math.floor((now - Date.parse(source.at)) / 1000)) })) : [],
        tool: { labels: tool.flow.labels, egress: egressTargets(args, tool.flow.egress) },
        arguments: tainted,
      },
    };
  }

  /** Argument leaves whose values came from untrusted content and from nothing trusted. */
  private async trace(key: string, core: FlowCore, argUnits: ArgumentUnits[]): Promise<TaintedArgument[]> {
    const index = await this.store.index(key, core);
    if (!hasUntrustedUnits(index)) return [];
    const pending = this.pending.get(key);
    const tainted: TaintedArgument[] = [];
    for (const leaf of argUnits) {
      const hashes = this.hash(leaf.units);
      for (let at = 0; at < hashes.length; at++) {
        const source = pending?.has(hashes[at]!) ? undefined : taintOf(index, hashes[at]!);
        if (source === undefined) continue;
        const unit = leaf.units[at]!;
        tainted.push({ argument: leaf.argument, kind: unit.kind, value: visible(unit.value, 200), sources: [sourceId(source)] });
        break;
      }
    }
    return tainted;
  }

  /**
   * After filter: what this result brings into the flow. `decided` is the
   * decision's `flow` (the effective labels); `flags` are the injection
   * filter's findings on the result the agent receives.
   */
  async record(prepared: PreparedFlow, decided: FlowDecision | undefined, result: unknown, flags: readonly RaisingFlag[]): Promise<FlowRecord> {
    const labels = new Set<ContextLabel>((decided?.labels ?? prepared.tool.flow.labels).filter(isContextLabel));
    const reasons: string[] = [];
    if (labels.size > 0) reasons.push(`${labelOrigin(prepared.tool.flow, decided)}: ${CONTEXT_LABELS.filter((l) => labels.has(l)).join(', ')}`);
    const raising = flags.filter((f) => f.kind !== 'flags_truncated');
    if (raising.length > 0) {
      labels.add('untrusted');
      reasons.push(`the result filter flagged prompt-injection content (${[...new Set(raising.map((f) => f.kind))].sort().join(', ')})`);
    }
    const wasTainted = hasLabel(prepared.core, 'untrusted');
    // Arguments written while the flow was clean came from the principal (its task), not from an attacker.
    const suppliedHashes = wasTainted ? [] : this.hash(prepared.argUnits.flatMap((leaf) => leaf.units));
    const resultHashes = this.hash(resultUnits(result, this.settings.max_units_per_result));
    const base = { key: prepared.key, call: prepared.call };

    const now = this.now();
    // Units already in the index are not written again.
    const index = wasTainted || labels.has('untrusted') ? await this.store.index(prepared.key, prepared.core) : undefined;
    const fresh = (hashes: Iterable<number>, kind: 'untrusted' | 'trusted', from?: ProvenanceIndex) => [...new Set(hashes)].filter((h) => !from || !holds(from, kind, h));

    if (!labels.has('untrusted')) {
      // Trusted content. A clean flow keeps it here until it has to be written; a tainted one writes it now.
      if (wasTainted) {
        const hashes = fresh(resultHashes, 'trusted', index).slice(0, this.store.limits.maxUnits);
        if (hashes.length) await this.store.commit(prepared.key, [{ kind: 'trusted', hashes }], (core) => core, now);
      } else this.remember(prepared.key, [...suppliedHashes, ...resultHashes]);
      if (labels.size === 0) return base;
    }

    const sorted = CONTEXT_LABELS.filter((l) => labels.has(l));
    // The same tool bringing the same labels again is the source already listed (its first call keeps
    // the detail): a flow that keeps reading one mailbox or one file store writes nothing new but units.
    const again = prepared.core?.sources.findLast((s) => s.tool === prepared.tool.name && s.labels.join() === sorted.join() && (raising.length === 0 || s.excerpt !== undefined));
    const number = again ? Number.parseInt(again.id.slice(1), 36) : newSourceNumber();
    const id = sourceId(number);
    const reason = reasons.join('; ').slice(0, 512);
    const pieces = labels.has('untrusted')
      ? [
          // What the principal supplied (and trusted content seen while the flow was clean) goes in first.
          { kind: 'trusted' as const, hashes: fresh([...(this.pending.get(prepared.key) ?? []), ...suppliedHashes], 'trusted', index).slice(0, this.store.limits.maxUnits) },
          { kind: 'untrusted' as const, source: number, hashes: fresh(resultHashes, 'untrusted', index).slice(0, this.store.limits.maxUnits) },
        ]
      : [];
    const excerpt = raising[0] ? flaggedExcerpt(result, raising[0]) : undefined;
    const listed = (core: FlowCore) => core.sources.some((s) => s.id === id) && sorted.every((label) => core.labels[label]?.includes(id));
    const withSource = (core: FlowCore) =>
      again && listed(core) ? core : addSource(core, { id, tool: prepared.tool.name, labels: sorted, reason, call: prepared.call, ...(excerpt ? { excerpt } : {}) }, now, this.store.limits);
    // A repeated source with nothing new writes nothing, unless the flow lost it since (an operator's clear
    // while this call ran): content that arrives after a clear still counts.
    const unchanged = again && pieces.every((p) => p.hashes.length === 0) && (await this.store.core(prepared.key).then((core) => core !== undefined && listed(core)));
    if (!unchanged) await this.store.commit(prepared.key, pieces, withSource, now);
    if (labels.has('untrusted')) this.pending.delete(prepared.key);
    return { ...base, source: id, labels: sorted, reason, ...(again ? { repeated: true } : {}) };
  }

  /** Trusted units of a clean flow, kept on this replica until its first untrusted content. */
  private remember(key: string, hashes: number[]): void {
    if (hashes.length === 0) return;
    let set = this.pending.get(key);
    if (!set) this.pending.set(key, (set = new Set()));
    for (const hash of hashes) {
      if (set.has(hash)) continue;
      set.add(hash);
      if (set.size > PENDING_UNITS) set.delete(set.values().next().value as number);
    }
  }

  /**
   * A resource read or prompt: its labels come from the connector's config
   * (`labels.resources`, `labels.prompts`), raised to untrusted when the
   * injection scanner flags its text (the result filter does not see these).
   */
  async recordItem(principal: Principal, item: string, labels: readonly ContextLabel[], contents: unknown): Promise<FlowRecord> {
    const prepared = await this.prepare(principal, { name: item, flow: { labels: [...labels], egress: {}, origin: labels.length ? 'config' : 'none' } }, {});
    const flags: RaisingFlag[] = [];
    for (const text of resultStrings(contents)) {
      flags.push(...this.scanner.scan(text, 8));
      if (flags.length >= 8) break;
    }
    return this.record(prepared, undefined, contents, flags);
  }

  /** The flow's core, for operators. */
  show(key: string): Promise<FlowCore | undefined> {
    return this.store.core(key);
  }

  /** Forgets a flow entirely (operator action; the caller audits it). */
  async clear(key: string): Promise<FlowCore | undefined> {
    this.pending.delete(key);
    const cleared = await this.store.clear(key);
    this.log.info({ flow: key, had: cleared?.labels }, 'flow cleared');
    return cleared;
  }
}

/** The key of the flow of subject `sub` at issuer `iss`. */
export function flowKey(iss: string, sub: string): string {
  return `${iss}|${sub}`;
}

export class FlowUnknown extends Error {
  override readonly name = 'FlowUnknown';
}

/**
 * What approvers see of a flagged result: the text around the first finding
 * (so the instruction reads in its context), made visible and bounded; the
 * finding's own detail when the place cannot be found.
 */
export function flaggedExcerpt(result: unknown, flag: RaisingFlag): string {
  let node: unknown = result;
  for (const segment of (flag.where ?? '').split('/').slice(1)) {
    const key = segment.replaceAll('~1', '/').replaceAll('~0', '~');
    node = node !== null && typeof node === 'object' ? (node as Record<string, unknown>)[key] : undefined;
  }
  if (typeof node !== 'string' || flag.index === undefined || flag.index < 0 || flag.index > node.length) return visible(flag.detail, 300);
  const start = Math.max(0, flag.index - 80);
  const end = Math.min(node.length, start + 240);
  const shown = `${start > 0 ? '…' : ''}${visible(node.slice(start, end), 240)}${end < node.length ? '…' : ''}`;
  // Escaped invisible characters are longer than what they stand for: cut by code points, within the schema's bound.
  return Array.from(shown).slice(0, 390).join('');
}

function labelOrigin(flow: ToolFlow, decided: FlowDecision | undefined): string {
  const context = (labels: readonly string[]) => labels.filter(isContextLabel).sort().join();
  const same = !decided || context(decided.labels) === context(flow.labels);
  if (!same) return 'tool labels (policy data)';
  return flow.origin === 'annotations' ? 'tool labels (MCP annotations)' : 'tool labels (config)';
}
