/**
 * JWTs an agent presents at the token endpoint as its grant: the subject and
 * actor tokens of a token exchange (RFC 8693), an ID-JAG (RFC 7523 §2.1).
 * They are verified as strictly as capability tokens at stage 1, in named
 * steps, each refusal a Denial with the same stable code stage 1 uses:
 *
 *   checkSize            over 8 KB → BASTION_TOKEN_TOO_LARGE, before parsing
 *   checkHeader          alg none or HMAC, jku/x5u/jwk/x5c, cty, crit → ALG_REFUSED / HEADER_REFUSED
 *   checkIssuerTrusted   iss not a configured issuer → ISSUER_UNTRUSTED
 *   checkAlgorithm       alg outside the issuer's pinned list → ALG_REFUSED
 *   checkTyp             typ other than the issuer's (where it sets one; else none or JWT) → TYPE_REFUSED
 *   verifySignature      jose: signature, exp/nbf/iat with the clock skew → SIGNATURE_INVALID, EXPIRED, …
 *   checkAudience        aud exactly the expected one (a string, or an array of only it) → AUDIENCE_INVALID
 *   checkLifetime        exp − iat over the issuer's cap, iat in the future → LIFETIME_TOO_LONG / NOT_YET_VALID
 *   checkClaims          sub, and `act` well formed (never cut short) → CLAIM_INVALID
 *
 * @example
 *   const { issuer, claims, act } = await verifyPresentedToken(token, issuers, { clockSkewMs });  // throws Denial
 */
import { decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload, type JWTVerifyGetKey, type ProtectedHeaderParameters } from 'jose';
import { Denial, type DenialCode } from '../errors.ts';
import { parseActChain, type ActChainError } from '../auth/act.ts';
import { fromJose, MAX_TOKEN_BYTES, REFUSED_HEADERS } from '../auth/verify.ts';

/** An issuer whose tokens the token endpoint accepts as grants. */
export interface TrustedIssuer {
  /** The configured name (a workload issuer's), or `idp` for the organisation's IdP. */
  name: string;
  issuer: string;
  /** The exact `aud` its tokens must carry. */
  audience: string;
  algorithms: readonly string[];
  /** The JOSE `typ` its tokens must carry; undefined: not checked (the issuer sets none). */
  typ: string | undefined;
  maxLifetimeMs: number;
  /** Its keys (discovered or read on first use; throws when they cannot be had). */
  keys(): Promise<JWTVerifyGetKey>;
}

export interface PresentedToken {
  issuer: TrustedIssuer;
  header: ProtectedHeaderParameters;
  claims: JWTPayload & { sub: string; iat: number; exp: number };
  /** Its `act` chain, current actor first ([] when it has none). */
  act: { sub: string }[];
}

const deny = (code: DenialCode, reason: string) => new Denial('authenticate', code, reason);

function isNumericDate(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Verifies a presented JWT against the trusted issuers; throws a Denial naming what is wrong. */
export async function verifyPresentedToken(token: string, issuers: ReadonlyMap<string, TrustedIssuer>, options: { clockSkewMs: number; now?: () => number }): Promise<PresentedToken> {
  const now = options.now ?? Date.now;
  // checkSize
  if (token.length > MAX_TOKEN_BYTES || Buffer.byteLength(token) > MAX_TOKEN_BYTES) throw deny('BASTION_TOKEN_TOO_LARGE', `token exceeds ${MAX_TOKEN_BYTES} bytes`);

  // checkHeader
  let header: ProtectedHeaderParameters;
  let unverified: JWTPayload;
  try {
    header = decodeProtectedHeader(token);
    unverified = decodeJwt(token);
  } catch {
    throw deny('BASTION_TOKEN_MALFORMED', 'not a JWS compact serialization with a JSON claims set');
  }
  if (typeof header.alg !== 'string' || header.alg === 'none' || header.alg.startsWith('HS')) {
    throw deny('BASTION_TOKEN_ALG_REFUSED', `algorithm ${String(header.alg)} is never accepted (unsigned, or a shared secret)`);
  }
  for (const name of REFUSED_HEADERS) if (name in header) throw deny('BASTION_TOKEN_HEADER_REFUSED', `header parameter ${name} is not accepted`);
  if (header.cty !== undefined) throw deny('BASTION_TOKEN_HEADER_REFUSED', 'nested tokens (cty) are not accepted');
  if (header.crit !== undefined) throw deny('BASTION_TOKEN_HEADER_REFUSED', 'critical header extensions are not supported');

  // checkIssuerTrusted
  const iss = typeof unverified.iss === 'string' ? unverified.iss : undefined;
  const issuer = iss === undefined ? undefined : issuers.get(iss);
  if (!issuer) throw deny('BASTION_TOKEN_ISSUER_UNTRUSTED', `issuer ${JSON.stringify(iss ?? null)} is not trusted here`);

  // checkAlgorithm
  if (!issuer.algorithms.includes(header.alg)) throw deny('BASTION_TOKEN_ALG_REFUSED', `algorithm ${header.alg} is not pinned for ${issuer.name} (${issuer.algorithms.join(', ')})`);

  // checkTyp: the issuer's own (jose compares it, normalising an application/ prefix); where it sets none, a token
  // typed for another use (an ID-JAG, an approver token; RFC 8725 §3.11) is not a subject token either.
  if (issuer.typ !== undefined && typeof header.typ !== 'string') throw deny('BASTION_TOKEN_TYPE_REFUSED', `typ must be ${issuer.typ}`);
  if (issuer.typ === undefined && header.typ !== undefined && String(header.typ).toUpperCase() !== 'JWT') {
    throw deny('BASTION_TOKEN_TYPE_REFUSED', `typ ${String(header.typ)} names another kind of token (${issuer.name} sets no typ, or JWT)`);
  }

  // verifySignature
  let getKey: JWTVerifyGetKey;
  try {
    getKey = await issuer.keys();
  } catch (error) {
    throw deny('BASTION_TOKEN_KEY_UNKNOWN', `the keys of ${issuer.name} cannot be had: ${(error as Error).message}`);
  }
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, getKey, {
      algorithms: [...issuer.algorithms],
      issuer: issuer.issuer,
      ...(issuer.typ !== undefined ? { typ: issuer.typ } : {}),
      clockTolerance: Math.floor(options.clockSkewMs / 1000),
      currentDate: new Date(now()),
      requiredClaims: ['exp', 'iat', 'sub', 'aud'],
    }));
  } catch (error) {
    const denial = fromJose(error);
    throw denial.code === 'BASTION_TOKEN_TYPE_REFUSED' ? deny(denial.code, `typ must be ${issuer.typ}`) : denial;
  }

  // checkAudience
  const aud = payload.aud;
  if (!(aud === issuer.audience || (Array.isArray(aud) && aud.length === 1 && aud[0] === issuer.audience))) {
    throw deny('BASTION_TOKEN_AUDIENCE_INVALID', `aud must be exactly ${issuer.audience}`);
  }

  // checkLifetime
  const { exp, iat, nbf } = payload;
  if (!isNumericDate(exp) || !isNumericDate(iat) || (nbf !== undefined && !isNumericDate(nbf))) throw deny('BASTION_TOKEN_CLAIM_INVALID', 'exp, iat and nbf must be integer NumericDates');
  if (iat * 1000 > now() + options.clockSkewMs) throw deny('BASTION_TOKEN_NOT_YET_VALID', 'iat is in the future');
  const maxLifetimeS = Math.floor(issuer.maxLifetimeMs / 1000);
  if (exp - iat > maxLifetimeS) throw deny('BASTION_TOKEN_LIFETIME_TOO_LONG', `lifetime ${exp - iat}s exceeds the ${maxLifetimeS}s accepted from ${issuer.name}`);

  // checkClaims
  const sub = payload.sub;
  if (typeof sub !== 'string' || sub.length === 0 || sub.length > 255) throw deny('BASTION_TOKEN_CLAIM_INVALID', 'sub must be a string of 1 to 255 characters');
  let act: { sub: string }[];
  try {
    act = parseActChain(payload.act);
  } catch (error) {
    throw deny('BASTION_TOKEN_CLAIM_INVALID', `claim act is malformed: ${(error as ActChainError).message}`);
  }
  return { issuer, header, claims: { ...payload, sub, iat, exp }, act };
}
