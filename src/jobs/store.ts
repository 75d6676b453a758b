import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { EnvEntry } from './script.js';
import type { JobState } from './state.js';

/** What submit recorded, kept outside the job directory (it may carry secrets, PROTOCOL §14 item 9). */
export interface LaunchRecord {
  readonly commandLine: string;
  readonly env: readonly EnvEntry[];
  /** Client submit params the administrator allow-listed (`allowed_submit_params`). */
  readonly submitParams: Readonly<Record<string, unknown>>;
  readonly dependenciesDescription: unknown;
  readonly dynamicFileSources: readonly { readonly type?: string; readonly path: string }[];
  readonly preserveGalaxyPythonEnvironment: boolean;
}

export interface JobRecord {
  readonly id: string;
  readonly manager: string;
  state: JobState;
  readonly toolId: string | undefined;
  readonly toolVersion: string | undefined;
  readonly createdAt: string;
  updatedAt: string;
  uploadedBytes: number;
  launch: LaunchRecord | undefined;
  /** Backend id (a pid for local jobs) once started. */
  externalId: string | undefined;
  returnCode: number | null;
  /** Why the server failed the job; reported in `stderr` (PROTOCOL §14 item 27). */
  failureReason: string | undefined;
}

/**
 * Job records of one manager: in memory, and (unless persistence is disabled) one JSON file per
 * job, always replaced by an atomic rename, written *before* the action it announces.
 */
export class JobStore {
  readonly #dir: string | undefined;
  readonly #jobs = new Map<string, JobRecord>();
  /** Serialises writes per job so an older record never overwrites a newer one. */
  readonly #writing = new Map<string, Promise<void>>();

  constructor(persistenceDirectory: string | undefined, manager: string) {
    this.#dir = persistenceDirectory === undefined ? undefined : path.join(persistenceDirectory, `${manager}-jobs`);
  }

  get persistent(): boolean {
    return this.#dir !== undefined;
  }

  async open(): Promise<JobRecord[]> {
    if (this.#dir === undefined) return [];
    await fs.mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const names = await fs.readdir(this.#dir);
    const records: JobRecord[] = [];
    for (const name of names) {
      const full = path.join(this.#dir, name);
      if (name.endsWith('.tmp')) {
        await fs.rm(full, { force: true });
        continue;
      }
      if (!name.endsWith('.json')) continue;
      try {
        const record = JSON.parse(await fs.readFile(full, 'utf8')) as JobRecord;
        if (typeof record.id !== 'string' || `${record.id}.json` !== name) continue;
        this.#jobs.set(record.id, record);
        records.push(record);
      } catch {
        // A torn file cannot exist (atomic rename); anything unreadable is not ours to guess at.
      }
    }
    return records;
  }

  get(id: string): JobRecord | undefined {
    return this.#jobs.get(id);
  }

  all(): IterableIterator<JobRecord> {
    return this.#jobs.values();
  }

  #closed = false;

  /**
   * Stop writing, after the writes under way have landed. Whatever happens to a job later (it may
   * still end while the server stops) is found again from its files by the next start.
   */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#writing.values()]);
  }

  /** Record (a new or changed) job durably, then keep it in memory. */
  async save(record: JobRecord): Promise<void> {
    record.updatedAt = new Date().toISOString();
    this.#jobs.set(record.id, record);
    if (this.#dir === undefined || this.#closed) return;
    const dir = this.#dir;
    const snapshot = JSON.stringify(record);
    const previous = this.#writing.get(record.id) ?? Promise.resolve();
    const write = previous.then(async () => {
      const target = path.join(dir, `${record.id}.json`);
      const tmp = `${target}.${randomBytes(4).toString('hex')}.tmp`;
      await fs.writeFile(tmp, snapshot, { mode: 0o600 });
      await fs.rename(tmp, target);
    });
    const tracked = write.finally(() => {
      if (this.#writing.get(record.id) === tracked) this.#writing.delete(record.id);
    });
    this.#writing.set(record.id, tracked.catch(() => undefined));
    await write;
  }

  async delete(id: string): Promise<void> {
    this.#jobs.delete(id);
    if (this.#dir === undefined) return;
    const dir = this.#dir;
    const previous = this.#writing.get(id) ?? Promise.resolve();
    await previous;
    await fs.rm(path.join(dir, `${id}.json`), { force: true });
  }
}
