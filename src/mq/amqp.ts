/**
 * The broker connection of message-queue mode: one AMQP 0-9-1 connection (amqplib) for the whole
 * server, opened at startup and reopened after any loss with a capped exponential backoff. Each
 * manager's front door (mq/front-door.ts) opens its channels on it whenever it is (re)connected.
 *
 * Why a loop of our own over amqplib's `recovery` option: recovery re-runs a setup callback but
 * says nothing of which channels died, and its first-connect failure cannot be told apart from a
 * refused login. Here a refused login, an unknown vhost, an unresolvable host or a TLS failure at
 * startup stop the server with one line naming `message_queue_url`; a broker that is merely down
 * is waited for (the outbox keeps every status update meanwhile), and `/healthz` says so.
 *
 * The URL holds the password: it is only ever logged through `redactUrl`.
 */
import * as amqp from 'amqplib';
import * as fs from 'node:fs/promises';
import { messageOf } from '../errors.js';
import type { MessageQueueConfig } from '../config/types.js';
import type { Logger } from '../log.js';

/** The URL without its password (and without its query, which may carry more secrets). */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = '***';
    parsed.search = '';
    return parsed.toString();
  } catch {
    return '<unparseable URL>';
  }
}

/** A startup failure of message-queue mode: the server stops with this one line. */
export class BrokerStartupError extends Error {
  override readonly name = 'BrokerStartupError';
}

export type LinkState = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** What the front doors do with a (new) connection, and when it is gone. */
export interface LinkUser {
  /** Open channels, declare the topology, start consuming. A rejection drops the connection. */
  connected(connection: amqp.ChannelModel): Promise<void>;
  /** The connection is gone: stop using its channels. */
  disconnected(): void;
}

interface Target {
  readonly connect: amqp.Options.Connect;
  readonly socket: amqp.SocketOptions;
}

/** Frames the broker may send at most (it splits larger messages at the negotiated frame_max). */
const MAX_FRAME_SIZE = 8 * 1024 * 1024;
const CONNECT_TIMEOUT_MS = 30_000;

/** The connection target from the URL and the TLS options; TLS files are read once, here. */
async function targetOf(mq: MessageQueueConfig): Promise<Target> {
  const url = new URL(mq.url);
  const protocol = url.protocol.replace(/:$/, '');
  const decode = (s: string): string => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  // kombu writes the vhost "/" as "//": the path after the first slash, still escaped (amqplib unescapes it).
  const vhost = url.pathname.length > 1 ? url.pathname.slice(1) : '/';
  const connect: amqp.Options.Connect = {
    protocol,
    hostname: url.hostname.replace(/^\[|\]$/g, ''),
    ...(url.port === '' ? {} : { port: Number(url.port) }),
    ...(url.username === '' && url.password === '' ? {} : { username: decode(url.username), password: decode(url.password) }),
    vhost,
    heartbeat: mq.heartbeat,
    frameMax: 131072,
    maxFrameSize: MAX_FRAME_SIZE,
  };
  const socket: amqp.SocketOptions = { timeout: CONNECT_TIMEOUT_MS, noDelay: true, keepAlive: true, keepAliveDelay: 30_000, clientProperties: { connection_name: 'magnetar' } };
  if (protocol === 'amqps') {
    const read = async (option: string, file: string | undefined): Promise<Buffer | undefined> => {
      if (file === undefined) return undefined;
      try {
        return await fs.readFile(file);
      } catch (error) {
        throw new BrokerStartupError(`${option}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? messageOf(error)}`);
      }
    };
    const ca = await read('amqp_connect_ssl_ca_certs', mq.tls.caCerts);
    const cert = await read('amqp_connect_ssl_certfile', mq.tls.certFile);
    const key = await read('amqp_connect_ssl_keyfile', mq.tls.keyFile);
    Object.assign(socket, {
      ...(ca === undefined ? {} : { ca }),
      ...(cert === undefined ? {} : { cert }),
      ...(key === undefined ? {} : { key }),
      rejectUnauthorized: mq.tls.certReqs !== 'cert_none',
    });
  }
  return { connect, socket };
}

/** Errors that retrying will not cure: said at startup instead of waited for. */
function isPermanent(error: unknown): boolean {
  const text = messageOf(error);
  const code = (error as { code?: unknown }).code;
  // 406: a queue or the exchange exists with other settings (amqp_durable), or another server's.
  if (/ACCESS[-_]REFUSED|NOT[-_]ALLOWED|PRECONDITION[-_]FAILED|\b40[36]\b|\b530\b|PLAIN login refused|Expected amqp: or amqps:/i.test(text)) return true;
  if (code === 'ENOTFOUND' || code === 'EAI_NONAME') return true;
  return typeof code === 'string' && /^(?:ERR_TLS_|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|ERR_SSL_)/.test(code);
}

/** One connection to the broker, kept open: reconnects after a loss (1 s, doubling, capped). */
export class BrokerLink {
  readonly #mq: MessageQueueConfig;
  readonly #log: Logger;
  readonly #users: LinkUser[] = [];
  readonly #redacted: string;
  #target: Target | undefined;
  #connection: amqp.ChannelModel | undefined;
  #state: LinkState = 'connecting';
  #since = Date.now();
  #attempt = 0;
  #timer: NodeJS.Timeout | undefined;
  #lastError: string | undefined;
  #connecting: Promise<void> | undefined;

  constructor(mq: MessageQueueConfig, log: Logger) {
    this.#mq = mq;
    this.#redacted = redactUrl(mq.url);
    this.#log = log.child({ component: 'amqp', broker: this.#redacted });
  }

  use(user: LinkUser): void {
    this.#users.push(user);
  }

  get state(): LinkState {
    return this.#state;
  }

  /** For `/healthz`: the state, since when, and the last connection error (never the URL's secrets). */
  health(): { state: LinkState; since: string; broker: string; lastError?: string } {
    return {
      state: this.#state,
      since: new Date(this.#since).toISOString(),
      broker: this.#redacted,
      ...(this.#lastError === undefined ? {} : { lastError: this.#lastError }),
    };
  }

  /**
   * Connect for the first time. A permanent failure (refused login, unknown vhost or host, TLS)
   * rejects with a `BrokerStartupError`; a broker that does not answer is retried in the background.
   */
  async start(): Promise<void> {
    this.#target = await targetOf(this.#mq);
    try {
      await this.#connect();
    } catch (error) {
      if (isPermanent(error)) {
        this.#setState('closed');
        throw new BrokerStartupError(`message_queue_url: cannot connect to the broker at ${this.#redacted}: ${describe(error)}`);
      }
      this.#log.warn({ reason: describe(error) }, 'the broker is not reachable yet: retrying in the background (status updates wait in the outbox)');
      this.#schedule();
    }
  }

  async close(): Promise<void> {
    this.#setState('closed');
    clearTimeout(this.#timer);
    await this.#connecting?.catch(() => undefined);
    const connection = this.#connection;
    this.#connection = undefined;
    if (connection !== undefined) await connection.close().catch(() => undefined);
  }

  #setState(state: LinkState): void {
    if (this.#state === 'closed') return;
    if (state !== this.#state) this.#since = Date.now();
    this.#state = state;
  }

  async #connect(): Promise<void> {
    const run = async (): Promise<void> => {
      const target = this.#target;
      if (target === undefined) throw new Error('the broker link was not started');
      this.#setState('connecting');
      let connection: amqp.ChannelModel;
      try {
        connection = await amqp.connect(target.connect, { ...target.socket });
      } catch (error) {
        this.#lastError = describe(error);
        this.#setState('disconnected');
        throw error;
      }
      if (this.#state === 'closed') {
        await connection.close().catch(() => undefined);
        return;
      }
      connection.on('error', (error: Error) => {
        this.#lastError = describe(error);
        this.#log.warn({ reason: describe(error) }, 'broker connection error');
      });
      connection.on('handler-error', (error: Error, event: string) => this.#log.error({ err: error, event }, 'a broker connection handler failed'));
      connection.on('blocked', (reason: string) => this.#log.warn({ reason }, 'the broker blocked publishing (resource alarm)'));
      connection.on('unblocked', () => this.#log.info('the broker unblocked publishing'));
      connection.once('close', () => this.#lost(connection));
      this.#connection = connection;
      try {
        for (const user of this.#users) await user.connected(connection);
      } catch (error) {
        this.#lastError = describe(error);
        await connection.close().catch(() => undefined);
        throw error;
      }
      this.#attempt = 0;
      this.#lastError = undefined;
      this.#setState('connected');
      this.#log.info('connected to the broker');
    };
    this.#connecting = run();
    try {
      await this.#connecting;
    } finally {
      this.#connecting = undefined;
    }
  }

  #lost(connection: amqp.ChannelModel): void {
    if (this.#connection !== connection) return;
    this.#connection = undefined;
    for (const user of this.#users) user.disconnected();
    if (this.#state === 'closed') return;
    this.#setState('disconnected');
    this.#log.warn({ reason: this.#lastError }, 'lost the broker connection: reconnecting');
    this.#schedule();
  }

  #schedule(): void {
    if (this.#state === 'closed' || this.#timer !== undefined) return;
    const delay = Math.min(this.#mq.reconnectMaxDelay * 1000, 1000 * 2 ** Math.min(this.#attempt, 16));
    this.#attempt++;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#connect().catch((error: unknown) => {
        this.#log.warn({ reason: describe(error), attempt: this.#attempt }, 'reconnecting to the broker failed');
        this.#schedule();
      });
    }, delay);
  }
}

/** An error in one line, without anything of the URL but what `redactUrl` keeps. */
function describe(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  const text = messageOf(error).replace(/amqps?:\/\/[^\s]*/gi, (u) => redactUrl(u));
  return typeof code === 'string' && !text.includes(code) ? `${code}: ${text}` : text;
}
