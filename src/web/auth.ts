import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import { Unauthorized } from '../errors.js';
import { queryOf } from './params.js';

/**
 * `private_token` check (PROTOCOL §1.5): the query parameter Galaxy sends, or an
 * `Authorization: Bearer` header. Compared through SHA-256 digests so that neither the length nor
 * the content of the token leaks through timing.
 */
export function requireToken(token: string | undefined): RequestHandler {
  if (token === undefined) return (_req, _res, next) => next();
  const expected = createHash('sha256').update(token).digest();
  const matches = (candidate: string): boolean =>
    timingSafeEqual(createHash('sha256').update(candidate).digest(), expected);
  return (req, _res, next) => {
    const fromQuery = queryOf(req).get('private_token');
    const header = req.headers.authorization;
    const fromHeader = header !== undefined && /^Bearer\s+/i.test(header) ? header.replace(/^Bearer\s+/i, '') : undefined;
    const ok = (fromQuery !== undefined && matches(fromQuery)) || (fromHeader !== undefined && matches(fromHeader));
    next(ok ? undefined : new Unauthorized());
  };
}
