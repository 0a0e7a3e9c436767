/**
 * The MCP sessions an HTTP front door holds: by id for routing, and a count
 * per owner for the sessions-per-principal cap, kept as the sessions come and
 * go so checking the cap costs the same however many sessions a principal
 * holds.
 *
 * A session takes its owner's place from the moment its initialize request
 * is admitted, so concurrent initializes cannot overshoot the cap, but is
 * entered by id (routable, swept when idle) only once the initialize was
 * answered. An opening that fails gives its place back; nothing of it stays.
 *
 * @example
 *   const opening = table.open(owner);               // undefined: the owner is at the cap
 *   ...
 *   if (initialized) opening.enter(id, session); else opening.abandon();
 *   ...
 *   table.remove(id);                                // when the session closes
 */
export interface Opening<S> {
  /** Makes the session routable under `id`; false if the opening was abandoned meanwhile. */
  enter(id: string, session: S): boolean;
  /** Gives the place back, unless the session was entered (then remove() ends it). Idempotent. */
  abandon(): void;
}

export class SessionTable<S extends { owner: string }> {
  private readonly byId = new Map<string, S>();
  /** Sessions per owner, entered and opening. */
  private readonly held = new Map<string, number>();
  private readonly perOwner: number;

  constructor(perOwner: number) {
    this.perOwner = perOwner;
  }

  /** Takes a place for a session `owner` is opening; undefined when the owner holds `perOwner` already. */
  open(owner: string): Opening<S> | undefined {
    const held = this.heldBy(owner);
    if (held >= this.perOwner) return undefined;
    this.held.set(owner, held + 1);
    let state: 'opening' | 'entered' | 'abandoned' = 'opening';
    return {
      enter: (id, session) => {
        if (state !== 'opening') return false;
        state = 'entered';
        this.byId.set(id, session);
        return true;
      },
      abandon: () => {
        if (state !== 'opening') return;
        state = 'abandoned';
        this.release(owner);
      },
    };
  }

  get(id: string): S | undefined {
    return this.byId.get(id);
  }

  /** Ends an entered session and gives its place back; unknown ids are ignored. */
  remove(id: string): void {
    const session = this.byId.get(id);
    if (!session) return;
    this.byId.delete(id);
    this.release(session.owner);
  }

  /** Sessions `owner` holds, entered and opening. */
  heldBy(owner: string): number {
    return this.held.get(owner) ?? 0;
  }

  /** Entered sessions. */
  get size(): number {
    return this.byId.size;
  }

  values(): IterableIterator<S> {
    return this.byId.values();
  }

  private release(owner: string): void {
    const held = this.heldBy(owner) - 1;
    if (held > 0) this.held.set(owner, held);
    else this.held.delete(owner);
  }
}
