/**
 * `<command_validator>` / `<configfile_validator>`: the element language of Pulsar's validators
 * (PROTOCOL §12.2), compiled once into a single automaton and judged in linear time.
 *
 * Shell policy, by construction. The compiler knows the shell's quoting state at every element:
 * each element's own quotes are balanced, and so must be every literal (else the whole validator
 * falls back to the unquoted rules below). A non-literal element consumes only characters of the
 * set its state allows:
 * - unquoted (and `integer`, `float`, `input`/`output` paths anywhere): COMMAND_SAFE, which holds
 *   no character that could start a command, substitute, expand, redirect, quote or glob;
 * - inside single quotes (a command line's `regex`): anything but `'`, NUL and a newline, which
 *   bash takes literally there;
 * - inside double quotes: anything but `"`, `$`, backquote, backslash, NUL and a newline, which
 *   bash takes literally there.
 * So a regex can never close its quotes or expand anything. Whitespace outside quotes comes only
 * from separators and literals; a command line never contains a newline or any other control
 * character. A literal (or `tool_wrapper`, `configfile`, parameter name, separator) may spell
 * shell syntax, but no expansion: outside single quotes its only `$` are Galaxy's benign
 * `$GALAXY_SLOTS`, `${GALAXY_SLOTS:-N}`, `$GALAXY_MEMORY_MB`, `${GALAXY_MEMORY_MB:-N}` and
 * `$GALAXY_MEMORY_MB_PER_SLOT` (an unbraced one may not be followed by a name character), and it
 * has no backquote. Config files keep the unquoted set (plus whitespace) even inside quotes: their
 * language is the tool's, and in Python or R a backslash escapes a quote inside single quotes.
 */
import { relativeNameProblem } from '../jobs/paths.js';
import { Automaton, AutomatonTooLarge } from './automaton.js';
import { BENIGN_DEFAULTS, BENIGN_NAMES } from './shell-check.js';
import {
  CharSet,
  EMPTY,
  MAX_REPEAT,
  RegexSyntaxError,
  alt,
  mapSets,
  notFollowedBy,
  nullable,
  optional,
  parseRegex,
  repeat,
  seq,
  set,
  text,
  type Pattern,
} from './regex.js';
import type { ValidationResult, Validator, XmlElement } from './types.js';

/** A validator element tree that cannot be loaded; the message names the element and the problem. */
export class ValidatorLoadError extends Error {
  readonly code = 'MAG_ERR_VALIDATOR_LOAD';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ValidatorLoadError';
  }
}

export type ValidatorKind = 'command' | 'configfile';

/** Characters of one path component of an `input`/`output` token. */
const PATH_CHARS = CharSet.chars('._+,@%=:-').union(CharSet.of([0x30, 0x39], [0x41, 0x5a], [0x61, 0x7a]));
/** All a non-literal element may consume in a command line: path characters and `/`. */
export const COMMAND_SAFE = PATH_CHARS.union(CharSet.chars('/'));
/** Config files may also hold whitespace, line breaks included, in regex-matched text. */
export const CONFIGFILE_SAFE = COMMAND_SAFE.union(CharSet.chars(' \t\n\r'));
/** A command line's regex inside single quotes: bash takes all of these literally there. */
export const SINGLE_QUOTED_SAFE = CharSet.chars("'\u0000\n").negate();
/** A command line's regex inside double quotes: bash takes all of these literally there. */
export const DOUBLE_QUOTED_SAFE = CharSet.chars('"$`\\\u0000\n').negate();

/**
 * The shell's quoting state where an element starts. `unknown`: some literal of the validator
 * leaves its quotes open (or ends in a backslash), so nothing is assumed and every element keeps
 * the unquoted set, which is safe in every state.
 */
type QuoteState = 'none' | 'single' | 'double' | 'unknown';

const BENIGN_LIST = '$GALAXY_SLOTS, ${GALAXY_SLOTS:-N}, $GALAXY_MEMORY_MB, ${GALAXY_MEMORY_MB:-N} and $GALAXY_MEMORY_MB_PER_SLOT';
/** Characters that would extend a shell variable name (non-ASCII too: some locales call it a letter). */
const NAME_CHARS = CharSet.of([0x30, 0x39], [0x41, 0x5a], [0x5f, 0x5f], [0x61, 0x7a], [0x80, 0xffff]);
const NAME_CHAR = /[A-Za-z0-9_]/;

/**
 * The job directory is compiled as this one code unit. Texts are screened for control characters
 * first (a NUL never passes), then each occurrence of the job directory becomes the sentinel.
 */
const JOBDIR = '\u0000';
/** Code units refused before matching, as sets (for lint). */
const COMMAND_REFUSED = CharSet.of([0, 8], [0x0a, 0x1f], [0x7f, 0x9f]);
const CONFIGFILE_REFUSED = CharSet.of([0, 8], [0x0b, 0x0c], [0x0e, 0x1f], [0x7f, 0x9f]);
/**
 * Control characters refused before matching (a tab is fine; line breaks only in config files).
 * A single-class scan: V8 runs it in linear time, there is nothing to backtrack.
 */
const COMMAND_CONTROL = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/;
const CONFIGFILE_CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/;
const JOBDIR_SYMBOL = text(JOBDIR);
const JOB_DIRECTORY_SHAPE = /^(?:\/[A-Za-z0-9._+,@%=:-]+)+$/;

const MAX_DEPTH = 32;
const COMMON_ATTRS = ['single_quote', 'double_quote', 'min', 'max'];
const ELEMENT_ATTRS = new Map<string, readonly string[]>([
  ['literal', ['value']],
  ['regex', ['value']],
  ['parameter', ['name', 'separate_by']],
  ['integer', []],
  ['float', []],
  ['tool_wrapper', ['name']],
  ['configfile', ['name']],
  ['input', []],
  ['output', ['from_work_dir']],
  ['group', ['separate_by']],
]);
const CONTAINERS = new Set(['parameter', 'group']);

const DIGITS = repeat(set(CharSet.of([0x30, 0x39])), 1, Infinity);
/** Upstream's float (http://stackoverflow.com/a/9392612). */
const FLOAT = parseRegex('[-+]?[0-9]*\\.?[0-9]+(?:[eE][-+]?[0-9]+)?');
const PATH_TOKEN = pathToken();

/** `component(/component)*`, no component `.` or `..`, no empty component, no trailing `/`. */
function pathToken(): Pattern {
  const any = set(PATH_CHARS);
  const notDot = set(PATH_CHARS.minus(CharSet.chars('.')));
  const dot = text('.');
  const rest = repeat(any, 0, Infinity);
  const component = alt(seq(notDot, rest), seq(dot, notDot, rest), seq(dot, dot, any, rest));
  return seq(component, repeat(seq(text('/'), component), 0, Infinity));
}

interface Context {
  readonly kind: ValidatorKind;
  /** Label id → element description, for rejection reasons. */
  readonly labels: string[];
  readonly warnings: string[];
  /** False when some literal leaves the quoting state changed: every element is then compiled in state `unknown`. */
  readonly quoteAware: boolean;
  /** Literals (and other fixed texts) that leave the quoting state changed. */
  readonly unbalanced: string[];
}

interface Part {
  readonly pattern: Pattern;
  readonly optional: boolean;
}

/** `root` is the `<command_validator>` or `<configfile_validator name=…>` element. */
export function compileValidator(root: XmlElement, kind: ValidatorKind): Validator {
  return load(root, kind).validator;
}

/**
 * Problems a linter should report without failing the load. Throws ValidatorLoadError, like
 * compileValidator, when the element tree cannot be loaded at all.
 */
export function lintValidator(root: XmlElement, kind: ValidatorKind): string[] {
  return load(root, kind).warnings;
}

function load(root: XmlElement, kind: ValidatorKind): { validator: Validator; warnings: string[] } {
  const expected = kind === 'command' ? 'command_validator' : 'configfile_validator';
  if (root.name !== expected) throw new ValidatorLoadError(`expected a <${expected}> element, got <${root.name}>`);
  checkAttrs(root, kind === 'command' ? ['separate_by'] : ['name', 'separate_by'], expected);
  const name = root.attrs['name'];
  if (kind === 'configfile' && (name === undefined || name === '')) throw new ValidatorLoadError('configfile_validator: the name attribute is required');
  const where = kind === 'command' ? expected : `${expected} ${quoted(name ?? '')}`;
  let ctx = context(kind, true);
  let pattern = rootPattern(root, where, ctx);
  if (ctx.unbalanced.length > 0) {
    const unbalanced = ctx.unbalanced;
    ctx = context(kind, false);
    pattern = rootPattern(root, where, ctx);
    const shown = unbalanced.slice(0, 3).join('; ') + (unbalanced.length > 3 ? ` (and ${unbalanced.length - 3} more)` : '');
    ctx.warnings.push(`${where}: ${shown}: leaves a quote open or ends in a backslash, so the quoting state is unknown and quoted elements keep the unquoted character set`);
  }
  let automaton: Automaton;
  try {
    automaton = Automaton.compile(pattern);
  } catch (error) {
    if (error instanceof AutomatonTooLarge) throw new ValidatorLoadError(`${where}: validator too large (${error.message})`, { cause: error });
    throw error;
  }
  return { validator: new CompiledValidator(automaton, ctx.labels, where, kind), warnings: ctx.warnings };
}

function context(kind: ValidatorKind, quoteAware: boolean): Context {
  return { kind, labels: [], warnings: [], quoteAware, unbalanced: [] };
}

function rootPattern(root: XmlElement, where: string, ctx: Context): Pattern {
  const state: QuoteState = ctx.quoteAware ? 'none' : 'unknown';
  if (root.children.length === 0) ctx.warnings.push(`${where}: no elements, so only an empty text is accepted`);
  warnStrayText(root, where, ctx);
  const sep = separator(root.attrs['separate_by'] ?? '*spaces*', where, ctx, state);
  lintAdjacentPaths(root, root.attrs['separate_by'] ?? '*spaces*', where, ctx);
  return joinChildren(root.children.map((child) => element(child, sep, undefined, where, 1, ctx, state)), sep);
}

/** The state after a quote character `q` is read (literally, as the quote an element adds) in `state`. */
function afterQuote(state: QuoteState, q: "'" | '"'): QuoteState {
  if (state === 'unknown') return state;
  if (state === 'none') return q === "'" ? 'single' : 'double';
  if (state === 'single') return q === "'" ? 'none' : 'single';
  return q === '"' ? 'none' : 'double';
}

/**
 * Children joined by `sep`, where an absent optional child (min=0) leaves no separator behind:
 * the text is valid with or without the separator it would have had, and nothing needs a
 * separator before the first child that is present. Built from shared suffixes, so the size stays
 * linear in the number of children.
 */
function joinChildren(parts: readonly Part[], sep: Pattern): Pattern {
  const maybeSep = optional(sep);
  // For children i… (built from the last): `after` once something was written (each present child
  // needs `sep` first), `head` before anything was.
  let after = EMPTY;
  let head = EMPTY;
  for (let i = parts.length - 1; i >= 0; i--) {
    const { pattern, optional: isOptional } = parts[i] as Part;
    head = isOptional ? alt(seq(pattern, after), seq(maybeSep, head)) : seq(pattern, after);
    after = seq(isOptional ? alt(seq(sep, pattern), maybeSep) : seq(sep, pattern), after);
  }
  return head;
}

/**
 * One child element; `parent` describes the enclosing parameter or group, if any; `state` is the
 * quoting state where it starts (and ends: its own quotes are balanced).
 */
function element(el: XmlElement, sep: Pattern, parent: string | undefined, parentPath: string, depth: number, ctx: Context, state: QuoteState): Part {
  const where = `${parentPath} > ${describe(el)}`;
  const own = ELEMENT_ATTRS.get(el.name);
  if (own === undefined) throw new ValidatorLoadError(`${where}: unknown element <${el.name}>`);
  if (depth > MAX_DEPTH) throw new ValidatorLoadError(`${where}: elements nested deeper than ${MAX_DEPTH}`);
  checkAttrs(el, [...COMMON_ATTRS, ...own], where);
  if (!CONTAINERS.has(el.name) && el.children.length > 0) throw new ValidatorLoadError(`${where}: <${el.name}> cannot have child elements`);
  const min = count(el, 'min', where);
  const max = count(el, 'max', where);
  if (max <= 0) throw new ValidatorLoadError(`${where}: max must be greater than 0`);
  if (max > MAX_REPEAT) throw new ValidatorLoadError(`${where}: max above ${MAX_REPEAT}`);
  if (min > max) throw new ValidatorLoadError(`${where}: min (${min}) is greater than max (${max})`);

  const label = ctx.labels.push(parent === undefined ? describe(el) : `${describe(el)} in ${parent}`) - 1;
  const single = flag(el, 'single_quote', where);
  const double = flag(el, 'double_quote', where);
  // As upstream: single quotes inside, double quotes outside.
  const outer = double ? afterQuote(state, '"') : state;
  const inner = single ? afterQuote(outer, "'") : outer;
  let core = body(el, where, depth, ctx, inner);
  if (single) core = seq(text("'"), core, text("'"));
  if (double) core = seq(text('"'), core, text('"'));
  const labelled: Pattern = { type: 'label', label, body: core };
  const pattern = max === 1 ? labelled : seq(labelled, repeat(seq(sep, labelled), Math.max(min, 1) - 1, max - 1));
  return { pattern, optional: min === 0 };
}

/**
 * The pattern of one occurrence of `el`, before quotes and repetition, in quoting state `state`.
 * Paths (`input`, `output`) keep the unquoted path characters in every state: the server and
 * Galaxy name the files, so nothing legitimate needs more, and one narrow token is what makes the
 * "no `.`/`..` component, inside the job" rule checkable.
 */
function body(el: XmlElement, where: string, depth: number, ctx: Context, state: QuoteState): Pattern {
  switch (el.name) {
    case 'literal':
      return literal(valueOrText(el, 'value', where, ctx), where, ctx, state);
    case 'regex':
      return regex(valueOrText(el, 'value', where, ctx), where, ctx, state);
    case 'integer':
      return DIGITS;
    case 'float':
      return FLOAT;
    case 'tool_wrapper':
      return seq(JOBDIR_SYMBOL, text('/tool_files/'), fixedText(relativeName(valueOrText(el, 'name', where, ctx), where), where, ctx, state));
    case 'configfile':
      return seq(JOBDIR_SYMBOL, text('/configs/'), fixedText(relativeName(valueOrText(el, 'name', where, ctx), where), where, ctx, state));
    case 'input':
      return seq(JOBDIR_SYMBOL, text('/inputs/'), PATH_TOKEN);
    case 'output': {
      const fromWorkDir = el.attrs['from_work_dir'];
      if (fromWorkDir === undefined) return seq(JOBDIR_SYMBOL, text('/outputs/'), PATH_TOKEN);
      const name = relativeName(fromWorkDir, `${where} from_work_dir`);
      return seq(JOBDIR_SYMBOL, text('/working/'), fixedText(name, `${where} from_work_dir`, ctx, state));
    }
    case 'parameter': {
      const name = el.attrs['name'];
      if (name === undefined || name === '') throw new ValidatorLoadError(`${where}: the name attribute is required`);
      const nameText = literal(name, `${where} name`, ctx, state);
      const inner = container(el, '*spaces*', where, depth, ctx, state);
      const joiner = alt(text('='), repeat(set(CharSet.chars(' \t')), 1, Infinity));
      return inner.allOptional ? seq(nameText, optional(seq(joiner, inner.pattern))) : seq(nameText, joiner, inner.pattern);
    }
    case 'group':
      if (el.children.length === 0) ctx.warnings.push(`${where}: empty group`);
      return container(el, '', where, depth, ctx, state).pattern;
    default:
      throw new ValidatorLoadError(`${where}: unknown element <${el.name}>`);
  }
}

function container(el: XmlElement, defaultSep: string, where: string, depth: number, ctx: Context, state: QuoteState): { pattern: Pattern; allOptional: boolean } {
  warnStrayText(el, where, ctx);
  const sep = separator(el.attrs['separate_by'] ?? defaultSep, where, ctx, state);
  lintAdjacentPaths(el, el.attrs['separate_by'] ?? defaultSep, where, ctx);
  const parent = describe(el);
  const parts = el.children.map((child) => element(child, sep, parent, where, depth + 1, ctx, state));
  return { pattern: joinChildren(parts, sep), allOptional: parts.every((p) => p.optional) };
}

function separator(value: string, where: string, ctx: Context, state: QuoteState): Pattern {
  let pattern: Pattern;
  if (value === '*spaces*') pattern = repeat(set(CharSet.chars(' ')), 1, Infinity);
  else if (value === '*whitespace*') pattern = repeat(set(CharSet.chars(ctx.kind === 'command' ? ' \t' : ' \t\n\r')), 1, Infinity);
  else pattern = literal(value, `${where} separate_by`, ctx, state);
  const name = value === '*spaces*' || value === '*whitespace*' ? value : quoted(value);
  return { type: 'label', label: ctx.labels.push(`separator ${name}`) - 1, body: pattern };
}

function literal(value: string, where: string, ctx: Context, state: QuoteState): Pattern {
  if (value.includes('\u0000')) throw new ValidatorLoadError(`${where}: NUL character`);
  if ((ctx.kind === 'command' ? COMMAND_CONTROL : CONFIGFILE_CONTROL).test(value)) {
    ctx.warnings.push(`${where}: contains a control character that is never accepted (a line break in a command line?), so it can never match`);
  }
  return fixedText(value, where, ctx, state);
}

/**
 * Text the validator spells (a literal, a separator, a parameter or file name), read by the shell
 * in `state`: a load error if it expands anything but Galaxy's benign variables; noted in
 * `ctx.unbalanced` if it leaves the quoting state changed; followed by a guard if it ends in an
 * unbraced benign `$NAME`, so that nothing after it extends the name.
 */
function fixedText(value: string, where: string, ctx: Context, state: QuoteState): Pattern {
  // A config file's language is the tool's (R spells `df$col`): its literals are taken as written.
  if (ctx.kind === 'configfile') return text(value);
  const scan = scanShell(value, state);
  if ('problem' in scan) throw new ValidatorLoadError(`${where}: ${scan.problem}`);
  if (scan.end !== state) ctx.unbalanced.push(`${where.slice(where.lastIndexOf(' > ') + 3)}`);
  return scan.openName ? seq(text(value), notFollowedBy(NAME_CHARS)) : text(value);
}

type ShellScan = { readonly end: QuoteState | 'escape'; readonly openName: boolean } | { readonly problem: string };

/**
 * How bash reads `value` starting in `state`: the state it ends in (`escape` after a trailing
 * backslash outside single quotes), whether it ends with an unbraced benign `$NAME`, or the
 * expansion it would perform. In state `unknown` every `$` must be a benign form and no backquote
 * may appear, wherever the quotes are.
 */
function scanShell(value: string, start: QuoteState): ShellScan {
  let state: QuoteState | 'escape' = start;
  let openName = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    openName = false;
    if (state === 'single') {
      if (c === "'") state = 'none';
      continue;
    }
    if (c === '`') return { problem: `spells a command substitution (a backquote); a literal may expand only ${BENIGN_LIST}` };
    if (c === '$') {
      const benign = benignExpansion(value, i);
      if (benign === undefined) return { problem: `spells a shell expansion (${quoted(value.slice(i, i + 24))}); a literal may expand only ${BENIGN_LIST}` };
      i += benign.length - 1;
      openName = benign.open;
      continue;
    }
    if (state === 'unknown') continue;
    if (c === '\\') {
      if (i + 1 === value.length) state = 'escape';
      i++;
    } else if (c === "'" && state === 'none') state = 'single';
    else if (c === '"') state = state === 'none' ? 'double' : 'none';
  }
  return { end: state, openName };
}

/** The benign expansion starting at `value[i]` (a `$`): its length, and whether it is unbraced. */
function benignExpansion(value: string, i: number): { readonly length: number; readonly open: boolean } | undefined {
  if (value[i + 1] === '{') {
    const close = value.indexOf('}', i + 2);
    if (close === -1) return undefined;
    const inner = value.slice(i + 2, close);
    const dash = inner.indexOf(':-');
    if (dash === -1 || !BENIGN_DEFAULTS.has(inner.slice(0, dash))) return undefined;
    const digits = inner.slice(dash + 2);
    return /^[0-9]{1,9}$/.test(digits) ? { length: close - i + 1, open: false } : undefined;
  }
  let end = i + 1;
  while (end < value.length && NAME_CHAR.test(value[end] ?? '')) end++;
  return BENIGN_NAMES.has(value.slice(i + 1, end)) ? { length: end - i, open: true } : undefined;
}

function regex(source: string, where: string, ctx: Context, state: QuoteState): Pattern {
  let parsed: Pattern;
  try {
    parsed = parseRegex(source);
  } catch (error) {
    if (error instanceof RegexSyntaxError) throw new ValidatorLoadError(`${where}: unsupported regex: ${error.message}`, { cause: error });
    throw error;
  }
  const safe = ctx.kind === 'configfile' ? CONFIGFILE_SAFE : state === 'single' ? SINGLE_QUOTED_SAFE : state === 'double' ? DOUBLE_QUOTED_SAFE : COMMAND_SAFE;
  let stripped = CharSet.EMPTY;
  let emptied = false;
  const restricted = mapSets(parsed, (s) => {
    const kept = s.intersect(safe);
    stripped = stripped.union(s.minus(safe));
    if (kept.isEmpty) emptied = true;
    return kept;
  });
  // Characters refused before matching anyway (most control characters) are not worth a warning.
  stripped = stripped.minus(ctx.kind === 'command' ? COMMAND_REFUSED : CONFIGFILE_REFUSED);
  if (!stripped.isEmpty) ctx.warnings.push(`${where}: its language includes characters the shell policy forbids (${describeChars(stripped)}); they are never accepted`);
  if (emptied) ctx.warnings.push(`${where}: part of the regex only allows forbidden characters and can never match`);
  if (hasNullableRepeat(parsed)) ctx.warnings.push(`${where}: a repeated part can match the empty string`);
  return restricted;
}

/**
 * A regex, integer or float glued to a following job path (no whitespace between) can turn it into
 * another path: "../" + "<jobdir>/inputs/x" leaves the job directory.
 */
function lintAdjacentPaths(el: XmlElement, sep: string, where: string, ctx: Context): void {
  if (sep === '*spaces*' || sep === '*whitespace*' || /[ \t]$/.test(sep)) return;
  const free = new Set(['regex', 'integer', 'float']);
  const paths = new Set(['input', 'output', 'tool_wrapper', 'configfile']);
  el.children.forEach((child, i) => {
    const previous = el.children[i - 1];
    if (previous !== undefined && free.has(previous.name) && paths.has(child.name)) {
      ctx.warnings.push(`${where}: ${describe(previous)} directly precedes ${describe(child)}, so it can prefix (and redirect) that path`);
    }
  });
}

function hasNullableRepeat(p: Pattern): boolean {
  switch (p.type) {
    case 'set':
    case 'guard':
      return false;
    case 'seq':
      return p.items.some(hasNullableRepeat);
    case 'alt':
      return p.alts.some(hasNullableRepeat);
    case 'repeat':
      return (p.max > 1 && nullable(p.body)) || hasNullableRepeat(p.body);
    case 'label':
      return hasNullableRepeat(p.body);
  }
}

function describeChars(s: CharSet): string {
  const printable = s.intersect(CharSet.of([0x20, 0x7e]));
  const shown = printable.sample(12).map((c) => quoted(String.fromCharCode(c)));
  if (printable.sample(13).length > 12) shown.push('…');
  if (s.has(0x09)) shown.push('tab');
  if (s.has(0x0a) || s.has(0x0d)) shown.push('line breaks');
  if (!s.intersect(CharSet.of([0xa0, 0xffff])).isEmpty) shown.push('non-ASCII characters');
  return shown.join(', ');
}

/** The `attribute` if present, else the element's text (as upstream). */
function valueOrText(el: XmlElement, attribute: string, where: string, ctx: Context): string {
  const value = el.attrs[attribute];
  if (value === undefined) return el.text;
  if (el.text.trim() !== '') ctx.warnings.push(`${where}: has both a ${attribute} attribute and text; the text is ignored`);
  return value;
}

/** A file name under a job sub-directory: relative, no empty, `.` or `..` components. */
function relativeName(name: string, where: string): string {
  if (name === '') throw new ValidatorLoadError(`${where}: a file name is required`);
  const problem = relativeNameProblem(name);
  if (problem !== undefined) {
    throw new ValidatorLoadError(`${where}: ${quoted(name)} must be a relative path without empty, "." or ".." components (${problem.reason})`);
  }
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) throw new ValidatorLoadError(`${where}: control character in ${quoted(name)}`);
  return name;
}

function checkAttrs(el: XmlElement, allowed: readonly string[], where: string): void {
  for (const key of Object.keys(el.attrs)) {
    if (!allowed.includes(key)) throw new ValidatorLoadError(`${where}: unknown attribute ${key}= (allowed: ${allowed.join(', ') || 'none'})`);
  }
}

function count(el: XmlElement, attribute: 'min' | 'max', where: string): number {
  const raw = el.attrs[attribute];
  if (raw === undefined) return 1;
  if (!/^\s*\d{1,9}\s*$/.test(raw)) throw new ValidatorLoadError(`${where}: ${attribute}=${quoted(raw)} is not a non-negative integer`);
  return Number(raw);
}

function flag(el: XmlElement, attribute: string, where: string): boolean {
  const raw = el.attrs[attribute];
  if (raw === undefined) return false;
  const value = raw.trim().toLowerCase();
  if (value !== 'true' && value !== 'false') throw new ValidatorLoadError(`${where}: ${attribute}=${quoted(raw)} must be true or false`);
  return value === 'true';
}

function warnStrayText(el: XmlElement, where: string, ctx: Context): void {
  if (el.text.trim() !== '') ctx.warnings.push(`${where}: text ${quoted(el.text.trim())} is ignored`);
}

function describe(el: XmlElement): string {
  const key = el.attrs['name'] ?? el.attrs['value'] ?? (el.text.trim() !== '' && !CONTAINERS.has(el.name) ? el.text : undefined);
  const workDir = el.attrs['from_work_dir'];
  if (workDir !== undefined) return `${el.name} from_work_dir=${quoted(workDir)}`;
  return key === undefined ? el.name : `${el.name} ${quoted(key)}`;
}

function quoted(value: string, limit = 40): string {
  return JSON.stringify(value.length > limit ? `${value.slice(0, limit)}…` : value);
}

class CompiledValidator implements Validator {
  readonly #automaton: Automaton;
  readonly #labels: readonly string[];
  readonly #where: string;
  readonly #kind: ValidatorKind;

  constructor(automaton: Automaton, labels: readonly string[], where: string, kind: ValidatorKind) {
    this.#automaton = automaton;
    this.#labels = labels;
    this.#where = where;
    this.#kind = kind;
  }

  validate(text: string, jobDirectory: string): ValidationResult {
    try {
      return this.#validate(text, jobDirectory);
    } catch (error) {
      return { ok: false, reason: `${this.#where}: internal error (${error instanceof Error ? error.message : String(error)})` };
    }
  }

  #validate(text: string, jobDirectory: string): ValidationResult {
    const control = (this.#kind === 'command' ? COMMAND_CONTROL : CONFIGFILE_CONTROL).exec(text);
    if (control !== null) {
      const hex = control[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0');
      return { ok: false, reason: `${this.#where}: control character U+${hex} at character ${control.index + 1} is not allowed` };
    }
    if (!isJobDirectory(jobDirectory)) return { ok: false, reason: `${this.#where}: the job directory is not an absolute path of safe characters` };
    const symbolic = text.includes(jobDirectory) ? text.split(jobDirectory).join(JOBDIR) : text;
    const outcome = this.#automaton.match(symbolic);
    if (outcome.ok) return { ok: true };

    const expected = outcome.expected.map((l) => this.#labels[l] ?? 'element');
    if (outcome.endExpected) expected.push('end of text');
    const before = symbolic.slice(Math.max(0, outcome.index - 40), outcome.index);
    const context = JSON.stringify(before.split(JOBDIR).join('<jobdir>'));
    const elided = outcome.index > 40 ? '…' : '';
    if (outcome.index === symbolic.length) {
      return { ok: false, reason: `${this.#where}: text ends too early (after ${elided}${context}), expected ${listOf(expected)}` };
    }
    let sentinels = 0;
    for (let i = symbolic.indexOf(JOBDIR); i !== -1 && i < outcome.index; i = symbolic.indexOf(JOBDIR, i + 1)) sentinels++;
    const position = outcome.index + sentinels * (jobDirectory.length - 1) + 1;
    return { ok: false, reason: `${this.#where}: text does not match (failed at character ${position}, after ${elided}${context}), expected ${listOf(expected)}` };
  }
}

function isJobDirectory(dir: string): boolean {
  return JOB_DIRECTORY_SHAPE.test(dir) && !dir.split('/').some((c) => c === '.' || c === '..');
}

function listOf(items: readonly string[]): string {
  if (items.length === 0) return 'nothing (the validator can never match here)';
  const shown = items.slice(0, 4);
  const more = items.length > 4 ? ` (or ${items.length - 4} more)` : '';
  return shown.length === 1 ? `${shown[0] ?? ''}${more}` : `${shown.slice(0, -1).join(', ')} or ${shown[shown.length - 1] ?? ''}${more}`;
}
