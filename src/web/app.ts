import express, { type Express } from 'express';
import helmet from 'helmet';
import type { FileCache } from '../staging/cache.js';
import type { AppSection } from '../config/types.js';
import { loggableUrl, type Logger } from '../log.js';
import { requireToken, tokenMatcher } from './auth.js';
import { errorHandler, notFoundHandler } from './errors.js';
import { clientKeyOf, type RateLimits } from './rate-limit.js';
import { jobRoutes, type Services } from './routes.js';
import { queryOf } from './params.js';

/** The express application: helmet, request log, rate limits, the routes twice (plain and per manager), errors. */
export function createApp(app: AppSection, services: Services, log: Logger, limits?: RateLimits, cache?: FileCache, health?: () => object): Express {
  const web = express();
  web.disable('x-powered-by');
  // Rate limits key on the client address: it must be the socket's, never a header's.
  web.set('trust proxy', false);
  web.set('etag', false);
  // Parameters are read by `web/params.ts` from the raw query string (last value wins).
  web.set('query parser', false);
  web.use(helmet());
  if (app.logRequests) {
    const authorized = tokenMatcher(app.privateToken);
    web.use((req, res, next) => {
      const start = process.hrtime.bigint();
      res.on('finish', () => {
        // The query of a request without the right token is not logged at all (it is the
        // client's to fill, up to the 16 MiB header limit, and may hold a mistyped token).
        const authenticated = res.statusCode !== 401 && authorized(req, queryOf(req));
        log.info(
          { method: req.method, url: loggableUrl(req.originalUrl, authenticated), status: res.statusCode, ms: Number(process.hrtime.bigint() - start) / 1e6 },
          'request',
        );
      });
      next();
    });
  }
  if (limits?.failedAuth !== undefined) web.use(limits.failedAuth);
  if (limits?.setup !== undefined) web.post(['/jobs', '/managers/:manager/jobs'], limits.setup);
  const routes = jobRoutes(services, requireToken(app.privateToken, queryOf), clientKeyOf(app.trustedProxies), cache, health);
  web.use('/managers/:manager', routes);
  web.use('/', routes);
  web.use(notFoundHandler);
  web.use(errorHandler(log));
  return web;
}
