/**
 * A streaming multipart sink for the staging section's stage-out half: a node http server on
 * 127.0.0.1 that accepts Galaxy-job-files-API-shaped POSTs (`/api/jobs/<id>/files?job_key=…&path=…`,
 * `multipart/form-data` with one field `file`) and streams the field's bytes to disk, never
 * buffering more than one socket chunk plus the closing boundary. The same sink takes `curl -F
 * file=@<src>` and the server's own stage-out POST, so both sides pay the same receiving cost.
 *
 * The check's files endpoint (src/check/files-endpoint.ts) caps POSTs at 64 MiB; this one has no
 * cap but the disk. The answer (200) is sent once the file is closed, so a POST timed to its
 * answer includes the sink's writes.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';

/** Largest part header block read before the file bytes start. */
const MAX_PART_HEAD = 16 * 1024;

export interface SinkPost {
  /** Galaxy path from the `path` query parameter. */
  readonly path: string;
  readonly fileType: string | null;
  /** Where the field's bytes were written. */
  readonly file: string;
  /** Bytes of the `file` field (the multipart framing not counted). */
  readonly bytes: number;
  /** Bytes of the whole request body. */
  readonly bodyBytes: number;
  /** Wall clock (ms since the epoch, fractional) of the first body byte and of the answer. */
  readonly firstByteAt: number;
  readonly answeredAt: number;
}

export interface PostSink {
  readonly base: string;
  /** The Galaxy files endpoint of job `jobId` (the action mapper's `files_endpoint`). */
  filesEndpoint(jobId: string): string;
  /** The URL a POST of `galaxyPath` goes to (what the server builds from the files endpoint). */
  postUrl(jobId: string, galaxyPath: string, fileType: string): string;
  readonly posts: readonly SinkPost[];
  /** Requests refused (wrong route, key, framing), with the reason. */
  readonly refused: readonly string[];
  close(): Promise<void>;
}

const wallMs = (): number => performance.timeOrigin + performance.now();

/**
 * Strip the multipart framing from `source`: the part head (read up to MAX_PART_HEAD, must name
 * field `file`), then the field's bytes, holding back the last `tail.length` bytes until the end,
 * where they must be the closing boundary. Counts the body's bytes into `counts`.
 */
function fieldBytes(boundary: string, counts: { body: number; firstByteAt: number }) {
  const opening = Buffer.from(`--${boundary}\r\n`);
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const tailNoCrlf = tail.subarray(0, tail.length - 2);
  return async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    let head: Buffer | undefined = Buffer.alloc(0);
    let carry = Buffer.alloc(0);
    for await (const chunk of source) {
      if (counts.body === 0) counts.firstByteAt = wallMs();
      counts.body += chunk.length;
      let data = chunk;
      if (head !== undefined) {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > MAX_PART_HEAD) throw new Error('no part head within 16 KiB');
          continue;
        }
        if (!head.subarray(0, opening.length).equals(opening)) throw new Error('the body does not open with the boundary');
        const partHead = head.subarray(opening.length, end).toString('latin1');
        if (!/^content-disposition:\s*form-data;\s*name="file"/im.test(partHead)) throw new Error('the first part is not field "file"');
        data = head.subarray(end + 4);
        head = undefined;
      }
      // Hold back the last tail.length bytes (the closing boundary, at the end).
      if (data.length >= tail.length) {
        if (carry.length > 0) yield carry;
        const out = data.subarray(0, data.length - tail.length);
        carry = Buffer.from(data.subarray(data.length - tail.length));
        if (out.length > 0) yield out;
        continue;
      }
      const joined = Buffer.concat([carry, data]);
      const keep = Math.min(joined.length, tail.length);
      const out = joined.subarray(0, joined.length - keep);
      carry = Buffer.from(joined.subarray(joined.length - keep));
      if (out.length > 0) yield out;
    }
    if (head !== undefined) throw new Error('the body ended inside the part head');
    if (carry.equals(tail)) return;
    // Without the final CRLF: the last two bytes held back are field bytes.
    if (carry.subarray(2).equals(tailNoCrlf)) {
      yield carry.subarray(0, 2);
      return;
    }
    throw new Error('the body does not end with the closing boundary');
  };
}

/** Start the sink; POSTed files go to `<dir>/post-<n>`. */
export async function startPostSink(dir: string): Promise<PostSink> {
  const jobKey = randomBytes(16).toString('hex');
  const posts: SinkPost[] = [];
  const refused: string[] = [];
  let count = 0;
  const server = http.createServer((req, res) => {
    const answer = (status: number, text: string): void => {
      if (status !== 200) refused.push(`${status} ${text}`);
      res.writeHead(status, { 'content-type': 'application/json', ...(status === 200 ? {} : { connection: 'close' }) });
      res.end(text);
    };
    const url = new URL(req.url ?? '/', 'http://sink');
    const parts = url.pathname.split('/');
    if (req.method !== 'POST') return answer(405, 'method not allowed');
    if (parts.length !== 5 || parts[1] !== 'api' || parts[2] !== 'jobs' || parts[4] !== 'files') return answer(404, 'no such route');
    if (url.searchParams.get('job_key') !== jobKey) return answer(403, 'bad job key');
    const galaxyPath = url.searchParams.get('path');
    if (galaxyPath === null) return answer(400, 'path missing');
    const boundary = /boundary="?([^";]{1,70})"?/i.exec(req.headers['content-type'] ?? '')?.[1];
    if (!(req.headers['content-type'] ?? '').startsWith('multipart/form-data') || boundary === undefined) return answer(400, 'not multipart/form-data');
    const file = path.join(dir, `post-${count++}`);
    const counts = { body: 0, firstByteAt: 0 };
    // Bytes written are counted at the sink's end of the pipeline.
    let written = 0;
    const counter = async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
      for await (const chunk of source) {
        written += chunk.length;
        yield chunk;
      }
    };
    pipeline(req, fieldBytes(boundary, counts), counter, createWriteStream(file, { highWaterMark: 1 << 20 })).then(
      () => {
        posts.push({ path: galaxyPath, fileType: url.searchParams.get('file_type'), file, bytes: written, bodyBytes: counts.body, firstByteAt: counts.firstByteAt, answeredAt: wallMs() });
        answer(200, '{"message": "ok"}');
      },
      (error: unknown) => {
        if (!res.headersSent) answer(400, `upload broken: ${error instanceof Error ? error.message : String(error)}`);
      },
    );
  });
  server.requestTimeout = 0;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const base = `http://127.0.0.1:${port}`;
  const filesEndpoint = (jobId: string): string => `${base}/api/jobs/${encodeURIComponent(jobId)}/files?job_key=${jobKey}`;
  return {
    base,
    filesEndpoint,
    postUrl: (jobId, galaxyPath, fileType) => `${filesEndpoint(jobId)}&${new URLSearchParams({ path: galaxyPath, file_type: fileType }).toString()}`,
    posts,
    refused,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
