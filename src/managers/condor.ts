/**
 * `queued_condor` (PROTOCOL §6.2 "Condor"): jobs are submitted with `condor_submit`, followed in
 * the job's HTCondor user log (`<jobdir>/job_condor.log`), and removed with `condor_rm`.
 *
 * The submit description is `key = value` lines: `universe = vanilla`, `getenv = true`,
 * `notification = NEVER`, then the client's submit parameters (only the names the administrator
 * allow-listed reach a backend), then the manager's `submit_<key>` options, each replacing an
 * earlier line with the same key (HTCondor keys ignore case); then the lines magnetar owns:
 * `executable`, `output`, `error`, `log` and `queue`. Keys and values are checked so that
 * nothing can add a line (PROTOCOL §14 item 11): a bad manager option stops the server
 * (ConfigError), a bad client parameter fails the job.
 *
 * `condor_submit` runs with the job's clean environment (plus `CONDOR_CONFIG` and `_CONDOR_*`
 * from the server's), because `getenv = true` copies the submitter's environment into the job;
 * and in `<jobdir>/working`, which HTCondor takes as the job's initial directory.
 *
 * State comes from the user log, read incrementally (only what was appended since the last
 * poll); `condor_q` is asked, for all jobs of one poll in one call, about jobs whose log does not
 * exist (yet), and every minute about all unfinished jobs so that a job that left the queue
 * without a final event is noticed. Events:
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
 *
 * Upstream reports a missing log as `complete`; here a job whose log is missing and which
 * `condor_q` does not know is "gone", and its `return_code` file decides.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { ManagerConfig } from '../config/types.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Backend, BackendState, ExitReport, LaunchSpec } from './backend.js';
import type { BackendContext } from './context.js';
import { PollingMonitor, type PolledState } from './monitor.js';

export interface CondorCommands {
  readonly condorSubmit: string;
  readonly condorQ: string;
  readonly condorRm: string;
}

export const DEFAULT_CONDOR_COMMANDS: CondorCommands = Object.freeze({
  condorSubmit: 'condor_submit',
  condorQ: 'condor_q',
  condorRm: 'condor_rm',
});

/** Programmatic knobs (tests point the commands at fake executables). */
export interface CondorBackendOptions {
  readonly commands?: Partial<CondorCommands>;
  /** How often all unfinished jobs are also looked up with condor_q (default one minute). */
  readonly queueCheckIntervalMs?: number;
  /** Limit for one condor_submit / condor_q / condor_rm call (default 60 s). */
  readonly commandTimeoutMs?: number;
}

export const SUBMIT_FILE_NAME = 'job.condor.submit';
export const USER_LOG_NAME = 'job_condor.log';
const SUBMIT_OPTION_PREFIX = 'submit_';
const DEFAULT_QUEUE_CHECK_MS = 60_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 60_000;
const MAX_REASON = 300;

const DEFAULT_SUBMIT_LINES: ReadonlyArray<readonly [string, string]> = [
  ['universe', 'vanilla'],
  ['getenv', 'true'],
  ['notification', 'NEVER'],
];

/** A submit command name; `+Attr` / `MY.Attr` set job ClassAd attributes. */
const SUBMIT_KEY_RE = /^\+?[A-Za-z_][A-Za-z0-9_.+-]*$/;
/** Submit commands magnetar writes itself, and `log_xml`, which would make the log unreadable here. */
const RESERVED_SUBMIT_KEYS: ReadonlySet<string> = new Set(['executable', 'output', 'error', 'log', 'log_xml', 'queue']);
/** The job ClassAd attributes behind them, reachable as `+Cmd` or `MY.Cmd`. */
const RESERVED_ATTRIBUTES: ReadonlySet<string> = new Set(['cmd', 'out', 'err', 'userlog', 'ulogusexml']);

/** HoldReasonCode values that end the job (condor_holdcodes.h): memory limit, periodic_hold. */
const FINAL_HOLD_CODES: ReadonlyMap<number, string> = new Map([
  [26, 'it exceeded its memory request'],
  [34, 'it exceeded its memory request'],
  [16, 'its periodic_hold expression became true (e.g. a run-time limit)'],
]);

// ------------------------------------------------------------------------------------------------
// Submit description

/** Why a submit key or value is refused, or undefined when it is acceptable. */
export function submitKeyProblem(key: string): string | undefined {
  if (!SUBMIT_KEY_RE.test(key)) return 'is not an HTCondor submit command name';
  const lower = key.toLowerCase();
  if (RESERVED_SUBMIT_KEYS.has(lower)) return 'is set by magnetar';
  const attribute = lower.startsWith('+') ? lower.slice(1) : lower.startsWith('my.') ? lower.slice(3) : undefined;
  if (attribute !== undefined && RESERVED_ATTRIBUTES.has(attribute)) return 'is set by magnetar';
  return undefined;
}

export function submitValueProblem(value: string): string | undefined {
  if (/[\n\r\0]/.test(value)) return 'contains a line break or NUL';
  // A trailing backslash continues the line: it would swallow the next one.
  if (/\\\s*$/.test(value)) return 'ends with a backslash (line continuation)';
  return undefined;
}

function submitValueText(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  return undefined;
}

export interface SubmitDescriptionSpec {
  readonly scriptPath: string;
  readonly stdoutPath: string;
  readonly stderrPath: string;
  readonly userLogPath: string;
  /** The client's (already allow-listed) submit parameters. */
  readonly clientParams: Readonly<Record<string, unknown>>;
  /** The manager's `submit_<key>` options, prefix removed, already validated. */
  readonly managerParams: ReadonlyArray<readonly [string, string]>;
}

/**
 * The text of `job.condor.submit`. Throws (an Error whose message the job's status shows) when a
 * client parameter is not acceptable.
 */
export function buildSubmitDescription(spec: SubmitDescriptionSpec): string {
  const lines = new Map<string, [key: string, value: string]>();
  const set = (key: string, value: string): void => {
    const lower = key.toLowerCase();
    const existing = lines.get(lower);
    if (existing === undefined) lines.set(lower, [key, value]);
    else {
      existing[0] = key;
      existing[1] = value;
    }
  };
  for (const [key, value] of DEFAULT_SUBMIT_LINES) set(key, value);
  for (const [key, raw] of Object.entries(spec.clientParams)) {
    const keyProblem = submitKeyProblem(key);
    if (keyProblem !== undefined) throw new Error(`submit parameter ${JSON.stringify(key)} ${keyProblem}`);
    const value = submitValueText(raw);
    if (value === undefined) throw new Error(`submit parameter ${key} must be a string, a number or a boolean`);
    const valueProblem = submitValueProblem(value);
    if (valueProblem !== undefined) throw new Error(`submit parameter ${key} ${valueProblem}`);
    set(key, value);
  }
  for (const [key, value] of spec.managerParams) set(key, value);
  for (const [name, file] of [
    ['executable', spec.scriptPath],
    ['output', spec.stdoutPath],
    ['error', spec.stderrPath],
    ['log', spec.userLogPath],
  ] as const) {
    if (submitValueProblem(file) !== undefined) throw new Error(`the job's ${name} path cannot be written into a submit description`);
  }
  const text = [...lines.values()].map(([key, value]) => `${key} = ${value}`);
  text.push(`executable = ${spec.scriptPath}`, `output = ${spec.stdoutPath}`, `error = ${spec.stderrPath}`, `log = ${spec.userLogPath}`, 'queue', '');
  return text.join('\n');
}

/** The manager's `submit_<key>` options; anything else is not an option of this manager type. */
export function condorSubmitOptions(manager: ManagerConfig, configFile: string): Array<[string, string]> {
  const params: Array<[string, string]> = [];
  for (const [option, value] of Object.entries(manager.backendOptions)) {
    const key = `manager ${manager.name} ${option}`;
    if (!option.toLowerCase().startsWith(SUBMIT_OPTION_PREFIX)) {
      throw new ConfigError(configFile, key, 'unknown option for a queued_condor manager (it takes submit_<name> options, e.g. submit_request_memory)');
    }
    const condorKey = option.slice(SUBMIT_OPTION_PREFIX.length);
    const keyProblem = submitKeyProblem(condorKey);
    if (keyProblem !== undefined) throw new ConfigError(configFile, key, `${JSON.stringify(condorKey)} ${keyProblem}`);
    const valueProblem = submitValueProblem(value);
    if (valueProblem !== undefined) throw new ConfigError(configFile, key, `the value ${valueProblem}`);
    params.push([condorKey, value]);
  }
  return params;
}

/** The cluster id in condor_submit's answer (`1 job(s) submitted to cluster 8135.`). */
export function parseClusterId(output: string): string | undefined {
  const match = /submitted to cluster (\d+)\./.exec(output);
  return match?.[1] === undefined ? undefined : String(Number.parseInt(match[1], 10));
}

// ------------------------------------------------------------------------------------------------
// User log

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

export const EMPTY_SUMMARY: CondorLogSummary = Object.freeze({ submitted: false, state: 'queued', exitCode: null, reason: undefined, removeFromQueue: false });

interface LogEvent {
  readonly code: string;
  readonly cluster: number;
  readonly proc: number;
  readonly title: string;
  readonly body: readonly string[];
}

const EVENT_HEADER = /^(\d{3}) \((\d+)\.(\d+)\.(\d+)\) (.*)$/;

/** Complete events (each ends with a `...` line) in a piece of a user log. */
export function parseLogEvents(text: string): LogEvent[] {
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
export function applyLogEvents(summary: CondorLogSummary, events: readonly LogEvent[], clusterId: number): CondorLogSummary {
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

// ------------------------------------------------------------------------------------------------
// condor_q

/** Arguments for one condor_q call about `ids`: `<cluster>.<proc> <JobStatus>` per line. */
export function condorQArguments(ids: readonly string[]): string[] {
  return ['-format', '%d.', 'ClusterId', '-format', '%d ', 'ProcId', '-format', '%d\\n', 'JobStatus', ...ids];
}

/** JobStatus by cluster id (process 0) from condor_q's answer. */
export function parseCondorQ(output: string): Map<string, number> {
  const statuses = new Map<string, number>();
  for (const line of output.split('\n')) {
    const match = /^\s*(\d+)\.(\d+)\s+(\d+)\s*$/.exec(line);
    if (match === null || Number(match[2]) !== 0) continue;
    statuses.set(String(Number(match[1])), Number(match[3]));
  }
  return statuses;
}

/** HTCondor's JobStatus: 1 idle, 2 running, 3 removed, 4 completed, 5 held, 6 transferring output, 7 suspended. */
function fromJobStatus(status: number): PolledState {
  switch (status) {
    case 2:
    case 6:
    case 7:
      return { state: 'running' };
    case 3:
      return { state: 'exited', exitCode: null, reason: 'the job was removed from the HTCondor queue' };
    case 4:
      return { state: 'exited', exitCode: null };
    default:
      return { state: 'queued' };
  }
}

// ------------------------------------------------------------------------------------------------
// Backend

interface TrackedJob {
  readonly logPath: string;
  /** Bytes of the log already read (up to the end of the last complete event). */
  offset: number;
  summary: CondorLogSummary;
  /** The log file has been seen. */
  logSeen: boolean;
  /** condor_rm was asked for (a cancel, or a hold that ended the job). */
  removed: boolean;
  /** The read in progress: reads of one log take turns, so no event is applied twice. */
  reading: Promise<unknown>;
}

interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

export class CondorBackend implements Backend {
  readonly kind = 'condor';
  readonly maxConcurrent = Number.POSITIVE_INFINITY;
  readonly #managerParams: ReadonlyArray<readonly [string, string]>;
  readonly #commands: CondorCommands;
  readonly #log: Logger;
  /** What condor_q and condor_rm run with: PATH, HOME and the HTCondor settings of the server. */
  readonly #toolEnv: Readonly<Record<string, string>>;
  readonly #condorEnv: Readonly<Record<string, string>>;
  readonly #timeoutMs: number;
  readonly #queueCheckMs: number;
  readonly #jobs = new Map<string, TrackedJob>();
  readonly #monitor: PollingMonitor;
  #lastQueueCheck = Date.now();

  constructor(manager: ManagerConfig, ctx: BackendContext, options: CondorBackendOptions = {}) {
    this.#managerParams = condorSubmitOptions(manager, ctx.configFile);
    this.#commands = { ...DEFAULT_CONDOR_COMMANDS, ...options.commands };
    this.#log = ctx.log.child({ manager: manager.name, backend: 'condor' });
    this.#timeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.#queueCheckMs = options.queueCheckIntervalMs ?? DEFAULT_QUEUE_CHECK_MS;
    const condorEnv: Record<string, string> = {};
    const toolEnv: Record<string, string> = {};
    for (const [name, value] of Object.entries(ctx.serverEnv)) {
      if (value === undefined) continue;
      if (name === 'CONDOR_CONFIG' || name.startsWith('_CONDOR_')) condorEnv[name] = value;
      if (name === 'PATH' || name === 'HOME' || name === 'TMPDIR' || name === 'LANG') toolEnv[name] = value;
    }
    this.#condorEnv = condorEnv;
    this.#toolEnv = { ...toolEnv, ...condorEnv };
    this.#monitor = new PollingMonitor({
      intervalMs: manager.minPollingInterval * 1000,
      pollBatch: async (ids) => this.#pollBatch(ids),
      // Not in the queue and no final event: the job's return_code file decides (in the service).
      onGone: async () => ({ exitCode: null }),
      log: this.#log,
    });
  }

  scriptHeader(): readonly string[] {
    return [];
  }

  async submit(spec: LaunchSpec): Promise<string> {
    const logPath = path.join(spec.jobDirectory, USER_LOG_NAME);
    const description = buildSubmitDescription({
      scriptPath: spec.scriptPath,
      stdoutPath: spec.stdoutPath,
      stderrPath: spec.stderrPath,
      userLogPath: logPath,
      clientParams: spec.submitParams,
      managerParams: this.#managerParams,
    });
    const submitFile = path.join(spec.jobDirectory, SUBMIT_FILE_NAME);
    await fs.writeFile(submitFile, description, { mode: 0o600 });
    // getenv = true hands condor_submit's environment to the job: make it the job's clean one.
    const { stdout, stderr } = await this.#run(this.#commands.condorSubmit, [submitFile], {
      cwd: spec.workingDirectory,
      env: { ...spec.env, ...this.#condorEnv },
    });
    const clusterId = parseClusterId(stdout);
    if (clusterId === undefined) {
      throw new Error(`condor_submit did not say which cluster it submitted to: ${clip(`${stdout} ${stderr}`) || 'no output'}`);
    }
    this.#track(clusterId, logPath);
    this.#log.info({ jobId: spec.jobId, externalId: clusterId }, 'submitted to HTCondor');
    return clusterId;
  }

  async status(externalId: string): Promise<BackendState> {
    let polled: PolledState | undefined;
    try {
      polled = (await this.#pollBatch([externalId], true)).get(externalId);
    } catch {
      return 'unknown';
    }
    if (polled === undefined || polled.state === 'gone') return 'exited';
    return polled.state;
  }

  waitForStart(externalId: string): Promise<void> {
    return this.#monitor.waitForStart(externalId);
  }

  waitForExit(externalId: string): Promise<ExitReport> {
    return this.#monitor.waitForExit(externalId);
  }

  async kill(externalId: string): Promise<void> {
    const job = this.#jobs.get(externalId);
    if (job !== undefined) job.removed = true;
    await this.#remove(externalId, 'cancel');
  }

  async recover(spec: LaunchSpec, externalId: string | undefined): Promise<string | undefined> {
    const logPath = path.join(spec.jobDirectory, USER_LOG_NAME);
    let clusterId = externalId !== undefined && /^\d+$/.test(externalId) ? externalId : undefined;
    if (clusterId === undefined) {
      // Submitted, but the server stopped before it recorded the id: the log knows it.
      const text = await fs.readFile(logPath, 'utf8').catch(() => undefined);
      clusterId = text === undefined ? undefined : submittedCluster(text);
    }
    if (clusterId === undefined) return undefined;
    this.#track(clusterId, logPath);
    return clusterId;
  }

  close(): void {
    this.#monitor.close();
  }

  #track(clusterId: string, logPath: string): void {
    const existing = this.#jobs.get(clusterId);
    if (existing !== undefined && existing.logPath === logPath) return;
    this.#jobs.set(clusterId, { logPath, offset: 0, summary: EMPTY_SUMMARY, logSeen: false, removed: false, reading: Promise.resolve() });
  }

  /** The job's summary after the events appended to its log; undefined when there is no log. */
  #readLog(job: TrackedJob, clusterId: string): Promise<CondorLogSummary | undefined> {
    const read = job.reading.then(() => this.#readNewEvents(job, clusterId));
    job.reading = read.catch(() => undefined);
    return read;
  }

  async #readNewEvents(job: TrackedJob, clusterId: string): Promise<CondorLogSummary | undefined> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(job.logPath, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return job.logSeen ? job.summary : undefined;
      throw error;
    }
    try {
      job.logSeen = true;
      const { size } = await handle.stat();
      if (size < job.offset) {
        // Replaced or truncated: read it again from the start.
        job.offset = 0;
        job.summary = EMPTY_SUMMARY;
      }
      if (size === job.offset) return job.summary;
      const buffer = Buffer.alloc(size - job.offset);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, job.offset);
      const chunk = buffer.subarray(0, bytesRead);
      const end = chunk.lastIndexOf('\n...\n');
      if (end === -1) return job.summary; // an event is being written
      const complete = chunk.subarray(0, end + 5).toString('utf8');
      job.offset += end + 5;
      job.summary = applyLogEvents(job.summary, parseLogEvents(complete), Number(clusterId));
      return job.summary;
    } finally {
      await handle.close();
    }
  }

  /** One round: every job's log, then one condor_q for the jobs the logs cannot answer for. */
  async #pollBatch(ids: readonly string[], single = false): Promise<Map<string, PolledState>> {
    const states = new Map<string, PolledState>();
    const ask: string[] = [];
    const crossCheck = !single && Date.now() - this.#lastQueueCheck >= this.#queueCheckMs;
    const summaries = await Promise.all(ids.map((id) => {
      const job = this.#jobs.get(id);
      return job === undefined ? undefined : this.#readLog(job, id);
    }));
    for (const [index, id] of ids.entries()) {
      const job = this.#jobs.get(id);
      const summary = summaries[index];
      if (summary === undefined) {
        ask.push(id);
        continue;
      }
      if (summary.state === 'exited') {
        states.set(id, this.#finalState(id, job!, summary));
        // The monitor settles every wait for it now; a later question goes to condor_q.
        if (!single) this.#jobs.delete(id);
        continue;
      }
      states.set(id, { state: summary.state });
      if (crossCheck) ask.push(id);
    }
    if (crossCheck) this.#lastQueueCheck = Date.now();
    if (ask.length === 0) return states;

    let queue: Map<string, number>;
    try {
      const { stdout } = await this.#run(this.#commands.condorQ, condorQArguments(ask), { env: this.#toolEnv });
      queue = parseCondorQ(stdout);
    } catch (error) {
      if (single) throw error;
      this.#log.warn({ err: error instanceof Error ? error.message : String(error) }, 'condor_q failed; trying again next round');
      // Unknown for now: keep waiting (a job whose log exists keeps its log state).
      for (const id of ask) if (!states.has(id)) states.set(id, { state: 'queued' });
      return states;
    }
    for (const id of ask) {
      const status = queue.get(id);
      if (status !== undefined) {
        // The log is the better witness when there is one.
        if (!states.has(id)) states.set(id, fromJobStatus(status));
        continue;
      }
      // Not in the queue (any more): a final event may have been written since the log was read.
      const job = this.#jobs.get(id);
      const summary = job === undefined ? undefined : await this.#readLog(job, id);
      if (summary !== undefined && summary.state === 'exited') states.set(id, this.#finalState(id, job!, summary));
      else states.set(id, { state: 'gone' });
    }
    return states;
  }

  #finalState(id: string, job: TrackedJob, summary: CondorLogSummary): PolledState {
    if (summary.removeFromQueue && !job.removed) {
      job.removed = true;
      void this.#remove(id, 'held for good');
    }
    return summary.reason === undefined
      ? { state: 'exited', exitCode: summary.exitCode }
      : { state: 'exited', exitCode: summary.exitCode, reason: job.removed && !summary.removeFromQueue ? 'cancelled (removed with condor_rm)' : summary.reason };
  }

  async #remove(id: string, why: string): Promise<void> {
    try {
      await this.#run(this.#commands.condorRm, [id], { env: this.#toolEnv });
      this.#log.info({ externalId: id, why }, 'removed from HTCondor');
    } catch (error) {
      this.#log.warn({ externalId: id, why, err: error instanceof Error ? error.message : String(error) }, 'condor_rm failed');
    }
  }

  #run(file: string, args: readonly string[], options: { cwd?: string; env: Readonly<Record<string, string>> }): Promise<RunResult> {
    const name = path.basename(file);
    return new Promise((resolve, reject) => {
      execFile(
        file,
        args,
        { ...(options.cwd === undefined ? {} : { cwd: options.cwd }), env: options.env, timeout: this.#timeoutMs, maxBuffer: 4 * 1024 * 1024, encoding: 'utf8' },
        (error, stdout, stderr) => {
          if (error === null) {
            resolve({ stdout, stderr });
            return;
          }
          const output = `${stderr} ${stdout}`;
          const how = (error as NodeJS.ErrnoException).code === 'ENOENT'
            ? 'was not found (is HTCondor installed and on the PATH?)'
            : error.killed === true
              ? `did not answer within ${Math.round(this.#timeoutMs / 1000)} s`
              : `failed (exit ${String(error.code ?? error.signal ?? '?')})`;
          reject(new Error(`${name} ${how}${clip(output) === '' ? '' : `: ${clip(output)}`}`, { cause: error }));
        },
      );
    });
  }
}

/** The backend of a `queued_condor` manager; its options are checked now (ConfigError). */
export function createCondorBackend(manager: ManagerConfig, ctx: BackendContext, options: CondorBackendOptions = {}): Backend {
  return new CondorBackend(manager, ctx, options);
}
