/** What shell-quote says about a command line a validator accepted (tools/authorizer.ts asks). */
import { parse as parseShell } from 'shell-quote';

/**
 * A second opinion from shell-quote on a command line the validator accepted (never the only
 * boundary: it does not model every bash expansion). Anything it sees expanding — a variable, a
 * command substitution, a glob, a backquote — or a comment cutting the line short, is refused
 * whatever the validator said; operators such as `>` or `|` stay the validator's (literal) call.
 */
export function shellSecondOpinion(commandLine: string): string | undefined {
  const expansions: string[] = [];
  let entries: ReturnType<typeof parseShell>;
  try {
    entries = parseShell(commandLine, (name: string) => {
      expansions.push(name);
      return '';
    });
  } catch {
    return 'shell-quote cannot parse it';
  }
  if (expansions.length > 0) return 'it expands a variable or substitutes a command';
  for (const entry of entries) {
    if (typeof entry === 'string') {
      if (entry.includes('`')) return 'it contains a backquote';
      continue;
    }
    if ('comment' in entry) return 'it contains a shell comment';
    if ('op' in entry && entry.op === 'glob') return 'it contains a glob pattern';
  }
  return undefined;
}
