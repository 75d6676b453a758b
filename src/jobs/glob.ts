import { BadRequest } from '../errors.js';

/**
 * fnmatch-style glob matching (`*`, `?`, `[...]`, `[!...]`) without a RegExp: client text never
 * becomes a regular expression. `*` and `?` never match `/`; a pattern and a name match component
 * by component. Each component is matched by the two-pointer wildcard algorithm with
 * backtrack-to-last-star: O(pattern × name) steps at worst, never exponential.
 */

/** Longest glob accepted (characters). */
export const MAX_GLOB_LENGTH = 1024;

type Token =
  | { readonly kind: 'lit'; readonly ch: string }
  | { readonly kind: 'any' }
  | { readonly kind: 'star' }
  | { readonly kind: 'class'; readonly negate: boolean; readonly ranges: readonly (readonly [number, number])[] };

export interface Glob {
  readonly components: readonly (readonly Token[])[];
}

export function hasGlobChars(name: string): boolean {
  return name.includes('*') || name.includes('?') || name.includes('[');
}

/** Parse a `/`-separated glob; a malformed class (unterminated, reversed range) or an over-long pattern is a 400. */
export function parseGlob(pattern: string): Glob {
  if (pattern.length > MAX_GLOB_LENGTH) throw new BadRequest(`glob pattern longer than ${MAX_GLOB_LENGTH} characters`);
  return { components: pattern.split('/').map(parseComponent) };
}

function parseComponent(text: string): Token[] {
  // Iterate by code point so a class or `?` covers one character, not one UTF-16 unit.
  const chars = Array.from(text);
  const tokens: Token[] = [];
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '*') {
      // Consecutive stars are one star.
      if (tokens.at(-1)?.kind !== 'star') tokens.push({ kind: 'star' });
    } else if (c === '?') tokens.push({ kind: 'any' });
    else if (c === '[') {
      let j = i + 1;
      let negate = false;
      if (chars[j] === '!') { negate = true; j++; }
      const ranges: [number, number][] = [];
      let first = true;
      let closed = false;
      while (j < chars.length) {
        const d = chars[j]!;
        // As in fnmatch, a `]` first in the class is a member, not its end.
        if (d === ']' && !first) { closed = true; break; }
        first = false;
        const lo = d.codePointAt(0)!;
        if (chars[j + 1] === '-' && j + 2 < chars.length && chars[j + 2] !== ']') {
          const hi = chars[j + 2]!.codePointAt(0)!;
          if (hi < lo) throw new BadRequest(`glob class has a reversed range "${d}-${chars[j + 2]}"`);
          ranges.push([lo, hi]);
          j += 3;
        } else {
          ranges.push([lo, lo]);
          j++;
        }
      }
      if (!closed) throw new BadRequest('glob has an unterminated "[" class');
      tokens.push({ kind: 'class', negate, ranges });
      i = j;
    } else tokens.push({ kind: 'lit', ch: c });
  }
  return tokens;
}

function matchesOne(token: Token, ch: string): boolean {
  switch (token.kind) {
    case 'lit': return token.ch === ch;
    case 'any': return true;
    case 'star': return false;
    case 'class': {
      const cp = ch.codePointAt(0)!;
      const inside = token.ranges.some(([lo, hi]) => cp >= lo && cp <= hi);
      return inside !== token.negate;
    }
  }
}

/** Two-pointer wildcard match of one component (no `/` on either side). */
function matchComponent(tokens: readonly Token[], text: readonly string[]): boolean {
  let p = 0;
  let t = 0;
  let starP = -1;
  let starT = 0;
  while (t < text.length) {
    const tok = tokens[p];
    if (tok !== undefined && tok.kind === 'star') {
      starP = p++;
      starT = t;
    } else if (tok !== undefined && matchesOne(tok, text[t]!)) {
      p++;
      t++;
    } else if (starP >= 0) {
      // Let the last star swallow one more character and retry from just after it.
      p = starP + 1;
      t = ++starT;
    } else return false;
  }
  while (tokens[p]?.kind === 'star') p++;
  return p === tokens.length;
}

/** Does the `/`-separated `name` match the glob (same number of components, each matching)? */
export function globMatches(glob: Glob, name: string): boolean {
  const parts = name.split('/');
  if (parts.length !== glob.components.length) return false;
  return parts.every((part, i) => matchComponent(glob.components[i]!, Array.from(part)));
}
