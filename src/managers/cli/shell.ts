import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { remoteCommandLine, type Command, type CommandResult } from './command.js';

/** The process actually started for a scheduler command. */
export interface Invocation {
  readonly file: string;
  readonly args: readonly string[];
  /** A local file piped to the process's standard input. */
  readonly stdinFile?: string;
}

/**
 * How scheduler commands reach the scheduler (PROTOCOL §6.2 "Shell plugins"): run here, or on a
 * submit host through rsh/ssh. A plugin only turns a command into an invocation; `CommandRunner`
 * runs it.
 */
export interface ShellPlugin {
  readonly name: 'LocalShell' | 'RemoteShell' | 'SecureShell';
  /** Commands run on another host: the job directory must be on a file system both share. */
  readonly remote: boolean;
  /** Where commands run, for messages (`local`, `user@host:port`). */
  readonly target: string;
  invocation(command: Command): Invocation;
  /** The result says the connection failed, not the scheduler command (ssh exits 255). */
  transportFailed(result: CommandResult): boolean;
}

/** Runs the argument vector directly (no `sh -c`). */
export function localShell(): ShellPlugin {
  return {
    name: 'LocalShell',
    remote: false,
    target: 'local',
    transportFailed: () => false,
    invocation(command) {
      const [file, ...args] = command.argv;
      return command.stdinFile === undefined ? { file, args } : { file, args, stdinFile: command.stdinFile };
    },
  };
}

export interface RemoteShellOptions {
  /** The rsh program (default `rsh`). */
  readonly rsh: string;
  readonly hostname: string;
  readonly username: string | undefined;
}

/** `rsh [-l user] host '<quoted command>'`. */
export function remoteShell(options: RemoteShellOptions): ShellPlugin {
  return {
    name: 'RemoteShell',
    remote: true,
    target: `${options.username === undefined ? '' : `${options.username}@`}${options.hostname}`,
    transportFailed: (result) => result.code === null,
    invocation(command) {
      const args = [...(options.username === undefined ? [] : ['-l', options.username]), options.hostname, remoteCommandLine(command)];
      return { file: options.rsh, args };
    },
  };
}

export interface SecureShellOptions {
  /** The ssh program (default `ssh`). */
  readonly ssh: string;
  readonly hostname: string;
  readonly username: string | undefined;
  readonly port: number | undefined;
  readonly privateKey: string | undefined;
  readonly strictHostKeyChecking: boolean;
  readonly connectTimeout: number;
  readonly knownHostsFile: string | undefined;
}

/**
 * `ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=N [-o UserKnownHostsFile=F]
 * [-i key -o IdentitiesOnly=yes] [-p port] [-l user] host -- '<quoted command>'`. BatchMode: a
 * missing key or an unknown host fails at once instead of waiting for a password prompt.
 */
export function secureShell(options: SecureShellOptions): ShellPlugin {
  const args: string[] = ['-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR'];
  if (options.strictHostKeyChecking) {
    args.push('-o', 'StrictHostKeyChecking=yes');
    if (options.knownHostsFile !== undefined) args.push('-o', `UserKnownHostsFile=${options.knownHostsFile}`);
  } else {
    args.push('-o', 'StrictHostKeyChecking=no', '-o', `UserKnownHostsFile=${options.knownHostsFile ?? '/dev/null'}`);
  }
  args.push('-o', `ConnectTimeout=${options.connectTimeout}`);
  if (options.privateKey !== undefined) args.push('-i', options.privateKey, '-o', 'IdentitiesOnly=yes');
  if (options.port !== undefined) args.push('-p', String(options.port));
  if (options.username !== undefined) args.push('-l', options.username);
  const fixed = Object.freeze(args);
  return {
    name: 'SecureShell',
    remote: true,
    target: `${options.username === undefined ? '' : `${options.username}@`}${options.hostname}${options.port === undefined ? '' : `:${options.port}`}`,
    // ssh exits 255 when it cannot connect or authenticate (and when the remote command does, rarely).
    transportFailed: (result) => result.code === 255 || result.code === null,
    invocation(command) {
      return { file: options.ssh, args: [...fixed, options.hostname, '--', remoteCommandLine(command)] };
    },
  };
}

/** Scheduler output larger than this is an error (a listing of every job of a big cluster fits). */
const MAX_OUTPUT_BYTES = 64 * 1024 * 1024;

/**
 * Runs commands through a shell plugin with a timeout, a bounded output, and at most `parallel`
 * processes at once (a burst of submissions must not start hundreds of sbatch or ssh processes;
 * sshd drops connections beyond its MaxStartups).
 */
export class CommandRunner {
  readonly shell: ShellPlugin;
  readonly #timeoutMs: number;
  readonly #env: Readonly<Record<string, string>>;
  readonly #parallel: number;
  #running = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(shell: ShellPlugin, options: { timeoutMs: number; env: Readonly<Record<string, string>>; parallel: number }) {
    this.shell = shell;
    this.#timeoutMs = options.timeoutMs;
    this.#env = options.env;
    this.#parallel = Math.max(1, options.parallel);
  }

  /** `env` replaces the runner's environment for this command (local submissions pass the job's). */
  async run(command: Command, env?: Readonly<Record<string, string>>): Promise<CommandResult> {
    const invocation = this.shell.invocation(command);
    if (this.#running >= this.#parallel) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    this.#running++;
    try {
      return await execute(invocation, env ?? this.#env, this.#timeoutMs);
    } finally {
      this.#running--;
      this.#waiting.shift()?.();
    }
  }
}

function execute(invocation: Invocation, env: Readonly<Record<string, string>>, timeoutMs: number): Promise<CommandResult> {
  return new Promise((resolve) => {
    let inputError: string | undefined;
    const child = execFile(
      invocation.file,
      [...invocation.args],
      { env: { ...env }, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: MAX_OUTPUT_BYTES, encoding: 'utf8', windowsHide: true },
      (error, stdout, stderr) => {
        if (inputError !== undefined) {
          resolve({ code: null, stdout, stderr, error: inputError });
          return;
        }
        if (error === null) {
          resolve({ code: 0, stdout, stderr });
          return;
        }
        if (typeof error.code === 'number') {
          resolve({ code: error.code, stdout, stderr });
          return;
        }
        const why =
          error.killed === true && error.signal === 'SIGKILL'
            ? `timed out after ${Math.round(timeoutMs / 1000)} s`
            : error.code === 'ENOENT'
              ? `${invocation.file}: command not found`
              : error.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER'
                ? 'printed more output than magnetar reads'
                : error.signal !== null && error.signal !== undefined
                  ? `killed by ${error.signal}`
                  : error.message;
        resolve({ code: null, stdout, stderr, error: why });
      },
    );
    const stdin = child.stdin;
    if (stdin === null) return;
    stdin.on('error', () => {
      // The command exited without reading all of its input: its exit status says what happened.
    });
    if (invocation.stdinFile === undefined) {
      stdin.end();
      return;
    }
    const input = createReadStream(invocation.stdinFile);
    input.on('error', (error) => {
      inputError = `cannot read ${invocation.stdinFile}: ${error.message}`;
      stdin.destroy();
      child.kill('SIGKILL');
    });
    input.pipe(stdin);
  });
}
