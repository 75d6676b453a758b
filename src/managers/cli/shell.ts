import { remoteCommandLine, type Command, type CommandResult } from './command.js';

/** The process actually started for a scheduler command. */
export interface Invocation {
  readonly file: string;
  readonly args: readonly string[];
  /** A local file piped to the process's standard input. */
  readonly stdinFile?: string;
  /** The directory the process starts in (remote shells `cd` there instead). */
  readonly cwd?: string;
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
      return {
        file,
        args,
        ...(command.stdinFile === undefined ? {} : { stdinFile: command.stdinFile }),
        ...(command.cwd === undefined ? {} : { cwd: command.cwd }),
      };
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
