/**
 * Per-client request limits, composed around the routes (express-rate-limit):
 * - failed authentications: every answer 401 counts against the client's address; a request with
 *   a missing or wrong token beyond `rate_limit_failed_auth` in a minute is refused with 429, and
 *   so is every further request from that address without the right token until the minute is
 *   over. A request with the right token is never counted and never refused by this limit: failed
 *   guesses (perhaps from another user behind the same proxy or NAT) cannot lock Galaxy out;
 * - `POST /jobs` (setup) per address in public tool service mode (`rate_limit_setup`).
 * The address is the socket's peer. `X-Forwarded-For` is believed only when that peer is one of
 * `trusted_proxies` (then the client is the right-most forwarded address that is not itself a
 * trusted proxy); `Forwarded` is never read. IPv6 clients are grouped by /56, as one site.
 */
import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { ipKeyGenerator, rateLimit, type ClientRateLimitInfo, type Store } from 'express-rate-limit';
import type { AppSection } from '../config/types.js';
import { RateLimited } from '../errors.js';
import type { Logger } from '../log.js';
import { tokenMatcher } from './auth.js';

const WINDOW_MS = 60_000;
const IPV6_SUBNET = 56;

export interface RateLimits {
  /** Express middleware for every request (before the routes); undefined = no limit. */
  readonly failedAuth: RequestHandler | undefined;
  /** Express middleware for `POST /jobs` (before the routes); undefined = no limit. */
  readonly setup: RequestHandler | undefined;
  /** Stop the stores' expiry timers. */
  close(): void;
}

/** The limits `app` asks for. `queryOf` parses a request's query string (for the token). */
export function rateLimits(
  app: AppSection,
  queryOf: (req: Request) => ReadonlyMap<string, string>,
  log: Logger,
): RateLimits {
  const stores: WindowStore[] = [];
  const logger = {
    error: (error: unknown, message?: string) => log.error({ err: error }, message ?? 'rate limiter error'),
    warn: (error: unknown, message?: string) => log.warn({ err: error }, message ?? 'rate limiter warning'),
  };

  const clientKey = clientKeyOf(app.trustedProxies);
  let failedAuth: RequestHandler | undefined;
  const failedLimit = app.rateLimitFailedAuth;
  if (failedLimit > 0 && app.privateToken !== undefined) {
    const store = new WindowStore(WINDOW_MS);
    stores.push(store);
    const refuse = (key: string): RateLimited =>
      new RateLimited(`too many requests with a missing or invalid private_token from this address; try again in ${store.secondsLeft(key)} s`);
    const counter = rateLimit({
      windowMs: WINDOW_MS,
      limit: failedLimit,
      store,
      keyGenerator: (req) => clientKey(req),
      // Only 401 answers stay counted; a refusal (429) does not extend the block.
      skipSuccessfulRequests: true,
      requestWasSuccessful: (_req, res) => res.statusCode !== 401,
      standardHeaders: false,
      legacyHeaders: false,
      handler: (req, res, next) => {
        const key = clientKey(req);
        if (store.block(key)) {
          log.warn({ client: key, limit: failedLimit }, 'too many failed authentications: refusing this client for the rest of the minute');
        }
        res.setHeader('Retry-After', String(store.secondsLeft(key)));
        next(refuse(key));
      },
      logger,
    });
    const authorized = tokenMatcher(app.privateToken);
    failedAuth = (req: Request, res: Response, next: NextFunction) => {
      // The right token always passes (the status fast path relies on it and never asks).
      if (authorized(req, queryOf(req))) {
        next();
        return;
      }
      const key = clientKey(req);
      if (store.isBlocked(key)) {
        res.setHeader('Retry-After', String(store.secondsLeft(key)));
        next(refuse(key));
        return;
      }
      // express 5 passes a rejection of the returned promise to the error handler.
      return counter(req, res, next);
    };
  }

  let setup: RequestHandler | undefined;
  if (app.rateLimitSetup > 0 && app.toolConfigFiles.length > 0) {
    const store = new WindowStore(WINDOW_MS);
    stores.push(store);
    setup = rateLimit({
      windowMs: WINDOW_MS,
      limit: app.rateLimitSetup,
      store,
      keyGenerator: (req) => clientKey(req),
      standardHeaders: false,
      legacyHeaders: false,
      handler: (req, res, next) => {
        const key = clientKey(req);
        res.setHeader('Retry-After', String(store.secondsLeft(key)));
        next(new RateLimited(`too many job setups from this address (at most ${app.rateLimitSetup} a minute); try again in ${store.secondsLeft(key)} s`));
      },
      logger,
    });
  }

  return {
    failedAuth,
    setup,
    close() {
      for (const store of stores) store.shutdown();
    },
  };
}

/** `::ffff:10.0.0.1` → `10.0.0.1`; anything else unchanged. */
function plainAddress(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped === null ? address : mapped[1]!;
}

/** Does `list` (from `asAddressList`: addresses and CIDR blocks) hold `address`? */
export function addressMatcher(list: readonly string[]): (address: string | undefined) => boolean {
  if (list.length === 0) return () => false;
  const blocks = new BlockList();
  for (const entry of list) {
    const [address = '', prefix] = entry.split('/');
    const type = isIP(address) === 6 ? 'ipv6' : 'ipv4';
    if (prefix === undefined) blocks.addAddress(plainAddress(address), type);
    else blocks.addSubnet(address, Number(prefix), type);
  }
  return (address) => {
    if (address === undefined) return false;
    const plain = plainAddress(address);
    const family = isIP(plain);
    return family !== 0 && blocks.check(plain, family === 6 ? 'ipv6' : 'ipv4');
  };
}

/**
 * The client's address: the socket's peer, or — when that peer is a trusted proxy — the
 * right-most X-Forwarded-For entry that is not a trusted proxy (entries left of it are the
 * client's to write, so they are never believed).
 */
export function clientAddressOf(trustedProxies: readonly string[]): (req: IncomingMessage) => string {
  const trusted = addressMatcher(trustedProxies);
  return (req) => {
    const peer = plainAddress(req.socket.remoteAddress ?? 'unknown');
    if (!trusted(peer)) return peer;
    const header = req.headers['x-forwarded-for'];
    if (header === undefined) return peer;
    const hops = (Array.isArray(header) ? header.join(',') : header).split(',').map((h) => plainAddress(h.trim()));
    let client = peer;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i]!;
      if (isIP(hop) === 0) break; // garbage: stop at the last address we could read
      client = hop;
      if (!trusted(hop)) break;
    }
    return client;
  };
}

/** The key a client is counted under: its address (see clientAddressOf), IPv6 by /56 network. */
export function clientKeyOf(trustedProxies: readonly string[]): (req: IncomingMessage) => string {
  const addressOf = clientAddressOf(trustedProxies);
  return (req) => ipKeyGenerator(addressOf(req), IPV6_SUBNET);
}

/**
 * A fixed one-window-per-client counter in memory, like express-rate-limit's MemoryStore, but
 * readable synchronously (the status fast path must decide before it answers).
 */
class WindowStore implements Store {
  readonly localKeys = true;
  readonly #windowMs: number;
  readonly #clients = new Map<string, { hits: number; resetAt: number; blocked: boolean }>();
  readonly #sweeper: NodeJS.Timeout;

  constructor(windowMs: number) {
    this.#windowMs = windowMs;
    this.#sweeper = setInterval(() => this.#sweep(), windowMs);
    this.#sweeper.unref();
  }

  /** Whether `key` was blocked in its current window. */
  isBlocked(key: string): boolean {
    const client = this.#clients.get(key);
    return client !== undefined && client.blocked && client.resetAt > Date.now();
  }

  /** Whole seconds until `key`'s window ends (at least 1). */
  secondsLeft(key: string): number {
    const client = this.#clients.get(key);
    const left = client === undefined ? 0 : client.resetAt - Date.now();
    return Math.max(1, Math.ceil(left / 1000));
  }

  /** Block `key` for the rest of its window; true if it was not blocked yet (to log it once). */
  block(key: string): boolean {
    const client = this.#clients.get(key);
    if (client === undefined || client.blocked) return false;
    client.blocked = true;
    return true;
  }

  get(key: string): ClientRateLimitInfo | undefined {
    const client = this.#clients.get(key);
    if (client === undefined || client.resetAt <= Date.now()) return undefined;
    return { totalHits: client.hits, resetTime: new Date(client.resetAt) };
  }

  increment(key: string): ClientRateLimitInfo {
    const now = Date.now();
    let client = this.#clients.get(key);
    if (client === undefined || client.resetAt <= now) {
      client = { hits: 0, resetAt: now + this.#windowMs, blocked: false };
      this.#clients.set(key, client);
    }
    client.hits += 1;
    return { totalHits: client.hits, resetTime: new Date(client.resetAt) };
  }

  decrement(key: string): void {
    const client = this.#clients.get(key);
    if (client !== undefined && client.hits > 0) client.hits -= 1;
  }

  resetKey(key: string): void {
    this.#clients.delete(key);
  }

  resetAll(): void {
    this.#clients.clear();
  }

  shutdown(): void {
    clearInterval(this.#sweeper);
    this.#clients.clear();
  }

  #sweep(): void {
    const now = Date.now();
    for (const [key, client] of this.#clients) if (client.resetAt <= now) this.#clients.delete(key);
  }
}
