/**
 * OPA bundles as the broker loads them: a .tar.gz built by
 * `opa build -t wasm -e bastion/decision`, holding `/policy.wasm`,
 * `/data.json`, `/.manifest`, optionally the Rego sources and, when signed,
 * `/.signatures.json`. The signature (if any, or if required) is checked
 * over the whole archive before anything in it is used.
 *
 * @example
 *   const bundle = await readBundle(await readFile('bundle.tar.gz'), { required: true, publicKey: pem, algorithm: 'ES256' });
 *   const engine = await createPolicyEngine({ wasm: bundle.wasm, data: bundle.data, source: 'bundle.tar.gz', bundleRevision: bundle.revision });
 */
import { readTarGz, TarError, type TarLimits } from './tar.ts';
import { BundleError, verifyBundleSignature, type BundleVerification } from './signature.ts';

export interface PolicyBundle {
  wasm: Uint8Array;
  /** The raw /data.json (undefined when absent or empty). */
  data: Uint8Array | undefined;
  /** The manifest's `revision`, when it has a non-empty one. */
  revision: string | undefined;
  signed: boolean;
}

export const NO_VERIFICATION: BundleVerification = { required: false };

const WASM = '/policy.wasm';
const DATA = '/data.json';
const MANIFEST = '/.manifest';

/**
 * Reads, verifies and unpacks a bundle. Throws BundleError (with a stable
 * `code`) when the bundle is malformed, unsigned where signatures are
 * required, or does not match its signature.
 */
export async function readBundle(bytes: Uint8Array, verification: BundleVerification = NO_VERIFICATION, limits?: TarLimits): Promise<PolicyBundle> {
  const files = untar(bytes, limits);
  const { signed } = await verifyBundleSignature(files, verification);
  return unpack(files, signed);
}

/**
 * Unpacks a bundle without looking at its signature: for a bundle this
 * process has just built with opa (`bastion policy build --signing-key`) and
 * for tools that enforce nothing (`bastion policy eval`). Never for a
 * bundle the broker is going to enforce.
 */
export function readBuiltBundle(bytes: Uint8Array): PolicyBundle {
  const files = untar(bytes);
  return unpack(files, files.has('/.signatures.json'));
}

function untar(bytes: Uint8Array, limits?: TarLimits): Map<string, Uint8Array> {
  try {
    return readTarGz(bytes, limits);
  } catch (error) {
    if (error instanceof TarError) throw new BundleError('BASTION_BUNDLE_MALFORMED', `not a readable bundle: ${error.message}`);
    throw error;
  }
}

function unpack(files: Map<string, Uint8Array>, signed: boolean): PolicyBundle {
  for (const name of files.keys()) {
    if (name === WASM || name === DATA || name === MANIFEST || name === '/.signatures.json' || name.endsWith('.rego')) continue;
    if (/\/data\.(json|ya?ml)$/.test(name)) {
      throw new BundleError('BASTION_BUNDLE_MALFORMED', `${name}: data files below the root are not supported; opa build merges data into /data.json`);
    }
    throw new BundleError('BASTION_BUNDLE_MALFORMED', `${name}: unexpected file in a wasm bundle`);
  }
  const wasm = files.get(WASM);
  if (!wasm || wasm.length === 0) {
    throw new BundleError('BASTION_BUNDLE_MALFORMED', 'bundle has no /policy.wasm; build it with opa build -t wasm -e bastion/decision');
  }

  let revision: string | undefined;
  const manifestBytes = files.get(MANIFEST);
  if (manifestBytes) {
    let manifest: { revision?: unknown; wasm?: unknown };
    try {
      manifest = JSON.parse(new TextDecoder().decode(manifestBytes)) as typeof manifest;
    } catch {
      throw new BundleError('BASTION_BUNDLE_MALFORMED', '/.manifest is not valid JSON');
    }
    if (typeof manifest.revision === 'string' && manifest.revision !== '') revision = manifest.revision;
    const modules = Array.isArray(manifest.wasm) ? (manifest.wasm as { module?: unknown }[]) : [];
    const other = modules.find((entry) => entry?.module !== WASM);
    if (other) throw new BundleError('BASTION_BUNDLE_MALFORMED', `/.manifest names wasm module ${JSON.stringify(other.module)}; only /policy.wasm is loaded`);
  }

  const dataBytes = files.get(DATA);
  let data: Uint8Array | undefined;
  if (dataBytes && dataBytes.length > 0) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(dataBytes));
    } catch {
      throw new BundleError('BASTION_BUNDLE_MALFORMED', '/data.json is not valid JSON');
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new BundleError('BASTION_BUNDLE_MALFORMED', '/data.json must be a JSON object');
    }
    if (Object.keys(parsed).length > 0) data = dataBytes;
  }
  return { wasm, data, revision, signed };
}
