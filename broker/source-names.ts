/**
 * Names of tool sources: connectors and plugins share one namespace. A name
 * is the prefix of a source's tools (`<name>__<tool>`, which capabilities
 * grant by pattern) and, for a plugin, the key of its kv store, so a source
 * that takes another's name takes its tools' grants and its data.
 *
 * Names the operator wrote (connectors, `plugins[].name`) are claimed in
 * order. A plugin without one would take the name its manifest declares:
 * anyone can write any name there, so such a claim is refused when any other
 * source has the name, and when several manifests claim one name, all of
 * them are refused (the operator never chose between them).
 *
 * @example
 *   refusedClaims([{ name: 'kv-a', where: 'plugins.0', configured: true }, { name: 'kv-a', where: 'plugins.1', configured: false }]);
 *   // [undefined, 'the name "kv-a" from its manifest is already the name of plugins.0; …']
 */
export interface NameClaim {
  name: string;
  /** Where the claim comes from, as a config path: `connectors.0`, `plugins.2`. */
  where: string;
  /** The operator wrote this name; otherwise a plugin's manifest declares it. */
  configured: boolean;
}

/** For each claim, why it is refused, or undefined when the name is its own. */
export function refusedClaims(claims: NameClaim[]): (string | undefined)[] {
  const owners = new Map<string, string>();
  const refusals = claims.map((claim) => {
    if (!claim.configured) return undefined;
    const owner = owners.get(claim.name);
    if (owner) return `"${claim.name}" is already the name of ${owner} (connectors and plugins need distinct names)`;
    owners.set(claim.name, claim.where);
    return undefined;
  });
  return claims.map((claim, i) => {
    if (claim.configured) return refusals[i];
    const owner = owners.get(claim.name);
    if (owner) return `the name "${claim.name}" from its manifest is already the name of ${owner}; give this plugin its own name in config (plugins[].name)`;
    const rivals = claims.filter((other) => other !== claim && other.name === claim.name).map((other) => other.where);
    if (rivals.length > 0) return `the name "${claim.name}" from its manifest is also claimed by the manifest of ${rivals.join(', ')}; none of them is loaded until each has its own name in config (plugins[].name)`;
    return undefined;
  });
}
