import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import helmet from 'helmet';
import type { JobService } from '../jobs/service.js';
import { DEFAULT_MANAGER_NAME } from '../config/schema.js';
import { isValidJobId } from '../jobs/ids.js';
import { loggableUrl, type Logger } from '../log.js';
import { tokenMatcher } from './auth.js';
import { errorAnswer } from './errors.js';
import type { Services } from './routes.js';

const STATUS_URL = /^(?:\/managers\/([^/?#]+))?\/jobs\/([^/?#]+)\/status(?:\?([^#]*))?$/;

/** The headers helmet adds, computed once by running helmet against a recording stub. */
function helmetHeaders(): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = {};
  const res = {
    setHeader(name: string, value: string | number | readonly string[]) {
      headers[name.toLowerCase()] = value as string;
    },
    removeHeader(name: string) {
      delete headers[name.toLowerCase()];
    },
    getHeader(name: string) {
      return headers[name.toLowerCase()];
    },
  };
  helmet()({ headers: {} } as never, res as never, () => undefined);
  return headers;
}

/**
 * Status is what Galaxy asks for most, every few seconds for every job. It is answered here,
 * before express, when everything about the request is in order (route, manager, id, token, no
 * body); any other request — including every error case — goes on to express, which answers it
 * the usual way. The answer is byte-for-byte what the express route would send.
 */
export function fastStatus(
  services: Services,
  token: string | undefined,
  log: Logger,
  logRequests: boolean,
): (req: IncomingMessage, res: ServerResponse) => boolean {
  const authorized = tokenMatcher(token);
  const base = { ...helmetHeaders(), 'content-type': 'application/json; charset=utf-8' };
  return (req, res) => {
    const url = req.url;
    if (url === undefined || !url.includes('/status')) return false;
    const match = STATUS_URL.exec(url);
    if (match === null || req.method === 'HEAD') return false;
    if (req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0') return false;
    let manager: string;
    let jobId: string;
    let query: Map<string, string>;
    try {
      manager = match[1] === undefined ? DEFAULT_MANAGER_NAME : decodeURIComponent(match[1]);
      jobId = decodeURIComponent(match[2]!);
      query = new Map(new URLSearchParams(match[3] ?? ''));
    } catch {
      return false;
    }
    const service: JobService | undefined = services.get(manager);
    // A request with the right token is never refused by the rate limits (web/rate-limit.ts).
    if (service === undefined || !isValidJobId(jobId) || !authorized(req, query)) return false;
    const start = logRequests ? process.hrtime.bigint() : 0n;
    const answer = (status: number, body: string): void => {
      res.writeHead(status, { ...base, 'content-length': Buffer.byteLength(body) });
      res.end(body);
      if (logRequests) {
        log.info({ method: req.method, url: loggableUrl(url), status, ms: Number(process.hrtime.bigint() - start) / 1e6 }, 'request');
      }
    };
    service.statusOverHttp(jobId).then(
      (body) => answer(200, body),
      (error: unknown) => {
        // As the express route would answer it (web/errors.ts).
        const failed = errorAnswer(error, log, { method: req.method, route: url.split('?', 1).join('') });
        if (res.headersSent) res.destroy();
        else answer(failed.status, failed.body);
      },
    );
    return true;
  };
}
