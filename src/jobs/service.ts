import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLUSTER_MANAGER_TYPES, type AppSection, type ManagerConfig, type SandboxConfig } from '../config/types.js';
import {
  BadRequest, JobNotFound, LimitExceeded, JobRefused, JobStateConflict, MagnetarError, ServerStopping,
  StoreUnavailable, TooManyJobs, UploadClosed, UploadTooLarge, messageOf,
} from '../errors.js';
import type { Logger } from '../log.js';
import type { Backend, ExitReport } from '../managers/backend.js';
import type { Authorizer, StagedFile, SubmitFacts } from '../tools/authorizer.js';
import { StagingPolicy } from '../staging/policy.js';
import { DEFAULT_RETRY } from '../staging/retry.js';
import { parseSetup, runStageIn, type StageInEntry } from '../staging/stage-in.js';
import { planStageOut, runStageOut } from '../staging/stage-out.js';
import { PULSAR_COMPAT_VERSION } from '../version.js';
import { describeDependencies, resolveDependencies } from './dependencies.js';
import { JobDirectory, isFileType, type FileType, type OpenedDownload, type StagedUpload } from './directory.js';
import { assignJobId, checkJobId } from './ids.js';
import { allowedSubmitParams, effectiveCommandLine, launchSpec, prepareLaunch, type LaunchContext } from './launch.js';
import { CONTROL_FILES, readReturnCode } from './layout.js';
import { KeyedMutex } from './lock.js';
import { RunQueue } from './run-queue.js';
import { handOver } from './sandbox.js';
import { canTransition, isTerminal, wireStatus, type JobState } from './state.js';
import { fullStatus, shortStatus, type SystemProperties } from './status.js';
import { JobStore, finishedLaunch, type JobRecord } from './store.js';
import type { SubmitRequest } from './submit-request.js';

export type { SetupParams, SubmitRequest } from './submit-request.js';
export { jobEnvironment } from './launch.js';

/** How long a clean waits for a killed job to end before it removes the job's directory. */
const CLEAN_WAIT_MS = 3000;
/** The expiry sweep runs this often at most (and at least four times per the shortest expiry). */
const SWEEP_MAX_INTERVAL_MS = 60_000;
const SWEEP_MIN_INTERVAL_MS = 50;

export interface JobServiceOptions {
  readonly manager: ManagerConfig;
  readonly app: AppSection;
  readonly backend: Backend;
  readonly authorizer: Authorizer;
  readonly log: Logger;
  /** The whole environment local jobs start with (see `jobEnvironment`). */
  readonly jobEnv: Readonly<Record<string, string>>;
}

/**
 * Told of every change of a job's state (PROTOCOL §5.2; `setup` itself is not a change, and
 * neither is a record patch that keeps the state): called under the job's lock, after the record
 * is written (or, if it could not be, set in memory) and before the transition resolves, so one
 * job's changes arrive in lifecycle order. An error is logged; it never stops the transition.
 */
export type StateListener = (jobId: string, state: JobState, incarnation: string) => Promise<void>;

/** What the service knows of one job (read-only, for observers reconciling after a restart). */
export interface JobSummary {
  readonly id: string;
  readonly state: JobState;
  readonly incarnation: string;
}

/** How a submit reached the service (the transport's word, kept with the job's launch record). */
export interface SubmitOptions {
  /**
   * A message-queue setup message (PROTOCOL §11.2): its setup inside submit is authorized as
   * HTTP's `POST /jobs` (the job id stays the message's, which the client knows), and on a public
   * server its stage-in may bring tool files, config files and `tool_script.sh`, which are then
   * judged once they arrived, before anything is queued (see `#preprocess`).
   */
  readonly viaMessageQueue?: boolean;
}

/** The submit request as the launch record keeps it: plus how it came (read back after a restart). */
type KeptRequest = SubmitRequest & { readonly viaMessageQueue?: boolean };

/**
 * The clients a message-queue front door sets jobs up as (`client` of a record). Their job ids are
 * Galaxy's own (guessable numbers), so a public server keeps those jobs off its HTTP routes.
 */
const MESSAGE_QUEUE_CLIENTS: ReadonlySet<string> = new Set(['amqp', 'relay']);

type RecordPatch = Partial<Pick<JobRecord, 'launch' | 'externalId' | 'returnCode' | 'failureReason'>>;

/** Files a failed stage-out names in the job's failure reason (the rest are counted). */
const MAX_LISTED_FAILURES = 50;

/**
 * The job lifecycle of one manager: setup, staging, submit, status, cancel, clean, and restart
 * recovery. Transports (HTTP, later AMQP) are thin adapters over this class.
 *
 * Concurrency: every request that reads and then changes a job runs under that job's lock
 * (`#locks`), and so do the backend's start of the job and every event the backend reports
 * about it. A cancel or clean therefore never meets a job half-started, and an upload lands
 * (renames its file into place) only while the job still accepts files. `#transition` is the
 * only writer of a job's record; terminal states are sinks. The run queue (`RunQueue`) decides
 * when a queued job starts; launch preparation is the pure `prepareLaunch`.
 */
export class JobService {
  readonly manager: ManagerConfig;
  readonly #app: AppSection;
  readonly #backend: Backend;
  readonly #authorizer: Authorizer;
  readonly #log: Logger;
  readonly #store: JobStore;
  readonly #locks = new KeyedMutex();
  readonly #queue: RunQueue;
  readonly #launchContext: LaunchContext;
  /** A local manager's sandbox when the server runs as root: job directories are handed to its uid at submit. */
  readonly #handsOverToSandbox: SandboxConfig | undefined;
  readonly #systemProperties: SystemProperties;
  /** Status documents of finished jobs (they no longer change), oldest first, within `status_cache_size`. */
  readonly #finished = new Map<string, string>();
  #finishedBytes = 0;
  /** Bytes uploaded into each job in `setup`, and bytes of uploads still streaming. */
  readonly #uploadedBytes = new Map<string, number>();
  /** Files and directories each job's uploads may have created (name components published). */
  readonly #uploadedEntries = new Map<string, number>();
  /** Uploads streaming into each job now. */
  readonly #streaming = new Map<string, number>();
  readonly #inflightBytes = new Map<string, number>();
  /** Follow-ups that nobody awaits (a backend's "it started" news): errors are logged, never lost. */
  readonly #background = new Set<Promise<void>>();
  /** Backend starts under way: shutdown waits for them, so none lands after it. */
  readonly #starting = new Set<Promise<unknown>>();
  #closing = false;
  /** Aborted at shutdown: ends the waits of retried record writes. */
  readonly #stopping = new AbortController();
  #realStaging: string | undefined;
  /** The periodic expiry sweep (unref'd; stopped at shutdown) and the sweep under way, if any. */
  #sweepTimer: NodeJS.Timeout | undefined;
  #sweeping: Promise<void> | undefined;
  /** What server-side staging may reach. */
  readonly #stagingPolicy: StagingPolicy;
  /** Stage-ins under way (outside the job's lock): aborted by cancel, clean and shutdown. */
  readonly #stageIns = new Map<string, AbortController>();
  /** Stage-outs under way (outside the job's lock): aborted by cancel, clean and shutdown. */
  readonly #stageOuts = new Map<string, AbortController>();
  /** Setups of new jobs whose record is being written (they count against `max_live_jobs`). */
  #settingUp = 0;
  /** The same, per client (`max_live_jobs_per_address`). */
  readonly #settingUpBy = new Map<string, number>();
  /** Observers of state changes (the MQ status feed); none for HTTP-only servers. */
  readonly #listeners = new Set<StateListener>();
  /** Resolved once `start` has recovered every job the store remembers. */
  readonly #started: Promise<void>;
  #markStarted!: () => void;
  #hasStarted = false;

  constructor(options: JobServiceOptions) {
    const { manager, backend, log } = options;
    this.manager = manager;
    this.#app = options.app;
    this.#backend = backend;
    this.#authorizer = options.authorizer;
    this.#log = log.child({ manager: manager.name });
    this.#store = new JobStore(options.app.persistenceDirectory, manager.name, this.#log);
    this.#launchContext = { manager, jobEnv: options.jobEnv };
    this.#handsOverToSandbox =
      manager.sandbox !== undefined && manager.sandbox !== false && process.getuid?.() === 0 && !CLUSTER_MANAGER_TYPES.includes(manager.type)
        ? manager.sandbox
        : undefined;
    this.#queue = new RunQueue({
      limit: backend.maxConcurrent,
      task: async (id) => this.#execute(id),
      onError: async (id, error) => this.#failAfterError(id, undefined, `job could not be run: ${messageOf(error)}`),
      log: this.#log,
    });
    const props: Record<string, string> = { separator: '/' };
    if (manager.galaxyHome !== undefined) props['galaxy_home'] = manager.galaxyHome;
    if (manager.galaxyVirtualEnv !== undefined) props['galaxy_virtual_env'] = manager.galaxyVirtualEnv;
    if (manager.galaxyConfigFile !== undefined) props['galaxy_config_file'] = manager.galaxyConfigFile;
    if (manager.galaxyDatasetFilesPath !== undefined) props['galaxy_dataset_files_path'] = manager.galaxyDatasetFilesPath;
    if (manager.galaxyDatatypesConfigFile !== undefined) props['galaxy_datatypes_config_file'] = manager.galaxyDatatypesConfigFile;
    this.#systemProperties = Object.freeze(props);
    this.#stagingPolicy = new StagingPolicy(options.app.staging, options.app.toolConfigFiles.length > 0);
    this.#started = new Promise<void>((resolve) => {
      this.#markStarted = resolve;
    });
  }

  /** Be told of every state change (see `StateListener`); returns the function that stops it. */
  onStateChange(listener: StateListener): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Resolves once `start` has recovered the jobs of the previous run (never, if it failed). */
  get started(): Promise<void> {
    return this.#started;
  }

  /** True once `started` has resolved. */
  get hasStarted(): boolean {
    return this.#hasStarted;
  }

  /** Every job the service knows now (a snapshot). */
  knownJobs(): JobSummary[] {
    return this.#store.records().map(({ id, state, incarnation }) => ({ id, state, incarnation }));
  }

  /**
   * Public mode: a job set up through a message queue is not reachable over HTTP; the HTTP routes
   * answer for it as for a job nobody set up (`statusOverHttp`, 404, a no-op cancel or clean).
   */
  hiddenFromHttp(jobId: string): boolean {
    if (!this.#authorizer.publicMode) return false;
    const client = this.#store.get(jobId)?.client;
    return client !== undefined && MESSAGE_QUEUE_CLIENTS.has(client);
  }

  /** The status document an HTTP client gets: a job kept off HTTP (`hiddenFromHttp`) reads as one nobody set up (`lost`, nothing read). */
  async statusOverHttp(jobId: string): Promise<string> {
    if (!this.hiddenFromHttp(jobId)) return this.status(jobId);
    const id = checkJobId(jobId);
    return fullStatus(id, 'lost', undefined, this.#dir(id), this.#systemProperties, {
      maximumStreamSize: this.manager.maximumStreamSize,
      maxStatusSize: this.#app.maxStatusSize,
    });
  }

  /** One job as the service knows it now, or undefined. */
  knownJob(id: string): JobSummary | undefined {
    const record = this.#store.get(id);
    return record === undefined ? undefined : { id: record.id, state: record.state, incarnation: record.incarnation };
  }

  /** Tell the listeners of a state change (the caller holds the job's lock). */
  async #notify(record: JobRecord): Promise<void> {
    for (const listener of [...this.#listeners]) {
      try {
        await listener(record.id, record.state, record.incarnation);
      } catch (error) {
        this.#log.error({ jobId: record.id, state: record.state, err: error }, 'state change listener failed');
      }
    }
  }

  /** The bounds a submit request to this service is held to (checked by the transport as it parses). */
  get submitLimits(): AppSection {
    return this.#app;
  }

  /** Jobs holding a run slot now (for tests and metrics). */
  get runningCount(): number {
    return this.#queue.activeCount;
  }

  #dir(id: string): JobDirectory {
    return new JobDirectory(this.manager.stagingDirectory, id, this.manager.jobDirectoryMode, this.#realStaging);
  }

  // ---------------------------------------------------------------- start and stop

  /** Create directories, then recover every job the store remembers (PROTOCOL §5.4). */
  async start(): Promise<void> {
    await fs.mkdir(this.manager.stagingDirectory, { recursive: true });
    this.#realStaging = await fs.realpath(this.manager.stagingDirectory);
    const records = await this.#store.open();
    records.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    for (const record of records) {
      try {
        await this.#locks.run(record.id, async () => this.#recover(record));
      } catch (error) {
        this.#log.error({ jobId: record.id, err: error }, 'recovery failed');
        await this.#failAfterError(record.id, record.incarnation, `magnetar could not recover this job after a restart: ${messageOf(error)}`, 'lost');
      }
    }
    this.#startSweeping();
    this.#hasStarted = true;
    this.#markStarted();
  }

  // ---------------------------------------------------------------- expiry

  #startSweeping(): void {
    const expiries = [this.#app.setupExpiry, this.#app.finishedExpiry].filter((s) => s > 0);
    if (expiries.length === 0) return;
    const every = Math.max(SWEEP_MIN_INTERVAL_MS, Math.min(SWEEP_MAX_INTERVAL_MS, (Math.min(...expiries) * 1000) / 4));
    this.#sweepTimer = setInterval(() => {
      if (this.#sweeping !== undefined || this.#closing) return;
      this.#sweeping = this.sweep()
        .then(() => undefined)
        .catch((error: unknown) => this.#log.error({ err: error }, 'expiry sweep failed'))
        .finally(() => {
          this.#sweeping = undefined;
        });
    }, every);
    this.#sweepTimer.unref();
  }

  /**
   * Clean, through the normal clean path and under each job's lock, the jobs set up longer than
   * `setup_expiry` ago and never submitted, and the jobs finished longer than `finished_expiry` ago.
   * Resolves with the ids cleaned.
   */
  async sweep(now = Date.now()): Promise<string[]> {
    const { setupExpiry, finishedExpiry } = this.#app;
    const expired = (record: JobRecord): boolean => {
      const age = now - Date.parse(record.updatedAt);
      if (record.state === 'setup') return setupExpiry > 0 && age > setupExpiry * 1000;
      return isTerminal(record.state) && finishedExpiry > 0 && age > finishedExpiry * 1000;
    };
    const cleaned: string[] = [];
    for (const candidate of this.#store.records()) {
      if (this.#closing) break;
      if (!expired(candidate)) continue;
      try {
        await this.#locked(candidate.id, async () => {
          // Re-read under the lock: submitted, set up again or cleaned meanwhile means not expired.
          const record = this.#store.get(candidate.id);
          if (record !== candidate || !expired(record)) return;
          await this.#cleanLocked(record.id);
          cleaned.push(record.id);
          this.#log.info({ jobId: record.id, state: record.state }, record.state === 'setup' ? 'set-up job expired (setup_expiry)' : 'finished job expired (finished_expiry)');
        });
      } catch (error) {
        if (error instanceof ServerStopping) break;
        this.#log.error({ jobId: candidate.id, err: error }, 'expired job could not be cleaned');
      }
    }
    return cleaned;
  }

  async #recover(record: JobRecord): Promise<void> {
    const dir = this.#dir(record.id);
    const log = this.#log.child({ jobId: record.id });
    switch (record.state) {
      case 'setup':
        if (!(await dir.exists())) await this.#store.delete(record.id);
        return;
      case 'preprocessing':
        log.info('preprocessing resumed after restart');
        await this.#preprocessOrFail(record).catch(() => undefined);
        return;
      case 'postprocessing':
        log.info('postprocessing resumed after restart');
        await this.#postprocess(record);
        return;
      case 'queued':
      case 'running': {
        const externalId = await this.#backend.recover(launchSpec(record, dir, this.#launchContext), record.externalId);
        const state = externalId === undefined ? 'unknown' : await this.#backend.status(externalId);
        if (externalId !== undefined && (state === 'running' || state === 'queued')) {
          log.info({ externalId, state }, 're-attached to the job');
          const current = record.externalId === externalId ? record : await this.#transition(record, record.state, { externalId });
          if (current === undefined || isTerminal(current.state)) return;
          this.#queue.adopt(record.id, async () => this.#follow(record.id, record.incarnation, externalId));
          return;
        }
        if (externalId !== undefined || (await readReturnCode(dir.returnCodePath)) !== undefined) {
          // It ran and ended while the server was away.
          await this.#finish(record, { exitCode: null });
          return;
        }
        if (record.state === 'running' || record.externalId !== undefined) {
          await this.#fail(record, 'the job was started before the server stopped and cannot be found again', { state: 'lost', exited: true });
          return;
        }
        log.info('queued after restart');
        this.#queue.enqueue(record.id);
        return;
      }
      default:
        return;
    }
  }

  /** Start nothing more and stop writing records (running jobs go on; the next start re-attaches). */
  async shutdown(): Promise<void> {
    this.#closing = true;
    clearInterval(this.#sweepTimer);
    this.#stopping.abort();
    this.#queue.close();
    // A start under way finishes (its job is recorded and re-attached by the next start), and so
    // does every request that holds a job's lock; none begins after this (`#locked`).
    await Promise.allSettled([...this.#starting]);
    await this.#sweeping;
    await this.#locks.idle();
    this.#backend.close();
    await this.#store.close();
  }

  /** A request that changes a job: under the job's lock, refused once the server is stopping. */
  async #locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.#locks.run(id, async () => {
      if (this.#closing) throw new ServerStopping();
      return fn();
    });
  }

  // ---------------------------------------------------------------- setup

  /**
   * Set a job up. `client` is who asks (their address, see web/rate-limit.ts clientKeyOf), counted
   * against `max_live_jobs_per_address`; undefined for callers that are not a network client.
   */
  async setup(clientJobId: string, toolId: string | undefined, toolVersion: string | undefined, client?: string): Promise<object> {
    const id = assignJobId(this.manager.assignIds, clientJobId);
    // Decided before anything touches the disk.
    const tool = this.#authorizer.authorizeSetup(id, toolId, toolVersion);
    return this.#locked(id, async () => {
      await this.#setupLocked(id, tool.toolId, tool.toolVersion, client);
      return this.#jobConfig(id, tool.toolId, tool.toolVersion);
    });
  }

  async #setupLocked(id: string, toolId: string | undefined, toolVersion: string | undefined, client: string | undefined): Promise<JobRecord> {
    const existing = this.#store.get(id);
    if (existing !== undefined && !isTerminal(existing.state) && existing.state !== 'setup') {
      throw new JobStateConflict(`job ${id} is ${wireStatus(existing.state)}; clean it or cancel it before setting it up again`);
    }
    const { maxLiveJobs } = this.#app;
    // A set-up job set up again stays one live job; any other setup adds one. Setups of other ids
    // run meanwhile (other locks): the ones whose record is still being written count too.
    const adds = existing?.state !== 'setup';
    if (maxLiveJobs > 0 && adds && this.#store.liveCount + this.#settingUp >= maxLiveJobs) {
      throw new TooManyJobs(`manager ${this.manager.name} holds ${this.#store.liveCount} unfinished jobs: max_live_jobs (${maxLiveJobs}) reached; retry when jobs have finished or been cleaned`);
    }
    // One client may not hold them all: its own unfinished jobs (again counting setups under way).
    const perClient = this.#app.maxLiveJobsPerAddress;
    const clientCounts = perClient > 0 && client !== undefined;
    if (clientCounts && adds && this.#store.liveCountOf(client) + (this.#settingUpBy.get(client) ?? 0) >= perClient) {
      throw new TooManyJobs(`client ${client} holds ${this.#store.liveCountOf(client)} unfinished jobs on manager ${this.manager.name}: max_live_jobs_per_address (${perClient}) reached; retry when jobs have finished or been cleaned`);
    }
    const countsFor = adds && clientCounts ? client : undefined;
    if (adds) this.#settingUp++;
    if (countsFor !== undefined) this.#settingUpBy.set(countsFor, (this.#settingUpBy.get(countsFor) ?? 0) + 1);
    try {
      return await this.#writeSetup(id, existing, toolId, toolVersion, client);
    } finally {
      if (adds) this.#settingUp--;
      if (countsFor !== undefined) {
        const left = (this.#settingUpBy.get(countsFor) ?? 1) - 1;
        if (left <= 0) this.#settingUpBy.delete(countsFor);
        else this.#settingUpBy.set(countsFor, left);
      }
    }
  }

  async #writeSetup(
    id: string,
    existing: JobRecord | undefined,
    toolId: string | undefined,
    toolVersion: string | undefined,
    client: string | undefined,
  ): Promise<JobRecord> {
    const now = new Date().toISOString();
    const record: JobRecord = {
      id,
      incarnation: randomBytes(8).toString('hex'),
      manager: this.manager.name,
      state: 'setup',
      toolId,
      toolVersion,
      client,
      createdAt: now,
      updatedAt: now,
      launch: undefined,
      externalId: undefined,
      returnCode: null,
      failureReason: undefined,
    };
    // Under the job's lock nobody else changes the record: put cannot find it changed.
    await this.#store.put(existing, record);
    this.#forget(id);
    // A reused id must never serve a previous job's files (PROTOCOL §14 item 29): start empty.
    await this.#dir(id).create();
    this.#log.info({ jobId: id, toolId, toolVersion }, 'job set up');
    return record;
  }

  #jobConfig(id: string, toolId: string | undefined, toolVersion: string | undefined): object {
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

  /** Drop what the service remembers about a job id besides its record. */
  #forget(id: string): void {
    this.#uncache(id);
    this.#uploadedBytes.delete(id);
    this.#uploadedEntries.delete(id);
  }

  // ---------------------------------------------------------------- files

  #requireStaging(id: string): JobRecord {
    const record = this.#store.get(id);
    if (record === undefined) throw new JobNotFound(`job ${id} has not been set up`);
    if (record.state !== 'setup') {
      throw new UploadClosed(`job ${id} is ${wireStatus(record.state)}: files are accepted only between setup and submit`);
    }
    return record;
  }

  /**
   * Stream an upload to a temp file, then publish it under the job's lock if the job still
   * accepts files: an upload that loses the race against submit (or clean) answers 409 and
   * leaves no trace, so the bytes submit's validators read are the bytes the job runs.
   */
  async upload(jobId: string, name: string, type: string, body: Readable): Promise<{ path: string }> {
    const id = checkJobId(jobId);
    const fileType = checkFileType(type);
    const record = this.#requireStaging(id);
    const decision = await this.#authorizer.authorizeUpload(id, record.toolId, record.toolVersion, name, fileType);
    // Each component of the name may become a file or a directory: that is what a job may be made to hold.
    const entries = name.split('/').length;
    this.#checkJobFiles(id, entries);
    const { maxUploadSize, maxJobUploadSize } = this.#app;
    let taken = 0;
    const take = (n: number): void => {
      if (maxUploadSize > 0 && taken + n > maxUploadSize) {
        throw new UploadTooLarge(`upload exceeds max_upload_size (${maxUploadSize} bytes)`);
      }
      const inflight = this.#inflightBytes.get(id) ?? 0;
      if (maxJobUploadSize > 0 && (this.#uploadedBytes.get(id) ?? 0) + inflight + n > maxJobUploadSize) {
        throw new UploadTooLarge(`uploads into job ${id} exceed max_job_upload_size (${maxJobUploadSize} bytes)`);
      }
      taken += n;
      this.#inflightBytes.set(id, inflight + n);
    };
    const release = (): void => {
      const left = (this.#inflightBytes.get(id) ?? 0) - taken;
      if (left <= 0) this.#inflightBytes.delete(id);
      else this.#inflightBytes.set(id, left);
      taken = 0;
    };
    const streaming = this.#streaming.get(id) ?? 0;
    const maxStreaming = this.#app.maxConcurrentUploadsPerJob;
    if (maxStreaming > 0 && streaming >= maxStreaming) {
      throw new LimitExceeded(`job ${id} already receives ${streaming} uploads at once, the most max_concurrent_uploads_per_job allows`);
    }
    this.#streaming.set(id, streaming + 1);
    let staged: StagedUpload | undefined;
    try {
      staged = await this.#dir(id).stageUpload(name, fileType, body, { take }, decision.expectedSha256);
      const upload = staged;
      await this.#locked(id, async () => {
        const current = this.#store.get(id);
        if (current?.incarnation !== record.incarnation || current.state !== 'setup') {
          throw new UploadClosed(`job ${id} was submitted, cancelled or cleaned while "${name}" was uploading; the file was not stored`);
        }
        this.#checkJobFiles(id, entries);
        const replaced = await upload.publish();
        this.#uploadedEntries.set(id, (this.#uploadedEntries.get(id) ?? 0) + entries);
        staged = undefined;
        const bytes = taken;
        release();
        // A file uploaded again (a client's retry) counts once against max_job_upload_size.
        this.#uploadedBytes.set(id, Math.max(0, (this.#uploadedBytes.get(id) ?? 0) + bytes - replaced));
      });
      return { path: upload.path };
    } finally {
      release();
      const left = (this.#streaming.get(id) ?? 1) - 1;
      if (left > 0) this.#streaming.set(id, left);
      else this.#streaming.delete(id);
      if (staged !== undefined) await staged.discard();
    }
  }

  /** Refuse an upload that would take the job past `max_job_files` files and directories. */
  #checkJobFiles(id: string, entries: number): void {
    const max = this.#app.maxJobFiles;
    if (max > 0 && (this.#uploadedEntries.get(id) ?? 0) + entries > max) {
      throw new LimitExceeded(`uploads into job ${id} would create more than max_job_files (${max}) files and directories`);
    }
  }

  async pathFor(jobId: string, name: string, type: string): Promise<{ path: string }> {
    const id = checkJobId(jobId);
    const fileType = checkFileType(type);
    const dir = this.#dir(id);
    if (fileType.startsWith('output')) {
      if (!(await dir.exists())) throw new JobNotFound(`job ${id} does not exist`);
      return { path: await dir.pathFor(name, fileType, false) };
    }
    // While uploads are open, answering creates the file's parent directories (under the lock).
    // Afterwards it is a read-only question, answered in every state (as upstream): the path as
    // computed, with nothing created.
    const uploadsOpen = (): boolean => {
      const record = this.#store.get(id);
      if (record === undefined) throw new JobNotFound(`job ${id} has not been set up`);
      return record.state === 'setup';
    };
    if (!uploadsOpen()) return { path: dir.computedPath(name, fileType) };
    return this.#locked(id, async () => ({ path: uploadsOpen() ? await dir.pathFor(name, fileType, true) : dir.computedPath(name, fileType) }));
  }

  async download(jobId: string, name: string, type: string | undefined): Promise<OpenedDownload> {
    const id = checkJobId(jobId);
    const dir = this.#dir(id);
    if (!(await dir.exists())) throw new JobNotFound(`job ${id} does not exist`);
    return dir.openDownload(name, type ?? 'output');
  }

  // ---------------------------------------------------------------- submit and preprocessing

  /**
   * Close the job to uploads (state `preprocessing`, recorded first), authorize it, prepare its
   * launch and queue it. A refusal fails the job and answers 403; a malformed env entry answers
   * 400 and leaves the job set up. `client` is as for setup (a submit with `setup_params` sets the
   * job up).
   */
  async submit(jobId: string, request: SubmitRequest, client?: string, options: SubmitOptions = {}): Promise<void> {
    const id = checkJobId(jobId);
    const viaMessageQueue = options.viaMessageQueue === true;
    await this.#locked(id, async () => {
      const record = await this.#recordForSubmit(id, request, client, viaMessageQueue);
      if (record.state !== 'setup') {
        this.#log.info({ jobId: id, state: record.state }, 'duplicate submit ignored');
        return;
      }
      try {
        this.#authorizer.authorizeEnv(id, record.toolId, request.env);
      } catch (error) {
        if (error instanceof JobRefused) await this.#fail(record, error.message);
        throw error;
      }
      const { kept, dropped } = allowedSubmitParams(request.submitParams, this.#app.allowedSubmitParams);
      if (dropped.length > 0) this.#log.info({ jobId: id, params: dropped }, 'submit parameters not in allowed_submit_params: ignored');
      const commandLine = effectiveCommandLine(request.commandLine, request.setupParams !== undefined, this.manager.stagingDirectory);
      // A server that never resolves dependencies (public mode) ignores them: it does not keep them either.
      const ignoresDependencies = !this.#authorizer.resolvesDependencies && request.dependenciesDescription !== null && request.dependenciesDescription !== undefined;
      if (ignoresDependencies) this.#log.info({ jobId: id }, 'dependencies_description ignored (this server does not resolve dependencies): not kept');
      // The command line is kept once, as it runs (launch.commandLine): megabytes for some tools.
      const stored: KeptRequest = { ...request, commandLine: '', ...(ignoresDependencies ? { dependenciesDescription: null } : {}), ...(viaMessageQueue ? { viaMessageQueue } : {}) };
      const closed = await this.#transition(record, 'preprocessing', { launch: { request: stored, commandLine, submitParams: kept } });
      if (closed?.state !== 'preprocessing') {
        throw new StoreUnavailable(closed?.failureReason ?? `job ${id} changed while it was being submitted`);
      }
      await this.#preprocessOrFail(closed);
    });
  }

  /** The job a submit is for: set up here when the request carries `setup_params` (PROTOCOL §2.5). */
  async #recordForSubmit(id: string, request: SubmitRequest, client: string | undefined, viaMessageQueue: boolean): Promise<JobRecord> {
    const record = this.#store.get(id);
    const setupParams = request.setupParams;
    if (record !== undefined && (setupParams === undefined || record.state === 'setup' || (await this.#dir(id).exists()))) return record;
    if (setupParams === undefined) throw new JobNotFound(`job ${id} has not been set up`);
    if (setupParams.jobId !== undefined && setupParams.jobId !== id) throw new BadRequest('setup_params.job_id differs from the job id of the request');
    // Everything that can be refused is refused before the setup writes anything.
    const tool = this.#authorizer.authorizeSetup(id, setupParams.toolId, setupParams.toolVersion, viaMessageQueue ? 'message_queue' : 'setup_params');
    this.#authorizer.authorizeEnv(id, tool.toolId, request.env);
    return this.#setupLocked(id, tool.toolId, tool.toolVersion, client);
  }

  /**
   * Run preprocessing; any failure ends the job `failed` with the reason. Client errors (a
   * refusal, a bad name) are thrown on for the request to answer; anything else is the job's
   * failure only (the client reads it in the status, as upstream).
   */
  async #preprocessOrFail(record: JobRecord): Promise<void> {
    try {
      await this.#preprocess(record);
    } catch (error) {
      if (await this.#failPreprocessing(record.id, record.incarnation, error)) throw error;
      this.#log.error({ jobId: record.id, err: error }, 'preprocessing failed');
    }
  }

  /**
   * End a job whose preprocessing threw (the caller holds its lock): with the reason of a refusal
   * (resolves true: the client's error), or as a launch failure.
   */
  async #failPreprocessing(id: string, incarnation: string, error: unknown): Promise<boolean> {
    const refused = error instanceof MagnetarError && error.status < 500;
    // A refused job will never run: it keeps no launch payload, in memory or on disk.
    await this.#failCurrent(id, incarnation, refused ? messageOf(error) : `job could not be launched: ${messageOf(error)}`, 'failed', { dropLaunch: refused });
    return refused;
  }

  /**
   * Authorization, server-side stage-in (checked here, run in the background: the submit answers
   * once every entry has passed the staging policy), the job script; then the job is queued.
   */
  async #preprocess(record: JobRecord): Promise<void> {
    const launch = record.launch;
    if (launch === undefined) throw new Error('the job has no launch record');
    const { request } = launch;
    const dir = this.#dir(record.id);
    const clientEnv = this.#authorizer.authorizeEnv(record.id, record.toolId, request.env);
    const setup = request.remoteStaging.setup ?? [];
    const facts: SubmitFacts = {
      jobId: record.id,
      toolId: record.toolId,
      toolVersion: record.toolVersion,
      jobDirectory: dir.root,
      commandLine: launch.commandLine,
      submitParams: request.submitParams,
      remoteStagingSetup: setup.length,
      staging: {
        configured: this.#stagingPolicy.configured,
        nonInputs: setup.filter((e) => typeof e !== 'object' || e === null || (e as { type?: unknown }).type !== 'input').length,
      },
      hasDependencies: request.dependenciesDescription !== null && request.dependenciesDescription !== undefined,
    };
    // Public mode judges config files, tool files and tool_script.sh where they lie. Uploaded
    // (HTTP), they lie there now: the whole submit is authorized before anything is fetched, and
    // stage-in may bring only inputs. A message-queue client stages every file: what can be judged
    // without them is judged now, the rest once they arrived, before anything is queued.
    const deferred = this.#authorizer.publicMode && (request as KeptRequest).viaMessageQueue === true && (facts.staging?.nonInputs ?? 0) > 0;
    if (deferred) await this.#authorizer.authorizeStageIn(facts, stagedFilesOf(setup));
    else await this.#authorizer.authorizeSubmit(facts, dir.configs);
    if (setup.length > 0) {
      // A refused URL, path or action refuses the job before anything is fetched.
      const entries = await parseSetup(setup, dir, this.#stagingPolicy, this.#app.maxJobFiles);
      const arrived = entries.filter((e) => e.action.kind !== 'nothing').map((e) => ({ name: e.name, type: e.type, path: dir.computedPath(e.name, e.type) }));
      const staging = { configured: this.#stagingPolicy.configured, nonInputs: facts.staging?.nonInputs ?? 0, arrived };
      this.#stageInThenLaunch(record, entries, clientEnv, deferred ? { ...facts, staging } : undefined);
      return;
    }
    await this.#prepareAndQueue(record, clientEnv);
  }

  /**
   * Run a job's stage-in outside its lock (status, cancel and clean answer meanwhile), then, under
   * the lock and only if the job is still preprocessing, prepare and queue it. A failed transfer
   * fails the job with the reason; a cancel stops the transfers; a shutdown stops them without
   * failing the job, whose stage-in starts again (resuming partial files) at the next start.
   */
  #stageInThenLaunch(record: JobRecord, entries: readonly StageInEntry[], clientEnv: readonly string[], judgeAfter: SubmitFacts | undefined): void {
    const { id, incarnation } = record;
    const { controller, signal } = this.#beginTransfers(this.#stageIns, id);
    const log = this.#log.child({ jobId: id });
    const task = async (): Promise<void> => {
      log.info({ entries: entries.length }, 'stage-in started');
      try {
        await runStageIn(
          entries,
          {
            dir: this.#dir(id),
            policy: this.#stagingPolicy,
            retry: this.manager.preprocessRetry ?? DEFAULT_RETRY,
            signal,
            log,
            maxBytes: this.#app.maxUploadSize,
            maxEntries: this.#app.maxJobFiles,
            client: record.client,
          },
          this.#stagingPolicy.concurrency,
        );
      } catch (error) {
        if (signal.aborted) {
          log.info(this.#stopping.signal.aborted ? 'stage-in stopped by shutdown (resumed at the next start)' : 'stage-in stopped');
          return;
        }
        log.warn({ reason: messageOf(error) }, 'stage-in failed');
        await this.#locks.run(id, async () => this.#failCurrent(id, incarnation, messageOf(error)));
        return;
      } finally {
        if (this.#stageIns.get(id) === controller) this.#stageIns.delete(id);
      }
      await this.#whenCurrent(id, incarnation, async (current) => {
        if (current.state !== 'preprocessing' || this.#closing) return;
        try {
          // What stage-in brought is judged as it lies, under the lock: nothing changes it now.
          if (judgeAfter !== undefined) await this.#authorizer.authorizeSubmit(judgeAfter, this.#dir(id).configs);
        } catch (error) {
          if (await this.#failPreprocessing(id, incarnation, error)) log.warn({ reason: messageOf(error) }, 'job refused after stage-in');
          return;
        }
        try {
          await this.#prepareAndQueue(current, clientEnv);
        } catch (error) {
          await this.#failCurrent(id, incarnation, `job could not be launched: ${messageOf(error)}`);
        }
      });
    };
    this.#inBackground(id, task());
  }

  /** The last steps of preprocessing: touched outputs, sandbox hand-over, dependencies, the script; then queued. */
  async #prepareAndQueue(record: JobRecord, clientEnv: readonly string[]): Promise<void> {
    const launch = record.launch;
    if (launch === undefined) throw new Error('the job has no launch record');
    const { request } = launch;
    const dir = this.#dir(record.id);
    for (const name of request.touchOutputs) await dir.touchOutput(name);
    if (this.#handsOverToSandbox !== undefined) await handOver(dir.root, this.#handsOverToSandbox);
    let dependencies: string[] = [];
    if (this.#authorizer.resolvesDependencies) {
      const resolution = await resolveDependencies(request.dependenciesDescription, this.#app.toolDependencyDir);
      dependencies = resolution.resolved.map((d) => d.statement);
      const summary = describeDependencies(resolution);
      if (summary !== undefined) this.#log.info({ jobId: record.id }, summary);
    }
    const { script } = prepareLaunch({
      record,
      dir,
      context: this.#launchContext,
      clientEnv,
      dependencies,
      header: (spec) => this.#backend.scriptHeader(spec),
    });
    await fs.writeFile(dir.scriptPath, script, { mode: 0o700 });
    const queued = await this.#transition(record, 'queued');
    if (queued?.state === 'queued') this.#queue.enqueue(record.id);
  }

  // ---------------------------------------------------------------- running

  /** The run queue's task for a job: start it, then follow it to its end. */
  async #execute(id: string): Promise<void> {
    const starting = this.#locks.run(id, async () => this.#startLocked(id));
    this.#starting.add(starting);
    let started: Awaited<typeof starting>;
    try {
      started = await starting;
    } finally {
      this.#starting.delete(starting);
    }
    if (started === undefined) return;
    try {
      await this.#follow(id, started.incarnation, started.externalId);
    } catch (error) {
      // Only this incarnation fails: the id may have been cleaned and set up again meanwhile.
      await this.#failAfterError(id, started.incarnation, `job could not be followed: ${messageOf(error)}`);
    }
  }

  async #startLocked(id: string): Promise<{ incarnation: string; externalId: string } | undefined> {
    const record = this.#store.get(id);
    // Cancelled or cleaned while it waited (its slot goes to the next job), or the server is stopping.
    if (this.#closing || record === undefined || record.state !== 'queued' || record.externalId !== undefined) return undefined;
    const dir = this.#dir(id);
    let externalId: string;
    try {
      // Made here rather than by the script: two mkdir syscalls cost less than two mkdir processes.
      await Promise.all([CONTROL_FILES.tmp, CONTROL_FILES.home].map(async (d) => fs.mkdir(path.join(dir.root, d), { recursive: true })));
      externalId = await this.#backend.submit(launchSpec(record, dir, this.#launchContext));
    } catch (error) {
      await this.#failCurrent(id, record.incarnation, `job could not be started: ${messageOf(error)}`);
      return undefined;
    }
    // Recorded once the job exists. A restart in between finds the record "queued" and asks the
    // backend (the pid file a local script writes first thing; the scheduler) before running it
    // again, so the job is re-attached rather than started twice.
    const current = await this.#transition(record, 'queued', { externalId });
    if (current?.state !== 'queued') return undefined;
    return { incarnation: record.incarnation, externalId };
  }

  /** Follow a started job: `running` when the backend says so, then its end. */
  async #follow(id: string, incarnation: string, externalId: string): Promise<void> {
    this.#inBackground(
      id,
      this.#backend.waitForStart(externalId).then(async () =>
        this.#whenCurrent(id, incarnation, async (record) => {
          if (record.state === 'queued') await this.#transition(record, 'running');
        }),
      ),
    );
    const report = await this.#backend.waitForExit(externalId);
    await this.#whenCurrent(id, incarnation, async (record) => this.#finish(record, report));
  }

  /** Run `fn` under the job's lock if the job is still this incarnation and not finished. */
  async #whenCurrent(id: string, incarnation: string, fn: (record: JobRecord) => Promise<void>): Promise<void> {
    await this.#locks.run(id, async () => {
      const record = this.#store.get(id);
      if (record !== undefined && record.incarnation === incarnation && !isTerminal(record.state)) await fn(record);
    });
  }

  /** The command ended: its return code decides between postprocessing and failure. */
  async #finish(record: JobRecord, report: ExitReport): Promise<void> {
    const returnCode = await readReturnCode(this.#dir(record.id).returnCodePath);
    if (returnCode === undefined || report.reason !== undefined) {
      const detail = report.exitCode === null ? 'its process is gone' : `the job script exited with ${report.exitCode}`;
      await this.#fail(record, report.reason ?? `the command did not record a return code (${detail})`, {
        exited: true,
        returnCode: returnCode ?? report.exitCode,
      });
      return;
    }
    const next = await this.#transition(record, 'postprocessing', { returnCode });
    if (next?.state === 'postprocessing') await this.#postprocess(next);
  }

  /**
   * Server-side staging of results (PROTOCOL §8.4): a job whose submit carried an action mapper
   * pushes its server-side outputs in the background (outside the lock); it is `complete` only
   * once they arrived, `failed` with the list of what did not otherwise. Without a mapper the job
   * completes at once.
   */
  async #postprocess(record: JobRecord): Promise<void> {
    const remoteStaging = record.launch?.request.remoteStaging;
    if (remoteStaging?.['action_mapper'] === undefined || remoteStaging['action_mapper'] === null) {
      await this.#transition(record, 'complete');
      return;
    }
    this.#stageOutThenComplete(record, remoteStaging);
  }

  /**
   * Register a job's stage-in or stage-out (in `running`, replacing and aborting any earlier one):
   * its controller, and the signal that also ends it at shutdown.
   */
  #beginTransfers(running: Map<string, AbortController>, id: string): { controller: AbortController; signal: AbortSignal } {
    running.get(id)?.abort();
    const controller = new AbortController();
    running.set(id, controller);
    return { controller, signal: AbortSignal.any([controller.signal, this.#stopping.signal]) };
  }

  #stageOutThenComplete(record: JobRecord, remoteStaging: Readonly<Record<string, unknown>>): void {
    const { id, incarnation } = record;
    const { controller, signal } = this.#beginTransfers(this.#stageOuts, id);
    const log = this.#log.child({ jobId: id });
    const task = async (): Promise<void> => {
      let failures: string[];
      try {
        const plan = await planStageOut(remoteStaging, this.#dir(id), this.#stagingPolicy, log, record.launch?.request.dynamicFileSources ?? []);
        if (plan === undefined) {
          failures = [];
        } else {
          log.info({ entries: plan.entries.length }, 'stage-out started');
          failures = await runStageOut(plan, {
            dir: this.#dir(id),
            policy: this.#stagingPolicy,
            retry: this.manager.postprocessRetry ?? DEFAULT_RETRY,
            signal,
            log,
            concurrency: this.#stagingPolicy.concurrency,
            client: record.client,
          });
        }
      } catch (error) {
        if (signal.aborted) {
          log.info(this.#stopping.signal.aborted ? 'stage-out stopped by shutdown (resumed at the next start)' : 'stage-out stopped');
          if (this.#stopping.signal.aborted) return;
          await this.#locks.run(id, async () => this.#failCurrent(id, incarnation, 'cancelled during stage-out (postprocessing)'));
          return;
        }
        failures = [`stage-out failed: ${messageOf(error)}`];
      } finally {
        if (this.#stageOuts.get(id) === controller) this.#stageOuts.delete(id);
      }
      await this.#whenCurrent(id, incarnation, async (current) => {
        if (current.state !== 'postprocessing' || this.#closing) return;
        if (failures.length === 0) {
          log.info('stage-out finished');
          await this.#transition(current, 'complete');
          return;
        }
        log.warn({ failures: failures.length }, 'stage-out incomplete');
        // The reason is kept in the job's record: at most MAX_LISTED_FAILURES files are named.
        const listed = failures.slice(0, MAX_LISTED_FAILURES).join('; ');
        const more = failures.length > MAX_LISTED_FAILURES ? `; and ${failures.length - MAX_LISTED_FAILURES} more` : '';
        await this.#fail(current, `stage-out did not deliver ${failures.length} file(s): ${listed}${more}`, { exited: true });
      });
    };
    this.#inBackground(id, task());
  }

  // ---------------------------------------------------------------- the one writer of job records

  /**
   * Move a job to `to` (or, with `to === record.state`, record `patch` without changing state):
   * written ahead to the store, then in memory. Resolves with the job's new record, or undefined
   * when the record changed meanwhile (cleaned, set up again). If the store cannot write it, the
   * job fails with that reason (in memory only), whatever `to` was, and its process is stopped.
   */
  async #transition(record: JobRecord, to: JobState, patch: RecordPatch = {}): Promise<JobRecord | undefined> {
    if (to === record.state ? isTerminal(to) : !canTransition(record.state, to)) {
      throw new Error(`illegal job state transition ${record.state} -> ${to} for job ${record.id}`);
    }
    const merged: JobRecord = { ...record, ...patch, state: to, updatedAt: new Date().toISOString() };
    // A finished job keeps of its launch only what its status document reads.
    const next = isTerminal(to) && merged.launch !== undefined ? { ...merged, launch: finishedLaunch(merged.launch) } : merged;
    try {
      if (!(await this.#store.put(record, next))) return undefined;
    } catch (error) {
      if (!(error instanceof StoreUnavailable)) throw error;
      return this.#failUnrecorded(record, next, error);
    }
    if (to !== record.state) {
      this.#uncache(record.id);
      this.#log.info({ jobId: record.id, state: to }, 'job state changed');
      if (this.#listeners.size > 0) await this.#notify(next);
    }
    return next;
  }

  /** A record write failed: the job ends in memory (failed, or the terminal state it was going to). */
  async #failUnrecorded(record: JobRecord, next: JobRecord, error: StoreUnavailable): Promise<JobRecord | undefined> {
    const keepsTarget = next.state === 'failed' || next.state === 'cancelled' || next.state === 'lost';
    const ended: JobRecord = keepsTarget
      ? next
      : { ...next, state: 'failed', failureReason: error.message, returnCode: next.returnCode ?? 1 };
    if (!this.#store.putInMemory(record, ended)) return undefined;
    this.#uncache(record.id);
    this.#log.error({ jobId: record.id, state: ended.state, err: error }, 'job record not written: the job ends here');
    if (this.#listeners.size > 0) await this.#notify(ended);
    // Until the ending is on disk, a restart would find the job as it was before: keep trying.
    this.#inBackground(record.id, this.#recordLater(ended));
    // A job ending on purpose (failed, cancelled, lost) is stopped by whoever ended it (#fail,
    // cancel). Otherwise it was going on (being started, running): stop it here. `next` may carry
    // the external id being recorded.
    if (!keepsTarget && next.state !== 'postprocessing' && next.state !== 'complete') await this.#stopBackendJob({ ...next, state: record.state });
    return ended;
  }

  /**
   * End a job `failed` (or `lost`) with `reason`. Unless `exited` says the backend's job has
   * ended already, it is stopped: a failed job leaves no process behind.
   */
  async #fail(
    record: JobRecord,
    reason: string,
    options: { readonly state?: 'failed' | 'lost'; readonly exited?: boolean; readonly returnCode?: number | null; readonly dropLaunch?: boolean } = {},
  ): Promise<void> {
    if (isTerminal(record.state)) return;
    const returnCode = options.returnCode ?? record.returnCode ?? 1;
    const patch: RecordPatch = { failureReason: reason, returnCode };
    const ended = await this.#transition(record, options.state ?? 'failed', options.dropLaunch === true ? { ...patch, launch: undefined } : patch);
    if (ended !== undefined) this.#log.warn({ jobId: record.id, state: ended.state, reason }, 'job failed');
    if (options.exited !== true) await this.#stopBackendJob(record);
  }

  /** Fail the current incarnation of a job after an unexpected error; takes the job's lock. */
  async #failAfterError(id: string, incarnation: string | undefined, reason: string, state: 'failed' | 'lost' = 'failed'): Promise<void> {
    await this.#locks.run(id, async () => this.#failCurrent(id, incarnation, reason, state));
  }

  /** `#failAfterError` for a caller that holds the job's lock already (the lock is not re-entrant). */
  async #failCurrent(
    id: string,
    incarnation: string | undefined,
    reason: string,
    state: 'failed' | 'lost' = 'failed',
    options: { readonly dropLaunch?: boolean } = {},
  ): Promise<void> {
    const record = this.#store.get(id);
    if (record === undefined || isTerminal(record.state)) return;
    if (incarnation !== undefined && record.incarnation !== incarnation) return;
    await this.#fail(record, reason, { state, ...options });
  }

  /** Stop the backend's job if it may still run (kill errors are logged: the job is ended here anyway). */
  async #stopBackendJob(record: JobRecord): Promise<void> {
    if (record.externalId === undefined || (record.state !== 'queued' && record.state !== 'running')) return;
    try {
      await this.#backend.kill(record.externalId);
    } catch (error) {
      this.#log.error({ jobId: record.id, externalId: record.externalId, err: error }, 'could not stop the job');
    }
  }

  /** Write a record that could not be written, with growing pauses, until it is written, changes or the server stops. */
  async #recordLater(record: JobRecord): Promise<void> {
    for (let pause = 1000; ; pause = Math.min(pause * 2, 60_000)) {
      try {
        await sleep(pause, undefined, { signal: this.#stopping.signal });
      } catch {
        return;
      }
      try {
        await this.#locks.run(record.id, async () => this.#store.rewrite(record));
        this.#log.info({ jobId: record.id, state: record.state }, 'job record written after all');
        return;
      } catch (error) {
        if (!(error instanceof StoreUnavailable)) throw error;
      }
    }
  }

  #inBackground(id: string, task: Promise<void>): void {
    const handled = task.catch((error: unknown) => {
      this.#log.error({ jobId: id, err: error }, 'job follow-up failed');
    });
    this.#background.add(handled);
    void handled.finally(() => this.#background.delete(handled));
  }

  // ---------------------------------------------------------------- status, cancel, clean

  async status(jobId: string): Promise<string> {
    const id = checkJobId(jobId);
    const record = this.#store.get(id);
    if (record !== undefined && !isTerminal(record.state)) return shortStatus(id, wireStatus(record.state));
    const cached = this.#finished.get(id);
    if (cached !== undefined) return cached;
    const doc = await fullStatus(id, record?.state ?? 'lost', record, this.#dir(id), this.#systemProperties, {
      maximumStreamSize: this.manager.maximumStreamSize,
      maxStatusSize: this.#app.maxStatusSize,
    });
    // Finished jobs no longer change (uploads are closed, the process is gone): keep the document,
    // unless the job changed while it was being read (cleaned, set up again).
    if (record !== undefined && this.#store.get(id) === record && !this.#queue.isActive(id)) this.#cache(id, doc);
    return doc;
  }

  /** Keep a finished job's document; the oldest go while the cache is over `status_cache_size`. */
  #cache(id: string, doc: string): void {
    const limit = this.#app.statusCacheSize;
    // UTF-16 in memory: two bytes a code unit.
    const bytes = doc.length * 2;
    this.#uncache(id);
    if (bytes > limit) return;
    for (const [oldest] of this.#finished) {
      if (this.#finishedBytes + bytes <= limit) break;
      this.#uncache(oldest);
    }
    this.#finished.set(id, doc);
    this.#finishedBytes += bytes;
  }

  #uncache(id: string): void {
    const doc = this.#finished.get(id);
    if (doc === undefined) return;
    this.#finished.delete(id);
    this.#finishedBytes -= doc.length * 2;
  }

  /** Bytes of status documents cached (for tests and metrics). */
  get statusCacheBytes(): number {
    return this.#finishedBytes;
  }

  async cancel(jobId: string): Promise<void> {
    const id = checkJobId(jobId);
    await this.#locked(id, async () => this.#cancelLocked(id));
  }

  /** Cancel under the job's lock; resolves with the external id of a job that was started. */
  async #cancelLocked(id: string): Promise<string | undefined> {
    const record = this.#store.get(id);
    if (record === undefined || isTerminal(record.state)) return undefined;
    if (record.state === 'postprocessing') {
      // The command has ended: a cancel stops a stage-out under way (the job then fails).
      this.#stageOuts.get(id)?.abort();
      return undefined;
    }
    await this.#transition(record, 'cancelled');
    this.#stageIns.get(id)?.abort();
    this.#log.info({ jobId: id }, 'job cancelled');
    await this.#stopBackendJob(record);
    return record.externalId;
  }

  async clean(jobId: string): Promise<void> {
    const id = checkJobId(jobId);
    await this.#locked(id, async () => this.#cleanLocked(id));
  }

  /** Clean under the job's lock (a client's clean, or the expiry sweep). */
  async #cleanLocked(id: string): Promise<void> {
    const externalId = (await this.#cancelLocked(id)) ?? this.#store.get(id)?.externalId;
    // Cancelled here or by an earlier request: a job whose task still holds its run slot has not
    // been seen to end yet; give it a moment before its directory goes.
    if (externalId !== undefined && this.#queue.isActive(id)) await this.#waitForExit(externalId, CLEAN_WAIT_MS);
    this.#forget(id);
    await this.#store.delete(id);
    if (!this.manager.debug) await this.#dir(id).remove();
    this.#log.info({ jobId: id }, 'job cleaned');
  }

  /** Wait for a killed job to end, at most `ms`. */
  async #waitForExit(externalId: string, ms: number): Promise<void> {
    const timer = new AbortController();
    const exited = this.#backend.waitForExit(externalId).then(
      () => undefined,
      () => undefined,
    );
    try {
      await Promise.race([exited, sleep(ms, undefined, { signal: timer.signal }).catch(() => undefined)]);
    } finally {
      timer.abort();
    }
  }
}

/** The well-formed `{name, type}` of `remote_staging.setup` entries (parseSetup refuses the others). */
function stagedFilesOf(setup: readonly unknown[]): StagedFile[] {
  const files: StagedFile[] = [];
  for (const entry of setup) {
    if (typeof entry !== 'object' || entry === null) continue;
    const { name, type } = entry as { name?: unknown; type?: unknown };
    if (typeof name === 'string' && typeof type === 'string') files.push({ name, type });
  }
  return files;
}

function checkFileType(type: string): FileType {
  if (!isFileType(type)) throw new BadRequest(`unknown file type "${type}"`);
  return type;
}
