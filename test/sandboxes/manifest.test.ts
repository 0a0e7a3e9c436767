/**
 * The plugin manifest schema: what it accepts, what it refuses (every
 * refusal names the field), and the JSON Schema published from it.
 */
import { describe, expect, it } from 'vitest';
import { SandboxError } from '../../sandboxes/errors.ts';
import { parseManifest, pluginManifestJsonSchema, requestedCapabilities, type PluginManifestInput } from '../../sandboxes/manifest.ts';

const base: PluginManifestInput = {
  name: 'demo',
  version: '1.0.0',
  main: 'main.js',
  tools: [{ name: 'echo', description: 'Echoes.', inputSchema: { type: 'object' } }],
};

function refusal(value: unknown): string {
  try {
    parseManifest(value);
  } catch (error) {
    expect(error).toBeInstanceOf(SandboxError);
    expect((error as SandboxError).code).toBe('SANDBOX_MANIFEST_INVALID');
    return (error as SandboxError).message;
  }
  throw new Error('manifest was accepted');
}

describe('plugin manifest', () => {
  it('fills in default limits and no capabilities', () => {
    const manifest = parseManifest(base);
    expect(manifest.limits).toEqual({ memory_mb: 32, cpu_ms: 100, wall_ms: 1000, max_result_bytes: 65_536 });
    expect(manifest.capabilities).toEqual({});
    expect(requestedCapabilities(manifest)).toEqual([]);
  });

  it('accepts capability requests', () => {
    const manifest = parseManifest({
      ...base,
      capabilities: { fetch: { origins: ['https://api.example.com', 'http://127.0.0.1:8080'] }, kv: {}, log: {} },
    });
    expect(manifest.capabilities.fetch).toEqual({ origins: ['https://api.example.com', 'http://127.0.0.1:8080'], methods: ['GET'] });
    expect(requestedCapabilities(manifest)).toEqual(['fetch', 'kv', 'log']);
  });

  it.each<[string, unknown, RegExp]>([
    ['an upper-case name', { ...base, name: 'Demo' }, /name: lowercase letters/],
    ['a name with the namespace separator', { ...base, name: 'a__b' }, /name: must not contain "__"/],
    ['a main with a path', { ...base, main: '../x.js' }, /main:/],
    ['a main that is not .js', { ...base, main: 'main.ts' }, /main: must end in \.js/],
    ['no tools', { ...base, tools: [] }, /tools:/],
    ['duplicate tools', { ...base, tools: [base.tools[0], base.tools[0]] }, /tool names must be unique/],
    ['a tool named __proto__', { ...base, tools: [{ ...base.tools[0], name: '__proto__' }] }, /tools\.0\.name/],
    ['a non-object input schema', { ...base, tools: [{ ...base.tools[0], inputSchema: { type: 'string' } }] }, /tools\.0\.inputSchema: must be a JSON Schema with "type": "object"/],
    ['an origin with a path', { ...base, capabilities: { fetch: { origins: ['https://api.example.com/v1'] } } }, /capabilities\.fetch\.origins\.0/],
    ['a non-http origin', { ...base, capabilities: { fetch: { origins: ['file://x'] } } }, /capabilities\.fetch\.origins\.0/],
    ['an unknown method', { ...base, capabilities: { fetch: { origins: ['https://a.example'], methods: ['CONNECT'] } } }, /methods\.0/],
    ['an unknown capability', { ...base, capabilities: { fs: {} } }, /capabilities/],
    ['a memory limit under isolated-vm\'s minimum', { ...base, limits: { memory_mb: 4 } }, /limits\.memory_mb/],
    ['an unknown field', { ...base, cachedData: 'AAAA' }, /cachedData/],
    ['a bad version', { ...base, version: 'latest' }, /version/],
    [
      'a backreference in an input schema pattern',
      { ...base, tools: [{ ...base.tools[0], inputSchema: { type: 'object', properties: { a: { type: 'string', pattern: '(x)\\1' } } } }] },
      /tools\.0\.inputSchema: tool echo: inputSchema\/properties\/a\/pattern: pattern "\(x\)\\\\1" uses a backreference/,
    ],
    [
      'a named backreference in an output schema pattern',
      { ...base, tools: [{ ...base.tools[0], outputSchema: { type: 'object', properties: { a: { pattern: '(?<q>x)\\k<q>' } } } }] },
      /tools\.0\.outputSchema: tool echo: outputSchema\/properties\/a\/pattern: .* uses a backreference/,
    ],
    [
      'lookahead in a patternProperties key',
      { ...base, tools: [{ ...base.tools[0], inputSchema: { type: 'object', patternProperties: { '^(?!x)': {} } } }] },
      /tool echo: inputSchema\/patternProperties\/\^\(\?!x\): .* uses lookaround/,
    ],
    [
      'lookbehind nested in allOf',
      { ...base, tools: [{ ...base.tools[0], inputSchema: { type: 'object', allOf: [{ properties: { a: { pattern: '(?<=x)y' } } }] } }] },
      /inputSchema\/allOf\/0\/properties\/a\/pattern: .* uses lookaround/,
    ],
    ['a pattern that is not a regular expression', { ...base, tools: [{ ...base.tools[0], inputSchema: { type: 'object', properties: { a: { pattern: '[' } } } }] }, /is not a valid regular expression/],
  ])('refuses %s', (_what, value, message) => {
    expect(refusal(value)).toMatch(message);
  });

  it('accepts patterns RE2 can run, catastrophic ones included (they run in linear time)', () => {
    const manifest = parseManifest({
      ...base,
      tools: [{ ...base.tools[0], inputSchema: { type: 'object', properties: { a: { type: 'string', pattern: '^(a+)+$' } }, patternProperties: { '^(?<p>x)\\d{2}$': {} } } }],
    });
    expect(manifest.tools[0]!.inputSchema.properties).toEqual({ a: { type: 'string', pattern: '^(a+)+$' } });
  });

  it('publishes a JSON Schema of the manifest as authors write it', () => {
    const schema = pluginManifestJsonSchema as { type: string; properties: Record<string, unknown>; required: string[] };
    expect(schema.type).toBe('object');
    expect(Object.keys(schema.properties)).toEqual(['name', 'version', 'description', 'main', 'tools', 'capabilities', 'limits']);
    expect(schema.required).toEqual(['name', 'version', 'main', 'tools']);
  });
});
