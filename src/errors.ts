/**
 * The one error catalog. Every error a client can see has a stable code and an HTTP status;
 * `web/errors.ts` maps them to responses once. Messages never carry server paths outside a job
 * directory or stack traces.
 */
export class MagnetarError extends Error {
  readonly code: string;
  readonly status: number;
  constructor(code: string, status: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
  }
}

export class BadRequest extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_BAD_REQUEST', 400, message, options);
  }
}

export class Unauthorized extends MagnetarError {
  constructor(message = 'missing or invalid private_token') {
    super('MAG_ERR_UNAUTHORIZED', 401, message);
  }
}

export class Forbidden extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_FORBIDDEN', 403, message, options);
  }
}

export class NotFound extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_NOT_FOUND', 404, message, options);
  }
}

export class Conflict extends MagnetarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_CONFLICT', 409, message, options);
  }
}

export class PayloadTooLarge extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_TOO_LARGE', 413, message);
  }
}

/** A configuration file is invalid: the server must not start. */
export class ConfigError extends MagnetarError {
  readonly file: string;
  readonly key: string | undefined;
  constructor(file: string, key: string | undefined, message: string, options?: { cause?: unknown }) {
    super('MAG_ERR_CONFIG', 500, `${file}${key === undefined ? '' : `: ${key}`}: ${message}`, options);
    this.file = file;
    this.key = key;
  }
}

/** A client sent more requests than its limit allows (failed authentications, setups). */
export class TooManyRequests extends MagnetarError {
  constructor(message: string) {
    super('MAG_ERR_RATE_LIMITED', 429, message);
  }
}
