import type { ErrorRequestHandler, RequestHandler } from 'express';
import { MagnetarError, RouteNotFound } from '../errors.js';
import type { Logger } from '../log.js';

/** Unknown routes (and wrong methods, as upstream) answer 404 with a JSON body. */
export const notFoundHandler: RequestHandler = (_req, _res, next) => {
  next(new RouteNotFound());
};

/** The one place errors become HTTP responses: status + `{ error, message }`, never a stack. */
export function errorHandler(log: Logger): ErrorRequestHandler {
  return (error: unknown, req, res, _next) => {
    let status = 500;
    let body = { error: 'MAG_ERR_INTERNAL', message: 'internal server error' };
    if (error instanceof MagnetarError) {
      status = error.status;
      body = { error: error.code, message: error.message };
    } else if (isHttpError(error)) {
      // Errors raised by the HTTP layer itself (e.g. a client that hung up mid-body).
      status = error.status;
      body = { error: 'MAG_ERR_BAD_REQUEST', message: error.expose === true ? error.message : 'bad request' };
    } else {
      log.error({ err: error, method: req.method, route: req.path }, 'unhandled error');
    }
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.status(status).type('application/json').send(JSON.stringify(body));
  };
}

function isHttpError(error: unknown): error is { status: number; message: string; expose?: boolean } {
  if (typeof error !== 'object' || error === null) return false;
  const status = (error as { status?: unknown }).status;
  return typeof status === 'number' && status >= 400 && status < 500;
}
