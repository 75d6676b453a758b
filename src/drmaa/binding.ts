import koffi from 'koffi';
import {
  ATTR_BUFFER,
  CONTACT_BUFFER,
  CONTROL_ACTION,
  DRMAA_ERRNO,
  ERROR_STRING_BUFFER,
  JOBNAME_BUFFER,
  SIGNAL_BUFFER,
  TIMEOUT_NO_WAIT,
  errnoName,
  type ControlAction,
} from './constants.js';

/**
 * A typed binding of DRMAA 1.0 (libdrmaa.so) through koffi. Only the DRMAA helper process loads
 * it (`helper.ts`): a crash inside the C library must never take the server down.
 *
 * Every call is synchronous and short (job_ps ~1 ms, run_job ~2 ms). Long blocking calls
 * (`drmaa_wait` with a timeout, `drmaa_synchronize`) are deliberately not offered: they would sit
 * on a thread, and the helper polls instead (job_ps, then wait with NO_WAIT to reap).
 */

/** A job template, attribute by attribute (DRMAA names in the comments). */
export interface JobTemplateSpec {
  /** drmaa_remote_command */
  readonly remoteCommand: string;
  /** drmaa_v_argv */
  readonly args: readonly string[];
  /** drmaa_job_name */
  readonly jobName?: string | undefined;
  /** drmaa_output_path, in DRMAA syntax (`[host]:path`). */
  readonly outputPath?: string | undefined;
  /** drmaa_error_path, in DRMAA syntax (`[host]:path`). */
  readonly errorPath?: string | undefined;
  /** drmaa_wd */
  readonly workingDirectory?: string | undefined;
  /** drmaa_native_specification */
  readonly nativeSpecification?: string | undefined;
  /** drmaa_v_env: `NAME=value` entries. */
  readonly env?: readonly string[] | undefined;
  /** drmaa_join_files */
  readonly joinFiles?: boolean | undefined;
}

export interface WaitResult {
  readonly jobId: string;
  /** The job ran and exited by itself; `exitStatus` is then its status. */
  readonly exited: boolean;
  readonly exitStatus: number | null;
  readonly signaled: boolean;
  readonly termSignal: string | null;
  /** The job never ran, or was deleted before it ended (e.g. drmaa_control TERMINATE). */
  readonly aborted: boolean;
  readonly rusage: Readonly<Record<string, string>>;
}

/** A DRMAA call returned an error code; `diagnosis` is the library's own explanation. */
export class DrmaaError extends Error {
  readonly code: number;
  readonly codeName: string;
  readonly diagnosis: string;
  constructor(call: string, code: number, rawDiagnosis: string) {
    const diagnosis = rawDiagnosis.trim();
    super(`${call}: ${errnoName(code)}${diagnosis === '' ? '' : `: ${diagnosis}`}`);
    this.name = 'DrmaaError';
    this.code = code;
    this.codeName = errnoName(code);
    this.diagnosis = diagnosis;
  }
}

export interface DrmaaLibrary {
  /** `drmaa_get_DRM_system`, e.g. "SGE 8.1.9". */
  drmSystem(): string;
  /** `drmaa_init`; `contact` re-attaches to an earlier session (its finished jobs can be reaped). */
  init(contact: string | null): void;
  exit(): void;
  /** `drmaa_get_contact` of the active session. */
  contact(): string;
  runJob(template: JobTemplateSpec): string;
  /** `drmaa_job_ps`: the raw program state (see JOB_PS). */
  jobPs(jobId: string): number;
  /** `drmaa_wait(jobId, NO_WAIT)`: undefined while the job has not ended (EXIT_TIMEOUT). */
  reap(jobId: string): WaitResult | undefined;
  control(jobId: string, action: ControlAction): void;
}

// koffi functions are untyped; each one is given its C signature's shape here, once.
type ErrArgs = [err: Buffer, errLen: number];
type Fn<A extends unknown[]> = (...args: [...A, ...ErrArgs]) => number;
type Opaque = object;

interface RawDrmaa {
  get_DRM_system: Fn<[buf: Buffer, len: number]>;
  get_contact: Fn<[buf: Buffer, len: number]>;
  init: Fn<[contact: string | null]>;
  exit: Fn<[]>;
  allocate_job_template: Fn<[out: [Opaque | null]]>;
  delete_job_template: Fn<[jt: Opaque]>;
  set_attribute: Fn<[jt: Opaque, name: string, value: string]>;
  set_vector_attribute: Fn<[jt: Opaque, name: string, values: (string | null)[]]>;
  run_job: Fn<[id: Buffer, idLen: number, jt: Opaque]>;
  control: Fn<[id: string, action: number]>;
  job_ps: Fn<[id: string, out: [number]]>;
  wait: Fn<[id: string, idOut: Buffer, idOutLen: number, stat: [number], timeout: number, rusage: [Opaque | null]]>;
  wifexited: Fn<[out: [number], stat: number]>;
  wexitstatus: Fn<[out: [number], stat: number]>;
  wifsignaled: Fn<[out: [number], stat: number]>;
  wtermsig: Fn<[buf: Buffer, len: number, stat: number]>;
  wifaborted: Fn<[out: [number], stat: number]>;
  get_next_attr_value: (values: Opaque, buf: Buffer, len: number) => number;
  release_attr_values: (values: Opaque) => void;
}

const RTLD_NOW = 0x2;
const RTLD_NODELETE = 0x1000;

let typesDeclared = false;

function declareTypes(): void {
  if (typesDeclared) return;
  koffi.opaque('drmaa_job_template_t');
  koffi.opaque('drmaa_attr_values_t');
  typesDeclared = true;
}

/**
 * Load libdrmaa. The process must have been started with
 * `GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096` (Debian's libdrmaa links libjemalloc, whose
 * static TLS cannot be found in a running node otherwise; ld.so reads the tunable only at exec).
 */
export function loadDrmaa(libraryPath: string): DrmaaLibrary {
  // Pin the library (RTLD_NODELETE): koffi would dlclose it at exit while threads SGE started still
  // hold its thread-key destructors, which segfaults the exiting process.
  const libc = koffi.load('libc.so.6');
  const dlopen = libc.func('void *dlopen(const char *file, int flags)') as unknown as (file: string, flags: number) => unknown;
  const dlerror = libc.func('const char *dlerror()') as unknown as () => string | null;
  if (!dlopen(libraryPath, RTLD_NOW | RTLD_NODELETE)) {
    const why = dlerror() ?? 'unknown reason';
    const hint = why.includes('static TLS') ? ' (start the process with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096)' : '';
    throw new Error(`cannot load the DRMAA library ${libraryPath}: ${why}${hint}`);
  }
  const lib = koffi.load(libraryPath);
  declareTypes();
  const f = <T>(decl: string): T => lib.func(decl) as unknown as T;
  const raw: RawDrmaa = {
    get_DRM_system: f('int drmaa_get_DRM_system(char *buf, size_t len, char *err, size_t errlen)'),
    get_contact: f('int drmaa_get_contact(char *buf, size_t len, char *err, size_t errlen)'),
    init: f('int drmaa_init(const char *contact, char *err, size_t errlen)'),
    exit: f('int drmaa_exit(char *err, size_t errlen)'),
    allocate_job_template: f('int drmaa_allocate_job_template(_Out_ drmaa_job_template_t **jt, char *err, size_t errlen)'),
    delete_job_template: f('int drmaa_delete_job_template(drmaa_job_template_t *jt, char *err, size_t errlen)'),
    set_attribute: f('int drmaa_set_attribute(drmaa_job_template_t *jt, const char *name, const char *value, char *err, size_t errlen)'),
    set_vector_attribute: f(
      'int drmaa_set_vector_attribute(drmaa_job_template_t *jt, const char *name, const char **value, char *err, size_t errlen)',
    ),
    run_job: f('int drmaa_run_job(char *job_id, size_t job_id_len, const drmaa_job_template_t *jt, char *err, size_t errlen)'),
    control: f('int drmaa_control(const char *jobid, int action, char *err, size_t errlen)'),
    job_ps: f('int drmaa_job_ps(const char *job_id, _Out_ int *remote_ps, char *err, size_t errlen)'),
    wait: f(
      'int drmaa_wait(const char *job_id, char *job_id_out, size_t job_id_out_len, _Out_ int *stat, long timeout, _Out_ drmaa_attr_values_t **rusage, char *err, size_t errlen)',
    ),
    wifexited: f('int drmaa_wifexited(_Out_ int *exited, int stat, char *err, size_t errlen)'),
    wexitstatus: f('int drmaa_wexitstatus(_Out_ int *exit_status, int stat, char *err, size_t errlen)'),
    wifsignaled: f('int drmaa_wifsignaled(_Out_ int *signaled, int stat, char *err, size_t errlen)'),
    wtermsig: f('int drmaa_wtermsig(char *signal, size_t signal_len, int stat, char *err, size_t errlen)'),
    wifaborted: f('int drmaa_wifaborted(_Out_ int *aborted, int stat, char *err, size_t errlen)'),
    get_next_attr_value: f('int drmaa_get_next_attr_value(drmaa_attr_values_t *values, char *value, size_t value_len)'),
    release_attr_values: f('void drmaa_release_attr_values(drmaa_attr_values_t *values)'),
  };
  return new Binding(raw);
}

/** The text up to the first NUL of a C out-buffer. */
function cstr(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.toString('utf8', 0, end < 0 ? buf.length : end);
}

/** DRMAA strings are C strings: a NUL would silently cut them. */
function cSafe(what: string, value: string): string {
  if (value.includes('\0')) throw new DrmaaError(what, DRMAA_ERRNO.INVALID_ARGUMENT, 'value contains a NUL character');
  return value;
}

class Binding implements DrmaaLibrary {
  readonly #raw: RawDrmaa;

  constructor(raw: RawDrmaa) {
    this.#raw = raw;
  }

  /** Call a DRMAA function whose last two parameters are the error buffer; throw on failure. */
  #call<A extends unknown[]>(name: string, fn: Fn<A>, ...args: A): void {
    const err = Buffer.alloc(ERROR_STRING_BUFFER);
    const rc = fn(...args, err, ERROR_STRING_BUFFER);
    if (rc !== DRMAA_ERRNO.SUCCESS) throw new DrmaaError(`drmaa_${name}`, rc, cstr(err));
  }

  drmSystem(): string {
    const buf = Buffer.alloc(ATTR_BUFFER);
    this.#call('get_DRM_system', this.#raw.get_DRM_system, buf, ATTR_BUFFER);
    return cstr(buf);
  }

  init(contact: string | null): void {
    this.#call('init', this.#raw.init, contact === null ? null : cSafe('drmaa_init', contact));
  }

  exit(): void {
    this.#call('exit', this.#raw.exit);
  }

  contact(): string {
    const buf = Buffer.alloc(CONTACT_BUFFER);
    this.#call('get_contact', this.#raw.get_contact, buf, CONTACT_BUFFER);
    return cstr(buf);
  }

  runJob(template: JobTemplateSpec): string {
    const out: [Opaque | null] = [null];
    this.#call('allocate_job_template', this.#raw.allocate_job_template, out);
    const jt = out[0];
    if (jt === null) throw new DrmaaError('drmaa_allocate_job_template', DRMAA_ERRNO.NO_MEMORY, 'no template returned');
    try {
      const set = (name: string, value: string | undefined): void => {
        if (value === undefined) return;
        this.#call(`set_attribute(${name})`, this.#raw.set_attribute, jt, name, cSafe(name, value));
      };
      const setVector = (name: string, values: readonly string[] | undefined): void => {
        if (values === undefined) return;
        // A C vector: the NULL at the end is the only length the library gets.
        const vector: (string | null)[] = values.map((v) => cSafe(name, v));
        vector.push(null);
        this.#call(`set_vector_attribute(${name})`, this.#raw.set_vector_attribute, jt, name, vector);
      };
      set('drmaa_remote_command', template.remoteCommand);
      setVector('drmaa_v_argv', template.args);
      set('drmaa_job_name', template.jobName);
      set('drmaa_output_path', template.outputPath);
      set('drmaa_error_path', template.errorPath);
      set('drmaa_wd', template.workingDirectory);
      set('drmaa_native_specification', template.nativeSpecification);
      setVector('drmaa_v_env', template.env);
      if (template.joinFiles !== undefined) set('drmaa_join_files', template.joinFiles ? 'y' : 'n');
      const id = Buffer.alloc(JOBNAME_BUFFER);
      this.#call('run_job', this.#raw.run_job, id, JOBNAME_BUFFER, jt);
      return cstr(id);
    } finally {
      const err = Buffer.alloc(ERROR_STRING_BUFFER);
      this.#raw.delete_job_template(jt, err, ERROR_STRING_BUFFER);
    }
  }

  jobPs(jobId: string): number {
    const out: [number] = [0];
    this.#call('job_ps', this.#raw.job_ps, cSafe('job id', jobId), out);
    return out[0];
  }

  reap(jobId: string): WaitResult | undefined {
    const idOut = Buffer.alloc(JOBNAME_BUFFER);
    const stat: [number] = [0];
    const rusage: [Opaque | null] = [null];
    const err = Buffer.alloc(ERROR_STRING_BUFFER);
    const rc = this.#raw.wait(cSafe('job id', jobId), idOut, JOBNAME_BUFFER, stat, TIMEOUT_NO_WAIT, rusage, err, ERROR_STRING_BUFFER);
    if (rc === DRMAA_ERRNO.EXIT_TIMEOUT) return undefined;
    // NO_RUSAGE: the job was reaped and its status is valid, only its resource usage is missing
    // (Grid Engine says so for jobs deleted before they ran).
    if (rc !== DRMAA_ERRNO.SUCCESS && rc !== DRMAA_ERRNO.NO_RUSAGE) throw new DrmaaError('drmaa_wait', rc, cstr(err));
    const usage = this.#readRusage(rc === DRMAA_ERRNO.SUCCESS ? rusage[0] : null);
    const flag = (name: string, fn: Fn<[[number], number]>): boolean => {
      const out: [number] = [0];
      this.#call(name, fn, out, stat[0]);
      return out[0] !== 0;
    };
    const aborted = flag('wifaborted', this.#raw.wifaborted);
    const exited = flag('wifexited', this.#raw.wifexited);
    let exitStatus: number | null = null;
    if (exited) {
      const out: [number] = [0];
      this.#call('wexitstatus', this.#raw.wexitstatus, out, stat[0]);
      exitStatus = out[0];
    }
    const signaled = flag('wifsignaled', this.#raw.wifsignaled);
    let termSignal: string | null = null;
    if (signaled) {
      const buf = Buffer.alloc(SIGNAL_BUFFER);
      this.#call('wtermsig', this.#raw.wtermsig, buf, SIGNAL_BUFFER, stat[0]);
      termSignal = cstr(buf);
    }
    return { jobId: cstr(idOut), exited, exitStatus, signaled, termSignal, aborted, rusage: usage };
  }

  #readRusage(handle: Opaque | null): Record<string, string> {
    const usage: Record<string, string> = {};
    if (handle === null) return usage;
    const buf = Buffer.alloc(ATTR_BUFFER);
    while (this.#raw.get_next_attr_value(handle, buf, ATTR_BUFFER) === DRMAA_ERRNO.SUCCESS) {
      const entry = cstr(buf);
      const eq = entry.indexOf('=');
      if (eq > 0) usage[entry.slice(0, eq)] = entry.slice(eq + 1);
      buf.fill(0);
    }
    this.#raw.release_attr_values(handle);
    return usage;
  }

  control(jobId: string, action: ControlAction): void {
    this.#call('control', this.#raw.control, cSafe('job id', jobId), CONTROL_ACTION[action]);
  }
}
