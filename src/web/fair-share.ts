/**
 * Fair sharing of the event loop between clients (`fair_share`).
 *
 * One client sending cheap, valid requests back to back (status polls for jobs that do not exist,
 * downloads that match nothing, submits just under every bound) is never refused, but it can take
 * most of the single event loop and slow every other client down. While the loop is busy and more
 * than one client address is active, a request from an address that has recently used more than
 * its share waits a little before it is handled; a client that waits for its answers (every HTTP
 * client does, one request per connection) then slows down to its share, and the others get theirs.
 *
 * - Shares are counted in cost units: one per request plus one per 64 KiB of request line and
 *   announced body, smoothed over a few windows.
 * - Nobody waits while the loop is not busy, or while only one address is active (one Galaxy, or a
 *   proxy not listed in `trusted_proxies`, is never slowed down).
 * - A request waits at most {@link MAX_DEFERRALS} windows, and at most {@link MAX_WAITING} wait at
 *   once (beyond that, they go on at once): this only reorders work, it never drops or refuses any.
 */
import { performance } from 'node:perf_hooks';

/** Length of one accounting window. */
export const WINDOW_MS = 25;
/** Event-loop utilization over a window above which the loop counts as busy. */
export const BUSY_UTILIZATION = 0.6;
/** Windows a request may be held back at most (so at most ~200 ms). */
export const MAX_DEFERRALS = 8;
/** Requests held back at once, over all clients. */
export const MAX_WAITING = 4096;
/** Weight of the newest window in a client's smoothed share. */
const SMOOTHING = 0.3;
/** A client may use this much more than an even share before it waits. */
const SLACK = 1.25;
/** Smoothed shares below this are forgotten (the client is no longer active). */
const FORGET_BELOW = 0.01;

/** What a request costs in share units: 1, plus one per 64 KiB it brings. */
export function requestCost(urlLength: number, contentLength: number): number {
  return 1 + Math.floor((urlLength + contentLength) / 65_536);
}

export interface FairShareOptions {
  /** Event-loop utilization (0..1) since the previous call; tests pass their own. */
  readonly utilization?: () => number;
  /** Told, at most every 10 s per client, that a client's requests are being held back. */
  readonly onHold?: (client: string) => void;
}

interface Waiting {
  readonly go: () => void;
  deferrals: number;
}

export class FairShare {
  /** Cost units spent per client in the current window. */
  #current = new Map<string, number>();
  /** Smoothed cost units per window, per client. */
  readonly #smoothed = new Map<string, number>();
  /** Requests held back, in arrival order per client. */
  readonly #waiting = new Map<string, Waiting[]>();
  #waitingCount = 0;
  #busy = false;
  /** Smoothed cost above which a client is over its share (set every window). */
  #fairLimit = Infinity;
  readonly #utilization: () => number;
  readonly #onHold: ((client: string) => void) | undefined;
  readonly #told = new Map<string, number>();
  readonly #timer: NodeJS.Timeout;

  constructor(options: FairShareOptions = {}) {
    this.#utilization = options.utilization ?? loopUtilization();
    this.#onHold = options.onHold;
    this.#timer = setInterval(() => this.#tick(), WINDOW_MS);
    this.#timer.unref();
  }

  /** Held-back requests right now (for tests and logs). */
  get waiting(): number {
    return this.#waitingCount;
  }

  /**
   * Count a request of `client` costing `cost` units, then run `go` now or after a short wait.
   * `go` is always run exactly once.
   */
  admit(client: string, cost: number, go: () => void): void {
    this.#current.set(client, (this.#current.get(client) ?? 0) + cost);
    const queue = this.#waiting.get(client);
    // A client with requests already waiting queues behind them (its order is kept).
    if (queue === undefined && !this.#overShare(client)) {
      go();
      return;
    }
    if (this.#waitingCount >= MAX_WAITING) {
      go();
      return;
    }
    this.#tell(client);
    const entry: Waiting = { go, deferrals: 0 };
    if (queue === undefined) this.#waiting.set(client, [entry]);
    else queue.push(entry);
    this.#waitingCount++;
  }

  close(): void {
    clearInterval(this.#timer);
    for (const queue of this.#waiting.values()) for (const entry of queue) entry.go();
    this.#waiting.clear();
    this.#waitingCount = 0;
  }

  /** Whether `client` should wait: the loop is busy, others are active, and it is over its share. */
  #overShare(client: string): boolean {
    return this.#busy && this.#smoothed.size >= 2 && (this.#smoothed.get(client) ?? 0) > this.#fairLimit;
  }

  #tell(client: string): void {
    if (this.#onHold === undefined) return;
    const now = Date.now();
    const last = this.#told.get(client);
    if (last !== undefined && now - last < 10_000) return;
    if (this.#told.size > 1000) this.#told.clear();
    this.#told.set(client, now);
    this.#onHold(client);
  }

  #tick(): void {
    this.#busy = this.#utilization() >= BUSY_UTILIZATION;
    for (const [client, value] of this.#smoothed) {
      const next = value * (1 - SMOOTHING) + (this.#current.get(client) ?? 0) * SMOOTHING;
      if (next < FORGET_BELOW && !this.#waiting.has(client)) this.#smoothed.delete(client);
      else this.#smoothed.set(client, next);
    }
    for (const [client, spent] of this.#current) {
      if (!this.#smoothed.has(client)) this.#smoothed.set(client, spent * SMOOTHING);
    }
    this.#current = new Map();
    let total = 0;
    for (const value of this.#smoothed.values()) total += value;
    this.#fairLimit = this.#smoothed.size === 0 ? Infinity : (SLACK * total) / this.#smoothed.size;
    this.#release();
  }

  /**
   * Let waiting requests go: all of a client that is no longer over its share, else the oldest one
   * of each client once it has waited {@link MAX_DEFERRALS} windows.
   */
  #release(): void {
    for (const [client, queue] of [...this.#waiting]) {
      const over = this.#overShare(client);
      while (queue.length > 0) {
        const head = queue[0]!;
        if (over && head.deferrals < MAX_DEFERRALS) break;
        queue.shift();
        this.#waitingCount--;
        head.go();
        if (over) break;
      }
      for (const entry of queue) entry.deferrals++;
      if (queue.length === 0) this.#waiting.delete(client);
    }
  }
}

/** The event loop's utilization since the previous call. */
function loopUtilization(): () => number {
  let last = performance.eventLoopUtilization();
  return () => {
    const now = performance.eventLoopUtilization();
    const since = performance.eventLoopUtilization(now, last);
    last = now;
    return since.utilization;
  };
}
