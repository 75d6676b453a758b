/**
 * The HTTP side of relay mode (RELAY.md): one client per server for the relay's origin, holding the
 * relay's auth (mq/relay-auth.ts) and the link's health. Every authenticated call carries
 * `Authorization: Bearer <JWT>`; a 401 drops the token and the call is tried once more with a new
 * one (as the upstream client does). Bodies read back are bounded; nothing the relay answers is
 * logged but its `detail`/`error` text, cut short (login and refresh answers hold tokens: never).
 *
 * Failures are typed so callers can tell what to do:
 * - `RelayHttpError` with `transient` (429, 5xx, 408): back off and try again;
 * - `RelayHttpError` otherwise (4xx): the request itself is wrong;
 * - `RelayUnreachable`: no answer (refused, reset, DNS, timeout): back off and try again;
 * - `RelayAuthRefused` (relay-auth.ts): the credentials are refused; retrying will not help.
 */
import { messageOf } from '../errors.js';
import type { Logger } from '../log.js';

export type RelayLinkState = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** A relay answer that is not a success. */
export class RelayHttpError extends Error {
  override readonly name = 'RelayHttpError';
  constructor(
    readonly status: number,
    readonly route: string,
    detail: string,
    /** `Retry-After` in ms, when the relay sent one. */
    readonly retryAfterMs: number | undefined,
  ) {
    super(`${route}: HTTP ${status}${detail === '' ? '' : ` (${detail})`}`);
  }

  /** Worth retrying after a pause: rate limited, relay-side failures, request timeouts. */
  get transient(): boolean {
    return this.status === 429 || this.status === 408 || this.status >= 500;
  }
}

/** No HTTP answer from the relay (connection refused or cut, DNS, timeout). */
export class RelayUnreachable extends Error {
  override readonly name = 'RelayUnreachable';
  constructor(
    message: string,
    /** No answer within the call's timeout (for a long poll: no messages). */
    readonly timedOut = false,
  ) {
    super(message);
  }
}

export interface RelayAnswer {
  readonly status: number;
  readonly json: unknown;
}

export interface RelayCall {
  readonly method: 'GET' | 'POST';
  /** Path and query, e.g. `/messages/poll`. */
  readonly path: string;
  /** A short name for messages (`poll`, `publish`, …). */
  readonly route: string;
  readonly json?: unknown;
  readonly form?: Readonly<Record<string, string>>;
  readonly headers?: Readonly<Record<string, string>>;
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** Largest answer body read (bytes). */
  readonly maxBytes?: number;
  /** Answers (besides 2xx) returned instead of thrown, e.g. 404 for history. */
  readonly accept?: readonly number[];
}

/** Something that gives bearer tokens (relay-auth.ts). */
export interface BearerSource {
  bearer(signal?: AbortSignal): Promise<string>;
  /** The relay refused this token (401): do not hand it out again. */
  invalidate(token: string): void;
}

const DEFAULT_MAX_BYTES = 1024 * 1024;
const MAX_DETAIL = 200;

/** The relay's one-line reason, from `{"detail": "…"}` or `{"error": "…"}`, cut short. */
function detailOf(json: unknown): string {
  if (typeof json !== 'object' || json === null) return '';
  const record = json as Record<string, unknown>;
  const value = record['detail'] ?? record['error'];
  const text = typeof value === 'string' ? value : Array.isArray(value) ? 'validation error' : '';
  return text.length > MAX_DETAIL ? `${text.slice(0, MAX_DETAIL)}…` : text;
}

function retryAfterOf(headers: Headers): number | undefined {
  const value = headers.get('retry-after');
  if (value === null || !/^\d{1,6}$/.test(value.trim())) return undefined;
  return Number(value.trim()) * 1000;
}

/** The body as JSON, reading at most `maxBytes` (more: the request fails). */
async function readJson(res: Response, maxBytes: number, route: string): Promise<unknown> {
  const length = Number(res.headers.get('content-length') ?? Number.NaN);
  if (Number.isFinite(length) && length > maxBytes) {
    await res.body?.cancel().catch(() => undefined);
    throw new RelayUnreachable(`${route}: the relay's answer (${length} bytes) is larger than ${maxBytes} bytes`);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (res.body !== null) {
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > maxBytes) {
        await reader.cancel().catch(() => undefined);
        throw new RelayUnreachable(`${route}: the relay's answer is larger than ${maxBytes} bytes`);
      }
      chunks.push(value);
    }
  }
  if (total === 0) return undefined;
  const text = Buffer.concat(chunks, total).toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** One HTTP call to the relay, no auth: what it answered, or a typed failure. */
export async function relayFetch(baseUrl: string, call: RelayCall, bearer?: string): Promise<RelayAnswer> {
  const headers: Record<string, string> = { accept: 'application/json', ...call.headers };
  let body: string | undefined;
  if (call.form !== undefined) {
    body = new URLSearchParams(call.form).toString();
    headers['content-type'] = 'application/x-www-form-urlencoded';
  } else if (call.json !== undefined) {
    body = JSON.stringify(call.json);
    headers['content-type'] = 'application/json';
  }
  if (bearer !== undefined) headers['authorization'] = `Bearer ${bearer}`;
  const timeout = AbortSignal.timeout(call.timeoutMs);
  const signal = call.signal === undefined ? timeout : AbortSignal.any([timeout, call.signal]);
  let res: Response;
  let json: unknown;
  try {
    res = await fetch(`${baseUrl}${call.path}`, { method: call.method, headers, ...(body === undefined ? {} : { body }), signal, redirect: 'error' });
    json = await readJson(res, call.maxBytes ?? DEFAULT_MAX_BYTES, call.route);
  } catch (error) {
    if (call.signal?.aborted === true) throw call.signal.reason instanceof Error ? call.signal.reason : new Error('aborted');
    if (error instanceof RelayUnreachable) throw error;
    const cause = (error as { cause?: unknown }).cause;
    const code = (cause as { code?: unknown } | undefined)?.code;
    const reason = timeout.aborted ? `no answer within ${Math.round(call.timeoutMs / 1000)} s` : typeof code === 'string' ? code : messageOf(cause ?? error);
    throw new RelayUnreachable(`${call.route}: ${reason}`, timeout.aborted);
  }
  if ((res.status >= 200 && res.status < 300) || (call.accept?.includes(res.status) ?? false)) return { status: res.status, json };
  // Login and refresh answers are never echoed beyond the relay's `detail`.
  throw new RelayHttpError(res.status, call.route, detailOf(json), retryAfterOf(res.headers));
}

/** The relay link of the server: authenticated calls and the health they show. */
export class RelayClient {
  readonly baseUrl: string;
  readonly #auth: BearerSource;
  readonly #log: Logger;
  #state: RelayLinkState = 'connecting';
  #since = Date.now();
  #lastError: string | undefined;
  readonly #connectedListeners = new Set<() => void>();
  /** Requests sent since startup (health, bench). */
  requests = 0;

  constructor(baseUrl: string, auth: BearerSource, log: Logger) {
    this.baseUrl = baseUrl;
    this.#auth = auth;
    this.#log = log;
  }

  get state(): RelayLinkState {
    return this.#state;
  }

  /** Called whenever the link (re)becomes connected. */
  onConnected(listener: () => void): void {
    this.#connectedListeners.add(listener);
  }

  health(): { state: RelayLinkState; since: string; lastError?: string } {
    return { state: this.#state, since: new Date(this.#since).toISOString(), ...(this.#lastError === undefined ? {} : { lastError: this.#lastError }) };
  }

  close(): void {
    this.#set('closed');
  }

  /** An authenticated call; a 401 drops the token and the call is made once more with a fresh one. */
  async call(call: RelayCall): Promise<RelayAnswer> {
    for (let attempt = 0; ; attempt++) {
      let token: string;
      try {
        token = await this.#auth.bearer(call.signal);
      } catch (error) {
        this.failed(error);
        throw error;
      }
      try {
        this.requests++;
        const answer = await relayFetch(this.baseUrl, call, token);
        this.succeeded();
        return answer;
      } catch (error) {
        if (error instanceof RelayHttpError && error.status === 401 && attempt === 0) {
          this.#auth.invalidate(token);
          continue;
        }
        if (!(error instanceof RelayHttpError) || error.transient || error.status === 401) this.failed(error);
        throw error;
      }
    }
  }

  /** The relay answered a call (or the auth just did). */
  succeeded(): void {
    if (this.#state === 'connected') return;
    const was = this.#state;
    this.#lastError = undefined;
    this.#set('connected');
    if (was !== 'connecting') this.#log.info('relay reachable again');
    for (const listener of this.#connectedListeners) listener();
  }

  /** A call failed in a way that says the link is not working (unreachable, 5xx, 429, auth). */
  failed(error: unknown): void {
    if (this.#state === 'closed') return;
    this.#lastError = messageOf(error);
    this.#set('disconnected');
  }

  #set(state: RelayLinkState): void {
    if (this.#state === 'closed') return;
    if (state !== this.#state) this.#since = Date.now();
    this.#state = state;
  }
}

/** Capped exponential backoff with jitter: 1 s, 2 s, 4 s, … up to `capMs`, each drawn from [d/2, d]. */
export class Backoff {
  #attempt = 0;
  constructor(
    readonly baseMs: number,
    readonly capMs: number,
  ) {}

  next(atLeastMs = 0): number {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.#attempt, 20));
    this.#attempt++;
    return Math.max(atLeastMs === 0 ? 0 : Math.min(atLeastMs, this.capMs), Math.round(ceiling / 2 + Math.random() * (ceiling / 2)));
  }

  reset(): void {
    this.#attempt = 0;
  }

  get attempts(): number {
    return this.#attempt;
  }
}
