/**
 * JSON Schemas Bastion did not write (plugin manifests, upstream tools),
 * validated without backtracking regular expressions. A JSON Schema
 * `pattern` (or a `patternProperties` key) is a regular expression chosen by
 * whoever wrote the schema; evaluated by JavaScript's backtracking engine,
 * `^(a+)+$` against `'a'×36+'!'` keeps a thread busy for minutes. Here every
 * such pattern runs on RE2 (re2js, linear time in the input), and one RE2
 * cannot express (backreferences, lookaround, a repeat over 1000) is refused
 * when the schema is loaded, with a message naming where it is.
 *
 * This module lives under sandboxes/ because the sandbox processes compile
 * plugin schemas too, and may read nothing outside sandboxes/ and
 * node_modules/ (Node's permission model; see pool.ts).
 *
 * @example
 *   schemaPatternProblems({ type: 'object', properties: { a: { type: 'string', pattern: '(x)\\1' } } });
 *   // [{ where: '/properties/a/pattern', message: 'pattern "(x)\\1" ... backreference ...' }]
 *   const validate = compileSchema({ type: 'string', pattern: '^(a+)+$' }); // linear, whatever the input
 */
import type { JsonSchemaType, JsonSchemaValidator, jsonSchemaValidator } from '@modelcontextprotocol/server';
import { Ajv, type Options, type ValidateFunction } from 'ajv';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { RE2JS } from 're2js';

/** A `pattern` or `patternProperties` key Bastion refuses, and where it is (a JSON pointer into the schema). */
export interface PatternProblem {
  where: string;
  message: string;
}

/** Thrown by the engine for a pattern it will not run. */
export class UnsafePattern extends Error {
  override readonly name = 'UnsafePattern';
}

/** JavaScript-only escapes with no RE2 meaning that re2js's translation would quietly turn into literals. */
function namedBackreference(pattern: string): boolean {
  for (let i = 0; i < pattern.length; i++) {
    if (pattern[i] !== '\\') continue;
    if (pattern[i + 1] === 'k') return true;
    i++; // skip the escaped character, so `\\k` is a backslash and a k
  }
  return false;
}

/**
 * Compiles `pattern` (ECMA-262 syntax, as JSON Schema specifies) for RE2, or
 * throws UnsafePattern saying why it cannot be evaluated in linear time.
 */
export function compileLinear(pattern: string): RE2JS {
  const refuse = (why: string) => new UnsafePattern(`pattern ${JSON.stringify(pattern)} ${why}`);
  try {
    // Parsed, never run: the same syntax check ajv would make with the `u` flag.
    new RegExp(pattern, 'u');
  } catch (error) {
    throw refuse(`is not a valid regular expression: ${(error as Error).message}`);
  }
  if (namedBackreference(pattern)) throw refuse('uses a backreference, which Bastion does not evaluate (patterns run on RE2, in linear time)');
  try {
    return RE2JS.compile(RE2JS.translateRegExp(pattern));
  } catch (error) {
    const detail = (error as Error).message.replace(/^error parsing regexp: /, '');
    const kind = /`\(\?<?[=!]/.test(detail)
      ? 'uses lookaround, which'
      : /invalid escape sequence: `\\[1-9]/.test(detail)
        ? 'uses a backreference, which'
        : 'uses syntax that';
    throw refuse(`${kind} Bastion does not evaluate (patterns run on RE2, in linear time): ${detail}`);
  }
}

/**
 * ajv's regular expression engine (`code.regExp`): RE2 for every pattern.
 * The `toString` is ajv's cache key for a compiled pattern, so it must be
 * the pattern itself.
 */
export const linearRegExp = Object.assign(
  (pattern: string, _flags: string) => {
    const compiled = compileLinear(pattern);
    return { test: (text: string) => compiled.test(text), toString: () => `/${pattern}/re2` };
  },
  { code: 'bastionLinearRegExp' },
);

const AJV_OPTIONS: Options = { strict: false, allErrors: false, validateFormats: false, code: { regExp: linearRegExp } };

/**
 * Compiles a JSON Schema Bastion did not write, with RE2 for every pattern
 * (draft 2020-12 when its `$schema` says so, else draft-07). `format` is not
 * validated. Throws on an invalid schema or a pattern RE2 cannot run.
 */
export function compileSchema(schema: Record<string, unknown>): ValidateFunction {
  const draft2020 = typeof schema.$schema === 'string' && schema.$schema.includes('2020-12');
  return draft2020 ? new Ajv2020(AJV_OPTIONS).compile(schema) : new Ajv(AJV_OPTIONS).compile(schema);
}

/** JSON Schema keywords whose value is a subschema (drafts 07 to 2020-12). */
export const SUBSCHEMA = ['additionalProperties', 'additionalItems', 'contains', 'not', 'if', 'then', 'else', 'propertyNames', 'unevaluatedItems', 'unevaluatedProperties', 'contentSchema', 'items'];
/** Keywords whose value is an array of subschemas. */
export const SUBSCHEMA_LIST = ['allOf', 'anyOf', 'oneOf', 'prefixItems', 'items'];
/** Keywords whose value maps names to subschemas. */
export const SUBSCHEMA_MAP = ['properties', 'patternProperties', '$defs', 'definitions', 'dependentSchemas', 'dependencies'];
/** Deeper than this, a schema is refused rather than walked (and compiled). */
const MAX_DEPTH = 64;

const segment = (key: string | number) => `/${String(key).replaceAll('~', '~0').replaceAll('/', '~1')}`;

/**
 * Every `pattern` and `patternProperties` key in a schema that Bastion will
 * not evaluate, with its place. Empty when the schema's patterns can all
 * run on RE2.
 */
export function schemaPatternProblems(schema: unknown): PatternProblem[] {
  const problems: PatternProblem[] = [];
  const check = (pattern: string, where: string) => {
    try {
      compileLinear(pattern);
    } catch (error) {
      problems.push({ where, message: (error as Error).message });
    }
  };
  const walk = (node: unknown, where: string, depth: number): void => {
    if (node === null || typeof node !== 'object' || Array.isArray(node)) return;
    if (depth > MAX_DEPTH) {
      problems.push({ where, message: `the schema is nested deeper than ${MAX_DEPTH} levels` });
      return;
    }
    const schema = node as Record<string, unknown>;
    if (typeof schema.pattern === 'string') check(schema.pattern, `${where}/pattern`);
    const keyed = schema.patternProperties;
    if (keyed !== null && typeof keyed === 'object' && !Array.isArray(keyed)) {
      for (const key of Object.keys(keyed)) check(key, `${where}/patternProperties${segment(key)}`);
    }
    for (const keyword of SUBSCHEMA) walk(schema[keyword], `${where}${segment(keyword)}`, depth + 1);
    for (const keyword of SUBSCHEMA_LIST) {
      const list = schema[keyword];
      if (Array.isArray(list)) list.forEach((item, i) => walk(item, `${where}${segment(keyword)}${segment(i)}`, depth + 1));
    }
    for (const keyword of SUBSCHEMA_MAP) {
      const map = schema[keyword];
      if (map === null || typeof map !== 'object' || Array.isArray(map)) continue;
      for (const [name, sub] of Object.entries(map)) walk(sub, `${where}${segment(keyword)}${segment(name)}`, depth + 1);
    }
  };
  walk(schema, '', 0);
  return problems;
}

/** Every pattern problem of a tool's input and output schemas, each named `<keyword><pointer>`. */
export function toolSchemaProblems(tool: { inputSchema?: unknown; outputSchema?: unknown }): PatternProblem[] {
  return (['inputSchema', 'outputSchema'] as const).flatMap((keyword) =>
    schemaPatternProblems(tool[keyword]).map((problem) => ({ where: `${keyword}${problem.where}`, message: problem.message })),
  );
}

/**
 * The MCP SDK's `jsonSchemaValidator`, on compileSchema: the SDK client
 * validates an upstream tool's structured results against its output
 * schema (and the server, elicitation answers), in the broker's own
 * process. A schema that cannot be compiled does not throw (the SDK would
 * fail the whole tool list): its validator refuses every value, saying why.
 */
export const linearSchemaValidator: jsonSchemaValidator = {
  getValidator<T>(schema: JsonSchemaType): JsonSchemaValidator<T> {
    let validate: ValidateFunction;
    try {
      validate = compileSchema(schema as Record<string, unknown>);
    } catch (error) {
      const errorMessage = `the schema cannot be evaluated: ${(error as Error).message}`;
      return () => ({ valid: false, data: undefined, errorMessage });
    }
    return (input) =>
      validate(input)
        ? { valid: true, data: input as T, errorMessage: undefined }
        : { valid: false, data: undefined, errorMessage: (validate.errors ?? []).slice(0, 5).map((e) => `${e.instancePath || '(root)'} ${e.message ?? 'is invalid'}`).join('; ') };
  },
};
