import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AppSection, ManagerConfig } from '../config/types.js';
import { BadRequest, Conflict, NotFound, PayloadTooLarge, Forbidden } from '../errors.js';
import type { Logger } from '../log.js';
import type { Backend, LaunchSpec } from '../managers/backend.js';
import { PULSAR_COMPAT_VERSION } from '../version.js';
import { JobDirectory, isFileType, type FileType, type OpenedDownload } from './directory.js';
import { assignJobId, checkJobId } from './ids.js';
import { KeyedMutex } from './lock.js';
import { buildJobScript, quoteEnvValue, type EnvEntry } from './script.js';
import type { Authorizer } from '../tools/authorizer.js';
import { describeDependencies, resolveDependencies } from './dependencies.js';
import { isTerminal, canTransition, wireStatus, type JobState } from './state.js';
import { fullStatus, shortStatus, type SystemProperties } from './status.js';
import { JobStore, type JobRecord, type LaunchRecord } from './store.js';

/** A submit request after the transport parsed and checked its parameters (PROTOCOL §2.5). */
export interface SubmitRequest {
  readonly commandLine: string;
  readonly submitParams: Readonly<Record<string, unknown>>;
  readonly setupParams: SetupParams | undefined;
  readonly dependenciesDescription: unknown;
  readonly env: readonly EnvEntry[];
  readonly remoteStaging: { readonly setup?: readonly unknown[] | undefined } & Readonly<Record<string, unknown>>;
  readonly touchOutputs: readonly string[];
  readonly dynamicFileSources: readonly { readonly type?: string; readonly path: string }[];
}

export interface SetupParams {
  readonly jobId?: string;
  readonly toolId?: string;
  readonly toolVersion?: string;
  readonly preserveGalaxyPythonEnvironment?: boolean;
}

const TERMINAL_DOC_CACHE = 10_000;
const CLEAN_WAIT_MS = 3000;

/**
 * The job lifecycle of one manager: setup, staging, submit, status, cancel, clean — and the
 * local queue that enforces `num_concurrent_jobs`. Transports (HTTP, later AMQP) are thin
 * adapters over this class; the backend only runs scripts.
 */
export class JobService {
  readonly manager: ManagerConfig;
  readonly #app: AppSection;
  readonly #backend: Backend;
  readonly #log: Logger;
  readonly #store: JobStore;
  readonly #locks = new KeyedMutex();
  readonly #queue: string[] = [];
  readonly #active = new Set<string>();
  readonly #finished = new Map<string, string>();
  readonly #inflightBytes = new Map<string, number>();
  readonly #systemProperties: SystemProperties;
  readonly #maxConcurrent: number;
  #closing = false;
  #realStaging: string | undefined;

  readonly #jobEnv: Readonly<Record<string, string>>;

  readonly #authorizer: Authorizer;

  /** `jobEnv` is the whole environment jobs start with (see `jobEnvironment`). */
  constructor(
    manager: ManagerConfig,
    app: AppSection,
    backend: Backend,
    authorizer: Authorizer,
    log: Logger,
    jobEnv: Readonly<Record<string, string>>,
  ) {
    this.manager = manager;
    this.#authorizer = authorizer;
    this.#jobEnv = jobEnv;
    this.#app = app;
    this.#backend = backend;
    this.#log = log.child({ manager: manager.name });
    this.#store = new JobStore(app.persistenceDirectory, manager.name);
    this.#maxConcurrent = backend.maxConcurrent;
    const props: Record<string, string> = { separator: '/' };
    if (manager.galaxyHome !== undefined) props['galaxy_home'] = manager.galaxyHome;
    if (manager.galaxyVirtualEnv !== undefined) props['galaxy_virtual_env'] = manager.galaxyVirtualEnv;
    if (manager.galaxyConfigFile !== undefined) props['galaxy_config_file'] = manager.galaxyConfigFile;
    if (manager.galaxyDatasetFilesPath !== undefined) props['galaxy_dataset_files_path'] = manager.galaxyDatasetFilesPath;
    if (manager.galaxyDatatypesConfigFile !== undefined) props['galaxy_datatypes_config_file'] = manager.galaxyDatatypesConfigFile;
    this.#systemProperties = Object.freeze(props);
  }

  /** Number of jobs whose process is running now (for tests and metrics). */
  get runningCount(): number {
    return this.#active.size;
  }

  #dir(id: string): JobDirectory {
    return new JobDirectory(this.manager.stagingDirectory, id, this.manager.jobDirectoryMode, this.#realStaging);
  }

  /** Create directories, then recover every job the store remembers (PROTOCOL §5.4). */
  async start(): Promise<void> {
    await fs.mkdir(this.manager.stagingDirectory, { recursive: true });
    this.#realStaging = await fs.realpath(this.manager.stagingDirectory);
    const records = await this.#store.open();
    records.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    for (const record of records) {
      try {
        await this.#recover(record);
      } catch (error) {
        this.#log.error({ jobId: record.id, err: error }, 'recovery failed');
        await this.#fail(record, `magnetar could not recover this job after a restart: ${(error as Error).message}`, 'lost');
      }
    }
    this.#pump();
  }

  async #recover(record: JobRecord): Promise<void> {
    const dir = this.#dir(record.id);
    const log = this.#log.child({ jobId: record.id });
    switch (record.state) {
      case 'setup':
        if (!(await dir.exists())) await this.#store.delete(record.id);
        return;
      case 'queued':
      case 'running':
      case 'postprocessing': {
        const spec = this.#launchSpec(record, dir);
        const externalId = await this.#backend.recover(spec, record.externalId);
        const state = externalId === undefined ? 'unknown' : await this.#backend.status(externalId);
        if (externalId !== undefined && (state === 'running' || state === 'queued')) {
          log.info({ externalId, state }, 're-attached to the job');
          record.externalId = externalId;
          await this.#store.save(record);
          this.#active.add(record.id);
          void this.#watch(record, externalId);
          return;
        }
        if (externalId !== undefined || (await readReturnCode(dir)) !== undefined) {
          // It ran and ended while the server was away.
          record.state = 'running';
          await this.#finish(record, null);
          return;
        }
        // Never started: queue it (again).
        log.info('queued after restart');
        if (record.state !== 'queued') {
          record.state = 'queued';
          await this.#store.save(record);
        }
        this.#queue.push(record.id);
        return;
      }
      default:
        return;
    }
  }

  async shutdown(): Promise<void> {
    this.#closing = true;
    this.#backend.close();
    await this.#store.close();
  }

  // ---------------------------------------------------------------- setup

  async setup(clientJobId: string, toolId: string | undefined, toolVersion: string | undefined, preserve?: boolean): Promise<object> {
    const id = assignJobId(this.manager.assignIds, clientJobId);
    // Decided before anything touches the disk.
    const tool = this.#authorizer.authorizeSetup(id, toolId, toolVersion);
    return this.#locks.run(id, async () => {
      await this.#setupLocked(id, tool.toolId, tool.toolVersion);
      return this.#jobConfig(id, tool.toolId, tool.toolVersion, preserve);
    });
  }

  async #setupLocked(id: string, toolId: string | undefined, toolVersion: string | undefined): Promise<JobRecord> {
    const existing = this.#store.get(id);
    if (existing !== undefined && !isTerminal(existing.state) && existing.state !== 'setup') {
      throw new Conflict(`job ${id} is ${wireStatus(existing.state)}; clean it or cancel it before setting it up again`);
    }
    const now = new Date().toISOString();
    const record: JobRecord = {
      id,
      manager: this.manager.name,
      state: 'setup',
      toolId,
      toolVersion,
      createdAt: now,
      updatedAt: now,
      uploadedBytes: 0,
      launch: undefined,
      externalId: undefined,
      returnCode: null,
      failureReason: undefined,
    };
    this.#finished.delete(id);
    await this.#store.save(record);
    // A reused id must never serve a previous job's files (PROTOCOL §14 item 29): start empty.
    await this.#dir(id).create();
    this.#log.info({ jobId: id, toolId, toolVersion }, 'job set up');
    return record;
  }

  #jobConfig(id: string, toolId: string | undefined, toolVersion: string | undefined, _preserve?: boolean): object {
    const dir = this.#dir(id);
    const config: Record<string, unknown> = {
      job_directory: dir.root,
      working_directory: dir.working,
      metadata_directory: dir.metadata,
      outputs_directory: dir.outputs,
      configs_directory: dir.configs,
      tools_directory: dir.toolFiles,
      inputs_directory: dir.inputs,
      unstructured_files_directory: dir.unstructured,
      path_separator: '/',
      job_id: id,
      system_properties: this.#systemProperties,
      pulsar_version: PULSAR_COMPAT_VERSION,
      preserve_galaxy_python_environment: null,
    };
    if (toolId !== undefined && toolId !== '') config['tool_id'] = toolId;
    if (toolVersion !== undefined && toolVersion !== '') config['tool_version'] = toolVersion;
    return config;
  }

  // ---------------------------------------------------------------- files

  #requireStaging(id: string): JobRecord {
    const record = this.#store.get(id);
    if (record === undefined) throw new NotFound(`job ${id} has not been set up`);
    if (record.state !== 'setup') {
      throw new Conflict(`job ${id} is ${wireStatus(record.state)}: files are accepted only between setup and submit`);
    }
    return record;
  }

  async upload(jobId: string, name: string, type: string, body: Readable, cacheToken: string | undefined): Promise<{ path: string }> {
    const id = checkJobId(jobId);
    const fileType = checkFileType(type);
    if (cacheToken !== undefined) throw new NotFound('the file cache is not configured on this server (cache_token given)');
    const record = this.#requireStaging(id);
    const decision = await this.#authorizer.authorizeUpload(id, record.toolId, record.toolVersion, name, fileType);
    const dir = this.#dir(id);
    const app = this.#app;
    let taken = 0;
    const take = (n: number): void => {
      if (app.maxUploadSize > 0 && taken + n > app.maxUploadSize) {
        throw new PayloadTooLarge(`upload exceeds max_upload_size (${app.maxUploadSize} bytes)`);
      }
      const inflight = this.#inflightBytes.get(id) ?? 0;
      if (app.maxJobUploadSize > 0 && record.uploadedBytes + inflight + n > app.maxJobUploadSize) {
        throw new PayloadTooLarge(`uploads into job ${id} exceed max_job_upload_size (${app.maxJobUploadSize} bytes)`);
      }
      taken += n;
      this.#inflightBytes.set(id, inflight + n);
    };
    const release = (): void => {
      const left = (this.#inflightBytes.get(id) ?? 0) - taken;
      if (left <= 0) this.#inflightBytes.delete(id);
      else this.#inflightBytes.set(id, left);
    };
    try {
      const result = await dir.writeUpload(name, fileType, body, { take }, decision.expectedSha256);
      release();
      // Submit may have started while the body streamed in: the file then belongs to no job.
      if (this.#store.get(id) !== record || record.state !== 'setup') {
        await fs.rm(result.path, { force: true });
        throw new Conflict(`job ${id} was submitted or cleaned during the upload`);
      }
      record.uploadedBytes += result.bytes;
      return { path: result.path };
    } catch (error) {
      release();
      throw error;
    }
  }

  async pathFor(jobId: string, name: string, type: string): Promise<{ path: string }> {
    const id = checkJobId(jobId);
    const fileType = checkFileType(type);
    const dir = this.#dir(id);
    if (fileType.startsWith('output')) {
      if (!(await dir.exists())) throw new NotFound(`job ${id} does not exist`);
      return { path: await dir.pathFor(name, fileType, false) };
    }
    this.#requireStaging(id);
    return { path: await dir.pathFor(name, fileType, true) };
  }

  async download(jobId: string, name: string, type: string | undefined): Promise<OpenedDownload> {
    const id = checkJobId(jobId);
    const dir = this.#dir(id);
    if (!(await dir.exists())) throw new NotFound(`job ${id} does not exist`);
    return dir.openDownload(name, type ?? 'output');
  }

  // ---------------------------------------------------------------- submit

  async submit(jobId: string, request: SubmitRequest): Promise<void> {
    const id = checkJobId(jobId);
    await this.#locks.run(id, async () => {
      let record = this.#store.get(id);
      if (record === undefined || (request.setupParams !== undefined && record.state !== 'setup' && !(await this.#dir(id).exists()))) {
        if (request.setupParams === undefined) throw new NotFound(`job ${id} has not been set up`);
        const sp = request.setupParams;
        if (sp.jobId !== undefined && sp.jobId !== id) throw new BadRequest('setup_params.job_id differs from the job id of the request');
        // Everything that can be refused is refused before the setup writes anything.
        const tool = this.#authorizer.authorizeSetup(id, sp.toolId, sp.toolVersion, true);
        this.#authorizer.authorizeEnv(id, tool.toolId, request.env);
        record = await this.#setupLocked(id, tool.toolId, tool.toolVersion);
      }
      if (record.state !== 'setup') {
        this.#log.info({ jobId: id, state: record.state }, 'duplicate submit ignored');
        return;
      }
      // A malformed env entry is the client's error (400) and leaves the job as it was.
      let clientEnv: string[];
      try {
        clientEnv = this.#authorizer.authorizeEnv(id, record.toolId, request.env);
      } catch (error) {
        if (error instanceof Forbidden) await this.#fail(record, error.message);
        throw error;
      }
      await this.#launch(record, request, clientEnv);
    });
    this.#pump();
  }

  async #launch(record: JobRecord, request: SubmitRequest, clientEnv: readonly string[]): Promise<void> {
    const dir = this.#dir(record.id);
    const launch: LaunchRecord = {
      commandLine: request.commandLine,
      env: request.env,
      // Only what the administrator allow-listed is kept: this is what reaches the backend.
      submitParams: this.#allowedSubmitParams(record.id, request.submitParams),
      dependenciesDescription: request.dependenciesDescription,
      dynamicFileSources: request.dynamicFileSources,
      preserveGalaxyPythonEnvironment: request.setupParams?.preserveGalaxyPythonEnvironment ?? false,
    };
    record.launch = launch;
    let commandLine = request.commandLine;
    if (request.setupParams !== undefined) {
      commandLine = commandLine.replaceAll('__PULSAR_JOBS_DIRECTORY__', this.manager.stagingDirectory);
    }
    try {
      await this.#authorizer.authorizeSubmit(
        {
          jobId: record.id,
          toolId: record.toolId,
          toolVersion: record.toolVersion,
          jobDirectory: dir.root,
          commandLine,
          submitParams: request.submitParams,
          remoteStagingSetup: request.remoteStaging.setup?.length ?? 0,
          hasDependencies: request.dependenciesDescription !== null && request.dependenciesDescription !== undefined,
        },
        dir.configs,
      );
    } catch (error) {
      // Refused: the job ends failed (its status says why) and the request answers 403.
      if (error instanceof Forbidden) await this.#fail(record, error.message);
      throw error;
    }
    try {
      if ((request.remoteStaging.setup?.length ?? 0) > 0) {
        throw new Forbidden('server-side staging (remote_staging.setup, remote_* file actions) is not supported by this server yet; use the transfer action');
      }
      for (const name of request.touchOutputs) await dir.touchOutput(name);
      const managerEnv = Object.entries(this.manager.env).map(([k, v]) => `${k}=${quoteEnvValue(v)}; export ${k}`);
      const galaxyHome = this.manager.galaxyHome;
      let dependencies: string[] = [];
      if (this.#authorizer.resolvesDependencies) {
        const resolution = resolveDependencies(request.dependenciesDescription, this.#app.toolDependencyDir);
        dependencies = resolution.resolved.map((d) => d.statement);
        const summary = describeDependencies(resolution);
        if (summary !== undefined) this.#log.info({ jobId: record.id }, summary);
      }
      const script = buildJobScript({
        header: this.#backend.scriptHeader(this.#launchSpec(record, dir)),
        dependencyStatements: dependencies,
        jobId: record.id,
        jobDirectory: dir.root,
        commandLine,
        envStatements: [...managerEnv, ...clientEnv],
        tmpDir: this.manager.tmpDir,
        galaxyLib: galaxyHome === undefined ? undefined : path.join(galaxyHome, 'lib'),
        galaxyVirtualEnv: this.manager.galaxyVirtualEnv,
        preserveGalaxyPythonEnvironment: launch.preserveGalaxyPythonEnvironment,
      });
      await fs.writeFile(dir.scriptPath, script, { mode: 0o700 });
    } catch (error) {
      if (error instanceof BadRequest) throw error;
      await this.#fail(record, `job could not be launched: ${(error as Error).message}`);
      return;
    }
    await this.#transition(record, 'queued');
    this.#queue.push(record.id);
  }

  #pump(): void {
    while (!this.#closing && this.#active.size < this.#maxConcurrent && this.#queue.length > 0) {
      const id = this.#queue.shift()!;
      const record = this.#store.get(id);
      if (record === undefined || record.state !== 'queued') continue;
      this.#active.add(id);
      void this.#run(record).catch((error: unknown) => {
        this.#log.error({ jobId: id, err: error }, 'job runner error');
      });
    }
  }

  #launchSpec(record: JobRecord, dir: JobDirectory): LaunchSpec {
    return {
      jobId: record.id,
      jobName: this.#jobName(record.id),
      jobDirectory: dir.root,
      scriptPath: dir.scriptPath,
      pidPath: path.join(dir.root, 'pid'),
      workingDirectory: dir.working,
      stdoutPath: dir.jobStdoutPath,
      stderrPath: dir.jobStderrPath,
      env: this.#jobEnv,
      submitParams: record.launch?.submitParams ?? {},
    };
  }

  /** `job_name_template` with `$job_id` / `${job_id}`; only safe characters survive. */
  #jobName(id: string): string {
    const name = this.manager.jobNameTemplate.replaceAll('${job_id}', id).replaceAll('$job_id', id);
    return name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 200) || `pulsar_${id}`;
  }

  /** Client submit params reach a backend only when the administrator allow-listed their names. */
  #allowedSubmitParams(id: string, params: Readonly<Record<string, unknown>>): Readonly<Record<string, unknown>> {
    const allowed = new Set(this.#app.allowedSubmitParams);
    const kept: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(params)) {
      if (allowed.has(key)) kept[key] = value;
      else this.#log.info({ jobId: id, param: key }, 'submit parameter not in allowed_submit_params: ignored');
    }
    return kept;
  }

  async #run(record: JobRecord): Promise<void> {
    const dir = this.#dir(record.id);
    let externalId: string;
    try {
      // Made here rather than by the script: two mkdir syscalls cost less than two mkdir processes.
      await Promise.all(['tmp', 'home'].map((d) => fs.mkdir(path.join(dir.root, d), { recursive: true })));
      externalId = await this.#backend.submit(this.#launchSpec(record, dir));
    } catch (error) {
      this.#active.delete(record.id);
      await this.#fail(record, `job could not be started: ${(error as Error).message}`);
      this.#pump();
      return;
    }
    // Recorded once the job exists. A restart in between finds the record "queued" and asks the
    // backend (the pid file a local script writes first thing; the scheduler) before running it
    // again, so the job is re-attached rather than started twice.
    record.externalId = externalId;
    await this.#store.save(record);
    await this.#watch(record, externalId);
  }

  async #watch(record: JobRecord, externalId: string): Promise<void> {
    try {
      void this.#backend.waitForStart(externalId).then(async () => {
        if (record.state === 'queued' && this.#store.get(record.id) === record) await this.#transition(record, 'running');
      });
      const report = await this.#backend.waitForExit(externalId);
      await this.#finish(record, report.exitCode, report.reason);
    } finally {
      this.#active.delete(record.id);
      this.#pump();
    }
  }

  async #finish(record: JobRecord, exitCode: number | null, reason?: string): Promise<void> {
    this.#finished.delete(record.id);
    if (this.#store.get(record.id) !== record || isTerminal(record.state)) return;
    const dir = this.#dir(record.id);
    const returnCode = await readReturnCode(dir);
    if (returnCode === undefined || reason !== undefined) {
      const detail = reason ?? (exitCode === null ? 'its process is gone' : `the job script exited with ${exitCode}`);
      record.returnCode = returnCode ?? exitCode;
      await this.#fail(record, reason ?? `the command did not record a return code (${detail})`);
      return;
    }
    record.returnCode = returnCode;
    record.state = 'postprocessing';
    // Nothing is staged server-side yet, so postprocessing ends at once.
    await this.#transition(record, 'complete');
  }

  async #transition(record: JobRecord, to: JobState): Promise<void> {
    if (!canTransition(record.state, to)) {
      throw new Error(`illegal job state transition ${record.state} -> ${to} for job ${record.id}`);
    }
    record.state = to;
    await this.#store.save(record);
    this.#log.info({ jobId: record.id, state: to }, 'job state changed');
  }

  async #fail(record: JobRecord, reason: string, state: 'failed' | 'lost' = 'failed'): Promise<void> {
    if (isTerminal(record.state)) return;
    record.failureReason = reason;
    if (record.returnCode === null) record.returnCode = 1;
    record.state = state;
    await this.#store.save(record);
    this.#log.warn({ jobId: record.id, state, reason }, 'job failed');
  }

  // ---------------------------------------------------------------- status, cancel, clean

  async status(jobId: string): Promise<string> {
    const id = checkJobId(jobId);
    const record = this.#store.get(id);
    if (record !== undefined && !isTerminal(record.state)) return shortStatus(id, wireStatus(record.state));
    const cached = this.#finished.get(id);
    if (cached !== undefined) return cached;
    const doc = await fullStatus(id, record?.state ?? 'lost', record, this.#dir(id), this.#systemProperties, this.manager.maximumStreamSize);
    // Finished jobs no longer change (uploads are closed, the process is gone): keep the document.
    if (record !== undefined && !this.#active.has(id)) {
      if (this.#finished.size >= TERMINAL_DOC_CACHE) this.#finished.delete(this.#finished.keys().next().value!);
      this.#finished.set(id, doc);
    }
    return doc;
  }

  async cancel(jobId: string): Promise<void> {
    const id = checkJobId(jobId);
    await this.#locks.run(id, async () => this.#cancelLocked(id));
  }

  async #cancelLocked(id: string): Promise<string | undefined> {
    const record = this.#store.get(id);
    if (record === undefined || isTerminal(record.state)) return undefined;
    // A queued job with an external id already waits in a scheduler's queue: it must be removed there too.
    const externalId = record.state === 'running' || record.state === 'queued' ? record.externalId : undefined;
    if (record.state === 'postprocessing') return undefined;
    record.state = 'cancelled';
    await this.#store.save(record);
    this.#finished.delete(id);
    this.#log.info({ jobId: id }, 'job cancelled');
    if (externalId !== undefined) await this.#backend.kill(externalId);
    return externalId;
  }

  async clean(jobId: string): Promise<void> {
    const id = checkJobId(jobId);
    await this.#locks.run(id, async () => {
      const externalId = await this.#cancelLocked(id);
      if (externalId !== undefined) {
        await Promise.race([this.#backend.waitForExit(externalId), sleep(CLEAN_WAIT_MS)]);
      }
      this.#finished.delete(id);
      await this.#store.delete(id);
      if (!this.manager.debug) await this.#dir(id).remove();
      this.#log.info({ jobId: id }, 'job cleaned');
    });
  }
}

function checkFileType(type: string): FileType {
  if (!isFileType(type)) throw new BadRequest(`unknown file type "${type}"`);
  return type;
}

async function readReturnCode(dir: JobDirectory): Promise<number | undefined> {
  const text = await dir.readSmall('return_code', 64);
  if (text === undefined) return undefined;
  const value = Number.parseInt(text.trim(), 10);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** A clean environment for jobs (PROTOCOL §6.2): only HOME, PATH and TMPDIR come from the server's. */
export function jobEnvironment(serverEnv: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const env: Record<string, string> = { LC_CTYPE: 'C.UTF-8' };
  for (const key of ['HOME', 'PATH', 'TMPDIR'] as const) {
    const value = serverEnv[key];
    if (value !== undefined) env[key] = value;
  }
  env['TMPDIR'] ??= '/tmp';
  env['PATH'] ??= '/usr/local/bin:/usr/bin:/bin';
  return env;
}
