/**
 * The client's file action mapper (PROTOCOL §8.3), rebuilt on the server from
 * `remote_staging.action_mapper` for stage-out: which action a Galaxy path of a given type maps
 * to. Rules are tried in order and the first match wins; no match gives `default_action` for the
 * default path types and `none` for `unstructured`.
 *
 * Client text never becomes a JS RegExp: `regex` rules and `dynamic_outputs` (Python syntax,
 * `re.match` semantics) and `glob` rules (fnmatch: `*` crosses `/`) are compiled to the linear-time
 * automaton of `tools/automaton.ts`. What that engine cannot express (backreferences, lookaround,
 * a trailing `$` under a top-level `|`) is refused with the reason.
 */
import * as path from 'node:path';
import { BadRequest, JobRefused } from '../errors.js';
import { Automaton, AutomatonTooLarge } from '../tools/automaton.js';
import { CharSet, RegexSyntaxError, parseRegex, repeat, seq, set, type Pattern } from '../tools/regex.js';

/** Longest pattern (regex, glob, prefix) accepted from a client. */
export const MAX_PATTERN_LENGTH = 1024;
/** Most mapper rules, and most dynamic output patterns, accepted. */
export const MAX_RULES = 256;
/** NFA states one pattern may need. */
const MAX_NFA_STATES = 20_000;

export const DEFAULT_PATH_TYPES: readonly string[] = [
  'input', 'config', 'tool', 'workdir', 'jobdir', 'metadata', 'output', 'output_workdir', 'output_metadata', 'output_jobdir',
];
const ANY_PATH_TYPES: readonly string[] = [...DEFAULT_PATH_TYPES, 'unstructured'];

export type Matcher = (text: string) => boolean;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function short(text: string): string {
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function compile(pattern: Pattern, what: string): Matcher {
  let automaton: Automaton;
  try {
    automaton = Automaton.compile(pattern, { maxNfaStates: MAX_NFA_STATES });
  } catch (error) {
    if (error instanceof AutomatonTooLarge) throw new JobRefused(`${what} is too large for this server's pattern engine`);
    throw error;
  }
  return (text) => automaton.match(text).ok;
}

/**
 * Python named groups `(?P<name>…)` become plain groups (names are not needed to match), lazy
 * quantifiers greedy ones; a named backreference `(?P=name)` is refused. Escapes and character
 * classes are skipped over.
 */
function dropGroupNames(source: string, what: string): string {
  let out = '';
  let inClass = false;
  for (let i = 0; i < source.length; i++) {
    const c = source[i]!;
    if (c === '\\') {
      out += source.slice(i, i + 2);
      i++;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      out += c;
      continue;
    }
    if (c === '[') {
      inClass = true;
      out += c;
      // A `]` (or `^]`) right after the opening bracket is literal.
      if (source[i + 1] === '^') out += source[++i];
      if (source[i + 1] === ']') out += source[++i];
      continue;
    }
    if (source.startsWith('(?P=', i)) throw new JobRefused(`${what}: backreferences are not supported (linear-time matching only)`);
    if (source.startsWith('(?P<', i)) {
      const close = source.indexOf('>', i);
      if (close < 0) throw new JobRefused(`${what}: unterminated group name`);
      out += '(?:';
      i = close;
      continue;
    }
    out += c;
    // A lazy quantifier matches the same texts as the greedy one (only the span differs, which a
    // yes/no match does not see): drop its `?`.
    const quantifier = ((c === '*' || c === '+' || c === '?') && source[i - 1] !== '(') || (c === '}' && /\{\d*(?:,\d*)?\}$/.test(out.slice(-12)));
    if (quantifier && source[i + 1] === '?') i++;
  }
  return out;
}

/** Is there a `|` outside every group and class? */
function hasTopLevelAlternation(source: string): boolean {
  let depth = 0;
  let inClass = false;
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') {
      i++;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      continue;
    }
    if (c === '[') {
      inClass = true;
      if (source[i + 1] === '^') i++;
      if (source[i + 1] === ']') i++;
    } else if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === '|' && depth === 0) return true;
  }
  return false;
}

function endsWithDollar(source: string): boolean {
  if (!source.endsWith('$')) return false;
  let backslashes = 0;
  for (let i = source.length - 2; i >= 0 && source[i] === '\\'; i--) backslashes++;
  return backslashes % 2 === 0;
}

/**
 * A matcher with Python `re.match` semantics (anchored at the start only; a final `$` anchors the
 * end) for a pattern of the supported subset, in time linear in the text.
 */
export function pythonMatcher(source: unknown, what: string): Matcher {
  if (typeof source !== 'string') throw new BadRequest(`${what} must be a string`);
  if (source.length > MAX_PATTERN_LENGTH) throw new JobRefused(`${what} is longer than ${MAX_PATTERN_LENGTH} characters`);
  const plain = dropGroupNames(source, what);
  const anchoredEnd = endsWithDollar(plain);
  if (anchoredEnd && hasTopLevelAlternation(plain)) {
    throw new JobRefused(`${what}: a final "$" after a top-level "|" is not supported (put the alternatives in a group)`);
  }
  let pattern: Pattern;
  try {
    pattern = parseRegex(plain);
  } catch (error) {
    if (error instanceof RegexSyntaxError) throw new JobRefused(`${what} "${short(source)}" is not supported: ${error.message}`);
    throw error;
  }
  return compile(anchoredEnd ? pattern : seq(pattern, repeat(set(CharSet.ANY), 0, Infinity)), what);
}

/** fnmatch semantics (`*` and `?` cross `/`; `[…]`, `[!…]`; a malformed class is literal), linear time. */
export function fnmatchMatcher(glob: unknown, what: string): Matcher {
  if (typeof glob !== 'string') throw new BadRequest(`${what} must be a string`);
  if (glob.length > MAX_PATTERN_LENGTH) throw new JobRefused(`${what} is longer than ${MAX_PATTERN_LENGTH} characters`);
  const items: Pattern[] = [];
  const chars = glob;
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '*') items.push(repeat(set(CharSet.ANY), 0, Infinity));
    else if (c === '?') items.push(set(CharSet.ANY));
    else if (c === '[') {
      let j = i + 1;
      if (chars[j] === '!') j++;
      if (chars[j] === ']') j++;
      while (j < chars.length && chars[j] !== ']') j++;
      if (j >= chars.length) {
        items.push(set(CharSet.char(0x5b)));
        continue;
      }
      let body = chars.slice(i + 1, j);
      const negate = body.startsWith('!');
      if (negate) body = body.slice(1);
      const pairs: [number, number][] = [];
      for (let k = 0; k < body.length; k++) {
        const lo = body.charCodeAt(k);
        if (body[k + 1] === '-' && k + 2 < body.length) {
          pairs.push([lo, body.charCodeAt(k + 2)]);
          k += 2;
        } else pairs.push([lo, lo]);
      }
      const s = CharSet.of(...pairs);
      items.push(set(negate ? s.negate() : s));
      i = j;
    } else items.push(set(CharSet.char(chars.charCodeAt(i))));
  }
  return compile(items.length === 0 ? seq() : seq(...items), what);
}

export interface MapperRule {
  /** The rule as the client sent it (its `action` and action-specific keys). */
  readonly action: string;
  readonly pathTypes: ReadonlySet<string>;
  readonly matches: Matcher;
}

export interface ActionMapper {
  readonly defaultAction: string;
  readonly filesEndpoint: string | undefined;
  readonly rules: readonly MapperRule[];
}

function pathTypesOf(raw: unknown): Set<string> {
  if (raw === undefined || raw === null) return new Set(DEFAULT_PATH_TYPES);
  const list = Array.isArray(raw) ? raw : typeof raw === 'string' ? raw.split(',') : undefined;
  if (list === undefined) throw new BadRequest('action_mapper path_types must be a comma-separated string or a list');
  const out = new Set<string>();
  for (const item of list) {
    if (typeof item !== 'string') throw new BadRequest('action_mapper path_types must be strings');
    const name = item.trim();
    if (name === '*defaults*') DEFAULT_PATH_TYPES.forEach((n) => out.add(n));
    else if (name === '*any*') ANY_PATH_TYPES.forEach((n) => out.add(n));
    else if (name !== '') out.add(name);
  }
  return out;
}

/** Like Python's `abspath` for an absolute path: normalized, no trailing slash. */
function absolute(p: string): string {
  const normalized = path.posix.normalize(p);
  return normalized.length > 1 && normalized.endsWith('/') ? normalized.slice(0, -1) : normalized;
}

function ruleOf(raw: unknown, index: number): MapperRule {
  if (!isRecord(raw)) throw new BadRequest('action_mapper paths entries must be objects');
  const what = `action_mapper rule ${index + 1}`;
  const action = raw['action'] ?? 'transfer';
  if (typeof action !== 'string' || action.length > 64) throw new BadRequest(`${what}: action must be a short string`);
  const pathTypes = pathTypesOf(raw['path_types']);
  const matchType = raw['match_type'] ?? (raw['path'] === undefined ? 'path_type_only' : 'prefix');
  let matches: Matcher;
  switch (matchType) {
    case 'path_type_only':
      matches = () => true;
      break;
    case 'prefix': {
      const prefix = raw['path'];
      if (typeof prefix !== 'string' || prefix.length > MAX_PATTERN_LENGTH) throw new BadRequest(`${what}: prefix rule without a path`);
      const abs = absolute(prefix);
      matches = (p) => p.startsWith(abs);
      break;
    }
    case 'glob':
      matches = fnmatchMatcher(raw['path'], `${what} glob`);
      break;
    case 'regex':
      matches = pythonMatcher(raw['path'], `${what} regex`);
      break;
    default:
      throw new BadRequest(`${what}: unknown match_type "${short(String(matchType))}"`);
  }
  return { action, pathTypes, matches };
}

/** Parse `remote_staging.action_mapper`; throws a refusal for rules this server cannot run safely. */
export function parseActionMapper(raw: unknown): ActionMapper {
  if (!isRecord(raw)) throw new BadRequest('remote_staging.action_mapper must be an object');
  const defaultAction = raw['default_action'] ?? 'transfer';
  if (typeof defaultAction !== 'string') throw new BadRequest('action_mapper default_action must be a string');
  const endpoint = raw['files_endpoint'];
  if (endpoint !== undefined && endpoint !== null && typeof endpoint !== 'string') throw new BadRequest('action_mapper files_endpoint must be a string');
  const paths = raw['paths'] ?? [];
  if (!Array.isArray(paths)) throw new BadRequest('action_mapper paths must be a list');
  if (paths.length > MAX_RULES) throw new BadRequest(`action_mapper has more than ${MAX_RULES} rules`);
  return {
    defaultAction,
    filesEndpoint: typeof endpoint === 'string' ? endpoint : undefined,
    rules: paths.map(ruleOf),
  };
}

/** The action type for a Galaxy path of a type: the first matching rule's, else the default. */
export function mapAction(mapper: ActionMapper, galaxyPath: string, pathType: string): string {
  const p = absolute(galaxyPath);
  for (const rule of mapper.rules) {
    if (rule.pathTypes.has(pathType) && rule.matches(p)) return rule.action;
  }
  return DEFAULT_PATH_TYPES.includes(pathType) ? mapper.defaultAction : 'none';
}

/** The URL Galaxy's client builds for a remote transfer (PROTOCOL §8.1). */
export function transferUrl(filesEndpoint: string, galaxyPath: string, fileType: string): string {
  const query = new URLSearchParams({ path: galaxyPath, file_type: fileType }).toString();
  return `${filesEndpoint}${filesEndpoint.includes('?') ? '&' : '?'}${query}`;
}
