import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { BackendError } from '../errors.js';

/**
 * Starting a job with `child_process.spawn` forks the whole server process (≈4 ms of blocked
 * event loop on a 70 MB server). The launcher is one small long-lived bash that does the forking
 * instead: per job it forks a watcher subshell which starts the job script as the leader of a new
 * process group (job control, `set -m`), reports its pid, waits for it and reports its exit status. The job never depends on
 * the launcher or the server: if they die, the job runs on and the server re-attaches to it later.
 *
 * Requests are five lines (token, script, stdout file, stderr file, working directory); answers
 * are one line each: `start TOKEN PID`, `fail TOKEN REASON`, `exit TOKEN STATUS`.
 */
const LAUNCHER_SCRIPT = String.raw`
while IFS= read -r tok && IFS= read -r script && IFS= read -r out && IFS= read -r err && IFS= read -r cwd; do
  (
    cd -- "$cwd" 2>/dev/null || { printf 'fail %s cannot enter the working directory\n' "$tok"; exit 0; }
    { exec 4>>"$out" 5>>"$err"; } 2>/dev/null || { printf 'fail %s cannot open the job output files\n' "$tok"; exit 0; }
    set -m
    /bin/bash "$script" </dev/null 1>&4 2>&5 4>&- 5>&- &
    pid=$!
    exec 4>&- 5>&-
    printf 'start %s %s\n' "$tok" "$pid"
    wait "$pid"
    printf 'exit %s %s\n' "$tok" "$?"
  ) &
done
`;

export interface LaunchRequest {
  readonly scriptPath: string;
  readonly stdoutPath: string;
  readonly stderrPath: string;
  readonly workingDirectory: string;
}

export interface Launched {
  readonly pid: number;
  /** Resolves with the exit status, or null when the launcher went away before reporting it. */
  readonly exit: Promise<number | null>;
}

interface Pending {
  readonly started: (launched: Launched) => void;
  readonly failed: (error: Error) => void;
  exited?: (status: number | null) => void;
}

export class Launcher {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #pending = new Map<string, Pending>();
  #next = 0;
  #alive = true;

  private constructor(child: ChildProcessWithoutNullStreams) {
    this.#child = child;
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => this.#onLine(line));
    child.stderr.resume();
    child.once('exit', () => this.#onGone());
    child.once('error', () => this.#onGone());
    child.stdin.on('error', () => this.#onGone());
  }

  /** Start a launcher whose jobs get exactly `env`. */
  static start(env: Readonly<Record<string, string>>): Launcher {
    const child = spawn('/bin/bash', ['-c', LAUNCHER_SCRIPT], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    return new Launcher(child);
  }

  get alive(): boolean {
    return this.#alive;
  }

  /** Paths are sent one per line: anything with a newline must be started another way. */
  static canLaunch(request: LaunchRequest): boolean {
    return [request.scriptPath, request.stdoutPath, request.stderrPath, request.workingDirectory].every((p) => !p.includes('\n'));
  }

  launch(request: LaunchRequest): Promise<Launched> {
    if (!this.#alive) return Promise.reject(new BackendError('MAG_ERR_BACKEND_SUBMIT', 'the job launcher is not running'));
    const token = String(this.#next++);
    return new Promise<Launched>((resolve, reject) => {
      this.#pending.set(token, { started: resolve, failed: reject });
      this.#child.stdin.write(`${token}\n${request.scriptPath}\n${request.stdoutPath}\n${request.stderrPath}\n${request.workingDirectory}\n`);
    });
  }

  /** Stop the launcher itself (never its jobs, which live in their own sessions). */
  stop(): void {
    this.#child.stdin.end();
  }

  #onLine(line: string): void {
    const [kind, token, ...rest] = line.split(' ');
    if (token === undefined) return;
    const pending = this.#pending.get(token);
    if (pending === undefined) return;
    if (kind === 'start') {
      const pid = Number(rest[0]);
      const exit = new Promise<number | null>((resolve) => {
        pending.exited = resolve;
      });
      pending.started({ pid, exit });
    } else if (kind === 'fail') {
      this.#pending.delete(token);
      pending.failed(new BackendError('MAG_ERR_BACKEND_SUBMIT', rest.join(' ')));
    } else if (kind === 'exit') {
      this.#pending.delete(token);
      const status = Number(rest[0]);
      pending.exited?.(Number.isInteger(status) ? status : null);
    }
  }

  #onGone(): void {
    if (!this.#alive) return;
    this.#alive = false;
    for (const pending of this.#pending.values()) {
      if (pending.exited !== undefined) pending.exited(null);
      else pending.failed(new BackendError('MAG_ERR_BACKEND_SUBMIT', 'the job launcher exited'));
    }
    this.#pending.clear();
  }
}
