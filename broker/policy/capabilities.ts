/**
 * The capabilities file Bastion builds policies with
 * (`opa build --capabilities policies/capabilities.json`): OPA's own
 * capabilities for the pinned version, with the builtins cut down to those
 * a WASM policy can run inside the broker. A policy that calls anything
 * else (http.send, net.lookup_ip_addr, opa.runtime, regex.split, …) fails at
 * build time with "undefined function", not at call time.
 *
 * The opa-wasm SDK ships a capabilities.json, but it predates OPA 1.x (no
 * `rego_v1` feature, so OPA 1.x refuses it) and lists builtins the wasm
 * target of a newer OPA implements differently. This file is generated from
 * `opa capabilities --current` instead, keeping its `features` and
 * `future_keywords`.
 *
 * @example
 *   const current = JSON.parse(execFileSync('opa', ['capabilities', '--current'], { encoding: 'utf8' }));
 *   writeFileSync('policies/capabilities.json', formatCapabilities(wasmCapabilities(current)));
 */
import { BASTION_BUILTINS, SDK_BUILTINS } from './builtins.ts';

/**
 * Builtins the OPA 1.22.2 wasm target compiles to its own C/WASM code
 * (`builtinsFunctions` in internal/compiler/wasm/wasm.go, plus `eq` and
 * `assign`, which the planner compiles away). Re-check this list when the
 * pinned OPA changes: test/policy/capabilities.test.ts compiles a policy
 * that calls every one and fails if the module imports any of them.
 */
export const WASM_NATIVE_BUILTINS: readonly string[] = [
  'abs', 'all', 'and', 'any', 'array.concat', 'array.flatten', 'array.reverse', 'array.slice', 'assign',
  'base64.decode', 'base64.encode', 'base64.is_valid', 'base64url.decode', 'base64url.encode',
  'bits.and', 'bits.lsh', 'bits.negate', 'bits.or', 'bits.rsh', 'bits.xor', 'ceil', 'concat', 'contains',
  'count', 'div', 'endswith', 'eq', 'equal', 'floor', 'format_int', 'glob.match', 'graph.reachable', 'gt',
  'gte', 'indexof', 'internal.member_2', 'internal.member_3', 'internal.template_string', 'intersection',
  'is_array', 'is_boolean', 'is_null', 'is_number', 'is_object', 'is_set', 'is_string', 'json.filter',
  'json.is_valid', 'json.marshal', 'json.remove', 'json.unmarshal', 'lower', 'lt', 'lte', 'max', 'min',
  'minus', 'mul', 'neq', 'net.cidr_contains', 'net.cidr_intersects', 'net.cidr_overlap', 'numbers.range',
  'object.filter', 'object.get', 'object.keys', 'object.remove', 'object.union', 'object.union_n', 'or',
  'plus', 'product', 're_match', 'regex.find_all_string_submatch_n', 'regex.is_valid', 'regex.match', 'rem',
  'replace', 'round', 'set_diff', 'sort', 'split', 'startswith', 'strings.replace_n', 'strings.reverse',
  'substring', 'sum', 'to_number', 'trim', 'trim_left', 'trim_prefix', 'trim_right', 'trim_space',
  'trim_suffix', 'type_name', 'union', 'upper', 'walk',
];

/** Every builtin a Bastion WASM policy may call. */
export const ALLOWED_BUILTINS: ReadonlySet<string> = new Set([...WASM_NATIVE_BUILTINS, ...SDK_BUILTINS, ...BASTION_BUILTINS]);

/** The shape of `opa capabilities` output that matters here; other fields are kept as they are. */
export interface OpaCapabilities {
  builtins: { name: string; [key: string]: unknown }[];
  [key: string]: unknown;
}

/** OPA's capabilities with only the builtins a WASM policy can run in Bastion. */
export function wasmCapabilities(current: OpaCapabilities): OpaCapabilities {
  const missing = [...ALLOWED_BUILTINS].filter((name) => !current.builtins.some((builtin) => builtin.name === name));
  if (missing.length > 0) {
    // A builtin renamed or removed by a new OPA: the lists above need a look.
    throw new Error(`opa capabilities --current lacks builtins Bastion allows: ${missing.join(', ')}`);
  }
  return { ...current, builtins: current.builtins.filter((builtin) => ALLOWED_BUILTINS.has(builtin.name)) };
}

/** Stable text for the committed file. */
export function formatCapabilities(capabilities: OpaCapabilities): string {
  return `${JSON.stringify(capabilities, null, 2)}\n`;
}
