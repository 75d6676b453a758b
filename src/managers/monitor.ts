import type { ExitReport } from './backend.js';

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

/**
 * One monitor loop for the jobs of an external backend (PROTOCOL §5.3): every
 * `intervalMs` it asks the scheduler about all watched jobs in ONE call (`pollBatch`), and
 * settles the waits of those that started or ended. A failing poll is retried next round.
 */
export class PollingMonitor {
  readonly #intervalMs: number;
  readonly #pollBatch: (ids: readonly string[]) => Promise<ReadonlyMap<string, PolledState>>;
  readonly #onGone: (id: string) => Promise<ExitReport>;
  readonly #watched = new Map<string, Watched>();
  #timer: NodeJS.Timeout | undefined;
  #polling = false;
  #closed = false;

  /**
   * `onGone` decides what a job the scheduler forgot means (e.g. look at the return-code file, or
   * ask accounting); jobs missing from a poll's answer count as gone.
   */
  constructor(
    intervalMs: number,
    pollBatch: (ids: readonly string[]) => Promise<ReadonlyMap<string, PolledState>>,
    onGone: (id: string) => Promise<ExitReport>,
  ) {
    this.#intervalMs = Math.max(50, intervalMs);
    this.#pollBatch = pollBatch;
    this.#onGone = onGone;
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
      void this.#poll();
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
      } catch {
        return; // scheduler briefly unreachable: try again next round
      }
      for (const id of ids) {
        const entry = this.#watched.get(id);
        if (entry === undefined) continue;
        const polled = states.get(id) ?? { state: 'gone' };
        if (polled.state === 'queued') continue;
        this.#started(entry);
        if (polled.state === 'running') continue;
        const report: ExitReport =
          polled.state === 'gone'
            ? await this.#onGone(id).catch((error: unknown) => ({ exitCode: null, reason: String(error) }))
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
