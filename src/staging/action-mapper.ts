/**
 * The client's file action mapper (PROTOCOL §8.3), rebuilt on the server from
 * `remote_staging.action_mapper` for stage-out: which action a Galaxy path of a given type maps
 * to. Rules are tried in order and the first match wins; no match gives `default_action` for the
 * default path types and `none` for `unstructured`.
 *
 * Client text never becomes a JS RegExp: `regex` rules, `dynamic_outputs` and the patterns of
 * `dataset_collector_descriptions` (Python syntax, `re.match` semantics) and `glob` rules (fnmatch: `*` crosses `/`) are compiled to the linear-time
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

/**
 * Galaxy's named "discover datasets" patterns (`NAMED_PATTERNS` of
 * `galaxy/tool_util/parser/output_collection_def.py`), Python syntax.
 */
export const NAMED_COLLECTOR_PATTERNS: Readonly<Record<string, string>> = {
  __default__: 'primary_DATASET_ID_(?P<designation>[^_]+)_(?P<visible>[^_]+)_(?P<ext>[^_]+)(_(?P<dbkey>[^_]+))?',
  __name__: '(?P<name>.*)',
  __designation__: '(?P<designation>.*)',
  __name_and_ext__: '(?P<name>.*)\\.(?P<ext>[^\\.]+)?',
  __designation_and_ext__: '(?P<designation>.*)\\.(?P<ext>[^\\._]+)?',
};
/** Galaxy replaces this token with the dataset id, or with `\d+` when it has none (as here). */
const DATASET_ID_TOKEN = 'DATASET_ID';
const TRUTHY: ReadonlySet<string> = new Set(['true', 'yes', 'on', 'y', 't', '1']);
const FALSY: ReadonlySet<string> = new Set(['false', 'no', 'off', 'n', 'f', '0', '']);

/** `galaxy.util.asbool`: a bool, a number, or one of the true/false words. */
function asBool(value: unknown, what: string): boolean {
  if (value === undefined || value === null) return false;
  if (typeof value === 'boolean') return value;
  if (typeof value === 'number') return value !== 0;
  if (typeof value === 'string') {
    const word = value.trim().toLowerCase();
    if (TRUTHY.has(word)) return true;
    if (FALSY.has(word)) return false;
  }
  throw new BadRequest(`${what} must be true or false`);
}

export interface CollectorMatchers {
  /** One matcher per `pattern` description, over a name relative to the directory listed. */
  readonly matchers: readonly Matcher[];
  /** Descriptions that match nothing, with the reason (a directory outside the working directory). */
  readonly ignored: readonly string[];
}

/**
 * `client_outputs.dataset_collector_descriptions` (Galaxy's discover_datasets dicts) as matchers
 * for names relative to a listed directory (`sub/x.txt`). A name matches a description when it
 * lies below its `directory` (if any) and the pattern (`re.match`) accepts
 *  - the path below that directory, as Pulsar's `ClientOutputs.dynamic_match` tries it, or
 *  - with `recurse` and without `match_relative_path`, the file's own name, as Galaxy's discovery
 *    walk tries it for a file in a sub-directory (Pulsar misses those files).
 * `tool_provided_metadata` descriptions have no pattern (galaxy.json names those files).
 */
export function parseCollectorDescriptions(raw: unknown): CollectorMatchers {
  if (raw === undefined || raw === null) return { matchers: [], ignored: [] };
  if (!Array.isArray(raw) || raw.length > MAX_RULES) throw new BadRequest(`client_outputs.dataset_collector_descriptions must be a list of at most ${MAX_RULES} descriptions`);
  const matchers: Matcher[] = [];
  const ignored: string[] = [];
  raw.forEach((description: unknown, index) => {
    const what = `client_outputs.dataset_collector_descriptions[${index}]`;
    if (!isRecord(description)) throw new BadRequest(`${what} must be an object`);
    const via = description['discover_via'] ?? (asBool(description['from_provided_metadata'], `${what}.from_provided_metadata`) ? 'tool_provided_metadata' : 'pattern');
    if (via === 'tool_provided_metadata') return;
    if (via !== 'pattern') throw new BadRequest(`${what}: discover_via must be "pattern" or "tool_provided_metadata"`);
    const source = description['pattern'] ?? '__default__';
    if (typeof source !== 'string') throw new BadRequest(`${what}.pattern must be a string`);
    const expanded = NAMED_COLLECTOR_PATTERNS[source] ?? source;
    const matches = pythonMatcher(expanded.split(DATASET_ID_TOKEN).join('\\d+'), `${what}.pattern`);
    const recurse = asBool(description['recurse'], `${what}.recurse`);
    const relativePath = asBool(description['match_relative_path'], `${what}.match_relative_path`);
    const rawDirectory = description['directory'];
    let directory = '';
    if (rawDirectory !== undefined && rawDirectory !== null && rawDirectory !== '') {
      if (typeof rawDirectory !== 'string' || rawDirectory.length > MAX_PATTERN_LENGTH || rawDirectory.includes('\0')) throw new BadRequest(`${what}.directory must be a short relative path`);
      const normalized = path.posix.normalize(rawDirectory).replace(/\/+$/, '');
      if (normalized.startsWith('/') || normalized === '..' || normalized.startsWith('../')) {
        // Galaxy refuses it ("outside working directory"); Pulsar's dynamic_match matches nothing.
        ignored.push(`${what}: directory "${short(rawDirectory)}" is outside the working directory`);
        return;
      }
      if (normalized !== '.') directory = `${normalized}/`;
    }
    matchers.push((name) => {
      if (!name.startsWith(directory)) return false;
      const below = name.slice(directory.length);
      if (matches(below)) return true;
      const slash = below.lastIndexOf('/');
      return slash >= 0 && recurse && !relativePath && matches(below.slice(slash + 1));
    });
  });
  return { matchers, ignored };
}
