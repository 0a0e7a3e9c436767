/**
 * Patterns in schemas Bastion did not write run on RE2 (linear time), in
 * the sandbox processes (plugin schemas, limits.test.ts) and in the broker
 * itself (upstream output schemas, validated by the SDK client): a
 * catastrophic pattern cannot stall either, and a pattern RE2 cannot run
 * (backreference, lookaround) is refused when the schema is loaded, named.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallToolResult } from '@modelcontextprotocol/server';
import { compileLinear, compileSchema, linearSchemaValidator, schemaPatternProblems, UnsafePattern } from '../../sandboxes/schema-patterns.ts';
import { ROOT, RECORDING_UPSTREAM, startTestBroker, type TestBroker } from '../helpers/broker.ts';

const CATASTROPHIC = { type: 'object', properties: { v: { type: 'string', pattern: '^(a+)+$' } } };
const POISON = `${'a'.repeat(36)}!`;
const withPattern = (pattern: string) => ({ type: 'object', properties: { v: { type: 'string', pattern } }, required: ['v'] });

describe('the linear-time engine', () => {
  it('evaluates a catastrophic pattern against its worst input', () => {
    const validate = compileSchema(CATASTROPHIC);
    expect(validate({ v: POISON })).toBe(false);
    expect(validate({ v: 'aaaa' })).toBe(true);
  });

  it('keeps JSON Schema semantics: unanchored search, ECMA-262 escapes, patternProperties keys', () => {
    const validate = compileSchema({ type: 'object', properties: { id: { type: 'string', pattern: '\\u0041\\d{2}' } }, patternProperties: { '^x_(y+)+$': { type: 'number' } } });
    expect(validate({ id: 'zzA12zz' })).toBe(true);
    expect(validate({ id: 'B12' })).toBe(false);
    expect(validate({ x_yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy: 'not a number' })).toBe(false);
    expect(validate({ x_yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyz: 'not a number' })).toBe(true);
  });

  it('gives each pattern its own compiled form (ajv caches patterns by their string form)', () => {
    const validate = compileSchema({ type: 'object', properties: { a: { pattern: 'foo' }, b: { pattern: 'bar' } } });
    expect(validate({ a: 'xfoo', b: 'bar' })).toBe(true);
    expect(validate({ a: 'bar', b: 'bar' })).toBe(false);
  });

  it.each([
    ['(a)\\1', /backreference/],
    ['(?<n>a)\\k<n>', /backreference/],
    ['(?=a)', /lookaround/],
    ['(?<!a)b', /lookaround/],
    ['a{1001}', /invalid repeat count/],
    ['[', /not a valid regular expression/],
  ])('refuses %s', (pattern, why) => {
    expect(() => compileLinear(pattern)).toThrow(UnsafePattern);
    expect(() => compileLinear(pattern)).toThrow(why);
    expect(() => compileSchema({ type: 'string', pattern })).toThrow(why);
  });

  it('names every refused pattern by its place in the schema', () => {
    const problems = schemaPatternProblems({
      type: 'object',
      properties: { a: { pattern: '(x)\\1' }, 'b/c': { items: [{ pattern: '(?=x)' }] } },
      patternProperties: { '(?!y)': {} },
      $defs: { d: { anyOf: [{ pattern: '^ok$' }, { not: { pattern: '(?<=z)' } }] } },
    });
    expect(problems.map((p) => p.where).sort()).toEqual(['/$defs/d/anyOf/1/not/pattern', '/patternProperties/(?!y)', '/properties/a/pattern', '/properties/b~1c/items/0/pattern']);
  });

  it("serves the MCP SDK: a schema it cannot compile gives a validator that refuses, saying why, instead of throwing", () => {
    const refuse = linearSchemaValidator.getValidator({ type: 'object', properties: { v: { type: 'string', pattern: '(a)\\1' } } });
    expect(refuse({ v: 'aa' })).toMatchObject({ valid: false, errorMessage: expect.stringMatching(/cannot be evaluated: .*backreference/) });
    expect(linearSchemaValidator.getValidator(CATASTROPHIC)({ v: POISON })).toMatchObject({ valid: false });
  });
});

describe("upstream tools' schemas in the broker", () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({
      connectors: [
        { name: 'rec', transport: 'stdio', command: process.execPath, args: [RECORDING_UPSTREAM] },
        {
          name: 'schemas',
          transport: 'stdio',
          command: process.execPath,
          args: [path.join(ROOT, 'test/fixtures/listed-upstream.ts')],
          env: {
            TOOLS: JSON.stringify([
              { name: 'redos', description: 'Returns a string.', inputSchema: { type: 'object' }, outputSchema: withPattern('^(a+)+$') },
              { name: 'backref', description: 'Returns a string.', inputSchema: { type: 'object' }, outputSchema: withPattern('(a)\\1') },
              { name: 'plain', description: 'Returns a string.', inputSchema: { type: 'object' }, outputSchema: withPattern('^a+$') },
            ]),
            RESULTS: JSON.stringify({ redos: { text: POISON, structured: { v: POISON } }, plain: { text: 'aa', structured: { v: 'aa' } } }),
          },
        },
      ],
    });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('a catastrophic output-schema pattern is checked in linear time; the broker keeps answering', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:schemas', cap: [{ tool: 'schemas__*' }, { tool: 'rec__echo' }] }));
    const [redos, echo] = await Promise.all([
      client.callTool({ name: 'schemas__redos', arguments: {} }).then(
        () => 'accepted',
        (error: Error) => error.message,
      ),
      client.callTool({ name: 'rec__echo', arguments: { text: 'still here' } }) as Promise<CallToolResult>,
    ]);
    expect(redos).toMatch(/does not match the tool's output schema: \/v must match pattern/);
    expect(echo.content).toEqual([{ type: 'text', text: 'echo: still here' }]);
  });

  it('a tool whose schema holds a pattern RE2 cannot run is refused at load; the rest of its connector serves', async () => {
    const client = await t.connect(await t.mint({ sub: 'agent:schemas-list', cap: [{ tool: 'schemas__*' }] }));
    const names = (await client.listTools()).tools.map((tool) => tool.name).sort();
    expect(names).toEqual(['schemas__plain', 'schemas__redos']);
    const plain = (await client.callTool({ name: 'schemas__plain', arguments: {} })) as CallToolResult;
    expect(plain.structuredContent).toEqual({ v: 'aa' });
    await expect(client.callTool({ name: 'schemas__backref', arguments: {} })).rejects.toThrow(/Unknown tool: schemas__backref/);
  });
});
