import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { messageOf } from '../errors.js';
import { isValidJobId } from '../jobs/ids.js';
import type { Logger } from '../log.js';
import type { OutboxEntry } from './types.js';
import { writeFileDurably } from '../durable-file.js';

/**
 * The persisted status outbox of one manager (PROTOCOL §11.4) and its ledger of delivered
 * terminal updates.
 *
 * Layout of `dir`:
 * - `<20-digit seq>-<32 hex>.json`: one pending entry, `{id, seq, jobId, incarnation, status,
 *   terminal, requested?, ts, payload}`, written to a temp file, fsync'd, then renamed into place;
 *   removed (unlinked) once its publish was confirmed.
 * - `*.tmp`: a write a crash interrupted; removed at open.
 * - `*.bad`: an entry that could not be read (corrupt, partial, wrong shape), set aside at open or
 *   when it was to be published, and logged. Never read again; left for the administrator.
 * - `delivered/<jobId>`: the ledger. Holds the incarnation of the job whose unsolicited terminal
 *   update was confirmed (written, fsync'd and renamed before that entry is unlinked). Together
 *   with the pending terminal entries it says which jobs have had their one terminal update.
 *   Markers of jobs the service no longer knows are pruned (`prune`).
 * - `initialized`: written once the first reconciliation (the baseline, `settle`) is done. An
 *   outbox without it is `fresh`: the jobs that finished before it existed are marked delivered
 *   without being published (they finished before the feed was there: nobody waits for them on
 *   the queue).
 *
 * In memory the outbox keeps a small record per pending entry (not its payload, except for small
 * payloads of entries written by this process, within `CACHE_BYTES`), so 100,000 pending entries
 * cost a few tens of megabytes at most.
 */

/** An entry as it is kept in memory while pending. */
export interface PendingEntry {
  readonly seq: number;
  readonly id: string;
  readonly jobId: string;
  /** The job's incarnation the entry reports on ('' for a job the service did not know). */
  readonly incarnation: string;
  readonly status: string;
  readonly terminal: boolean;
  readonly requested: boolean;
  readonly file: string;
  /** Length of the payload's JSON text while it is cached (counted against the cache). */
  cachedLength: number;
  /** The whole entry, kept for entries written by this process while the cache has room. */
  cached: OutboxEntry | undefined;
}

/** What a new entry says; the outbox gives it its id, seq and time. */
export interface EntryDraft {
  readonly jobId: string;
  readonly incarnation: string;
  readonly status: string;
  readonly terminal: boolean;
  readonly requested: boolean;
  /** The status document as JSON text (one JSON object, as `JobService.status` returns it). */
  readonly payload: string;
  /** The same, parsed. */
  readonly document: Readonly<Record<string, unknown>>;
}

const ENTRY_NAME = /^(\d{20})-([0-9a-f]{32})\.json$/;
const DELIVERED = 'delivered';
const INITIALIZED = 'initialized';
/** Files read at a time when the outbox opens. */
const OPEN_CONCURRENCY = 16;
/** Payloads of entries written by this process kept in memory (by JSON length) for their publish. */
const CACHE_BYTES = 8 * 1024 * 1024;
/** A payload longer than this is read back from its file when published. */
const CACHE_ENTRY_BYTES = 64 * 1024;
/** Incarnations are 16 hex characters; a marker longer than this is not ours. */
const MAX_MARKER_BYTES = 256;

function ledgerKey(jobId: string, incarnation: string): string {
  return `${jobId}/${incarnation}`;
}

export class Outbox {
  readonly dir: string;
  readonly #log: Logger;
  /** Pending entries in publishing order (seq order at open, then the order their writes completed). */
  readonly #pending = new Map<number, PendingEntry>();
  #nextSeq: number;
  #cachedBytes = 0;
  /** Jobs (`jobId/incarnation`) whose unsolicited terminal entry was written (pending or delivered). */
  readonly #marks = new Set<string>();
  /** The same, for the terminal entries still pending. */
  readonly #pendingTerminal = new Set<string>();
  /** Marker files on disk: job id → incarnation. */
  readonly #markers = new Map<string, string>();
  /** Entries set aside since the outbox opened (for tests and metrics). */
  setAside = 0;
  /** No reconciliation has completed on this outbox yet (see `initialized` in the layout). */
  #fresh: boolean;

  private constructor(dir: string, log: Logger, nextSeq: number, fresh: boolean) {
    this.dir = dir;
    this.#log = log;
    this.#nextSeq = nextSeq;
    this.#fresh = fresh;
  }

  get fresh(): boolean {
    return this.#fresh;
  }

  /** Mark a job delivered without publishing anything (the baseline of a fresh outbox). */
  async settle(jobId: string, incarnation: string): Promise<void> {
    this.#marks.add(ledgerKey(jobId, incarnation));
    try {
      await writeFileDurably(path.join(this.dir, DELIVERED, jobId), incarnation);
    } catch (error) {
      this.#marks.delete(ledgerKey(jobId, incarnation));
      throw error;
    }
    this.#markers.set(jobId, incarnation);
  }

  /** The first reconciliation is done: the outbox is no longer fresh. */
  async markInitialized(): Promise<void> {
    await writeFileDurably(path.join(this.dir, INITIALIZED), `${new Date().toISOString()}\n`);
    this.#fresh = false;
  }

  /** Open (creating) the outbox: read every pending entry and the ledger; set aside what cannot be read. */
  static async open(dir: string, log: Logger): Promise<Outbox> {
    await fs.mkdir(path.join(dir, DELIVERED), { recursive: true, mode: 0o700 });
    const names = (await fs.readdir(dir)).sort();
    const loaded: (PendingEntry | undefined)[] = new Array<PendingEntry | undefined>(names.length);
    let next = 0;
    const reader = async (): Promise<void> => {
      for (let i = next++; i < names.length; i = next++) loaded[i] = await loadAtOpen(dir, names[i]!, log);
    };
    await Promise.all(Array.from({ length: Math.min(OPEN_CONCURRENCY, names.length) }, reader));
    const entries = loaded.filter((e): e is PendingEntry => e !== undefined);
    // Names sort by seq (20 digits): `entries` is in seq order. A new seq is above every pending
    // one and above the clock in microseconds, so seqs are not reused across restarts either.
    const maxSeq = entries.reduce((max, e) => Math.max(max, e.seq), 0);
    const fresh = !names.includes(INITIALIZED);
    const outbox = new Outbox(dir, log, Math.max(maxSeq + 1, Date.now() * 1000), fresh);
    outbox.setAside = names.length - entries.length - names.filter((n) => !ENTRY_NAME.test(n)).length;
    for (const entry of entries) outbox.#add(entry);
    await outbox.#loadLedger();
    return outbox;
  }

  async #loadLedger(): Promise<void> {
    const dir = path.join(this.dir, DELIVERED);
    for (const name of await fs.readdir(dir)) {
      const full = path.join(dir, name);
      if (name.endsWith('.tmp')) {
        await fs.rm(full, { force: true });
        continue;
      }
      if (!isValidJobId(name)) continue;
      try {
        const handle = await fs.open(full, 'r');
        let incarnation: string;
        try {
          const buffer = Buffer.alloc(MAX_MARKER_BYTES);
          const { bytesRead } = await handle.read(buffer, 0, MAX_MARKER_BYTES, 0);
          incarnation = buffer.subarray(0, bytesRead).toString('utf8');
        } finally {
          await handle.close();
        }
        this.#markers.set(name, incarnation);
        this.#marks.add(ledgerKey(name, incarnation));
      } catch (error) {
        this.#log.error({ file: full, err: error }, 'status outbox: delivery marker not read');
      }
    }
  }

  #add(entry: PendingEntry): void {
    this.#pending.set(entry.seq, entry);
    if (entry.terminal && !entry.requested) {
      const key = ledgerKey(entry.jobId, entry.incarnation);
      this.#pendingTerminal.add(key);
      this.#marks.add(key);
    }
  }

  get size(): number {
    return this.#pending.size;
  }

  /** Pending entries in publishing order (a live view: entries removed while iterating are skipped). */
  entries(): IterableIterator<PendingEntry> {
    return this.#pending.values();
  }

  // ---------------------------------------------------------------- the ledger

  /** Has this job (incarnation) had its unsolicited terminal entry written? */
  isMarked(jobId: string, incarnation: string): boolean {
    return this.#marks.has(ledgerKey(jobId, incarnation));
  }

  /** Say so, before the entry is written (in memory: the entry file or its marker makes it durable). */
  mark(jobId: string, incarnation: string): void {
    this.#marks.add(ledgerKey(jobId, incarnation));
  }

  /** Undo `mark` after the entry could not be written. */
  unmark(jobId: string, incarnation: string): void {
    const key = ledgerKey(jobId, incarnation);
    if (!this.#pendingTerminal.has(key)) this.#marks.delete(key);
  }

  /** Jobs (incarnations) in the ledger (for tests and metrics). */
  get marked(): number {
    return this.#marks.size;
  }

  /**
   * Forget the ledger's jobs that `known` no longer confirms (cleaned, set up again): their marks
   * and marker files go, unless their terminal entry is still pending.
   */
  async prune(known: (jobId: string, incarnation: string) => boolean): Promise<number> {
    let pruned = 0;
    for (const key of [...this.#marks]) {
      const slash = key.indexOf('/');
      const jobId = key.slice(0, slash);
      const incarnation = key.slice(slash + 1);
      if (this.#pendingTerminal.has(key) || known(jobId, incarnation)) continue;
      this.#marks.delete(key);
      pruned++;
      if (this.#markers.get(jobId) !== incarnation) continue;
      try {
        await fs.rm(path.join(this.dir, DELIVERED, jobId), { force: true });
        this.#markers.delete(jobId);
      } catch (error) {
        this.#log.warn({ jobId, err: error }, 'status outbox: delivery marker not removed');
      }
    }
    return pruned;
  }

  // ---------------------------------------------------------------- entries

  /** Write a new entry durably (temp file, fsync, rename); resolves once it is pending. */
  async append(draft: EntryDraft): Promise<PendingEntry> {
    const seq = this.#nextSeq++;
    const id = randomUUID().replaceAll('-', '');
    const ts = Date.now();
    const file = `${String(seq).padStart(20, '0')}-${id}.json`;
    const head = { id, seq, jobId: draft.jobId, incarnation: draft.incarnation, status: draft.status, terminal: draft.terminal, ...(draft.requested ? { requested: true } : {}), ts };
    // The payload is JSON text already: spliced in rather than parsed and written again.
    const text = `${JSON.stringify(head).slice(0, -1)},"payload":${draft.payload}}`;
    await writeFileDurably(path.join(this.dir, file), text);
    const cacheable = draft.payload.length <= CACHE_ENTRY_BYTES && this.#cachedBytes + draft.payload.length <= CACHE_BYTES;
    const entry: PendingEntry = {
      seq,
      id,
      jobId: draft.jobId,
      incarnation: draft.incarnation,
      status: draft.status,
      terminal: draft.terminal,
      requested: draft.requested,
      file,
      cachedLength: cacheable ? draft.payload.length : 0,
      cached: cacheable ? toEntry(head, draft.document) : undefined,
    };
    if (cacheable) this.#cachedBytes += draft.payload.length;
    this.#add(entry);
    return entry;
  }

  /**
   * The entry to publish: from memory, or read back from its file. An entry that cannot be read is
   * set aside (`*.bad`), leaves the outbox, and undefined is returned.
   */
  async load(entry: PendingEntry): Promise<OutboxEntry | undefined> {
    if (entry.cached !== undefined) return entry.cached;
    const parsed = await readEntry(path.join(this.dir, entry.file), entry.file);
    if (typeof parsed !== 'string') return parsed;
    await setAside(this.dir, entry.file, parsed, this.#log);
    this.setAside++;
    this.#drop(entry);
    return undefined;
  }

  /**
   * The entry's publish was confirmed: it leaves the outbox. An unsolicited terminal entry first
   * leaves its marker in the ledger, so the job never gets a second one.
   */
  async remove(entry: PendingEntry): Promise<void> {
    if (!this.#pending.has(entry.seq)) return;
    if (entry.terminal && !entry.requested) {
      await writeFileDurably(path.join(this.dir, DELIVERED, entry.jobId), entry.incarnation);
      this.#markers.set(entry.jobId, entry.incarnation);
    }
    await fs.rm(path.join(this.dir, entry.file), { force: true });
    this.#drop(entry);
  }

  #drop(entry: PendingEntry): void {
    this.#pending.delete(entry.seq);
    this.#cachedBytes -= entry.cachedLength;
    entry.cachedLength = 0;
    entry.cached = undefined;
    if (entry.terminal && !entry.requested) this.#pendingTerminal.delete(ledgerKey(entry.jobId, entry.incarnation));
  }
}

async function loadAtOpen(dir: string, name: string, log: Logger): Promise<PendingEntry | undefined> {
  const full = path.join(dir, name);
  if (name.endsWith('.tmp')) {
    await fs.rm(full, { force: true });
    return undefined;
  }
  if (!ENTRY_NAME.test(name)) return undefined;
  const parsed = await readEntry(full, name);
  if (typeof parsed === 'string') {
    await setAside(dir, name, parsed, log);
    return undefined;
  }
  return {
    seq: parsed.seq,
    id: parsed.id,
    jobId: parsed.jobId,
    incarnation: parsed.incarnation,
    status: parsed.status,
    terminal: parsed.terminal,
    requested: parsed.requested === true,
    file: name,
    cachedLength: 0,
    cached: undefined,
  };
}

async function setAside(dir: string, name: string, reason: string, log: Logger): Promise<void> {
  const full = path.join(dir, name);
  log.error({ file: full, reason }, 'status outbox: entry unreadable, set aside (renamed *.bad); it will not be published');
  try {
    await fs.rename(full, `${full}.bad`);
  } catch (error) {
    log.error({ file: full, err: error }, 'status outbox: unreadable entry could not be set aside');
  }
}

type StoredEntry = OutboxEntry & { readonly incarnation: string };

/**
 * An entry file read and checked against its name; a string says why it is unusable (corrupt,
 * partial, wrong shape, gone). Throws on a read error (EIO, EMFILE): the file may be fine.
 */
async function readEntry(full: string, name: string): Promise<StoredEntry | string> {
  const match = ENTRY_NAME.exec(name);
  let text: string;
  try {
    text = await fs.readFile(full, 'utf8');
  } catch (error) {
    // A file gone is an entry lost (logged by the caller); any other read error is not the
    // entry's fault: thrown, so the entry is kept and read again later.
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'the file is gone';
    throw error;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    return `not JSON: ${messageOf(error)}`;
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return 'not a JSON object';
  const r = raw as Record<string, unknown>;
  const { id, seq, jobId, incarnation, status, terminal, requested, ts, payload } = r;
  if (typeof id !== 'string' || id !== match?.[2]) return 'its id differs from its file name';
  if (typeof seq !== 'number' || String(seq).padStart(20, '0') !== match[1]) return 'its seq differs from its file name';
  if (typeof jobId !== 'string' || !isValidJobId(jobId)) return 'no valid jobId';
  if (typeof status !== 'string' || typeof terminal !== 'boolean' || typeof ts !== 'number') return 'no status, terminal or ts';
  if (incarnation !== undefined && typeof incarnation !== 'string') return 'incarnation is not a string';
  if (requested !== undefined && typeof requested !== 'boolean') return 'requested is not a boolean';
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return 'payload is not a JSON object';
  return {
    ...toEntry({ id, seq, jobId, status, terminal, ts, ...(requested === true ? { requested } : {}) }, payload as Record<string, unknown>),
    incarnation: incarnation ?? '',
  };
}

function toEntry(
  head: { id: string; seq: number; jobId: string; status: string; terminal: boolean; requested?: boolean; ts: number },
  payload: Readonly<Record<string, unknown>>,
): OutboxEntry {
  return {
    id: head.id,
    seq: head.seq,
    jobId: head.jobId,
    status: head.status,
    terminal: head.terminal,
    ...(head.requested === true ? { requested: true } : {}),
    payload,
    ts: head.ts,
  };
}
