/**
 * Names of tool sources: who keeps a name, and why each other claim is refused.
 */
import { describe, expect, it } from 'vitest';
import { refusedClaims } from '../broker/source-names.ts';

const configured = (name: string, where: string) => ({ name, where, configured: true });
const fromManifest = (name: string, where: string) => ({ name, where, configured: false });

describe('refusedClaims', () => {
  it('keeps distinct names, configured or from manifests', () => {
    expect(refusedClaims([configured('fs', 'connectors.0'), configured('kv-a', 'plugins.0'), fromManifest('kv-b', 'plugins.1')])).toEqual([undefined, undefined, undefined]);
  });

  it('gives a configured name to its first claimant, in order', () => {
    expect(refusedClaims([configured('kv-a', 'connectors.0'), configured('kv-a', 'plugins.0')])).toEqual([
      undefined,
      '"kv-a" is already the name of connectors.0 (connectors and plugins need distinct names)',
    ]);
  });

  it('refuses a manifest name someone configured, wherever the configured claim stands', () => {
    const refusals = refusedClaims([fromManifest('kv-a', 'plugins.0'), configured('kv-a', 'plugins.1')]);
    expect(refusals[0]).toMatch(/^the name "kv-a" from its manifest is already the name of plugins\.1; give this plugin its own name in config/);
    expect(refusals[1]).toBeUndefined();
  });

  it('refuses every manifest claiming a name no one configured', () => {
    const refusals = refusedClaims([fromManifest('twin', 'plugins.0'), fromManifest('twin', 'plugins.1'), fromManifest('twin', 'plugins.2')]);
    expect(refusals[0]).toMatch(/also claimed by the manifest of plugins\.1, plugins\.2; none of them is loaded/);
    expect(refusals[2]).toMatch(/also claimed by the manifest of plugins\.0, plugins\.1/);
  });
});
