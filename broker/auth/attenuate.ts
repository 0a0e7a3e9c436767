/**
 * Attenuation: whether a requested set of capabilities is covered by a
 * parent's, so a delegated token can only ever be narrower.
 *
 * The checks are sound, not complete: when inclusion cannot be shown (two
 * different regular expressions, say), the request is refused. A refusal
 * names the first grant that is not covered and why.
 *
 * @example
 *   attenuationProblem([{ tool: 'fs__*' }], [{ tool: 'fs__read_*' }]); // undefined: covered
 *   attenuationProblem([{ tool: 'fs__read_*' }], [{ tool: 'fs__*' }]); // 'grant 0 (fs__*): ...'
 */
import { canonicalJson } from '../audit/chain.ts';
import type { Capability, Constraint } from '../policy/schema.ts';

/**
 * True when every name the child glob matches is matched by the parent glob.
 * A `*` in the child stands for "anything", so only a `*` in the parent can
 * absorb it; literals must match literals.
 */
export function globCovers(parent: string, child: string): boolean {
  const p = [...parent];
  const c = [...child];
  // reach[j]: the parent prefix read so far can produce exactly child[0..j).
  let reach: boolean[] = Array.from({ length: c.length + 1 }, (_, j) => j === 0);
  for (const symbol of p) {
    const next: boolean[] = new Array(c.length + 1).fill(false);
    if (symbol === '*') {
      let any = false;
      for (let j = 0; j <= c.length; j++) {
        any ||= reach[j]!;
        next[j] = any;
      }
    } else {
      for (let j = 1; j <= c.length; j++) next[j] = reach[j - 1]! && c[j - 1] === symbol;
    }
    reach = next;
  }
  return reach[c.length]!;
}

const same = (a: unknown, b: unknown) => canonicalJson(a) === canonicalJson(b);

function pathUnder(parent: string, child: string): boolean {
  if (child.split('/').some((segment) => segment === '..' || segment === '.')) return false;
  if (child === parent) return true;
  return parent.endsWith('/') ? child.startsWith(parent) : child.startsWith(`${parent}/`);
}

/** Why `child` is not at least as strict as `parent` for one argument, or undefined. */
function constraintProblem(parent: Constraint, child: Constraint | undefined): string | undefined {
  if (!child) return 'the parent constrains this argument and the request does not';
  if (parent.eq !== undefined && !(child.eq !== undefined && same(child.eq, parent.eq))) return 'eq must stay the same';
  if (parent.enum !== undefined) {
    const allowed = new Set(parent.enum.map((v) => canonicalJson(v)));
    const ok =
      (child.eq !== undefined && allowed.has(canonicalJson(child.eq))) ||
      (child.enum !== undefined && child.enum.every((v) => allowed.has(canonicalJson(v))));
    if (!ok) return 'enum must be a subset of the parent enum';
  }
  if (parent.prefix !== undefined && !(child.prefix !== undefined && child.prefix.startsWith(parent.prefix))) {
    return `prefix must extend "${parent.prefix}"`;
  }
  if (parent.path_prefix !== undefined && !(child.path_prefix !== undefined && pathUnder(parent.path_prefix, child.path_prefix))) {
    return `path_prefix must stay under "${parent.path_prefix}"`;
  }
  if (parent.pattern !== undefined && child.pattern !== parent.pattern) return 'pattern must stay the same';
  if (parent.min !== undefined && !(child.min !== undefined && child.min >= parent.min)) return `min must be at least ${parent.min}`;
  if (parent.max !== undefined && !(child.max !== undefined && child.max <= parent.max)) return `max must be at most ${parent.max}`;
  if (parent.max_length !== undefined && !(child.max_length !== undefined && child.max_length <= parent.max_length)) {
    return `max_length must be at most ${parent.max_length}`;
  }
  return undefined;
}

/**
 * Operator grants (`bastion:revoke`, `bastion:tools`) are honoured only as
 * literal grants, so a glob like `*` must not let a holder mint one by
 * delegation: only the same literal grant covers it.
 */
export const OPERATOR_GRANT_PREFIX = 'bastion:';

/** Why `parent` does not cover `child`, or undefined when it does. */
export function grantProblem(parent: Capability, child: Capability): string | undefined {
  if (child.tool.startsWith(OPERATOR_GRANT_PREFIX) && parent.tool !== child.tool) {
    return `operator grant "${child.tool}" can only be delegated from the same literal grant`;
  }
  if (!globCovers(parent.tool, child.tool)) return `tool pattern is wider than "${parent.tool}"`;
  for (const [name, constraint] of Object.entries(parent.args ?? {})) {
    const problem = constraintProblem(constraint, child.args?.[name]);
    if (problem) return `argument ${name}: ${problem}`;
  }
  return undefined;
}

/** Undefined when every requested grant is covered by some parent grant; else the first problem. */
export function attenuationProblem(parent: Capability[], requested: Capability[]): string | undefined {
  for (const [index, child] of requested.entries()) {
    const problems = parent.map((grant) => grantProblem(grant, child));
    if (problems.every((p) => p !== undefined)) {
      return `grant ${index} (${child.tool}) is not covered by the parent token: ${problems[0] ?? 'the parent has no capabilities'}`;
    }
  }
  return undefined;
}
