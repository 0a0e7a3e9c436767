/**
 * OPA bundles: real bundles built and signed with `opa build --signing-key`,
 * then every way a bundle must be refused when signing is required, plus the
 * tar reader's refusals. Tampered bundles are repacked with the system tar.
 */
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBundle } from '../../broker/policy/bundle.ts';
import { createPolicyEngine } from '../../broker/policy/engine.ts';
import { PolicyHolder } from '../../broker/policy/holder.ts';
import { BundleError, bundleFileDigest, readBundleKeyFile, type BundleVerification } from '../../broker/policy/signature.ts';
import { readTarGz, TarError } from '../../broker/policy/tar.ts';
import { buildBundle, capturingLogger, copyDefaultPolicy, input, tempDir } from './helpers.ts';

const { dir: work, cleanup } = tempDir('bastion-bundle-');
afterAll(cleanup);

let keys = 0;
function keyPair(type: 'ec' | 'rsa' | 'ed25519') {
  const pair =
    type === 'ec'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : type === 'rsa'
        ? generateKeyPairSync('rsa', { modulusLength: 2048 })
        : generateKeyPairSync('ed25519');
  const privateFile = path.join(work, `${type}-${++keys}-private.pem`);
  writeFileSync(privateFile, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }));
  return { privateFile, publicPem: pair.publicKey.export({ format: 'pem', type: 'spki' }) as string, publicJwk: pair.publicKey.export({ format: 'jwk' }) };
}

const ec = keyPair('ec');
const other = keyPair('ec');
let src: string;
let signed: Uint8Array;
let unsigned: Uint8Array;
const REQUIRED: BundleVerification = { required: true, publicKey: ec.publicPem, algorithm: 'ES256' };
const HIGH_RISK_DATA = { bastion: { tool_risk: { demo__read_file: 'high' } } };

beforeAll(() => {
  src = path.join(work, 'src');
  copyDefaultPolicy(src);
  writeFileSync(path.join(src, 'data.json'), JSON.stringify(HIGH_RISK_DATA));
  signed = readFileSync(buildBundle(src, path.join(work, 'signed.tar.gz'), { signingKey: ec.privateFile, revision: 'v42' }));
  unsigned = readFileSync(buildBundle(src, path.join(work, 'unsigned.tar.gz')));
});

/** Unpacks a bundle, lets `edit` change the files, repacks it with the system tar. */
function repack(bundle: Uint8Array, name: string, edit: (dir: string) => void): Uint8Array {
  const dir = path.join(work, name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  writeFileSync(`${dir}.in.tar.gz`, bundle);
  execFileSync('tar', ['-xzf', `${dir}.in.tar.gz`, '-C', dir], { stdio: 'pipe' }); // strips the leading '/', quietly
  edit(dir);
  const names = execFileSync('find', ['.', '-type', 'f'], { cwd: dir, encoding: 'utf8' }).trim().split('\n');
  execFileSync('tar', ['-czf', `${dir}.tar.gz`, '-C', dir, ...names]);
  return readFileSync(`${dir}.tar.gz`);
}

async function refusal(bundle: Uint8Array, verification: BundleVerification = REQUIRED): Promise<BundleError> {
  try {
    await readBundle(bundle, verification);
  } catch (error) {
    expect(error).toBeInstanceOf(BundleError);
    return error as BundleError;
  }
  throw new Error('bundle was accepted');
}

describe('a signed bundle', () => {
  it('is accepted, with its data and manifest revision', async () => {
    const bundle = await readBundle(signed, REQUIRED);
    expect(bundle).toMatchObject({ signed: true, revision: 'v42' });
    const engine = await createPolicyEngine({ wasm: bundle.wasm, data: bundle.data, source: 'signed.tar.gz', bundleRevision: bundle.revision });
    expect(engine.bundleRevision).toBe('v42');
    expect(engine.decide(input()).approval).toEqual({ required: true, quorum: 1, reason: 'demo__read_file is a high-risk tool' });
  });

  it('verifies with the key as a JWK too', async () => {
    expect((await readBundle(signed, { ...REQUIRED, publicKey: ec.publicJwk })).signed).toBe(true);
  });

  it('reads verification keys from PEM or JWK files, and refuses private keys', async () => {
    const pem = path.join(work, 'public.pem');
    const jwk = path.join(work, 'public.jwk.json');
    writeFileSync(pem, ec.publicPem);
    writeFileSync(jwk, JSON.stringify(ec.publicJwk));
    for (const file of [pem, jwk]) {
      expect((await readBundle(signed, { ...REQUIRED, publicKey: await readBundleKeyFile(file) })).signed).toBe(true);
    }
    await expect(readBundleKeyFile(ec.privateFile)).rejects.toThrow(/private key/);
  });

  it.each([
    ['rsa', 'RS256'],
    ['ed25519', 'EdDSA'],
  ] as const)('verifies %s keys (%s)', async (type, alg) => {
    const keys = keyPair(type);
    const bundle = readFileSync(buildBundle(src, path.join(work, `${type}.tar.gz`), { signingKey: keys.privateFile, signingAlg: alg }));
    expect((await readBundle(bundle, { required: true, publicKey: keys.publicPem, algorithm: alg })).signed).toBe(true);
  });

  it('still verifies when data.json is reformatted (OPA hashes JSON semantically)', async () => {
    const reformatted = repack(signed, 'reformatted', (dir) => {
      const data = JSON.parse(readFileSync(path.join(dir, 'data.json'), 'utf8')) as unknown;
      writeFileSync(path.join(dir, 'data.json'), `${JSON.stringify(data, null, 4)}\n`);
    });
    expect((await readBundle(reformatted, REQUIRED)).signed).toBe(true);
  });
});

describe('refused when signing is required', () => {
  it('an unsigned bundle', async () => {
    expect((await refusal(unsigned)).code).toBe('BASTION_BUNDLE_UNSIGNED');
  });

  it('tampered data', async () => {
    const tampered = repack(signed, 'tampered-data', (dir) => writeFileSync(path.join(dir, 'data.json'), JSON.stringify({ bastion: { tool_risk: { demo__read_file: 'low' } } })));
    const error = await refusal(tampered);
    expect(error.code).toBe('BASTION_BUNDLE_FILE_TAMPERED');
    expect(error.message).toContain('/data.json');
  });

  it('a tampered module', async () => {
    const tampered = repack(signed, 'tampered-wasm', (dir) => {
      const wasm = readFileSync(path.join(dir, 'policy.wasm'));
      wasm[wasm.length - 1]! ^= 1;
      writeFileSync(path.join(dir, 'policy.wasm'), wasm);
    });
    expect((await refusal(tampered)).code).toBe('BASTION_BUNDLE_FILE_TAMPERED');
  });

  it('a tampered manifest', async () => {
    const tampered = repack(signed, 'tampered-manifest', (dir) => {
      const manifest = JSON.parse(readFileSync(path.join(dir, '.manifest'), 'utf8')) as Record<string, unknown>;
      writeFileSync(path.join(dir, '.manifest'), JSON.stringify({ ...manifest, revision: 'v43' }));
    });
    expect((await refusal(tampered)).code).toBe('BASTION_BUNDLE_FILE_TAMPERED');
  });

  it('an extra file the signature does not list', async () => {
    const extra = repack(signed, 'extra', (dir) => writeFileSync(path.join(dir, 'evil.rego'), 'package bastion.site.evil\n'));
    const error = await refusal(extra);
    expect(error.code).toBe('BASTION_BUNDLE_FILE_UNSIGNED');
    expect(error.message).toContain('/evil.rego');
  });

  it('a signed file removed', async () => {
    const missing = repack(signed, 'missing', (dir) => rmSync(path.join(dir, 'data.json')));
    expect((await refusal(missing)).code).toBe('BASTION_BUNDLE_FILE_MISSING');
  });

  it('a signature by another key', async () => {
    expect((await refusal(signed, { ...REQUIRED, publicKey: other.publicPem })).code).toBe('BASTION_BUNDLE_SIGNATURE_INVALID');
  });

  it('a signature with another algorithm than configured', async () => {
    expect((await refusal(signed, { ...REQUIRED, algorithm: 'ES384' })).code).toBe('BASTION_BUNDLE_SIGNATURE_INVALID');
  });

  it('another key id or scope than configured', async () => {
    expect((await refusal(signed, { ...REQUIRED, keyId: 'prod' })).message).toMatch(/key id "default", expected "prod"/);
    expect((await refusal(signed, { ...REQUIRED, scope: 'write' })).message).toMatch(/scope/);
  });

  it('a signed bundle when no key is configured', async () => {
    expect((await refusal(signed, { required: false })).code).toBe('BASTION_BUNDLE_SIGNATURE_INVALID');
  });

  it('a signatures file with two JWTs', async () => {
    const doubled = repack(signed, 'doubled', (dir) => {
      const { signatures } = JSON.parse(readFileSync(path.join(dir, '.signatures.json'), 'utf8')) as { signatures: string[] };
      writeFileSync(path.join(dir, '.signatures.json'), JSON.stringify({ signatures: [signatures[0], signatures[0]] }));
    });
    expect((await refusal(doubled)).message).toMatch(/exactly one JWT/);
  });

  it('but an unsigned bundle is fine when signatures are not required', async () => {
    expect(await readBundle(unsigned, { required: false })).toMatchObject({ signed: false, revision: undefined });
  });
});

describe('a bundle file source', () => {
  it('swaps to a new signed bundle and refuses a tampered one, keeping the old', async () => {
    const file = path.join(work, 'live.tar.gz');
    writeFileSync(file, signed);
    const holder = await PolicyHolder.open({ source: { kind: 'bundle', path: file }, log: capturingLogger().log, verification: REQUIRED, watch: false });
    try {
      const revision = holder.revision;
      expect(holder.current().bundleRevision).toBe('v42');
      writeFileSync(file, repack(signed, 'live-tampered', (dir) => writeFileSync(path.join(dir, 'data.json'), '{}')));
      const refused = await holder.reload();
      expect(refused).toMatchObject({ ok: false, revision });
      expect(refused.error).toMatch(/does not match its signed digest/);
      writeFileSync(file, unsigned);
      expect((await holder.reload()).error).toMatch(/no \/\.signatures\.json/);
      expect(holder.current().decide(input()).approval.required).toBe(true);

      writeFileSync(path.join(src, 'data.json'), '{}');
      writeFileSync(file, readFileSync(buildBundle(src, path.join(work, 'signed-v43.tar.gz'), { signingKey: ec.privateFile, revision: 'v43' })));
      expect(await holder.reload()).toMatchObject({ ok: true, changed: true });
      expect(holder.current().bundleRevision).toBe('v43');
      expect(holder.current().decide(input()).approval.required).toBe(false);
    } finally {
      writeFileSync(path.join(src, 'data.json'), JSON.stringify(HIGH_RISK_DATA));
      await holder.close();
    }
  });
});

describe('the tar reader', () => {
  /** One ustar header block for `name` with `type`, then `data`, then the end marker. */
  function tar(entries: { name: string; type?: string; data?: string; link?: string }[]): Uint8Array {
    const blocks: Buffer[] = [];
    for (const entry of entries) {
      const data = Buffer.from(entry.data ?? '');
      const header = Buffer.alloc(512);
      header.write(entry.name, 0);
      header.write('0000644\0', 100);
      header.write('0000000\0', 108);
      header.write('0000000\0', 116);
      header.write(`${data.length.toString(8).padStart(11, '0')}\0`, 124);
      header.write('00000000000\0', 136);
      header.write(entry.type ?? '0', 156);
      if (entry.link) header.write(entry.link, 157);
      header.write('ustar\0', 257);
      header.write('00', 263);
      header.fill(' ', 148, 156);
      let sum = 0;
      for (const byte of header) sum += byte;
      header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
      blocks.push(header, data, Buffer.alloc((512 - (data.length % 512)) % 512));
    }
    blocks.push(Buffer.alloc(1024));
    return gzipSync(Buffer.concat(blocks));
  }

  it('reads what opa build writes', () => {
    expect([...readTarGz(signed).keys()].sort()).toEqual(['/.manifest', '/.signatures.json', '/bastion.rego', '/data.json', '/flows.rego', '/grants.rego', '/policy.wasm']);
  });

  it.each([
    ['a symlink', [{ name: 'policy.wasm', type: '2', link: '/etc/passwd' }], /not a regular file/],
    ['a hard link', [{ name: 'policy.wasm', type: '1', link: 'x' }], /not a regular file/],
    ['a path that climbs out', [{ name: '../policy.wasm', data: 'x' }], /unsafe entry name/],
    ['the same name twice', [{ name: 'data.json', data: '{}' }, { name: '/data.json', data: '{"a":1}' }], /appears twice/],
  ])('refuses %s', (_what, entries, message) => {
    expect(() => readTarGz(tar(entries))).toThrow(message);
  });

  it('refuses a header with a bad checksum, and a decompression bomb', () => {
    const good = tar([{ name: 'a', data: 'x' }]);
    const raw = Buffer.from(execFileSync('gzip', ['-dc'], { input: good }));
    raw[0] = 'b'.charCodeAt(0);
    expect(() => readTarGz(gzipSync(raw))).toThrow(/checksum/);
    expect(() => readTarGz(gzipSync(Buffer.alloc(10 * 1024 * 1024)), { maxBytes: 1024 * 1024 })).toThrow(TarError);
  });

  it('hashes JSON the way OPA does: sorted keys, numbers as written, U+2028 escaped', () => {
    const a = bundleFileDigest('/data.json', Buffer.from('{"b": 12345678901234567890, "a": "x\u2028<y>"}'), 'SHA-256');
    const b = bundleFileDigest('/data.json', Buffer.from('{"a":"x\\u2028<y>","b":12345678901234567890}'), 'SHA-256');
    expect(a).toBe(b);
    expect(() => bundleFileDigest('/policy.wasm', Buffer.from('x'), 'MD5')).toThrow(/not accepted/);
  });
});
