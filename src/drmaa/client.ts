import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { z } from 'zod';
import { BackendError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ControlAction } from './constants.js';
import {
  controlResultSchema,
  initResultSchema,
  pollResultSchema,
  responseSchema,
  submitResultSchema,
  type HelperCall,
  type InitResult,
  type PollEntry,
  type TemplateMessage,
} from './protocol.js';

/** The helper is started with this (libdrmaa's jemalloc needs static TLS; ld.so reads it at exec). */
export const STATIC_TLS_TUNABLE = 'glibc.rtld.optional_static_tls=4096';

const HELPER_PATH = fileURLToPath(new URL('./helper.js', import.meta.url));
const CALL_TIMEOUT_MS = 60_000;
/** A helper that keeps dying is restarted at most this often. */
const RESTART_INTERVAL_MS = 1000;
const EXIT_GRACE_MS = 5000;

/** Variables of the server's environment the helper (and so the DRM library) may see. */
const PASSED_VARIABLES = new Set(['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'LD_LIBRARY_PATH']);
const PASSED_PREFIXES = ['SGE_', 'DRMAA_', 'SLURM_', 'PBS_', 'LSF_', 'LSB_', 'TORQUE_', 'UGE_', 'OGS_'];

/**
 * The environment of a process that loads libdrmaa: the DRM's variables from the server's
 * environment (a native specification with `-V` would otherwise hand the job every secret the
 * server holds), plus the static TLS tunable.
 */
export function drmaaProcessEnvironment(serverEnv: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(serverEnv)) {
    if (value === undefined) continue;
    if (PASSED_VARIABLES.has(key) || PASSED_PREFIXES.some((prefix) => key.startsWith(prefix))) env[key] = value;
  }
  env['PATH'] ??= '/usr/local/bin:/usr/bin:/bin';
  const tunables = serverEnv['GLIBC_TUNABLES'];
  env['GLIBC_TUNABLES'] =
    tunables === undefined || tunables === '' ? STATIC_TLS_TUNABLE : tunables.includes('optional_static_tls') ? tunables : `${tunables}:${STATIC_TLS_TUNABLE}`;
  return env;
}

/**
 * The helper answered a call with a DRMAA error: the DRM was asked and said no.
 * `drmaaCode` is the error's DRMAA name (e.g. DENIED_BY_DRM).
 */
export class DrmaaCallError extends BackendError {
  readonly drmaaCode: string;
  constructor(drmaaCode: string, message: string) {
    super('MAG_ERR_BACKEND_COMMAND', message);
    this.drmaaCode = drmaaCode;
  }
}

/** The helper process could not answer: it died, hung, or could not be started. */
export class DrmaaHelperError extends BackendError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_BACKEND_UNREACHABLE', message, options);
  }
}

export interface DrmaaClientOptions {
  /** Names the helper in process listings and logs. */
  readonly manager: string;
  /** Where the session contact is kept, so that a new helper re-attaches to the same session. */
  readonly contactFile: string;
  /** The helper's whole environment (see `drmaaProcessEnvironment`). */
  readonly env: Readonly<Record<string, string>>;
  readonly log: Logger;
  /** Tests only: another helper script. */
  readonly helperPath?: string;
}

interface Pending {
  readonly what: string;
  readonly resolve: (result: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

interface Helper {
  readonly child: ChildProcessWithoutNullStreams;
  readonly pending: Map<number, Pending>;
  /** Settles once the session is up (set right after the process is spawned). */
  ready: Promise<InitResult> | undefined;
  alive: boolean;
}

/**
 * The server's side of the DRMAA helper (`helper.ts`): one long-lived child process holding one
 * DRMAA session, spoken to in JSON lines. When the helper dies (a crash in the C library), the
 * calls in flight fail with a DrmaaHelperError saying so, and the next call starts a new helper,
 * which re-attaches to the same session (its contact is kept in `contactFile`), so jobs submitted
 * before the crash can still be reaped.
 */
export class DrmaaClient {
  readonly #options: DrmaaClientOptions;
  readonly #log: Logger;
  #helper: Helper | undefined;
  #starting: Promise<Helper> | undefined;
  #lastStart = 0;
  #next = 0;
  #closed = false;
  #drmSystem: string | undefined;

  constructor(options: DrmaaClientOptions) {
    this.#options = options;
    this.#log = options.log.child({ manager: options.manager, component: 'drmaa' });
  }

  /** The helper's pid while it runs. */
  get pid(): number | undefined {
    return this.#helper?.alive === true ? this.#helper.child.pid : undefined;
  }

  /** The DRM behind the library ("SGE 8.1.9"), once a helper has started. */
  get drmSystem(): string | undefined {
    return this.#drmSystem;
  }

  async submit(template: TemplateMessage): Promise<string> {
    const result = await this.#call({ op: 'submit', template }, submitResultSchema, 'submitting the job');
    return result.jobId;
  }

  async poll(jobIds: readonly string[]): Promise<Readonly<Record<string, PollEntry>>> {
    if (jobIds.length === 0) return {};
    const result = await this.#call({ op: 'poll', jobIds: [...jobIds] }, pollResultSchema, 'polling jobs');
    return result.jobs;
  }

  async control(jobId: string, action: ControlAction): Promise<void> {
    await this.#call({ op: 'control', jobId, action }, controlResultSchema, `${action.toLowerCase()} of job ${jobId}`);
  }

  /** Stop the helper (it leaves its session; jobs keep running). */
  close(): void {
    this.#closed = true;
    const helper = this.#helper;
    if (helper === undefined) return;
    helper.child.stdin.end();
    const timer = setTimeout(() => {
      if (helper.alive) helper.child.kill('SIGKILL');
    }, EXIT_GRACE_MS);
    timer.unref();
  }

  async #call<S extends z.ZodType>(call: HelperCall, schema: S, what: string): Promise<z.infer<S>> {
    const helper = await this.#ready();
    const raw = await this.#send(helper, call, what);
    const parsed = schema.safeParse(raw);
    if (!parsed.success) throw new DrmaaHelperError(`the DRMAA helper gave a malformed answer while ${what}`);
    return parsed.data;
  }

  async #ready(): Promise<Helper> {
    if (this.#closed) throw new DrmaaHelperError('the DRMAA backend is shut down');
    const current = this.#helper;
    if (current?.alive === true) {
      await current.ready;
      return current;
    }
    this.#starting ??= this.#start().finally(() => {
      this.#starting = undefined;
    });
    const helper = await this.#starting;
    await helper.ready;
    return helper;
  }

  async #start(): Promise<Helper> {
    const wait = this.#lastStart + RESTART_INTERVAL_MS - Date.now();
    if (wait > 0) await sleep(wait);
    if (this.#closed) throw new DrmaaHelperError('the DRMAA backend is shut down');
    this.#lastStart = Date.now();
    const { manager, contactFile, env } = this.#options;
    const child = spawn(process.execPath, [this.#options.helperPath ?? HELPER_PATH, '--manager', manager, '--contact-file', contactFile], {
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const helper: Helper = { child, pending: new Map(), ready: undefined, alive: true };
    this.#helper = helper;
    createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', (line) => this.#onLine(helper, line));
    createInterface({ input: child.stderr, crlfDelay: Infinity }).on('line', (line) => {
      if (line.trim() !== '') this.#log.warn({ helperPid: child.pid }, `drmaa helper: ${line}`);
    });
    child.stdin.on('error', () => {
      // The exit handler reports the helper's death.
    });
    child.once('error', (error) => this.#onGone(helper, `could not be started (${error.message})`));
    child.once('exit', (code, signal) => this.#onGone(helper, signal !== null ? `was killed by ${signal}` : `exited with status ${code ?? '?'}`));
    const ready = this.#init(helper);
    helper.ready = ready;
    // The first caller sees an init failure; the helper is then stopped so the next call retries.
    ready.catch(() => {
      if (helper.alive) child.kill('SIGKILL');
    });
    return helper;
  }

  async #init(helper: Helper): Promise<InitResult> {
    const { contactFile } = this.#options;
    const stored = await readContact(contactFile);
    const raw = await this.#send(helper, { op: 'init', contact: stored ?? null }, 'starting the DRMAA session');
    const parsed = initResultSchema.safeParse(raw);
    if (!parsed.success) throw new DrmaaHelperError('the DRMAA helper gave a malformed answer to init');
    const result = parsed.data;
    this.#drmSystem = result.drmSystem;
    if (result.reattached) {
      this.#log.info({ helperPid: helper.child.pid, contact: result.contact, drm: result.drmSystem }, 'DRMAA session re-attached');
    } else {
      if (stored !== undefined) {
        this.#log.warn({ contact: stored, reason: result.reattachError }, 'the earlier DRMAA session could not be re-attached; its finished jobs cannot be reaped');
      }
      this.#log.info({ helperPid: helper.child.pid, contact: result.contact, drm: result.drmSystem }, 'DRMAA session started');
    }
    if (result.contact !== stored) await writeContact(contactFile, result.contact);
    return result;
  }

  #send(helper: Helper, call: HelperCall, what: string): Promise<unknown> {
    if (!helper.alive) return Promise.reject(new DrmaaHelperError(`the DRMAA helper is not running (${what})`));
    const id = this.#next++;
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#log.error({ helperPid: helper.child.pid, what }, 'the DRMAA helper did not answer in time: killing it');
        helper.child.kill('SIGKILL');
      }, CALL_TIMEOUT_MS);
      timer.unref();
      helper.pending.set(id, { what, resolve, reject, timer });
      helper.child.stdin.write(`${JSON.stringify({ id, ...call })}\n`);
    });
  }

  #onLine(helper: Helper, line: string): void {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      // The C library may print to stdout: that is not an answer.
      this.#log.warn({ helperPid: helper.child.pid }, `drmaa helper output: ${line.slice(0, 500)}`);
      return;
    }
    const parsed = responseSchema.safeParse(raw);
    if (!parsed.success) {
      this.#log.warn({ helperPid: helper.child.pid }, 'drmaa helper: malformed answer ignored');
      return;
    }
    const response = parsed.data;
    const pending = helper.pending.get(response.id);
    if (pending === undefined) return;
    helper.pending.delete(response.id);
    clearTimeout(pending.timer);
    if (response.ok) pending.resolve(response.result);
    else pending.reject(new DrmaaCallError(response.error.code, response.error.message));
  }

  #onGone(helper: Helper, how: string): void {
    if (!helper.alive) return;
    helper.alive = false;
    if (this.#helper === helper) this.#helper = undefined;
    const calls = [...helper.pending.values()];
    helper.pending.clear();
    if (!this.#closed || calls.length > 0) {
      this.#log.warn({ helperPid: helper.child.pid, inFlight: calls.map((c) => c.what) }, `the DRMAA helper process ${how}`);
    }
    for (const pending of calls) {
      clearTimeout(pending.timer);
      pending.reject(new DrmaaHelperError(`the DRMAA helper process ${how} while ${pending.what}; it is restarted for the next request`));
    }
  }
}

async function readContact(file: string): Promise<string | undefined> {
  try {
    const text = (await fs.readFile(file, 'utf8')).trim();
    // A contact is one printable line (Grid Engine: "session=host.pid.n").
    return /^[\x21-\x7e]{1,1000}$/.test(text) ? text : undefined;
  } catch {
    return undefined;
  }
}

async function writeContact(file: string, contact: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.tmp`;
  await fs.writeFile(temporary, `${contact}\n`, { mode: 0o600 });
  await fs.rename(temporary, file);
}
