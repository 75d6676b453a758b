/**
 * The stage-out transport: one multipart POST (field `file`, as Galaxy's job-files API takes it)
 * of a job file to the files endpoint. Run in a transfer worker thread (transfer-pool.ts): the file
 * is read with `readSync` into four reused 256 KiB buffers, each refilled once the socket has
 * taken what it held, so reading the next piece overlaps sending the last and memory stays flat.
 */
import { randomBytes } from 'node:crypto';
import { readSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { checkedLookup, type UrlGate } from './http-get.js';
import { loggableUrl } from './policy.js';
import { HttpStatusError, PermanentError } from './retry.js';

const DEFAULT_IDLE_TIMEOUT_MS = 120_000;
/** A POST's read buffers, reused: a fresh buffer per read fed the collector (a mark-compact every ~20 MiB in the main heap). */
const POST_BUFFERS = 4;
const POST_BUFFER_SIZE = 256 * 1024;

export interface PostOptions {
  readonly policy: UrlGate;
  readonly signal: AbortSignal;
  readonly idleTimeoutMs?: number | undefined;
}

/**
 * POST `size` bytes of the open file `fd` (from offset 0) to `url` as field `file` named
 * `filename`. Resolves on a 2xx answer; an answer outside 2xx (also one sent before the body was
 * read, as an endpoint refusing a large POST does) is an HttpStatusError.
 */
export async function postFile(url: URL, fd: number, size: number, filename: string, opts: PostOptions): Promise<void> {
  const boundary = `----magnetar${randomBytes(12).toString('hex')}`;
  const head = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\nContent-Type: application/octet-stream\r\n\r\n`);
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const refusedWith = (status: number): HttpStatusError => new HttpStatusError(status, `HTTP ${status} from files endpoint ${loggableUrl(url)}`);
  const isOk = (status: number | undefined): boolean => status !== undefined && status >= 200 && status <= 299;
  const req = (url.protocol === 'https:' ? https : http).request(url, {
    method: 'POST',
    headers: {
      'user-agent': 'magnetar-staging',
      'content-type': `multipart/form-data; boundary=${boundary}`,
      'content-length': String(head.length + size + tail.length),
    },
    agent: false,
    lookup: checkedLookup(url, opts.policy),
    signal: opts.signal,
  });
  req.setTimeout(opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS, () => req.destroy(new Error('the files endpoint answered nothing for too long')));
  // An endpoint may refuse (413, 403) before it has read the body, then stop reading or close:
  // that answer ends the request at once, and it is the error.
  let early: http.IncomingMessage | undefined;
  const answered = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.on('response', (res) => {
      early = res;
      if (isOk(res.statusCode)) {
        resolve(res);
        return;
      }
      res.resume();
      reject(refusedWith(res.statusCode ?? 0));
      req.destroy();
    });
    req.on('error', reject);
  });
  const sent = (async () => {
    req.write(head);
    const sentBytes = await sendBody(req, fd, size);
    if (sentBytes !== size) throw new PermanentError(`the file changed size while it was sent (${sentBytes} of ${size} bytes)`);
    req.end(tail);
  })();
  // Whichever fails first is the error; a response ends the wait for the body only when sent.
  let res: http.IncomingMessage;
  try {
    [res] = await Promise.all([answered, sent.catch((error: unknown) => {
      req.destroy(error instanceof Error ? error : new Error(String(error)));
      throw error;
    })]);
  } catch (error) {
    const status = early?.statusCode;
    if (status !== undefined && !isOk(status)) throw refusedWith(status);
    throw error;
  }
  res.resume();
  if (!isOk(res.statusCode)) throw refusedWith(res.statusCode ?? 0);
}

/**
 * Send `size` bytes of `fd` as the request body through the reused buffers; resolves with the
 * bytes read. At most POST_BUFFERS pieces are queued on the socket: a buffer is refilled only when
 * the write of what it held has completed (its callback), not on `drain` (the request's 16 KiB
 * high-water mark made that a full stop after every piece, with no read overlapping the send).
 */
async function sendBody(req: http.ClientRequest, fd: number, size: number): Promise<number> {
  // A destroyed request may never call its write callbacks: its close ends every wait.
  const closed = new Promise<never>((_, reject) => {
    req.once('close', () => reject(new Error('the files endpoint closed the connection')));
  });
  closed.catch(() => undefined);
  const buffers = Array.from({ length: POST_BUFFERS }, () => Buffer.allocUnsafe(POST_BUFFER_SIZE));
  const flushed: Promise<void>[] = [];
  let sent = 0;
  for (let i = 0; sent < size; i++) {
    const slot = i % POST_BUFFERS;
    const buffer = buffers[slot] as Buffer;
    const pending = flushed[slot];
    if (pending !== undefined) await Promise.race([pending, closed]);
    if (req.destroyed) throw new Error('the files endpoint closed the connection');
    const bytesRead = readSync(fd, buffer, 0, Math.min(POST_BUFFER_SIZE, size - sent), sent);
    if (bytesRead === 0) break;
    const done = new Promise<void>((resolve, reject) => {
      req.write(buffer.subarray(0, bytesRead), (error) => (error ? reject(error) : resolve()));
    });
    done.catch(() => undefined);
    flushed[slot] = done;
    sent += bytesRead;
  }
  await Promise.race([Promise.all(flushed), closed]);
  return sent;
}
