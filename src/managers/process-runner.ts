import { spawn, type ChildProcess } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { BackendError } from '../errors.js';
import { describeFailure, type Command, type CommandResult } from './cli/command.js';
import type { Invocation, ShellPlugin } from './cli/shell.js';

/**
 * The one way a backend runs a program (scheduler commands, condor_*, the sudo helpers of external
 * DRMAA): through a shell plugin (here, or on a submit host over rsh/ssh), with one timeout rule,
 * one output bound, one cap on processes at once and one wording of failures.
 */

/** Output larger than this is an error (a listing of every job of a big cluster fits). */
export const MAX_OUTPUT_BYTES = 64 * 1024 * 1024;
/** A command that outlives its timeout gets SIGTERM (sudo passes it on), then SIGKILL this much later. */
const KILL_GRACE_MS = 2000;
/** Processes at once: local ones, and ssh/rsh connections (sshd's MaxStartups is 10). */
export const DEFAULT_PARALLEL = { local: 8, remote: 4 } as const;

/**
 * At most `size` holders at once. A released slot goes straight to the longest waiter: a caller
 * that arrives between the release and the waiter's wake-up finds no free slot and queues behind.
 */
export class Slots {
  #free: number;
  readonly #waiting: (() => void)[] = [];

  constructor(size: number) {
    this.#free = Math.max(1, Math.floor(size));
  }

  acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  release(): void {
    const next = this.#waiting.shift();
    if (next === undefined) this.#free++;
    else next();
  }
}

export interface CommandRunnerOptions {
  /** Limit for one command, from start to the end of its output. */
  readonly timeoutMs: number;
  /** The environment commands run with unless `run` is given another. */
  readonly env: Readonly<Record<string, string>>;
  /** Processes at once (default: DEFAULT_PARALLEL for the shell's kind). */
  readonly parallel?: number;
}

/** Which failures `CommandRunner.failure` may name when the command did run and exit non-zero. */
export type CommandFailureCode = 'MAG_ERR_BACKEND_SUBMIT' | 'MAG_ERR_BACKEND_COMMAND';

/**
 * Runs commands through a shell plugin with a timeout, a bounded output, and at most `parallel`
 * processes at once (a burst of submissions must not start hundreds of sbatch or ssh processes;
 * sshd drops connections beyond its MaxStartups). `run` never rejects for a failed command: the
 * result says what happened, and `failure` turns it into the BackendError a caller throws.
 */
export class CommandRunner {
  readonly shell: ShellPlugin;
  readonly #timeoutMs: number;
  readonly #env: Readonly<Record<string, string>>;
  readonly #slots: Slots;

  constructor(shell: ShellPlugin, options: CommandRunnerOptions) {
    this.shell = shell;
    this.#timeoutMs = options.timeoutMs;
    this.#env = options.env;
    this.#slots = new Slots(options.parallel ?? (shell.remote ? DEFAULT_PARALLEL.remote : DEFAULT_PARALLEL.local));
  }

  /** `env` replaces the runner's environment for this command (local submissions pass the job's). */
  async run(command: Command, env?: Readonly<Record<string, string>>): Promise<CommandResult> {
    const invocation = this.shell.invocation(command);
    await this.#slots.acquire();
    try {
      return await execute(invocation, env ?? this.#env, this.#timeoutMs);
    } finally {
      this.#slots.release();
    }
  }

  /**
   * The error for a result other than exit status 0. A command that could not run, timed out, or
   * whose remote shell failed means the scheduler cannot be asked (MAG_ERR_BACKEND_UNREACHABLE);
   * otherwise it answered no, and `what` says what that means ("Slurm did not accept the job").
   */
  failure(command: Command, result: CommandResult, code: CommandFailureCode, what: string): BackendError {
    if (result.code === null || this.shell.transportFailed(result)) {
      const where = this.shell.remote ? ` on ${this.shell.target}` : '';
      return new BackendError('MAG_ERR_BACKEND_UNREACHABLE', `${this.shell.name} could not run ${command.argv[0]}${where}: ${describeFailure(result)}`);
    }
    return new BackendError(code, `${what}: ${describeFailure(result)}`);
  }
}

/** Signal a command's whole process group (it leads one): scripts and their children alike. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

function spawnFailure(invocation: Invocation, error: NodeJS.ErrnoException): string {
  if (error.code === 'ENOENT') {
    const directory = invocation.cwd === undefined ? '' : ` (or its working directory ${invocation.cwd} does not exist)`;
    return `${invocation.file}: command not found${directory}; is it installed and on the server's PATH?`;
  }
  if (error.code === 'EACCES') return `${invocation.file}: permission denied`;
  return error.message;
}

/** One process: resolves once its output is closed (or given up on); never rejects. */
function execute(invocation: Invocation, env: Readonly<Record<string, string>>, timeoutMs: number): Promise<CommandResult> {
  return new Promise((resolve) => {
    let child: ChildProcess;
    try {
      child = spawn(invocation.file, [...invocation.args], {
        env: { ...env },
        ...(invocation.cwd === undefined ? {} : { cwd: invocation.cwd }),
        // The leader of its own process group, so that stopping it reaches everything it started.
        detached: true,
        stdio: ['pipe', 'pipe', 'pipe'],
        windowsHide: true,
      });
    } catch (error) {
      // Arguments spawn refuses outright (a NUL byte): nothing was started.
      resolve({ code: null, stdout: '', stderr: '', error: (error as Error).message });
      return;
    }
    const running = new RunningCommand(child, invocation, timeoutMs, resolve);
    running.feedInput();
  });
}

/**
 * A started command until its result is known: output collected up to MAX_OUTPUT_BYTES, and a
 * timeout that stops its whole process group (SIGTERM, SIGKILL after the grace period).
 */
class RunningCommand {
  readonly #child: ChildProcess;
  readonly #invocation: Invocation;
  readonly #resolve: (result: CommandResult) => void;
  readonly #stdout: Buffer[] = [];
  readonly #stderr: Buffer[] = [];
  readonly #timer: NodeJS.Timeout;
  #size = 0;
  /** Why there will be no exit status (the first reason wins). */
  #failure: string | undefined;
  #leaderExited = false;
  #settled = false;
  #killTimer: NodeJS.Timeout | undefined;

  constructor(child: ChildProcess, invocation: Invocation, timeoutMs: number, resolve: (result: CommandResult) => void) {
    this.#child = child;
    this.#invocation = invocation;
    this.#resolve = resolve;
    this.#timer = setTimeout(() => this.#onTimeout(timeoutMs), timeoutMs);
    child.stdout?.on('data', (chunk: Buffer) => this.#collect(this.#stdout, chunk));
    child.stderr?.on('data', (chunk: Buffer) => this.#collect(this.#stderr, chunk));
    child.once('error', (error: NodeJS.ErrnoException) => this.#onSpawnError(error));
    child.once('exit', () => this.#onLeaderExit());
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) => this.#finish(code, signal));
  }

  /** The command's standard input: the invocation's file, or nothing (closed at once). */
  feedInput(): void {
    const stdin = this.#child.stdin;
    if (stdin === null) return;
    stdin.on('error', () => {
      // The command exited without reading all of its input: its exit status says what happened.
    });
    const file = this.#invocation.stdinFile;
    if (file === undefined) {
      stdin.end();
      return;
    }
    const input = createReadStream(file);
    input.on('error', (error) => {
      stdin.destroy();
      this.#stop(`cannot read ${file}: ${error.message}`);
    });
    input.pipe(stdin);
  }

  #collect(into: Buffer[], chunk: Buffer): void {
    if (this.#size > MAX_OUTPUT_BYTES) return;
    this.#size += chunk.length;
    if (this.#size > MAX_OUTPUT_BYTES) this.#stop('printed more output than magnetar reads');
    else into.push(chunk);
  }

  #onTimeout(timeoutMs: number): void {
    // The leader has ended but a process it started keeps the output open: stop waiting for it.
    if (this.#leaderExited) this.#abandonOutput();
    else this.#stop(`timed out after ${Math.round(timeoutMs / 1000)} s`);
  }

  /** It could not be started: there is nothing to wait for. */
  #onSpawnError(error: NodeJS.ErrnoException): void {
    this.#failure ??= spawnFailure(this.#invocation, error);
    this.#leaderExited = true;
    this.#abandonOutput();
  }

  #onLeaderExit(): void {
    this.#leaderExited = true;
    if (this.#failure === undefined) return;
    // Stopped: take out whatever is left of its group now, while the group id is still its own.
    signalGroup(this.#child, 'SIGKILL');
    clearTimeout(this.#killTimer);
    this.#killTimer = setTimeout(() => this.#abandonOutput(), KILL_GRACE_MS);
  }

  /**
   * SIGTERM now, SIGKILL after the grace period. Never later than the leader's end: once it is
   * gone and its group empty, the group id may be reused, and a late kill could hit another program.
   */
  #stop(why: string): void {
    this.#failure ??= why;
    if (this.#leaderExited) {
      this.#abandonOutput();
      return;
    }
    signalGroup(this.#child, 'SIGTERM');
    this.#killTimer ??= setTimeout(() => signalGroup(this.#child, 'SIGKILL'), KILL_GRACE_MS);
  }

  /** Stop waiting for output still held open by something the command left behind. */
  #abandonOutput(): void {
    this.#child.stdout?.destroy();
    this.#child.stderr?.destroy();
    this.#finish(this.#child.exitCode, this.#child.signalCode);
  }

  #finish(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#killTimer);
    const stdout = Buffer.concat(this.#stdout).toString('utf8');
    const stderr = Buffer.concat(this.#stderr).toString('utf8');
    if (this.#failure !== undefined) this.#resolve({ code: null, stdout, stderr, error: this.#failure });
    else if (code !== null) this.#resolve({ code, stdout, stderr });
    else this.#resolve({ code: null, stdout, stderr, error: signal === null ? 'no exit status' : `killed by ${signal}` });
  }
}
