import { messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import type { ExitReport } from './backend.js';
import { RepeatedFailureLog } from './failure-log.js';

/** What one batch poll says about a job. */
export type PolledState =
  | { readonly state: 'queued' }
  | { readonly state: 'running' }
  | { readonly state: 'exited'; readonly exitCode?: number | null; readonly reason?: string }
  /** The scheduler no longer knows the job (finished and forgotten, or never existed). */
  | { readonly state: 'gone' };

interface Watched {
  started: boolean;
  readonly onStart: (() => void)[];
  readonly onExit: ((report: ExitReport) => void)[];
}

export interface PollingMonitorOptions {
  readonly intervalMs: number;
  /** One question to the scheduler about all `ids`; throws when it cannot be asked. */
  readonly pollBatch: (ids: readonly string[]) => Promise<ReadonlyMap<string, PolledState>>;
  /**
   * What a job the scheduler forgot means (e.g. look at the return-code file, or ask
   * accounting); jobs missing from a poll's answer count as gone.
   */
  readonly onGone: (id: string) => Promise<ExitReport>;
  /** The backend's logger: failing polls are reported here (without flooding it). */
  readonly log: Logger;
}

/**
 * One monitor loop for the jobs of an external backend (PROTOCOL §5.3): every
 * `intervalMs` it asks the scheduler about all watched jobs in ONE call (`pollBatch`), and
 * settles the waits of those that started or ended. A failing poll is logged and retried next
 * round: the jobs stay as they were until the scheduler answers again.
 */
export class PollingMonitor {
  readonly #intervalMs: number;
  readonly #pollBatch: (ids: readonly string[]) => Promise<ReadonlyMap<string, PolledState>>;
  readonly #onGone: (id: string) => Promise<ExitReport>;
  readonly #log: Logger;
  readonly #failures: RepeatedFailureLog;
  readonly #watched = new Map<string, Watched>();
  #timer: NodeJS.Timeout | undefined;
  #polling = false;
  #closed = false;

  constructor(options: PollingMonitorOptions) {
    this.#intervalMs = Math.max(50, options.intervalMs);
    this.#pollBatch = options.pollBatch;
    this.#onGone = options.onGone;
    this.#log = options.log;
    this.#failures = new RepeatedFailureLog(options.log, 'status poll');
  }

  #entry(id: string): Watched {
    let entry = this.#watched.get(id);
    if (entry === undefined) {
      entry = { started: false, onStart: [], onExit: [] };
      this.#watched.set(id, entry);
      this.#schedule();
    }
    return entry;
  }

  waitForStart(id: string): Promise<void> {
    const entry = this.#entry(id);
    if (entry.started) return Promise.resolve();
    return new Promise((resolve) => entry.onStart.push(resolve));
  }

  waitForExit(id: string): Promise<ExitReport> {
    const entry = this.#entry(id);
    return new Promise((resolve) => entry.onExit.push(resolve));
  }

  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
  }

  #schedule(): void {
    if (this.#closed || this.#timer !== undefined || this.#polling || this.#watched.size === 0) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#poll().catch((error: unknown) => this.#log.error({ err: error }, 'status poll round failed'));
    }, this.#intervalMs);
    this.#timer.unref();
  }

  async #poll(): Promise<void> {
    this.#polling = true;
    try {
      const ids = [...this.#watched.keys()];
      let states: ReadonlyMap<string, PolledState>;
      try {
        states = await this.#pollBatch(ids);
      } catch (error) {
        this.#failures.failed(error);
        return; // the scheduler cannot be asked now: try again next round
      }
      this.#failures.succeeded();
      for (const id of ids) {
        const entry = this.#watched.get(id);
        if (entry === undefined) continue;
        const polled = states.get(id) ?? { state: 'gone' };
        if (polled.state === 'queued') continue;
        this.#started(entry);
        if (polled.state === 'running') continue;
        const report: ExitReport =
          polled.state === 'gone'
            ? await this.#onGone(id).catch((error: unknown) => ({ exitCode: null, reason: messageOf(error) }))
            : polled.reason === undefined
              ? { exitCode: polled.exitCode ?? null }
              : { exitCode: polled.exitCode ?? null, reason: polled.reason };
        this.#watched.delete(id);
        for (const resolve of entry.onExit) resolve(report);
      }
    } finally {
      this.#polling = false;
      this.#schedule();
    }
  }

  #started(entry: Watched): void {
    if (entry.started) return;
    entry.started = true;
    for (const resolve of entry.onStart.splice(0)) resolve();
  }
}
