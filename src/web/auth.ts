import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { RequestHandler } from 'express';
import { Unauthorized } from '../errors.js';

/**
 * `private_token` check (PROTOCOL §1.5): the query parameter Galaxy sends, or an
 * `Authorization: Bearer` header. Compared through SHA-256 digests so that neither the length nor
 * the content of the token leaks through timing. `query` is the request's parsed query string.
 */
export function tokenMatcher(token: string | undefined): (req: IncomingMessage, query: ReadonlyMap<string, string>) => boolean {
  if (token === undefined) return () => true;
  const expected = createHash('sha256').update(token).digest();
  const matches = (candidate: string): boolean => timingSafeEqual(createHash('sha256').update(candidate).digest(), expected);
  return (req, query) => {
    const fromQuery = query.get('private_token');
    if (fromQuery !== undefined && matches(fromQuery)) return true;
    const header = req.headers.authorization;
    if (header === undefined) return false;
    const bearer = /^Bearer\s+(.+)$/i.exec(header);
    return bearer !== null && matches(bearer[1]!);
  };
}

/** Express middleware form of `tokenMatcher`. */
export function requireToken(token: string | undefined, queryOf: (req: Parameters<RequestHandler>[0]) => ReadonlyMap<string, string>): RequestHandler {
  const ok = tokenMatcher(token);
  return (req, _res, next) => next(ok(req, queryOf(req)) ? undefined : new Unauthorized());
}
