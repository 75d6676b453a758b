import * as fs from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { rootCertificates } from 'node:tls';
import { Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/**
 * A small Pulsar HTTP client: the calls Galaxy's `pulsar/client` makes for one job (PROTOCOL §3.2),
 * with the same query parameters in the same order, the private token as the `private_token`
 * query parameter on every call, and streamed upload and download bodies.
 */

/** The server answered with a non-2xx status. */
export class HttpError extends Error {
  readonly status: number;
  readonly body: string;
  constructor(method: string, route: string, status: number, body: string) {
    super(`${method} ${route} answered HTTP ${status}${describeBody(body)}`);
    this.name = 'HttpError';
    this.status = status;
    this.body = body;
  }
}

/** The server could not be reached or the connection broke before a full answer arrived. */
export class ConnectionError extends Error {
  readonly code: string | undefined;
  constructor(message: string, code: string | undefined, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ConnectionError';
    this.code = code;
  }
}

/** The overall deadline (`--timeout`) passed while a request was in flight. */
export class DeadlineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeadlineError';
  }
}

/** The server answered 2xx, but not with what the protocol says it answers. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

function describeBody(body: string): string {
  const trimmed = body.trim();
  if (trimmed === '') return '';
  try {
    const parsed = JSON.parse(trimmed) as { message?: unknown; error?: unknown };
    if (typeof parsed.message === 'string') return `: ${parsed.message}`;
    if (typeof parsed.error === 'string') return `: ${parsed.error}`;
  } catch {
    // not JSON: show the start of the text
  }
  const oneLine = trimmed.replace(/\s+/g, ' ');
  return `: ${oneLine.length > 200 ? `${oneLine.slice(0, 200)}...` : oneLine}`;
}

/** How an `https://` server's certificate is checked. */
export interface ClientTls {
  /** Extra trusted certificates (PEM), in addition to Node's bundled certificate authorities. */
  readonly ca?: readonly string[] | undefined;
  /** Do not verify the server's certificate at all (`--insecure`). */
  readonly insecure?: boolean | undefined;
}

export interface ClientOptions {
  /** Base URL of the server, e.g. `http://127.0.0.1:8913/` (`http://` is assumed if missing). */
  readonly url: string;
  readonly privateToken?: string | undefined;
  /** Manager name: routes become `/managers/<name>/...` (unless the URL already has `/managers/`). */
  readonly manager?: string | undefined;
  /** Aborts every request (the overall deadline). */
  readonly signal?: AbortSignal | undefined;
  readonly tls?: ClientTls | undefined;
}

/** The job config `POST /jobs` answers (PROTOCOL §2.1). */
export interface JobConfig {
  readonly job_id: string;
  readonly job_directory: string;
  readonly working_directory: string;
  readonly metadata_directory: string;
  readonly outputs_directory: string;
  readonly configs_directory: string;
  readonly tools_directory: string;
  readonly inputs_directory: string;
  readonly unstructured_files_directory: string;
  readonly system_properties: Readonly<Record<string, unknown>>;
  readonly [key: string]: unknown;
}

/** The status document (PROTOCOL §2.6); the full keys are only present when `complete` is "true". */
export interface StatusDocument {
  readonly complete: string;
  readonly status: string;
  readonly job_id: string;
  readonly returncode?: number | null;
  readonly stdout?: string;
  readonly stderr?: string;
  readonly job_stdout?: string;
  readonly job_stderr?: string;
  readonly working_directory_contents?: readonly string[];
  readonly metadata_directory_contents?: readonly string[];
  readonly outputs_directory_contents?: readonly string[];
  readonly job_directory_contents?: readonly string[];
  readonly realized_dynamic_file_sources?: readonly { readonly type?: string; readonly path: string; readonly contents?: string }[];
  readonly [key: string]: unknown;
}

export type UploadBody =
  | { readonly kind: 'bytes'; readonly data: Buffer }
  | { readonly kind: 'file'; readonly path: string };

export interface SubmitParameters {
  readonly commandLine: string;
  readonly remoteStaging?: unknown;
  readonly submitExtras?: unknown;
  readonly env?: unknown;
  readonly dynamicFileSources?: unknown;
}

type Query = readonly (readonly [string, string])[];

interface Answer {
  readonly status: number;
  readonly body: Buffer;
}

const MAX_BUFFERED_ANSWER = 64 * 1024 * 1024;

export class PulsarClient {
  readonly baseUrl: URL;
  readonly #token: string | undefined;
  readonly #prefix: string;
  readonly #signal: AbortSignal | undefined;
  readonly #agent: http.Agent;
  readonly #transport: typeof http | typeof https;

  constructor(options: ClientOptions) {
    const base = parseBaseUrl(options.url);
    // A token embedded in the URL (`https://TOKEN@host/`) is used as the private token (as Galaxy does).
    let token = options.privateToken;
    if (base.username !== '' || base.password !== '') {
      token ??= decodeURIComponent(base.username);
      base.username = '';
      base.password = '';
    }
    this.baseUrl = base;
    this.#token = token === '' ? undefined : token;
    const manager = options.manager;
    this.#prefix = manager !== undefined && manager !== '' && !base.pathname.includes('/managers/')
      ? `managers/${encodeURIComponent(manager)}/`
      : '';
    this.#signal = options.signal;
    this.#transport = base.protocol === 'https:' ? https : http;
    this.#agent = base.protocol === 'https:' ? httpsAgent(options.tls) : new http.Agent({ keepAlive: true });
  }

  /** Drop the kept-alive connections. */
  close(): void {
    this.#agent.destroy();
  }

  /** `POST /jobs` (setup). */
  async setup(jobId: string, toolId: string, toolVersion: string): Promise<JobConfig> {
    const answer = await this.#call('POST', 'jobs', [['job_id', jobId], ['tool_id', toolId], ['tool_version', toolVersion], ['use_metadata', 'true']]);
    const config = parseJson(answer.body, 'POST /jobs');
    if (typeof config !== 'object' || config === null || Array.isArray(config)) throw new ProtocolError('POST /jobs did not answer a JSON object');
    const c = config as Record<string, unknown>;
    for (const key of ['job_id', 'job_directory', 'working_directory', 'metadata_directory', 'outputs_directory', 'configs_directory', 'tools_directory', 'inputs_directory', 'unstructured_files_directory']) {
      if (typeof c[key] !== 'string' || c[key] === '') throw new ProtocolError(`the setup answer has no string "${key}"`);
    }
    if (typeof c['system_properties'] !== 'object' || c['system_properties'] === null) {
      throw new ProtocolError('the setup answer has no "system_properties" object');
    }
    return c as JobConfig;
  }

  /**
   * `POST /jobs/{id}/files` (upload); the body is streamed. With `cacheToken` (PROTOCOL §9.1) no
   * body is sent: the server copies its file cache entry.
   */
  async upload(jobId: string, name: string, type: string, body: UploadBody | undefined, cacheToken?: string): Promise<{ path: string }> {
    const query: [string, string][] = [['job_id', jobId], ['name', name], ['type', type]];
    if (cacheToken !== undefined) query.push(['cache_token', cacheToken]);
    const answer = await this.#call('POST', `jobs/${encodeURIComponent(jobId)}/files`, query, body);
    const parsed = parseJson(answer.body, 'POST files');
    const p = (parsed as { path?: unknown } | null)?.path;
    if (typeof p !== 'string') throw new ProtocolError('the upload answer has no string "path"');
    return { path: p };
  }

  /** `PUT /cache?path=P`: whether the server wants the file (PROTOCOL §9.1). */
  async cacheRequired(clientPath: string): Promise<boolean> {
    const answer = await this.#call('PUT', 'cache', [['path', clientPath]]);
    const parsed = parseJson(answer.body, 'PUT /cache');
    if (typeof parsed !== 'boolean') throw new ProtocolError(`PUT /cache answered ${JSON.stringify(parsed)}, not true or false`);
    return parsed;
  }

  /** `POST /cache?path=P` with the file as the (streamed) body; the answer is `null`. */
  async cacheInsert(clientPath: string, body: UploadBody): Promise<void> {
    const answer = await this.#call('POST', 'cache', [['path', clientPath]], body);
    const parsed = parseJson(answer.body, 'POST /cache');
    if (parsed !== null) throw new ProtocolError(`POST /cache answered ${JSON.stringify(parsed)}, not null`);
  }

  /** `GET /cache/status?path=P`: the entry's token and whether it is ready. */
  async cacheStatus(clientPath: string): Promise<{ token: string; ready: boolean }> {
    const answer = await this.#call('GET', 'cache/status', [['path', clientPath]]);
    const parsed = parseJson(answer.body, 'GET /cache/status') as { token?: unknown; ready?: unknown } | null;
    if (typeof parsed?.token !== 'string' || typeof parsed.ready !== 'boolean') {
      throw new ProtocolError('GET /cache/status did not answer {"token": string, "ready": boolean}');
    }
    return { token: parsed.token, ready: parsed.ready };
  }

  /** `POST /jobs/{id}/submit`: every argument is query-string data; the answer is `OK`. */
  async submit(jobId: string, params: SubmitParameters): Promise<void> {
    const query: [string, string][] = [['command_line', params.commandLine], ['job_id', jobId]];
    if (params.env !== undefined) query.push(['env', JSON.stringify(params.env)]);
    if (params.remoteStaging !== undefined) query.push(['remote_staging', JSON.stringify(params.remoteStaging)]);
    if (params.submitExtras !== undefined) query.push(['submit_extras', JSON.stringify(params.submitExtras)]);
    if (params.dynamicFileSources !== undefined) query.push(['dynamic_file_sources', JSON.stringify(params.dynamicFileSources)]);
    const answer = await this.#call('POST', `jobs/${encodeURIComponent(jobId)}/submit`, query);
    const text = answer.body.toString('utf8');
    if (text !== 'OK') throw new ProtocolError(`submit answered ${JSON.stringify(text.slice(0, 100))} instead of "OK"`);
  }

  /** `GET /jobs/{id}/status`. */
  async status(jobId: string): Promise<StatusDocument> {
    const answer = await this.#call('GET', `jobs/${encodeURIComponent(jobId)}/status`, [['job_id', jobId]]);
    const doc = parseJson(answer.body, 'GET status');
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ProtocolError('status did not answer a JSON object');
    const d = doc as Record<string, unknown>;
    if (typeof d['complete'] !== 'string') throw new ProtocolError(`status "complete" is ${JSON.stringify(d['complete'])}, not the string "true"/"false"`);
    if (typeof d['status'] !== 'string') throw new ProtocolError('status has no string "status"');
    return d as StatusDocument;
  }

  /** `GET /jobs/{id}/files` (download), streamed into `sink`; resolves with the byte count. */
  async download(jobId: string, name: string, type: string, sink: Writable): Promise<number> {
    let bytes = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        bytes += chunk.length;
        callback(null, chunk);
      },
    });
    await this.#request('GET', `jobs/${encodeURIComponent(jobId)}/files`, [['name', name], ['job_id', jobId], ['type', type]], undefined, async (res) => {
      await pipeline(res, counter, sink);
    });
    return bytes;
  }

  /** `DELETE /jobs/{id}` (clean). */
  async clean(jobId: string): Promise<void> {
    const answer = await this.#call('DELETE', `jobs/${encodeURIComponent(jobId)}`, [['job_id', jobId]]);
    const text = answer.body.toString('utf8');
    if (text !== 'OK') throw new ProtocolError(`clean answered ${JSON.stringify(text.slice(0, 100))} instead of "OK"`);
  }

  /** The URL of a route, with the query string (token last, as the client appends it). */
  urlFor(route: string, query: Query): URL {
    const url = new URL(this.baseUrl.href);
    url.pathname = `${url.pathname}${this.#prefix}${route}`;
    const params = new URLSearchParams();
    for (const [k, v] of query) params.append(k, v);
    if (this.#token !== undefined) params.append('private_token', this.#token);
    url.search = params.toString();
    return url;
  }

  async #call(method: string, route: string, query: Query, body?: UploadBody): Promise<Answer> {
    let result: Answer | undefined;
    await this.#request(method, route, query, body, async (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > MAX_BUFFERED_ANSWER) throw new ProtocolError(`${method} ${route} answered more than ${MAX_BUFFERED_ANSWER} bytes`);
        chunks.push(chunk);
      }
      result = { status: res.statusCode ?? 0, body: Buffer.concat(chunks) };
    });
    return result!;
  }

  /**
   * One request. Non-2xx answers become HttpError (their body read, up to 64 KiB); 2xx answers are
   * handed to `onResponse`, which consumes the body.
   */
  async #request(
    method: string,
    route: string,
    query: Query,
    body: UploadBody | undefined,
    onResponse: (res: http.IncomingMessage) => Promise<void>,
  ): Promise<void> {
    const url = this.urlFor(route, query);
    const label = `${method} /${this.#prefix}${route}`;
    const headers: Record<string, string> = {};
    let contentLength = 0;
    if (body !== undefined) {
      // What Python's urllib sends with an upload: a form content type over opaque bytes.
      headers['Content-Type'] = 'application/x-www-form-urlencoded';
      contentLength = body.kind === 'bytes' ? body.data.length : (await fs.stat(body.path)).size;
    }
    if (body !== undefined || method !== 'GET') headers['Content-Length'] = String(contentLength);
    const signal = this.#signal;
    if (signal?.aborted === true) throw new DeadlineError(`the time limit (--timeout) ran out before ${label}`);

    await new Promise<void>((resolve, reject) => {
      let settled = false;
      const finish = (error?: unknown): void => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        if (error === undefined) resolve();
        else reject(error);
      };
      const onAbort = (): void => {
        req.destroy();
        finish(new DeadlineError(`the time limit (--timeout) ran out waiting for ${label}`));
      };
      const requestOptions: http.RequestOptions = { method, headers, agent: this.#agent };
      const req = this.#transport.request(url, requestOptions, (res) => {
        const status = res.statusCode ?? 0;
        if (status < 200 || status > 299) {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            if (size < 65536) chunks.push(chunk);
            size += chunk.length;
          });
          // The status is the answer; a body cut short (the server closing early) still reports it.
          const answered = (): void => finish(new HttpError(method, `/${this.#prefix}${route}`, status, Buffer.concat(chunks).toString('utf8')));
          res.on('end', answered);
          res.on('close', answered);
          res.on('error', answered);
          return;
        }
        onResponse(res).then(
          () => finish(),
          (error: unknown) => finish(error instanceof ProtocolError ? error : connectionError(label, error)),
        );
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      // A server that refuses an upload may answer (413, 401...) and close while the body is still
      // being sent: give that answer a moment to arrive before reporting the broken connection.
      const failed = (error: unknown): void => {
        if (body === undefined) finish(connectionError(label, error));
        else setTimeout(() => finish(connectionError(label, error)), 500).unref();
      };
      req.on('error', failed);
      if (body === undefined) {
        req.end();
      } else if (body.kind === 'bytes') {
        req.end(body.data);
      } else {
        pipeline(createReadStream(body.path, { highWaterMark: 256 * 1024 }), req).catch(failed);
      }
    });
  }
}

function httpsAgent(tls: ClientTls | undefined): https.Agent {
  const options: https.AgentOptions = { keepAlive: true };
  if (tls?.insecure === true) options.rejectUnauthorized = false;
  // `ca` replaces Node's bundled authorities: keep them, so --ca only adds trust.
  if (tls?.ca !== undefined && tls.ca.length > 0) options.ca = [...rootCertificates, ...tls.ca];
  return new https.Agent(options);
}

/** OpenSSL verification failures (`err.code`) that mean "this certificate is not trusted". */
const CERTIFICATE_ERRORS: ReadonlyMap<string, string> = new Map([
  ['DEPTH_ZERO_SELF_SIGNED_CERT', 'the server\'s certificate is self-signed and not trusted'],
  ['SELF_SIGNED_CERT_IN_CHAIN', 'the server\'s certificate chain ends in an untrusted self-signed certificate'],
  ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'the server\'s certificate is signed by an unknown authority'],
  ['UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'the server\'s certificate is signed by an unknown authority'],
  ['UNABLE_TO_GET_ISSUER_CERT', 'the server\'s certificate is signed by an unknown authority'],
  ['CERT_HAS_EXPIRED', 'the server\'s certificate has expired'],
  ['CERT_NOT_YET_VALID', 'the server\'s certificate is not valid yet'],
  ['CERT_SIGNATURE_FAILURE', 'the server\'s certificate has an invalid signature'],
  ['ERR_TLS_CERT_ALTNAME_INVALID', 'the server\'s certificate is not valid for this host name'],
]);

function connectionError(label: string, error: unknown): Error {
  if (error instanceof DeadlineError || error instanceof ProtocolError || error instanceof HttpError) return error;
  const e = error as NodeJS.ErrnoException;
  const code = typeof e.code === 'string' ? e.code : undefined;
  const certificate = code === undefined ? undefined : CERTIFICATE_ERRORS.get(code);
  const what = certificate !== undefined ? `TLS certificate error: ${certificate} (${code}); pass --ca FILE with the server's certificate (e.g. magnetar-selfsigned.crt), or --insecure to skip verification`
    : code === 'ECONNREFUSED' ? 'connection refused'
    : code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'host name not found'
    : code === 'ECONNRESET' ? 'connection reset by the server'
    : code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER' ? `TLS handshake failed (is the server speaking http, not https?): ${e.message}`
    : e.message;
  return new ConnectionError(`${label}: ${what}${code !== undefined && !what.includes(code) ? ` (${code})` : ''}`, code, { cause: error });
}

function parseJson(body: Buffer, what: string): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    const text = body.toString('utf8').slice(0, 100);
    throw new ProtocolError(`${what} did not answer JSON (got ${JSON.stringify(text)})`);
  }
}

/** `http://` is assumed when the scheme is missing; the path always ends with `/`. */
export function parseBaseUrl(raw: string): URL {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new TypeError(`"${raw}" is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`unsupported URL scheme "${url.protocol}" (use http or https)`);
  if (url.search !== '' || url.hash !== '') throw new TypeError('the server URL must not have a query string or fragment');
  if (!url.pathname.endsWith('/')) url.pathname = `${url.pathname}/`;
  return url;
}
