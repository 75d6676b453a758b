/**
 * A memory pulsar-relay for tests, on 127.0.0.1, implementing the wire contract of
 * /work/shared/RELAY.md (pulsar-relay 0.2.1 with memory storage, as observed).
 *
 * Implemented from RELAY.md:
 * - Routes: `POST /auth/login`, `POST /auth/token/refresh`, `POST /auth/register`,
 *   `POST /api/v1/messages`, `POST /messages/poll`, `GET /messages/poll/stats`,
 *   `GET /api/v1/topics/{t}/messages`, `GET /health`, `GET /ready`. Bearer auth on all but
 *   login, refresh, health and ready; 401 `Not authenticated` (no bearer) / `Invalid or expired
 *   token` (bad, expired, or signed before a restart unless `jwtSecret` is fixed).
 * - Login: form-encoded only (a JSON body is 422), 200 `{access_token, token_type:"bearer",
 *   expires_in, refresh_token, refresh_token_secondary:null}`; HS256 JWT with `{sub, username,
 *   permissions, exp, iat, jti:<32 hex>}` and `exp - iat == expires_in`; refresh token
 *   `<uuid>.<43 chars>`; wrong credentials 401 + `WWW-Authenticate: Bearer`; inactive user 403.
 * - Rate limits per client IP, fixed 60 s window starting at the first hit: login 5, refresh 10,
 *   publish 120 (knobs). Failed logins count, 422s do not. 429 `{"error":"Rate limit exceeded:
 *   N per 1 minute"}`, with no extra headers (RELAY.md shows none).
 * - Refresh: JSON `{refresh_token}`, login shape back with a new refresh token; single use; a
 *   replayed (rotated) token is 401 `invalid refresh token` and revokes the whole chain, the
 *   newest token included; access tokens already issued stay valid until they expire.
 * - Publish: `{topic, payload:object, ttl?:int>0, metadata?:{str:str}}` → 201 `{message_id:
 *   "msg_<12 hex>", topic, timestamp:"…Z"}`; topics `[A-Za-z0-9_-]{1,255}` (checked without a
 *   regex) auto-created per user; `Idempotency-Key`: same key, same user, within 600 s → same
 *   response, nothing stored, nobody woken; ttl accepted and ignored; 422s for a bad topic, a
 *   non-object payload, non-string metadata values; bodies over 1 MiB → 413
 *   `{"error":"PAYLOAD_TOO_LARGE",…}` on Content-Length.
 * - Poll: `{topics:[1..20], timeout:int 1..60, since?:{topic:id}}`; `30.0` accepted, `1.5`,
 *   `0`, `61`, 21 topics → 422. No `since` (or `{}`): stored messages ignored, a waiter is
 *   registered and answered at the first publish (with anything else queued by then) or with
 *   `{"messages":[],"has_more":false}` after `timeout` whole seconds. Non-empty `since`: per topic
 *   in request order, up to 100 messages after the cursor, a topic missing from the map or an
 *   unknown id read from the OLDEST retained message, returned at once; `has_more` when 100 or
 *   more come back; if none, it waits like a plain poll. Shapes: waiter path `{type:"message",
 *   message_id, topic, payload, timestamp:"…Z", metadata:null|{…}}`; since path `{topic,
 *   message_id, payload, timestamp:"…+00:00", metadata:{…}, stream_id:null}`.
 * - Fan-out to every waiter on the channel `<user_id>/<topic>`; no acks. A waiter whose client
 *   disconnected stays (and counts in stats) until its timeout. At most 50 waiters per user
 *   (429). Stats `{active_waiters, subscribed_topics, topic_subscriber_counts}` shows every
 *   user's channels to any authenticated user.
 * - Namespaces: another user's same-named topic has no history (404) and gets nothing.
 * - History: `{messages:[{message_id,topic,payload,timestamp,metadata}], total, limit, order,
 *   cursor, next_cursor}`, 404 for a topic this user never posted to.
 * - Health `{"status":"healthy","timestamp":…,"version":"0.1.0"}`; ready
 *   `{"ready":true,"checks":{"storage":"ok"}}`.
 * - `restart()` loses messages, topics, waiters, refresh tokens, idempotency keys, rate-limit
 *   windows, registered users and (unless `jwtSecret` is given) the signing key. Configured
 *   users keep existing with the same user id. Open connections are cut, as a process restart
 *   does; `downMs` keeps the port closed a while (clients then see their kept-alive sockets
 *   close before they reconnect; without it a POST may land on a stale socket and fail).
 *
 * Where RELAY.md is silent (choices, the simplest behaviour; some follow upstream's code):
 * - `timeout` absent → 30. Numbers only (no numeric strings, no booleans) for `timeout`/`ttl`.
 * - Poll topic names are checked like publish names (422). Duplicate poll topics count once.
 * - `since` values must be strings, `metadata` values strings; `null` equals absent for
 *   `since`, `ttl`, `metadata`. Unknown body fields are ignored. The publish/poll/refresh body is
 *   parsed as JSON whatever its Content-Type; invalid JSON → 422.
 * - 422 body: `{"detail":[{"type","loc","msg"}]}` (FastAPI-like, the input not echoed).
 * - Rate-limit order: auth (401), validation (422) and the 413 first, so none counts; failed
 *   refreshes count like failed logins; an idempotent replay counts. The client IP is the
 *   socket's remote address (all 127.0.0.1 here: every client of one fake shares the windows).
 *   Polls, history, stats and register are not rate limited.
 * - Permissions: publish needs `write`, poll and history `read`, register `admin` (403
 *   `{"detail":"Not enough permissions"}`). Users get `["read","write"]` by default.
 * - A bearer whose user no longer exists or is inactive: 401 `Invalid or expired token`.
 * - Refresh tokens live 30 days (knob); any refresh failure (malformed, unknown, expired,
 *   revoked chain, user gone or inactive) is 401 `invalid refresh token` + `WWW-Authenticate:
 *   Bearer`. Bad refresh body → 422, not counted.
 * - Register: `{username, password ≥8, permissions?}` → 201 `{user_id, username, is_active,
 *   permissions}`; a taken username → 400 `{"detail":"Username already exists"}`.
 * - Waiter 429 body: `{"detail":"Too many concurrent poll connections"}`.
 * - Waiter path: the waiter answers on the next turn of the event loop after the first
 *   message, with every message queued for it by then (upstream drains its queue likewise).
 * - History: `limit` default 10, capped at 100, `order` `desc` (default) or `asc`, `cursor`
 *   exclusive (after it for asc, before it for desc; unknown → from the start), `total` is the
 *   number returned, `next_cursor` the last id returned or null; `limit` not an integer → 422,
 *   `limit < 1` or another `order` → 400. Timestamps as "…Z".
 * - 404 `{"detail":"Not Found"}` for other paths, 405 for other methods on a known path.
 * - A payload nested too deeply to serialise is 422 (upstream would fail another way).
 *
 * Not implemented: bulk publish (RELAY.md names its limit, not its route), WebSocket, topic
 * management, device/OIDC flows, `/auth/me`, users listing. Bounded deviations: at most
 * `maxMessagesPerTopic` (default 10,000, not 1,000,000) messages per (user, topic), oldest
 * dropped (a cursor on a dropped id is then unknown: read from the oldest); a body without
 * Content-Length is also cut at `maxBodyBytes`; the idempotency, refresh-token and request logs
 * are capped.
 *
 * Test knobs: token lifetimes, rate limits, waiter cap, a fake clock (`advanceClock`) for token
 * expiry, rate windows and the idempotency window (poll timeouts use real time), fault injection
 * per route (a status, a connection reset, a delay, for the next N requests), a hook between
 * the `since` read and the waiter registration (`betweenSinceReadAndWait`, the race RELAY.md
 * describes), and inspection (stored messages, `whenMessage`, publishes with their keys, requests
 * with their bearer and key, waiters and `whenWaiting`, `publish` as a user without HTTP).
 */
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface RelayUser {
  readonly username: string;
  readonly password: string;
  readonly active?: boolean;
  readonly permissions?: readonly string[];
  /** Stable across restarts; a random UUID when absent. */
  readonly userId?: string;
}

export type RelayRoute = 'login' | 'refresh' | 'register' | 'publish' | 'poll' | 'stats' | 'history' | 'health' | 'ready';
type LimitedRoute = 'login' | 'refresh' | 'publish';

export interface RelayFakeOptions {
  /** Default: one user `relay` / `relay-password`. */
  readonly users?: readonly RelayUser[];
  /** The bootstrap admin (permissions read, write, admin). */
  readonly admin?: { readonly username: string; readonly password: string };
  /** Port to bind on 127.0.0.1; 0 (default) picks one, kept across restarts. */
  readonly port?: number;
  /** Access-token lifetime in seconds (default 600). */
  readonly accessTokenSeconds?: number;
  /** Refresh-token lifetime in seconds (default 30 days). */
  readonly refreshTokenSeconds?: number;
  /** HS256 key; when given it survives restarts (tokens issued before stay valid). */
  readonly jwtSecret?: string;
  /** Requests per 60 s window per client IP; `null` turns a limit off. */
  readonly rateLimits?: Partial<Record<LimitedRoute, number | null>>;
  readonly maxWaitersPerUser?: number;
  readonly maxBodyBytes?: number;
  readonly maxMessagesPerTopic?: number;
  readonly idempotencySeconds?: number;
  /**
   * Run between a `since` read that found nothing and the waiter registration: what it publishes
   * to the polled topics is missed by that poll (the race RELAY.md describes), deterministically.
   */
  readonly betweenSinceReadAndWait?: (username: string, topics: readonly string[]) => void | Promise<void>;
  /** Cap of the request and publish logs (default 10,000, oldest dropped). */
  readonly maxLogEntries?: number;
}

export interface Fault {
  /** How many requests of the route it applies to (default 1). */
  readonly times?: number;
  /** Held this long before the rest of the fault (or normal handling). */
  readonly delayMs?: number;
  /** Answer this status instead of handling. */
  readonly status?: number;
  readonly body?: unknown;
  readonly headers?: Readonly<Record<string, string>>;
  /** Destroy the connection instead of answering. */
  readonly reset?: boolean;
}

export interface StoredMessage {
  readonly message_id: string;
  readonly topic: string;
  readonly payload: Record<string, unknown>;
  readonly timestamp: string;
  readonly metadata: Record<string, string> | null;
}

export interface PublishRecord {
  readonly username: string;
  readonly topic: string;
  readonly messageId: string;
  readonly idempotencyKey: string | null;
  /** True when the key matched an earlier publish: nothing stored. */
  readonly duplicate: boolean;
}

export interface RequestRecord {
  readonly route: RelayRoute | null;
  readonly method: string;
  readonly path: string;
  /** The bearer token sent, if any. */
  readonly bearer: string | null;
  /** The user the bearer authenticated, if it did. */
  username: string | null;
  readonly idempotencyKey: string | null;
  /** Parsed JSON body of publish, poll and refresh requests. */
  body: unknown;
  /** Null while a long poll is waiting; 0 for an injected reset or a client gone before its body was read. */
  status: number | null;
}

export interface RelayFake {
  readonly url: string;
  readonly port: number;
  readonly requests: readonly RequestRecord[];
  readonly published: readonly PublishRecord[];
  /** Messages retained for this user's topic, oldest first. */
  messages(username: string, topic: string): StoredMessage[];
  /** Publish as `username`, as `POST /api/v1/messages` would (fan-out included). */
  publish(username: string, topic: string, payload: Record<string, unknown>, metadata?: Record<string, string>): string;
  userId(username: string): string;
  /** Live waiters, of one user (and topic) or all. */
  waiting(username?: string, topic?: string): number;
  /**
   * The first retained message of `username`'s `topic` whose payload satisfies `match` (all when
   * absent), now or when it is published.
   */
  whenMessage(username: string, topic: string, match?: (payload: Record<string, unknown>) => boolean): Promise<StoredMessage>;
  /** Resolves once at least `count` waiters of `username` wait on `topic`. */
  whenWaiting(username: string, topic: string, count?: number): Promise<void>;
  /** Applies to the next requests of `route`, after the faults already queued. */
  inject(route: RelayRoute, fault: Fault): void;
  /** Moves the fake clock (token expiry, rate windows, idempotency window) forward. */
  advanceClock(seconds: number): void;
  /** A memory relay restart: state lost, connections cut, same port. */
  restart(options?: { readonly downMs?: number }): Promise<void>;
  close(): Promise<void>;
}

const DEFAULT_USERS: readonly RelayUser[] = [{ username: 'relay', password: 'relay-password' }];
const DEFAULT_LIMITS: Record<LimitedRoute, number> = { login: 5, refresh: 10, publish: 120 };
const WINDOW_MS = 60_000;
const PER_TOPIC_POLL_LIMIT = 100;
const MAX_POLL_TOPICS = 20;
const IDEMPOTENCY_CAP = 10_000;
const REFRESH_TOKEN_CAP = 10_000;
const JSON_TYPE = { 'content-type': 'application/json' };

interface User {
  readonly userId: string;
  readonly username: string;
  readonly password: string;
  readonly active: boolean;
  readonly permissions: readonly string[];
}

interface Stored {
  readonly id: string;
  readonly topic: string;
  readonly payloadJson: string;
  readonly at: number;
  readonly metadata: Record<string, string> | null;
}

interface Channel {
  readonly messages: Stored[];
}

interface Waiter {
  readonly userId: string;
  readonly channels: readonly string[];
  readonly res: http.ServerResponse;
  readonly record: RequestRecord;
  readonly queued: Stored[];
  timer: NodeJS.Timeout | undefined;
  flushing: boolean;
}

interface RefreshToken {
  /** As sent (43 base64url characters): compared as text, base64 decoding is lenient. */
  readonly secret: string;
  readonly userId: string;
  readonly chain: string;
  readonly expiresAt: number;
  rotated: boolean;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(`HTTP ${status}`);
  }
}

const unprocessable = (loc: readonly (string | number)[], msg: string): HttpError =>
  new HttpError(422, { detail: [{ type: 'value_error', loc: ['body', ...loc], msg }] });

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `[A-Za-z0-9_-]{1,255}`, one character at a time. */
export function validTopicName(name: unknown): name is string {
  if (typeof name !== 'string' || name.length < 1 || name.length > 255) return false;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    const ok = (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 45;
    if (!ok) return false;
  }
  return true;
}

const base64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url');

/** Equal strings, compared in constant time for equal lengths. */
function sameText(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}
const isoZ = (ms: number): string => new Date(ms).toISOString();
const isoOffset = (ms: number): string => `${new Date(ms).toISOString().slice(0, -1)}+00:00`;

/** A JSON object text with `payloadJson` spliced in as `payload` (kept as text: see publish). */
function withPayload(fields: Record<string, unknown>, payloadJson: string): string {
  return `{"payload":${payloadJson},${JSON.stringify(fields).slice(1)}`;
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  sendText(res, status, JSON.stringify(body), headers);
}

function sendText(res: http.ServerResponse, status: number, text: string, headers: Readonly<Record<string, string>> = {}): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { ...JSON_TYPE, ...headers });
  res.end(text);
}

const viewOf = (m: Stored): StoredMessage => ({
  message_id: m.id,
  topic: m.topic,
  payload: JSON.parse(m.payloadJson) as Record<string, unknown>,
  timestamp: isoZ(m.at),
  metadata: m.metadata,
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function routeOf(method: string, pathname: string): { route: RelayRoute; methodOk: boolean; topic?: string } | null {
  const fixed: Record<string, [RelayRoute, string]> = {
    '/auth/login': ['login', 'POST'],
    '/auth/token/refresh': ['refresh', 'POST'],
    '/auth/register': ['register', 'POST'],
    '/api/v1/messages': ['publish', 'POST'],
    '/messages/poll': ['poll', 'POST'],
    '/messages/poll/stats': ['stats', 'GET'],
    '/health': ['health', 'GET'],
    '/ready': ['ready', 'GET'],
  };
  const hit = Object.hasOwn(fixed, pathname) ? fixed[pathname] : undefined;
  if (hit !== undefined) return { route: hit[0], methodOk: method === hit[1] };
  const prefix = '/api/v1/topics/';
  const suffix = '/messages';
  if (pathname.startsWith(prefix) && pathname.endsWith(suffix) && pathname.length > prefix.length + suffix.length) {
    const raw = pathname.slice(prefix.length, pathname.length - suffix.length);
    if (raw.includes('/')) return null;
    let topic: string;
    try {
      topic = decodeURIComponent(raw);
    } catch {
      return null;
    }
    return { route: 'history', methodOk: method === 'GET', topic };
  }
  return null;
}

export async function startRelayFake(options: RelayFakeOptions = {}): Promise<RelayFake> {
  const accessSeconds = options.accessTokenSeconds ?? 600;
  const refreshSeconds = options.refreshTokenSeconds ?? 30 * 24 * 3600;
  const maxBody = options.maxBodyBytes ?? 1024 * 1024;
  const maxPerTopic = options.maxMessagesPerTopic ?? 10_000;
  const maxWaiters = options.maxWaitersPerUser ?? 50;
  const idempotencyMs = (options.idempotencySeconds ?? 600) * 1000;
  const maxLog = options.maxLogEntries ?? 10_000;
  const limits: Record<LimitedRoute, number | null> = { ...DEFAULT_LIMITS, ...options.rateLimits };

  const configured: User[] = [...(options.users ?? DEFAULT_USERS)].map((u) => ({
    userId: u.userId ?? randomUUID(),
    username: u.username,
    password: u.password,
    active: u.active ?? true,
    permissions: [...(u.permissions ?? ['read', 'write'])],
  }));
  if (options.admin !== undefined) {
    configured.push({ userId: randomUUID(), ...options.admin, active: true, permissions: ['read', 'write', 'admin'] });
  }

  let clockOffsetMs = 0;
  const now = (): number => Date.now() + clockOffsetMs;

  const requests: RequestRecord[] = [];
  const published: PublishRecord[] = [];
  const faults = new Map<RelayRoute, Fault[]>();
  const watchers: { channel: string; count: number; resolve: () => void }[] = [];
  const messageWatchers: { channel: string; match: (payload: Record<string, unknown>) => boolean; resolve: (m: StoredMessage) => void }[] = [];

  // Everything a restart loses.
  let users = new Map<string, User>();
  let secret = Buffer.alloc(0);
  let channels = new Map<string, Channel>();
  let waiters = new Set<Waiter>();
  let waitersByChannel = new Map<string, Set<Waiter>>();
  let waitersByUser = new Map<string, number>();
  let refreshTokens = new Map<string, RefreshToken>();
  let revokedChains = new Set<string>();
  let idempotency = new Map<string, { expiresAt: number; messageId: string; topic: string; timestamp: string }>();
  let windows = new Map<string, { start: number; count: number }>();
  const messageIds = new Set<string>();

  function resetState(): void {
    users = new Map(configured.map((u) => [u.username, u]));
    secret = options.jwtSecret !== undefined ? Buffer.from(options.jwtSecret) : randomBytes(32);
    for (const w of waiters) clearTimeout(w.timer);
    channels = new Map();
    messageIds.clear();
    waiters = new Set();
    waitersByChannel = new Map();
    waitersByUser = new Map();
    refreshTokens = new Map();
    revokedChains = new Set();
    idempotency = new Map();
    windows = new Map();
  }
  resetState();

  const capped = <T>(list: T[], item: T): void => {
    list.push(item);
    if (list.length > maxLog) list.splice(0, list.length - maxLog);
  };
  const userById = (id: string): User | undefined => [...users.values()].find((u) => u.userId === id);

  // ---- tokens ---------------------------------------------------------------------------

  function sign(data: string): Buffer {
    return createHmac('sha256', secret).update(data).digest();
  }

  function tokenResponse(user: User, chain: string): Record<string, unknown> {
    const iat = Math.floor(now() / 1000);
    const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const claims = base64url(
      JSON.stringify({ sub: user.userId, username: user.username, permissions: user.permissions, exp: iat + accessSeconds, iat, jti: randomBytes(16).toString('hex') }),
    );
    const access = `${header}.${claims}.${base64url(sign(`${header}.${claims}`))}`;
    const jti = randomUUID();
    const refreshSecret = randomBytes(32).toString('base64url');
    refreshTokens.set(jti, { secret: refreshSecret, userId: user.userId, chain, expiresAt: now() + refreshSeconds * 1000, rotated: false });
    if (refreshTokens.size > REFRESH_TOKEN_CAP) {
      const oldest = refreshTokens.keys().next();
      if (oldest.done !== true) refreshTokens.delete(oldest.value);
    }
    return {
      access_token: access,
      token_type: 'bearer',
      expires_in: accessSeconds,
      refresh_token: `${jti}.${refreshSecret}`,
      refresh_token_secondary: null,
    };
  }

  /** The user of a valid bearer, or a 401. */
  function authenticate(bearer: string | null): User {
    if (bearer === null) throw new HttpError(401, { detail: 'Not authenticated' }, { 'www-authenticate': 'Bearer' });
    const invalid = new HttpError(401, { detail: 'Invalid or expired token' }, { 'www-authenticate': 'Bearer' });
    const parts = bearer.split('.');
    if (parts.length !== 3) throw invalid;
    const [header, claims, signature] = parts as [string, string, string];
    if (!sameText(signature, base64url(sign(`${header}.${claims}`)))) throw invalid;
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(claims, 'base64url').toString('utf8'));
    } catch {
      throw invalid;
    }
    if (!isObject(parsed) || typeof parsed['exp'] !== 'number' || typeof parsed['sub'] !== 'string') throw invalid;
    if (parsed['exp'] * 1000 <= now()) throw invalid;
    const user = userById(parsed['sub']);
    if (user === undefined || !user.active) throw invalid;
    return user;
  }

  function requirePermission(user: User, permission: string): void {
    if (!user.permissions.includes(permission)) throw new HttpError(403, { detail: 'Not enough permissions' });
  }

  function rateLimit(route: LimitedRoute, ip: string): void {
    const limit = limits[route];
    if (limit === null) return;
    const key = `${route} ${ip}`;
    const t = now();
    let window = windows.get(key);
    if (window === undefined || t - window.start >= WINDOW_MS) {
      window = { start: t, count: 0 };
      windows.set(key, window);
    }
    window.count += 1;
    if (window.count > limit) throw new HttpError(429, { error: `Rate limit exceeded: ${limit} per 1 minute` });
  }

  // ---- storage and fan-out --------------------------------------------------------------

  function newMessageId(): string {
    for (;;) {
      const id = `msg_${randomBytes(6).toString('hex')}`;
      if (!messageIds.has(id)) return id;
    }
  }

  function store(user: User, topic: string, payloadJson: string, metadata: Record<string, string> | null): Stored {
    const key = `${user.userId}/${topic}`;
    let channel = channels.get(key);
    if (channel === undefined) {
      channel = { messages: [] };
      channels.set(key, channel);
    }
    const message: Stored = { id: newMessageId(), topic, payloadJson, at: now(), metadata };
    channel.messages.push(message);
    messageIds.add(message.id);
    while (channel.messages.length > maxPerTopic) {
      const dropped = channel.messages.shift();
      if (dropped !== undefined) messageIds.delete(dropped.id);
    }
    for (const waiter of waitersByChannel.get(key) ?? []) deliver(waiter, message);
    for (let i = messageWatchers.length - 1; i >= 0; i--) {
      const w = messageWatchers[i]!;
      if (w.channel !== key) continue;
      const view = viewOf(message);
      if (!w.match(view.payload)) continue;
      messageWatchers.splice(i, 1);
      w.resolve(view);
    }
    return message;
  }

  function deliver(waiter: Waiter, message: Stored): void {
    waiter.queued.push(message);
    if (waiter.flushing) return;
    waiter.flushing = true;
    setImmediate(() => {
      const items = waiter.queued.map((m) =>
        withPayload({ type: 'message', message_id: m.id, topic: m.topic, timestamp: isoZ(m.at), metadata: m.metadata }, m.payloadJson),
      );
      finishWaiter(waiter, `{"messages":[${items.join(',')}],"has_more":false}`);
    });
  }

  function finishWaiter(waiter: Waiter, text: string): void {
    if (!waiters.delete(waiter)) return;
    clearTimeout(waiter.timer);
    for (const channel of waiter.channels) {
      const set = waitersByChannel.get(channel);
      set?.delete(waiter);
      if (set?.size === 0) waitersByChannel.delete(channel);
    }
    const left = (waitersByUser.get(waiter.userId) ?? 1) - 1;
    if (left <= 0) waitersByUser.delete(waiter.userId);
    else waitersByUser.set(waiter.userId, left);
    waiter.record.status = 200;
    // The client may be gone: the relay does not notice (RELAY.md), the answer goes nowhere.
    sendText(waiter.res, 200, text);
  }

  function addWaiter(user: User, topics: readonly string[], timeoutSeconds: number, res: http.ServerResponse, record: RequestRecord): void {
    if ((waitersByUser.get(user.userId) ?? 0) >= maxWaiters) throw new HttpError(429, { detail: 'Too many concurrent poll connections' });
    const waiter: Waiter = {
      userId: user.userId,
      channels: topics.map((t) => `${user.userId}/${t}`),
      res,
      record,
      queued: [],
      timer: undefined,
      flushing: false,
    };
    waiters.add(waiter);
    waitersByUser.set(user.userId, (waitersByUser.get(user.userId) ?? 0) + 1);
    for (const channel of waiter.channels) {
      let set = waitersByChannel.get(channel);
      if (set === undefined) {
        set = new Set();
        waitersByChannel.set(channel, set);
      }
      set.add(waiter);
    }
    waiter.timer = setTimeout(() => finishWaiter(waiter, '{"messages":[],"has_more":false}'), timeoutSeconds * 1000);
    for (let i = watchers.length - 1; i >= 0; i--) {
      const w = watchers[i]!;
      if ((waitersByChannel.get(w.channel)?.size ?? 0) >= w.count) {
        watchers.splice(i, 1);
        w.resolve();
      }
    }
  }

  /** Messages of the channel after `cursor`; an unknown cursor reads from the oldest. */
  function after(channel: Channel | undefined, cursor: string | undefined, limit: number): Stored[] {
    if (channel === undefined) return [];
    const list = channel.messages;
    let from = 0;
    if (cursor !== undefined) {
      const at = list.findIndex((m) => m.id === cursor);
      if (at >= 0) from = at + 1;
    }
    return list.slice(from, from + limit);
  }

  // ---- routes ---------------------------------------------------------------------------

  function login(body: Buffer, contentType: string | undefined, ip: string): Record<string, unknown> {
    const mediaType = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
    if (mediaType !== 'application/x-www-form-urlencoded') throw unprocessable(['username'], 'Field required');
    const form = new URLSearchParams(body.toString('utf8'));
    const username = form.get('username');
    const password = form.get('password');
    const grant = form.get('grant_type');
    if (username === null) throw unprocessable(['username'], 'Field required');
    if (password === null) throw unprocessable(['password'], 'Field required');
    if (grant !== null && grant !== 'password') throw unprocessable(['grant_type'], "String should match pattern '^password$'");
    rateLimit('login', ip);
    const user = users.get(username);
    if (user === undefined || user.password !== password) {
      throw new HttpError(401, { detail: 'Incorrect username or password' }, { 'www-authenticate': 'Bearer' });
    }
    if (!user.active) throw new HttpError(403, { detail: 'User account is inactive' });
    return tokenResponse(user, randomUUID());
  }

  function refresh(body: unknown, ip: string): Record<string, unknown> {
    if (!isObject(body) || typeof body['refresh_token'] !== 'string') throw unprocessable(['refresh_token'], 'Field required');
    rateLimit('refresh', ip);
    const invalid = new HttpError(401, { detail: 'invalid refresh token' }, { 'www-authenticate': 'Bearer' });
    const wire = body['refresh_token'];
    const dot = wire.indexOf('.');
    if (dot < 0) throw invalid;
    const token = refreshTokens.get(wire.slice(0, dot));
    if (token === undefined) throw invalid;
    if (!sameText(wire.slice(dot + 1), token.secret)) throw invalid;
    if (revokedChains.has(token.chain)) throw invalid;
    if (token.rotated) {
      // A replay: the whole chain goes, its newest token included.
      revokedChains.add(token.chain);
      throw invalid;
    }
    if (token.expiresAt <= now()) throw invalid;
    const user = userById(token.userId);
    if (user === undefined || !user.active) throw invalid;
    token.rotated = true;
    return tokenResponse(user, token.chain);
  }

  function register(user: User, body: unknown): Record<string, unknown> {
    requirePermission(user, 'admin');
    if (!isObject(body)) throw unprocessable([], 'Input should be a valid dictionary');
    const { username, password, permissions } = body;
    if (typeof username !== 'string' || username.length < 1) throw unprocessable(['username'], 'Field required');
    if (typeof password !== 'string' || password.length < 8) throw unprocessable(['password'], 'String should have at least 8 characters');
    const perms = permissions === undefined || permissions === null ? ['read', 'write'] : permissions;
    if (!Array.isArray(perms) || !perms.every((p) => typeof p === 'string')) throw unprocessable(['permissions'], 'Input should be a valid list');
    if (users.has(username)) throw new HttpError(400, { detail: 'Username already exists' });
    const created: User = { userId: randomUUID(), username, password, active: true, permissions: perms as string[] };
    users.set(username, created);
    return { user_id: created.userId, username, is_active: true, permissions: created.permissions };
  }

  function publish(user: User, body: unknown, key: string | null, ip: string): Record<string, unknown> {
    requirePermission(user, 'write');
    if (!isObject(body)) throw unprocessable([], 'Input should be a valid dictionary');
    const { topic, payload, ttl, metadata } = body;
    if (!validTopicName(topic)) throw unprocessable(['topic'], "String should match pattern '^[a-zA-Z0-9_-]+$'");
    if (!isObject(payload)) throw unprocessable(['payload'], 'Input should be a valid dictionary');
    if (ttl !== undefined && ttl !== null && !(typeof ttl === 'number' && Number.isInteger(ttl) && ttl > 0)) {
      throw unprocessable(['ttl'], 'Input should be greater than 0');
    }
    let meta: Record<string, string> | null = null;
    if (metadata !== undefined && metadata !== null) {
      if (!isObject(metadata)) throw unprocessable(['metadata'], 'Input should be a valid dictionary');
      for (const [k, v] of Object.entries(metadata)) if (typeof v !== 'string') throw unprocessable(['metadata', k], 'Input should be a valid string');
      meta = metadata as Record<string, string>;
    }
    // Serialised once, kept as text: a payload nested deeper than the serialiser allows is refused here.
    let payloadJson: string;
    try {
      payloadJson = JSON.stringify(payload);
    } catch {
      throw unprocessable(['payload'], 'Payload nested too deeply');
    }
    rateLimit('publish', ip);
    const idemKey = key === null ? undefined : `${user.userId}\n${key}`;
    if (idemKey !== undefined) {
      const seen = idempotency.get(idemKey);
      if (seen !== undefined && seen.expiresAt > now()) {
        capped(published, { username: user.username, topic: seen.topic, messageId: seen.messageId, idempotencyKey: key, duplicate: true });
        return { message_id: seen.messageId, topic: seen.topic, timestamp: seen.timestamp };
      }
    }
    const message = store(user, topic, payloadJson, meta);
    const answer = { message_id: message.id, topic, timestamp: isoZ(message.at) };
    if (idemKey !== undefined) {
      idempotency.delete(idemKey);
      idempotency.set(idemKey, { expiresAt: now() + idempotencyMs, messageId: message.id, topic, timestamp: answer.timestamp });
      for (const [k, v] of idempotency) {
        if (idempotency.size <= IDEMPOTENCY_CAP && v.expiresAt > now()) break;
        idempotency.delete(k);
      }
    }
    capped(published, { username: user.username, topic, messageId: message.id, idempotencyKey: key, duplicate: false });
    return answer;
  }

  async function poll(user: User, body: unknown, res: http.ServerResponse, record: RequestRecord): Promise<void> {
    requirePermission(user, 'read');
    if (!isObject(body)) throw unprocessable([], 'Input should be a valid dictionary');
    const { topics, timeout, since } = body;
    if (!Array.isArray(topics) || topics.length < 1 || topics.length > MAX_POLL_TOPICS) {
      throw unprocessable(['topics'], 'List should have between 1 and 20 items');
    }
    topics.forEach((t, i) => {
      if (!validTopicName(t)) throw unprocessable(['topics', i], "String should match pattern '^[a-zA-Z0-9_-]+$'");
    });
    const seconds = timeout === undefined ? 30 : timeout;
    if (typeof seconds !== 'number' || !Number.isInteger(seconds) || seconds < 1 || seconds > 60) {
      throw unprocessable(['timeout'], 'Input should be a whole number between 1 and 60');
    }
    const cursors = new Map<string, string>();
    if (since !== undefined && since !== null) {
      if (!isObject(since)) throw unprocessable(['since'], 'Input should be a valid dictionary');
      for (const [k, v] of Object.entries(since)) {
        if (typeof v !== 'string') throw unprocessable(['since', k], 'Input should be a valid string');
        cursors.set(k, v);
      }
    }
    const names = [...new Set(topics as string[])];
    if (cursors.size > 0) {
      const found: string[] = [];
      for (const topic of names) {
        for (const m of after(channels.get(`${user.userId}/${topic}`), cursors.get(topic), PER_TOPIC_POLL_LIMIT)) {
          found.push(withPayload({ topic, message_id: m.id, timestamp: isoOffset(m.at), metadata: m.metadata ?? {}, stream_id: null }, m.payloadJson));
        }
      }
      if (found.length > 0) {
        record.status = 200;
        sendText(res, 200, `{"messages":[${found.join(',')}],"has_more":${found.length >= PER_TOPIC_POLL_LIMIT}}`);
        return;
      }
      // The trap RELAY.md describes: a publish landing here is missed by this poll.
      await options.betweenSinceReadAndWait?.(user.username, names);
    }
    addWaiter(user, names, seconds, res, record);
  }

  function history(user: User, topic: string, query: URLSearchParams): Record<string, unknown> | string {
    requirePermission(user, 'read');
    const channel = channels.get(`${user.userId}/${topic}`);
    if (channel === undefined) throw new HttpError(404, { detail: `Topic '${topic}' not found` });
    const limitText = query.get('limit');
    let limit = 10;
    if (limitText !== null) {
      const n = Number(limitText);
      if (limitText.trim() === '' || !Number.isInteger(n)) {
        throw new HttpError(422, { detail: [{ type: 'int_parsing', loc: ['query', 'limit'], msg: 'Input should be a valid integer' }] });
      }
      limit = n;
    }
    const order = query.get('order') ?? 'desc';
    if (order !== 'asc' && order !== 'desc') throw new HttpError(400, { detail: "Order must be 'asc' or 'desc'" });
    if (limit < 1) throw new HttpError(400, { detail: 'Limit must be at least 1' });
    limit = Math.min(limit, 100);
    const cursor = query.get('cursor');
    const list = order === 'asc' ? channel.messages : [...channel.messages].reverse();
    const at = cursor === null ? -1 : list.findIndex((m) => m.id === cursor);
    const page = list.slice(at + 1, at + 1 + limit);
    const items = page.map((m) => withPayload({ message_id: m.id, topic: m.topic, timestamp: isoZ(m.at), metadata: m.metadata }, m.payloadJson));
    const rest = { total: page.length, limit, order, cursor, next_cursor: page.at(-1)?.id ?? null };
    return `{"messages":[${items.join(',')}],${JSON.stringify(rest).slice(1)}`;
  }

  function stats(): Record<string, unknown> {
    const counts: Record<string, number> = {};
    for (const [channel, set] of waitersByChannel) counts[channel] = set.size;
    return { active_waiters: waiters.size, subscribed_topics: waitersByChannel.size, topic_subscriber_counts: counts };
  }

  // ---- the server -------------------------------------------------------------------------

  /** The body, at most `maxBody` bytes. Past that a 413; the rest is drained unread (see the catch in handle). */
  function readBody(req: http.IncomingMessage): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const declared = req.headers['content-length'];
      if (declared !== undefined && Number(declared) > maxBody) return reject(tooLarge());
      const chunks: Buffer[] = [];
      let size = 0;
      const onData = (chunk: Buffer): void => {
        size += chunk.length;
        if (size <= maxBody) return void chunks.push(chunk);
        req.off('data', onData);
        req.off('end', onEnd);
        reject(tooLarge());
      };
      const onEnd = (): void => resolve(Buffer.concat(chunks));
      req.on('data', onData);
      req.once('end', onEnd);
      req.once('error', reject);
      req.once('close', () => {
        if (!req.complete) reject(new HttpError(0, null));
      });
    });
  }
  const tooLarge = (): HttpError =>
    new HttpError(413, { error: 'PAYLOAD_TOO_LARGE', message: `Request body exceeds ${maxBody} bytes`, max_body_bytes: maxBody });

  const parseJson = (body: Buffer): unknown => {
    try {
      return JSON.parse(body.toString('utf8')) as unknown;
    } catch {
      throw new HttpError(422, { detail: [{ type: 'json_invalid', loc: ['body'], msg: 'JSON decode error' }] });
    }
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const authorization = req.headers.authorization;
    const bearer = authorization !== undefined && authorization.slice(0, 7).toLowerCase() === 'bearer ' ? authorization.slice(7).trim() : null;
    const keyHeader = req.headers['idempotency-key'];
    const idempotencyKey = typeof keyHeader === 'string' ? keyHeader : null;
    const match = routeOf(method, url.pathname);
    const record: RequestRecord = { route: match?.route ?? null, method, path: url.pathname, bearer, username: null, idempotencyKey, body: undefined, status: null };
    capped(requests, record);
    const ip = req.socket.remoteAddress ?? '';
    try {
      if (match === null) throw new HttpError(404, { detail: 'Not Found' });
      if (!match.methodOk) throw new HttpError(405, { detail: 'Method Not Allowed' });
      const fault = faults.get(match.route)?.[0];
      if (fault !== undefined) {
        const left = (fault.times ?? 1) - 1;
        if (left <= 0) faults.get(match.route)?.shift();
        else faults.get(match.route)?.splice(0, 1, { ...fault, times: left });
        if (fault.delayMs !== undefined) await sleep(fault.delayMs);
        if (fault.reset === true) {
          record.status = 0;
          req.socket.destroy();
          return;
        }
        if (fault.status !== undefined) throw new HttpError(fault.status, fault.body ?? { detail: 'injected fault' }, fault.headers);
      }
      const raw = await readBody(req);
      const authed = (): User => {
        const user = authenticate(bearer);
        record.username = user.username;
        return user;
      };
      switch (match.route) {
        case 'health':
          return sendJson(res, 200, { status: 'healthy', timestamp: isoZ(now()), version: '0.1.0' });
        case 'ready':
          return sendJson(res, 200, { ready: true, checks: { storage: 'ok' } });
        case 'login':
          return sendJson(res, 200, login(raw, req.headers['content-type'], ip));
        case 'refresh': {
          const body = parseJson(raw);
          record.body = body;
          const answer = refresh(body, ip);
          return sendJson(res, 200, answer);
        }
        case 'register': {
          const user = authed();
          return sendJson(res, 201, register(user, parseJson(raw)));
        }
        case 'publish': {
          const user = authed();
          const body = parseJson(raw);
          record.body = body;
          return sendJson(res, 201, publish(user, body, idempotencyKey, ip));
        }
        case 'poll': {
          const user = authed();
          const body = parseJson(raw);
          record.body = body;
          return await poll(user, body, res, record);
        }
        case 'stats':
          authed();
          return sendJson(res, 200, stats());
        case 'history': {
          const answer = history(authed(), match.topic ?? '', url.searchParams);
          return sendText(res, 200, typeof answer === 'string' ? answer : JSON.stringify(answer));
        }
      }
    } catch (error) {
      const failure = error instanceof HttpError ? error : new HttpError(500, { detail: 'Internal Server Error' });
      // 0: the client went away before its request was read.
      record.status = failure.status;
      if (failure.status === 0) return;
      sendJson(res, failure.status, failure.body, failure.headers);
      // The rest of a refused body is read and dropped, so the client gets its 413.
      if (failure.status === 413) req.resume();
    } finally {
      if (record.status === null && res.headersSent) record.status = res.statusCode;
    }
  }

  const sockets = new Set<Socket>();
  let server: http.Server | undefined;
  let port = options.port ?? 0;

  async function listen(): Promise<void> {
    const s = http.createServer((req, res) => {
      handle(req, res).catch(() => {
        if (!res.headersSent) sendJson(res, 500, { detail: 'Internal Server Error' });
      });
    });
    s.on('connection', (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        s.off('error', reject);
        resolve();
      });
    });
    port = (s.address() as AddressInfo).port;
    server = s;
  }

  async function stop(): Promise<void> {
    const s = server;
    server = undefined;
    for (const w of waiters) clearTimeout(w.timer);
    waiters.clear();
    if (s === undefined) return;
    const closed = new Promise<void>((resolve) => s.close(() => resolve()));
    for (const socket of sockets) socket.destroy();
    s.closeAllConnections();
    await closed;
  }

  await listen();

  function idOf(username: string): string {
    const user = users.get(username);
    if (user === undefined) throw new Error(`relay fake: no user ${username}`);
    return user.userId;
  }

  return {
    get url() {
      return `http://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    requests,
    published,
    messages(username, topic) {
      const channel = channels.get(`${idOf(username)}/${topic}`);
      return (channel?.messages ?? []).map(viewOf);
    },
    whenMessage(username, topic, match = () => true) {
      const channel = `${idOf(username)}/${topic}`;
      const found = (channels.get(channel)?.messages ?? []).map(viewOf).find((m) => match(m.payload));
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve) => messageWatchers.push({ channel, match, resolve }));
    },
    publish(username, topic, payload, metadata) {
      const user = users.get(username);
      if (user === undefined) throw new Error(`relay fake: no user ${username}`);
      if (!validTopicName(topic)) throw new Error(`relay fake: bad topic name ${topic}`);
      const message = store(user, topic, JSON.stringify(payload), metadata ?? null);
      capped(published, { username, topic, messageId: message.id, idempotencyKey: null, duplicate: false });
      return message.id;
    },
    userId: idOf,
    waiting(username, topic) {
      if (username === undefined) return waiters.size;
      const id = idOf(username);
      if (topic === undefined) return waitersByUser.get(id) ?? 0;
      return waitersByChannel.get(`${id}/${topic}`)?.size ?? 0;
    },
    whenWaiting(username, topic, count = 1) {
      const channel = `${idOf(username)}/${topic}`;
      if ((waitersByChannel.get(channel)?.size ?? 0) >= count) return Promise.resolve();
      return new Promise((resolve) => watchers.push({ channel, count, resolve }));
    },
    inject(route, fault) {
      const list = faults.get(route) ?? [];
      list.push(fault);
      faults.set(route, list);
    },
    advanceClock(seconds) {
      clockOffsetMs += seconds * 1000;
    },
    async restart(restartOptions = {}) {
      await stop();
      resetState();
      if (restartOptions.downMs !== undefined) await sleep(restartOptions.downMs);
      await listen();
    },
    async close() {
      await stop();
    },
  };
}
