import { Router, type Request, type RequestHandler, type Response } from 'express';
import { pipeline } from 'node:stream/promises';
import { ManagerNotFound, NotConfigured } from '../errors.js';
import { DEFAULT_MANAGER_NAME } from '../config/schema.js';
import type { JobService } from '../jobs/service.js';
import { PULSAR_COMPAT_VERSION } from '../version.js';
import { optional, parseSubmit, required } from './params.js';

export interface Services {
  get(name: string): JobService | undefined;
}

function sendJson(res: Response, body: string): void {
  res.status(200).type('application/json').send(body);
}

function sendOk(res: Response): void {
  res.status(200).type('text/plain').send('OK');
}

/** The route table of PROTOCOL §2 (routes 1–9); mounted at `/` and at `/managers/:manager`. */
export function jobRoutes(services: Services, auth: RequestHandler, clientOf: (req: Request) => string): Router {
  const router = Router({ mergeParams: true });

  const service = (req: Request): JobService => {
    const name = (req.params as { manager?: string }).manager ?? DEFAULT_MANAGER_NAME;
    const found = services.get(name);
    if (found === undefined) throw new ManagerNotFound(name);
    return found;
  };
  const jobId = (req: Request): string => (req.params as { job_id: string }).job_id;

  router.post('/jobs', auth, async (req, res) => {
    const svc = service(req);
    const config = await svc.setup(required(req, 'job_id'), optional(req, 'tool_id'), optional(req, 'tool_version'), clientOf(req));
    sendJson(res, JSON.stringify(config));
  });

  router.post('/jobs/:job_id/files', auth, async (req, res) => {
    const svc = service(req);
    const result = await svc.upload(jobId(req), required(req, 'name'), required(req, 'type'), req, optional(req, 'cache_token'));
    sendJson(res, JSON.stringify(result));
  });

  router.get('/jobs/:job_id/files/path', auth, async (req, res) => {
    const svc = service(req);
    sendJson(res, JSON.stringify(await svc.pathFor(jobId(req), required(req, 'name'), required(req, 'type'))));
  });

  router.get('/jobs/:job_id/files', auth, async (req, res) => {
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

  router.post('/jobs/:job_id/submit', auth, async (req, res) => {
    const svc = service(req);
    const request = parseSubmit(req, svc.submitLimits);
    await svc.submit(jobId(req), request, clientOf(req));
    sendOk(res);
  });

  router.all('/jobs/:job_id/status', auth, async (req, res) => {
    sendJson(res, await service(req).status(jobId(req)));
  });

  router.put('/jobs/:job_id/cancel', auth, async (req, res) => {
    await service(req).cancel(jobId(req));
    sendOk(res);
  });

  router.delete('/jobs/:job_id', auth, async (req, res) => {
    await service(req).clean(jobId(req));
    sendOk(res);
  });

  router.get('/healthz', auth, (req, res) => {
    service(req);
    sendJson(res, JSON.stringify({ version: PULSAR_COMPAT_VERSION }));
  });

  const notConfigured: RequestHandler = (_req, _res, next) => {
    next(new NotConfigured('this feature (file cache / object store) is not configured on this server'));
  };
  router.all(['/cache', '/cache/status', '/objects/:object_id', '/objects/:object_id/:action', '/object_store_usage_percent'], auth, notConfigured);

  return router;
}
