/** What shell-quote says about a command line a validator accepted (tools/authorizer.ts asks). */
import { parse as parseShell } from 'shell-quote';

/**
 * Galaxy's variables a command line may expand: the job script exports them as whole numbers or
 * not at all. The one list: validators (tools/validator.ts) allow literals to spell these too.
 */
export const BENIGN_NAMES: ReadonlySet<string> = new Set(['GALAXY_SLOTS', 'GALAXY_MEMORY_MB', 'GALAXY_MEMORY_MB_PER_SLOT']);
/** The ones that may appear as `${NAME:-digits}`. */
export const BENIGN_DEFAULTS: ReadonlySet<string> = new Set(['GALAXY_SLOTS', 'GALAXY_MEMORY_MB']);

/**
 * A second opinion on a command line the validator accepted (never the only boundary), from two
 * readers independent of the validator's automaton:
 * - shell-quote: anything it sees expanding — a variable other than Galaxy's benign ones, a command
 *   substitution — a glob, or a comment cutting the line short is refused;
 * - a scan of bash's quoting: a backquote or a `$` outside single quotes (unquoted or inside
 *   double quotes, where bash expands them) must be one of Galaxy's benign expansions, and every
 *   quote must be closed (shell-quote silently drops an unterminated one).
 * Inside single quotes everything is literal, and inside double quotes everything but `$`,
 * backquote and backslash is. Operators such as `>` or `|` stay the validator's (literal) call.
 */
export function shellSecondOpinion(commandLine: string): string | undefined {
  const quoting = quotingProblem(commandLine);
  if (quoting !== undefined) return quoting;
  const expansions: string[] = [];
  let entries: ReturnType<typeof parseShell>;
  try {
    entries = parseShell(commandLine, (name: string) => {
      if (isBenign(name)) return '1';
      expansions.push(name);
      return '';
    });
  } catch {
    return 'shell-quote cannot parse it';
  }
  if (expansions.length > 0) return 'it expands a variable or substitutes a command';
  for (const entry of entries) {
    if (typeof entry === 'string') continue;
    if ('comment' in entry) return 'it contains a shell comment';
    if ('op' in entry && entry.op === 'glob') return 'it contains a glob pattern';
  }
  return undefined;
}

/** A name as shell-quote reports it: `NAME` for `$NAME`, the text between the braces for `${…}`. */
function isBenign(name: string): boolean {
  if (BENIGN_NAMES.has(name)) return true;
  const dash = name.indexOf(':-');
  return dash !== -1 && BENIGN_DEFAULTS.has(name.slice(0, dash)) && isDigits(name.slice(dash + 2));
}

function isDigits(text: string): boolean {
  if (text.length === 0 || text.length > 9) return false;
  for (let i = 0; i < text.length; i++) if (text[i]! < '0' || text[i]! > '9') return false;
  return true;
}

function isNameChar(c: string | undefined): boolean {
  return c !== undefined && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c === '_' || c >= '\u0080');
}

/** Length of the benign expansion at `line[i]` (a `$`), or 0 if there is none. */
function benignLength(line: string, i: number): number {
  if (line[i + 1] === '{') {
    const close = line.indexOf('}', i + 2);
    return close !== -1 && close - i < 64 && isBenign(line.slice(i + 2, close)) && line.slice(i + 2, close).includes(':-') ? close - i + 1 : 0;
  }
  let end = i + 1;
  while (end < line.length && end - i < 64 && isNameChar(line[end])) end++;
  return BENIGN_NAMES.has(line.slice(i + 1, end)) ? end - i : 0;
}

/** One pass over bash's quoting rules: what would expand outside single quotes, and unclosed quotes. */
function quotingProblem(line: string): string | undefined {
  let quote: "'" | '"' | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = undefined;
      continue;
    }
    if (c === '\\') {
      if (i + 1 === line.length) return 'it ends in a backslash';
      i++;
    } else if (c === '`') {
      return 'it contains a backquote (command substitution)';
    } else if (c === '$') {
      const length = benignLength(line, i);
      if (length === 0) return 'it expands a variable or substitutes a command';
      i += length - 1;
    } else if (c === '"') {
      quote = quote === '"' ? undefined : '"';
    } else if (c === "'" && quote === undefined) {
      quote = "'";
    }
  }
  return quote === undefined ? undefined : 'it leaves a quote open';
}
