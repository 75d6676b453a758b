import * as fs from 'node:fs/promises';
import type { ManagerConfig } from '../../config/types.js';
import { BackendError } from '../../errors.js';
import { readReturnCode } from '../../jobs/layout.js';
import type { Logger } from '../../log.js';
import type { Backend, BackendState, ExitReport, LaunchSpec } from '../backend.js';
import type { BackendContext } from '../context.js';
import { PollingMonitor, type PolledState } from '../monitor.js';
import { CommandRunner } from '../process-runner.js';
import { describeFailure, type Command, type CommandResult } from './command.js';
import { isExternalId, type JobPlugin, type SchedulerStatus } from './job-plugin.js';
import { parseCliOptions, type CliOptions } from './options.js';

/**
 * Server environment variables scheduler commands may see. Everything else (tokens, config
 * overrides) stays out: `sbatch` copies its environment into the job by default.
 */
const SCHEDULER_ENV = [
  'PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'SSH_AUTH_SOCK', 'KRB5CCNAME',
  'SLURM_CONF',
  'SGE_ROOT', 'SGE_CELL', 'SGE_QMASTER_PORT', 'SGE_EXECD_PORT', 'SGE_CLUSTER_NAME',
  'LSF_ENVDIR', 'LSF_SERVERDIR', 'LSF_BINDIR', 'LSF_LIBDIR',
  'PBS_CONF_FILE', 'PBS_DEFAULT', 'PBS_SERVER', 'PBS_EXEC', 'PBS_HOME',
] as const;

/**
 * A job the scheduler reports ended (or no longer lists) but whose `return_code` file is not
 * visible yet is re-checked for this long: shared file systems publish a file written on a compute
 * node late.
 */
export const RETURN_CODE_GRACE_MS = 5000;

interface JobFiles {
  readonly directory: string;
  readonly returnCodePath: string;
}

function jobFiles(spec: LaunchSpec): JobFiles {
  return { directory: spec.jobDirectory, returnCodePath: spec.returnCodePath };
}

export function schedulerEnvironment(serverEnv: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of SCHEDULER_ENV) {
    const value = serverEnv[name];
    if (value !== undefined) env[name] = value;
  }
  env['PATH'] ??= '/usr/local/bin:/usr/bin:/bin';
  return env;
}

/** `queued_cli` (PROTOCOL §6.2): jobs go to a batch scheduler through its command-line tools. */
export function createCliBackend(manager: ManagerConfig, ctx: BackendContext): Backend {
  return new CliBackend(manager, parseCliOptions(manager, ctx), ctx);
}

/**
 * Submits job scripts with a job plugin's commands (sbatch, qsub, bsub…) run by a shell plugin
 * (locally or over rsh/ssh), and watches all of a manager's jobs with ONE status command per
 * polling interval. The scheduler's state says queued/running/ended; an ended (or vanished) job is
 * judged by the `return_code` file its script writes: present → it ran to its end (whatever its
 * exit status); absent → failed, with what the scheduler still remembers as the reason.
 */
export class CliBackend implements Backend {
  readonly maxConcurrent = Number.POSITIVE_INFINITY;
  readonly plugin: JobPlugin;
  readonly #runner: CommandRunner;
  readonly #env: Readonly<Record<string, string>>;
  readonly #monitor: PollingMonitor;
  readonly #log: Logger;
  readonly #graceMs: number;
  /** external id → where the job's files are (its directory, the `return_code` its script writes). */
  readonly #jobFiles = new Map<string, JobFiles>();
  /** external id → when the scheduler first said it ended while no return code was visible. */
  readonly #endedWithoutCode = new Map<string, number>();
  readonly #unknownStates = new Set<string>();

  constructor(manager: ManagerConfig, options: CliOptions, ctx: BackendContext, tuning: { graceMs?: number } = {}) {
    this.plugin = options.jobPlugin;
    this.#env = Object.freeze(schedulerEnvironment(ctx.serverEnv));
    this.#runner = new CommandRunner(options.shell, { timeoutMs: options.commandTimeoutMs, env: this.#env });
    this.#graceMs = tuning.graceMs ?? RETURN_CODE_GRACE_MS;
    this.#log = ctx.log.child({ manager: manager.name, backend: 'queued_cli', jobPlugin: this.plugin.name, shellPlugin: options.shell.name });
    this.#monitor = new PollingMonitor({
      intervalMs: manager.minPollingInterval * 1000,
      pollBatch: async (ids) => this.#pollBatch(ids),
      onGone: async (id) => this.#judgeGone(id),
      log: this.#log,
    });
  }

  /** Runs one scheduler command through the shell plugin (also used by tests and diagnostics). */
  run(command: Command, env?: Readonly<Record<string, string>>): Promise<CommandResult> {
    return this.#runner.run(command, env);
  }

  scriptHeader(spec: LaunchSpec): readonly string[] {
    return this.plugin.header({
      jobName: spec.jobName,
      stdoutPath: spec.stdoutPath,
      stderrPath: spec.stderrPath,
      workingDirectory: spec.workingDirectory,
    });
  }

  async submit(spec: LaunchSpec): Promise<string> {
    const command = this.plugin.submit(spec.scriptPath);
    // Locally, the scheduler client's environment becomes the job's (sbatch exports it): the job's
    // clean environment plus the scheduler settings. Over rsh/ssh the remote login environment applies.
    const env = this.#runner.shell.remote ? undefined : { ...spec.env, ...this.#env };
    const result = await this.#runner.run(command, env);
    if (result.code !== 0) throw this.#runner.failure(command, result, 'MAG_ERR_BACKEND_SUBMIT', `${this.plugin.scheduler} did not accept the job`);
    const id = this.plugin.parseSubmit(result.stdout);
    if (id === undefined) {
      throw new BackendError('MAG_ERR_BACKEND_COMMAND', `no job id in the answer of ${command.argv[0]}: ${JSON.stringify(result.stdout.trim().slice(0, 500))}`);
    }
    this.#jobFiles.set(id, jobFiles(spec));
    this.#log.info({ jobId: spec.jobId, externalId: id }, 'job submitted');
    return id;
  }

  /** One query for one job (used after a restart, before the job is watched again). */
  async status(externalId: string): Promise<BackendState> {
    let polled: SchedulerStatus | undefined;
    try {
      polled = (await this.plugin.poll([externalId], (c) => this.#runner.run(c))).get(externalId);
    } catch (error) {
      // Scheduler unreachable right now: watch the job; the monitor retries until it answers.
      this.#log.warn({ externalId, err: error }, 'scheduler status query failed; the job stays watched');
      return 'queued';
    }
    if (polled?.kind === 'queued') return 'queued';
    if (polled?.kind === 'running') return 'running';
    // Ended, failed or gone: finished for the service only when it wrote its return code;
    // otherwise the monitor decides (after the grace period, with the scheduler's explanation).
    return (await this.#returnCode(externalId)) === undefined ? 'running' : 'exited';
  }

  waitForStart(externalId: string): Promise<void> {
    return this.#monitor.waitForStart(externalId);
  }

  waitForExit(externalId: string): Promise<ExitReport> {
    return this.#monitor.waitForExit(externalId);
  }

  async kill(externalId: string): Promise<void> {
    if (!isExternalId(externalId)) return;
    const result = await this.#runner.run(this.plugin.kill(externalId));
    if (result.code !== 0) {
      // Usually the job ended in between; the monitor sees what became of it either way.
      this.#log.warn({ externalId, output: describeFailure(result) }, 'kill command failed');
    } else {
      this.#log.info({ externalId }, 'kill requested');
    }
  }

  async recover(spec: LaunchSpec, externalId: string | undefined): Promise<string | undefined> {
    if (externalId === undefined || !isExternalId(externalId)) return undefined;
    this.#jobFiles.set(externalId, jobFiles(spec));
    return externalId;
  }

  close(): void {
    this.#monitor.close();
  }

  async #pollBatch(ids: readonly string[]): Promise<ReadonlyMap<string, PolledState>> {
    const states = await this.plugin.poll(ids, (c) => this.#runner.run(c));
    const removed = await this.#removedDirectories(ids.filter((id) => ['queued', 'running'].includes(states.get(id)?.kind ?? '')));
    const answer = new Map<string, PolledState>();
    for (const id of ids) {
      const status = states.get(id);
      if (removed.has(id)) {
        // Cleaned while the scheduler still holds it (e.g. a held job): it can only fail now.
        this.#killInBackground(id);
        const reason = 'the job directory was removed while the job was still in the scheduler; the scheduler job was killed';
        answer.set(id, this.#ended(id, { state: 'exited', exitCode: null, reason }));
        continue;
      }
      if (status?.kind === 'queued' || status?.kind === 'running') {
        this.#endedWithoutCode.delete(id);
        if (status.kind === 'running' && status.unknown === true) this.#noteUnknownState(status.state);
        answer.set(id, { state: status.kind });
        continue;
      }
      if (status?.kind === 'failed') {
        // It would wait in the scheduler forever: remove it.
        this.#killInBackground(id);
        answer.set(id, this.#ended(id, { state: 'exited', exitCode: null, reason: status.reason }));
        continue;
      }
      answer.set(id, await this.#judgeEnded(id, status));
    }
    return answer;
  }

  /** Jobs missing from a poll's answer (the batch poll answers for every id, so rarely used). */
  async #judgeGone(id: string): Promise<ExitReport> {
    const polled = await this.#judgeEnded(id, undefined, true);
    if (polled.state !== 'exited') return { exitCode: null };
    const exitCode = polled.exitCode ?? null;
    return polled.reason === undefined ? { exitCode } : { exitCode, reason: polled.reason };
  }

  async #judgeEnded(id: string, status: SchedulerStatus | undefined, final = false): Promise<PolledState> {
    const code = await this.#returnCode(id);
    if (code !== undefined) return this.#ended(id, { state: 'exited', exitCode: code });
    const since = this.#endedWithoutCode.get(id);
    const now = Date.now();
    if (since === undefined) this.#endedWithoutCode.set(id, now);
    if (!final && now - (since ?? now) < this.#graceMs) return { state: 'running' };
    const remembered = await this.plugin.explain(id, (c) => this.#runner.run(c)).catch(() => undefined);
    const what =
      status === undefined
        ? `the scheduler lost the job: ${this.plugin.scheduler} no longer lists it`
        : `${this.plugin.scheduler} ended the job (state ${status.state})`;
    // The service adds that no return code was recorded.
    const reason = remembered === undefined ? what : `${what}; ${remembered}`;
    this.#log.warn({ externalId: id, reason }, 'job ended without a return code');
    const exitCode = status?.kind === 'ended' ? (status.exitCode ?? null) : null;
    return this.#ended(id, { state: 'exited', exitCode, reason });
  }

  #ended(id: string, state: PolledState): PolledState {
    this.#endedWithoutCode.delete(id);
    this.#jobFiles.delete(id);
    return state;
  }

  /** A kill the poll does not wait for (its failure is only logged: the job ends either way). */
  #killInBackground(id: string): void {
    this.kill(id).catch((error: unknown) => this.#log.warn({ externalId: id, err: error }, 'kill command could not be run'));
  }

  #noteUnknownState(state: string): void {
    if (this.#unknownStates.has(state)) return;
    this.#unknownStates.add(state);
    this.#log.warn({ state }, 'scheduler state not in magnetar\'s table: treated as running until the job leaves the queue');
  }

  /** Ids whose job directory no longer exists (only a definite "no such file" counts). */
  async #removedDirectories(ids: readonly string[]): Promise<Set<string>> {
    const removed = new Set<string>();
    await Promise.all(
      ids.map(async (id) => {
        const dir = this.#jobFiles.get(id)?.directory;
        if (dir === undefined) return;
        try {
          await fs.stat(dir);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOENT') removed.add(id);
        }
      }),
    );
    return removed;
  }

  /** The job's `return_code` (read never through a symlink), if it is there yet. */
  async #returnCode(id: string): Promise<number | undefined> {
    const file = this.#jobFiles.get(id)?.returnCodePath;
    return file === undefined ? undefined : readReturnCode(file);
  }
}
