/**
 * The essence of a media type (RFC 9110 `type/subtype`, lowercased, without
 * parameters), the way HTTP stacks read it: a well-formed value parses; a
 * value whose parameter section is malformed still yields the segment before
 * the first `;`, unless its tail holds a comma (joined duplicate values are
 * ambiguous and yield nothing).
 *
 * @example
 *   mediaTypeEssence('Text/Plain; charset=utf-8'); // 'text/plain'
 *   mediaTypeEssence('text/plain; a=application/json'); // 'text/plain'
 */
const TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+";
const TYPE = new RegExp(`^${TOKEN}/${TOKEN}$`);
const PARAMETERS = new RegExp(`^(?:[ \\t]*;[ \\t]*${TOKEN}=(?:${TOKEN}|"(?:[\\t !#-\\[\\]-~\\x80-\\xff]|\\\\[\\t !-~\\x80-\\xff])*"))*[ \\t]*$`);

export function mediaTypeEssence(value: string | undefined): string | undefined {
  if (!value) return undefined;
  const cut = value.indexOf(';');
  const essence = (cut === -1 ? value : value.slice(0, cut)).trim().toLowerCase();
  const tail = cut === -1 ? '' : value.slice(cut);
  if (TYPE.test(essence) && PARAMETERS.test(tail)) return essence;
  if (essence === '' || tail.includes(',')) return undefined;
  return essence;
}
