import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ManagerConfig } from '../config/types.js';
import { DrmaaClient, drmaaProcessEnvironment } from '../drmaa/client.js';
import { DRM_JOB_ID_RE, USER_NAME_RE } from '../drmaa/external.js';
import { BackendError, ConfigError } from '../errors.js';
import { CONTROL_FILES } from '../jobs/layout.js';
import type { Logger } from '../log.js';
import type { Backend, BackendState, ExitReport, LaunchSpec } from './backend.js';
import type { Command } from './cli/command.js';
import { localShell } from './cli/shell.js';
import type { BackendContext } from './context.js';
import { DrmaaJobs, checkBackendOptions, contactFile, drmaaLibraryPath, jobTemplate, nativeSpecification } from './drmaa.js';
import { CommandRunner, type CommandFailureCode } from './process-runner.js';

const EXTERNAL_OPTIONS = new Set(['production', 'chown_working_directory_script', 'drmaa_launch_script', 'drmaa_kill_script', 'native_specification']);
const SCRIPTS = fileURLToPath(new URL('../../../scripts/', import.meta.url));
const DEFAULT_SCRIPTS = {
  chown: path.join(SCRIPTS, 'chown-working-directory.sh'),
  launch: path.join(SCRIPTS, 'drmaa-launch.sh'),
  kill: path.join(SCRIPTS, 'drmaa-kill.sh'),
} as const;
/** Jobs run only as regular accounts: never root, system accounts, or nobody (Debian's ranges). */
export const MIN_JOB_UID = 1000;
export const MAX_JOB_UID = 60000;
const HELPER_TIMEOUT_MS = 60_000;
/** `getent passwd` answers from local files or a directory service: it must not hold a submission long. */
const LOOKUP_TIMEOUT_MS = 10_000;

interface ExternalOptions {
  readonly production: boolean;
  readonly chownScript: string;
  readonly launchScript: string;
  readonly killScript: string;
  readonly nativeSpecification: string | undefined;
  readonly sudo: string;
  readonly stagingDirectory: string;
}

interface JobOwner {
  readonly user: string;
  readonly jobId: string;
  readonly jobDirectory: string;
}

function parseBoolean(manager: ManagerConfig, ctx: BackendContext, key: string, fallback: boolean): boolean {
  const value = manager.backendOptions[key];
  if (value === undefined) return fallback;
  const lower = value.trim().toLowerCase();
  if (['true', 'yes', 'on', '1'].includes(lower)) return true;
  if (['false', 'no', 'off', '0'].includes(lower)) return false;
  throw new ConfigError(ctx.configFile, `manager ${manager.name} ${key}`, 'must be true or false');
}

function helperScript(manager: ManagerConfig, ctx: BackendContext, key: string, fallback: string): string {
  const file = manager.backendOptions[key] ?? fallback;
  const where = `manager ${manager.name} ${key}`;
  if (!path.isAbsolute(file)) throw new ConfigError(ctx.configFile, where, 'must be an absolute path');
  try {
    if (!statSync(file).isFile()) throw new Error('not a file');
    accessSync(file, fsConstants.X_OK);
  } catch {
    throw new ConfigError(ctx.configFile, where, `${file} is not an executable file`);
  }
  return file;
}

/** `sudo` from the server's PATH (checked at startup: the manager cannot work without it). */
function findSudo(manager: ManagerConfig, ctx: BackendContext): string {
  for (const dir of (ctx.serverEnv['PATH'] ?? '/usr/bin:/bin').split(':')) {
    if (!path.isAbsolute(dir)) continue;
    const candidate = path.join(dir, 'sudo');
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  throw new ConfigError(ctx.configFile, `manager ${manager.name} type`, 'queued_external_drmaa needs sudo on the server\'s PATH');
}

function parseOptions(manager: ManagerConfig, ctx: BackendContext): ExternalOptions {
  checkBackendOptions(manager, ctx, EXTERNAL_OPTIONS);
  const native = manager.backendOptions['native_specification'];
  return {
    production: parseBoolean(manager, ctx, 'production', true),
    chownScript: helperScript(manager, ctx, 'chown_working_directory_script', DEFAULT_SCRIPTS.chown),
    launchScript: helperScript(manager, ctx, 'drmaa_launch_script', DEFAULT_SCRIPTS.launch),
    killScript: helperScript(manager, ctx, 'drmaa_kill_script', DEFAULT_SCRIPTS.kill),
    nativeSpecification: native === undefined || native.trim() === '' ? undefined : native.trim(),
    sudo: findSudo(manager, ctx),
    stagingDirectory: manager.stagingDirectory,
  };
}

/**
 * `queued_external_drmaa`: each job runs as the OS user its client names in
 * `submit_params.user` (allow-listed by the administrator through `allowed_submit_params`).
 * The server gives the job directory to that user (chown helper, as root through sudo), writes
 * the job template to `jt.json`, and submits it as the user (launch helper through `sudo -u`); the
 * launch helper prints the DRM job id. The server's own DRMAA session (helper process) polls the
 * job; kill goes through the kill helper as the user; once the job has ended the directory is
 * given back to the server user.
 */
class ExternalDrmaaBackend implements Backend {
  readonly maxConcurrent = Number.POSITIVE_INFINITY;
  readonly #options: ExternalOptions;
  readonly #jobs: DrmaaJobs;
  /** Runs sudo and the helpers on this host, with the helpers' environment. */
  readonly #runner: CommandRunner;
  /** Runs `getent` (same environment, shorter limit). */
  readonly #lookup: CommandRunner;
  readonly #log: Logger;
  /** Who owns each watched job (rebuilt from the launch record after a restart). */
  readonly #owners = new Map<string, JobOwner>();

  constructor(options: ExternalOptions, jobs: DrmaaJobs, env: Readonly<Record<string, string>>, log: Logger) {
    this.#options = options;
    this.#jobs = jobs;
    this.#runner = new CommandRunner(localShell(), { timeoutMs: HELPER_TIMEOUT_MS, env });
    this.#lookup = new CommandRunner(localShell(), { timeoutMs: LOOKUP_TIMEOUT_MS, env });
    this.#log = log;
  }

  scriptHeader(): readonly string[] {
    return [];
  }

  async submit(spec: LaunchSpec): Promise<string> {
    const user = await checkJobUser(spec.submitParams['user'], this.#lookup);
    const native = nativeSpecification(this.#options.nativeSpecification, spec.submitParams);
    // The helpers compare resolved paths: hand them no symlinked staging directory.
    const stagingRoot = await fs.realpath(this.#options.stagingDirectory);
    const jobDirectory = path.join(stagingRoot, path.basename(spec.jobDirectory));
    const rebase = (p: string): string => path.join(jobDirectory, path.relative(spec.jobDirectory, p));
    const realSpec: LaunchSpec = {
      ...spec,
      jobDirectory,
      scriptPath: rebase(spec.scriptPath),
      pidPath: rebase(spec.pidPath),
      returnCodePath: rebase(spec.returnCodePath),
      workingDirectory: rebase(spec.workingDirectory),
      stdoutPath: rebase(spec.stdoutPath),
      stderrPath: rebase(spec.stderrPath),
    };
    const owner: JobOwner = { user, jobId: spec.jobId, jobDirectory };
    const templateFile = path.join(jobDirectory, CONTROL_FILES.drmaaTemplate);
    // The job's user owned this directory before if the job is launched again after a restart: never
    // write through something it left there.
    await fs.rm(templateFile, { force: true });
    await fs.writeFile(templateFile, `${JSON.stringify(jobTemplate(realSpec, native))}\n`, { mode: 0o644, flag: 'wx' });
    await this.#chown(owner, ['--user', user]);
    let output: string;
    try {
      output = await this.#helper(
        [this.#options.sudo, '-n', '-E', '-u', user, this.#options.launchScript, '--job_attributes', templateFile, '--staging_root', stagingRoot],
        'MAG_ERR_BACKEND_SUBMIT',
        `the DRMAA launch helper failed as ${user}`,
      );
    } catch (error) {
      await this.#restore(owner);
      throw error;
    }
    const externalId = output.trim().split('\n').pop() ?? '';
    if (!DRM_JOB_ID_RE.test(externalId)) {
      await this.#restore(owner);
      throw new BackendError('MAG_ERR_BACKEND_COMMAND', `the DRMAA launch helper printed no job id (${JSON.stringify(output.slice(0, 200))})`);
    }
    this.#owners.set(externalId, owner);
    return externalId;
  }

  status(externalId: string): Promise<BackendState> {
    return this.#jobs.status(externalId);
  }

  waitForStart(externalId: string): Promise<void> {
    return this.#jobs.waitForStart(externalId);
  }

  async waitForExit(externalId: string): Promise<ExitReport> {
    const report = await this.#jobs.waitForExit(externalId);
    const owner = this.#owners.get(externalId);
    if (owner !== undefined) {
      this.#owners.delete(externalId);
      await this.#restore(owner);
    }
    return report;
  }

  async kill(externalId: string): Promise<void> {
    const owner = this.#owners.get(externalId);
    if (owner === undefined) {
      // Not ours to name a user for: the server's own session tries (works for DRM managers).
      await this.#jobs.terminate(externalId);
      return;
    }
    await this.#helper(
      [this.#options.sudo, '-n', '-E', '-u', owner.user, this.#options.killScript, '--job_id', externalId],
      'MAG_ERR_BACKEND_COMMAND',
      `the DRMAA kill helper failed as ${owner.user}`,
    );
  }

  async recover(spec: LaunchSpec, externalId: string | undefined): Promise<string | undefined> {
    if (externalId === undefined) return undefined;
    const user = await checkJobUser(spec.submitParams['user'], this.#lookup);
    this.#owners.set(externalId, { user, jobId: spec.jobId, jobDirectory: spec.jobDirectory });
    this.#jobs.adopt(externalId);
    return externalId;
  }

  close(): void {
    this.#jobs.close();
  }

  /** Run a helper (argument array, no shell); resolves with its stdout, throws a BackendError. */
  async #helper(argv: readonly [string, ...string[]], code: CommandFailureCode, what: string): Promise<string> {
    const command: Command = { argv };
    const result = await this.#runner.run(command);
    if (result.code !== 0) throw this.#runner.failure(command, result, code, what);
    return result.stdout;
  }

  async #chown(owner: JobOwner, target: readonly string[]): Promise<void> {
    const where = this.#options.production ? ['--job_id', owner.jobId] : ['--job_directory', owner.jobDirectory];
    await this.#helper(
      [this.#options.sudo, '-n', this.#options.chownScript, '--staging_root', this.#options.stagingDirectory, ...where, ...target],
      'MAG_ERR_BACKEND_SUBMIT',
      'the ownership helper failed',
    );
  }

  /** Give the job directory back to the server user (logged, never thrown: the job has ended). */
  async #restore(owner: JobOwner): Promise<void> {
    try {
      await this.#chown(owner, ['--restore']);
    } catch (error) {
      this.#log.error({ jobId: owner.jobId, err: error }, 'could not give the job directory back to the server user');
    }
  }
}

/** A `submit_params.user` the server will not run a job as: the job fails with why. */
function refusedUser(message: string): BackendError {
  return new BackendError('MAG_ERR_BACKEND_SUBMIT', message);
}

/**
 * The OS user a client names in `submit_params.user`: a plain user name of an existing account
 * that is neither root nor a system account (1000 <= uid <= 60000). Throws a BackendError saying
 * why not. `runner` runs `getent` (its environment needs a PATH).
 */
export async function checkJobUser(value: unknown, runner: CommandRunner): Promise<string> {
  if (value === undefined || value === null || value === '') {
    throw refusedUser('queued_external_drmaa needs submit_params.user (the OS user the job runs as), and the administrator must allow it (allowed_submit_params = user)');
  }
  if (typeof value !== 'string' || !USER_NAME_RE.test(value)) throw refusedUser(`submit_params.user must be a user name matching ${USER_NAME_RE.source}`);
  const command: Command = { argv: ['getent', 'passwd', value] };
  const result = await runner.run(command);
  // getent exits 2 for "no such key"; anything else means the account database cannot be read.
  if (result.code !== 0 && result.code !== 2) throw runner.failure(command, result, 'MAG_ERR_BACKEND_COMMAND', 'the user database cannot be read');
  const entry = result.code === 0 ? result.stdout : undefined;
  const uid = Number(entry?.split(':')[2]);
  if (entry === undefined || entry.split(':')[0] !== value || !Number.isSafeInteger(uid)) throw refusedUser(`submit_params.user: there is no user ${value}`);
  if (uid < MIN_JOB_UID || uid > MAX_JOB_UID) {
    throw refusedUser(`submit_params.user: ${value} is root or a system account (uid ${uid} outside ${MIN_JOB_UID}-${MAX_JOB_UID}); jobs never run as such`);
  }
  return value;
}

export function createExternalDrmaaBackend(manager: ManagerConfig, ctx: BackendContext): Backend {
  const options = parseOptions(manager, ctx);
  drmaaLibraryPath(manager, ctx);
  const log = ctx.log.child({ manager: manager.name });
  const env = drmaaProcessEnvironment(ctx.serverEnv);
  const client = new DrmaaClient({ manager: manager.name, contactFile: contactFile(manager), env, log });
  const jobs = new DrmaaJobs({ client, intervalMs: manager.minPollingInterval * 1000, log });
  // The helpers find node and the DRM through this environment (sudo -E keeps it).
  return new ExternalDrmaaBackend(options, jobs, { ...env, MAGNETAR_NODE: process.execPath }, log);
}
