/**
 * The stage-in transport: GET a file from Galaxy's job-files API into the job directory.
 *
 * The body streams into `<dir>/.<name>.stage-in.part` (memory stays flat whatever the size) and is
 * renamed into place once complete, so the job never sees a partial file under its real name. An
 * interrupted transfer resumes from the partial file's size with `Range` when the endpoint answers
 * 206 (after a retry, or after a restart of the server), and starts over when it answers 200.
 * Every URL, the first and each redirect target, passes the staging policy, and the address a
 * host name resolves to is checked and is the one connected to (a custom `lookup`).
 */
import * as dns from 'node:dns';
import { constants as fsc, writeSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { LookupFunction } from 'node:net';
import * as path from 'node:path';
import type { RetryConfig } from '../config/types.js';
import { JobRefused } from '../errors.js';
import { Http1Get, type Http1Response } from './http1.js';
import { MAX_REDIRECTS, loggableUrl } from './policy.js';
import { HttpStatusError, PermanentError, withRetries } from './retry.js';
import { runInWorker, withTransferSlot } from './transfer-pool.js';

/** A connection that sends nothing for this long is dropped (and retried like any connection error). */
const DEFAULT_IDLE_TIMEOUT_MS = 120_000;
const PARTIAL_SUFFIX = '.stage-in.part';

/**
 * What a transfer asks of the staging policy: a StagingPolicy, or (in a transfer's worker thread)
 * a proxy that asks the main thread's StagingPolicy.
 */
export interface UrlGate {
  checkUrl(text: unknown): URL | Promise<URL>;
  checkAddress(url: URL, address: string): void | Promise<void>;
}

export interface GetOptions {
  readonly policy: UrlGate;
  readonly retry: RetryConfig;
  readonly signal: AbortSignal;
  /** Hears of each retry (a pino Logger). */
  readonly log: { warn(obj: Record<string, unknown>, msg: string): void };
  /** Largest file accepted, in bytes; 0 = no limit. */
  readonly maxBytes: number;
  readonly idleTimeoutMs?: number;
  /** Whose transfer this is (the job's client): transfers wait for a worker round-robin by client. */
  readonly client?: string | undefined;
}

/** What one attempt needs: no retry policy or log (a transfer worker runs single attempts). */
export type AttemptOptions = Pick<GetOptions, 'policy' | 'signal' | 'maxBytes' | 'idleTimeoutMs'>;

/** One attempt's outcome: the file's size, and the bytes that were already there (resumed with Range). */
export interface AttemptResult {
  readonly bytes: number;
  readonly resumedFrom: number;
}

export interface TransferResult {
  readonly bytes: number;
  readonly ms: number;
  /** Bytes that were already there (resumed with Range) when the last attempt began. */
  readonly resumedFrom: number;
  readonly attempts: number;
}

/** Where a transfer to `dest` keeps its bytes until they are complete. */
export function partialPathFor(dest: string): string {
  return path.join(path.dirname(dest), `.${path.basename(dest)}${PARTIAL_SUFFIX}`);
}

/** Is this file name one of the partial files of a stage-in? */
export function isPartialName(name: string): boolean {
  return name.startsWith('.') && name.endsWith(PARTIAL_SUFFIX);
}

async function sizeOf(p: string): Promise<number> {
  try {
    const st = await fs.lstat(p);
    if (!st.isFile()) throw new PermanentError('a partial transfer file exists and is not a regular file');
    return st.size;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw error;
  }
}

/** A `lookup` that resolves, drops the addresses the policy refuses, and connects to one it allows. */
export function checkedLookup(url: URL, policy: UrlGate): LookupFunction {
  return (hostname, options, callback) => {
    const family = typeof options === 'object' && typeof options.family === 'number' ? options.family : 0;
    dns.lookup(hostname, { all: true, family }, (error, addresses) => {
      if (error !== null) {
        (callback as (e: Error) => void)(error);
        return;
      }
      void pick(addresses);
    });
    async function pick(addresses: dns.LookupAddress[]): Promise<void> {
      let refusal: unknown;
      const verdicts = await Promise.all(
        addresses.map(async (a) => {
          try {
            await policy.checkAddress(url, a.address);
            return true;
          } catch (e) {
            refusal = e;
            return false;
          }
        }),
      );
      const allowed = addresses.filter((_a, i) => verdicts[i] === true);
      const first = allowed[0];
      if (first === undefined) {
        (callback as (e: Error) => void)(refusal instanceof Error ? refusal : new JobRefused(`${hostname} has no address this server may connect to`));
        return;
      }
      if (typeof options === 'object' && options.all === true) {
        (callback as (e: null, a: dns.LookupAddress[]) => void)(null, allowed);
      } else {
        callback(null, first.address, first.family);
      }
    }
  };
}

function requestHeaders(offset: number): Record<string, string> {
  const headers: Record<string, string> = { 'user-agent': 'magnetar-staging', 'accept-encoding': 'identity' };
  if (offset > 0) headers['range'] = `bytes=${offset}-`;
  return headers;
}

/**
 * GET `url` from byte `offset` through Http1Get (one fixed read buffer; writeBodySync writes the
 * body synchronously, blocking the thread, so production runs this in a transfer worker thread).
 */
async function get(url: URL, offset: number, opts: AttemptOptions): Promise<{ request: Http1Get; response: Http1Response }> {
  const request = new Http1Get(url, {
    lookup: checkedLookup(url, opts.policy),
    signal: opts.signal,
    idleTimeoutMs: opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
    headers: requestHeaders(offset),
  });
  return { request, response: await request.response };
}

/** Http1Get's body into `handle` with a `writeSync` per read (closed at the end); what arrived before an error is on disk. */
async function writeBodySync(request: Http1Get, handle: fs.FileHandle, start: number, maxBytes: number): Promise<{ received: number; complete: boolean }> {
  let received = 0;
  try {
    return await request.readBody((chunk) => {
      if (maxBytes > 0 && start + received + chunk.length > maxBytes) throw new PermanentError(`the file is larger than the ${maxBytes} bytes allowed (max_upload_size)`);
      for (let written = 0; written < chunk.length; ) {
        const n = writeSync(handle.fd, chunk, written, chunk.length - written);
        if (n <= 0) throw new PermanentError(`short write to the job directory (${written} of ${chunk.length} bytes)`);
        written += n;
      }
      received += chunk.length;
    });
  } finally {
    await handle.close();
  }
}

/** `Content-Range: bytes a-b/total` → a and total (total undefined for `*`). */
function contentRange(header: string | undefined): { start: number | undefined; total: number | undefined } {
  const match = /^bytes (?:(\d{1,18})-\d{1,18}|\*)\/(\d{1,18}|\*)$/.exec(header?.trim() ?? '');
  if (match === null) return { start: undefined, total: undefined };
  return {
    start: match[1] === undefined ? undefined : Number(match[1]),
    total: match[2] === undefined || match[2] === '*' ? undefined : Number(match[2]),
  };
}

/** One attempt: follow redirects (within the policy), then stream the body into the partial file. */
async function attemptOnce(first: URL, partial: string, opts: AttemptOptions): Promise<number> {
  let url = first;
  for (let redirects = 0; ; ) {
    const offset = await sizeOf(partial);
    const { request, response } = await get(url, offset, opts);
    const status = response.status;
    if ([301, 302, 303, 307, 308].includes(status)) {
      request.discard();
      const location = response.headers.get('location');
      if (location === undefined) throw new PermanentError(`HTTP ${status} without a Location from ${loggableUrl(url)}`);
      if (++redirects > MAX_REDIRECTS) throw new PermanentError(`more than ${MAX_REDIRECTS} redirects from ${loggableUrl(first)}`);
      let next: URL;
      try {
        next = new URL(location, url);
      } catch {
        throw new PermanentError(`unparsable redirect from ${loggableUrl(url)}`);
      }
      url = await opts.policy.checkUrl(next.href);
      continue;
    }
    if (status === 416 && offset > 0) {
      request.discard();
      // The partial file may already be whole (a restart right before the rename).
      if (contentRange(response.headers.get('content-range')).total === offset) return offset;
      await fs.truncate(partial, 0);
      continue;
    }
    if (status !== 200 && status !== 206) {
      request.discard();
      throw new HttpStatusError(status, `HTTP ${status} from files endpoint ${loggableUrl(url)}`);
    }
    let start = 0;
    if (status === 206) {
      const range = contentRange(response.headers.get('content-range'));
      if (range.start !== offset) {
        request.discard();
        throw new PermanentError(`the files endpoint answered a range that does not start at byte ${offset}`);
      }
      start = offset;
    }
    const lengthHeader = response.headers.get('content-length');
    const expected = lengthHeader !== undefined && /^\d{1,18}$/.test(lengthHeader) ? Number(lengthHeader) : undefined;
    if (opts.maxBytes > 0 && expected !== undefined && start + expected > opts.maxBytes) {
      request.discard();
      throw new PermanentError(`the file is larger than the ${opts.maxBytes} bytes allowed (max_upload_size)`);
    }
    const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_NOFOLLOW | (start > 0 ? fsc.O_APPEND : fsc.O_TRUNC);
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(partial, flags, 0o644);
    } catch (error) {
      request.discard();
      throw error;
    }
    const { received, complete } = await writeBodySync(request, handle, start, opts.maxBytes);
    if (expected !== undefined && received !== expected) {
      throw new Error(`the files endpoint closed the transfer after ${received} of ${expected} bytes`);
    }
    if (!complete) throw new Error('the files endpoint closed the transfer before its end');
    return start + received;
  }
}

/**
 * One attempt to fetch `url` (already checked by the policy) into `dest`, which must not exist as
 * anything but a regular file: resumes from the partial file's size, renames it into place when
 * whole. What a transfer worker runs; the retries are the caller's.
 */
export async function fetchOnce(url: URL, dest: string, opts: AttemptOptions): Promise<AttemptResult> {
  const partial = partialPathFor(dest);
  const resumedFrom = await sizeOf(partial);
  const bytes = await attemptOnce(url, partial, opts);
  await fs.rename(partial, dest);
  return { bytes, resumedFrom };
}

/** Run `attempt` under `opts.retry` (each retry logged without the URL's query); the result counts the attempts and the time. */
async function retried(url: URL, opts: GetOptions, attempt: () => Promise<AttemptResult>): Promise<TransferResult> {
  const began = Date.now();
  let attempts = 0;
  const { bytes, resumedFrom } = await withRetries(
    opts.retry,
    opts.signal,
    async () => {
      attempts++;
      return attempt();
    },
    (error, wait) => {
      opts.log.warn({ url: loggableUrl(url), err: error instanceof Error ? error.message : String(error), retryInSeconds: wait }, 'stage-in transfer failed; retrying');
    },
  );
  return { bytes, ms: Date.now() - began, resumedFrom, attempts };
}

/**
 * Fetch `urlText` (checked by the policy) into `dest` in this thread (its writes block it: see
 * `get`). Retries transient failures per `opts.retry`, resuming from what arrived.
 */
export async function downloadToFile(urlText: string, dest: string, opts: GetOptions): Promise<TransferResult> {
  const url = await opts.policy.checkUrl(urlText);
  return retried(url, opts, () => fetchOnce(url, dest, opts));
}

/**
 * `downloadToFile` with each attempt in a transfer worker thread (transfer-pool.ts), with the same
 * behaviour (policy checks on the main thread's `opts.policy`, retries, Range resume, partial file
 * and rename, max bytes, abort) and the same error classes and messages. The transfer's buffers
 * never enter the main heap, its synchronous writes block only the worker, and between attempts
 * (the retry waits, here) it holds no worker and no transfer slot.
 */
export async function downloadInWorker(urlText: string, dest: string, opts: GetOptions): Promise<TransferResult> {
  const url = await opts.policy.checkUrl(urlText);
  opts.signal.throwIfAborted();
  const order = { kind: 'get', url: url.href, dest, maxBytes: opts.maxBytes, idleTimeoutMs: opts.idleTimeoutMs } as const;
  return retried(url, opts, async () => {
    const result = await withTransferSlot(opts.client ?? '', opts.signal, () => runInWorker(order, opts.policy, opts.signal));
    if (result === null) throw new Error('the transfer worker answered a GET without its result');
    return result;
  });
}
