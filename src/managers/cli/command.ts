import { BackendError } from '../../errors.js';

/**
 * Scheduler commands as data: an argument vector (never a shell string), for `bsub` a file to
 * read on standard input, for `condor_submit` a directory to run in. Shell plugins decide how a
 * command reaches the scheduler host.
 */
export interface Command {
  readonly argv: readonly [string, ...string[]];
  /** A file the command reads on standard input (`bsub < script`). */
  readonly stdinFile?: string;
  /** An absolute directory to run the command in (`condor_submit` takes it as the job's). */
  readonly cwd?: string;
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
  if (arg.includes('\0')) throw new BackendError('MAG_ERR_BACKEND_COMMAND', 'a command argument contains a NUL byte');
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

/**
 * The one command string a remote shell (rsh, ssh) hands to the remote user's shell: every
 * argument single-quoted, plus `< 'file'` when the command reads a file on standard input, after
 * `cd 'dir' &&` when it runs in a directory (absolute, so no shell takes it for an option).
 */
export function remoteCommandLine(command: Command): string {
  const words = command.argv.map(posixQuote).join(' ');
  const line = command.stdinFile === undefined ? words : `${words} < ${posixQuote(command.stdinFile)}`;
  if (command.cwd === undefined) return line;
  if (!command.cwd.startsWith('/')) throw new BackendError('MAG_ERR_BACKEND_COMMAND', 'a command\'s directory must be an absolute path');
  return `cd ${posixQuote(command.cwd)} && ${line}`;
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
