/** A minimal keep-alive HTTP client for the bench (node:http + one shared Agent per workload). */
import * as http from 'node:http';
import type { Readable } from 'node:stream';

export interface Reply {
  readonly status: number;
  readonly body: Buffer;
}

export class HttpError extends Error {
  constructor(
    readonly method: string,
    readonly target: string,
    readonly status: number,
    readonly body: string,
  ) {
    super(`${method} ${target.slice(0, 200)} answered ${status}: ${body.slice(0, 300)}`);
  }
}

export class Client {
  readonly host: string;
  readonly port: number;
  readonly agent: http.Agent;
  /** Socket idle limit per request (ms); unset = none. Bounds a bench loop against a hung server. */
  readonly timeoutMs: number | undefined;

  /** Source address of the connections (another loopback address stands for another machine). */
  readonly localAddress: string | undefined;

  constructor(host: string, port: number, maxSockets: number, timeoutMs?: number, localAddress?: string) {
    this.host = host;
    this.port = port;
    this.timeoutMs = timeoutMs;
    this.localAddress = localAddress;
    this.agent = new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets, scheduling: 'lifo' });
  }

  /** One request; the whole response body is buffered. Non-2xx answers reject with HttpError. */
  request(method: string, target: string, body?: Buffer | string, headers: Record<string, string> = {}): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const allHeaders: Record<string, string> = { ...headers };
      if (body !== undefined) {
        allHeaders['Content-Length'] = String(Buffer.byteLength(body));
        allHeaders['Content-Type'] ??= 'application/x-www-form-urlencoded'; // what Python's urllib sends
      } else if (method !== 'GET') {
        allHeaders['Content-Length'] = '0';
      }
      const req = http.request({ host: this.host, port: this.port, localAddress: this.localAddress, method, path: target, headers: allHeaders, agent: this.agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          const buf = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
          if (status < 200 || status >= 300) reject(new HttpError(method, target, status, buf.toString('utf8')));
          else resolve({ status, body: buf });
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      if (this.timeoutMs !== undefined) {
        const ms = this.timeoutMs;
        req.setTimeout(ms, () => req.destroy(new Error(`${method} ${target.slice(0, 200)}: no answer within ${ms} ms`)));
      }
      req.end(body);
    });
  }

  async json<T = Record<string, unknown>>(method: string, target: string, body?: Buffer | string): Promise<T> {
    const reply = await this.request(method, target, body);
    return JSON.parse(reply.body.toString('utf8')) as T;
  }

  /** Stream `source` as the body (explicit Content-Length, as the Python client sends). */
  upload(target: string, source: Readable, length: number): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: this.host,
          port: this.port,
          method: 'POST',
          path: target,
          headers: { 'Content-Length': String(length), 'Content-Type': 'application/x-www-form-urlencoded' },
          agent: this.agent,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            const buf = Buffer.concat(chunks);
            if (status < 200 || status >= 300) reject(new HttpError('POST', target, status, buf.toString('utf8')));
            else resolve({ status, body: buf });
          });
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      source.on('error', (error) => req.destroy(error));
      source.pipe(req);
    });
  }

  /** GET a (large) body, handing each chunk to `onChunk` instead of buffering it. */
  download(target: string, onChunk: (chunk: Buffer) => void): Promise<{ status: number; bytes: number; contentLength: number | undefined }> {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: this.host, port: this.port, method: 'GET', path: target, agent: this.agent }, (res) => {
        const status = res.statusCode ?? 0;
        if (status !== 200) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => reject(new HttpError('GET', target, status, Buffer.concat(chunks).toString('utf8'))));
          return;
        }
        const header = res.headers['content-length'];
        let bytes = 0;
        res.on('data', (c: Buffer) => {
          bytes += c.length;
          onChunk(c);
        });
        res.on('end', () => resolve({ status, bytes, contentLength: header === undefined ? undefined : Number(header) }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

export function qs(params: Record<string, string>): string {
  return new URLSearchParams(params).toString();
}

/** POSIX shell single-quoting. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** The submit parameters the real Pulsar client sends besides the command line (see the transcript). */
export function submitParams(jobId: string, commandLine: string): string {
  const remoteStaging = {
    action_mapper: { default_action: 'transfer', files_endpoint: null, ssh_key: null, ssh_user: null, ssh_port: null, ssh_host: null, paths: [] },
    client_outputs: {
      working_directory: '/galaxy/job/w',
      metadata_directory: '/galaxy/job/m',
      job_directory: null,
      work_dir_outputs: [],
      output_files: ['/galaxy/job/out.txt'],
      version_file: '/galaxy/job/GALAXY_VERSION',
      dynamic_outputs: ['primary_.*|galaxy.json|metadata_.*|dataset_\\d+\\.dat|__instrument_.*|tool_stdout|tool_stderr'],
      dynamic_file_sources: [],
      dataset_collector_descriptions: [],
    },
  };
  return qs({
    command_line: commandLine,
    job_id: jobId,
    remote_staging: JSON.stringify(remoteStaging),
    submit_extras: JSON.stringify({ touch_outputs: [] }),
  });
}
