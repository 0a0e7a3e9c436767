/**
 * Configuration: the embedded default, strict validation that names the bad
 * field, YAML and JSON files with paths relative to the file, and the CLI's
 * usage texts and exit codes.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { ConfigError, demoConnector, loadConfig, parseConfig, parseDuration, PROJECT_ROOT } from '../broker/config.ts';

const run = promisify(execFile);
const CLI = path.join(PROJECT_ROOT, 'broker/cli.ts');

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bastion-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** parseConfig must throw a ConfigError whose message names `field`. */
function expectInvalid(document: unknown, field: string, detail?: RegExp): string {
  let error: unknown;
  try {
    parseConfig(document, 'test.yaml');
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(ConfigError);
  const message = (error as ConfigError).message;
  expect(message).toContain('invalid test.yaml');
  expect(message).toContain(`${field}:`);
  if (detail) expect(message).toMatch(detail);
  return message;
}

describe('the embedded default', () => {
  it('parses with the documented defaults', async () => {
    const config = await loadConfig(undefined);
    expect(config.server).toMatchObject({ host: '127.0.0.1', port: 8080, allowed_origins: [], max_body_bytes: 1_048_576 });
    expect(config.server.resource).toBeUndefined();
    expect(config.auth).toMatchObject({
      issuers: [],
      algorithms: ['EdDSA', 'ES256'],
      token_type: 'bastion-cap+jwt',
      max_ttl: 15 * 60_000,
      clock_skew: 30_000,
      anonymous: { enabled: false, sub: 'anonymous', cap: [] },
    });
    expect(config.state_dir).toBe('.bastion');
    expect(config.log_level).toBe('info');
    expect(config.connectors).toBeUndefined();
    expect(config.audit.file).toBeUndefined();
    expect(config.audit.durability).toBe('disk');
    expect(existsSync(config.policy.wasm)).toBe(true);
  });

  it('equals an empty document, a null document and {}', async () => {
    const embedded = await loadConfig(undefined);
    expect(parseConfig({})).toEqual(embedded);
    expect(parseConfig(null)).toEqual(embedded);
    expect(parseConfig(undefined)).toEqual(embedded);
  });

  it('the demo connector is a valid stdio connector running the repo demo server', () => {
    const demo = demoConnector();
    expect(demo).toMatchObject({ name: 'demo', transport: 'stdio', command: process.execPath, namespace: true, timeout: 60_000 });
    expect(demo.transport === 'stdio' && demo.args).toEqual([path.join(PROJECT_ROOT, 'connectors/demo-server.ts')]);
  });
});

describe('durations', () => {
  it('parses the documented forms', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('90')).toBe(90_000);
    expect(parseDuration(90)).toBe(90_000);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('1h')).toBe(3_600_000);
  });

  it('refuses anything else', () => {
    for (const bad of ['soon', '5 minutes', '-5s', '1.5m', '']) expect(() => parseDuration(bad)).toThrow(/not a duration/);
  });
});

describe('a bad field stops with a message naming its path', () => {
  it('connectors.0.url', () => {
    expectInvalid({ connectors: [{ name: 'search', transport: 'http', url: 'not a url' }] }, 'connectors.0.url');
  });

  it('server.port out of range, negative, fractional or a string', () => {
    for (const port of [70_000, -1, 80.5, 'http']) expectInvalid({ server: { port } }, 'server.port');
  });

  it('an unknown top-level key', () => {
    expectInvalid({ sever: { port: 1 } }, '(root)', /sever/);
  });

  it('an unknown nested key', () => {
    expectInvalid({ server: { prot: 1 } }, 'server', /prot/);
  });

  it('auth.clock_skew over 30s', () => {
    expectInvalid({ auth: { clock_skew: '31s' } }, 'auth.clock_skew', /at most 30s/);
    expectInvalid({ auth: { clock_skew: '1m' } }, 'auth.clock_skew', /at most 30s/);
    expect(parseConfig({ auth: { clock_skew: '30s' } }).auth.clock_skew).toBe(30_000);
  });

  it('a malformed duration', () => {
    expectInvalid({ auth: { max_ttl: 'a while' } }, 'auth.max_ttl', /not a duration/);
  });

  it('duplicate connector names', () => {
    const stdio = { transport: 'stdio', command: '/bin/true' };
    expectInvalid({ connectors: [{ name: 'fs', ...stdio }, { name: 'fs', ...stdio }] }, 'connectors.1.name', /"fs" is already the name of connectors\.0/);
  });

  it('a plugin named like a connector, or like another plugin: names of connectors and plugins are one namespace', () => {
    const stdio = { transport: 'stdio', command: '/bin/true' };
    const plugin = (name?: string) => ({ dir: 'plugins/p', hash: `sha256:${'a'.repeat(64)}`, ...(name ? { name } : {}) });
    expectInvalid({ connectors: [{ name: 'kv-a', ...stdio }], plugins: [plugin('kv-a')] }, 'plugins.0.name', /"kv-a" is already the name of connectors\.0/);
    expectInvalid({ plugins: [plugin('kv-a'), plugin(), plugin('kv-a')] }, 'plugins.2.name', /"kv-a" is already the name of plugins\.0/);
    expect(parseConfig({ connectors: [{ name: 'kv-a', ...stdio }], plugins: [plugin('kv-b'), plugin()] }).plugins?.map((p) => p.name)).toEqual(['kv-b', undefined]);
  });

  it('kv granted to a plugin without a name: its store must be keyed by a name the operator chose', () => {
    const plugin = { dir: 'plugins/p', hash: `sha256:${'a'.repeat(64)}` };
    expectInvalid({ plugins: [{ ...plugin, grants: { kv: true } }] }, 'plugins.0.name', /required when grants\.kv is set/);
    expectInvalid({ plugins: [{ ...plugin, grants: { kv: { max_keys: 10 } } }] }, 'plugins.0.name', /required when grants\.kv is set/);
    expect(parseConfig({ plugins: [{ ...plugin, grants: { kv: false } }] }).plugins?.[0]?.grants.kv).toBe(false);
  });

  it('kv quotas: defaults, overrides, and values that cannot work', () => {
    const plugin = { dir: 'plugins/p', hash: `sha256:${'a'.repeat(64)}`, name: 'p' };
    const defaults = { max_bytes: 1_048_576, max_keys: 1000, max_value_bytes: 65_536, max_key_bytes: 256 };
    expect(parseConfig({ plugins: [{ ...plugin, grants: { kv: true } }] }).plugins?.[0]?.grants.kv).toEqual(defaults);
    expect(parseConfig({ plugins: [{ ...plugin, grants: { kv: {} } }] }).plugins?.[0]?.grants.kv).toEqual(defaults);
    expect(parseConfig({ plugins: [{ ...plugin, grants: { kv: { max_bytes: 4096, max_keys: 5, max_value_bytes: 1024 } } }] }).plugins?.[0]?.grants.kv).toEqual({
      max_bytes: 4096,
      max_keys: 5,
      max_value_bytes: 1024,
      max_key_bytes: 256,
    });
    expectInvalid({ plugins: [{ ...plugin, grants: { kv: { max_keys: 0 } } }] }, 'plugins.0.grants.kv.max_keys');
    expectInvalid({ plugins: [{ ...plugin, grants: { kv: { max_bytes: 1000 } } }] }, 'plugins.0.grants.kv.max_value_bytes', /must not exceed max_bytes/);
    expectInvalid({ plugins: [{ ...plugin, grants: { kv: { max_key_bytes: 5000 } } }] }, 'plugins.0.grants.kv.max_key_bytes');
    expectInvalid({ plugins: [{ ...plugin, grants: { kv: { quota: 1 } } }] }, 'plugins.0.grants.kv');
  });

  it('a connector name containing "__" (the namespace separator)', () => {
    expectInvalid({ connectors: [{ name: 'a__b', transport: 'stdio', command: '/bin/true' }] }, 'connectors.0.name');
  });

  it('other malformed connector names', () => {
    for (const name of ['Demo', '9lives', '', 'x'.repeat(33), 'a b']) {
      expectInvalid({ connectors: [{ name, transport: 'stdio', command: '/bin/true' }] }, 'connectors.0.name');
    }
  });

  it('connector isolation: an unknown mode, bounds that contradict each other or are not positive, an idle time under 100ms', () => {
    const fs = { name: 'fs', transport: 'stdio', command: '/bin/true' };
    expectInvalid({ connectors: [{ ...fs, isolation: { mode: 'shared' } }] }, 'connectors.0.isolation.mode');
    expectInvalid({ connectors: [{ ...fs, isolation: { max: 1, max_per_principal: 2 } }] }, 'connectors.0.isolation.max_per_principal');
    expectInvalid({ connectors: [{ ...fs, isolation: { max: 0 } }] }, 'connectors.0.isolation.max');
    expectInvalid({ connectors: [{ ...fs, isolation: { max_per_principal: 1.5 } }] }, 'connectors.0.isolation.max_per_principal');
    expectInvalid({ connectors: [{ ...fs, isolation: { idle: '10ms' } }] }, 'connectors.0.isolation.idle');
    expectInvalid({ connectors: [{ ...fs, isolation: { per: 'session' } }] }, 'connectors.0.isolation');
  });

  it('connector isolation defaults: one connection per agent session, 32 per connector, 8 per principal, closed after 5 minutes idle', () => {
    const config = parseConfig({ connectors: [{ name: 'fs', transport: 'stdio', command: '/bin/true' }] });
    expect(config.connectors![0]!.isolation).toEqual({ mode: 'session', max: 32, max_per_principal: 8, idle: 300_000 });
  });

  it('an unknown connector transport', () => {
    expectInvalid({ connectors: [{ name: 'ws', transport: 'websocket', url: 'ws://x' }] }, 'connectors.0.transport');
  });

  it('a stdio connector without a command', () => {
    expectInvalid({ connectors: [{ name: 'fs', transport: 'stdio' }] }, 'connectors.0.command');
  });

  it('an unknown key on a connector (e.g. a url on a stdio connector)', () => {
    expectInvalid({ connectors: [{ name: 'fs', transport: 'stdio', command: '/bin/true', url: 'http://x' }] }, 'connectors.0', /url/);
  });

  it('a bad risk override', () => {
    expectInvalid({ connectors: [{ name: 'fs', transport: 'stdio', command: '/bin/true', tools: { rm: { risk: 'extreme' } } }] }, 'connectors.0.tools.rm.risk');
  });

  it('an unknown audit durability', () => {
    expectInvalid({ audit: { durability: 'memory' } }, 'audit.durability');
  });

  it('an algorithm outside the allow-list', () => {
    expectInvalid({ auth: { algorithms: ['HS256'] } }, 'auth.algorithms.0');
    expectInvalid({ auth: { algorithms: [] } }, 'auth.algorithms');
  });

  it('an invalid anonymous capability', () => {
    expectInvalid({ auth: { anonymous: { enabled: true, cap: [{ tool: 'x', args: { a: {} } }] } } }, 'auth.anonymous.cap.0.args.a');
  });

  it('an unknown log level', () => {
    expectInvalid({ log_level: 'verbose' }, 'log_level');
  });

  it('a non-positive body cap', () => {
    expectInvalid({ server: { max_body_bytes: 0 } }, 'server.max_body_bytes');
  });

  it('every bad field is listed, not just the first', () => {
    const message = expectInvalid({ server: { port: -1 }, log_level: 'loud' }, 'server.port');
    expect(message).toContain('log_level:');
  });

  it('a document that is not an object', () => {
    expectInvalid(['server'], '(root)');
    expectInvalid('port: 8080', '(root)');
  });
});

describe('config files', () => {
  const document = {
    server: { port: 9123, resource: 'https://bastion.example/mcp' },
    state_dir: 'state',
    audit: { file: 'logs/audit.jsonl' },
    policy: { wasm: 'policy/policy.wasm' },
    auth: { issuers: [{ issuer: 'https://id.example', jwks_file: 'keys/jwks.json' }], max_ttl: '5m' },
    log_level: 'warn',
    connectors: [
      { name: 'fs', transport: 'stdio', command: 'some-server', args: ['--root', 'data'], cwd: 'work', tools: { rm: { risk: 'high' } } },
      { name: 'search', transport: 'http', url: 'https://search.internal/mcp', headers: { Authorization: 'Bearer x' }, namespace: false },
    ],
  };
  let configDir: string;

  beforeAll(async () => {
    configDir = path.join(dir, 'etc', 'bastion');
    await mkdir(configDir, { recursive: true });
    await writeFile(path.join(configDir, 'bastion.yaml'), YAML.stringify(document));
    await writeFile(path.join(configDir, 'bastion.json'), JSON.stringify(document, null, 2));
  });

  it('a YAML file and a JSON file with the same content give the same config', async () => {
    const fromYaml = await loadConfig(path.join(configDir, 'bastion.yaml'));
    const fromJson = await loadConfig(path.join(configDir, 'bastion.json'));
    expect(fromYaml).toEqual(fromJson);
    expect(fromYaml.server.port).toBe(9123);
    expect(fromYaml.auth.max_ttl).toBe(300_000);
    expect(fromYaml.log_level).toBe('warn');
    expect(fromYaml.connectors?.[1]).toMatchObject({ name: 'search', transport: 'http', namespace: false });
    expect(fromYaml.connectors?.[0]).toMatchObject({ tools: { rm: { risk: 'high' } }, timeout: 60_000 });
  });

  it('relative paths are resolved against the config file folder, not the working directory', async () => {
    const previous = process.cwd();
    process.chdir(dir); // somewhere else entirely
    try {
      const config = await loadConfig(path.relative(dir, path.join(configDir, 'bastion.yaml')));
      expect(config.state_dir).toBe(path.join(configDir, 'state'));
      expect(config.audit.file).toBe(path.join(configDir, 'logs/audit.jsonl'));
      expect(config.policy.wasm).toBe(path.join(configDir, 'policy/policy.wasm'));
      expect(config.auth.issuers[0]).toMatchObject({ jwks_file: path.join(configDir, 'keys/jwks.json') });
      const fs = config.connectors?.[0];
      expect(fs?.transport === 'stdio' && fs.cwd).toBe(path.join(configDir, 'work'));
    } finally {
      process.chdir(previous);
    }
  });

  it('absolute paths are kept, and defaults still point into the repository', async () => {
    const file = path.join(configDir, 'absolute.yaml');
    await writeFile(file, YAML.stringify({ state_dir: '/var/lib/bastion' }));
    const config = await loadConfig(file);
    expect(config.state_dir).toBe('/var/lib/bastion');
    expect(config.policy.wasm).toBe(path.join(PROJECT_ROOT, 'policies/compiled/policy.wasm'));
  });

  it('an empty file is the embedded default (with state_dir beside the file)', async () => {
    const file = path.join(configDir, 'empty.yaml');
    await writeFile(file, '');
    const config = await loadConfig(file);
    expect(config.server.port).toBe(8080);
    expect(config.state_dir).toBe(path.join(configDir, '.bastion'));
  });

  it('a bad field in a file names the file and the field', async () => {
    const file = path.join(configDir, 'bad.yaml');
    await writeFile(file, 'connectors:\n  - name: search\n    transport: http\n    url: nope\n');
    await expect(loadConfig(file)).rejects.toThrow(ConfigError);
    await expect(loadConfig(file)).rejects.toThrow(`invalid config ${file}`);
    await expect(loadConfig(file)).rejects.toThrow('connectors.0.url:');
  });

  it('a missing file', async () => {
    await expect(loadConfig(path.join(configDir, 'missing.yaml'))).rejects.toThrow(/cannot read config .*missing\.yaml/);
  });

  it('unparseable YAML and JSON', async () => {
    const yamlFile = path.join(configDir, 'broken.yaml');
    const jsonFile = path.join(configDir, 'broken.json');
    await writeFile(yamlFile, 'server: [unclosed\n');
    await writeFile(jsonFile, '{"server": ');
    await expect(loadConfig(yamlFile)).rejects.toThrow(/cannot parse config .*broken\.yaml/);
    await expect(loadConfig(jsonFile)).rejects.toThrow(/cannot parse config .*broken\.json/);
  });
});

describe('the CLI', () => {
  async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { cwd: dir, timeout: 30_000 });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const e = error as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }

  it('start --config bad.yaml exits non-zero and names the field', async () => {
    const file = path.join(dir, 'cli-bad.yaml');
    await writeFile(file, 'server:\n  port: 99999\nconnectors:\n  - name: search\n    transport: http\n    url: nope\n');
    const { code, stdout, stderr } = await cli('start', '--config', file);
    expect(code).toBe(1);
    expect(stderr).toContain(`invalid config ${file}`);
    expect(stderr).toContain('server.port:');
    expect(stderr).toContain('connectors.0.url:');
    expect(stdout).not.toContain('listening');
    expect(existsSync(path.join(dir, '.bastion'))).toBe(false);
  });

  it('start --config with a missing file exits non-zero', async () => {
    const { code, stderr } = await cli('start', '--config', path.join(dir, 'nope.yaml'));
    expect(code).toBe(1);
    expect(stderr).toContain('cannot read config');
  });

  it('--help prints the usage and exits 0', async () => {
    for (const flag of ['--help', '-h', 'help']) {
      const { code, stdout } = await cli(flag);
      expect(code).toBe(0);
      expect(stdout).toContain('usage: bastion <command>');
      for (const command of ['start', 'stdio', 'token mint', 'audit verify']) expect(stdout).toContain(command);
    }
  });

  it('start --help', async () => {
    const { code, stdout } = await cli('start', '--help');
    expect(code).toBe(0);
    expect(stdout).toContain('usage: bastion start');
    expect(stdout).toContain('--port');
  });

  it('stdio --help', async () => {
    const { code, stdout } = await cli('stdio', '--help');
    expect(code).toBe(0);
    expect(stdout).toContain('usage: bastion stdio');
    expect(stdout).toContain('BASTION_TOKEN');
  });

  it('token mint --help', async () => {
    const { code, stdout } = await cli('token', 'mint', '--help');
    expect(code).toBe(0);
    expect(stdout).toContain('usage: bastion token mint');
    expect(stdout).toContain('--cap-json');
  });

  it('audit verify --help', async () => {
    const { code, stdout } = await cli('audit', 'verify', '--help');
    expect(code).toBe(0);
    expect(stdout).toContain('usage: bastion audit verify FILE');
  });

  it('an unknown command exits 2 and shows the usage', async () => {
    const { code, stderr } = await cli('frobnicate');
    expect(code).toBe(2);
    expect(stderr).toContain('unknown command: frobnicate');
    expect(stderr).toContain('usage: bastion <command>');
  });

  it('an unknown option exits 2', async () => {
    const { code, stderr } = await cli('start', '--prot', '1');
    expect(code).toBe(2);
    expect(stderr).toContain('--prot');
  });

  it('a bad --port exits 2', async () => {
    const { code, stderr } = await cli('start', '--port', 'eighty');
    expect(code).toBe(2);
    expect(stderr).toContain('--port');
  });

  it('token mint without --sub exits 2', async () => {
    const { code, stderr } = await cli('token', 'mint', '--cap', 'demo__*');
    expect(code).toBe(2);
    expect(stderr).toContain('--sub is required');
  });
});
