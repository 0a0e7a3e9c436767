/**
 * The policy input JSON Schema is generated from the zod schema, committed
 * at policies/input.schema.json, and must not go stale.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { formatPolicyInputSchema, POLICY_INPUT_SCHEMA_FILE, policyInputJsonSchema, printPolicyInputSchema } from '../../broker/policy/input-schema.ts';

describe('policies/input.schema.json', () => {
  it('is current (regenerate with: bastion policy schema --write)', () => {
    expect(readFileSync(POLICY_INPUT_SCHEMA_FILE, 'utf8')).toBe(formatPolicyInputSchema());
  });

  it('is a versioned draft 2020-12 schema of a strict document', () => {
    const schema = policyInputJsonSchema() as { $schema: string; $id: string; required: string[]; additionalProperties: boolean; properties: Record<string, { const?: unknown; properties?: Record<string, unknown> }> };
    expect(schema.$schema).toBe('https://json-schema.org/draft/2020-12/schema');
    expect(schema.$id).toBe('urn:bastion:policy-input:v1');
    expect(schema.properties.version!.const).toBe(1);
    expect(schema.required).toEqual(['version', 'principal', 'tool', 'arguments', 'context']);
    expect(schema.additionalProperties).toBe(false);
    expect(schema.properties.tool!.properties!.risk).toEqual({ type: 'string', enum: ['low', 'medium', 'high'] });
  });

  it('prints the same text', () => {
    let printed = '';
    printPolicyInputSchema({ write: (text: string) => (printed += text) });
    expect(printed).toBe(formatPolicyInputSchema());
  });
});
