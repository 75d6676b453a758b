import type { ErrorRequestHandler, RequestHandler } from 'express';
import { BadRequest, MagnetarError, RouteNotFound, UploadTooLarge } from '../errors.js';
import { truncatedForLog, type Logger } from '../log.js';

/** Unknown routes (and wrong methods, as upstream) answer 404 with a JSON body. */
export const notFoundHandler: RequestHandler = (_req, _res, next) => {
  next(new RouteNotFound());
};

export interface ErrorAnswer {
  readonly status: number;
  /** `{ error, message }` as JSON: never a stack, never a server path outside a job directory. */
  readonly body: string;
}

const INTERNAL: ErrorAnswer = {
  status: 500,
  body: JSON.stringify({ error: 'MAG_ERR_INTERNAL', message: 'internal server error' }),
};

/**
 * The one place errors become HTTP answers (the express routes and the fast status path both use
 * it). A catalog error answers with its code and status; a 4xx raised by the HTTP layer itself (a
 * client that hung up mid-body, an undecodable parameter) by the catalog's code for it; anything
 * else, and any catalog code whose status is 500 (those are a job's failure reason, not an
 * answer), as MAG_ERR_INTERNAL, logged with the error itself.
 */
export function errorAnswer(error: unknown, log: Logger, request: { method: string | undefined; route: string }): ErrorAnswer {
  const known = error instanceof MagnetarError ? error : isHttpError(error) ? fromHttpLayer(error) : undefined;
  if (known === undefined || (known.status === 500 && known.code !== 'MAG_ERR_INTERNAL')) {
    log.error({ err: error, method: request.method, route: truncatedForLog(request.route) }, 'unhandled error');
    return INTERNAL;
  }
  return { status: known.status, body: JSON.stringify({ error: known.code, message: known.message }) };
}

export function errorHandler(log: Logger): ErrorRequestHandler {
  return (error: unknown, req, res, _next) => {
    const answer = errorAnswer(error, log, { method: req.method, route: req.path });
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.status(answer.status).type('application/json').send(answer.body);
  };
}

interface HttpError {
  readonly status: number;
  readonly message: string;
  readonly expose?: boolean;
}

function isHttpError(error: unknown): error is HttpError {
  if (typeof error !== 'object' || error === null) return false;
  const status = (error as { status?: unknown }).status;
  return typeof status === 'number' && status >= 400 && status < 500;
}

function fromHttpLayer(error: HttpError): MagnetarError {
  const message = error.expose === true ? error.message : undefined;
  return error.status === 413 ? new UploadTooLarge(message ?? 'request entity too large') : new BadRequest(message ?? 'bad request');
}
