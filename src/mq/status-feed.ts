import type { JobService } from '../jobs/service.js';
import type { Logger } from '../log.js';
import type { StatusPublisher } from './types.js';

export interface StatusFeedOptions {
  /** The outbox directory, e.g. `<persistence_directory>/<manager>-status-outbox`. */
  readonly dir: string;
  readonly log: Logger;
  /** `status_outbox_drain_interval` in ms: how often a failed drain is retried. */
  readonly drainIntervalMs: number;
  /** Bound on the entries kept (default 100,000). */
  readonly maxPending?: number;
}

/** SKELETON: the API of the status feed; filled in by the next commits. */
export class StatusFeed {
  #publisher: StatusPublisher | undefined;

  private constructor(
    readonly service: JobService,
    readonly options: StatusFeedOptions,
  ) {}

  static async open(service: JobService, options: StatusFeedOptions): Promise<StatusFeed> {
    await Promise.resolve();
    return new StatusFeed(service, options);
  }

  attach(publisher: StatusPublisher): void {
    if (this.#publisher !== undefined) throw new Error('the status feed already has a publisher');
    this.#publisher = publisher;
  }

  kick(): void {
    // skeleton
  }

  async requestStatus(jobId: string): Promise<void> {
    await this.service.status(jobId);
  }

  get pending(): number {
    return 0;
  }

  async close(): Promise<void> {
    await Promise.resolve();
  }
}
