/**
 * A plain-HTTP GET for stage-in that reads the socket into one fixed buffer.
 *
 * node:http reads each socket chunk into a freshly allocated 64 KiB buffer and copies every body
 * chunk into another new Buffer. At a GiB per second that allocation, and the page faults of the
 * fresh memory, cost the stage-in 1.3–3× curl's time (measured: node:http into `writeSync`
 * 0.85–1.8 s per GiB, this reader 0.52–0.63 s, curl 0.61–0.92 s, same endpoint). Here the socket
 * reads into one 256 KiB buffer (net's `onread`), a small strict HTTP/1.1 reader parses the
 * response head, and the body bytes go to the caller's synchronous sink (a `writeSync` in the
 * stage-in worker thread) before the buffer is read into again.
 *
 * Only what a stage-in needs: one GET per connection (`Connection: close`), bodies framed by
 * Content-Length or chunked (a body that ends with the connection is refused: a cut connection
 * looks the same); 1xx answers skipped. Anything else, or
 * anything malformed, is an error (a MalformedResponse, retried like a connection error). Every
 * part is bounded (head, header count, chunk lines, trailers) and parsed without backtracking.
 * https reads the same way through a TLS socket, with node:https's certificate checks.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';

/** The socket's one read buffer. */
const READ_BUFFER_BYTES = 256 * 1024;
/** Longest response head (status line and headers) accepted. */
const MAX_HEAD_BYTES = 64 * 1024;
const MAX_HEADERS = 128;
/** 1xx answers skipped before the real one. */
const MAX_INTERIM = 8;
/** Longest chunk-size line (with extensions) and trailer section. */
const MAX_CHUNK_LINE = 4096;
const MAX_TRAILER_BYTES = 16 * 1024;
/** Chunk sizes up to 13 hex digits (< 2^52: exact as a Number). */
const MAX_CHUNK_SIZE_DIGITS = 13;

/** A response that is not HTTP/1.x as this reader takes it. */
export class MalformedResponse extends Error {
  constructor(message: string) {
    super(`malformed answer from the files endpoint: ${message}`);
    this.name = 'MalformedResponse';
  }
}

export interface Http1Response {
  readonly status: number;
  /** Answered as HTTP/1.0. */
  readonly http10: boolean;
  /** Header values by lower-case name (a repeated header's values joined with ", "). */
  readonly headers: ReadonlyMap<string, string>;
}

export interface BodyResult {
  /** Body bytes handed to the sink. */
  readonly received: number;
  /** Did the body end where its framing says (false: the connection ended first)? */
  readonly complete: boolean;
}

/** Takes body bytes synchronously; `chunk` is overwritten after it returns. A throw ends the transfer with that error. */
export type BodySink = (chunk: Buffer) => void;

export interface Http1GetOptions {
  /** Resolves the host (the staging policy's checked lookup). */
  readonly lookup: net.LookupFunction;
  readonly signal: AbortSignal;
  /** A connection that sends nothing for this long is dropped. */
  readonly idleTimeoutMs: number;
  /** Extra request headers (names and values checked: no CR, LF or NUL). */
  readonly headers: Readonly<Record<string, string>>;
}

type Framing =
  | { readonly kind: 'none' }
  | { readonly kind: 'length'; remaining: number }
  | { readonly kind: 'chunked'; readonly decoder: ChunkedDecoder }
  | { readonly kind: 'close' };

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: [^\0\r\n]*)?$/;
const FORBIDDEN_VALUE = /[\0\r\n]/;

function abortError(signal: AbortSignal): Error {
  if (signal.reason instanceof Error) return signal.reason;
  const error = new Error('The operation was aborted');
  error.name = 'AbortError';
  return error;
}

const isOws = (c: number): boolean => c === 0x20 || c === 0x09;

/** `text` from `start`, without leading and trailing spaces and tabs (a loop: `/[ \t]+$/` backtracks on inner runs). */
function trimOws(text: string, start: number): string {
  let a = start;
  let b = text.length;
  while (a < b && isOws(text.charCodeAt(a))) a++;
  while (b > a && isOws(text.charCodeAt(b - 1))) b--;
  return text.slice(a, b);
}

/** Parse a response head (without its final CRLF CRLF). */
function parseHead(text: string): Http1Response {
  const lines = text.split('\r\n');
  const match = STATUS_LINE.exec(lines[0] ?? '');
  if (match === null) throw new MalformedResponse('not an HTTP/1.x status line');
  if (lines.length - 1 > MAX_HEADERS) throw new MalformedResponse(`more than ${MAX_HEADERS} headers`);
  const headers = new Map<string, string>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new MalformedResponse('a header line without a name');
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) throw new MalformedResponse('a header name with characters a token may not have');
    const value = trimOws(line, colon + 1);
    if (FORBIDDEN_VALUE.test(value)) throw new MalformedResponse('a header value with a control character');
    const key = name.toLowerCase();
    const before = headers.get(key);
    headers.set(key, before === undefined ? value : `${before}, ${value}`);
  }
  return { status: Number(match[2]), headers, http10: match[1] === '0' };
}

/** How the body of `response` ends (RFC 9112 §6.3, strictly: no Content-Length beside Transfer-Encoding). */
function framingOf(response: Http1Response): Framing {
  const { status, headers } = response;
  if (status === 204 || status === 304) return { kind: 'none' };
  const te = headers.get('transfer-encoding');
  const cl = headers.get('content-length');
  if (te !== undefined) {
    // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
    if (response.http10) throw new MalformedResponse('transfer-encoding in an HTTP/1.0 answer');
    if (te.toLowerCase() !== 'chunked') throw new MalformedResponse(`transfer-encoding "${te.slice(0, 40)}" (only chunked is taken)`);
    if (cl !== undefined) throw new MalformedResponse('both transfer-encoding and content-length');
    return { kind: 'chunked', decoder: new ChunkedDecoder() };
  }
  if (cl !== undefined) {
    // Repeated identical values ("5, 5") are one length; different ones are an error.
    const values = new Set(cl.split(',').map((v) => v.trim()));
    const [only] = values;
    if (values.size !== 1 || only === undefined || !/^\d{1,15}$/.test(only)) throw new MalformedResponse('an unusable content-length');
    return { kind: 'length', remaining: Number(only) };
  }
  return { kind: 'close' };
}

/**
 * The chunked transfer coding (RFC 9112 §7.1), decoded as bytes arrive: chunk data goes to the
 * sink, extensions and trailers are read and dropped (bounded).
 */
class ChunkedDecoder {
  #state: 'size' | 'ext' | 'size-lf' | 'data' | 'data-cr' | 'data-lf' | 'trailer' | 'trailer-lf' | 'done' = 'size';
  #digits = 0;
  #size = 0;
  #remaining = 0;
  #lineBytes = 0;
  #trailerBytes = 0;
  #sawSpace = false;

  get done(): boolean {
    return this.#state === 'done';
  }

  /** Decode `input`; chunk data goes to `sink`. Returns the bytes of `input` used (all, unless the body ended). */
  feed(input: Buffer, sink: BodySink): number {
    let i = 0;
    while (i < input.length && this.#state !== 'done') {
      switch (this.#state) {
        case 'data': {
          const take = Math.min(this.#remaining, input.length - i);
          sink(input.subarray(i, i + take));
          this.#remaining -= take;
          i += take;
          if (this.#remaining === 0) this.#state = 'data-cr';
          continue;
        }
        case 'data-cr':
          if (input[i++] !== 0x0d) throw new MalformedResponse('chunk data not followed by CRLF');
          this.#state = 'data-lf';
          continue;
        case 'data-lf':
          if (input[i++] !== 0x0a) throw new MalformedResponse('chunk data not followed by CRLF');
          this.#state = 'size';
          this.#digits = 0;
          this.#size = 0;
          this.#lineBytes = 0;
          this.#sawSpace = false;
          continue;
        case 'size':
        case 'ext': {
          const c = input[i++] as number;
          if (++this.#lineBytes > MAX_CHUNK_LINE) throw new MalformedResponse('a chunk-size line too long');
          if (c === 0x0d) {
            if (this.#digits === 0) throw new MalformedResponse('a chunk without a size');
            this.#state = 'size-lf';
            continue;
          }
          if (this.#state === 'ext') {
            if (c === 0x0a || c === 0x00) throw new MalformedResponse('a control character in a chunk extension');
            continue;
          }
          if (c === 0x3b) {
            if (this.#digits === 0) throw new MalformedResponse('a chunk without a size');
            this.#state = 'ext';
            continue;
          }
          if (c === 0x20 || c === 0x09) {
            if (this.#digits === 0) throw new MalformedResponse('a chunk size starting with whitespace');
            this.#sawSpace = true;
            continue;
          }
          const v = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
          if (v < 0 || this.#sawSpace) throw new MalformedResponse('a chunk size that is not hexadecimal');
          if (++this.#digits > MAX_CHUNK_SIZE_DIGITS) throw new MalformedResponse('a chunk size too large');
          this.#size = this.#size * 16 + v;
          continue;
        }
        case 'size-lf':
          if (input[i++] !== 0x0a) throw new MalformedResponse('a chunk-size line not ended by CRLF');
          if (this.#size === 0) {
            this.#state = 'trailer';
            this.#lineBytes = 0;
          } else {
            this.#state = 'data';
            this.#remaining = this.#size;
          }
          continue;
        case 'trailer': {
          const c = input[i++] as number;
          if (++this.#trailerBytes > MAX_TRAILER_BYTES) throw new MalformedResponse('trailers too long');
          if (c === 0x0d) this.#state = 'trailer-lf';
          else if (c === 0x0a || c === 0x00) throw new MalformedResponse('a control character in a trailer');
          else this.#lineBytes++;
          continue;
        }
        case 'trailer-lf':
          if (input[i++] !== 0x0a) throw new MalformedResponse('a trailer line not ended by CRLF');
          if (this.#lineBytes === 0) this.#state = 'done';
          else {
            this.#state = 'trailer';
            this.#lineBytes = 0;
          }
          continue;
      }
    }
    return i;
  }
}

/** The request head of a GET of `url` (path and query as the URL class encoded them). */
function requestHead(url: URL, extra: Readonly<Record<string, string>>): string {
  const lines = [`GET ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`];
  if (url.username !== '' || url.password !== '') {
    // As node:http does for a URL with credentials.
    const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
    lines.push(`Authorization: Basic ${Buffer.from(credentials).toString('base64')}`);
  }
  for (const [name, value] of Object.entries(extra)) {
    if (!TOKEN.test(name) || FORBIDDEN_VALUE.test(value)) throw new Error(`request header ${JSON.stringify(name)} is not sendable`);
    lines.push(`${name}: ${value}`);
  }
  lines.push('Connection: close');
  return `${lines.join('\r\n')}\r\n\r\n`;
}

/**
 * One GET over plain HTTP/1.1. `response` resolves with the status and headers; then either
 * `readBody(sink)` streams the body to a synchronous sink, or `discard()` drops the connection.
 */
export class Http1Get {
  readonly response: Promise<Http1Response>;
  readonly #socket: net.Socket;
  readonly #signal: AbortSignal;
  #state: 'head' | 'waiting' | 'body' | 'ended' = 'head';
  #head: Buffer = Buffer.alloc(0);
  /** Where the search for the head's end resumes (the head so far has no CRLF CRLF before it). */
  #scanFrom = 0;
  #interim = 0;
  /** Body bytes that came in the read that ended the head. */
  #early: Buffer | undefined;
  /** The connection ended while waiting for readBody. */
  #eof = false;
  #framing: Framing = { kind: 'none' };
  #sink: BodySink | undefined;
  #received = 0;
  #error: Error | undefined;
  #settleHead: { resolve: (r: Http1Response) => void; reject: (e: Error) => void } | undefined;
  #settleBody: { resolve: (r: BodyResult) => void; reject: (e: Error) => void } | undefined;
  readonly #onAbort = (): void => {
    this.#fail(abortError(this.#signal));
  };

  constructor(url: URL, options: Http1GetOptions) {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`Http1Get takes http: and https: URLs only, not ${url.protocol}`);
    this.#signal = options.signal;
    const head = requestHead(url, options.headers);
    this.response = new Promise<Http1Response>((resolve, reject) => {
      this.#settleHead = { resolve, reject };
    });
    // Settled (and awaited) by the caller; a rejection nobody waits for is not an unhandled one.
    this.response.catch(() => undefined);
    const buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const onread = { buffer, callback: (n: number, buf: Uint8Array): boolean => this.#onRead(buf as Buffer, n) };
    if (url.protocol === 'https:') {
      // As node:https does: the default trust store (with NODE_EXTRA_CA_CERTS), the certificate
      // checked against the host name (SNI sent for names, not for addresses), HTTP/1.1 only.
      // `onread` is a documented tls.connect option (node ≥ 15.1) that @types/node leaves out.
      const tlsOptions: tls.ConnectionOptions & { onread: net.OnReadOpts } = {
        host,
        port: url.port === '' ? 443 : Number(url.port),
        lookup: options.lookup,
        onread,
        ...(net.isIP(host) === 0 ? { servername: host } : {}),
        ALPNProtocols: ['http/1.1'],
      };
      this.#socket = tls.connect(tlsOptions);
      this.#socket.once('secureConnect', () => this.#socket.write(head));
    } else {
      this.#socket = net.connect({ host, port: url.port === '' ? 80 : Number(url.port), lookup: options.lookup, onread });
      this.#socket.once('connect', () => this.#socket.write(head));
    }
    this.#socket.setNoDelay(true);
    this.#socket.setTimeout(options.idleTimeoutMs, () => this.#fail(new Error('the files endpoint sent nothing for too long')));
    this.#socket.on('error', (error) => this.#fail(error));
    this.#socket.once('end', () => this.#onEnd());
    this.#socket.once('close', () => {
      // An end seen while waiting for readBody is kept (#eof): the body may be whole in #early.
      if (!(this.#state === 'waiting' && this.#eof)) this.#fail(new Error('the files endpoint closed the connection'));
    });
    if (this.#signal.aborted) this.#onAbort();
    else this.#signal.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** Stream the body to `sink` (called synchronously for every piece). Once, after `response`. */
  readBody(sink: BodySink): Promise<BodyResult> {
    if (this.#state !== 'waiting') return Promise.reject(this.#error ?? new Error('readBody: the response head has not been read, or the body was taken'));
    if (this.#framing.kind === 'close') {
      // Its end could not be told from a cut connection (over TLS, from a bare TCP close either).
      const error = new MalformedResponse('a body framed by neither content-length nor chunked');
      this.#fail(error);
      return Promise.reject(error);
    }
    const done = new Promise<BodyResult>((resolve, reject) => {
      this.#settleBody = { resolve, reject };
    });
    this.#state = 'body';
    this.#sink = sink;
    const early = this.#early;
    this.#early = undefined;
    try {
      if (early !== undefined && early.length > 0) this.#body(early);
    } catch (error) {
      this.#fail(error instanceof Error ? error : new Error(String(error)));
    }
    if (this.#state === 'body') {
      if (this.#framing.kind === 'none' || (this.#framing.kind === 'length' && this.#framing.remaining === 0)) this.#finish(true);
      // The connection ended before readBody (a TLS close read with the head): what came is all there is.
      else if (this.#eof) this.#finish(false);
      else this.#socket.resume();
    }
    return done;
  }

  /** Drop the connection (the body, if any, is not read). */
  discard(): void {
    this.#end();
  }

  #onRead(buf: Buffer, n: number): boolean {
    try {
      if (this.#state === 'head') return this.#headBytes(buf.subarray(0, n));
      if (this.#state === 'body') this.#body(buf.subarray(0, n));
      else if (this.#state === 'waiting') {
        // A read that was under way when the head ended: kept for readBody.
        this.#early = Buffer.concat([this.#early ?? Buffer.alloc(0), buf.subarray(0, n)]);
        if (this.#early.length > READ_BUFFER_BYTES) throw new MalformedResponse('body bytes before they were asked for');
      }
      // Bytes after the body, or after an end, are not read.
    } catch (error) {
      this.#fail(error instanceof Error ? error : new Error(String(error)));
    }
    return this.#state === 'body';
  }

  /** Gather the head; at its end, parse it and pause with what followed kept aside. Returns whether to keep reading. */
  #headBytes(bytes: Buffer): boolean {
    this.#head = this.#head.length === 0 ? Buffer.from(bytes) : Buffer.concat([this.#head, bytes]);
    for (;;) {
      const end = this.#head.indexOf('\r\n\r\n', this.#scanFrom, 'latin1');
      if (end < 0) {
        if (this.#head.length > MAX_HEAD_BYTES) throw new MalformedResponse(`a response head over ${MAX_HEAD_BYTES} bytes`);
        this.#scanFrom = Math.max(0, this.#head.length - 3);
        return true;
      }
      if (end > MAX_HEAD_BYTES) throw new MalformedResponse(`a response head over ${MAX_HEAD_BYTES} bytes`);
      const response = parseHead(this.#head.toString('latin1', 0, end));
      const rest = this.#head.subarray(end + 4);
      this.#head = Buffer.alloc(0);
      this.#scanFrom = 0;
      if (response.status < 200) {
        if (response.status === 101) throw new MalformedResponse('a protocol switch');
        if (++this.#interim > MAX_INTERIM) throw new MalformedResponse(`more than ${MAX_INTERIM} interim (1xx) answers`);
        this.#head = rest;
        continue;
      }
      this.#framing = framingOf(response);
      this.#early = rest;
      this.#state = 'waiting';
      const settle = this.#settleHead;
      this.#settleHead = undefined;
      settle?.resolve(response);
      return false;
    }
  }

  #body(bytes: Buffer): void {
    const sink = this.#sink as BodySink;
    const framing = this.#framing;
    switch (framing.kind) {
      case 'none':
      case 'close':
        break;
      case 'length': {
        const take = Math.min(framing.remaining, bytes.length);
        if (take > 0) {
          this.#received += take;
          framing.remaining -= take;
          sink(take === bytes.length ? bytes : bytes.subarray(0, take));
        }
        if (framing.remaining > 0) return;
        break;
      }
      case 'chunked':
        framing.decoder.feed(bytes, (chunk) => {
          this.#received += chunk.length;
          sink(chunk);
        });
        if (!framing.decoder.done) return;
        break;
    }
    this.#finish(true);
  }

  #onEnd(): void {
    if (this.#state === 'head') this.#fail(new Error('the files endpoint closed the connection before answering'));
    else if (this.#state === 'body') this.#finish(false);
    // A TLS socket still delivers what it had decrypted, and the peer's close, after onread paused it.
    else if (this.#state === 'waiting') this.#eof = true;
  }

  #finish(complete: boolean): void {
    const settle = this.#settleBody;
    this.#settleBody = undefined;
    this.#end();
    settle?.resolve({ received: this.#received, complete });
  }

  #fail(error: Error): void {
    this.#error ??= error;
    const head = this.#settleHead;
    const body = this.#settleBody;
    this.#settleHead = undefined;
    this.#settleBody = undefined;
    this.#end();
    head?.reject(this.#error);
    body?.reject(this.#error);
  }

  #end(): void {
    if (this.#state !== 'ended') {
      this.#state = 'ended';
      this.#signal.removeEventListener('abort', this.#onAbort);
    }
    this.#early = undefined;
    if (!this.#socket.destroyed) this.#socket.destroy();
  }
}
