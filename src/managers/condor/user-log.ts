import * as fs from 'node:fs/promises';

/**
 * The HTCondor user log of a `queued_condor` job (`<jobdir>/job_condor.log`): its events and what
 * they mean for the job, read incrementally (only what was appended since the last read).
 *
 * | event | state |
 * | --- | --- |
 * | 000 submitted, 013 released | queued |
 * | 001 executing, 006 image size, 010/011 (un)suspended, 022/023 (re)connected | running |
 * | 004 evicted, 007 shadow exception, 024 reconnect failed | queued: HTCondor puts the job back in the queue and runs it again |
 * | 012 held | queued (waits for `condor_release`), except holds HTCondor makes for exceeding the memory request (codes 26, 34) or for a `periodic_hold` expression (16, e.g. a run-time limit): those fail the job, which magnetar then removes from the queue (as Galaxy does) |
 * | 005 terminated | exited: return value N, or failed with the signal that killed it |
 * | 009 aborted | exited, failed with how it was removed (a job magnetar cancelled is already `cancelled`: the service owns that state) |
 * | 002 executable error | exited, failed |
 */

const MAX_REASON = 300;

/** HoldReasonCode values that end the job (condor_holdcodes.h): memory limit, periodic_hold. */
const FINAL_HOLD_CODES: ReadonlyMap<number, string> = new Map([
  [26, 'it exceeded its memory request'],
  [34, 'it exceeded its memory request'],
  [16, 'its periodic_hold expression became true (e.g. a run-time limit)'],
]);

export interface CondorLogSummary {
  /** A submit event (000) for the job was seen. */
  readonly submitted: boolean;
  readonly state: 'queued' | 'running' | 'exited';
  /** The script's return value (005, normal termination). */
  readonly exitCode: number | null;
  /** Why the job ended abnormally (exited) — or what HTCondor last said about it (queued, held). */
  readonly reason: string | undefined;
  /** The job is held for good: magnetar fails it and removes it from the queue. */
  readonly removeFromQueue: boolean;
}

const EMPTY_SUMMARY: CondorLogSummary = Object.freeze({ submitted: false, state: 'queued', exitCode: null, reason: undefined, removeFromQueue: false });

interface LogEvent {
  readonly code: string;
  readonly cluster: number;
  readonly proc: number;
  readonly title: string;
  readonly body: readonly string[];
}

const EVENT_HEADER = /^(\d{3}) \((\d+)\.(\d+)\.(\d+)\) (.*)$/;

/** Complete events (each ends with a `...` line) in a piece of a user log. */
function parseLogEvents(text: string): LogEvent[] {
  const events: LogEvent[] = [];
  let current: { code: string; cluster: number; proc: number; title: string; body: string[] } | undefined;
  for (const line of text.split('\n')) {
    if (line === '...' || line === '...\r') {
      if (current !== undefined) events.push(current);
      current = undefined;
      continue;
    }
    const header = current === undefined ? EVENT_HEADER.exec(line) : null;
    if (header !== null) {
      current = { code: header[1]!, cluster: Number(header[2]), proc: Number(header[3]), title: header[5]!, body: [] };
    } else if (current !== undefined) {
      current.body.push(line.trim());
    }
  }
  return events;
}

/** Printable ASCII, at most MAX_REASON characters: fit for a failure reason. */
function clip(text: string): string {
  const clean = text.replace(/[^\x20-\x7e]/g, ' ').trim();
  return clean.length > MAX_REASON ? `${clean.slice(0, MAX_REASON - 3)}...` : clean;
}

function firstDetail(event: LogEvent): string | undefined {
  const line = event.body.find((l) => l !== '');
  return line === undefined ? undefined : clip(line);
}

const SIGNAL_NAMES: Readonly<Record<number, string>> = { 1: 'SIGHUP', 2: 'SIGINT', 6: 'SIGABRT', 9: 'SIGKILL', 11: 'SIGSEGV', 15: 'SIGTERM' };

/** The summary after `events` (for cluster `clusterId`, process 0) happened to `summary`. */
function applyLogEvents(summary: CondorLogSummary, events: readonly LogEvent[], clusterId: number): CondorLogSummary {
  let s = summary;
  for (const event of events) {
    if (event.cluster !== clusterId || event.proc !== 0) continue;
    if (s.state === 'exited') break;
    const detail = firstDetail(event);
    switch (event.code) {
      case '000':
        s = { ...s, submitted: true };
        break;
      case '001':
      case '006':
      case '010':
      case '011':
      case '022':
      case '023':
        s = { ...s, state: 'running' };
        break;
      case '004':
        s = { ...s, state: 'queued', reason: 'evicted by HTCondor; it will run again' };
        break;
      case '007':
        s = { ...s, state: 'queued', reason: `HTCondor shadow exception (${detail ?? 'no detail'}); it will run again` };
        break;
      case '024':
        s = { ...s, state: 'queued', reason: 'HTCondor lost the job and will run it again' };
        break;
      case '012': {
        const code = Number(/^Code (\d+) Subcode/.exec(event.body.find((l) => l.startsWith('Code ')) ?? '')?.[1] ?? Number.NaN);
        const why = FINAL_HOLD_CODES.get(code);
        const text = `held by HTCondor${detail === undefined || detail.startsWith('Code ') ? '' : `: ${detail}`}`;
        s = why === undefined
          ? { ...s, state: 'queued', reason: `${text} (waiting for condor_release)` }
          : { ...s, state: 'exited', exitCode: null, reason: clip(`the job was held by HTCondor because ${why}${detail === undefined || detail.startsWith('Code ') ? '' : `: ${detail}`}`), removeFromQueue: true };
        break;
      }
      case '013':
        s = { ...s, state: 'queued', reason: undefined };
        break;
      case '005': {
        const body = event.body.join('\n');
        const normal = /\(1\) Normal termination \(return value (-?\d+)\)/.exec(body);
        const signal = /\(0\) Abnormal termination \(signal (\d+)\)/.exec(body);
        if (normal !== null) {
          s = { ...s, state: 'exited', exitCode: Number(normal[1]), reason: undefined };
        } else if (signal !== null) {
          const number = Number(signal[1]);
          const name = SIGNAL_NAMES[number];
          const hint = number === 9 ? '; often the memory limit' : '';
          s = { ...s, state: 'exited', exitCode: null, reason: `the job was killed by signal ${number}${name === undefined ? '' : ` (${name}${hint})`}` };
        } else {
          s = { ...s, state: 'exited', exitCode: null, reason: 'HTCondor reported the job terminated without a return value' };
        }
        break;
      }
      case '009':
        s = { ...s, state: 'exited', exitCode: null, reason: `the job was removed from the HTCondor queue${detail === undefined ? '' : ` (${detail})`}` };
        break;
      case '002':
        s = { ...s, state: 'exited', exitCode: null, reason: `HTCondor could not execute the job script${detail === undefined ? '' : ` (${detail})`}` };
        break;
      default:
        break; // 028 job ad, 040 file transfer, 021 remote error, 033 attribute update…: no change
    }
  }
  return s;
}

/** The summary of a whole user log for one cluster. */
export function parseUserLog(text: string, clusterId: string | number): CondorLogSummary {
  return applyLogEvents(EMPTY_SUMMARY, parseLogEvents(text), Number(clusterId));
}

/** The first cluster submitted in a user log (recovery when the external id was not recorded). */
export function submittedCluster(text: string): string | undefined {
  const event = parseLogEvents(text).find((e) => e.code === '000');
  return event === undefined ? undefined : String(event.cluster);
}

const EVENTS_END = '\n...\n';

/**
 * Follows one job's user log: each `read` applies the complete events appended since the last one.
 * Reads take turns, so no event is applied twice.
 */
export class UserLogReader {
  readonly path: string;
  readonly #clusterId: number;
  /** Bytes already read (up to the end of the last complete event). */
  #offset = 0;
  #summary: CondorLogSummary = EMPTY_SUMMARY;
  /** The log file has been seen. */
  #seen = false;
  #reading: Promise<unknown> = Promise.resolve();

  constructor(path: string, clusterId: string) {
    this.path = path;
    this.#clusterId = Number(clusterId);
  }

  /** The summary after the events appended so far; undefined while there is no log (yet). */
  read(): Promise<CondorLogSummary | undefined> {
    const read = this.#reading.then(async () => this.#readNewEvents());
    // The next read waits for this one, whether it worked or not (its caller sees the error).
    this.#reading = read.catch(() => undefined);
    return read;
  }

  async #readNewEvents(): Promise<CondorLogSummary | undefined> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(this.path, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return this.#seen ? this.#summary : undefined;
      throw error;
    }
    try {
      this.#seen = true;
      const { size } = await handle.stat();
      if (size < this.#offset) {
        // Replaced or truncated: read it again from the start.
        this.#offset = 0;
        this.#summary = EMPTY_SUMMARY;
      }
      if (size === this.#offset) return this.#summary;
      const buffer = Buffer.alloc(size - this.#offset);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, this.#offset);
      const chunk = buffer.subarray(0, bytesRead);
      const end = chunk.lastIndexOf(EVENTS_END);
      if (end === -1) return this.#summary; // an event is being written
      const complete = chunk.subarray(0, end + EVENTS_END.length).toString('utf8');
      this.#offset += end + EVENTS_END.length;
      this.#summary = applyLogEvents(this.#summary, parseLogEvents(complete), this.#clusterId);
      return this.#summary;
    } finally {
      await handle.close();
    }
  }
}
