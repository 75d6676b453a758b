import type { Logger } from '../log.js';

/**
 * The run queue of one manager: jobs wait here in submit order and at most `limit` of them hold
 * a slot at a time (`num_concurrent_jobs`; Infinity when a scheduler does the queueing). A slot
 * is held for as long as the job's task runs (start, watch, finish) and freed in one `finally`,
 * whatever the task does; a task that throws is handed to `onError`, which must end the job.
 */
export class RunQueue {
  readonly #limit: number;
  readonly #task: (id: string) => Promise<void>;
  readonly #onError: (id: string, error: unknown) => Promise<void>;
  readonly #log: Logger;
  /** Waiting ids in order; `#head` is the next one (a plain array with an index: O(1) take). */
  #waiting: string[] = [];
  #head = 0;
  readonly #active = new Map<string, Promise<void>>();
  /** Ids enqueued while a task of the same id (an earlier job under a reused id) held a slot. */
  readonly #deferred = new Set<string>();
  #closed = false;

  constructor(options: {
    readonly limit: number;
    readonly task: (id: string) => Promise<void>;
    readonly onError: (id: string, error: unknown) => Promise<void>;
    readonly log: Logger;
  }) {
    this.#limit = options.limit;
    this.#task = options.task;
    this.#onError = options.onError;
    this.#log = options.log;
  }

  /** Jobs holding a slot now. */
  get activeCount(): number {
    return this.#active.size;
  }

  get waitingCount(): number {
    return this.#waiting.length - this.#head;
  }

  isActive(id: string): boolean {
    return this.#active.has(id);
  }

  /**
   * Queue a job; it starts when a slot is free. While a task of the same id still holds a slot
   * (a cancelled job under a reused id, not yet seen to end), the id waits for that task to end.
   */
  enqueue(id: string): void {
    if (this.#closed) return;
    if (this.#active.has(id)) {
      this.#deferred.add(id);
      return;
    }
    this.#waiting.push(id);
    this.#pump();
  }

  /**
   * Give a job a slot at once, over the limit if need be: a job found running after a restart
   * runs whatever the limit says, and must be counted.
   */
  adopt(id: string, task: () => Promise<void>): void {
    if (this.#closed || this.#active.has(id)) return;
    this.#hold(id, task);
  }

  /** Start nothing more (jobs holding a slot keep it until their task ends). */
  close(): void {
    this.#closed = true;
    this.#deferred.clear();
    this.#waiting = [];
    this.#head = 0;
  }

  /** Resolves once every task holding a slot has ended. */
  async drain(): Promise<void> {
    while (this.#active.size > 0) await Promise.allSettled([...this.#active.values()]);
  }

  #pump(): void {
    while (!this.#closed && this.#active.size < this.#limit && this.#head < this.#waiting.length) {
      const id = this.#waiting[this.#head]!;
      this.#head += 1;
      if (this.#head > 1024 && this.#head * 2 > this.#waiting.length) {
        this.#waiting = this.#waiting.slice(this.#head);
        this.#head = 0;
      }
      if (this.#active.has(id)) {
        this.#deferred.add(id);
        continue;
      }
      this.#hold(id, async () => this.#task(id));
    }
  }

  #hold(id: string, task: () => Promise<void>): void {
    const run = (async () => {
      try {
        await task();
      } catch (error) {
        try {
          await this.#onError(id, error);
        } catch (second) {
          this.#log.error({ jobId: id, err: second, cause: error }, 'a job task failed and so did ending the job');
        }
      } finally {
        this.#active.delete(id);
        if (this.#deferred.delete(id) && !this.#closed) this.#waiting.push(id);
        this.#pump();
      }
    })();
    this.#active.set(id, run);
  }
}
