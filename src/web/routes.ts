import { Router, type Request, type RequestHandler, type Response } from 'express';
import { pipeline } from 'node:stream/promises';
import { checkCacheToken, type FileCache } from '../staging/cache.js';
import { JobNotFound, ManagerNotFound, NotConfigured } from '../errors.js';
import { DEFAULT_MANAGER_NAME } from '../config/schema.js';
import type { JobService } from '../jobs/service.js';
import { PULSAR_COMPAT_VERSION } from '../version.js';
import { optional, parseSubmit, required } from './params.js';
import { transferCounts } from '../staging/transfer-pool.js';

export interface Services {
  get(name: string): JobService | undefined;
}

function sendJson(res: Response, body: string): void {
  res.status(200).type('application/json').send(body);
}

function sendOk(res: Response): void {
  res.status(200).type('text/plain').send('OK');
}

/**
 * The route table of PROTOCOL §2 (routes 1–9, and the file cache's 10–12 when `cache` is given);
 * mounted at `/` and at `/managers/:manager`. The cache is the server's, shared by every manager.
 * `health` adds fields to `/healthz` (message-queue mode: the broker connection).
 */
export function jobRoutes(services: Services, auth: RequestHandler, clientOf: (req: Request) => string, cache?: FileCache, health?: () => object): Router {
  const router = Router({ mergeParams: true });

  const service = (req: Request): JobService => {
    const name = (req.params as { manager?: string }).manager ?? DEFAULT_MANAGER_NAME;
    const found = services.get(name);
    if (found === undefined) throw new ManagerNotFound(name);
    return found;
  };
  const jobId = (req: Request): string => (req.params as { job_id: string }).job_id;
  // After auth: a job a public server keeps off HTTP (set up through a message queue) is answered
  // as a job nobody set up, so its id says nothing (cancel and clean do nothing; the status route
  // asks the service for `statusOverHttp`).
  const visible: RequestHandler = (req, res, next) => {
    const svc = service(req);
    const id = jobId(req);
    if (!svc.hiddenFromHttp(id)) {
      next();
      return;
    }
    if (req.method === 'PUT' || req.method === 'DELETE') {
      sendOk(res);
      return;
    }
    next(new JobNotFound(`job ${id} has not been set up`));
  };

  router.post('/jobs', auth, async (req, res) => {
    const svc = service(req);
    const config = await svc.setup(required(req, 'job_id'), optional(req, 'tool_id'), optional(req, 'tool_version'), clientOf(req));
    sendJson(res, JSON.stringify(config));
  });

  router.post('/jobs/:job_id/files', auth, visible, async (req, res) => {
    const svc = service(req);
    const token = optional(req, 'cache_token');
    if (token === undefined) {
      sendJson(res, JSON.stringify(await svc.upload(jobId(req), required(req, 'name'), required(req, 'type'), req)));
      return;
    }
    // A cached file: the body is ignored and the entry's bytes go through the same upload path
    // (limits, tool-file hash check, staging under the job's lock) as a file sent in the body.
    if (cache === undefined) throw new NotConfigured('the file cache is not configured on this server (cache_token given; set file_cache_dir)');
    const checked = checkCacheToken(token);
    const name = required(req, 'name');
    const type = required(req, 'type');
    const cached = await cache.open(clientOf(req), checked);
    try {
      sendJson(res, JSON.stringify(await svc.upload(jobId(req), name, type, cached.stream)));
    } finally {
      cached.stream.destroy();
    }
  });

  router.get('/jobs/:job_id/files/path', auth, visible, async (req, res) => {
    const svc = service(req);
    sendJson(res, JSON.stringify(await svc.pathFor(jobId(req), required(req, 'name'), required(req, 'type'))));
  });

  router.get('/jobs/:job_id/files', auth, visible, async (req, res) => {
    const svc = service(req);
    const file = await svc.download(jobId(req), required(req, 'name'), optional(req, 'type'));
    res.status(200);
    res.setHeader('Content-Type', 'application/octet-stream');
    res.setHeader('Content-Length', String(file.size));
    if (file.size === 0) {
      await file.handle.close();
      res.end();
      return;
    }
    // The stream owns and closes the handle; exactly the size announced is sent.
    await pipeline(file.handle.createReadStream({ highWaterMark: 1 << 20, start: 0, end: file.size - 1 }), res);
  });

  router.post('/jobs/:job_id/submit', auth, visible, async (req, res) => {
    const svc = service(req);
    const request = parseSubmit(req, svc.submitLimits);
    await svc.submit(jobId(req), request, clientOf(req));
    sendOk(res);
  });

  router.all('/jobs/:job_id/status', auth, async (req, res) => {
    sendJson(res, await service(req).statusOverHttp(jobId(req)));
  });

  router.put('/jobs/:job_id/cancel', auth, visible, async (req, res) => {
    await service(req).cancel(jobId(req));
    sendOk(res);
  });

  router.delete('/jobs/:job_id', auth, visible, async (req, res) => {
    await service(req).clean(jobId(req));
    sendOk(res);
  });

  router.get('/healthz', auth, (req, res) => {
    service(req);
    sendJson(res, JSON.stringify({ version: PULSAR_COMPAT_VERSION, staging_transfers: transferCounts(), ...health?.() }));
  });

  if (cache !== undefined) {
    // PROTOCOL §9.1, keyed by the authenticated client's address (never a raw X-Forwarded-For).
    router.put('/cache', auth, (req, res) => {
      service(req);
      sendJson(res, JSON.stringify(cache.required(clientOf(req), required(req, 'path'))));
    });
    router.post('/cache', auth, async (req, res) => {
      service(req);
      await cache.insert(clientOf(req), required(req, 'path'), req);
      sendJson(res, 'null');
    });
    router.get('/cache/status', auth, (req, res) => {
      service(req);
      sendJson(res, JSON.stringify(cache.status(clientOf(req), required(req, 'path'))));
    });
  }

  const notConfigured = (what: string): RequestHandler => (_req, _res, next) => {
    next(new NotConfigured(`the ${what} is not configured on this server`));
  };
  if (cache === undefined) router.all(['/cache', '/cache/status'], auth, notConfigured('file cache (file_cache_dir)'));
  router.all(['/objects/:object_id', '/objects/:object_id/:action', '/object_store_usage_percent'], auth, notConfigured('object store'));

  return router;
}
