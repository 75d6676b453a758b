/**
 * A real Galaxy job-files API on 127.0.0.1 (`/api/jobs/<id>/files?job_key=...`): GET
 * `?path=…&file_type=…` with Range support, multipart POST with field `file`, and `job_key`
 * checking; plus fault injection per Galaxy path (die mid-transfer, an HTTP status, a redirect,
 * a slow answer held until released).
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AppSection } from '../../src/config/index.js';
import { managerConfig, startTestServer, type TestServer } from './server.js';

export type Fault =
  /** Send the headers (full Content-Length) and half the body, then destroy the connection. */
  | { readonly kind: 'die-mid' }
  /** Answer this status with a short body. */
  | { readonly kind: 'status'; readonly status: number }
  /** Answer this status as soon as a POST's headers arrive and stop reading its body (as a proxy refusing a large body does). */
  | { readonly kind: 'refuse-early'; readonly status: number }
  /** Answer 302 to this location. */
  | { readonly kind: 'redirect'; readonly location: string }
  /** Send the headers and half the body, then wait for `release()` before the rest. */
  | { readonly kind: 'slow'; readonly reached: () => void; readonly released: Promise<void> };

export interface RecordedRequest {
  readonly method: string;
  readonly path: string | null;
  readonly fileType: string | null;
  readonly range: string | undefined;
  readonly status: number;
}

export interface FilesEndpoint {
  readonly port: number;
  /** Galaxy's `files_endpoint` for job `jobId` (carries the job key in its query). */
  filesEndpoint(jobId: string): string;
  /** The URL Galaxy's client builds for a remote_transfer input (PROTOCOL §8.1). */
  inputUrl(jobId: string, galaxyPath: string, fileType?: string): string;
  readonly files: Map<string, Buffer>;
  /** Faults applied in order, one per request for that path. */
  readonly faults: Map<string, Fault[]>;
  readonly requests: RecordedRequest[];
  /** Bodies received by POST, by path. */
  readonly posted: Map<string, Buffer>;
  /** Complete POSTs received, by path. */
  readonly postCounts: Map<string, number>;
  /** Whether the endpoint honours Range (default true). */
  honoursRange: boolean;
  close(): Promise<void>;
}

export const JOB_KEY = 'k3y-0f-th3-j0b';

function multipartFile(body: Buffer, contentType: string | undefined): Buffer | undefined {
  const boundary = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(contentType ?? '');
  const b = boundary?.[1] ?? boundary?.[2];
  if (b === undefined) return undefined;
  const delimiter = Buffer.from(`--${b}`);
  let at = body.indexOf(delimiter);
  while (at >= 0) {
    const headerEnd = body.indexOf('\r\n\r\n', at);
    if (headerEnd < 0) return undefined;
    const headers = body.subarray(at, headerEnd).toString('latin1');
    const next = body.indexOf(Buffer.from(`\r\n--${b}`), headerEnd + 4);
    if (next < 0) return undefined;
    if (/name="file"/.test(headers)) return body.subarray(headerEnd + 4, next);
    at = next + 2;
  }
  return undefined;
}

export async function startFilesEndpoint(): Promise<FilesEndpoint> {
  const files = new Map<string, Buffer>();
  const faults = new Map<string, Fault[]>();
  const requests: RecordedRequest[] = [];
  const posted = new Map<string, Buffer>();
  const postCounts = new Map<string, number>();
  const state = { honoursRange: true };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const galaxyPath = url.searchParams.get('path');
    const fileType = url.searchParams.get('file_type');
    const record = (status: number): void => {
      requests.push({ method: req.method ?? '', path: galaxyPath, fileType, range: req.headers.range, status });
    };
    const answer = (status: number, text: string): void => {
      record(status);
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(text);
    };
    if (!/^\/api\/jobs\/[^/]+\/files$/.test(url.pathname)) return answer(404, 'no such route');
    if (url.searchParams.get('job_key') !== JOB_KEY) return answer(403, 'bad job key');
    if (galaxyPath === null) return answer(400, 'path missing');
    const fault = faults.get(galaxyPath)?.shift();
    if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      if (fault?.kind === 'refuse-early') {
        record(fault.status);
        // The answer is sent and never ended: node's server would otherwise close the socket over the
        // unread body, and the client could meet a reset before it reads the answer.
        req.pause();
        res.writeHead(fault.status, { 'content-type': 'application/json' });
        res.write('{"err_msg": "refused early"}');
        return;
      }
      let reached = false;
      req.on('data', (c: Buffer) => {
        chunks.push(c);
        // A slow POST: the body is read, the answer held until released.
        if (fault?.kind === 'slow' && !reached) {
          reached = true;
          fault.reached();
        }
      });
      if (fault?.kind === 'die-mid') {
        req.once('data', () => {
          record(0);
          req.socket.destroy();
        });
        return;
      }
      req.on('end', () => {
        if (fault?.kind === 'status') return answer(fault.status, 'injected');
        if (fault?.kind === 'slow') {
          void fault.released.then(() => answer(200, '{"message": "ok (late)"}'));
          return;
        }
        const file = multipartFile(Buffer.concat(chunks), req.headers['content-type']);
        if (file === undefined) return answer(400, 'no file field');
        posted.set(galaxyPath, Buffer.from(file));
        postCounts.set(galaxyPath, (postCounts.get(galaxyPath) ?? 0) + 1);
        answer(200, '{"message": "ok"}');
      });
      return;
    }
    if (req.method !== 'GET') return answer(405, 'method not allowed');
    if (fault?.kind === 'status') return answer(fault.status, 'injected failure');
    if (fault?.kind === 'redirect') {
      record(302);
      res.writeHead(302, { location: fault.location });
      res.end();
      return;
    }
    const content = files.get(galaxyPath);
    if (content === undefined) return answer(404, 'no such file');
    let start = 0;
    let status = 200;
    const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream' };
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (state.honoursRange && range !== null) {
      start = Number(range[1]);
      if (start >= content.length) {
        record(416);
        res.writeHead(416, { 'content-range': `bytes */${content.length}` });
        res.end();
        return;
      }
      status = 206;
      headers['content-range'] = `bytes ${start}-${content.length - 1}/${content.length}`;
    }
    const body = content.subarray(start);
    headers['content-length'] = body.length;
    record(status);
    res.writeHead(status, headers);
    const half = Math.floor(body.length / 2);
    if (fault?.kind === 'die-mid') {
      res.write(body.subarray(0, half), () => {
        setTimeout(() => res.destroy(), 20);
      });
      return;
    }
    if (fault?.kind === 'slow') {
      res.write(body.subarray(0, half), () => fault.reached());
      void fault.released.then(() => res.end(body.subarray(half)));
      return;
    }
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const base = `http://127.0.0.1:${port}`;
  const endpoint: FilesEndpoint = {
    port,
    filesEndpoint: (jobId) => `${base}/api/jobs/${jobId}/files?job_key=${JOB_KEY}`,
    inputUrl: (jobId, galaxyPath, fileType = 'input') =>
      `${base}/api/jobs/${jobId}/files?job_key=${JOB_KEY}&${new URLSearchParams({ path: galaxyPath, file_type: fileType }).toString()}`,
    files,
    faults,
    requests,
    posted,
    postCounts,
    get honoursRange() {
      return state.honoursRange;
    },
    set honoursRange(value: boolean) {
      state.honoursRange = value;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return endpoint;
}

/** Retries for staging tests: a few, close together. */
export const FAST_RETRY = { maxRetries: 3, intervalStart: 0.01, intervalStep: 0.01, intervalMax: 0.05 };

type Teardown = { teardown(fn: () => Promise<void>): void };

/** A test server whose staging allows any endpoint and loopback (the files endpoint's), with `retry` both ways. */
export async function stagingServer(t: Teardown, app: Partial<AppSection> = {}, retry = FAST_RETRY): Promise<TestServer> {
  const server = await startTestServer({
    app: { ...app, staging: { allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4, ...app.staging } },
    managers: (root) => [managerConfig(root, { preprocessRetry: retry, postprocessRetry: retry })],
  });
  t.teardown(async () => server.stop());
  return server;
}

/** A files endpoint closed when the test ends. */
export async function testEndpoint(t: Teardown): Promise<FilesEndpoint> {
  const e = await startFilesEndpoint();
  t.teardown(async () => e.close());
  return e;
}

/**
 * A `slow` fault (half the body, then held), the promise that it was reached, and its release
 * (also run when the test ends, so nothing stays held).
 */
export function heldFault(t: { teardown(fn: () => void): void }): { readonly fault: Fault; readonly reached: Promise<void>; readonly release: () => void } {
  let reachedNow!: () => void;
  const reached = new Promise<void>((r) => { reachedNow = r; });
  let release!: () => void;
  const released = new Promise<void>((r) => { release = r; });
  t.teardown(() => release());
  return { fault: { kind: 'slow', reached: reachedNow, released }, reached, release };
}
