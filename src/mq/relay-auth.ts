/**
 * Relay auth (RELAY.md "Login", "Token lifetime and refresh"): one cache of the access token for
 * the whole server, so every manager's loop and publisher share it, and a credentials file's
 * single-use refresh token is only ever rotated by one caller at a time.
 *
 * - Password: `POST /auth/login` (form-encoded), again whenever the token is due.
 * - Credentials file (`{relay_url, refresh_token, issued_at}`): `POST /auth/token/refresh`; the new
 *   refresh token is written to the file (temp file, fsync, rename, 0600) BEFORE the access token
 *   is used. A write that fails keeps the new token in memory and is tried again before anything
 *   else; the rotated-out token is never sent again (a replay revokes the whole chain).
 * - A token is renewed at the lesser of 300 s and half its lifetime before it expires (upstream's
 *   fixed 300 s buffer re-authenticates before every request with tokens of 5 min or less).
 * - Failures back off (1 s doubling to 60 s, jittered) inside the cache: callers asking meanwhile
 *   get the last failure at once, with no request. A refused password or refresh token
 *   (`RelayAuthRefused`) is logged once, clearly, and not retried in a loop: the password is tried
 *   again every `REFUSED_RETRY_MS`; a refused refresh token only once the file holds another one.
 *
 * Tokens, the password and the file's content are never logged.
 */
import * as fs from 'node:fs/promises';
import type { RelayConfig } from '../config/types.js';
import { writeFileDurably } from '../durable-file.js';
import { messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import { Backoff, RelayHttpError, relayFetch, type BearerSource } from './relay-client.js';

/** The relay refused the credentials: retrying as is will not help. */
export class RelayAuthRefused extends Error {
  override readonly name = 'RelayAuthRefused';
}

/** Renew this long before expiry at most (upstream's buffer). */
const RENEW_BUFFER_S = 300;
/** A refused password is tried again this often (someone may fix it at the relay). */
const REFUSED_RETRY_MS = 5 * 60_000;
const AUTH_TIMEOUT_MS = 30_000;
/** A refresh token as the relay issues it: `<uuid>.<secret>`; anything else in the file is refused unsent. */
const MAX_REFRESH_TOKEN_LENGTH = 4096;

interface Token {
  readonly access: string;
  /** Local clock (ms) at which to renew it. */
  readonly renewAt: number;
  readonly lifetimeS: number;
}

interface CredentialsFile {
  readonly relay_url?: unknown;
  readonly refresh_token?: unknown;
}

export class RelayAuth implements BearerSource {
  readonly #config: RelayConfig;
  readonly #log: Logger;
  #token: Token | undefined;
  #pending: Promise<string> | undefined;
  /** A rotated refresh token not yet written to the file (the write failed). */
  #unwritten: string | undefined;
  /** The refresh token in use (read from the file once, then the rotated ones). */
  #refreshToken: string | undefined;
  /** The refresh token the relay refused: not sent again. */
  #refusedToken: string | undefined;
  #lastFailure: Error | undefined;
  #notBefore = 0;
  readonly #backoff = new Backoff(1000, 60_000);
  #lockFile: string | undefined;
  /** Logins and refreshes sent (health, tests). */
  attempts = 0;

  constructor(config: RelayConfig, log: Logger) {
    this.#config = config;
    this.#log = log.child({ component: 'relay-auth' });
  }

  /**
   * With a credentials file: take `<file>.lock` (this process's pid), so a second magnetar process
   * on this machine cannot refresh the same single-use token (the relay would revoke the chain).
   * A lock whose process is gone is taken over. Throws `RelayAuthRefused` when a live process holds it.
   */
  async lock(): Promise<void> {
    const file = this.#config.credentialsFile;
    if (file === undefined || this.#lockFile !== undefined) return;
    const lockFile = `${file}.lock`;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await fs.writeFile(lockFile, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
        this.#lockFile = lockFile;
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new RelayAuthRefused(`message_queue_credentials_file ${file}: cannot create ${lockFile} (${(error as NodeJS.ErrnoException).code ?? messageOf(error)}): magnetar needs to write next to the file`);
        }
      }
      const holder = Number((await fs.readFile(lockFile, 'utf8').catch(() => '')).trim());
      if (Number.isSafeInteger(holder) && holder > 0 && isAlive(holder)) {
        throw new RelayAuthRefused(`message_queue_credentials_file ${file} is in use by process ${holder} (${lockFile}): two processes refreshing one single-use token make the relay revoke it; give each server its own credentials file`);
      }
      this.#log.warn({ lockFile, holder }, 'taking over the lock of message_queue_credentials_file left by a process that is gone');
      await fs.unlink(lockFile).catch(() => undefined);
    }
    throw new RelayAuthRefused(`message_queue_credentials_file ${file}: could not take ${lockFile}`);
  }

  /** Release the credentials file's lock (at shutdown). */
  async unlock(): Promise<void> {
    const lockFile = this.#lockFile;
    this.#lockFile = undefined;
    if (lockFile !== undefined) await fs.unlink(lockFile).catch(() => undefined);
  }

  get method(): 'password' | 'credentials_file' {
    return this.#config.credentialsFile === undefined ? 'password' : 'credentials_file';
  }

  /** For `/healthz`: when the token is renewed, and the last failure. */
  health(): { auth: string; tokenLifetime?: number; authError?: string } {
    return {
      auth: this.method,
      ...(this.#token === undefined ? {} : { tokenLifetime: this.#token.lifetimeS }),
      ...(this.#lastFailure === undefined ? {} : { authError: this.#lastFailure.message }),
    };
  }

  /** True while the credentials stand refused (a password refused, a refresh token revoked). */
  get refused(): boolean {
    return this.#lastFailure instanceof RelayAuthRefused;
  }

  async bearer(signal?: AbortSignal): Promise<string> {
    const token = this.#token;
    if (token !== undefined && Date.now() < token.renewAt) return token.access;
    this.#pending ??= this.#renew(signal).finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  invalidate(access: string): void {
    if (this.#token?.access === access) this.#token = undefined;
  }

  async #renew(signal: AbortSignal | undefined): Promise<string> {
    if (Date.now() < this.#notBefore && this.#lastFailure !== undefined) {
      // A refused refresh token: a new one in the file is tried at once.
      if (!(this.#lastFailure instanceof RelayAuthRefused && this.#config.credentialsFile !== undefined && (await this.#fileHasNewToken()))) throw this.#lastFailure;
    }
    try {
      const token = this.#config.credentialsFile === undefined ? await this.#login(signal) : await this.#refresh(this.#config.credentialsFile, signal);
      this.#token = token;
      this.#backoff.reset();
      if (this.#lastFailure !== undefined) this.#log.info({ auth: this.method }, 'relay authentication works again');
      this.#lastFailure = undefined;
      this.#notBefore = 0;
      return token.access;
    } catch (error) {
      if (signal?.aborted === true) throw error;
      const failure = error instanceof Error ? error : new Error(messageOf(error));
      if (failure instanceof RelayAuthRefused) {
        if (!(this.#lastFailure instanceof RelayAuthRefused) || this.#lastFailure.message !== failure.message) this.#log.error({ auth: this.method, reason: failure.message }, 'the relay refused magnetar’s credentials');
        this.#notBefore = this.#config.credentialsFile === undefined ? Date.now() + REFUSED_RETRY_MS : Number.POSITIVE_INFINITY;
      } else {
        const retryAfter = failure instanceof RelayHttpError ? failure.retryAfterMs : undefined;
        const delay = this.#backoff.next(retryAfter);
        this.#notBefore = Date.now() + delay;
        this.#log.warn({ auth: this.method, reason: failure.message, retryIn: Math.round(delay / 100) / 10 }, 'relay authentication failed: backing off');
      }
      this.#lastFailure = failure;
      throw failure;
    }
  }

  async #login(signal: AbortSignal | undefined): Promise<Token> {
    const username = this.#config.username ?? '';
    const password = this.#config.password ?? '';
    this.attempts++;
    try {
      const answer = await relayFetch(this.#config.url, {
        method: 'POST',
        path: '/auth/login',
        route: 'login',
        form: { username, password, grant_type: 'password' },
        timeoutMs: AUTH_TIMEOUT_MS,
        ...(signal === undefined ? {} : { signal }),
      });
      return tokenOf(answer.json).token;
    } catch (error) {
      if (error instanceof RelayHttpError && (error.status === 401 || error.status === 403)) {
        throw new RelayAuthRefused(`login as message_queue_username refused (HTTP ${error.status}): check message_queue_username / message_queue_password`);
      }
      throw error;
    }
  }

  async #refresh(file: string, signal: AbortSignal | undefined): Promise<Token> {
    if (this.#unwritten !== undefined) await this.#persist(file, this.#unwritten);
    const refreshToken = this.#refreshToken ?? (await this.#readFile(file));
    if (refreshToken === this.#refusedToken) throw new RelayAuthRefused(refusedMessage(file));
    this.attempts++;
    let answer;
    try {
      answer = await relayFetch(this.#config.url, {
        method: 'POST',
        path: '/auth/token/refresh',
        route: 'refresh',
        json: { refresh_token: refreshToken },
        timeoutMs: AUTH_TIMEOUT_MS,
        ...(signal === undefined ? {} : { signal }),
      });
    } catch (error) {
      if (error instanceof RelayHttpError && (error.status === 401 || error.status === 403)) {
        this.#refusedToken = refreshToken;
        this.#refreshToken = undefined;
        throw new RelayAuthRefused(refusedMessage(file));
      }
      throw error;
    }
    const { token, refreshToken: next } = tokenOf(answer.json);
    if (next === undefined) throw new Error('the relay answered a refresh without a new refresh token');
    // The old token is spent from here on: keep the new one before anything else can fail.
    this.#refreshToken = next;
    this.#unwritten = next;
    await this.#persist(file, next);
    return token;
  }

  /** The refresh token of the file, checked (the file should be 0600: warned otherwise). */
  async #readFile(file: string): Promise<string> {
    let text: string;
    try {
      const st = await fs.stat(file);
      if ((st.mode & 0o077) !== 0) this.#log.warn({ file, mode: `0${(st.mode & 0o777).toString(8)}` }, 'message_queue_credentials_file is readable by others: it should be 0600');
      text = await fs.readFile(file, 'utf8');
    } catch (error) {
      throw new RelayAuthRefused(`message_queue_credentials_file ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? messageOf(error)})`);
    }
    let parsed: CredentialsFile;
    try {
      parsed = JSON.parse(text) as CredentialsFile;
    } catch {
      throw new RelayAuthRefused(`message_queue_credentials_file ${file}: not JSON ({"relay_url", "refresh_token", "issued_at"})`);
    }
    const token = parsed.refresh_token;
    if (typeof token !== 'string' || token === '' || token.length > MAX_REFRESH_TOKEN_LENGTH) {
      throw new RelayAuthRefused(`message_queue_credentials_file ${file}: no refresh_token in it`);
    }
    if (typeof parsed.relay_url === 'string' && parsed.relay_url.replace(/\/+$/, '') !== this.#config.url) {
      this.#log.warn({ file }, 'message_queue_credentials_file names another relay_url than message_queue_url: its token is used for message_queue_url');
    }
    return token;
  }

  async #fileHasNewToken(): Promise<boolean> {
    const file = this.#config.credentialsFile;
    if (file === undefined) return false;
    try {
      return (await this.#readFile(file)) !== this.#refusedToken;
    } catch {
      return false;
    }
  }

  /** Write `{relay_url, refresh_token, issued_at}` atomically (0600), as upstream's client does. */
  async #persist(file: string, refreshToken: string): Promise<void> {
    const text = `${JSON.stringify({ relay_url: this.#config.url, refresh_token: refreshToken, issued_at: new Date().toISOString() })}\n`;
    try {
      await writeFileDurably(file, text, { syncDirectory: true });
    } catch (error) {
      this.#log.error({ file, reason: (error as NodeJS.ErrnoException).code ?? messageOf(error) }, 'the rotated refresh token could not be written to message_queue_credentials_file: kept in memory, written again before the next request');
      throw new Error(`message_queue_credentials_file ${file}: the rotated refresh token could not be written`);
    }
    this.#unwritten = undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function refusedMessage(file: string): string {
  return `the relay refused the refresh token of message_queue_credentials_file ${file} (invalid refresh token: replayed, revoked or expired; a replayed token revokes its whole chain). Put a fresh refresh token in the file; magnetar tries it as soon as it changes`;
}

/** The login/refresh answer: the access token and when to renew it; the refresh token, if any. */
function tokenOf(json: unknown): { token: Token; refreshToken: string | undefined } {
  const record = typeof json === 'object' && json !== null ? (json as Record<string, unknown>) : {};
  const access = record['access_token'];
  if (typeof access !== 'string' || access === '' || access.length > 16_384) throw new Error('the relay answered without an access token');
  const expiresIn = record['expires_in'];
  const lifetimeS = typeof expiresIn === 'number' && Number.isFinite(expiresIn) && expiresIn > 0 ? expiresIn : 600;
  const buffer = Math.min(RENEW_BUFFER_S, lifetimeS / 2);
  const refresh = record['refresh_token'];
  return {
    token: { access, lifetimeS, renewAt: Date.now() + (lifetimeS - buffer) * 1000 },
    refreshToken: typeof refresh === 'string' && refresh !== '' && refresh.length <= MAX_REFRESH_TOKEN_LENGTH ? refresh : undefined,
  };
}
