/**
 * What Bastion keeps about each grant the authorization server made (one per
 * consent, keyed by oidc-provider's grantId, behind the state interface):
 * who signed in, what they consented to, and the IdP's refresh token that
 * lets a refresh learn the user's groups as they are now. A subject index
 * lets `bastion token revoke --sub` end every grant of a user.
 *
 * @example
 *   await records.put(grantId, record, ttlMs);
 *   for (const grantId of await records.grantsOf('alice')) await provider.Grant.adapter.revokeByGrantId(grantId);
 */
import type { StateStore } from '../state/store.ts';
import type { Capability } from '../policy/schema.ts';
import type { GrantIdentity, GrantsInput } from './grants.ts';

export interface GrantRecord {
  identity: GrantIdentity;
  client: GrantsInput['client'];
  scopes: string[];
  /** Exactly what the consent page showed and the user approved: refresh never goes beyond it. */
  consented: Capability[];
  ttlMs: number;
  upstreamRefreshToken: string | undefined;
  /** Milliseconds since the epoch: the sign-in this family started from. */
  signedInAt: number;
  /** The access tokens issued from this family that may still be live, so revoking the family stops them too. */
  accessTokens?: { jti: string; exp: number }[];
}

const RECORDS = 'oauth:grant-record';
const SUBJECTS = 'oauth:subject-grants';

export class GrantRecords {
  private readonly state: StateStore;

  constructor(state: StateStore) {
    this.state = state;
  }

  async get(grantId: string): Promise<GrantRecord | undefined> {
    const value = await this.state.get(RECORDS, grantId);
    return value === undefined ? undefined : (JSON.parse(value) as GrantRecord);
  }

  async put(grantId: string, record: GrantRecord, ttlMs: number): Promise<void> {
    await this.state.set(RECORDS, grantId, JSON.stringify(record), ttlMs);
    for (let attempt = 0; attempt < 16; attempt++) {
      const current = await this.state.get(SUBJECTS, record.identity.sub);
      const grants = new Set(current ? (JSON.parse(current) as string[]) : []);
      if (grants.has(grantId)) return;
      grants.add(grantId);
      if (await this.state.compareAndSet(SUBJECTS, record.identity.sub, current, JSON.stringify([...grants]), ttlMs)) return;
    }
    throw new Error(`the grants of ${record.identity.sub} are too contended to record one more`);
  }

  /** Remembers an access token issued from the family (expired ones are dropped). */
  async noteAccessToken(grantId: string, token: { jti: string; exp: number }, ttlMs: number): Promise<void> {
    for (let attempt = 0; attempt < 16; attempt++) {
      const current = await this.state.get(RECORDS, grantId);
      if (current === undefined) return;
      const record = JSON.parse(current) as GrantRecord;
      const now = Date.now() / 1000;
      record.accessTokens = [...(record.accessTokens ?? []).filter((t) => t.exp > now), token];
      if (await this.state.compareAndSet(RECORDS, grantId, current, JSON.stringify(record), ttlMs)) return;
    }
    throw new Error(`grant ${grantId} is too contended to note a token`);
  }

  async delete(grantId: string): Promise<void> {
    await this.state.delete(RECORDS, grantId);
  }

  /** Every grant made to `sub` that may still be live. */
  async grantsOf(sub: string): Promise<string[]> {
    const current = await this.state.get(SUBJECTS, sub);
    return current ? (JSON.parse(current) as string[]) : [];
  }
}
