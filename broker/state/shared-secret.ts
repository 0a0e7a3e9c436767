/**
 * A secret every replica shares, kept behind the state interface: the first
 * replica to ask generates it and stores it with compare-and-set; every
 * other (and every restart) reads the same one. It keys what one replica
 * seals and another opens (an approval pickup's requestState), so no
 * request needs to come back to the replica that answered it.
 *
 * Whoever can write the state store can already approve parked calls; the
 * secret adds nothing an attacker there lacks, and never leaves the broker.
 *
 * @example
 *   const secret = await sharedSecret(state, 'request-state');
 *   const sealer = RequestStateSealer.fromSecret(secret, 'approval');
 */
import { randomBytes } from 'node:crypto';
import type { StateStore } from './store.ts';

const SECRETS = 'shared-secrets';

/** The 32-byte secret named `name`, created on first use and the same on every replica. */
export async function sharedSecret(state: Pick<StateStore, 'get' | 'compareAndSet'>, name: string): Promise<Uint8Array> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const stored = await state.get(SECRETS, name);
    if (stored !== undefined) {
      const bytes = Buffer.from(stored, 'base64url');
      if (bytes.length !== 32) throw new Error(`shared secret ${name} in the state store is corrupt (${bytes.length} bytes)`);
      return new Uint8Array(bytes);
    }
    // Another replica may create it at the same moment: only one write wins, and both read it back.
    await state.compareAndSet(SECRETS, name, undefined, randomBytes(32).toString('base64url'));
  }
  throw new Error(`shared secret ${name}: the state store neither kept nor returned it`);
}
