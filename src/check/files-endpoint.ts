/**
 * A small Galaxy job-files API (`/api/jobs/<id>/files?job_key=…&path=…&file_type=…`) for
 * `magnetar check --remote-transfer` and the staging benchmark: GET of the files it was given
 * (streamed from disk, with `Range`), and POST (what a server's stage-out sends: a multipart body
 * with field `file`) stored raw, bounded in size. It serves only the paths registered with
 * `serve()`, and only with the right job key: nothing else on the checking machine is reachable.
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
  /** The raw request body (multipart) as stored. */
  readonly file: string;
  readonly bytes: number;
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
  readonly posts: readonly ReceivedPost[];
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
  /** Largest POST body kept (default 4 GiB); larger ones are refused with 413. */
  readonly maxPostBytes?: number | undefined;
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
    if (url.searchParams.get('job_key') !== jobKey) return answer(403, 'bad job key');
    if (galaxyPath === null) return answer(400, 'path missing');

    if (req.method === 'POST') {
      const length = Number(req.headers['content-length'] ?? 'NaN');
      if (Number.isFinite(length) && length > maxPost) {
        res.setHeader('connection', 'close');
        return answer(413, 'too large');
      }
      let bytes = 0;
      const counter = async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
        for await (const chunk of source) {
          bytes += chunk.length;
          if (bytes > maxPost) throw new Error('POST body too large');
          yield chunk;
        }
      };
      const file = options.postDir === undefined ? undefined : path.join(options.postDir, `post-${postCount++}`);
      const sink = file === undefined ? new Writable({ write: (_c, _e, cb) => cb() }) : createWriteStream(file);
      pipeline(req, counter, sink).then(
        () => {
          posts.push({ path: galaxyPath, fileType: url.searchParams.get('file_type'), file: file ?? '', bytes });
          answer(200, '{"message": "ok"}');
        },
        () => {
          res.setHeader('connection', 'close');
          if (!res.headersSent) answer(400, 'upload broken or too large');
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
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
