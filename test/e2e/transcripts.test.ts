/**
 * Replays the recorded conversations between Galaxy's real Pulsar client (`pulsar-check`) and the
 * upstream Python server (test/fixtures/transcripts/) against magnetar, exchange by exchange, and
 * checks every answer against the recording: status code, JSON shape (keys and value types) and
 * every value that is deterministic once the staging directory is normalised.
 *
 * Deliberate differences (PROTOCOL §1.4, §2.10, transcripts README):
 * - a download of a missing file answers 404 with a JSON error, not upstream's 500 HTML page;
 * - cache tokens are keyed by the client's address and path differently from upstream (README,
 *   File cache): the cache transcript's `cache_token` uploads carry the token magnetar answered for
 *   the same path. It is also replayed against a server without `file_cache_dir`, whose `/cache`
 *   routes answer 404 "not configured" and whose files are then re-sent as plain uploads;
 * - `GET /cache/status` may see `ready: false` where upstream's background `POST /cache` had
 *   already finished (the replay is sequential): only its shape and token are checked;
 * - intermediate status polls may see another non-terminal status: we poll until complete.
 *
 * The tool script the client uploaded (`script.py`) was recorded as size + sha256 only, so the
 * submit's command line is replaced by a POSIX sh rendition of upstream's check script that
 * performs the same checks on its inputs and writes the same files.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { makeRoot, startTestServer } from '../helpers/server.js';

// Compiled to dist/test/e2e/, fixtures stay in the source tree.
const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/transcripts/', import.meta.url));

const RECORDED_STAGING = '/srv/pulsar/staging';
const RECORDED_RAW_STAGING = /\/tmp\/pulsar-upstream\/servers\/\d+\/staging/g;
const REDACTED_TOKEN = '<redacted>';
const JOB_ID = '123456';
const STANDARD_DIRS = ['inputs', 'working', 'outputs', 'configs', 'tool_files', 'metadata'];
const NON_TERMINAL = new Set(['queued', 'running', 'postprocessing']);
/** Files the server itself writes into `metadata/` (job metrics, runner capture, memory probe). */
const SERVER_METADATA_FILE = /^(__instrument_.*|job_stdout|job_stderr|memory_statement\.log)$/;
/** Downloads whose recorded bytes are a wall-clock time. */
const CLOCK_FILE = /^__instrument_core_epoch_(start|end)$/;

const bodySchema = z
  .object({ size: z.number().int().nonnegative(), sha256: z.string().optional(), text: z.string().optional(), json: z.unknown().optional() })
  .loose();
const pairSchema = z.tuple([z.string(), z.string()]);
const exchangeSchema = z
  .object({
    seq: z.number().int(),
    method: z.string(),
    path: z.string(),
    query: z.array(pairSchema),
    request_headers: z.array(pairSchema),
    request_chunked: z.boolean(),
    request_body: bodySchema.nullable(),
    status: z.number().int(),
    response_body: bodySchema.nullable(),
  })
  .loose();
type Exchange = z.infer<typeof exchangeSchema>;
type RecordedBody = z.infer<typeof bodySchema>;

function loadTranscript(file: string): Exchange[] {
  const lines = fs.readFileSync(path.join(FIXTURES, file), 'utf8').split('\n').filter((l) => l.trim() !== '');
  const exchanges = lines.map((line) => exchangeSchema.parse(JSON.parse(line)));
  // `seq` is the order in which the client sent the requests (the file is in completion order).
  return exchanges.sort((a, b) => a.seq - b.seq);
}

interface Reply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
  /** The server answered `100 Continue` before the body was sent. */
  readonly continued: boolean;
}

interface Outgoing {
  readonly headers: Record<string, string>;
  /** undefined: no body and no Content-Length at all (what curl sends for a body-less POST). */
  readonly body: Buffer | undefined;
  readonly chunked: boolean;
  readonly expectContinue: boolean;
}

/** One request with node:http, honouring `Expect: 100-continue` and chunked framing. */
function send(base: string, method: string, target: string, out: Outgoing): Promise<Reply> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    let continued = false;
    let bodySent = false;
    const req = http.request(
      { host: url.hostname, port: url.port, method, path: target, headers: out.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          if (!bodySent) req.destroy();
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), continued });
        });
        res.on('error', reject);
      },
    );
    req.on('error', (error) => {
      if (!bodySent) reject(error);
    });
    const writeBody = (): void => {
      bodySent = true;
      const body = out.body;
      if (body === undefined) {
        req.end();
        return;
      }
      if (out.chunked) {
        // Several small chunks, so that the server really sees chunked framing.
        for (let i = 0; i < body.length; i += 7) req.write(body.subarray(i, i + 7));
        req.end();
      } else {
        req.end(body);
      }
    };
    if (out.body === undefined && !out.chunked) req.useChunkedEncodingByDefault = false;
    if (out.expectContinue && out.body !== undefined) {
      req.once('continue', () => {
        continued = true;
        writeBody();
      });
      req.flushHeaders();
    } else {
      writeBody();
    }
  });
}

/** Headers that change how a server reads a request; Host, Connection and framing are ours. */
const FORWARDED_HEADERS = new Set(['content-type', 'expect', 'accept', 'accept-encoding', 'user-agent']);

class Replayer {
  readonly #t: ExecutionContext;
  readonly #base: string;
  readonly #staging: string;
  readonly #token: string | undefined;
  /** `POST /cache` bodies by client path, and cache tokens by client path (cache transcript). */
  readonly #cacheBodies = new Map<string, Buffer>();
  readonly #tokenPaths = new Map<string, string>();
  /** With a file cache: the token magnetar answered for each client path. */
  readonly #ourTokens = new Map<string, string>();
  readonly #cache: boolean;
  /** Requests sent with `Expect: 100-continue` whose body went out after the server's 100. */
  continuedUploads = 0;

  constructor(t: ExecutionContext, base: string, staging: string, token: string | undefined, cache = false) {
    this.#t = t;
    this.#cache = cache;
    this.#base = base;
    this.#staging = staging;
    this.#token = token;
  }

  norm(value: string): string {
    return value.replaceAll(RECORDED_STAGING, this.#staging).replace(RECORDED_RAW_STAGING, this.#staging);
  }

  normDeep(value: unknown): unknown {
    if (typeof value === 'string') return this.norm(value);
    if (Array.isArray(value)) return value.map((v) => this.normDeep(v));
    if (isRecord(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, this.normDeep(v)]));
    return value;
  }

  /** The recorded query, normalised: staging paths rewritten, the redacted token replaced. */
  query(ex: Exchange, replace: Readonly<Record<string, string>> = {}, drop: readonly string[] = []): [string, string][] {
    return ex.query
      .filter(([k]) => !drop.includes(k))
      .map(([k, v]): [string, string] => {
        if (k in replace) return [k, replace[k]!];
        if (k === 'private_token' && v === REDACTED_TOKEN) {
          if (this.#token === undefined) throw new Error(`seq ${ex.seq}: recorded token but the server has none`);
          return [k, this.#token];
        }
        return [k, this.norm(v)];
      });
  }

  target(ex: Exchange, query: [string, string][]): string {
    return query.length === 0 ? ex.path : `${ex.path}?${new URLSearchParams(query).toString()}`;
  }

  /** Request body: the recorded text when kept, else synthetic bytes of the recorded size. */
  body(ex: Exchange, override?: Buffer): Buffer | undefined {
    if (override !== undefined) return override;
    const recorded = ex.request_body;
    if (recorded === null) return undefined;
    if (recorded.text !== undefined) {
      const text = Buffer.from(recorded.text, 'utf8');
      if (text.length === recorded.size) return text;
    }
    const line = Buffer.from(`# synthetic stand-in for a recorded ${recorded.size}-byte body (seq ${ex.seq})\n`);
    const out = Buffer.alloc(recorded.size);
    for (let i = 0; i < out.length; i += line.length) line.copy(out, i, 0, Math.min(line.length, out.length - i));
    return out;
  }

  async send(ex: Exchange, query: [string, string][], bodyOverride?: Buffer): Promise<Reply> {
    const body = this.body(ex, bodyOverride);
    const headers: Record<string, string> = {};
    let recordedLength = false;
    for (const [name, value] of ex.request_headers) {
      const lower = name.toLowerCase();
      if (lower === 'content-length') recordedLength = true;
      if (FORWARDED_HEADERS.has(lower)) headers[name] = value;
    }
    const chunked = ex.request_chunked && body !== undefined;
    if (chunked) headers['Transfer-Encoding'] = 'chunked';
    else if (body !== undefined || recordedLength) headers['Content-Length'] = String(body?.length ?? 0);
    const expectContinue = Object.keys(headers).some((h) => h.toLowerCase() === 'expect' && /100-continue/i.test(headers[h]!));
    const reply = await send(this.#base, ex.method, this.target(ex, query), {
      headers,
      body: body ?? (recordedLength ? Buffer.alloc(0) : undefined),
      chunked,
      expectContinue,
    });
    if (expectContinue && body !== undefined && reply.status < 300) {
      this.#t.true(reply.continued, `seq ${ex.seq}: the server did not answer "100 Continue" before reading the body`);
      if (reply.continued) this.continuedUploads++;
    }
    return reply;
  }

  json(reply: Reply, where: string): unknown {
    try {
      return JSON.parse(reply.body.toString('utf8'));
    } catch {
      this.#t.fail(`${where}: response is not JSON: ${reply.body.toString('utf8').slice(0, 300)}`);
      return undefined;
    }
  }

  /** A JSON error body `{error, message}` (our replacement for upstream's HTML error pages). */
  expectJsonError(reply: Reply, status: number, where: string, message?: RegExp): void {
    const t = this.#t;
    t.is(reply.status, status, `${where}: status (body ${reply.body.toString('utf8').slice(0, 300)})`);
    const doc = this.json(reply, where);
    if (!isRecord(doc)) {
      t.fail(`${where}: error body is not an object`);
      return;
    }
    t.deepEqual(Object.keys(doc).sort(), ['error', 'message'], `${where}: error body keys`);
    t.is(typeof doc['error'], 'string', `${where}: error code type`);
    t.is(typeof doc['message'], 'string', `${where}: error message type`);
    if (message !== undefined) t.regex(String(doc['message']), message, `${where}: error message`);
  }

  /** Same keys and value types, recursively (array elements against the recorded first one). */
  sameShape(actual: unknown, expected: unknown, where: string): void {
    const t = this.#t;
    if (expected === null) {
      t.is(actual, null, `${where}: expected null`);
    } else if (Array.isArray(expected)) {
      if (!Array.isArray(actual)) {
        t.fail(`${where}: expected an array, got ${JSON.stringify(actual)}`);
        return;
      }
      const model = expected[0];
      if (model !== undefined) actual.forEach((item, i) => this.sameShape(item, model, `${where}[${i}]`));
    } else if (isRecord(expected)) {
      if (!isRecord(actual)) {
        t.fail(`${where}: expected an object, got ${JSON.stringify(actual)}`);
        return;
      }
      t.deepEqual(Object.keys(actual).sort(), Object.keys(expected).sort(), `${where}: keys`);
      for (const [k, v] of Object.entries(expected)) if (k in actual) this.sameShape(actual[k], v, `${where}.${k}`);
    } else {
      t.is(typeof actual, typeof expected, `${where}: type of ${JSON.stringify(actual)}`);
    }
  }

  checkVersion(actual: unknown, where: string): void {
    const t = this.#t;
    t.is(typeof actual, 'string', `${where}: pulsar_version type`);
    const m = /^(\d+)\.(\d+)(?:\.(\d+))?(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?$/.exec(String(actual));
    t.truthy(m, `${where}: pulsar_version ${String(actual)} is not a PEP 440 version`);
    if (m !== null) {
      const [major, minor] = [Number(m[1]), Number(m[2])];
      t.true(major > 0 || minor >= 15, `${where}: pulsar_version ${String(actual)} is older than 0.15`);
    }
  }

  // ------------------------------------------------------------------ exchange kinds

  async replay(exchanges: readonly Exchange[]): Promise<void> {
    for (let i = 0; i < exchanges.length; ) {
      const ex = exchanges[i]!;
      if (isStatus(ex)) {
        let j = i;
        while (j < exchanges.length && isStatus(exchanges[j]!)) j++;
        await this.polls(exchanges.slice(i, j));
        i = j;
        continue;
      }
      if (ex.path === '/cache' || ex.path === '/cache/status') await this.cacheCall(ex);
      else if (ex.method === 'POST' && ex.path === '/jobs') await this.setup(ex);
      else if (ex.method === 'POST' && /^\/jobs\/[^/]+\/files$/.test(ex.path)) await this.upload(ex);
      else if (ex.method === 'POST' && /^\/jobs\/[^/]+\/submit$/.test(ex.path)) await this.submit(ex);
      else if (ex.method === 'GET' && /^\/jobs\/[^/]+\/files$/.test(ex.path)) await this.download(ex);
      else if (ex.method === 'DELETE' && /^\/jobs\/[^/]+$/.test(ex.path)) await this.okCall(ex);
      else await this.generic(ex);
      i++;
    }
  }

  async setup(ex: Exchange): Promise<void> {
    const where = `seq ${ex.seq} setup`;
    const reply = await this.send(ex, this.query(ex));
    this.#t.is(reply.status, ex.status, `${where}: status`);
    const actual = this.json(reply, where);
    const expected = this.normDeep(ex.response_body?.json);
    this.sameShape(actual, expected, where);
    if (!isRecord(actual) || !isRecord(expected)) return;
    this.checkVersion(actual['pulsar_version'], where);
    for (const key of Object.keys(expected)) {
      if (key === 'pulsar_version') continue;
      this.#t.deepEqual(actual[key], expected[key], `${where}: ${key}`);
    }
  }

  async upload(ex: Exchange): Promise<void> {
    const params = new Map(ex.query);
    const cacheToken = params.get('cache_token');
    let body: Buffer | undefined;
    if (cacheToken !== undefined && this.#cache) {
      const where = `seq ${ex.seq} upload ${params.get('type') ?? '?'} ${params.get('name') ?? '?'} with cache_token`;
      const clientPath = this.#tokenPaths.get(cacheToken);
      const ours = clientPath === undefined ? undefined : this.#ourTokens.get(clientPath);
      if (ours === undefined) {
        this.#t.fail(`${where}: no /cache/status answered a token for the recorded token's path`);
        return;
      }
      const reply = await this.send(ex, this.query(ex, { cache_token: ours }));
      this.#t.is(reply.status, ex.status, `${where}: status (body ${reply.body.toString('utf8').slice(0, 300)})`);
      const actual = this.json(reply, where);
      const expected = this.normDeep(ex.response_body?.json);
      this.sameShape(actual, expected, where);
      this.#t.deepEqual(actual, expected, `${where}: response`);
      return;
    }
    if (cacheToken !== undefined) {
      const where = `seq ${ex.seq} upload with cache_token`;
      // Upstream copies the cached file; magnetar has no file cache yet and must say so.
      const refused = await this.send(ex, this.query(ex));
      this.expectJsonError(refused, 404, where, /not configured/);
      const clientPath = this.#tokenPaths.get(cacheToken);
      if (clientPath === undefined) {
        this.#t.fail(`${where}: no recorded /cache/status names token ${cacheToken}`);
        return;
      }
      body = this.#cacheBodies.get(clientPath);
      if (body === undefined) {
        this.#t.fail(`${where}: no recorded POST /cache body for ${clientPath}`);
        return;
      }
    }
    // Without a cache, the same file travels as a plain upload (what the client does without --cache).
    const where = `seq ${ex.seq} upload ${params.get('type') ?? '?'} ${params.get('name') ?? '?'}`;
    const reply = await this.send(ex, this.query(ex, {}, ['cache_token']), body);
    this.#t.is(reply.status, ex.status, `${where}: status (body ${reply.body.toString('utf8').slice(0, 300)})`);
    const actual = this.json(reply, where);
    const expected = this.normDeep(ex.response_body?.json);
    this.sameShape(actual, expected, where);
    this.#t.deepEqual(actual, expected, `${where}: response`);
  }

  async submit(ex: Exchange): Promise<void> {
    const where = `seq ${ex.seq} submit`;
    const recorded = ex.query.find(([k]) => k === 'command_line')?.[1];
    if (recorded === undefined) {
      this.#t.fail(`${where}: no recorded command_line`);
      return;
    }
    const commandLine = checkScriptCommand(this.norm(recorded));
    const reply = await this.send(ex, this.query(ex, { command_line: commandLine }));
    this.#t.is(reply.status, ex.status, `${where}: status (body ${reply.body.toString('utf8').slice(0, 300)})`);
    this.#t.is(reply.body.toString('utf8'), recordedText(ex), `${where}: body`);
  }

  /** Consecutive status polls: poll until complete, then compare with the recorded final document. */
  async polls(recorded: readonly Exchange[]): Promise<void> {
    const t = this.#t;
    const first = recorded[0]!;
    const last = recorded[recorded.length - 1]!;
    const where = `seq ${first.seq}-${last.seq} status`;
    const intermediate = recorded.slice(0, -1).map((ex) => ex.response_body?.json);
    const shortModel = intermediate[0] ?? { complete: 'false', status: 'queued', job_id: JOB_ID };
    for (const doc of intermediate) {
      t.true(isRecord(doc) && doc['complete'] === 'false', `${where}: recorded intermediate poll is not a short document`);
    }
    const deadline = Date.now() + 60_000;
    const seen: string[] = [];
    for (;;) {
      const reply = await this.send(last, this.query(last));
      t.is(reply.status, last.status, `${where}: status code`);
      const doc = this.json(reply, where);
      if (!isRecord(doc)) {
        t.fail(`${where}: status is not an object`);
        return;
      }
      if (doc['complete'] !== 'true') {
        this.sameShape(doc, shortModel, `${where} (poll)`);
        t.is(doc['complete'], 'false', `${where}: complete flag`);
        t.is(doc['job_id'], JOB_ID, `${where}: job_id`);
        t.true(NON_TERMINAL.has(String(doc['status'])), `${where}: non-terminal status ${String(doc['status'])}`);
        seen.push(String(doc['status']));
        if (Date.now() > deadline) {
          t.fail(`${where}: job not complete after 60 s (saw ${seen.join(', ')})`);
          return;
        }
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      this.finalStatus(doc, this.normDeep(last.response_body?.json), where);
      return;
    }
  }

  finalStatus(actual: Record<string, unknown>, expected: unknown, where: string): void {
    const t = this.#t;
    if (!isRecord(expected)) {
      t.fail(`${where}: recorded final status is not an object`);
      return;
    }
    this.sameShape(actual, expected, where);
    const exact = [
      'job_id', 'complete', 'status', 'returncode', 'stdout', 'stderr', 'job_stdout', 'job_stderr',
      'working_directory', 'metadata_directory', 'job_directory', 'system_properties', 'realized_dynamic_file_sources',
    ];
    for (const key of exact) t.deepEqual(actual[key], expected[key], `${where}: ${key}`);
    this.checkVersion(actual['pulsar_version'], where);
    const list = (doc: Record<string, unknown>, key: string): string[] => {
      const v = doc[key];
      return Array.isArray(v) ? v.map(String).sort() : [];
    };
    // Every file the job or the client created, and nothing else, is listed.
    for (const key of ['working_directory_contents', 'outputs_directory_contents']) {
      t.deepEqual(list(actual, key), list(expected, key), `${where}: ${key}`);
    }
    const jobFiles = (names: string[]): string[] => names.filter((n) => !SERVER_METADATA_FILE.test(n));
    t.deepEqual(
      jobFiles(list(actual, 'metadata_directory_contents')),
      jobFiles(list(expected, 'metadata_directory_contents')),
      `${where}: metadata_directory_contents (job-created files)`,
    );
    const top = list(actual, 'job_directory_contents');
    for (const dir of STANDARD_DIRS) t.true(top.includes(dir), `${where}: job_directory_contents lacks ${dir}`);
  }

  async download(ex: Exchange): Promise<void> {
    const t = this.#t;
    const name = new Map(ex.query).get('name') ?? '?';
    const where = `seq ${ex.seq} download ${name}`;
    const reply = await this.send(ex, this.query(ex));
    if (ex.status === 500) {
      // Upstream's 500 HTML page for a missing file becomes a 404 JSON error (PROTOCOL §1.4).
      this.expectJsonError(reply, 404, where);
      return;
    }
    t.is(reply.status, ex.status, `${where}: status (body ${reply.body.toString('utf8').slice(0, 300)})`);
    const recorded = ex.response_body;
    if (recorded === null) return;
    this.downloadBody(reply.body, recorded, name, where);
  }

  downloadBody(actual: Buffer, recorded: RecordedBody, name: string, where: string): void {
    const t = this.#t;
    if (CLOCK_FILE.test(name)) {
      t.regex(actual.toString('utf8'), /^\d+\n$/, `${where}: epoch seconds`);
      t.is(actual.length, recorded.size, `${where}: size`);
    } else if (recorded.text !== undefined) {
      t.is(actual.toString('utf8'), this.norm(recorded.text), `${where}: bytes`);
    } else if (recorded.json !== undefined) {
      t.is(actual.length, recorded.size, `${where}: size`);
      let parsed: unknown;
      try {
        parsed = JSON.parse(actual.toString('utf8'));
      } catch {
        t.fail(`${where}: not JSON: ${actual.toString('utf8').slice(0, 200)}`);
        return;
      }
      t.deepEqual(parsed, this.normDeep(recorded.json), `${where}: JSON contents`);
    } else {
      t.is(actual.length, recorded.size, `${where}: size`);
    }
  }

  async okCall(ex: Exchange): Promise<void> {
    const where = `seq ${ex.seq} ${ex.method} ${ex.path}`;
    const reply = await this.send(ex, this.query(ex));
    this.#t.is(reply.status, ex.status, `${where}: status`);
    this.#t.is(reply.body.toString('utf8'), recordedText(ex), `${where}: body`);
  }

  /** `/cache` routes: 404 "not configured"; remember what the cache would have held. */
  async cacheCall(ex: Exchange): Promise<void> {
    const where = `seq ${ex.seq} ${ex.method} ${ex.path}`;
    const clientPath = new Map(ex.query).get('path');
    if (clientPath !== undefined && ex.method === 'POST') {
      const body = this.body(ex);
      if (body !== undefined) this.#cacheBodies.set(clientPath, body);
    }
    const recordedJson = ex.response_body?.json;
    if (clientPath !== undefined && isRecord(recordedJson) && typeof recordedJson['token'] === 'string') {
      this.#tokenPaths.set(recordedJson['token'], clientPath);
    }
    const reply = await this.send(ex, this.query(ex));
    if (!this.#cache) {
      this.expectJsonError(reply, 404, where, /not configured/);
      return;
    }
    this.#t.is(reply.status, ex.status, `${where}: status (body ${reply.body.toString('utf8').slice(0, 300)})`);
    const actual = this.json(reply, where);
    this.sameShape(actual, recordedJson, where);
    if (ex.method === 'GET' && clientPath !== undefined && isRecord(actual) && typeof actual['token'] === 'string') {
      this.#t.regex(actual['token'], /^[0-9a-f]{64}$/, `${where}: token`);
      this.#ourTokens.set(clientPath, actual['token']);
    } else {
      // PUT: true (each path is announced once); POST: null.
      this.#t.deepEqual(actual, recordedJson, `${where}: response`);
    }
  }

  async generic(ex: Exchange): Promise<void> {
    const where = `seq ${ex.seq} ${ex.method} ${ex.path}`;
    const reply = await this.send(ex, this.query(ex));
    this.#t.is(reply.status, ex.status, `${where}: status`);
    const recorded = ex.response_body;
    if (recorded?.json !== undefined) this.sameShape(this.json(reply, where), this.normDeep(recorded.json), where);
    else if (recorded?.text !== undefined) this.#t.is(reply.body.toString('utf8'), this.norm(recorded.text), `${where}: body`);
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function recordedText(ex: Exchange): string {
  const text = ex.response_body?.text;
  if (text === undefined) throw new Error(`seq ${ex.seq}: the recording kept no text body`);
  return text;
}

function isStatus(ex: Exchange): boolean {
  return /^\/jobs\/[^/]+\/status$/.test(ex.path);
}

function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/**
 * The recorded command line is `python "<tool_files>/script.py" "<arg1>" … "<arg16>" <redirections>`
 * (pulsar/client/test/check.py). Returns an sh command doing what that script does with the same
 * arguments: check the staged inputs, write every output, print "stdout output", exit 4 — keeping
 * the client's redirections to ../metadata/tool_stdout and tool_stderr.
 */
function checkScriptCommand(recorded: string): string {
  const m = /^python "([^"]*)"((?: "[^"]*")+)(.*)$/s.exec(recorded);
  if (m === null) throw new Error(`unexpected recorded command line: ${recorded.slice(0, 200)}`);
  const args = [...m[2]!.matchAll(/"([^"]*)"/g)].map((a) => a[1]!);
  if (args.length !== 16) throw new Error(`expected 16 script arguments, got ${args.length}`);
  const redirections = m[3]!;
  if (!/2> \.\.\/metadata\/tool_stderr > \.\.\/metadata\/tool_stdout/.test(redirections)) {
    throw new Error(`unexpected redirections: ${redirections}`);
  }
  const assignments = [`T=${shellQuote(m[1]!)}`, ...args.map((a, i) => `A${i + 1}=${shellQuote(a)}`)];
  const body = [
    ...assignments,
    'fail() { printf "check failed: %s\\n" "$*" >&2; exit 9; }',
    'expect_contents() { printf "%s" "$2" | cmp -s - "$1" || fail "contents of $1"; }',
    'printf "stdout output\\n"',
    'IDX=$(dirname "$A10")',
    '[ "$(ls "$IDX" | wc -l)" -eq 2 ] || fail "index directory $IDX"',
    '[ "$(ls "$(dirname "$IDX")/seq" | wc -l)" -eq 1 ] || fail "seq directory"',
    'expect_contents "$A2" "Hello world input!!@!"',
    'expect_contents "$A8" "INPUT_EXTRA_CONTENTS"',
    'expect_contents "$A13" "meta input"',
    'expect_contents "$A14" "INPUT METADATA CONTENTS..."',
    'head -c 1024 "$A1" > "$A3" || fail "config input"',
    'printf "WORK DIR OUTPUT" > workdir_output',
    'printf "%s" "${TEST_ENV:-DEFAULT}" > env_test',
    'printf "%s" "$A12" > rewrite_action_test',
    'printf "%s" "$A6" > "$A5"',
    `if [ "$A16" != 0 ]; then printf "%s\\n%s" '{"filename": "gjson_refer"}' '{"filename": "gjson_refer2"}' > galaxy.json;` +
      ` else printf "%s" '[{"filename": "gjson_refer"}, {"filename": "gjson_refer2"}]' > galaxy.json; fi`,
    'printf "gjson_refer_contents" > gjson_refer',
    'printf "gjson_refer_contents2" > gjson_refer2',
    'printf "meta output" > "$(dirname "$A13")/metadata_output"',
    'if [ -e "${_GALAXY_JOB_TMP_DIR:-fakepathnotreal}" ]; then printf tmp-True; else printf tmp-False; fi > tmp_dir_test',
    'if [ -e "${_GALAXY_JOB_HOME_DIR:-fakepathnotreal}" ]; then printf home-True; else printf home-False; fi > home_dir_test',
    'printf "%s" "${MOO:-moo_default}" > "$A7"',
    'mkdir "${A3%.dat}_files" || fail "extra files directory"',
    'printf "EXTRA_OUTPUT_CONTENTS" > "${A3%.dat}_files/extra"',
    'printf "1.0.1" > "$A9"',
    'printf "%s" "$A10" > "$A11"',
    'if [ -e "$(dirname "$T")/subdir/helper.R" ]; then printf True; else printf False; fi > "$A15"',
    'exit 4',
  ];
  return `(\n${body.join('\n')}\n)${redirections}`;
}

interface TranscriptCase {
  readonly file: string;
  readonly title: string;
  readonly token?: string;
  /** Run the server with a file cache. */
  readonly cache?: boolean;
}

const CASES: readonly TranscriptCase[] = [
  { file: 'pulsar-check.jsonl', title: 'default pulsar-check (urllib, no token, transfer actions)' },
  { file: 'pulsar-check-token-curl-errors.jsonl', title: 'pulsar-check with private_token, curl transport (Expect: 100-continue) and --test_errors', token: 'secret' },
  { file: 'pulsar-check-cache.jsonl', title: 'pulsar-check --cache against a server with file_cache_dir', cache: true },
  { file: 'pulsar-check-cache.jsonl', title: 'pulsar-check --cache without file_cache_dir (cache routes answer 404 "not configured", files re-sent as plain uploads)' },
];

for (const c of CASES) {
  test(`replay: ${c.title}`, async (t) => {
    const exchanges = loadTranscript(c.file);
    t.true(exchanges.length > 30, 'transcript loaded');
    const root = await makeRoot();
    const server = await startTestServer({
      root,
      app: { ...(c.token === undefined ? {} : { privateToken: c.token }), ...(c.cache === true ? { fileCacheDir: path.join(root, 'cache') } : {}) },
    });
    t.teardown(() => server.stop());
    const replayer = new Replayer(t, server.url, server.staging, c.token, c.cache === true);
    await replayer.replay(exchanges);
    const expecting = exchanges.filter((ex) => ex.request_headers.some(([k, v]) => k.toLowerCase() === 'expect' && v === '100-continue'));
    t.is(replayer.continuedUploads, expecting.length, 'every Expect: 100-continue upload got its 100 Continue');
    // The recording ends with the client's clean: nothing of the job is left behind.
    t.false(fs.existsSync(path.join(server.staging, JOB_ID)), 'job directory removed by the final DELETE');
  });
}

test('replay: the token transcript is refused without the token', async (t) => {
  const exchanges = loadTranscript('pulsar-check-token-curl-errors.jsonl');
  const server = await startTestServer({ app: { privateToken: 'secret' } });
  t.teardown(() => server.stop());
  const replayer = new Replayer(t, server.url, server.staging, 'not-the-secret');
  const setup = exchanges[0]!;
  t.is(setup.path, '/jobs');
  const reply = await replayer.send(setup, replayer.query(setup, { private_token: 'not-the-secret' }));
  replayer.expectJsonError(reply, 401, 'setup with a wrong token');
  t.false(fs.existsSync(path.join(server.staging, JOB_ID)), 'no job directory for a refused setup');
});
