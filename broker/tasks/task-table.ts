/**
 * Bastion's tasks (MCP 2025-11-25 task-augmented `tools/call`): each one an
 * opaque id Bastion made, bound to the principal that created it and mapped
 * to the upstream task behind it.
 *
 * The agent never sees the upstream's taskId: two connectors, or two agent
 * connections to one server, may hand out the same one, and an id the agent
 * could guess would let it probe other agents' tasks. Bastion's id is 128
 * random bits. A lookup by another principal finds nothing, exactly as for
 * an id that never existed (no existence oracle).
 *
 * The table is this process's memory, on purpose: an upstream task lives in
 * one upstream session, reached only through the agent's own upstream
 * connection, which this process holds (connectors/agent-sessions.ts); a
 * replica holding the id could not reach the task. It is bounded per
 * principal (config `tasks.max_per_principal`), and every entry expires (the
 * upstream's ttl, capped at `tasks.max_ttl`), so no principal can grow it without bound or
 * starve another.
 *
 * @example
 *   const table = new TaskTable({ maxPerPrincipal: 32, maxTtlMs: 3_600_000 });
 *   const record = table.add({ owner, connector: 'everything', connection, session, upstreamId, tool, argsHash, ttlMs, filtering });
 *   table.find(owner, record.id);   // undefined for anyone else
 */
import { randomBytes } from 'node:crypto';
import { Denial } from '../errors.ts';
import type { Decision } from '../policy/schema.ts';
import type { PreparedFlow } from '../flows/control.ts';

export interface TaskOwner {
  iss: string;
  sub: string;
}

/** How the task's final result is filtered and recorded, decided when the call was authorized. */
export interface TaskFiltering {
  obligations: Decision['obligations'];
  flow?: { prepared: PreparedFlow; decided: Decision['flow'] };
}

export interface TaskRecord {
  /** Bastion's id, the only one the agent sees. */
  id: string;
  owner: TaskOwner;
  connector: string;
  /** The agent upstream connection that holds the upstream task. */
  connection: string;
  /** The agent session that created it. */
  session: string;
  upstreamId: string;
  /** The exposed tool name, and its arguments (re-checked by policy when the result is fetched). */
  tool: string;
  args: Record<string, unknown>;
  argsHash: string | undefined;
  createdAt: number;
  expiresAt: number;
  filtering: TaskFiltering;
}

export interface TaskTableOptions {
  maxPerPrincipal: number;
  maxTtlMs: number;
  now?: () => number;
}

export const DEFAULT_TASK_LIMITS = { maxPerPrincipal: 32, maxTtlMs: 60 * 60_000 };

function ownerKey(owner: TaskOwner): string {
  return JSON.stringify([owner.iss, owner.sub]);
}

export class TaskTable {
  private readonly options: TaskTableOptions;
  private readonly now: () => number;
  private readonly byId = new Map<string, TaskRecord>();

  constructor(options: TaskTableOptions = DEFAULT_TASK_LIMITS) {
    this.options = options;
    this.now = options.now ?? Date.now;
  }

  /** Refuses (limit stage) before an upstream task is made when this principal already holds its share. */
  checkCapacity(owner: TaskOwner): void {
    this.sweep();
    const held = this.list(owner).length;
    if (held >= this.options.maxPerPrincipal) {
      throw new Denial('limit', 'BASTION_TASKS_FULL', `this principal holds ${held} tasks (limit ${this.options.maxPerPrincipal}); wait for some to expire or fetch their results first`);
    }
  }

  /** Records an upstream task under a new opaque id; `ttlMs` is the upstream's (null: unlimited), capped. */
  add(entry: Omit<TaskRecord, 'id' | 'createdAt' | 'expiresAt'> & { ttlMs: number | null | undefined }): TaskRecord {
    this.checkCapacity(entry.owner);
    const { ttlMs, ...rest } = entry;
    const now = this.now();
    const ttl = Math.min(typeof ttlMs === 'number' && ttlMs > 0 ? ttlMs : this.options.maxTtlMs, this.options.maxTtlMs);
    const record: TaskRecord = { ...rest, id: `bastion-task-${randomBytes(16).toString('base64url')}`, createdAt: now, expiresAt: now + ttl };
    this.byId.set(record.id, record);
    return record;
  }

  /** The task with this id if `owner` made it and it has not expired; undefined otherwise, whatever the reason. */
  find(owner: TaskOwner, id: string): TaskRecord | undefined {
    const record = this.byId.get(id);
    if (!record) return undefined;
    if (record.expiresAt <= this.now()) {
      this.byId.delete(id);
      return undefined;
    }
    return ownerKey(record.owner) === ownerKey(owner) ? record : undefined;
  }

  /** Whether the id names a live task of some other principal (for the audit trail only, never for the agent). */
  heldByAnother(owner: TaskOwner, id: string): boolean {
    const record = this.byId.get(id);
    return !!record && record.expiresAt > this.now() && ownerKey(record.owner) !== ownerKey(owner);
  }

  /** This principal's live tasks, oldest first. */
  list(owner: TaskOwner): TaskRecord[] {
    const key = ownerKey(owner);
    const now = this.now();
    return [...this.byId.values()].filter((r) => r.expiresAt > now && ownerKey(r.owner) === key);
  }

  /** The record behind an upstream task on one agent connection (for its status notifications). */
  byUpstream(connector: string, connection: string, upstreamId: string): TaskRecord | undefined {
    const now = this.now();
    for (const record of this.byId.values()) {
      if (record.expiresAt > now && record.connector === connector && record.connection === connection && record.upstreamId === upstreamId) return record;
    }
    return undefined;
  }

  remove(id: string): void {
    this.byId.delete(id);
  }

  /** The longest any task is kept. */
  get maxTtlMs(): number {
    return this.options.maxTtlMs;
  }

  get size(): number {
    return this.byId.size;
  }

  private sweep(): void {
    const now = this.now();
    for (const [id, record] of this.byId) if (record.expiresAt <= now) this.byId.delete(id);
  }
}
