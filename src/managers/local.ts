import * as fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackendError } from '../errors.js';
import type { Backend, BackendState, ExitReport, LaunchSpec } from './backend.js';
import { Launcher } from './launcher.js';

const KILL_GRACE_MS = 2000;
const REATTACH_POLL_MS = 200;

/**
 * Runs job scripts as local processes, each the leader of its own session and process group
 * (started through the `Launcher`), with stdout/stderr written straight to files. The server can die and come back: the job keeps
 * running, writes its own return code, and `recover` finds it again by pid (checking that the pid
 * still runs this job's script, so a recycled pid is never mistaken for the job).
 */
export class LocalBackend implements Backend {
  readonly maxConcurrent: number;
  /** Jobs this server started: their exit is reported by the launcher. */
  readonly #children = new Map<number, Promise<ExitReport>>();
  readonly #scripts = new Map<number, string>();
  #launcher: Launcher | undefined;
  #launcherEnv: Readonly<Record<string, string>> | undefined;
  #closed = false;

  /** `maxConcurrent`: `num_concurrent_jobs` (queued_python) or Infinity (unqueued). */
  constructor(maxConcurrent: number) {
    this.maxConcurrent = maxConcurrent;
  }

  scriptHeader(): readonly string[] {
    return [];
  }

  async waitForStart(): Promise<void> {
    // A local job runs as soon as it is started.
  }

  async submit(spec: LaunchSpec): Promise<string> {
    if (this.#closed) throw new BackendError('MAG_ERR_BACKEND_SUBMIT', 'the server is stopping: no job is started');
    if (!Launcher.canLaunch(spec)) throw new BackendError('MAG_ERR_BACKEND_SUBMIT', 'job paths must not contain newlines');
    if (this.#launcher === undefined || !this.#launcher.alive || this.#launcherEnv !== spec.env) {
      this.#launcher?.stop();
      this.#launcher = Launcher.start(spec.env);
      this.#launcherEnv = spec.env;
    }
    const { pid, exit } = await this.#launcher.launch(spec);
    if (!Number.isSafeInteger(pid) || pid <= 1) throw new BackendError('MAG_ERR_BACKEND_SUBMIT', 'the job launcher reported no pid');
    this.#scripts.set(pid, spec.scriptPath);
    const exited = exit.then(async (status) => {
      // The launcher went away before the job ended: watch the pid instead.
      if (status === null) await waitUntilGone(pid, spec.scriptPath);
      this.#children.delete(pid);
      this.#scripts.delete(pid);
      return { exitCode: status };
    });
    this.#children.set(pid, exited);
    return String(pid);
  }

  /** Stop the launcher (running jobs are not affected). */
  close(): void {
    this.#closed = true;
    this.#launcher?.stop();
  }

  async status(externalId: string): Promise<BackendState> {
    const pid = Number(externalId);
    if (this.#children.has(pid)) return 'running';
    const script = this.#scripts.get(pid);
    if (script !== undefined && (await runsScript(pid, script))) return 'running';
    return 'exited';
  }

  async waitForExit(externalId: string): Promise<ExitReport> {
    const pid = Number(externalId);
    const own = this.#children.get(pid);
    if (own !== undefined) return own;
    const script = this.#scripts.get(pid);
    if (script === undefined) return { exitCode: null };
    while (await runsScript(pid, script)) await sleep(REATTACH_POLL_MS);
    this.#scripts.delete(pid);
    return { exitCode: null };
  }

  async kill(externalId: string): Promise<void> {
    const pid = Number(externalId);
    const own = this.#children.get(pid);
    const script = this.#scripts.get(pid);
    if (own === undefined && (script === undefined || !(await runsScript(pid, script)))) return;
    signalGroup(pid, 'SIGTERM');
    // Whatever is left of the group gets SIGKILL: at once when the leader ends (children it started
    // may ignore SIGTERM), or after the grace period. Never later: once the leader is gone and its
    // group empty, the pid may be recycled, and a delayed group kill could hit an unrelated job.
    const leaderGone = own !== undefined ? own.then(() => undefined) : waitUntilGone(pid, script!);
    const escalate = (): void => signalGroup(pid, 'SIGKILL');
    // Not awaited: kill resolves once the request is made. Either outcome ends in the SIGKILL.
    void Promise.race([leaderGone, sleep(KILL_GRACE_MS)]).then(escalate, escalate);
  }

  /** The pid file the script writes first thing is the truth (the recorded pid may be missing). */
  async recover(spec: LaunchSpec, _externalId: string | undefined): Promise<string | undefined> {
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

async function waitUntilGone(pid: number, scriptPath: string): Promise<void> {
  while (await runsScript(pid, scriptPath)) await sleep(REATTACH_POLL_MS / 4);
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
