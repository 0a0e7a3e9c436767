/**
 * Where a parked call carries hidden characters (page/reveal.js): in the
 * text agents and upstreams supply and approvers read: the tool and
 * connector names, the principal and its delegation chain, the policy's
 * reasons, and every argument key and string value. The approval page shows
 * the list as a warning on the request, the webhook names it, and the
 * `approval.requested` audit record keeps it.
 *
 * @example
 *   hiddenCharactersOf(call);  // [{ where: 'arguments.path', characters: ['U+202E RIGHT-TO-LEFT OVERRIDE'] }]
 */
import { hiddenCharacters, revealText } from './page/reveal.js';
import type { ParkedCall } from './record.ts';

export interface HiddenTextFinding {
  /** A path into the record, with any hidden characters in it escaped. */
  where: string;
  /** Each distinct hidden character, described (U+202E RIGHT-TO-LEFT OVERRIDE). */
  characters: string[];
}

/** Findings beyond this many are summed up in one last entry (a record full of them needs no full list). */
const MAX_FINDINGS = 50;

const member = (path: string, key: string) => (/^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(revealText(key))}]`);

export function hiddenCharactersOf(call: Pick<ParkedCall, 'tool' | 'connector' | 'principal' | 'approval_reason' | 'reasons' | 'arguments'>): HiddenTextFinding[] {
  const findings: HiddenTextFinding[] = [];
  let more = 0;
  const check = (where: string, text: string, multiline: boolean) => {
    const characters = hiddenCharacters(text, multiline);
    if (characters.length === 0) return;
    if (findings.length < MAX_FINDINGS) findings.push({ where, characters });
    else more++;
  };
  check('tool', call.tool, false);
  check('connector', call.connector, false);
  check('principal.sub', call.principal.sub, false);
  check('principal.iss', call.principal.iss, false);
  call.principal.act.forEach((actor, i) => check(`principal.act[${i}].sub`, actor.sub, false));
  check('approval_reason', call.approval_reason, false);
  call.reasons.forEach((reason, i) => check(`reasons[${i}]`, reason, false));
  // Arguments are shown as pretty-printed JSON, where line feeds and tabs are visible escapes.
  // A queue, not recursion: arguments may nest as deep as the limits allow.
  const queue: [path: string, value: unknown, key?: string][] = [['arguments', call.arguments]];
  for (let next = 0; next < queue.length; next++) {
    const [path, value, key] = queue[next]!;
    if (key !== undefined) check(`${path} (the key)`, key, true);
    if (typeof value === 'string') check(path, value, true);
    else if (Array.isArray(value)) value.forEach((item, i) => queue.push([`${path}[${i}]`, item]));
    else if (value && typeof value === 'object') for (const [name, item] of Object.entries(value)) queue.push([member(path, name), item, name]);
  }
  if (more > 0) findings.push({ where: `${more} more places`, characters: [] });
  return findings;
}
