/**
 * Sealed continuation state: an opaque token Bastion hands an agent and takes
 * back on a later request (the `requestState` of a 2026-07-28 `input_required`
 * result; an approval continuation). The agent can carry it but can neither read
 * nor change it: the payload (for example an upstream's own requestState) is
 * encrypted and authenticated (compact JWE, dir + A256GCM) under a key derived
 * (HKDF-SHA256) from the broker's key material and a purpose label, so a token
 * sealed for one purpose never opens for another.
 *
 * Every token is bound to who may bring it back and for which call: the
 * principal (iss + sub), the tool and the SHA-256 of the canonical arguments,
 * and it expires. `open` refuses with a typed {@link RequestStateRefusal}
 * (stable `code`) when any of those does not match; callers turn it into the
 * MCP error and the audit record.
 *
 * @example
 *   const states = RequestStateSealer.fromSecret(secret, 'mrtr', { now: () => Date.now() });
 *   const token = await states.seal({ upstreamState: 'abc' }, binding, 10 * 60_000);
 *   const opened = await states.open(token, binding); // { ok: true, payload } | { ok: false, refusal }
 */
import { createHash, hkdfSync } from 'node:crypto';
import { base64url, CompactEncrypt, compactDecrypt, type JWK } from 'jose';
import { canonicalJson } from '../audit/chain.ts';

/** Who may bring a sealed state back, and for which call. */
export interface StateBinding {
  iss: string;
  sub: string;
  tool: string;
  /** The call's arguments; hashed canonically (key order does not matter). */
  arguments: unknown;
}

export type RequestStateRefusalCode =
  | 'BASTION_STATE_MALFORMED'
  | 'BASTION_STATE_TAMPERED'
  | 'BASTION_STATE_EXPIRED'
  | 'BASTION_STATE_OTHER_PRINCIPAL'
  | 'BASTION_STATE_OTHER_CALL';

/** Why a sealed state was refused; `code` is stable, `message` says what to do. */
export class RequestStateRefusal extends Error {
  readonly code: RequestStateRefusalCode;
  constructor(code: RequestStateRefusalCode, message: string) {
    super(message);
    this.name = 'RequestStateRefusal';
    this.code = code;
  }
}

export type OpenedState<T> = { ok: true; payload: T; expiresAt: number } | { ok: false; refusal: RequestStateRefusal };

interface SealedClaims {
  v: 1;
  iss: string;
  sub: string;
  tool: string;
  args: string;
  exp: number;
  payload: unknown;
}

const TOKEN_TYPE = 'bastion-state+jwe';

/** SHA-256 (hex) of the canonical JSON of a call's arguments; absent arguments hash as {}. */
export function argumentsHash(args: unknown): string {
  return createHash('sha256').update(canonicalJson(args ?? {})).digest('hex');
}

export class RequestStateSealer {
  readonly #key: Uint8Array;
  readonly #now: () => number;

  /**
   * @param key 32 bytes (AES-256-GCM); use {@link RequestStateSealer.fromSecret} to derive it.
   * @param options.now injected clock (ms since epoch) so tests can expire tokens without sleeping.
   */
  constructor(key: Uint8Array, options: { now?: () => number } = {}) {
    if (key.length !== 32) throw new Error(`request-state key must be 32 bytes, got ${key.length}`);
    this.#key = key;
    this.#now = options.now ?? Date.now;
  }

  /** Derives the key from secret material (shared by replicas) and a purpose label ('mrtr', 'approval', …). */
  static fromSecret(secret: Uint8Array | string, purpose: string, options: { now?: () => number } = {}): RequestStateSealer {
    if (!purpose) throw new Error('request-state purpose must not be empty');
    const ikm = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret;
    if (ikm.length < 16) throw new Error('request-state secret must hold at least 16 bytes');
    const key = new Uint8Array(hkdfSync('sha256', ikm, 'bastion-request-state', `bastion request-state v1 ${purpose}`, 32));
    return new RequestStateSealer(key, options);
  }

  /** Derives the key from a private JWK's secret part (`d`, or `k` for a symmetric key), e.g. the broker's delegation key. */
  static fromPrivateJwk(jwk: JWK, purpose: string, options: { now?: () => number } = {}): RequestStateSealer {
    const secret = jwk.d ?? jwk.k;
    if (!secret) throw new Error('request-state key material: the JWK has no private part (d or k)');
    return RequestStateSealer.fromSecret(base64url.decode(secret), purpose, options);
  }

  /** Seals `payload` for `binding`, valid for `ttlMs`. The token is opaque to its holder. */
  async seal(payload: unknown, binding: StateBinding, ttlMs: number): Promise<string> {
    if (!(ttlMs > 0)) throw new Error('request-state ttl must be positive');
    const claims: SealedClaims = {
      v: 1,
      iss: binding.iss,
      sub: binding.sub,
      tool: binding.tool,
      args: argumentsHash(binding.arguments),
      exp: this.#now() + ttlMs,
      payload,
    };
    return new CompactEncrypt(new TextEncoder().encode(JSON.stringify(claims)))
      .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', typ: TOKEN_TYPE })
      .encrypt(this.#key);
  }

  /** Opens a token brought back with `binding`; never throws for a bad token. */
  async open<T = unknown>(token: unknown, binding: StateBinding): Promise<OpenedState<T>> {
    const refuse = (code: RequestStateRefusalCode, message: string): OpenedState<T> => ({ ok: false, refusal: new RequestStateRefusal(code, message) });
    if (typeof token !== 'string' || token.length === 0 || token.length > 64 * 1024 || token.split('.').length !== 5) {
      return refuse('BASTION_STATE_MALFORMED', 'requestState is not a state Bastion issued; retry the call without requestState');
    }
    let claims: SealedClaims;
    try {
      const { plaintext, protectedHeader } = await compactDecrypt(token, this.#key, { keyManagementAlgorithms: ['dir'], contentEncryptionAlgorithms: ['A256GCM'] });
      if (protectedHeader.typ !== TOKEN_TYPE) throw new Error('typ');
      claims = JSON.parse(new TextDecoder().decode(plaintext)) as SealedClaims;
      if (claims?.v !== 1 || typeof claims.exp !== 'number') throw new Error('shape');
    } catch {
      return refuse('BASTION_STATE_TAMPERED', 'requestState was not issued by this Bastion or was altered; retry the call without requestState');
    }
    if (claims.iss !== binding.iss || claims.sub !== binding.sub) {
      return refuse('BASTION_STATE_OTHER_PRINCIPAL', 'requestState was issued to another principal; only the agent that received it may use it');
    }
    if (claims.tool !== binding.tool || claims.args !== argumentsHash(binding.arguments)) {
      return refuse('BASTION_STATE_OTHER_CALL', `requestState belongs to another call; retry with the same tool and arguments it was issued for (tool ${claims.tool})`);
    }
    if (this.#now() >= claims.exp) {
      return refuse('BASTION_STATE_EXPIRED', 'requestState has expired; retry the call without requestState to start over');
    }
    return { ok: true, payload: claims.payload as T, expiresAt: claims.exp };
  }
}
