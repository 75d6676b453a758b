import { messageOf } from '../errors.js';
import { checkJobId } from '../jobs/ids.js';
import { KeyedMutex } from '../jobs/lock.js';
import type { JobService } from '../jobs/service.js';
import { isTerminal, TERMINAL_STATES, type JobState } from '../jobs/state.js';
import type { Logger } from '../log.js';
import { Outbox, type PendingEntry } from './outbox.js';
import type { OutboxEntry, StatusPublisher } from './types.js';

export interface StatusFeedOptions {
  /** The outbox directory, e.g. `<persistence_directory>/<manager>-status-outbox`. */
  readonly dir: string;
  readonly log: Logger;
  /** `status_outbox_drain_interval` in ms: how often a drain that stopped (publish failed, transport down) is tried again. */
  readonly drainIntervalMs: number;
  /**
   * Bound on the entries kept (default `DEFAULT_MAX_PENDING`). At the bound, state changes that
   * are not terminal and answers to status requests are not written (logged, counted in
   * `dropped`); unsolicited terminal updates are always written (at most one per job the service
   * knows, so they are bounded by the job store).
   */
  readonly maxPending?: number;
}

export const DEFAULT_MAX_PENDING = 100_000;
/** Publishes in flight at once (at most one per job, so a job's updates keep their order). */
const MAX_IN_FLIGHT = 64;
/** Pending entries looked at to fill one batch. */
const BATCH_SCAN = 4 * MAX_IN_FLIGHT;
/** Markers written at once when a fresh outbox settles. */
const SETTLE_CONCURRENCY = 16;
/** The ledger is pruned of forgotten jobs this often (at a drain tick). */
const PRUNE_EVERY_MS = 10 * 60_000;

/**
 * Turns a job service's state changes into status updates (PROTOCOL §11.2) through a persisted
 * outbox (§11.4, `Outbox`), and drains the outbox to a transport's `StatusPublisher`.
 *
 * Guarantees:
 * - Every state change the service reports (`JobService.onStateChange`: preprocessing, queued,
 *   running, postprocessing, complete, failed, cancelled, lost; not `setup`, whose wire status
 *   `preprocessing` is reported when the job is submitted) is written to the outbox, durably,
 *   before the transition resolves. The payload is the status document the HTTP status route
 *   returns for that state (`JobService.status`, read under the job's lock right after the record
 *   was written): the short form, or the full document for a terminal state.
 * - An entry leaves the outbox only once `publish` resolved. Entries are published in batches of
 *   up to `MAX_IN_FLIGHT` publishes in flight at once (pipelined: the publishes of a batch are
 *   called in outbox (seq) order before any is awaited, so a transport that keeps order on its
 *   channel sends them in that order). A batch holds at most one entry per job, the job's oldest
 *   pending one: a job's next entry is published only after its previous one was confirmed.
 *   When a publish is rejected, the confirmed ones of the batch leave, the rejected ones stay,
 *   and draining stops until the next drain interval or `kick`. So one job's updates are
 *   published in lifecycle order, always, even across failures; different jobs' updates may
 *   overtake one another (FIFO by seq holds per job, and across jobs while nothing fails).
 * - At most one unsolicited terminal update per job (incarnation), across restarts: the outbox's
 *   ledger (pending terminal entries, then `delivered/` markers) says which jobs had theirs. After
 *   a crash between the job record's write and the outbox's, `open` (once the service has
 *   started) writes the terminal update of every finished job the ledger does not have (except
 *   on the outbox's first open: jobs that finished before the feed existed are not published).
 * - A status request (`requestStatus`) queues the job's current document, marked `requested`:
 *   for a finished job that is the terminal document again. That answers a question and does not
 *   count as the job's terminal update.
 *
 * Delivery is at least once: a crash after a publish and before the entry left the outbox
 * publishes it again, with the same `id`.
 */
export class StatusFeed {
  readonly #service: JobService;
  readonly #outbox: Outbox;
  readonly #log: Logger;
  readonly #drainIntervalMs: number;
  readonly #maxPending: number;
  /** Serialises the feed's writes per job (state changes, status requests, reconciliation). */
  readonly #locks = new KeyedMutex();
  #unsubscribe: () => void = () => undefined;
  #publisher: StatusPublisher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #draining: Promise<void> | undefined;
  /** Entries were added while a drain ran: it goes on. */
  #again = false;
  /** A publish failed or the transport was not ready: wait for the next tick or a kick. */
  #waiting = false;
  #closed = false;
  readonly #closing = new AbortController();
  readonly #tasks = new Set<Promise<void>>();
  #reconciled = false;
  #lastPrune = 0;
  /** Unsolicited terminal entries that could not be written (or were set aside): retried every tick. */
  readonly #unwritten = new Map<string, { readonly jobId: string; readonly incarnation: string }>();
  #retrying = false;
  /** Jobs whose changes the feed heard while its outbox was fresh (see `#settle`). */
  readonly #heard = new Set<string>();
  #full = false;
  /** Entries not written because the outbox was full (since it opened). */
  dropped = 0;

  private constructor(service: JobService, outbox: Outbox, log: Logger, options: StatusFeedOptions) {
    this.#service = service;
    this.#outbox = outbox;
    this.#log = log;
    this.#drainIntervalMs = Math.max(1, options.drainIntervalMs);
    this.#maxPending = options.maxPending ?? DEFAULT_MAX_PENDING;
  }

  /**
   * Open the outbox (reads pending entries), subscribe to the service's state changes, reconcile
   * after a restart. Best opened before `service.start()`, so the recovery's changes are reported
   * too; the reconciliation then runs as soon as the service has started. Opened after, it
   * reconciles before it resolves.
   */
  static async open(service: JobService, options: StatusFeedOptions): Promise<StatusFeed> {
    const log = options.log.child({ component: 'status-feed', manager: service.manager.name });
    const outbox = await Outbox.open(options.dir, log);
    const feed = new StatusFeed(service, outbox, log, options);
    feed.#unsubscribe = service.onStateChange(async (jobId, state, incarnation) => feed.#changed(jobId, state, incarnation));
    feed.#timer = setInterval(() => feed.#tick(), feed.#drainIntervalMs);
    feed.#timer.unref();
    log.info({ dir: options.dir, pending: outbox.size, delivered: outbox.marked, setAside: outbox.setAside }, 'status outbox opened');
    if (!service.hasStarted) {
      feed.#track(feed.#reconcileWhenStarted());
      return feed;
    }
    try {
      await feed.#reconcile();
    } catch (error) {
      await feed.close();
      throw error;
    }
    return feed;
  }

  /** Start draining pending entries, FIFO, to this publisher (one publisher per feed). */
  attach(publisher: StatusPublisher): void {
    if (this.#publisher !== undefined) throw new Error('the status feed already has a publisher');
    this.#publisher = publisher;
    this.#schedule();
  }

  /** The transport became ready again (reconnected): drain now. */
  kick(): void {
    this.#waiting = false;
    this.#schedule();
  }

  /**
   * Queue the job's current status document (a status request): the short form for an unfinished
   * job, the full document for a finished one, and for a job the service does not know the `lost`
   * document the HTTP status route answers. Throws `BadRequest` for an invalid job id. Not
   * written (logged) while the outbox is full.
   */
  async requestStatus(jobId: string): Promise<void> {
    const id = checkJobId(jobId);
    if (this.#closed) {
      this.#log.info({ jobId: id }, 'status request after the status feed closed: not answered');
      return;
    }
    await this.#locks.run(id, async () => {
      if (!this.#hasRoom(id)) return;
      await this.#append(id, this.#service.knownJob(id)?.incarnation ?? '', true);
    });
  }

  /** Entries not yet confirmed. */
  get pending(): number {
    return this.#outbox.size;
  }

  /** Entries set aside (unreadable) since the outbox opened. */
  get setAside(): number {
    return this.#outbox.setAside;
  }

  /** Jobs (incarnations) the ledger holds (their terminal update is written or delivered). */
  get delivered(): number {
    return this.#outbox.marked;
  }

  /** Stop draining and listening; wait for the publishes and writes in flight. Entries stay on disk. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort();
    clearInterval(this.#timer);
    this.#unsubscribe();
    await this.#draining;
    await Promise.allSettled([...this.#tasks]);
    await this.#locks.idle();
  }

  // ---------------------------------------------------------------- writing

  async #changed(jobId: string, state: JobState, incarnation: string): Promise<void> {
    if (this.#outbox.fresh) this.#heard.add(jobId);
    if (isTerminal(state)) {
      await this.#writeTerminal(jobId, incarnation);
      return;
    }
    await this.#locks.run(jobId, async () => {
      if (this.#hasRoom(jobId)) await this.#append(jobId, incarnation, false);
    });
  }

  /**
   * Write the job's one unsolicited terminal entry unless the ledger has it, or the job is no
   * longer that finished incarnation. A failed write is logged and retried every drain interval.
   */
  async #writeTerminal(jobId: string, incarnation: string): Promise<boolean> {
    return this.#locks.run(jobId, async () => {
      if (this.#outbox.isMarked(jobId, incarnation)) return false;
      const now = this.#service.knownJob(jobId);
      const key = `${jobId}/${incarnation}`;
      if (now?.incarnation !== incarnation || !isTerminal(now.state)) {
        this.#unwritten.delete(key);
        return false;
      }
      this.#outbox.mark(jobId, incarnation);
      try {
        await this.#append(jobId, incarnation, false);
        this.#unwritten.delete(key);
        return true;
      } catch (error) {
        this.#outbox.unmark(jobId, incarnation);
        this.#unwritten.set(key, { jobId, incarnation });
        this.#log.error({ jobId, err: error }, 'terminal status update not written to the outbox: tried again every drain interval');
        return false;
      }
    });
  }

  /** Write the job's current status document as a new entry (the caller holds the job's feed lock). */
  async #append(jobId: string, incarnation: string, requested: boolean): Promise<void> {
    const payload = await this.#service.status(jobId);
    const document = JSON.parse(payload) as Record<string, unknown>;
    const status = typeof document['status'] === 'string' ? document['status'] : 'lost';
    await this.#outbox.append({
      jobId,
      incarnation,
      status,
      terminal: TERMINAL_STATES.has(status as JobState),
      requested,
      payload,
      document,
    });
    this.#schedule();
  }

  #hasRoom(jobId: string): boolean {
    if (this.#outbox.size < this.#maxPending) {
      this.#full = false;
      return true;
    }
    this.dropped++;
    if (!this.#full) this.#log.warn({ jobId, pending: this.#outbox.size, maxPending: this.#maxPending }, 'status outbox full: status updates other than terminal ones are not written until it drains');
    this.#full = true;
    return false;
  }

  // ---------------------------------------------------------------- after a restart

  async #reconcileWhenStarted(): Promise<void> {
    const closed = new Promise<boolean>((resolve) => this.#closing.signal.addEventListener('abort', () => resolve(false), { once: true }));
    if (await Promise.race([this.#service.started.then(() => true), closed])) await this.#reconcile();
  }

  /**
   * Write the terminal update of every finished job the ledger does not have; then prune the
   * ledger. On a fresh outbox (never reconciled: the feed is new to this server), the jobs that
   * finished before it existed are marked delivered instead: nobody waits for them on the queue.
   */
  async #reconcile(): Promise<void> {
    if (this.#outbox.fresh) {
      await this.#settle();
      await this.#prune();
      this.#reconciled = true;
      return;
    }
    let written = 0;
    for (const job of this.#service.knownJobs()) {
      if (this.#closed) return;
      if (!isTerminal(job.state) || this.#outbox.isMarked(job.id, job.incarnation)) continue;
      if (await this.#writeTerminal(job.id, job.incarnation)) written++;
    }
    if (written > 0) this.#log.warn({ written }, 'terminal status updates written after a restart: the server had stopped before it wrote them');
    await this.#prune();
    this.#reconciled = true;
  }

  /** The baseline of a fresh outbox: every finished job the ledger does not have is marked, not published. */
  async #settle(): Promise<void> {
    const jobs = this.#service.knownJobs().filter((job) => isTerminal(job.state));
    let next = 0;
    let settled = 0;
    const worker = async (): Promise<void> => {
      for (let i = next++; i < jobs.length && !this.#closed; i = next++) {
        const job = jobs[i]!;
        await this.#locks.run(job.id, async () => {
          // A job the listener has heard of since the feed opened finished now: its update is
          // the listener's to write. The record is in memory a few microtasks before the
          // listener is called: let those run first.
          await new Promise<void>((resolve) => setImmediate(resolve));
          if (this.#heard.has(job.id) || this.#outbox.isMarked(job.id, job.incarnation)) return;
          await this.#outbox.settle(job.id, job.incarnation);
          settled++;
        });
      }
    };
    await Promise.all(Array.from({ length: Math.min(SETTLE_CONCURRENCY, jobs.length) }, worker));
    if (this.#closed) return;
    await this.#outbox.markInitialized();
    this.#heard.clear();
    this.#log.info({ jobs: settled }, 'new status outbox: jobs that finished before it existed are marked delivered, not published');
  }

  async #prune(): Promise<void> {
    this.#lastPrune = Date.now();
    const pruned = await this.#outbox.prune((jobId, incarnation) => this.#service.knownJob(jobId)?.incarnation === incarnation);
    if (pruned > 0) this.#log.info({ pruned }, 'status outbox ledger: forgotten jobs pruned');
  }

  // ---------------------------------------------------------------- draining

  #tick(): void {
    if (this.#closed) return;
    this.#waiting = false;
    if (this.#unwritten.size > 0 && !this.#retrying) {
      this.#retrying = true;
      this.#track(
        (async () => {
          for (const { jobId, incarnation } of [...this.#unwritten.values()]) await this.#writeTerminal(jobId, incarnation);
        })().finally(() => {
          this.#retrying = false;
        }),
      );
    }
    if (this.#reconciled && Date.now() - this.#lastPrune >= PRUNE_EVERY_MS) this.#track(this.#prune());
    this.#schedule();
  }

  #schedule(): void {
    if (this.#publisher === undefined || this.#closed || this.#waiting || this.#outbox.size === 0) return;
    if (this.#draining !== undefined) {
      this.#again = true;
      return;
    }
    this.#again = false;
    this.#draining = this.#drain(this.#publisher)
      .catch((error: unknown) => {
        this.#waiting = true;
        this.#log.error({ err: error }, 'status outbox drain failed: tried again at the next drain interval');
      })
      .finally(() => {
        this.#draining = undefined;
        if (this.#again) this.#schedule();
      });
  }

  async #drain(publisher: StatusPublisher): Promise<void> {
    for (;;) {
      this.#again = false;
      if (this.#closed || this.#waiting) return;
      if (!publisher.ready) {
        this.#waiting = true;
        return;
      }
      const batch = this.#nextBatch();
      if (batch.length === 0) return;
      const loaded = await Promise.all(batch.map(async (pending) => ({ pending, entry: await this.#load(pending) })));
      // Started here, in outbox order, before anything is awaited: the transport sends them in that order.
      const publishing = loaded.flatMap(({ pending, entry }) => (entry === undefined ? [] : [{ pending, done: publishOne(publisher, entry) }]));
      const results = await Promise.allSettled(publishing.map(async ({ done }) => done));
      let failure: unknown;
      const confirmed: PendingEntry[] = [];
      results.forEach((result, i) => {
        if (result.status === 'fulfilled') confirmed.push(publishing[i]!.pending);
        else failure ??= result.reason;
      });
      await Promise.all(
        confirmed.map(async (pending) =>
          this.#outbox.remove(pending).catch((error: unknown) => {
            failure ??= error;
            this.#log.error({ jobId: pending.jobId, err: error }, 'status outbox: published entry not removed (it will be published again)');
          }),
        ),
      );
      if (failure !== undefined) {
        this.#waiting = true;
        this.#log.warn({ pending: this.#outbox.size, reason: messageOf(failure) }, 'status update not published: kept, tried again at the next drain interval or reconnect');
        return;
      }
    }
  }

  /**
   * The next entries to publish together: in outbox order, the first pending entry of each job
   * among the first `BATCH_SCAN` (a job's later entries wait for its earlier one's confirm).
   */
  #nextBatch(): PendingEntry[] {
    const batch: PendingEntry[] = [];
    const jobs = new Set<string>();
    let scanned = 0;
    for (const pending of this.#outbox.entries()) {
      if (batch.length >= MAX_IN_FLIGHT || scanned++ >= BATCH_SCAN) break;
      if (jobs.has(pending.jobId)) continue;
      jobs.add(pending.jobId);
      batch.push(pending);
    }
    return batch;
  }

  /** The entry to publish, or undefined if it was unreadable (set aside; a terminal one is written again). */
  async #load(pending: PendingEntry): Promise<OutboxEntry | undefined> {
    const entry = await this.#outbox.load(pending);
    if (entry === undefined && pending.terminal && !pending.requested) {
      this.#outbox.unmark(pending.jobId, pending.incarnation);
      this.#unwritten.set(`${pending.jobId}/${pending.incarnation}`, { jobId: pending.jobId, incarnation: pending.incarnation });
    }
    return entry;
  }

  #track(task: Promise<void>): void {
    const handled = task.catch((error: unknown) => this.#log.error({ err: error }, 'status feed task failed'));
    this.#tasks.add(handled);
    void handled.finally(() => this.#tasks.delete(handled));
  }
}

/** Call `publish` now (a synchronous throw becomes a rejection). */
async function publishOne(publisher: StatusPublisher, entry: OutboxEntry): Promise<void> {
  await publisher.publish(entry);
}
