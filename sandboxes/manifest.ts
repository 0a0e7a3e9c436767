/**
 * The plugin manifest (`plugin.json`): one zod schema, the type inferred from
 * it, and the JSON Schema published from the same source for plugin authors.
 *
 * A manifest names the plugin, its one script, its tools (with JSON Schemas
 * for arguments and, optionally, results), the host capabilities it asks for
 * and its resource limits. Asking is not getting: a capability is granted
 * only when the operator's config allows it too, and limits are capped by
 * the host.
 *
 * @example
 *   const manifest = parseManifest(JSON.parse(text)); // throws SandboxError SANDBOX_MANIFEST_INVALID
 */
import { z } from 'zod';
import { SandboxError } from './errors.ts';
import { schemaPatternProblems } from './schema-patterns.ts';

export const PluginNameSchema = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,31}$/, 'lowercase letters, digits and "-", starting with a letter, at most 32')
  .refine((name) => !name.includes('__'), 'must not contain "__" (the namespace separator)');

/** Tool names start with a letter, so none can be `__proto__` and friends. */
const ToolName = z.string().regex(/^[A-Za-z][A-Za-z0-9_.-]{0,63}$/, 'a letter, then letters, digits, "_", "." or "-", at most 64');

/** MCP requires tool input (and output) schemas to describe objects. */
const ObjectSchema = z
  .record(z.string(), z.unknown())
  .refine((schema) => schema.type === 'object', 'must be a JSON Schema with "type": "object"');

const ToolAnnotations = z.strictObject({
  title: z.string().max(200).optional(),
  readOnlyHint: z.boolean().optional(),
  destructiveHint: z.boolean().optional(),
  idempotentHint: z.boolean().optional(),
  openWorldHint: z.boolean().optional(),
});

const PluginTool = z
  .strictObject({
    name: ToolName,
    title: z.string().max(200).optional(),
    description: z.string().min(1).max(4000),
    inputSchema: ObjectSchema,
    outputSchema: ObjectSchema.optional(),
    annotations: ToolAnnotations.optional(),
  })
  .superRefine((tool, ctx) => {
    // Patterns run on RE2 (linear time); one RE2 cannot run is refused here, named, rather than at the first call.
    for (const keyword of ['inputSchema', 'outputSchema'] as const) {
      for (const problem of schemaPatternProblems(tool[keyword])) {
        ctx.addIssue({ code: 'custom', path: [keyword], message: `tool ${tool.name}: ${keyword}${problem.where}: ${problem.message}` });
      }
    }
  });

/** `scheme://host[:port]` exactly, as `new URL(x).origin` prints it. */
const Origin = z.string().refine((value) => {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.origin === value;
  } catch {
    return false;
  }
}, 'must be an origin such as https://api.example.com or http://127.0.0.1:8080 (no path, no trailing slash)');

export const FETCH_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;
export const FetchMethodSchema = z.enum(FETCH_METHODS);

const Capabilities = z.strictObject({
  fetch: z
    .strictObject({
      origins: z.array(Origin).min(1).max(64),
      methods: z.array(FetchMethodSchema).min(1).default(['GET']),
    })
    .optional(),
  kv: z.strictObject({}).optional(),
  log: z.strictObject({}).optional(),
});

export const PluginLimitsSchema = z.strictObject({
  /** Isolate heap limit. isolated-vm treats it as a guideline; the process boundary is the hard stop. */
  memory_mb: z.int().min(8).max(4096).default(32),
  /** CPU time the isolate may spend on one call. */
  cpu_ms: z.int().min(1).max(600_000).default(100),
  /** Wall-clock deadline of one call, including time spent waiting on host capabilities. */
  wall_ms: z.int().min(1).max(3_600_000).default(1000),
  /** Largest result (UTF-8 JSON bytes). */
  max_result_bytes: z.int().min(16).max(16 * 1024 * 1024).default(65_536),
});

export const PluginManifestSchema = z
  .strictObject({
    name: PluginNameSchema,
    version: z.string().regex(/^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$/, 'a semantic version such as 1.2.3'),
    description: z.string().max(4000).optional(),
    /** The script's file name, in the plugin directory: no path separators. */
    main: z
      .string()
      .regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/, 'a file name in the plugin directory (no path separators)')
      .refine((name) => name.endsWith('.js'), 'must end in .js'),
    tools: z
      .array(PluginTool)
      .min(1)
      .max(128)
      .refine((tools) => new Set(tools.map((t) => t.name)).size === tools.length, 'tool names must be unique'),
    capabilities: Capabilities.default({}),
    limits: PluginLimitsSchema.default({ memory_mb: 32, cpu_ms: 100, wall_ms: 1000, max_result_bytes: 65_536 }),
  });

export type PluginManifest = z.infer<typeof PluginManifestSchema>;
export type PluginManifestInput = z.input<typeof PluginManifestSchema>;
export type PluginTool = PluginManifest['tools'][number];
export type PluginLimits = z.infer<typeof PluginLimitsSchema>;
export type FetchMethod = z.infer<typeof FetchMethodSchema>;
export type CapabilityName = 'fetch' | 'kv' | 'log';

/** The JSON Schema of `plugin.json` as authors write it (fields with defaults are optional). */
export const pluginManifestJsonSchema = z.toJSONSchema(PluginManifestSchema, { io: 'input' });

/** Validates a parsed `plugin.json`; a bad field is named by its path. */
export function parseManifest(value: unknown, where = 'plugin.json'): PluginManifest {
  const result = PluginManifestSchema.safeParse(value);
  if (!result.success) {
    const issues = result.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`);
    throw new SandboxError('SANDBOX_MANIFEST_INVALID', `invalid ${where}: ${issues.join('; ')}`);
  }
  return result.data;
}

/** The capabilities a manifest asks for, by name. */
export function requestedCapabilities(manifest: PluginManifest): CapabilityName[] {
  const names: CapabilityName[] = [];
  if (manifest.capabilities.fetch) names.push('fetch');
  if (manifest.capabilities.kv) names.push('kv');
  if (manifest.capabilities.log) names.push('log');
  return names;
}
