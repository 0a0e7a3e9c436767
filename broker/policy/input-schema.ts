/**
 * The policy input document as JSON Schema, generated from the zod schema
 * the engine validates with (PolicyInputSchema), so Rego authors and tools
 * see exactly what the broker sends. Committed at policies/input.schema.json;
 * a test fails when the committed copy is stale. Regenerate with
 * `bastion policy schema --write`.
 *
 * Zod refinements (e.g. "a constraint needs at least one field") have no
 * JSON Schema form and are not in the file; the engine still enforces them.
 *
 * @example
 *   printPolicyInputSchema();            // to stdout
 *   const schema = policyInputJsonSchema();
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { PolicyInputSchema } from './schema.ts';

/** The input version this schema describes (PolicyInput.version). */
export const POLICY_INPUT_VERSION = 1;

export const POLICY_INPUT_SCHEMA_FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../policies/input.schema.json');

/** JSON Schema (draft 2020-12) of policy input version 1. */
export function policyInputJsonSchema(): Record<string, unknown> {
  const generated = z.toJSONSchema(PolicyInputSchema, { target: 'draft-2020-12', io: 'input' }) as Record<string, unknown>;
  const { $schema, ...rest } = generated;
  return {
    $schema,
    $id: `urn:bastion:policy-input:v${POLICY_INPUT_VERSION}`,
    title: `Bastion policy input, version ${POLICY_INPUT_VERSION}`,
    description:
      'The document the broker passes to data.bastion.decision as `input`. Generated from broker/policy/schema.ts; do not edit by hand.',
    ...rest,
  };
}

/** The committed file's exact text. */
export function formatPolicyInputSchema(): string {
  return `${JSON.stringify(policyInputJsonSchema(), null, 2)}\n`;
}

/** Writes the schema to a stream (stdout by default). */
export function printPolicyInputSchema(out: { write(text: string): unknown } = process.stdout): void {
  out.write(formatPolicyInputSchema());
}
