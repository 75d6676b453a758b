import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { StoreUnavailable, messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import type { SubmitRequest } from './submit-request.js';
import { JOB_STATES, isTerminal, type JobState } from './state.js';

/** What submit recorded, kept outside the job directory (it may carry secrets, PROTOCOL §14 item 9). */
export interface LaunchRecord {
  /** The request as the transport parsed it; preprocessing is re-run from it after a restart. */
  readonly request: SubmitRequest;
  /** The command line to run (`__PULSAR_JOBS_DIRECTORY__` already replaced). */
  readonly commandLine: string;
  /** Client submit params the administrator allow-listed (`allowed_submit_params`): what backends see. */
  readonly submitParams: Readonly<Record<string, unknown>>;
}

/**
 * One job as the server knows it. Records are immutable: `JobService.transition` replaces a job's
 * record (write-ahead, through the store) and is the only code that changes its `state`.
 */
export interface JobRecord {
  readonly id: string;
  /** Tells two lives of one reused job id apart: a late event of a cleaned job never touches the next. */
  readonly incarnation: string;
  readonly manager: string;
  readonly state: JobState;
  readonly toolId: string | undefined;
  readonly toolVersion: string | undefined;
  /** Who set the job up: the client's address (see web/rate-limit.ts clientKeyOf), if known. */
  readonly client?: string | undefined;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly launch: LaunchRecord | undefined;
  /** Backend id (a pid for local jobs) once started. */
  readonly externalId: string | undefined;
  readonly returnCode: number | null;
  /** Why the server failed the job; reported in `stderr` (PROTOCOL §14 item 27). */
  readonly failureReason: string | undefined;
}

/**
 * The launch record a finished job keeps: its dynamic file sources (its status realizes them) and
 * nothing else of the request — the command line, env, params and dependencies are never read
 * again once the job has ended, and a client may have sent megabytes of them.
 */
export function finishedLaunch(launch: LaunchRecord): LaunchRecord {
  return {
    request: {
      commandLine: '',
      submitParams: {},
      setupParams: undefined,
      dependenciesDescription: null,
      env: [],
      remoteStaging: {},
      touchOutputs: [],
      // A record read back from disk is checked only as an object here.
      dynamicFileSources: Array.isArray(launch.request.dynamicFileSources) ? launch.request.dynamicFileSources : [],
    },
    commandLine: '',
    submitParams: {},
  };
}

// The disk edge: a record file is trusted only as far as this schema says.
const recordSchema = z.object({
  id: z.string().min(1).max(255),
  incarnation: z.string().min(1).max(64).default('recovered'),
  manager: z.string(),
  state: z.enum(JOB_STATES),
  toolId: z.string().optional(),
  toolVersion: z.string().optional(),
  client: z.string().max(128).optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
  launch: z
    .object({
      request: z.custom<SubmitRequest>((v) => typeof v === 'object' && v !== null),
      commandLine: z.string(),
      submitParams: z.record(z.string(), z.unknown()),
    })
    .optional(),
  externalId: z.string().optional(),
  returnCode: z.number().int().nullable().default(null),
  failureReason: z.string().optional(),
});

/** Record files read at once when the store opens. */
const OPEN_CONCURRENCY = 32;

/**
 * Job records of one manager: in memory, and (unless persistence is disabled) one JSON file per
 * job, always replaced by an atomic rename, written *before* the memory copy changes (write-ahead).
 * A write that fails throws `StoreUnavailable` and leaves the memory copy as it was; the caller
 * (the job service) decides what the failure means for the job.
 */
export class JobStore {
  readonly #dir: string | undefined;
  readonly #log: Logger;
  readonly #jobs = new Map<string, JobRecord>();
  /** Records whose state is not terminal (kept as records change: setup is refused past `max_live_jobs`). */
  #live = 0;
  /** Unfinished jobs per client that set them up (`max_live_jobs_per_address`). */
  readonly #liveByClient = new Map<string, number>();
  /** Serialises file operations per job so an older record never overwrites a newer one. */
  readonly #writing = new Map<string, Promise<unknown>>();
  #closed = false;

  constructor(persistenceDirectory: string | undefined, manager: string, log: Logger) {
    this.#dir = persistenceDirectory === undefined ? undefined : path.join(persistenceDirectory, `${manager}-jobs`);
    this.#log = log;
  }

  /** Load every record left by the previous run (unreadable ones are logged and left on disk). */
  async open(): Promise<JobRecord[]> {
    if (this.#dir === undefined) return [];
    const dir = this.#dir;
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    const names = await fs.readdir(dir);
    const loaded: (JobRecord | undefined)[] = new Array<JobRecord | undefined>(names.length);
    // Thousands of small files: read a few at a time rather than one after the other.
    let next = 0;
    const reader = async (): Promise<void> => {
      for (let i = next++; i < names.length; i = next++) loaded[i] = await this.#load(dir, names[i]!);
    };
    await Promise.all(Array.from({ length: Math.min(OPEN_CONCURRENCY, names.length) }, reader));
    const records = loaded.filter((record): record is JobRecord => record !== undefined);
    for (const record of records) this.#set(record);
    return records;
  }

  async #load(dir: string, name: string): Promise<JobRecord | undefined> {
    const full = path.join(dir, name);
    if (name.endsWith('.tmp')) {
      await fs.rm(full, { force: true });
      return undefined;
    }
    if (!name.endsWith('.json')) return undefined;
    const record = await readRecord(full);
    if (typeof record === 'string' || `${record.id}.json` !== name) {
      this.#log.error({ file: full, reason: typeof record === 'string' ? record : 'its id differs from its file name' }, 'job record not loaded: the job is not recovered');
      return undefined;
    }
    return record;
  }

  get(id: string): JobRecord | undefined {
    return this.#jobs.get(id);
  }

  get size(): number {
    return this.#jobs.size;
  }

  /** Jobs not finished (set up, preprocessing, queued, running, postprocessing). */
  get liveCount(): number {
    return this.#live;
  }

  /** Unfinished jobs set up by `client`. */
  liveCountOf(client: string): number {
    return this.#liveByClient.get(client) ?? 0;
  }

  /** Every record now (a copy: the store may change while the caller goes through it). */
  records(): JobRecord[] {
    return [...this.#jobs.values()];
  }

  #set(record: JobRecord): void {
    const previous = this.#jobs.get(record.id);
    if (previous !== undefined) this.#countLive(previous, -1);
    this.#countLive(record, 1);
    this.#jobs.set(record.id, record);
  }

  #remove(id: string): void {
    const previous = this.#jobs.get(id);
    if (previous !== undefined) this.#countLive(previous, -1);
    this.#jobs.delete(id);
  }

  #countLive(record: JobRecord, delta: 1 | -1): void {
    if (isTerminal(record.state)) return;
    this.#live += delta;
    if (record.client === undefined) return;
    const count = (this.#liveByClient.get(record.client) ?? 0) + delta;
    if (count <= 0) this.#liveByClient.delete(record.client);
    else this.#liveByClient.set(record.client, count);
  }

  /**
   * Stop writing, after the writes under way have landed. Whatever happens to a job later (it may
   * still end while the server stops) is found again from its files by the next start.
   */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.allSettled([...this.#writing.values()]);
  }

  /**
   * Make `next` the job's record: on disk first, then in memory. `previous` is the record the
   * caller read (undefined for a new job); if the job's record changed meanwhile (a clean, a new
   * setup) nothing is written and false is returned.
   */
  async put(previous: JobRecord | undefined, next: JobRecord): Promise<boolean> {
    if (this.#jobs.get(next.id) !== previous) return false;
    await this.#write(next);
    if (this.#jobs.get(next.id) !== previous) return false;
    this.#set(next);
    return true;
  }

  /** Make `next` the job's record in memory only: the disk copy could not be written. */
  putInMemory(previous: JobRecord, next: JobRecord): boolean {
    if (this.#jobs.get(next.id) !== previous) return false;
    this.#set(next);
    return true;
  }

  /**
   * Write the job's record as memory has it, after an earlier write of it failed (see
   * `putInMemory`). False when the job's record changed or went meanwhile: nothing is written.
   */
  async rewrite(record: JobRecord): Promise<boolean> {
    if (this.#jobs.get(record.id) !== record) return false;
    await this.#write(record);
    return true;
  }

  async #write(record: JobRecord): Promise<void> {
    await this.#persist(record.id, async (target) => {
      const tmp = `${target}.${randomBytes(4).toString('hex')}.tmp`;
      try {
        await fs.writeFile(tmp, JSON.stringify(record), { mode: 0o600 });
        await fs.rename(tmp, target);
      } catch (error) {
        await fs.rm(tmp, { force: true }).catch(() => undefined);
        throw error;
      }
    });
  }

  /**
   * Forget the job: from disk first, then from memory. If the file cannot be removed the job is
   * kept (and `StoreUnavailable` thrown), so a restart never brings back a job a client saw go.
   */
  async delete(id: string): Promise<void> {
    await this.#persist(id, async (target) => fs.rm(target, { force: true }));
    this.#remove(id);
  }

  async #persist(id: string, operation: (target: string) => Promise<unknown>): Promise<void> {
    const dir = this.#dir;
    if (dir === undefined || this.#closed) return;
    const previous = this.#writing.get(id) ?? Promise.resolve();
    const done = previous.then(async () => operation(path.join(dir, `${id}.json`)));
    const settled = done.then(() => undefined, () => undefined);
    this.#writing.set(id, settled);
    try {
      await done;
    } catch (error) {
      throw new StoreUnavailable(`the job record of ${id} could not be written: ${messageOf(error)}`, { cause: error });
    } finally {
      if (this.#writing.get(id) === settled) this.#writing.delete(id);
    }
  }
}

async function readRecord(file: string): Promise<JobRecord | string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (error) {
    return `unreadable: ${messageOf(error)}`;
  }
  const result = recordSchema.safeParse(parsed);
  if (!result.success) return `not a job record: ${result.error.issues[0]?.message ?? 'invalid'}`;
  const r = result.data;
  return {
    id: r.id,
    incarnation: r.incarnation,
    manager: r.manager,
    state: r.state,
    toolId: r.toolId,
    toolVersion: r.toolVersion,
    client: r.client,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
    // Records of finished jobs written before they were slimmed: keep only what status reads.
    launch: r.launch !== undefined && isTerminal(r.state) ? finishedLaunch(r.launch) : r.launch,
    externalId: r.externalId,
    returnCode: r.returnCode,
    failureReason: r.failureReason,
  };
}
