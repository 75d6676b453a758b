/**
 * A small Galaxy job-files API (`/api/jobs/<id>/files?job_key=…&path=…&file_type=…`) for
 * `magnetar check --remote-transfer` and the staging benchmark: GET of the files it was given
 * (streamed from disk, with `Range`), and POST (what a server's stage-out sends: a multipart body
 * with field `file`), whose `file` field is streamed to disk, bounded in size. It serves only the
 * paths registered with `serve()`, takes POSTs only for the paths `acceptPost` allows, and only
 * with the right job key: nothing else on the checking machine is reachable or writable.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface ReceivedPost {
  /** The Galaxy path the server pushed to. */
  readonly path: string;
  readonly fileType: string | null;
  /** Where the contents of the `file` field were stored ('' without a postDir). */
  readonly file: string;
  /** Size of the `file` field's contents. */
  readonly bytes: number;
}

/** A POST the endpoint answered with an error, and why (for the check's one-line reason). */
export interface RefusedPost {
  readonly path: string | null;
  readonly fileType: string | null;
  readonly status: number;
  readonly reason: string;
}

export interface LocalFilesEndpoint {
  /** Galaxy's `files_endpoint` for `jobId` (the job key is in its query, as Galaxy puts it). */
  filesEndpoint(jobId: string): string;
  /** The URL Galaxy's client builds for a `remote_transfer` input: files_endpoint + `&path=…&file_type=…`. */
  inputUrl(jobId: string, galaxyPath: string, fileType: string): string;
  /** Serve the local file `localPath` as Galaxy path `galaxyPath`. */
  serve(galaxyPath: string, localPath: string): void;
  /** GET requests answered, by status (200, 206, 403, 404, 416 …). */
  readonly gets: Map<number, number>;
  /** Bytes sent by GET answers. */
  readonly bytesSent: () => number;
  /** POSTs taken, in the order they completed. */
  readonly posts: readonly ReceivedPost[];
  /** POSTs answered with an error (bad key, unexpected path, too large, broken body). */
  readonly refused: readonly RefusedPost[];
  /** Where the server must connect (base URL, no trailing slash). */
  readonly base: string;
  close(): Promise<void>;
}

export interface LocalFilesEndpointOptions {
  /** Address to listen on (default 127.0.0.1). */
  readonly host?: string | undefined;
  /** Port (default 0: a free one). */
  readonly port?: number | undefined;
  /** Host name or address put in the URLs the server is sent (default: `host`). */
  readonly advertise?: string | undefined;
  /** Directory for POSTed bodies (none: POSTs are read and discarded, still answered 200). */
  readonly postDir?: string | undefined;
  /** Largest POST body taken (default 4 GiB); larger ones are refused with 413. */
  readonly maxPostBytes?: number | undefined;
  /**
   * Which Galaxy paths (and file types) a POST may go to; others are refused with 403 and not
   * read. Default: any path.
   */
  readonly acceptPost?: ((galaxyPath: string, fileType: string | null) => boolean) | undefined;
}

/** A multipart body that is not what a stage-out sends (the reason is for the sender). */
export class MultipartError extends Error {}

/** Longest part header block, preamble, and boundary accepted. */
const MAX_PART_HEADERS = 16 * 1024;
const MAX_PREAMBLE = 16 * 1024;
const MAX_BOUNDARY = 200;

/** The `boundary` parameter of a multipart/form-data content type (no regex over client text). */
export function multipartBoundary(contentType: string | undefined): string | undefined {
  if (contentType === undefined || contentType.length > 1024) return undefined;
  const [type, ...params] = contentType.split(';');
  if (type?.trim().toLowerCase() !== 'multipart/form-data') return undefined;
  for (const param of params) {
    const eq = param.indexOf('=');
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'boundary') continue;
    let value = param.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    return value.length > 0 && value.length <= MAX_BOUNDARY && !/[\r\n]/.test(value) ? value : undefined;
  }
  return undefined;
}

/** The `name` of a part from its header block (Content-Disposition: form-data; name="…"). */
function partName(headers: string): string | undefined {
  for (const line of headers.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon < 0 || line.slice(0, colon).trim().toLowerCase() !== 'content-disposition') continue;
    for (const param of line.slice(colon + 1).split(';').slice(1)) {
      const eq = param.indexOf('=');
      if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'name') continue;
      const value = param.slice(eq + 1).trim();
      return value.startsWith('"') && value.endsWith('"') && value.length >= 2 ? value.slice(1, -1) : value;
    }
  }
  return undefined;
}

/**
 * Streams the contents of the multipart field `field` out of `source` (other parts are read and
 * dropped), holding at most one chunk plus a boundary's length in memory. Throws MultipartError
 * when the body has no such field or ends before the field's closing boundary.
 */
export async function* multipartField(source: AsyncIterable<Buffer>, boundary: string, field: string): AsyncGenerator<Buffer> {
  const opening = Buffer.from(`--${boundary}`);
  const closing = Buffer.from(`\r\n--${boundary}`);
  let buf: Buffer = Buffer.alloc(0);
  let state: 'delimiter' | 'headers' | 'body' | 'done' = 'delimiter';
  let wanted = false;
  let found = false;
  let skipped = 0;
  for await (const chunk of source) {
    if (state === 'done') continue;
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    for (;;) {
      if (state === 'delimiter') {
        // The next `--boundary`, then `\r\n` (a part follows) or `--` (the end).
        const at = buf.indexOf(opening);
        if (at < 0 || buf.length < at + opening.length + 2) {
          skipped += at < 0 ? Math.max(0, buf.length - opening.length) : 0;
          if (skipped > MAX_PREAMBLE) throw new MultipartError('no multipart boundary where one was expected');
          if (at < 0 && buf.length > opening.length) buf = buf.subarray(buf.length - opening.length);
          break;
        }
        const after = buf.subarray(at + opening.length, at + opening.length + 2).toString('latin1');
        buf = buf.subarray(at + opening.length + 2);
        skipped = 0;
        if (after === '--') {
          state = 'done';
          break;
        }
        if (after !== '\r\n') throw new MultipartError('a multipart boundary is not followed by CRLF');
        state = 'headers';
      } else if (state === 'headers') {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (buf.length > MAX_PART_HEADERS) throw new MultipartError('the headers of a part are too long');
          break;
        }
        wanted = !found && partName(buf.subarray(0, end).toString('latin1')) === field;
        buf = buf.subarray(end + 4);
        state = 'body';
      } else {
        const at = buf.indexOf(closing);
        if (at < 0) {
          // Keep what could be the start of the closing boundary.
          const keep = Math.min(buf.length, closing.length - 1);
          if (wanted && buf.length > keep) yield buf.subarray(0, buf.length - keep);
          buf = buf.subarray(buf.length - keep);
          break;
        }
        if (wanted && at > 0) yield buf.subarray(0, at);
        if (wanted) found = true;
        wanted = false;
        buf = buf.subarray(at + 2);
        state = 'delimiter';
      }
    }
  }
  if (!found) throw new MultipartError(state === 'body' || state === 'headers' ? 'the body ended inside a part' : `no "${field}" field in the multipart body`);
}

const MAX_URL = 16 * 1024;
const RANGE = /^bytes=(\d{1,15})-(\d{0,15})$/;

function bracket(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

export async function startLocalFilesEndpoint(options: LocalFilesEndpointOptions = {}): Promise<LocalFilesEndpoint> {
  const jobKey = randomBytes(16).toString('hex');
  const served = new Map<string, string>();
  const gets = new Map<number, number>();
  const posts: ReceivedPost[] = [];
  const refused: RefusedPost[] = [];
  const maxPost = options.maxPostBytes ?? 4 * 1024 ** 3;
  let sent = 0;
  let postCount = 0;

  const server = http.createServer((req, res) => {
    const answer = (status: number, text: string, headers: Record<string, string> = {}): void => {
      if (req.method === 'GET') gets.set(status, (gets.get(status) ?? 0) + 1);
      res.writeHead(status, { 'content-type': 'text/plain', ...headers });
      res.end(text);
    };
    if ((req.url ?? '').length > MAX_URL) return answer(414, 'URL too long');
    const url = new URL(req.url ?? '/', 'http://files-endpoint');
    const galaxyPath = url.searchParams.get('path');
    const parts = url.pathname.split('/');
    if (parts.length !== 5 || parts[1] !== 'api' || parts[2] !== 'jobs' || parts[4] !== 'files') return answer(404, 'no such route');
    if (url.searchParams.get('job_key') !== jobKey) {
      if (req.method === 'POST') {
        refused.push({ path: galaxyPath, fileType: url.searchParams.get('file_type'), status: 403, reason: 'bad job key' });
        req.resume();
      }
      return answer(403, 'bad job key');
    }
    if (galaxyPath === null) return answer(400, 'path missing');

    if (req.method === 'POST') {
      const fileType = url.searchParams.get('file_type');
      // A refused body is read and dropped (never stored), so that the sender sees the status
      // rather than a connection closed under its upload.
      const refuse = (status: number, reason: string): void => {
        refused.push({ path: galaxyPath, fileType, status, reason });
        req.resume();
        answer(status, reason);
      };
      if (options.acceptPost !== undefined && !options.acceptPost(galaxyPath, fileType)) return refuse(403, 'not an output this endpoint expects');
      const length = Number(req.headers['content-length'] ?? 'NaN');
      if (Number.isFinite(length) && length > maxPost) return refuse(413, `the body (${length} bytes) is larger than ${maxPost} bytes`);
      const boundary = multipartBoundary(req.headers['content-type']);
      if (boundary === undefined) return refuse(400, 'not multipart/form-data with a boundary');
      let bytes = 0;
      let tooLarge = false;
      const counter = async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
        for await (const chunk of source) {
          bytes += chunk.length;
          if (bytes > maxPost) {
            tooLarge = true;
            throw new Error('POST body too large');
          }
          yield chunk;
        }
      };
      let contents = 0;
      const field = async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
        for await (const chunk of multipartField(source, boundary, 'file')) {
          contents += chunk.length;
          yield chunk;
        }
      };
      const file = options.postDir === undefined ? undefined : path.join(options.postDir, `post-${postCount++}`);
      const sink = file === undefined ? new Writable({ write: (_c, _e, cb) => cb() }) : createWriteStream(file, { flags: 'wx' });
      pipeline(req, counter, field, sink).then(
        () => {
          posts.push({ path: galaxyPath, fileType, file: file ?? '', bytes: contents });
          answer(200, '{"message": "ok"}');
        },
        async (error: unknown) => {
          if (file !== undefined) await fs.rm(file, { force: true });
          if (res.headersSent) return;
          // The request stream is destroyed by now: the connection goes with the answer.
          res.setHeader('connection', 'close');
          if (tooLarge) refuse(413, `the body is larger than ${maxPost} bytes`);
          else if (error instanceof MultipartError) refuse(400, error.message);
          else refuse(400, 'the upload broke off');
        },
      );
      return;
    }
    if (req.method !== 'GET') return answer(405, 'method not allowed');
    const local = served.get(galaxyPath);
    if (local === undefined) return answer(404, 'no such file');
    void (async () => {
      let size: number;
      try {
        size = (await fs.stat(local)).size;
      } catch {
        return answer(404, 'no such file');
      }
      let start = 0;
      let end = size - 1;
      let status = 200;
      const headers: Record<string, string> = { 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes' };
      const range = RANGE.exec(req.headers.range ?? '');
      if (range !== null) {
        start = Number(range[1]);
        if (range[2] !== '') end = Math.min(end, Number(range[2]));
        if (start >= size || end < start) return answer(416, '', { 'content-range': `bytes */${size}` });
        status = 206;
        headers['content-range'] = `bytes ${start}-${end}/${size}`;
      }
      headers['content-length'] = String(size === 0 ? 0 : end - start + 1);
      gets.set(status, (gets.get(status) ?? 0) + 1);
      res.writeHead(status, headers);
      if (size === 0) return void res.end();
      const stream = createReadStream(local, { start, end, highWaterMark: 1024 * 1024 });
      stream.on('data', (chunk) => {
        sent += chunk.length;
      });
      await pipeline(stream, res).catch(() => res.destroy());
    })();
  });
  server.requestTimeout = 0;
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const base = `http://${bracket(options.advertise ?? host)}:${port}`;
  const filesEndpoint = (jobId: string): string => `${base}/api/jobs/${encodeURIComponent(jobId)}/files?job_key=${jobKey}`;
  return {
    base,
    filesEndpoint,
    inputUrl: (jobId, galaxyPath, fileType) => `${filesEndpoint(jobId)}&${new URLSearchParams({ path: galaxyPath, file_type: fileType }).toString()}`,
    serve: (galaxyPath, localPath) => void served.set(galaxyPath, localPath),
    gets,
    bytesSent: () => sent,
    posts,
    refused,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
