/**
 * The file cache (`file_cache_dir`, PROTOCOL §9.1): files a client sends once (`POST /cache`) and
 * then names in any number of uploads (`cache_token`).
 *
 * - Keying: an entry's token is the SHA-256 (hex) of the client's key and the client's path. The
 *   client key is the caller's address as the web layer derives it (the socket's peer, or the
 *   X-Forwarded-For client only behind `trusted_proxies`), never a raw header. An entry also
 *   records its client, and a `cache_token` upload is served only to that same client: a client
 *   cannot use another's entries, whether it guesses paths or learns tokens.
 * - Layout: `<dir>/<token>` (the bytes) and `<dir>/<token>.json` (client, path, size). A fill
 *   streams into `<dir>/.fill-<random>.part` (never buffered) and becomes visible by rename only
 *   when complete. Anything read through a token is therefore always a whole entry, and a reader
 *   holding an open descriptor keeps reading whole bytes even if the entry is evicted or replaced.
 * - Persistence: the files are the index. At start every entry is checked (sidecar well-formed,
 *   token recomputed from it, data present with the recorded size); anything else is logged and
 *   removed, and leftover temp files are deleted. Recency survives as the data file's mtime.
 * - Bounds: `file_cache_size` bytes (least recently used entries are evicted to make room; an
 *   entry larger than the bound is refused), MAX_ENTRIES entries, and MAX_PENDING tokens announced
 *   by `PUT /cache` but not filled yet (kept in memory only: after a restart the client is merely
 *   asked to send the file again).
 * - Concurrency: commits and evictions run one at a time. Of two fills of one entry racing, the
 *   first to finish wins and the later one's temp file is discarded; a fill that starts after an
 *   entry is ready replaces it as a whole.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsc, type Stats } from 'node:fs';
import { once } from 'node:events';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BadRequest, FileNotFound, UploadTooLarge } from '../errors.js';
import type { Logger } from '../log.js';

/** Entries held at most, whatever their size (each costs a little memory and two files). */
export const MAX_ENTRIES = 100_000;
/** Tokens announced by `PUT /cache` and not filled yet, kept at most (the oldest are forgotten). */
export const MAX_PENDING = 10_000;
/** An announced token not filled within this time is offered again to the next `PUT /cache`. */
const PENDING_TTL_MS = 3600_000;
/** Longest client path accepted (bytes, UTF-8). */
export const MAX_PATH_BYTES = 4096;
const MAX_SIDECAR_BYTES = 16 * 1024;
const FILL_PREFIX = '.fill-';
const TOKEN = /^[0-9a-f]{64}$/;

/** A ready entry in memory (its path stays in the sidecar: up to MAX_ENTRIES of them are held). */
interface Entry {
  readonly token: string;
  readonly client: string;
  readonly size: number;
}

export interface CacheOptions {
  readonly dir: string;
  /** Bytes held at most; 0 = no bound. */
  readonly maxBytes: number;
  /** Largest single entry (max_upload_size); 0 = no limit beyond maxBytes. */
  readonly maxEntryBytes: number;
  readonly log: Logger;
}

export interface CachedFile {
  /** The entry's bytes, from a descriptor opened on the whole entry. */
  readonly stream: Readable;
  readonly size: number;
}

/** A `cache_token` as the client sent it: 64 hexadecimal characters (case ignored) or 400. */
export function checkCacheToken(token: string): string {
  const lower = token.toLowerCase();
  if (token.length !== 64 || !TOKEN.test(lower)) throw new BadRequest('cache_token must be 64 hexadecimal characters');
  return lower;
}

/** The token of (client, path): what `GET /cache/status` returns and `cache_token` names. */
export function cacheToken(client: string, clientPath: string): string {
  return createHash('sha256').update(`magnetar-file-cache\0client:${client}\0path:${clientPath}`, 'utf8').digest('hex');
}

function checkPath(clientPath: string): void {
  if (clientPath === '') throw new BadRequest('path must not be empty');
  if (Buffer.byteLength(clientPath, 'utf8') > MAX_PATH_BYTES) throw new BadRequest(`path is longer than ${MAX_PATH_BYTES} bytes`);
}

export class FileCache {
  readonly #dir: string;
  readonly #maxBytes: number;
  readonly #maxEntryBytes: number;
  readonly #log: Logger;
  /** Ready entries, least recently used first. */
  readonly #entries = new Map<string, Entry>();
  /** Announced tokens (PUT answered true) not filled yet: token → when. */
  readonly #pending = new Map<string, number>();
  #bytes = 0;
  /** Commits and evictions, one at a time. */
  #chain: Promise<unknown> = Promise.resolve();

  private constructor(options: CacheOptions) {
    this.#dir = options.dir;
    this.#maxBytes = options.maxBytes;
    this.#maxEntryBytes = options.maxEntryBytes;
    this.#log = options.log;
  }

  /** Open (creating it, mode 0700) the cache directory and load its entries. */
  static async open(options: CacheOptions): Promise<FileCache> {
    const cache = new FileCache(options);
    await fs.mkdir(options.dir, { recursive: true, mode: 0o700 });
    const st = await fs.lstat(options.dir);
    if (!st.isDirectory()) throw new Error(`file_cache_dir ${options.dir} is not a directory`);
    await cache.#load();
    return cache;
  }

  /** Bytes held now (tests, logs). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Entries held now. */
  get size(): number {
    return this.#entries.size;
  }

  /** `GET /cache/status`. */
  status(client: string, clientPath: string): { token: string; ready: boolean } {
    checkPath(clientPath);
    const token = cacheToken(client, clientPath);
    return { token, ready: this.#entries.has(token) };
  }

  /** `PUT /cache`: true when the caller should send the file (the entry is neither ready nor announced). */
  required(client: string, clientPath: string): boolean {
    checkPath(clientPath);
    const token = cacheToken(client, clientPath);
    if (this.#entries.has(token)) return false;
    const now = Date.now();
    const since = this.#pending.get(token);
    if (since !== undefined && now - since < PENDING_TTL_MS) return false;
    this.#pending.delete(token);
    this.#pending.set(token, now);
    while (this.#pending.size > MAX_PENDING) {
      const oldest = this.#pending.keys().next().value as string;
      this.#pending.delete(oldest);
    }
    return true;
  }

  /** `POST /cache`: stream `body` into the entry of (client, path). */
  async insert(client: string, clientPath: string, body: Readable): Promise<void> {
    checkPath(clientPath);
    const token = cacheToken(client, clientPath);
    const before = this.#entries.get(token);
    const tmp = path.join(this.#dir, `${FILL_PREFIX}${randomBytes(8).toString('hex')}.part`);
    const handle = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
    let size = 0;
    let committed = false;
    const limit = Math.min(...[this.#maxBytes, this.#maxEntryBytes].filter((n) => n > 0), Number.POSITIVE_INFINITY);
    try {
      const counter = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          size += chunk.length;
          if (size > limit) {
            cb(new UploadTooLarge(`the file is larger than the file cache accepts (${limit} bytes: file_cache_size, max_upload_size)`));
            return;
          }
          cb(null, chunk);
        },
      });
      // The write stream owns (and closes) the handle.
      const sink = handle.createWriteStream({ highWaterMark: 1 << 20 });
      await pipeline(body, counter, sink);
      if (!sink.closed) await once(sink, 'close');
      await this.#serial(async () => {
        const current = this.#entries.get(token);
        if (current !== undefined && current !== before) {
          // Another fill of this entry finished first: it stays, this one is dropped.
          this.#log.info({ token }, 'file cache: a concurrent fill of this entry finished first; this copy is discarded');
          return;
        }
        await this.#makeRoom(size, token);
        const entry: Entry = { token, client, size };
        const data = path.join(this.#dir, token);
        // Old bytes go first, then the new sidecar, then the new bytes: a crash at any point
        // leaves either a complete matching pair or a pair that the next start removes.
        if (current !== undefined) this.#forget(current);
        await fs.rm(data, { force: true });
        const sideTmp = `${tmp}.json`;
        await fs.writeFile(sideTmp, JSON.stringify({ v: 1, client, path: clientPath, size }), { mode: 0o600, flag: 'wx' });
        await fs.rename(sideTmp, `${data}.json`);
        await fs.rename(tmp, data);
        committed = true;
        this.#entries.set(token, entry);
        this.#bytes += size;
        this.#pending.delete(token);
      });
    } finally {
      if (!committed) {
        // A failed fill (the client went away, the file was too large): the next PUT asks again
        // instead of leaving everyone waiting for an entry that is not coming.
        if (!this.#entries.has(token)) this.#pending.delete(token);
        await fs.rm(tmp, { force: true });
        await fs.rm(`${tmp}.json`, { force: true });
      }
    }
  }

  /**
   * The entry a `cache_token` names, for a copy into a job: 404 unless it is ready and belongs to
   * `client` (the same answer either way, so a token of another client reveals nothing).
   */
  async open(client: string, token: string): Promise<CachedFile> {
    const checked = checkCacheToken(token);
    const entry = this.#entries.get(checked);
    const missing = (): FileNotFound => new FileNotFound('no ready file cache entry of this client has this cache_token');
    if (entry?.client !== client) throw missing();
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(path.join(this.#dir, checked), fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch (e) {
      // Evicted or replaced between the lookup and the open.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw missing();
      throw e;
    }
    const st = await handle.stat();
    // Recently used: last to be evicted, now and after a restart (the mtime is the recency).
    if (this.#entries.get(checked) === entry) {
      this.#entries.delete(checked);
      this.#entries.set(checked, entry);
    }
    const now = new Date();
    await handle.utimes(now, now).catch(() => undefined);
    return { stream: handle.createReadStream({ highWaterMark: 1 << 20 }), size: st.size };
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn, fn);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  /** Evict least recently used entries (not `keep`) until `size` more bytes and one more entry fit. */
  async #makeRoom(size: number, keep: string): Promise<void> {
    const replaced = this.#entries.get(keep)?.size ?? 0;
    for (const entry of [...this.#entries.values()]) {
      const overBytes = this.#maxBytes > 0 && this.#bytes - replaced + size > this.#maxBytes;
      const overCount = this.#entries.size >= MAX_ENTRIES;
      if (!overBytes && !overCount) return;
      if (entry.token === keep) continue;
      this.#log.info({ token: entry.token, size: entry.size }, 'file cache: evicted (least recently used)');
      await this.#remove(entry);
    }
  }

  #forget(entry: Entry): void {
    if (this.#entries.get(entry.token) === entry) {
      this.#entries.delete(entry.token);
      this.#bytes -= entry.size;
    }
  }

  async #remove(entry: Entry): Promise<void> {
    this.#forget(entry);
    const data = path.join(this.#dir, entry.token);
    await fs.rm(data, { force: true });
    await fs.rm(`${data}.json`, { force: true });
  }

  async #load(): Promise<void> {
    const names = await fs.readdir(this.#dir);
    const present = new Set(names);
    const found: { entry: Entry; mtime: number }[] = [];
    const drop = async (name: string, why: string): Promise<void> => {
      this.#log.warn({ file: name, reason: why }, 'file cache: dropping a damaged or stray entry');
      await fs.rm(path.join(this.#dir, name), { force: true });
    };
    for (const name of names) {
      if (name.startsWith(FILL_PREFIX)) {
        await fs.rm(path.join(this.#dir, name), { force: true });
        continue;
      }
      const sidecar = name.endsWith('.json');
      const token = sidecar ? name.slice(0, -5) : name;
      if (!TOKEN.test(token)) continue; // not ours: left alone
      if (!sidecar) {
        if (!present.has(`${token}.json`)) await drop(name, 'no metadata');
        continue;
      }
      const why = await this.#checkPair(token).catch((e: unknown) => `unreadable: ${(e as Error).message}`);
      if (typeof why === 'string') {
        await drop(name, why);
        await drop(token, why);
        continue;
      }
      found.push(why);
    }
    found.sort((a, b) => a.mtime - b.mtime);
    for (const { entry } of found) {
      this.#entries.set(entry.token, entry);
      this.#bytes += entry.size;
    }
    // The bound may have been lowered since: the oldest go.
    if (this.#maxBytes > 0 || this.#entries.size > MAX_ENTRIES) {
      for (const entry of [...this.#entries.values()]) {
        if ((this.#maxBytes === 0 || this.#bytes <= this.#maxBytes) && this.#entries.size <= MAX_ENTRIES) break;
        await this.#remove(entry);
      }
    }
    this.#log.info({ dir: this.#dir, entries: this.#entries.size, bytes: this.#bytes }, 'file cache ready');
  }

  /** A loaded entry and its recency, or why the pair on disk is not one. */
  async #checkPair(token: string): Promise<{ entry: Entry; mtime: number } | string> {
    const side = path.join(this.#dir, `${token}.json`);
    const sst = await fs.lstat(side);
    if (!sst.isFile() || sst.size > MAX_SIDECAR_BYTES) return 'metadata is not a small regular file';
    let meta: unknown;
    try {
      meta = JSON.parse(await fs.readFile(side, 'utf8'));
    } catch {
      return 'metadata is not JSON';
    }
    const m = meta as { v?: unknown; client?: unknown; path?: unknown; size?: unknown };
    if (m.v !== 1 || typeof m.client !== 'string' || typeof m.path !== 'string' || !Number.isSafeInteger(m.size) || (m.size as number) < 0) {
      return 'metadata is malformed';
    }
    if (cacheToken(m.client, m.path) !== token) return 'metadata does not match the token';
    let dst: Stats;
    try {
      dst = await fs.lstat(path.join(this.#dir, token));
    } catch {
      return 'no data';
    }
    if (!dst.isFile()) return 'data is not a regular file';
    if (dst.size !== m.size) return `data has ${dst.size} bytes, metadata says ${String(m.size)}`;
    return { entry: { token, client: m.client, size: m.size as number }, mtime: dst.mtimeMs };
  }
}
