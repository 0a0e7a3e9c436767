/**
 * Verifies OPA bundle signatures (`opa build --signing-key … --bundle`).
 *
 * A signed bundle carries `/.signatures.json`: `{"signatures": ["<JWS>"]}`,
 * exactly one compact JWS whose payload lists every other file with its
 * digest: `{"files": [{"name": "policy.wasm", "hash": "<hex>", "algorithm":
 * "SHA-256"}, …], "keyid"?: "…", "scope"?: "…"}`. Binary files are hashed
 * as bytes; JSON documents (`data.json`, `.manifest`) are hashed in OPA's
 * normalized form (keys sorted, no whitespace, numbers as written) so that
 * reformatting does not change the digest (bundle/hash.go in OPA).
 *
 * Verification is total: the signature must hold for the configured key
 * and algorithm, every file in the bundle must be listed with a matching
 * digest, and every listed file must be present. An unsigned file is
 * refused, not ignored.
 *
 * @example
 *   await verifyBundleSignature(files, { publicKey: pem, algorithm: 'ES256', required: true });
 */
import { createHash, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { compactVerify } from 'jose';

/** Asymmetric JWS algorithms only: a shared HMAC secret would let every verifier sign. */
export const BUNDLE_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;
export type BundleAlgorithm = (typeof BUNDLE_ALGORITHMS)[number];

export interface BundleVerification {
  /** Refuse bundles without /.signatures.json. */
  required: boolean;
  /** The signer's public key: PEM (SPKI, PKCS#1 or a certificate) or a JWK. Needed to accept any signed bundle. */
  publicKey?: string | JsonWebKey | undefined;
  algorithm?: BundleAlgorithm | undefined;
  /** When set, a signature naming another key id (header `kid` or payload `keyid`) is refused. */
  keyId?: string | undefined;
  /** Must equal the payload's `scope` (both default to ""), as in OPA. */
  scope?: string | undefined;
}

export type BundleErrorCode =
  | 'BASTION_BUNDLE_MALFORMED'
  | 'BASTION_BUNDLE_UNSIGNED'
  | 'BASTION_BUNDLE_SIGNATURE_INVALID'
  | 'BASTION_BUNDLE_FILE_UNSIGNED'
  | 'BASTION_BUNDLE_FILE_TAMPERED'
  | 'BASTION_BUNDLE_FILE_MISSING';

export class BundleError extends Error {
  override readonly name = 'BundleError';
  readonly code: BundleErrorCode;

  constructor(code: BundleErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

export const SIGNATURES_FILE = '/.signatures.json';

const HASHES: Record<string, string> = { 'SHA-256': 'sha256', 'SHA-384': 'sha384', 'SHA-512': 'sha512' };

/** The key as Node's KeyObject (jose accepts it for every algorithm above). */
export function bundlePublicKey(key: string | JsonWebKey): KeyObject {
  try {
    return typeof key === 'string' ? createPublicKey(key) : createPublicKey({ key, format: 'jwk' });
  } catch (error) {
    throw new Error(`bundle verification key is not a usable public key: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Reads a bundle verification key file: a JWK (JSON) or PEM text. Checked
 * here, at start-up, rather than at the first bundle.
 *
 * @example
 *   const verification = { required: true, algorithm: 'ES256', publicKey: await readBundleKeyFile('keys/bundle.pem') };
 */
export async function readBundleKeyFile(file: string): Promise<string | JsonWebKey> {
  const text = await readFile(file, 'utf8');
  let key: string | JsonWebKey = text;
  if (text.trimStart().startsWith('{')) key = JSON.parse(text) as JsonWebKey;
  // The broker only verifies; a signing key on its disk would be one more place to steal it from.
  if (typeof key === 'string' ? /PRIVATE KEY-----/.test(key) : 'd' in key) {
    throw new Error(`bundle verification key ${file} is a private key; configure its public half`);
  }
  bundlePublicKey(key);
  return key;
}

/** OPA-compatible digest of one bundle file. */
export function bundleFileDigest(name: string, bytes: Uint8Array, algorithm: string): string {
  const hashName = HASHES[algorithm];
  if (!hashName) throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', `${name}: digest algorithm ${JSON.stringify(algorithm)} is not accepted (use SHA-256, SHA-384 or SHA-512)`);
  const hash = createHash(hashName);
  const base = name.slice(name.lastIndexOf('/') + 1);
  if (base === 'data.json' || base === '.manifest') hash.update(normalizedJson(name, bytes));
  else if (base === 'data.yaml' || base === 'data.yml') {
    throw new BundleError('BASTION_BUNDLE_MALFORMED', `${name}: YAML data files are not supported; build the bundle with opa build, which writes /data.json`);
  } else hash.update(bytes);
  return hash.digest('hex');
}

const RAW_NUMBER = Symbol('raw number');
type RawNumber = { [RAW_NUMBER]: string };

/** Go's encoding/json string form (SetEscapeHTML(false)): like JSON.stringify, but U+2028/9 escaped and lone surrogates replaced. */
function goString(value: string): string {
  return JSON.stringify(value.toWellFormed()).replace(/[\u2028\u2029]/g, (c) => (c === '\u2028' ? '\\u2028' : '\\u2029'));
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function walk(value: unknown, out: string[]): void {
  if (value === null || typeof value !== 'object') {
    out.push(typeof value === 'string' ? goString(value) : JSON.stringify(value));
  } else if (RAW_NUMBER in value) {
    out.push((value as RawNumber)[RAW_NUMBER]);
  } else if (Array.isArray(value)) {
    out.push('[');
    value.forEach((item, i) => {
      if (i > 0) out.push(',');
      walk(item, out);
    });
    out.push(']');
  } else {
    const record = value as Record<string, unknown>;
    out.push('{');
    Object.keys(record)
      .sort(byteOrder)
      .forEach((key, i) => {
        if (i > 0) out.push(',');
        out.push(goString(key), ':');
        walk(record[key], out);
      });
    out.push('}');
  }
}

function normalizedJson(name: string, bytes: Uint8Array): string {
  let textValue = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  if (textValue.charCodeAt(0) === 0xfeff) textValue = textValue.slice(1);
  let parsed: unknown;
  try {
    // Numbers keep their source text: OPA hashes json.Number literals, not doubles.
    parsed = JSON.parse(textValue, (_key, value: unknown, context?: { source?: string }) =>
      typeof value === 'number' && context?.source !== undefined ? ({ [RAW_NUMBER]: context.source } satisfies RawNumber) : value,
    );
  } catch (error) {
    throw new BundleError('BASTION_BUNDLE_MALFORMED', `${name} is not valid JSON: ${(error as Error).message}`);
  }
  const out: string[] = [];
  walk(parsed, out);
  return out.join('');
}

interface SignedFile {
  hash: string;
  algorithm: string;
}

function parseSignatures(bytes: Uint8Array): string {
  let document: unknown;
  try {
    document = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', '.signatures.json is not valid JSON');
  }
  const { signatures, plugin } = (document ?? {}) as { signatures?: unknown; plugin?: unknown };
  if (plugin !== undefined && plugin !== '' && plugin !== '_default') {
    throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', `.signatures.json names signing plugin ${JSON.stringify(plugin)}; only OPA's default JWT format is supported`);
  }
  if (!Array.isArray(signatures) || signatures.length !== 1 || typeof signatures[0] !== 'string') {
    throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', '.signatures.json must hold exactly one JWT');
  }
  return signatures[0];
}

/**
 * Checks a bundle's files against its signature. Resolves when the bundle
 * is acceptable (signed and intact, or unsigned where that is allowed);
 * throws BundleError otherwise.
 */
export async function verifyBundleSignature(files: ReadonlyMap<string, Uint8Array>, config: BundleVerification): Promise<{ signed: boolean; keyId?: string }> {
  const signaturesFile = files.get(SIGNATURES_FILE);
  if (!signaturesFile) {
    if (config.required) throw new BundleError('BASTION_BUNDLE_UNSIGNED', 'bundle has no /.signatures.json and signatures are required');
    return { signed: false };
  }
  if (!config.publicKey || !config.algorithm) {
    throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', 'bundle is signed but no verification key and algorithm are configured');
  }
  const token = parseSignatures(signaturesFile);

  let payloadBytes: Uint8Array;
  let kid: unknown;
  try {
    const verified = await compactVerify(token, bundlePublicKey(config.publicKey), { algorithms: [config.algorithm] });
    payloadBytes = verified.payload;
    kid = verified.protectedHeader.kid;
  } catch (error) {
    throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', `bundle signature does not verify: ${(error as Error).message}`);
  }

  let payload: { files?: unknown; keyid?: unknown; scope?: unknown };
  try {
    payload = JSON.parse(new TextDecoder().decode(payloadBytes)) as typeof payload;
  } catch {
    throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', 'bundle signature payload is not JSON');
  }
  const namedKey = typeof kid === 'string' ? kid : typeof payload.keyid === 'string' ? payload.keyid : undefined;
  if (config.keyId !== undefined && namedKey !== undefined && namedKey !== config.keyId) {
    throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', `bundle is signed with key id ${JSON.stringify(namedKey)}, expected ${JSON.stringify(config.keyId)}`);
  }
  const scope = typeof payload.scope === 'string' ? payload.scope : '';
  if (scope !== (config.scope ?? '')) {
    throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', `bundle signature scope ${JSON.stringify(scope)} does not match the configured scope`);
  }
  if (!Array.isArray(payload.files)) throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', 'bundle signature payload has no files list');

  const signed = new Map<string, SignedFile>();
  for (const entry of payload.files as unknown[]) {
    const { name, hash, algorithm } = (entry ?? {}) as { name?: unknown; hash?: unknown; algorithm?: unknown };
    if (typeof name !== 'string' || typeof hash !== 'string' || typeof algorithm !== 'string') {
      throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', 'bundle signature lists a file without name, hash and algorithm');
    }
    const path = `/${name.replace(/^\/+/, '')}`;
    if (signed.has(path)) throw new BundleError('BASTION_BUNDLE_SIGNATURE_INVALID', `bundle signature lists ${path} twice`);
    signed.set(path, { hash: hash.toLowerCase(), algorithm });
  }

  for (const [path, bytes] of files) {
    if (path === SIGNATURES_FILE) continue;
    const entry = signed.get(path);
    if (!entry) throw new BundleError('BASTION_BUNDLE_FILE_UNSIGNED', `${path} is in the bundle but not in its signature`);
    if (bundleFileDigest(path, bytes, entry.algorithm) !== entry.hash) {
      throw new BundleError('BASTION_BUNDLE_FILE_TAMPERED', `${path} does not match its signed digest`);
    }
    signed.delete(path);
  }
  if (signed.size > 0) {
    throw new BundleError('BASTION_BUNDLE_FILE_MISSING', `signed file(s) missing from the bundle: ${[...signed.keys()].join(', ')}`);
  }
  return namedKey === undefined ? { signed: true } : { signed: true, keyId: namedKey };
}
