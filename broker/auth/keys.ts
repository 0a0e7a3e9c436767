/**
 * Issuer keys: trusted JWKS files, and the dev signing key made on first run.
 *
 * @example
 *   const dev = await ensureDevKey('.bastion');       // { issuer, privateJwk, jwksFile }
 *   const jwks = await readJwksFile(dev.jwksFile);
 */
import { mkdir, readFile, writeFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';
import { z } from 'zod';

/** The `iss` of tokens signed with the dev key. */
export const DEV_ISSUER = 'urn:bastion:dev';
/** The `iss` of tokens Bastion itself mints by delegation. */
export const DELEGATION_ISSUER = 'urn:bastion:delegation';

const PublicJwkSchema = z
  .looseObject({ kty: z.string(), kid: z.string().min(1) })
  .refine((jwk) => !('d' in jwk), 'a JWKS of trusted keys must not contain private keys');

const JwksSchema = z.strictObject({ keys: z.array(PublicJwkSchema).min(1) });
export type Jwks = { keys: JWK[] };

/** Reads and validates a JWKS file; every key needs a `kid` and none may be private. */
export async function readJwksFile(file: string): Promise<Jwks> {
  const parsed = JwksSchema.safeParse(JSON.parse(await readFile(file, 'utf8')));
  if (!parsed.success) {
    throw new Error(`JWKS ${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data as Jwks;
}

export interface DevKey {
  issuer: string;
  /** Private JWK with `kid` and `alg`; never leaves the state folder. */
  privateJwk: JWK;
  jwksFile: string;
}

/** Writes a file atomically with owner-only permissions. */
export async function writePrivate(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await rename(tmp, file);
}

/** Loads the dev Ed25519 key from `stateDir`, creating it (and its JWKS) on first run. */
export function ensureDevKey(stateDir: string): Promise<DevKey> {
  return ensureSigningKey(stateDir, 'dev', DEV_ISSUER);
}

/** The key Bastion signs delegated tokens with; made on first run like the dev key. */
export function ensureDelegationKey(stateDir: string): Promise<DevKey> {
  return ensureSigningKey(stateDir, 'delegation', DELEGATION_ISSUER);
}

/**
 * The key Bastion's authorization server signs capability tokens with (broker/identity);
 * its JWKS is a trusted issuer. Replicas share it like the delegation key. Made on first run.
 */
export function ensureAuthorizationServerKey(stateDir: string, issuer: string): Promise<DevKey> {
  return ensureSigningKey(stateDir, 'authorization-server', issuer);
}

/** The key that signs audit checkpoints (broker/audit/checkpoint.ts); its JWKS verifies them. Made on first run. */
export function ensureAuditCheckpointKey(stateDir: string): Promise<DevKey> {
  return ensureSigningKey(stateDir, 'audit-checkpoint', 'urn:bastion:audit');
}

/** Generates a key pair: the private JWK (with kid and alg) and a JWKS of its public half. */
export async function generateSigningKey(alg: 'EdDSA' | 'ES256' = 'EdDSA'): Promise<{ privateJwk: JWK; jwks: Jwks }> {
  const { publicKey, privateKey } = await generateKeyPair(alg, alg === 'EdDSA' ? { crv: 'Ed25519', extractable: true } : { extractable: true });
  const publicJwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(publicJwk);
  return {
    privateJwk: { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' },
    jwks: { keys: [{ ...publicJwk, kid, alg, use: 'sig' }] },
  };
}

async function ensureSigningKey(stateDir: string, name: string, issuer: string): Promise<DevKey> {
  const keyFile = path.join(stateDir, `${name}-signing-key.json`);
  const jwksFile = path.join(stateDir, `${name}-jwks.json`);
  try {
    const privateJwk = JSON.parse(await readFile(keyFile, 'utf8')) as JWK;
    await readJwksFile(jwksFile);
    return { issuer, privateJwk, jwksFile };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const { privateJwk, jwks } = await generateSigningKey('EdDSA');
  await writePrivate(keyFile, JSON.stringify(privateJwk, null, 2));
  await writePrivate(jwksFile, JSON.stringify(jwks, null, 2));
  return { issuer, privateJwk, jwksFile };
}
