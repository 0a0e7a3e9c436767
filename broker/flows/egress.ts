/**
 * Destinations a call names through its egress arguments
 * (`connectors[].tools.<name>.egress`): a URL's host, an email address's
 * domain, or a host name given as is. The policy decides which hosts are
 * inside the organisation (data.bastion.flows.internal_domains); this only
 * reads them. A value that cannot be read as a destination gets host "",
 * which no internal domain matches: unreadable means external.
 *
 * @example
 *   egressTargets({ to: ['a@corp.example', 'b@evil.example'] }, { to: 'email' });
 *   // [{ argument: '/to/0', kind: 'email', value: 'a@corp.example', host: 'corp.example' }, { argument: '/to/1', ... host: 'evil.example' }]
 */
import type { EgressKind, EgressTarget } from './schema.ts';

/** Most destinations listed per call; the rest are summarized as one unreadable (external) target. */
const MAX_TARGETS = 63;

const HOST = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** The host a value names, lowercased, or "" when it names none. */
export function hostOf(kind: EgressKind, value: string): string {
  const text = value.trim();
  let host = '';
  if (kind === 'url') {
    try {
      host = new URL(text).hostname;
    } catch {
      return '';
    }
  } else if (kind === 'email') {
    // "Name <a@b>" as mail clients write it.
    const address = /<([^<>]+)>\s*$/.exec(text)?.[1] ?? text;
    const at = address.lastIndexOf('@');
    if (at <= 0) return '';
    host = address.slice(at + 1);
  } else {
    host = text;
  }
  host = host.toLowerCase().replace(/\.$/, '');
  // IPv6 literals keep their brackets in URL.hostname; any IP is a destination like another.
  return HOST.test(host) || /^\[[0-9a-f:.]+\]$/.test(host) ? host : '';
}

/** Every destination the call names, one per string (arrays are walked one level). */
export function egressTargets(args: Record<string, unknown>, egress: Record<string, EgressKind>): EgressTarget[] {
  const targets: EgressTarget[] = [];
  let overflow = false;
  const add = (argument: string, kind: EgressKind, value: unknown) => {
    if (targets.length >= MAX_TARGETS) {
      overflow = true;
      return;
    }
    const text = typeof value === 'string' ? value : JSON.stringify(value) ?? '';
    targets.push({ argument, kind, value: text.slice(0, 512), host: typeof value === 'string' ? hostOf(kind, value) : '' });
  };
  for (const [name, kind] of Object.entries(egress)) {
    if (!Object.hasOwn(args, name)) continue;
    const value = args[name];
    const base = `/${name.replaceAll('~', '~0').replaceAll('/', '~1')}`;
    if (Array.isArray(value)) value.forEach((item, i) => add(`${base}/${i}`, kind, item));
    // A comma-separated recipient list is several destinations.
    else if (kind === 'email' && typeof value === 'string' && value.includes(',')) value.split(',').forEach((item, i) => add(`${base}#${i}`, kind, item));
    else if (value !== null && value !== undefined && value !== '') add(base, kind, value);
  }
  if (overflow) targets.push({ argument: '', kind: 'host', value: `more than ${MAX_TARGETS} destinations`, host: '' });
  return targets;
}
