/**
 * Server-side transfers in worker threads: stage-in GETs (http-get.ts) and stage-out POSTs
 * (http-post.ts) run in `transfer-worker.ts`, taken from a small pool, one transfer per worker at
 * a time. A transfer's socket buffers then live in the worker's small heap (in the server's main
 * heap they set off a mark-compact every 15–20 MiB), its synchronous file reads and writes block
 * only the worker, and a busy server's event loop does not slow the transfer. The staging policy
 * stays in the main thread: the worker sends each URL and each resolved address here to be checked
 * (`check` messages) before it connects.
 */
import { Worker } from 'node:worker_threads';
import { JobRefused } from '../errors.js';
import type { AttemptResult, UrlGate } from './http-get.js';
import { HttpStatusError, PermanentError } from './retry.js';

/**
 * One attempt (retries are the caller's, so a transfer waiting to retry holds no worker): a GET into
 * `dest` (fetchOnce), or a POST of the open file `fd` (postFile; the caller keeps it open
 * until the transfer ends).
 */
export type TransferOrder =
  | {
    readonly kind: 'get';
    readonly url: string;
    readonly dest: string;
    readonly maxBytes: number;
    readonly idleTimeoutMs: number | undefined;
  }
  | {
    readonly kind: 'post';
    readonly url: string;
    readonly fd: number;
    readonly size: number;
    readonly filename: string;
    readonly idleTimeoutMs: number | undefined;
  };

export interface SerializedError {
  readonly name: string;
  readonly message: string;
  readonly status?: number;
  readonly code?: string;
}

/** Main thread → worker: a transfer to run, the answer to a policy check, or abort. */
export type ToWorker =
  | { readonly t: 'start'; readonly order: TransferOrder }
  | { readonly t: 'abort' }
  | { readonly t: 'checked'; readonly id: number; readonly url?: string; readonly error?: SerializedError };

/** Worker → main thread (`result` is null for a POST). */
export type FromWorker =
  | { readonly t: 'check'; readonly id: number; readonly kind: 'url'; readonly text: string }
  | { readonly t: 'check'; readonly id: number; readonly kind: 'address'; readonly url: string; readonly address: string }
  | { readonly t: 'done'; readonly result: AttemptResult | null }
  | { readonly t: 'fail'; readonly error: SerializedError };

/** An error as it crosses between threads: its class (the ones staging tells apart), message, status and code. */
export function serializeError(error: unknown): SerializedError {
  if (!(error instanceof Error)) return { name: 'Error', message: String(error) };
  const status = error instanceof HttpStatusError ? error.status : undefined;
  const code = (error as NodeJS.ErrnoException).code;
  return { name: error.name, message: error.message, ...(status === undefined ? {} : { status }), ...(typeof code === 'string' ? { code } : {}) };
}

export function deserializeError(e: SerializedError): Error {
  switch (e.name) {
    case 'JobRefused':
      return new JobRefused(e.message);
    case 'PermanentError':
      return new PermanentError(e.message);
    case 'HttpStatusError':
      return new HttpStatusError(e.status ?? 0, e.message);
    default: {
      const error: Error & { code?: string } = new Error(e.message);
      error.name = e.name;
      if (e.code !== undefined) error.code = e.code;
      return error;
    }
  }
}

/** Transfers running at once, server-wide (`staging_max_transfers`): each holds a worker thread. */
export const DEFAULT_MAX_TRANSFERS = 16;
let maxTransfers = DEFAULT_MAX_TRANSFERS;
let runningTransfers = 0;

interface Waiter {
  readonly start: () => void;
}

/**
 * Transfers waiting for a worker, by client, served round-robin (a client's first waiter, then the
 * next client's): one client's backlog never keeps another client's transfer waiting behind all of it.
 */
const waiting = new Map<string, Waiter[]>();

/** Set the server-wide limit (at startup; waiting transfers start at once if it rose). */
export function setMaxTransfers(n: number): void {
  maxTransfers = Number.isFinite(n) ? Math.max(1, Math.floor(n)) : DEFAULT_MAX_TRANSFERS;
  dispatch();
}

/** Transfers running and waiting now (for tests and /healthz-like reports). */
export function transferCounts(): { running: number; waiting: number; max: number } {
  let queued = 0;
  for (const q of waiting.values()) queued += q.length;
  return { running: runningTransfers, waiting: queued, max: maxTransfers };
}

function dispatch(): void {
  while (runningTransfers < maxTransfers) {
    const next = waiting.entries().next();
    if (next.done === true) return;
    const [key, queue] = next.value;
    const waiter = queue.shift() as Waiter;
    // This client goes to the back of the round.
    waiting.delete(key);
    if (queue.length > 0) waiting.set(key, queue);
    runningTransfers++;
    waiter.start();
  }
}

/** Wait for a transfer slot (round-robin by `client`); resolves with its release. An abort while waiting rejects and takes no slot. */
function acquire(client: string, signal: AbortSignal): Promise<() => void> {
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    runningTransfers--;
    dispatch();
  };
  if (runningTransfers < maxTransfers && waiting.size === 0) {
    runningTransfers++;
    return Promise.resolve(release);
  }
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      const queue = waiting.get(client);
      const i = queue?.indexOf(waiter) ?? -1;
      if (queue !== undefined && i >= 0) {
        queue.splice(i, 1);
        if (queue.length === 0) waiting.delete(client);
      }
      reject(signal.reason);
    };
    const waiter: Waiter = {
      start: () => {
        signal.removeEventListener('abort', onAbort);
        resolve(release);
      },
    };
    signal.addEventListener('abort', onAbort, { once: true });
    const queue = waiting.get(client);
    if (queue === undefined) waiting.set(client, [waiter]);
    else queue.push(waiter);
  });
}

/** After an abort, how long a worker may take to stop before it is terminated. */
const WORKER_STOP_GRACE_MS = 10_000;
/** Idle workers kept for the next transfers (a worker takes ~37 ms to start), and for how long. */
const IDLE_WORKERS_KEPT = 4;
const IDLE_WORKER_MS = 30_000;

const idleWorkers: { worker: Worker; timer: NodeJS.Timeout }[] = [];

function takeWorker(): Worker {
  const idle = idleWorkers.pop();
  if (idle !== undefined) {
    clearTimeout(idle.timer);
    idle.worker.ref();
    return idle.worker;
  }
  return new Worker(new URL('./transfer-worker.js', import.meta.url));
}

function giveBack(worker: Worker): void {
  worker.removeAllListeners('message');
  worker.removeAllListeners('error');
  worker.removeAllListeners('exit');
  if (idleWorkers.length >= IDLE_WORKERS_KEPT) {
    void worker.terminate();
    return;
  }
  worker.unref();
  // An idle worker that fails is dropped (its 'exit' below), never an unhandled 'error' event.
  worker.on('error', () => undefined);
  const entry = {
    worker,
    timer: setTimeout(() => {
      const i = idleWorkers.indexOf(entry);
      if (i >= 0) idleWorkers.splice(i, 1);
      void worker.terminate();
    }, IDLE_WORKER_MS),
  };
  entry.timer.unref();
  // A worker that dies while idle is dropped from the pool.
  worker.once('exit', () => {
    const i = idleWorkers.indexOf(entry);
    if (i >= 0) idleWorkers.splice(i, 1);
    clearTimeout(entry.timer);
  });
  idleWorkers.push(entry);
}

/**
 * Run `fn` holding one of the server-wide transfer slots (waiting, round-robin, in `client`'s
 * queue). `signal` aborts the wait; the slot is released when `fn` settles.
 */
export async function withTransferSlot<T>(client: string, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
  signal.throwIfAborted();
  const release = await acquire(client, signal);
  try {
    return await fn();
  } finally {
    release();
  }
}

/**
 * Run `order` in a pooled worker (inside `withTransferSlot`). Policy checks are answered from
 * `gate`; `signal` aborts the transfer. Resolves once the worker has finished with the transfer
 * (for a POST: no longer reads the caller's fd), or has been terminated.
 */
export async function runInWorker(order: TransferOrder, gate: UrlGate, signal: AbortSignal): Promise<AttemptResult | null> {
  signal.throwIfAborted();
  const worker = takeWorker();
  const send = (message: ToWorker): void => worker.postMessage(message);
  let reusable = true;
  let killer: NodeJS.Timeout | undefined;
  const onAbort = (): void => {
    reusable = false;
    send({ t: 'abort' });
    killer = setTimeout(() => void worker.terminate(), WORKER_STOP_GRACE_MS);
    killer.unref();
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    return await new Promise<AttemptResult | null>((resolve, reject) => {
      let settled = false;
      worker.on('message', (message: FromWorker) => {
        switch (message.t) {
          case 'check':
            void (async () => {
              try {
                if (message.kind === 'url') send({ t: 'checked', id: message.id, url: (await gate.checkUrl(message.text)).href });
                else {
                  await gate.checkAddress(new URL(message.url), message.address);
                  send({ t: 'checked', id: message.id });
                }
              } catch (error) {
                send({ t: 'checked', id: message.id, error: serializeError(error) });
              }
            })();
            return;
          case 'done':
            settled = true;
            resolve(message.result);
            return;
          case 'fail':
            settled = true;
            reject(deserializeError(message.error));
            return;
        }
      });
      worker.on('error', (error) => {
        reusable = false;
        settled = true;
        reject(error);
      });
      worker.on('exit', (code) => {
        reusable = false;
        if (settled) return;
        reject(signal.aborted ? signal.reason : new Error(`the transfer worker stopped (exit code ${code})`));
      });
      send({ t: 'start', order });
    });
  } finally {
    signal.removeEventListener('abort', onAbort);
    if (killer !== undefined) clearTimeout(killer);
    if (reusable) giveBack(worker);
    else await worker.terminate();
  }
}
