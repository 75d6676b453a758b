import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { ManagerConfig } from '../config/types.js';
import { DrmaaCallError, DrmaaClient, drmaaProcessEnvironment } from '../drmaa/client.js';
import { JOB_PS, jobPsName } from '../drmaa/constants.js';
import type { PollEntry, TemplateMessage } from '../drmaa/protocol.js';
import { BackendError, ConfigError, messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import type { Backend, BackendState, ExitReport, LaunchSpec } from './backend.js';
import type { BackendContext } from './context.js';
import { PollingMonitor, type PolledState } from './monitor.js';

const DRMAA_OPTIONS = new Set(['native_specification']);

/**
 * Options a client may put in its own native specification (submit parameter
 * `native_specification`, when the administrator allow-listed it): Grid Engine resource requests
 * only. Everything that names files (`-o`, `-e`, `-i`, `-@`), exports the environment (`-V`, `-v`),
 * changes the shell, directory or command (`-S`, `-wd`, `-cwd`, `-b`, `-C`) or holds the job is refused,
 * as is every character a file name or a shell would need.
 */
const CLIENT_NATIVE_OPTIONS = new Set(['-l', '-q', '-pe', '-P', '-A', '-p', '-R', '-js', '-binding', '-ckpt', '-notify', '-r', '-soft', '-hard', '-masterq', '-ar']);
const CLIENT_NATIVE_TOKEN = /^[A-Za-z0-9_.,:=+@*-]+$/;
const CLIENT_NATIVE_MAX = 1000;

/** The manager's session contact lives next to its job directories (job ids cannot start with a dot). */
export function contactFile(manager: ManagerConfig): string {
  return path.join(manager.stagingDirectory, `.magnetar-drmaa-${manager.name}.contact`);
}

/** `backendOptions` of a DRMAA manager: only `allowed` keys, no control characters. */
export function checkBackendOptions(manager: ManagerConfig, ctx: BackendContext, allowed: ReadonlySet<string>): void {
  for (const [key, value] of Object.entries(manager.backendOptions)) {
    if (!allowed.has(key)) {
      throw new ConfigError(ctx.configFile, `manager ${manager.name} ${key}`, `unknown option for a ${manager.type} manager (known: ${[...allowed].join(', ')})`);
    }
    if (/[\x00-\x1f\x7f]/.test(value)) throw new ConfigError(ctx.configFile, `manager ${manager.name} ${key}`, 'must be one line without control characters');
  }
}

/** The DRMAA library named by the server's DRMAA_LIBRARY_PATH (checked at startup). */
export function drmaaLibraryPath(manager: ManagerConfig, ctx: BackendContext): string {
  const library = ctx.serverEnv['DRMAA_LIBRARY_PATH'];
  const key = `manager ${manager.name} type`;
  if (library === undefined || library === '') {
    throw new ConfigError(ctx.configFile, key, `${manager.type} needs DRMAA_LIBRARY_PATH in the server's environment (the path of the DRM's libdrmaa.so)`);
  }
  if (!path.isAbsolute(library) || !existsSync(library)) {
    throw new ConfigError(ctx.configFile, key, `DRMAA_LIBRARY_PATH=${library} is not an existing absolute path`);
  }
  return library;
}

/**
 * The native specification of a job: the manager's own wins; otherwise the client's
 * (`native_specification` or `submit_native_specification` submit parameter, which reach a backend
 * only when allow-listed), restricted to resource requests (PROTOCOL §14 item 11).
 */
export function nativeSpecification(managerSpec: string | undefined, submitParams: Readonly<Record<string, unknown>>): string | undefined {
  if (managerSpec !== undefined && managerSpec.trim() !== '') return managerSpec;
  const fromClient = submitParams['native_specification'] ?? submitParams['submit_native_specification'];
  if (fromClient === undefined || fromClient === null || fromClient === '') return undefined;
  if (typeof fromClient !== 'string') throw refused('the native_specification submit parameter must be a string');
  checkClientNativeSpecification(fromClient);
  return fromClient;
}

/** A client's submit parameter the DRM must not see: the job fails with why. */
function refused(message: string): BackendError {
  return new BackendError('MAG_ERR_BACKEND_SUBMIT', message);
}

/** Throws a BackendError saying why a client's native specification is refused. */
export function checkClientNativeSpecification(spec: string): void {
  if (spec.length > CLIENT_NATIVE_MAX) throw refused(`the native specification is longer than ${CLIENT_NATIVE_MAX} characters`);
  const tokens = spec.trim().split(/[ \t]+/).filter((t) => t !== '');
  tokens.forEach((token, i) => {
    if (!CLIENT_NATIVE_TOKEN.test(token)) throw refused(`the native specification may not contain ${JSON.stringify(token)} (letters, digits and _ . , : = + @ * - only)`);
    // Values follow their option (`-pe smp 4`); a negative number is a value (`-p -100`).
    const isOption = token.startsWith('-') && !/^-\d+$/.test(token);
    if (!isOption && i === 0) throw refused('the native specification must start with an option');
    if (isOption && !CLIENT_NATIVE_OPTIONS.has(token)) {
      throw refused(`the native specification option ${token} is not allowed from clients (allowed: ${[...CLIENT_NATIVE_OPTIONS].join(' ')})`);
    }
  });
}

const QUEUED_STATES: ReadonlySet<number> = new Set([JOB_PS.UNDETERMINED, JOB_PS.QUEUED_ACTIVE, JOB_PS.SYSTEM_ON_HOLD, JOB_PS.USER_ON_HOLD, JOB_PS.USER_SYSTEM_ON_HOLD]);
const RUNNING_STATES: ReadonlySet<number> = new Set([JOB_PS.RUNNING, JOB_PS.SYSTEM_SUSPENDED, JOB_PS.USER_SUSPENDED, JOB_PS.USER_SYSTEM_SUSPENDED]);

/** Thrown by `mapPollEntry` when the DRM could not be asked: the whole poll is retried. */
export class DrmaaPollError extends BackendError {
  constructor(message: string) {
    super('MAG_ERR_BACKEND_UNREACHABLE', message);
  }
}

/**
 * What one job's poll answer means (every DRMAA state is mapped; PROTOCOL §14 item 26: FAILED is
 * a failure, never `complete`).
 */
export function mapPollEntry(entry: PollEntry): PolledState {
  if ('error' in entry) {
    // Reaped (by us, or by a helper that died before it could say so) or never known.
    if (entry.error.code === 'INVALID_JOB') return { state: 'gone' };
    throw new DrmaaPollError(entry.error.message);
  }
  const { ps } = entry;
  if (QUEUED_STATES.has(ps)) return { state: 'queued' };
  if (RUNNING_STATES.has(ps)) return { state: 'running' };
  const exit = entry.exit;
  if (ps === JOB_PS.DONE) {
    if (exit === undefined) {
      // Not final yet: ask again next round.
      if (entry.reapError?.code === 'EXIT_TIMEOUT') return { state: 'running' };
      // Another session's job (e.g. submitted before a restart whose session was lost): its
      // return_code file tells.
      return { state: 'exited', exitCode: null };
    }
    if (exit.exited) return { state: 'exited', exitCode: exit.exitStatus };
    if (exit.signaled) return { state: 'exited', exitCode: null, reason: `the job was killed by signal ${exit.termSignal ?? '?'}` };
    return { state: 'exited', exitCode: null, reason: 'the DRM ended the job before it finished (aborted)' };
  }
  if (ps === JOB_PS.FAILED) {
    let detail = '';
    if (exit?.exited === true) detail = ` (exit status ${exit.exitStatus ?? '?'})`;
    else if (exit?.signaled === true) detail = ` (killed by signal ${exit.termSignal ?? '?'})`;
    else if (exit?.aborted === true) detail = ': it was aborted before it could run or finish (check that its working directory and output files are reachable on the execution host, and the native specification)';
    else if (entry.reapError !== undefined) detail = ` (${entry.reapError.message})`;
    return { state: 'exited', exitCode: exit?.exitStatus ?? null, reason: `the DRM reports the job FAILED${detail}` };
  }
  return { state: 'queued' };
}

export interface DrmaaJobsOptions {
  readonly client: DrmaaClient;
  readonly intervalMs: number;
  readonly log: Logger;
}

/**
 * What both DRMAA backends share: one helper process (one session), one batch poll loop, the
 * state mapping, and reaping. The poll asks `drmaa_job_ps` for every watched job in one helper
 * call; jobs found DONE or FAILED are reaped there with a non-blocking `drmaa_wait`.
 */
export class DrmaaJobs {
  readonly client: DrmaaClient;
  readonly #log: Logger;
  readonly #monitor: PollingMonitor;
  readonly #submittedAt = new Map<string, number>();

  constructor(options: DrmaaJobsOptions) {
    this.client = options.client;
    this.#log = options.log;
    this.#monitor = new PollingMonitor({
      intervalMs: options.intervalMs,
      pollBatch: async (ids) => this.#pollBatch(ids),
      // Reaped or never known: the job's return_code file decides (in the service).
      onGone: async () => ({ exitCode: null }),
      log: options.log,
    });
  }

  async submit(template: TemplateMessage): Promise<string> {
    let jobId: string;
    try {
      jobId = await this.client.submit(template);
    } catch (error) {
      if (error instanceof DrmaaCallError) {
        const drm = this.client.drmSystem ?? 'the DRM';
        const diagnosis = error.message.replace(/^drmaa_run_job: /, '');
        const verdict = error.drmaaCode === 'DENIED_BY_DRM' ? 'refused the job' : 'did not accept the job';
        throw new BackendError('MAG_ERR_BACKEND_SUBMIT', `${drm} ${verdict}: ${diagnosis}`, { cause: error });
      }
      throw error;
    }
    this.#submittedAt.set(jobId, Date.now());
    return jobId;
  }

  /** Watch a job that was submitted earlier (restart recovery). */
  adopt(jobId: string): void {
    this.#submittedAt.delete(jobId);
  }

  async status(jobId: string): Promise<BackendState> {
    let polled: PolledState;
    try {
      const entries = await this.client.poll([jobId]);
      const entry = entries[jobId];
      polled = entry === undefined ? { state: 'gone' } : mapPollEntry(entry);
    } catch (error) {
      // The DRM cannot be asked right now: the job is watched, and the poll loop retries.
      this.#log.warn({ externalId: jobId, err: error }, 'DRMAA status unavailable; the job stays watched');
      return 'queued';
    }
    if (polled.state === 'gone') return 'exited';
    return polled.state;
  }

  async waitForStart(jobId: string): Promise<void> {
    await this.#monitor.waitForStart(jobId);
    const submitted = this.#submittedAt.get(jobId);
    if (submitted !== undefined) {
      this.#submittedAt.delete(jobId);
      this.#log.info({ externalId: jobId, submitToRunningMs: Date.now() - submitted }, 'DRMAA job started');
    }
  }

  waitForExit(jobId: string): Promise<ExitReport> {
    return this.#monitor.waitForExit(jobId);
  }

  /** drmaa_control(TERMINATE); a job the DRM no longer knows is already gone. */
  async terminate(jobId: string): Promise<void> {
    try {
      await this.client.control(jobId, 'TERMINATE');
    } catch (error) {
      if (error instanceof DrmaaCallError && error.drmaaCode === 'INVALID_JOB') return;
      throw error;
    }
  }

  close(): void {
    this.#monitor.close();
    this.client.close();
  }

  async #pollBatch(ids: readonly string[]): Promise<ReadonlyMap<string, PolledState>> {
    const entries = await this.client.poll(ids);
    const states = new Map<string, PolledState>();
    for (const id of ids) {
      const entry = entries[id];
      if (entry === undefined) continue;
      const polled = mapPollEntry(entry);
      states.set(id, polled);
      if ('ps' in entry && entry.ps === JOB_PS.FAILED && entry.reapError?.code === 'EXIT_TIMEOUT') {
        // FAILED but not final: the job sits in an error state in the queue. Remove it.
        this.terminate(id).catch((error: unknown) => this.#log.warn({ externalId: id, err: messageOf(error) }, 'could not remove a failed job'));
      }
      if (polled.state === 'exited' && polled.reason !== undefined) {
        this.#log.warn({ externalId: id, ps: 'ps' in entry ? jobPsName(entry.ps) : undefined, reason: polled.reason }, 'DRMAA job ended abnormally');
      }
    }
    return states;
  }
}

/** Options of a `queued_drmaa` manager, checked at startup. */
interface DrmaaOptions {
  readonly nativeSpecification: string | undefined;
}

function parseOptions(manager: ManagerConfig, ctx: BackendContext): DrmaaOptions {
  checkBackendOptions(manager, ctx, DRMAA_OPTIONS);
  const native = manager.backendOptions['native_specification'];
  return { nativeSpecification: native === undefined || native.trim() === '' ? undefined : native.trim() };
}

/** A DRMAA job template for a prepared job script (PROTOCOL §6.2, DRMAA). */
export function jobTemplate(spec: LaunchSpec, native: string | undefined): TemplateMessage {
  const template: TemplateMessage = {
    remoteCommand: '/bin/bash',
    args: [spec.scriptPath],
    jobName: spec.jobName,
    outputPath: `:${spec.stdoutPath}`,
    errorPath: `:${spec.stderrPath}`,
    workingDirectory: spec.workingDirectory,
  };
  return native === undefined ? template : { ...template, nativeSpecification: native };
}

/**
 * `queued_drmaa`: jobs go to the DRM through libdrmaa, which runs in a helper process
 * (`drmaa/helper.ts`) so that a crash in the C library never takes the server down.
 */
class DrmaaBackend implements Backend {
  readonly maxConcurrent = Number.POSITIVE_INFINITY;
  readonly #options: DrmaaOptions;
  readonly #jobs: DrmaaJobs;

  constructor(options: DrmaaOptions, jobs: DrmaaJobs) {
    this.#options = options;
    this.#jobs = jobs;
  }

  scriptHeader(): readonly string[] {
    return [];
  }

  async submit(spec: LaunchSpec): Promise<string> {
    const native = nativeSpecification(this.#options.nativeSpecification, spec.submitParams);
    return this.#jobs.submit(jobTemplate(spec, native));
  }

  status(externalId: string): Promise<BackendState> {
    return this.#jobs.status(externalId);
  }

  waitForStart(externalId: string): Promise<void> {
    return this.#jobs.waitForStart(externalId);
  }

  waitForExit(externalId: string): Promise<ExitReport> {
    return this.#jobs.waitForExit(externalId);
  }

  kill(externalId: string): Promise<void> {
    return this.#jobs.terminate(externalId);
  }

  async recover(_spec: LaunchSpec, externalId: string | undefined): Promise<string | undefined> {
    // Without an id there is nothing to ask the DRM about (DRMAA cannot list jobs by name).
    if (externalId === undefined) return undefined;
    this.#jobs.adopt(externalId);
    return externalId;
  }

  close(): void {
    this.#jobs.close();
  }
}

export function createDrmaaBackend(manager: ManagerConfig, ctx: BackendContext): Backend {
  const options = parseOptions(manager, ctx);
  drmaaLibraryPath(manager, ctx);
  const log = ctx.log.child({ manager: manager.name });
  const client = new DrmaaClient({ manager: manager.name, contactFile: contactFile(manager), env: drmaaProcessEnvironment(ctx.serverEnv), log });
  return new DrmaaBackend(options, new DrmaaJobs({ client, intervalMs: manager.minPollingInterval * 1000, log }));
}
