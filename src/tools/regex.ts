/**
 * Character sets, the pattern tree shared by the regex parser and the validator, and a parser for
 * the small regex dialect a `<regex>` validator element may use. Nothing here runs a JS RegExp:
 * patterns become trees that `automaton.ts` turns into one NFA (no backtracking, no ReDoS).
 */

/** The largest `{m,n}` bound (and element `max`) accepted; larger repeats are load errors. */
export const MAX_REPEAT = 1000;
const MAX_NESTING = 100;
const MAX_CODE_UNIT = 0xffff;

/** An immutable set of UTF-16 code units: sorted, disjoint, non-adjacent inclusive ranges. */
export class CharSet {
  /** Flat `[lo0, hi0, lo1, hi1, …]`. */
  readonly ranges: readonly number[];

  private constructor(ranges: readonly number[]) {
    this.ranges = ranges;
  }

  static readonly EMPTY = new CharSet([]);
  static readonly ANY = new CharSet([0, MAX_CODE_UNIT]);

  /** A set from `[lo, hi]` pairs in any order, overlapping or not. */
  static of(...pairs: readonly (readonly [number, number])[]): CharSet {
    const sorted = pairs.filter(([lo, hi]) => lo <= hi).sort((a, b) => a[0] - b[0]);
    const out: number[] = [];
    for (const [lo, hi] of sorted) {
      const last = out.length - 1;
      if (last > 0 && lo <= (out[last] ?? 0) + 1) out[last] = Math.max(out[last] ?? 0, hi);
      else out.push(lo, hi);
    }
    return new CharSet(out);
  }

  static char(code: number): CharSet {
    return new CharSet([code, code]);
  }

  /** Every code unit of `chars` (a string listing members; no range syntax). */
  static chars(chars: string): CharSet {
    return CharSet.of(...[...chars].map((c): [number, number] => [c.charCodeAt(0), c.charCodeAt(0)]));
  }

  private pairs(): [number, number][] {
    const out: [number, number][] = [];
    for (let i = 0; i + 1 < this.ranges.length; i += 2) out.push([this.ranges[i] ?? 0, this.ranges[i + 1] ?? 0]);
    return out;
  }

  get isEmpty(): boolean {
    return this.ranges.length === 0;
  }

  has(code: number): boolean {
    const r = this.ranges;
    let lo = 0;
    let hi = (r.length >> 1) - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (code < (r[2 * mid] ?? 0)) hi = mid - 1;
      else if (code > (r[2 * mid + 1] ?? 0)) lo = mid + 1;
      else return true;
    }
    return false;
  }

  union(other: CharSet): CharSet {
    return CharSet.of(...this.pairs(), ...other.pairs());
  }

  negate(): CharSet {
    const out: [number, number][] = [];
    let next = 0;
    for (const [lo, hi] of this.pairs()) {
      if (lo > next) out.push([next, lo - 1]);
      next = hi + 1;
    }
    if (next <= MAX_CODE_UNIT) out.push([next, MAX_CODE_UNIT]);
    return CharSet.of(...out);
  }

  intersect(other: CharSet): CharSet {
    return this.negate().union(other.negate()).negate();
  }

  minus(other: CharSet): CharSet {
    return this.intersect(other.negate());
  }

  /** Up to `limit` members, smallest first. */
  sample(limit: number): number[] {
    const out: number[] = [];
    for (const [lo, hi] of this.pairs()) {
      for (let c = lo; c <= hi && out.length < limit; c++) out.push(c);
      if (out.length >= limit) break;
    }
    return out;
  }
}

/**
 * A pattern tree. `label` marks the states built inside it with a number the validator maps to an
 * element description (for "expected …" in rejection reasons).
 */
export type Pattern =
  | { readonly type: 'set'; readonly set: CharSet }
  | { readonly type: 'seq'; readonly items: readonly Pattern[] }
  | { readonly type: 'alt'; readonly alts: readonly Pattern[] }
  | { readonly type: 'repeat'; readonly body: Pattern; readonly min: number; readonly max: number }
  | { readonly type: 'label'; readonly label: number; readonly body: Pattern }
  /**
   * Zero-width: the next code unit must not be in `set` (the end of the text passes). The
   * validator puts one after a literal that ends in an unbraced `$NAME`, so that nothing after it
   * can extend the name.
   */
  | { readonly type: 'guard'; readonly set: CharSet };

export const EMPTY: Pattern = { type: 'seq', items: [] };

export function set(s: CharSet): Pattern {
  return { type: 'set', set: s };
}

export function seq(...items: Pattern[]): Pattern {
  return items.length === 1 && items[0] !== undefined ? items[0] : { type: 'seq', items };
}

export function alt(...alts: Pattern[]): Pattern {
  return alts.length === 1 && alts[0] !== undefined ? alts[0] : { type: 'alt', alts };
}

/** Zero-width: the next code unit, if any, is not in `s`. */
export function notFollowedBy(s: CharSet): Pattern {
  return { type: 'guard', set: s };
}

/** `max` may be `Infinity`. */
export function repeat(body: Pattern, min: number, max: number): Pattern {
  return min === 1 && max === 1 ? body : { type: 'repeat', body, min, max };
}

export function optional(body: Pattern): Pattern {
  return repeat(body, 0, 1);
}

/** Exact text, code unit by code unit. */
export function text(value: string): Pattern {
  const items: Pattern[] = [];
  for (let i = 0; i < value.length; i++) items.push(set(CharSet.char(value.charCodeAt(i))));
  return seq(...items);
}

export function nullable(p: Pattern): boolean {
  switch (p.type) {
    case 'set':
      return false;
    case 'guard':
      return true;
    case 'seq':
      return p.items.every(nullable);
    case 'alt':
      return p.alts.some(nullable);
    case 'repeat':
      return p.min === 0 || nullable(p.body);
    case 'label':
      return nullable(p.body);
  }
}

/** Rebuild `p` with every set replaced by `f(set)` (guards are kept as they are). */
export function mapSets(p: Pattern, f: (s: CharSet) => CharSet): Pattern {
  switch (p.type) {
    case 'set':
      return set(f(p.set));
    case 'guard':
      return p;
    case 'seq':
      return { type: 'seq', items: p.items.map((item) => mapSets(item, f)) };
    case 'alt':
      return { type: 'alt', alts: p.alts.map((a) => mapSets(a, f)) };
    case 'repeat':
      return { ...p, body: mapSets(p.body, f) };
    case 'label':
      return { ...p, body: mapSets(p.body, f) };
  }
}

/** A pattern the parser cannot or will not handle; the message names the construct and offset. */
export class RegexSyntaxError extends Error {
  readonly offset: number;
  constructor(message: string, offset: number) {
    super(`${message} at offset ${offset}`);
    this.name = 'RegexSyntaxError';
    this.offset = offset;
  }
}

const DIGIT = CharSet.of([0x30, 0x39]);
const WORD = CharSet.of([0x30, 0x39], [0x41, 0x5a], [0x61, 0x7a], [0x5f, 0x5f]);
const SPACE = CharSet.chars(' \t\n\r\f\v');
/** Python's `.` without DOTALL: anything but a newline. */
const DOT = CharSet.char(0x0a).negate();

const CLASS_ESCAPES: Readonly<Record<string, CharSet>> = {
  d: DIGIT,
  D: DIGIT.negate(),
  w: WORD,
  W: WORD.negate(),
  s: SPACE,
  S: SPACE.negate(),
};
const CONTROL_ESCAPES: Readonly<Record<string, number>> = { t: 0x09, n: 0x0a, r: 0x0d, f: 0x0c, v: 0x0b };

/**
 * Parse a pattern of the supported dialect: literal characters, `.`, escapes (`\d \D \w \W \s \S`,
 * `\t \n \r \f \v`, `\xHH`, `\uHHHH`, any escaped punctuation), classes `[…]` with ranges and
 * negation (a leading `]` is literal, as in Python), groups `(…)` / `(?:…)`, `|`, and the greedy
 * quantifiers `* + ? {m} {m,} {m,n} {,n}` (bounds ≤ MAX_REPEAT). `^` first and `$` last are
 * accepted and ignored (the whole text is always anchored). Anything else throws RegexSyntaxError.
 */
export function parseRegex(source: string): Pattern {
  return new Parser(source).parse();
}

class Parser {
  readonly #src: string;
  #pos = 0;
  #end: number;
  #depth = 0;

  constructor(src: string) {
    this.#src = src;
    this.#end = src.length;
  }

  parse(): Pattern {
    if (this.#src.startsWith('^')) this.#pos = 1;
    if (this.#endsWithAnchor()) this.#end -= 1;
    const p = this.#alternation();
    if (this.#pos < this.#end) throw new RegexSyntaxError("unbalanced ')'", this.#pos);
    return p;
  }

  /** A final `$` that is not itself escaped. */
  #endsWithAnchor(): boolean {
    if (!this.#src.endsWith('$') || this.#src.length <= this.#pos) return false;
    let backslashes = 0;
    for (let i = this.#src.length - 2; i >= 0 && this.#src[i] === '\\'; i--) backslashes++;
    return backslashes % 2 === 0;
  }

  #peek(offset = 0): string | undefined {
    const i = this.#pos + offset;
    return i < this.#end ? this.#src[i] : undefined;
  }

  #alternation(): Pattern {
    if (++this.#depth > MAX_NESTING) throw new RegexSyntaxError('groups nested too deeply', this.#pos);
    const alts = [this.#sequence()];
    while (this.#peek() === '|') {
      this.#pos++;
      alts.push(this.#sequence());
    }
    this.#depth--;
    return alt(...alts);
  }

  #sequence(): Pattern {
    const items: Pattern[] = [];
    for (let c = this.#peek(); c !== undefined && c !== '|' && c !== ')'; c = this.#peek()) {
      items.push(this.#quantified(this.#atom()));
    }
    return seq(...items);
  }

  #quantified(atom: Pattern): Pattern {
    const c = this.#peek();
    let min: number;
    let max: number;
    if (c === '*') [min, max] = [0, Infinity];
    else if (c === '+') [min, max] = [1, Infinity];
    else if (c === '?') [min, max] = [0, 1];
    else if (c === '{') [min, max] = this.#braces();
    else return atom;
    if (c !== '{') this.#pos++;
    const next = this.#peek();
    if (next === '?') throw new RegexSyntaxError('lazy quantifier', this.#pos);
    if (next === '+') throw new RegexSyntaxError('possessive quantifier', this.#pos);
    if (next === '*' || next === '{') throw new RegexSyntaxError('multiple repeat', this.#pos);
    return repeat(atom, min, max);
  }

  /** `{m}`, `{m,}`, `{m,n}`, `{,n}`; consumes through `}`. */
  #braces(): [number, number] {
    const at = this.#pos;
    const m = /^\{(\d*)(,?)(\d*)\}/.exec(this.#src.slice(at, Math.min(this.#end, at + 16)));
    if (m === null || (m[1] === '' && m[2] === '')) throw new RegexSyntaxError("'{' that is not a quantifier (write \\{ for a literal brace)", at);
    this.#pos += m[0].length;
    const min = m[1] === '' ? 0 : Number(m[1]);
    const max = m[2] === '' ? min : m[3] === '' ? Infinity : Number(m[3]);
    if (min > MAX_REPEAT || (max !== Infinity && max > MAX_REPEAT)) throw new RegexSyntaxError(`repeat bound above ${MAX_REPEAT}`, at);
    if (min > max) throw new RegexSyntaxError('repeat bounds out of order', at);
    return [min, max];
  }

  #atom(): Pattern {
    const at = this.#pos;
    const c = this.#src[this.#pos++] ?? '';
    switch (c) {
      case '(':
        return this.#group(at);
      case '[':
        return set(this.#class(at));
      case '.':
        return set(DOT);
      case '\\':
        return set(this.#escape(false));
      case '*':
      case '+':
      case '?':
      case '{':
        throw new RegexSyntaxError('nothing to repeat', at);
      case '^':
        throw new RegexSyntaxError("anchor '^' (only allowed as the first character)", at);
      case '$':
        throw new RegexSyntaxError("anchor '$' (only allowed as the last character)", at);
      default:
        return set(CharSet.char(c.charCodeAt(0)));
    }
  }

  #group(at: number): Pattern {
    if (this.#peek() === '?') {
      const ext = this.#src.slice(this.#pos, this.#pos + 4);
      if (ext.startsWith('?:')) this.#pos += 2;
      else throw new RegexSyntaxError(groupExtensionName(ext), at);
    }
    const body = this.#alternation();
    if (this.#peek() !== ')') throw new RegexSyntaxError("missing ')'", at);
    this.#pos++;
    return body;
  }

  #class(at: number): CharSet {
    let negated = false;
    if (this.#peek() === '^') {
      negated = true;
      this.#pos++;
    }
    let result = CharSet.EMPTY;
    let first = true;
    for (;;) {
      const c = this.#peek();
      if (c === undefined) throw new RegexSyntaxError("missing ']'", at);
      if (c === ']' && !first) {
        this.#pos++;
        break;
      }
      first = false;
      const lo = this.#classMember();
      if (this.#peek() === '-' && this.#peek(1) !== ']' && this.#peek(1) !== undefined) {
        const dash = this.#pos++;
        const hi = this.#classMember();
        const [loCode, hiCode] = [singleCode(lo), singleCode(hi)];
        if (loCode === undefined || hiCode === undefined) throw new RegexSyntaxError('bad character range (a class escape as an end point)', dash);
        if (loCode > hiCode) throw new RegexSyntaxError('bad character range (end before start)', dash);
        result = result.union(CharSet.of([loCode, hiCode]));
      } else {
        result = result.union(lo);
      }
    }
    return negated ? result.negate() : result;
  }

  #classMember(): CharSet {
    const at = this.#pos;
    const c = this.#src[this.#pos++] ?? '';
    if (c === '\\') return this.#escape(true);
    if (c === '[') throw new RegexSyntaxError("unescaped '[' inside a character class (nested sets and POSIX classes are not supported)", at);
    const code = c.charCodeAt(0);
    if (code >= 0xd800 && code <= 0xdfff) throw new RegexSyntaxError('a character outside the Basic Multilingual Plane inside a class', at);
    return CharSet.char(code);
  }

  /** After a backslash. Inside a class `\b` is a backspace, as in Python. */
  #escape(inClass: boolean): CharSet {
    const at = this.#pos - 1;
    const c = this.#src[this.#pos++];
    if (c === undefined || this.#pos > this.#end) throw new RegexSyntaxError('trailing backslash', at);
    const classEscape = CLASS_ESCAPES[c];
    if (classEscape !== undefined) return classEscape;
    const control = CONTROL_ESCAPES[c];
    if (control !== undefined) return CharSet.char(control);
    if (c === 'b' && inClass) return CharSet.char(0x08);
    if (c === 'x' || c === 'u') {
      const digits = c === 'x' ? 2 : 4;
      const hex = this.#src.slice(this.#pos, this.#pos + digits);
      if (hex.length !== digits || !/^[0-9a-fA-F]+$/.test(hex) || this.#pos + digits > this.#end) {
        throw new RegexSyntaxError(`bad \\${c} escape (needs ${digits} hex digits)`, at);
      }
      this.#pos += digits;
      return CharSet.char(parseInt(hex, 16));
    }
    if (c >= '1' && c <= '9') throw new RegexSyntaxError('backreference', at);
    if (c === '0') throw new RegexSyntaxError('octal escape', at);
    if ('bBAZzG'.includes(c)) throw new RegexSyntaxError(`anchor \\${c}`, at);
    if (c === 'p' || c === 'P') throw new RegexSyntaxError('unicode property escape', at);
    if (c === 'k') throw new RegexSyntaxError('named backreference', at);
    if (/[A-Za-z0-9]/.test(c)) throw new RegexSyntaxError(`unknown escape \\${c}`, at);
    return CharSet.char(c.charCodeAt(0));
  }
}

function singleCode(s: CharSet): number | undefined {
  const [lo, hi] = s.ranges;
  return s.ranges.length === 2 && lo === hi ? lo : undefined;
}

function groupExtensionName(ext: string): string {
  if (ext.startsWith('?=')) return 'lookahead';
  if (ext.startsWith('?!')) return 'negative lookahead';
  if (ext.startsWith('?<=')) return 'lookbehind';
  if (ext.startsWith('?<!')) return 'negative lookbehind';
  if (ext.startsWith('?P=')) return 'named backreference';
  if (ext.startsWith('?P<') || ext.startsWith('?<') || ext.startsWith("?'")) return 'named group';
  if (ext.startsWith('?#')) return 'comment group';
  if (ext.startsWith('?(')) return 'conditional group';
  if (ext.startsWith('?>')) return 'atomic group';
  if (/^\?[a-zA-Z-]/.test(ext)) return 'inline flags';
  return 'unknown group extension';
}
