/**
 * Scheduler commands as data: an argument vector (never a shell string) and, for `bsub`, a file to
 * read on standard input. Shell plugins decide how a command reaches the scheduler host.
 */
export interface Command {
  readonly argv: readonly [string, ...string[]];
  /** A file the command reads on standard input (`bsub < script`). */
  readonly stdinFile?: string;
}

export interface CommandResult {
  /** Exit status; null when the command could not start, timed out or died of a signal. */
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Why there is no exit status (not found, timeout, signal). */
  readonly error?: string;
}

/** Runs one scheduler command through the configured shell plugin. */
export type Run = (command: Command) => Promise<CommandResult>;

/**
 * POSIX single-quoting: the result is one word for any POSIX shell and nothing in it is expanded.
 * Every argument is quoted, even harmless ones, so no value ever reaches a shell bare.
 */
export function posixQuote(arg: string): string {
  if (arg.includes('\0')) throw new Error('a command argument contains a NUL byte');
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

/**
 * The one command string a remote shell (rsh, ssh) hands to the remote user's shell: every
 * argument single-quoted, plus `< 'file'` when the command reads a file on standard input.
 */
export function remoteCommandLine(command: Command): string {
  const words = command.argv.map(posixQuote).join(' ');
  return command.stdinFile === undefined ? words : `${words} < ${posixQuote(command.stdinFile)}`;
}

/** What a failed command said, for error messages and logs (trimmed, bounded). */
export function describeFailure(result: CommandResult): string {
  const said = [result.stderr, result.stdout]
    .map((s) => s.replaceAll('\r', '').trim())
    .filter((s) => s !== '')
    .join(' / ');
  const status = result.code === null ? (result.error ?? 'no exit status') : `exit status ${result.code}`;
  const text = said === '' ? status : `${said} (${status})`;
  return text.length > 2000 ? `${text.slice(0, 2000)}…` : text;
}
