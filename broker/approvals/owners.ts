/**
 * Which broker process holds a parked call's agent connection, and whether
 * it is still alive. A parked call can only ever run in the process that
 * parked it (the agent's connection lives there), so a record whose owner
 * is gone can never run, and approving it must not say `approved`.
 *
 * Owners are named `<replica>#<epoch>`. On start a process increments its
 * replica's epoch in the state store (compare-and-set), which fences every
 * earlier process of that replica at once: a restarted broker knows its
 * predecessor is dead without waiting for its heartbeat to lapse, and a
 * predecessor that is somehow still running (paused, partitioned) finds
 * itself superseded and refuses to run anything. Owners of other replicas
 * count as alive while their heartbeat (a key with a short TTL, renewed
 * every third of it) is fresh.
 *
 * With the embedded store the state belongs to one process alone (the state
 * folder's lock refuses a second): every owner other than this process is
 * dead, whatever its heartbeat says.
 *
 * @example
 *   const owners = new ApprovalOwners({ state, replica: 'replica-a', log });
 *   await owners.start();                    // owner 'replica-a#7'; 'replica-a#6' is dead from now on
 *   await owners.isAlive('replica-b#3');      // true while replica-b#3 beats
 */
import type { Logger } from '../log.ts';
import type { StateStore } from '../state/store.ts';

const HEARTBEATS = 'approval-owners';
const EPOCHS = 'approval-epochs';
export const OWNER_TTL_MS = 30_000;

export interface ApprovalOwnersOptions {
  state: StateStore;
  /** Stable across restarts of the same broker (config replica_id, or the state folder). */
  replica: string;
  log: Logger;
  /** The state store is this process's alone (embedded, under the state folder's lock). */
  sole?: boolean;
}

/** Splits `replica#epoch`; undefined for owner names of another form (records from older versions). */
export function parseOwner(owner: string): { replica: string; epoch: number } | undefined {
  const at = owner.lastIndexOf('#');
  const epoch = Number(owner.slice(at + 1));
  if (at <= 0 || !/^\d+$/.test(owner.slice(at + 1)) || !Number.isSafeInteger(epoch)) return undefined;
  return { replica: owner.slice(0, at), epoch };
}

export class ApprovalOwners {
  private readonly options: ApprovalOwnersOptions;
  private epoch = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private superseded = false;

  constructor(options: ApprovalOwnersOptions) {
    this.options = options;
  }

  /** This process as an owner (epoch 0, which no record carries, before start()). */
  get self(): string {
    return `${this.options.replica}#${this.epoch}`;
  }

  /** Takes the next epoch of this replica (fencing every earlier process of it) and starts beating. */
  async start(): Promise<void> {
    const { state, replica } = this.options;
    for (let attempt = 0; ; attempt++) {
      const current = await state.get(EPOCHS, replica);
      const next = (current === undefined ? 0 : Number(current)) + 1;
      if (!Number.isSafeInteger(next) || next < 1) throw new Error(`approval epoch of replica ${replica} is corrupt: ${current}`);
      if (await state.compareAndSet(EPOCHS, replica, current, String(next))) {
        this.epoch = next;
        break;
      }
      if (attempt === 20) throw new Error(`approval epoch of replica ${replica}: too many concurrent starts`);
    }
    await this.beat();
    this.heartbeat = setInterval(() => void this.beat().catch((e: Error) => this.options.log.warn({ err: e.message }, 'approval heartbeat failed')), OWNER_TTL_MS / 3);
    this.heartbeat.unref();
  }

  private async beat(): Promise<void> {
    if (!(await this.current())) {
      if (!this.superseded) {
        this.superseded = true;
        this.options.log.error(
          { replica: this.options.replica, epoch: this.epoch },
          'another broker process started with the same replica id: this one is fenced and will run no approved call',
        );
      }
      return;
    }
    await this.options.state.set(HEARTBEATS, this.self, '1', OWNER_TTL_MS);
  }

  /** False once a newer process of the same replica has started (this one is fenced). */
  async current(): Promise<boolean> {
    if (this.epoch === 0) return false;
    const { state, replica } = this.options;
    for (let attempt = 0; attempt < 20; attempt++) {
      const stored = await state.get(EPOCHS, replica);
      if (stored !== undefined && Number(stored) >= this.epoch) return Number(stored) === this.epoch;
      // The store forgot the epoch (a Redis restarted empty) or went back in time: claim it back,
      // unless a newer process wrote one meanwhile (the next round sees it).
      if (await state.compareAndSet(EPOCHS, replica, stored, String(this.epoch))) return true;
    }
    throw new Error(`approval epoch of replica ${replica}: too many concurrent writes`);
  }

  /** Whether `owner` (another process) may still hold a live agent connection. */
  async isAlive(owner: string): Promise<boolean> {
    if (this.options.sole) return false;
    const parsed = parseOwner(owner);
    if (parsed) {
      const epoch = await this.options.state.get(EPOCHS, parsed.replica);
      // A newer process of that replica started: this owner is fenced, alive or not.
      if (epoch !== undefined && Number(epoch) > parsed.epoch) return false;
    }
    return (await this.options.state.get(HEARTBEATS, owner)) !== undefined;
  }

  async stop(): Promise<void> {
    clearInterval(this.heartbeat);
    if (this.epoch !== 0) await this.options.state.delete(HEARTBEATS, this.self).catch(() => false);
  }
}
