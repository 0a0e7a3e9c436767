/** Types of reveal.js (plain JavaScript, so the approval page can load it as is). */
export interface HiddenCharacter {
  /** What is shown in its place: \u202E, or \u{E0041} beyond the BMP. */
  escape: string;
  codePoint: number;
  /** "U+202E RIGHT-TO-LEFT OVERRIDE", or just "U+E0041". */
  description: string;
}
export function describeCharacter(codePoint: number): string;
export function escapeCharacter(codePoint: number): string;
export function revealSegments(text: string, multiline?: boolean): (string | HiddenCharacter)[];
export function revealText(text: string, multiline?: boolean): string;
export function hiddenCharacters(text: string, multiline?: boolean): string[];
