/**
 * The one error catalog, keyed by failure (fastify's `lib/errors.js`, undici's `UND_ERR_*`).
 * Every failure has a stable `MAG_ERR_*` code and an HTTP status, stated once in `CATALOG`;
 * `web/errors.ts` turns them into responses. Messages never carry server paths outside a job
 * directory or stack traces. Codes whose status is 500 reach a client only as a job's failure
 * reason (in its status `stderr`), never as a response body — except MAG_ERR_INTERNAL.
 */
const CATALOG = {
  MAG_ERR_BAD_REQUEST: 400, // a parameter is missing, malformed or out of range
  MAG_ERR_BAD_FILE_NAME: 400, // a file name is empty, too long or has a NUL/backslash
  MAG_ERR_UNAUTHORIZED: 401, // missing or wrong private_token
  MAG_ERR_PATH_DENIED: 403, // a name escapes its directory, is reserved, or meets a symlink
  MAG_ERR_TOOL_DENIED: 403, // the toolbox or a validator refuses the job (see JobRefused)
  MAG_ERR_ROUTE_NOT_FOUND: 404,
  MAG_ERR_MANAGER_NOT_FOUND: 404,
  MAG_ERR_JOB_NOT_FOUND: 404,
  MAG_ERR_FILE_NOT_FOUND: 404,
  MAG_ERR_NOT_CONFIGURED: 404, // file cache, object store: features this server does not offer
  MAG_ERR_JOB_STATE: 409, // the job's state does not allow this request (e.g. setup of a running job)
  MAG_ERR_UPLOAD_CLOSED: 409, // an upload lost the race against the job's submit or clean
  MAG_ERR_UPLOAD_TOO_LARGE: 413,
  MAG_ERR_RATE_LIMITED: 429,
  MAG_ERR_INTERNAL: 500,
  MAG_ERR_CONFIG: 500, // a configuration file is invalid: the server must not start
  MAG_ERR_STORE_UNAVAILABLE: 503, // job records cannot be written: no new job is accepted
  MAG_ERR_STOPPING: 503, // the server is shutting down: the request changed nothing
  MAG_ERR_LAUNCH: 500, // the job script or its directories could not be prepared
  MAG_ERR_BACKEND_SUBMIT: 500, // the backend (launcher, scheduler) refused or failed to start the job
  MAG_ERR_BACKEND_UNREACHABLE: 500, // the scheduler or helper process cannot be asked
  MAG_ERR_BACKEND_COMMAND: 500, // a scheduler command failed or answered what we cannot read
  MAG_ERR_LIMIT: 413, // a request exceeds a configured bound (parameter size, list length); the message names the option
  MAG_ERR_TOO_MANY_JOBS: 503, // the manager holds max_live_jobs unfinished jobs: no new job until some finish or are cleaned
  MAG_ERR_HOST_DENIED: 403, // the Host is not one this server answers to, or a browser Origin is not allowed
} as const;

export type ErrorCode = keyof typeof CATALOG;

export class MagnetarError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.status = CATALOG[code];
  }
}

export class BadRequest extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_BAD_REQUEST', message, options);
  }
}

export class BadFileName extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_BAD_FILE_NAME', message);
  }
}

export class Unauthorized extends MagnetarError {
  constructor(message = 'missing or invalid private_token') {
    super('MAG_ERR_UNAUTHORIZED', message);
  }
}

/** A client name would reach outside the directory it names, or something reserved to the server. */
export class PathDenied extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_PATH_DENIED', message, options);
  }
}

/**
 * "Refuse this job": the toolbox, a validator or the server's policy will not run what the client
 * asked for. Meaning, stated once: when raised while a job is being set up or submitted, the job
 * ends `failed` with this message in its status `stderr`, and the request answers 403. Raised
 * for an upload, the upload is refused (403) and the job stays as it was.
 */
export class JobRefused extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_TOOL_DENIED', message, options);
  }
}

export class RouteNotFound extends MagnetarError {
  constructor(message = 'no such route') {
    super('MAG_ERR_ROUTE_NOT_FOUND', message);
  }
}

export class ManagerNotFound extends MagnetarError {
  constructor(name: string) {
    super('MAG_ERR_MANAGER_NOT_FOUND', `no manager named "${name}"`);
  }
}

export class JobNotFound extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_JOB_NOT_FOUND', message);
  }
}

export class FileNotFound extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_FILE_NOT_FOUND', message, options);
  }
}

export class NotConfigured extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_NOT_CONFIGURED', message);
  }
}

/** The job's state does not allow the request (setup of a running job, …). */
export class JobStateConflict extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_JOB_STATE', message);
  }
}

/** An upload arrived, or finished streaming, after the job's submit began (or after a clean). */
export class UploadClosed extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_UPLOAD_CLOSED', message);
  }
}

export class UploadTooLarge extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_UPLOAD_TOO_LARGE', message);
  }
}

/** A client sent more requests than its limit allows (failed authentications, setups). */
export class RateLimited extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_RATE_LIMITED', message);
  }
}

/** A configuration file is invalid: the server must not start. */
export class ConfigError extends MagnetarError {
  readonly file: string;
  readonly key: string | undefined;
  constructor(file: string, key: string | undefined, message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_CONFIG', `${file}${key === undefined ? '' : `: ${key}`}: ${message}`, options);
    this.file = file;
    this.key = key;
  }
}

/** The job store could not write a record: the job it concerns fails; new jobs are refused. */
export class StoreUnavailable extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_STORE_UNAVAILABLE', message, options);
  }
}

/** The server is shutting down: a request that would change a job is refused (and changes nothing). */
export class ServerStopping extends MagnetarError {
  constructor() {
    super('MAG_ERR_STOPPING', 'the server is stopping; try again when it is back');
  }
}

/** The job script or the job's directories could not be prepared. */
export class LaunchError extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_LAUNCH', message, options);
  }
}

/**
 * A backend could not do what was asked (start, ask about or stop a job). It becomes the job's
 * failure reason; `code` says which kind of trouble it is.
 */
export class BackendError extends MagnetarError {
  constructor(
    code: 'MAG_ERR_BACKEND_SUBMIT' | 'MAG_ERR_BACKEND_UNREACHABLE' | 'MAG_ERR_BACKEND_COMMAND',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

/** A request exceeds a configured bound; the message names the option (e.g. max_submit_param_size). */
export class LimitExceeded extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_LIMIT', message);
  }
}

/** The manager holds `max_live_jobs` unfinished jobs: a new setup is refused (and changes nothing). */
export class TooManyJobs extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_TOO_MANY_JOBS', message);
  }
}

/** The message of anything thrown, for a job's failure reason or a log line. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A request for a Host name this server does not answer to, or from a browser Origin not allowed (DNS rebinding, cross-site requests). */
export class HostDenied extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_HOST_DENIED', message);
  }
}
