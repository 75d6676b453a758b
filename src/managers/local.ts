import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Backend, BackendState, LaunchSpec } from './backend.js';

const KILL_GRACE_MS = 2000;
const REATTACH_POLL_MS = 200;

/**
 * Runs job scripts as detached local processes, each the leader of its own process group, with
 * stdout/stderr written straight to files. The server can die and come back: the job keeps
 * running, writes its own return code, and `recover` finds it again by pid (checking that the pid
 * still runs this job's script, so a recycled pid is never mistaken for the job).
 */
export class LocalBackend implements Backend {
  readonly kind = 'local';
  readonly #children = new Map<number, { child: ChildProcess; exit: Promise<{ exitCode: number | null }> }>();
  readonly #scripts = new Map<number, string>();

  async submit(spec: LaunchSpec): Promise<string> {
    const [out, err] = await Promise.all([fs.open(spec.stdoutPath, 'a'), fs.open(spec.stderrPath, 'a')]);
    let child: ChildProcess;
    try {
      child = spawn('/bin/bash', [spec.scriptPath], {
        cwd: spec.workingDirectory,
        detached: true,
        env: spec.env,
        stdio: ['ignore', out.fd, err.fd],
      });
    } finally {
      await Promise.all([out.close(), err.close()]);
    }
    const pid = child.pid;
    if (pid === undefined) {
      const error = await new Promise<Error>((resolve) => child.once('error', resolve));
      throw error;
    }
    const exit = new Promise<{ exitCode: number | null }>((resolve) => {
      child.once('exit', (code, signal) => {
        this.#children.delete(pid);
        this.#scripts.delete(pid);
        resolve({ exitCode: code ?? (signal === null ? null : 128 + signalNumber(signal)) });
      });
    });
    child.unref();
    this.#children.set(pid, { child, exit });
    this.#scripts.set(pid, spec.scriptPath);
    return String(pid);
  }

  async status(externalId: string): Promise<BackendState> {
    const pid = Number(externalId);
    if (this.#children.has(pid)) return 'running';
    const script = this.#scripts.get(pid);
    if (script !== undefined && (await runsScript(pid, script))) return 'running';
    return 'exited';
  }

  async waitForExit(externalId: string): Promise<{ exitCode: number | null }> {
    const pid = Number(externalId);
    const own = this.#children.get(pid);
    if (own !== undefined) return own.exit;
    const script = this.#scripts.get(pid);
    if (script === undefined) return { exitCode: null };
    while (await runsScript(pid, script)) await sleep(REATTACH_POLL_MS);
    this.#scripts.delete(pid);
    return { exitCode: null };
  }

  async kill(externalId: string): Promise<void> {
    const pid = Number(externalId);
    const script = this.#scripts.get(pid);
    if (!this.#children.has(pid) && (script === undefined || !(await runsScript(pid, script)))) return;
    signalGroup(pid, 'SIGTERM');
    // After the grace period, whatever is left of the group (the leader may be gone while children
    // it started still run) is killed for good.
    void sleep(KILL_GRACE_MS).then(() => signalGroup(pid, 'SIGKILL'));
  }

  async recover(spec: LaunchSpec): Promise<string | undefined> {
    let pidText: string;
    try {
      pidText = (await fs.readFile(spec.pidPath, 'utf8')).trim();
    } catch {
      return undefined;
    }
    const pid = Number(pidText);
    if (!Number.isSafeInteger(pid) || pid <= 1) return undefined;
    this.#scripts.set(pid, spec.scriptPath);
    return String(pid);
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

/** Is `pid` alive and still running this job's script (not a recycled pid)? */
async function runsScript(pid: number, scriptPath: string): Promise<boolean> {
  try {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmdline.split('\0').includes(scriptPath)) return false;
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    // A zombie has exited already; only its parent has not collected it yet.
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15 };
function signalNumber(signal: NodeJS.Signals): number {
  return SIGNALS[signal] ?? 0;
}
