/**
 * `queued_condor` (PROTOCOL §6.2 "Condor"): jobs are submitted with `condor_submit` (the submit
 * description: `submit-description.ts`), followed in the job's HTCondor user log
 * (`<jobdir>/job_condor.log`: `user-log.ts`), looked up with `condor_q` where the log cannot
 * answer (`queue.ts`), and removed with `condor_rm`. The commands run through the one
 * `CommandRunner`, on this host.
 *
 * `condor_submit` runs with the job's clean environment (plus `CONDOR_CONFIG` and `_CONDOR_*`
 * from the server's), because `getenv = true` copies the submitter's environment into the job;
 * and in `<jobdir>/working`, which HTCondor takes as the job's initial directory.
 *
 * State comes from the user log; `condor_q` is asked, for all jobs of one poll in one call, about
 * jobs whose log does not exist (yet), and every minute about all unfinished jobs. Upstream
 * reports a missing log as `complete`; here a job whose log is missing and which `condor_q` does
 * not know is "gone", and its `return_code` file decides.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { ManagerConfig } from '../../config/types.js';
import { BackendError, messageOf } from '../../errors.js';
import { CONTROL_FILES } from '../../jobs/layout.js';
import type { Logger } from '../../log.js';
import type { Backend, BackendState, ExitReport, LaunchSpec } from '../backend.js';
import type { Command } from '../cli/command.js';
import { localShell } from '../cli/shell.js';
import type { BackendContext } from '../context.js';
import { RepeatedFailureLog } from '../failure-log.js';
import { PollingMonitor, type PolledState } from '../monitor.js';
import { CommandRunner } from '../process-runner.js';
import { condorQArguments, parseCondorQ, queueState } from './queue.js';
import { buildSubmitDescription, condorSubmitOptions, parseClusterId } from './submit-description.js';
import { UserLogReader, submittedCluster, type CondorLogSummary } from './user-log.js';

export interface CondorCommands {
  readonly condorSubmit: string;
  readonly condorQ: string;
  readonly condorRm: string;
}

const DEFAULT_CONDOR_COMMANDS: CondorCommands = Object.freeze({
  condorSubmit: 'condor_submit',
  condorQ: 'condor_q',
  condorRm: 'condor_rm',
});

/** Programmatic knobs (tests point the commands at fake executables). */
export interface CondorBackendOptions {
  readonly commands?: Partial<CondorCommands>;
  /** How often all unfinished jobs are also looked up with condor_q (default one minute). */
  readonly queueCheckIntervalMs?: number;
  /** Limit for one condor_submit / condor_q / condor_rm call (default 60 s). */
  readonly commandTimeoutMs?: number;
}

const DEFAULT_QUEUE_CHECK_MS = 60_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 60_000;

interface TrackedJob {
  readonly log: UserLogReader;
  /** condor_rm was asked for (a cancel, or a hold that ended the job). */
  removed: boolean;
}

/** Server environment variables condor_q and condor_rm see (condor_submit gets the job's). */
const TOOL_VARIABLES: ReadonlySet<string> = new Set(['PATH', 'HOME', 'TMPDIR', 'LANG']);

function condorEnvironments(serverEnv: Readonly<Record<string, string | undefined>>): { condor: Record<string, string>; tool: Record<string, string> } {
  const condor: Record<string, string> = {};
  const tool: Record<string, string> = {};
  for (const [name, value] of Object.entries(serverEnv)) {
    if (value === undefined) continue;
    if (name === 'CONDOR_CONFIG' || name.startsWith('_CONDOR_')) condor[name] = value;
    if (TOOL_VARIABLES.has(name)) tool[name] = value;
  }
  return { condor, tool: { ...tool, ...condor } };
}

class CondorBackend implements Backend {
  readonly maxConcurrent = Number.POSITIVE_INFINITY;
  readonly #managerParams: ReadonlyArray<readonly [string, string]>;
  readonly #commands: CondorCommands;
  readonly #log: Logger;
  readonly #runner: CommandRunner;
  /** HTCondor's own settings from the server's environment (condor_submit gets them too). */
  readonly #condorEnv: Readonly<Record<string, string>>;
  readonly #queueCheckMs: number;
  readonly #jobs = new Map<string, TrackedJob>();
  readonly #monitor: PollingMonitor;
  readonly #queueFailures: RepeatedFailureLog;
  #lastQueueCheck = Date.now();

  constructor(manager: ManagerConfig, ctx: BackendContext, options: CondorBackendOptions = {}) {
    this.#managerParams = condorSubmitOptions(manager, ctx.configFile);
    this.#commands = { ...DEFAULT_CONDOR_COMMANDS, ...options.commands };
    this.#log = ctx.log.child({ manager: manager.name, backend: 'condor' });
    this.#queueCheckMs = options.queueCheckIntervalMs ?? DEFAULT_QUEUE_CHECK_MS;
    const env = condorEnvironments(ctx.serverEnv);
    this.#condorEnv = env.condor;
    this.#runner = new CommandRunner(localShell(), { timeoutMs: options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS, env: env.tool });
    this.#queueFailures = new RepeatedFailureLog(this.#log, 'condor_q');
    this.#monitor = new PollingMonitor({
      intervalMs: manager.minPollingInterval * 1000,
      pollBatch: async (ids) => this.#poll(ids, false),
      // Not in the queue and no final event: the job's return_code file decides (in the service).
      onGone: async () => ({ exitCode: null }),
      log: this.#log,
    });
  }

  scriptHeader(): readonly string[] {
    return [];
  }

  async submit(spec: LaunchSpec): Promise<string> {
    const logPath = path.join(spec.jobDirectory, CONTROL_FILES.condorLog);
    const description = buildSubmitDescription({
      scriptPath: spec.scriptPath,
      stdoutPath: spec.stdoutPath,
      stderrPath: spec.stderrPath,
      userLogPath: logPath,
      clientParams: spec.submitParams,
      managerParams: this.#managerParams,
    });
    const submitFile = path.join(spec.jobDirectory, CONTROL_FILES.condorSubmit);
    await fs.writeFile(submitFile, description, { mode: 0o600 });
    const command: Command = { argv: [this.#commands.condorSubmit, submitFile], cwd: spec.workingDirectory };
    // getenv = true hands condor_submit's environment to the job: make it the job's clean one.
    const result = await this.#runner.run(command, { ...spec.env, ...this.#condorEnv });
    if (result.code !== 0) throw this.#runner.failure(command, result, 'MAG_ERR_BACKEND_SUBMIT', 'HTCondor did not accept the job');
    const clusterId = parseClusterId(result.stdout);
    if (clusterId === undefined) {
      const said = `${result.stdout} ${result.stderr}`.trim().slice(0, 300);
      throw new BackendError('MAG_ERR_BACKEND_COMMAND', `condor_submit did not say which cluster it submitted to: ${JSON.stringify(said)}`);
    }
    this.#track(clusterId, logPath);
    this.#log.info({ jobId: spec.jobId, externalId: clusterId }, 'submitted to HTCondor');
    return clusterId;
  }

  /**
   * One job's state (restart recovery). When neither its log nor condor_q can answer, the job is
   * `queued`: it stays watched and the monitor asks again, as the cli and DRMAA backends do.
   */
  async status(externalId: string): Promise<BackendState> {
    let polled: PolledState | undefined;
    try {
      polled = (await this.#poll([externalId], true)).get(externalId);
    } catch (error) {
      this.#log.warn({ externalId, err: messageOf(error) }, 'HTCondor cannot be asked about the job now; it stays watched');
      return 'queued';
    }
    if (polled === undefined || polled.state === 'gone') return 'exited';
    return polled.state;
  }

  waitForStart(externalId: string): Promise<void> {
    return this.#monitor.waitForStart(externalId);
  }

  waitForExit(externalId: string): Promise<ExitReport> {
    return this.#monitor.waitForExit(externalId);
  }

  async kill(externalId: string): Promise<void> {
    const job = this.#jobs.get(externalId);
    if (job !== undefined) job.removed = true;
    await this.#remove(externalId, 'cancel');
  }

  async recover(spec: LaunchSpec, externalId: string | undefined): Promise<string | undefined> {
    const logPath = path.join(spec.jobDirectory, CONTROL_FILES.condorLog);
    let clusterId = externalId !== undefined && /^\d+$/.test(externalId) ? externalId : undefined;
    if (clusterId === undefined) {
      // Submitted, but the server stopped before it recorded the id: the log knows it.
      const text = await fs.readFile(logPath, 'utf8').catch(() => undefined);
      clusterId = text === undefined ? undefined : submittedCluster(text);
    }
    if (clusterId === undefined) return undefined;
    this.#track(clusterId, logPath);
    return clusterId;
  }

  close(): void {
    this.#monitor.close();
  }

  #track(clusterId: string, logPath: string): void {
    if (this.#jobs.get(clusterId)?.log.path === logPath) return;
    this.#jobs.set(clusterId, { log: new UserLogReader(logPath, clusterId), removed: false });
  }

  /**
   * One round: every job's log, then one condor_q for the jobs the logs cannot answer for.
   * `single` (a status question): keep the job tracked, no cross-check, and throw when condor_q
   * cannot be asked instead of keeping the jobs as they were.
   */
  async #poll(ids: readonly string[], single: boolean): Promise<Map<string, PolledState>> {
    const crossCheck = !single && Date.now() - this.#lastQueueCheck >= this.#queueCheckMs;
    if (crossCheck) this.#lastQueueCheck = Date.now();
    const { states, ask } = await this.#readLogs(ids, single, crossCheck);
    if (ask.length === 0) return states;
    let queue: Map<string, number>;
    try {
      queue = await this.#askQueue(ask);
      this.#queueFailures.succeeded();
    } catch (error) {
      if (single) throw error;
      this.#queueFailures.failed(error);
      // Unknown for now: keep waiting (a job whose log exists keeps its log state).
      for (const id of ask) if (!states.has(id)) states.set(id, { state: 'queued' });
      return states;
    }
    for (const id of ask) {
      const status = queue.get(id);
      // The log is the better witness when there is one.
      if (status !== undefined) {
        if (!states.has(id)) states.set(id, queueState(status));
        continue;
      }
      states.set(id, await this.#leftQueue(id));
    }
    return states;
  }

  /** The states the logs give, and the ids to ask condor_q about (no log, or a cross-check). */
  async #readLogs(ids: readonly string[], single: boolean, crossCheck: boolean): Promise<{ states: Map<string, PolledState>; ask: string[] }> {
    const states = new Map<string, PolledState>();
    const ask: string[] = [];
    const summaries = await Promise.all(ids.map(async (id) => this.#jobs.get(id)?.log.read()));
    for (const [index, id] of ids.entries()) {
      const job = this.#jobs.get(id);
      const summary = summaries[index];
      if (job === undefined || summary === undefined) {
        ask.push(id);
        continue;
      }
      if (summary.state === 'exited') {
        states.set(id, this.#finalState(id, job, summary));
        // The monitor settles every wait for it now; a later question goes to condor_q.
        if (!single) this.#jobs.delete(id);
        continue;
      }
      states.set(id, { state: summary.state });
      if (crossCheck) ask.push(id);
    }
    return { states, ask };
  }

  /** Not in the queue (any more): a final event may have been written since the log was read. */
  async #leftQueue(id: string): Promise<PolledState> {
    const job = this.#jobs.get(id);
    const summary = await job?.log.read();
    if (job !== undefined && summary?.state === 'exited') return this.#finalState(id, job, summary);
    return { state: 'gone' };
  }

  /** JobStatus by cluster id for `ids`, in one condor_q call; throws a BackendError when it fails. */
  async #askQueue(ids: readonly string[]): Promise<Map<string, number>> {
    const command: Command = { argv: [this.#commands.condorQ, ...condorQArguments(ids)] };
    const result = await this.#runner.run(command);
    if (result.code !== 0) throw this.#runner.failure(command, result, 'MAG_ERR_BACKEND_COMMAND', 'condor_q failed');
    return parseCondorQ(result.stdout);
  }

  #finalState(id: string, job: TrackedJob, summary: CondorLogSummary): PolledState {
    if (summary.removeFromQueue && !job.removed) {
      job.removed = true;
      this.#remove(id, 'held for good').catch((error: unknown) => this.#log.error({ externalId: id, err: error }, 'condor_rm could not be run'));
    }
    if (summary.reason === undefined) return { state: 'exited', exitCode: summary.exitCode };
    const reason = job.removed && !summary.removeFromQueue ? 'cancelled (removed with condor_rm)' : summary.reason;
    return { state: 'exited', exitCode: summary.exitCode, reason };
  }

  /** condor_rm; a failure is logged (the job has usually left the queue already). */
  async #remove(id: string, why: string): Promise<void> {
    const command: Command = { argv: [this.#commands.condorRm, id] };
    const result = await this.#runner.run(command);
    if (result.code === 0) {
      this.#log.info({ externalId: id, why }, 'removed from HTCondor');
      return;
    }
    const error = this.#runner.failure(command, result, 'MAG_ERR_BACKEND_COMMAND', 'condor_rm failed');
    this.#log.warn({ externalId: id, why, err: error.message }, 'condor_rm failed');
  }
}

/** The backend of a `queued_condor` manager; its options are checked now (ConfigError). */
export function createCondorBackend(manager: ManagerConfig, ctx: BackendContext, options: CondorBackendOptions = {}): Backend {
  return new CondorBackend(manager, ctx, options);
}
