/**
 * Stage 1, authenticate: a capability token in, a Principal out, or a Denial.
 *
 * jose does the cryptography; this module pins down everything jose leaves
 * open: it checks `exp` only when present and accepts an `aud` array that
 * merely contains ours, so both are enforced here explicitly, along with the
 * algorithm allow-list, `typ`, size, lifetime and claim shapes.
 *
 * A token that verified is remembered (keyed by itself, in a bounded LRU)
 * until it expires, so an agent presenting the same token on every request
 * pays for the signature and claim checks once, however many sessions
 * present it at the same moment (requests racing on one token share one
 * verification and one cache entry). A remembered token is
 * re-checked against its issuer's current keys on every use: rotating a key
 * out of the JWKS retires its tokens at once, as without the cache.
 * Revocation, single use and proof of possession are not this module's
 * business (authenticate.ts) and run on every request regardless.
 *
 * @example
 *   const verifier = createTokenVerifier({ issuers, audience, ... });
 *   const principal = await verifier.verify(bearerToken); // throws Denial
 */
import { hash } from 'node:crypto';
import {
  decodeJwt,
  decodeProtectedHeader,
  errors,
  jwtVerify,
  type FlattenedJWSInput,
  type JWTHeaderParameters,
  type JWTPayload,
  type JWTVerifyGetKey,
  type ProtectedHeaderParameters,
} from 'jose';
import { z } from 'zod';
import { Denial, type DenialCode } from '../errors.ts';
import { parseActChain, type ActChainError } from './act.ts';
import { CapabilitySchema, type Capability } from '../policy/schema.ts';
import type { IssuerKeys } from './keysets.ts';

/** Tokens above this size are refused before any parsing. */
export const MAX_TOKEN_BYTES = 8192;

/** Who is calling, as established by a verified token. */
export interface Principal {
  sub: string;
  iss: string;
  /** Delegation chain, outermost actor first (RFC 8693 `act`, flattened). */
  act: { sub: string }[];
  cap: Capability[];
  jti: string;
  /** Expiry, seconds since the epoch. */
  exp: number;
  anonymous: boolean;
  /** sha256 of the token: lets the audit trail correlate calls without storing the token. */
  tokenHash: string;
  /** `use: "once"`: the token is refused on a second presentation. */
  singleUse: boolean;
  /** `cnf.jkt`: the token is bound to this key; every request needs a DPoP proof. */
  jkt?: string;
}

export interface VerifierOptions {
  issuers: IssuerKeys[];
  /** The broker's resource identifier; `aud` must be exactly this. */
  audience: string;
  algorithms: ('EdDSA' | 'ES256')[];
  tokenType: string;
  maxTtlMs: number;
  clockSkewMs: number;
  /** Injected in tests; milliseconds since the epoch. */
  now?: () => number;
  /** How many verified tokens to remember until they expire; 0 turns the cache off. Default 10,000. */
  cacheEntries?: number;
}

/** Default bound of the verified-token cache. */
export const DEFAULT_TOKEN_CACHE_ENTRIES = 10_000;

export interface TokenVerifier {
  verify(token: string | undefined): Promise<Principal>;
}

const deny = (code: DenialCode, reason: string) => new Denial('authenticate', code, reason);

const ClaimsSchema = z.looseObject({
  sub: z.string().min(1).max(256),
  jti: z.string().min(1).max(256),
  cap: z.array(CapabilitySchema).max(64),
  use: z.literal('once').optional(),
  cnf: z.strictObject({ jkt: z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'a base64url SHA-256 JWK thumbprint') }).optional(),
});

/** Header parameters that would make a verifier fetch keys or nest tokens. */
export const REFUSED_HEADERS = ['jku', 'x5u', 'jwk', 'x5c'] as const;

function isNumericDate(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Maps a jose error to a stable Bastion code; anything unexpected is a malformed token. */
export function fromJose(error: unknown): Denial {
  if (error instanceof Denial) return error;
  if (error instanceof errors.JWTExpired) return deny('BASTION_TOKEN_EXPIRED', 'token has expired');
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.claim === 'aud') return deny('BASTION_TOKEN_AUDIENCE_INVALID', 'token audience is not this broker');
    if (error.claim === 'iss') return deny('BASTION_TOKEN_ISSUER_UNTRUSTED', 'token issuer is not trusted');
    // Only a failed time check means "not yet valid"; a missing or non-numeric nbf/iat is a bad claim
    // (jose reports those as reason "missing"/"invalid" with the same claim name).
    if ((error.claim === 'nbf' || error.claim === 'iat') && error.reason === 'check_failed') {
      return deny('BASTION_TOKEN_NOT_YET_VALID', `token is not valid yet (${error.claim} is in the future)`);
    }
    if (error.claim === 'typ') return deny('BASTION_TOKEN_TYPE_REFUSED', 'token typ header is not accepted');
    return deny('BASTION_TOKEN_CLAIM_INVALID', `claim ${error.claim}: ${error.reason}`);
  }
  if (error instanceof errors.JOSEAlgNotAllowed || error instanceof errors.JOSENotSupported) {
    return deny('BASTION_TOKEN_ALG_REFUSED', 'token algorithm is not allowed');
  }
  if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys) {
    return deny('BASTION_TOKEN_KEY_UNKNOWN', 'no trusted key matches the token kid');
  }
  if (error instanceof errors.JWSSignatureVerificationFailed) {
    return deny('BASTION_TOKEN_SIGNATURE_INVALID', 'token signature is invalid');
  }
  return deny('BASTION_TOKEN_MALFORMED', 'token is malformed');
}

/** A verified token, remembered with the key that verified it. */
interface Verified {
  principal: Principal;
  getKey: JWTVerifyGetKey;
  header: JWTHeaderParameters;
  input: FlattenedJWSInput;
  key: unknown;
}

/** Deep-freezes a principal: a cached one is shared by every request that presents the token. */
function freeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const child of Object.values(value)) freeze(child);
    Object.freeze(value);
  }
  return value;
}

/** Builds a verifier with keys imported once; `verify` does no I/O. */
export function createTokenVerifier(options: VerifierOptions): TokenVerifier {
  const now = options.now ?? Date.now;
  const keySets = new Map(options.issuers.map((i) => [i.issuer, i.getKey]));
  const skewSeconds = Math.floor(options.clockSkewMs / 1000);
  const maxTtlSeconds = Math.floor(options.maxTtlMs / 1000);
  const cacheEntries = options.cacheEntries ?? DEFAULT_TOKEN_CACHE_ENTRIES;
  // Keyed by the token itself (a hit then costs no hashing; at most cacheEntries × MAX_TOKEN_BYTES).
  // Insertion order is recency order: a hit moves its entry to the end, eviction takes the first.
  const cache = new Map<string, Verified>();

  /** Drops a remembered token, unless another request has replaced its entry meanwhile. */
  function forget(token: string, entry: Verified): void {
    if (cache.get(token) === entry) cache.delete(token);
  }

  /**
   * The remembered principal, if the token has not expired and its key is still the issuer's.
   * The entry stays in the cache while the key is looked up: many sessions present one token at
   * once (one agent service, one credential), and taking the entry out across that await made
   * every other request of the same turn miss and verify the signature afresh.
   */
  async function remembered(token: string): Promise<Principal | undefined> {
    const entry = cache.get(token);
    if (!entry) return undefined;
    // Never past exp, even within the clock-skew allowance a fresh verification would grant.
    if (entry.principal.exp * 1000 <= now()) {
      forget(token, entry);
      return undefined;
    }
    let key: unknown;
    try {
      key = await entry.getKey(entry.header, entry.input);
    } catch {
      forget(token, entry);
      return undefined; // the key is gone: verify afresh, which names the reason
    }
    if (key !== entry.key) {
      forget(token, entry);
      return undefined;
    }
    // Most recently used goes last (only if still cached: a full cache may have evicted it meanwhile).
    if (cache.get(token) === entry) {
      cache.delete(token);
      cache.set(token, entry);
    }
    return entry.principal;
  }

  function remember(token: string, entry: Verified): void {
    if (cacheEntries <= 0) return;
    if (cache.size >= cacheEntries) cache.delete(cache.keys().next().value!);
    cache.set(token, entry);
  }

  // Verifications under way, by token: requests presenting one token together share one signature check.
  const verifying = new Map<string, Promise<Principal>>();

  return {
    async verify(token) {
      if (!token) throw deny('BASTION_TOKEN_MISSING', 'a bearer capability token is required');
      // Count bytes, not UTF-16 units: a non-ASCII token must not slip past the cap.
      if (token.length > MAX_TOKEN_BYTES || Buffer.byteLength(token) > MAX_TOKEN_BYTES) {
        throw deny('BASTION_TOKEN_TOO_LARGE', `token exceeds ${MAX_TOKEN_BYTES} bytes`);
      }
      const known = await remembered(token);
      if (known) return known;
      let fresh = verifying.get(token);
      if (!fresh) {
        fresh = verifyAfresh(token).finally(() => verifying.delete(token));
        verifying.set(token, fresh);
      }
      return fresh;
    },
  };

  /** Every check, signature included; remembers the principal when it holds. */
  async function verifyAfresh(token: string): Promise<Principal> {
    const tokenHash = `sha256:${hash('sha256', token)}`;

    let header: ProtectedHeaderParameters;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      throw deny('BASTION_TOKEN_MALFORMED', 'token is not a JWS compact serialization');
    }
    if (typeof header.alg !== 'string' || !(options.algorithms as string[]).includes(header.alg)) {
      throw deny('BASTION_TOKEN_ALG_REFUSED', `algorithm ${String(header.alg)} is not allowed (allowed: ${options.algorithms.join(', ')})`);
    }
    if (header.typ !== options.tokenType) {
      throw deny('BASTION_TOKEN_TYPE_REFUSED', `typ must be ${options.tokenType}`);
    }
    for (const name of REFUSED_HEADERS) {
      if (name in header) throw deny('BASTION_TOKEN_HEADER_REFUSED', `header parameter ${name} is not accepted`);
    }
    if (header.cty !== undefined) throw deny('BASTION_TOKEN_HEADER_REFUSED', 'nested tokens (cty) are not accepted');
    // No extension is understood, so any critical one must be refused (RFC 7515 §4.1.11).
    if (header.crit !== undefined) throw deny('BASTION_TOKEN_HEADER_REFUSED', 'critical header extensions are not supported');
    if (typeof header.kid !== 'string') throw deny('BASTION_TOKEN_KEY_UNKNOWN', 'token has no kid');

    let unverified: JWTPayload;
    try {
      unverified = decodeJwt(token);
    } catch {
      throw deny('BASTION_TOKEN_MALFORMED', 'token payload is not a JSON claims set');
    }

    const issuer = typeof unverified.iss === 'string' ? unverified.iss : undefined;
    const keySet = issuer === undefined ? undefined : keySets.get(issuer);
    if (!issuer || !keySet) throw deny('BASTION_TOKEN_ISSUER_UNTRUSTED', `issuer ${JSON.stringify(issuer ?? null)} is not trusted`);

    let payload: JWTPayload;
    let used: Pick<Verified, 'header' | 'input' | 'key'> | undefined;
    // Notes the key jose verified with, so a cache hit can check it is still the issuer's.
    const noteKey: JWTVerifyGetKey = async (protectedHeader, input) => {
      const key = await keySet(protectedHeader, input);
      used = { header: protectedHeader, input, key };
      return key;
    };
    try {
      ({ payload } = await jwtVerify(token, noteKey, {
        algorithms: options.algorithms,
        issuer,
        typ: options.tokenType,
        clockTolerance: skewSeconds,
        currentDate: new Date(now()),
        requiredClaims: ['exp', 'iat', 'jti', 'sub', 'aud'],
      }));
    } catch (error) {
      throw fromJose(error);
    }

    // jose accepts any aud array containing ours; a token must be for this broker alone.
    const aud = payload.aud;
    const audOk = aud === options.audience || (Array.isArray(aud) && aud.length === 1 && aud[0] === options.audience);
    if (!audOk) throw deny('BASTION_TOKEN_AUDIENCE_INVALID', `aud must be exactly ${options.audience}`);

    const { exp, iat, nbf } = payload;
    if (!isNumericDate(exp) || !isNumericDate(iat) || (nbf !== undefined && !isNumericDate(nbf))) {
      throw deny('BASTION_TOKEN_CLAIM_INVALID', 'exp, iat and nbf must be integer NumericDates');
    }
    const nowSeconds = Math.floor(now() / 1000);
    if (iat > nowSeconds + skewSeconds) throw deny('BASTION_TOKEN_NOT_YET_VALID', 'token iat is in the future');
    if (exp - iat > maxTtlSeconds) {
      throw deny('BASTION_TOKEN_LIFETIME_TOO_LONG', `token lifetime ${exp - iat}s exceeds the ${maxTtlSeconds}s cap`);
    }

    const claims = ClaimsSchema.safeParse({ cap: [], ...payload });
    if (!claims.success) {
      const issue = claims.error.issues[0];
      throw deny('BASTION_TOKEN_CLAIM_INVALID', `claim ${issue?.path.join('.') ?? '?'}: ${issue?.message ?? 'invalid'}`);
    }
    let act: { sub: string }[];
    try {
      act = parseActChain(payload.act);
    } catch (error) {
      throw deny('BASTION_TOKEN_CLAIM_INVALID', `claim act: ${(error as ActChainError).message}`);
    }
    const principal: Principal = freeze({
      sub: claims.data.sub,
      iss: issuer,
      act,
      cap: claims.data.cap,
      jti: claims.data.jti,
      exp,
      anonymous: false,
      tokenHash,
      singleUse: claims.data.use === 'once',
      ...(claims.data.cnf ? { jkt: claims.data.cnf.jkt } : {}),
    });
    if (used) remember(token, { principal, getKey: keySet, ...used });
    return principal;
  }
}
