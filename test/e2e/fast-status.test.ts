import test from 'ava';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { DEFAULT_MANAGER_NAME } from '../../src/config/schema.js';
import { JobStateConflict, LaunchError, PathDenied } from '../../src/errors.js';
import type { JobService } from '../../src/jobs/service.js';
import { createLogger } from '../../src/log.js';
import { createApp } from '../../src/web/app.js';
import { fastStatus } from '../../src/web/fast-status.js';
import { request, qs } from '../helpers/client.js';
import { startTestServer, testConfig } from '../helpers/server.js';

const VOLATILE = new Set(['date', 'connection', 'keep-alive', 'content-length', 'transfer-encoding']);

function stable(headers: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(headers).filter(([k]) => !VOLATILE.has(k)).sort(([a], [b]) => a.localeCompare(b)));
}

test('the fast status path answers exactly like the express route', async (t) => {
  const server = await startTestServer({ app: { privateToken: 'tok' } });
  t.teardown(() => server.stop());
  await request(server.url, 'POST', `/jobs?${qs({ job_id: 'f1', private_token: 'tok' })}`);
  for (const id of ['f1', 'unknown']) {
    const fast = await request(server.url, 'GET', `/jobs/${id}/status?job_id=${id}&private_token=tok`);
    // A body makes the request take the express route.
    const slow = await request(server.url, 'POST', `/jobs/${id}/status?job_id=${id}&private_token=tok`, { body: 'x' });
    t.is(fast.status, 200);
    t.is(slow.status, 200);
    t.is(fast.text, slow.text, id);
    t.deepEqual(stable(fast.headers), stable(slow.headers), id);
  }
  t.is((await request(server.url, 'GET', '/jobs/f1/status?job_id=f1')).status, 401, 'no token: refused');
  t.is((await request(server.url, 'GET', '/jobs/f1/status?private_token=nope')).status, 401);
  t.is((await request(server.url, 'GET', '/jobs/f1/status', { headers: { Authorization: 'Bearer tok' } })).status, 200);
  t.is((await request(server.url, 'GET', '/jobs/%2E%2E/status?private_token=tok')).status, 400);
  t.is((await request(server.url, 'GET', '/managers/nope/jobs/f1/status?private_token=tok')).status, 404);
  t.is((await request(server.url, 'GET', '/managers/_default_/jobs/f1/status?private_token=tok')).json().status, 'preprocessing');
});

test('a status that fails answers the same on both paths: catalog errors as themselves, anything else as MAG_ERR_INTERNAL', async (t) => {
  const failures: unknown[] = [
    new Error('EIO: i/o error, open /srv/secret/path'),
    new PathDenied('metadata/job_stdout is a symlink'),
    new LaunchError('could not write /srv/staging/x/command.sh'),
    new JobStateConflict('job x is running'),
  ];
  let next: unknown;
  const failing = { statusOverHttp: async () => Promise.reject(next) } as unknown as JobService;
  const services = new Map([[DEFAULT_MANAGER_NAME, failing]]);
  const logged: string[] = [];
  const log = createLogger({ destination: new Writable({ write: (chunk: Buffer, _enc, cb) => { logged.push(chunk.toString()); cb(); } }) });
  const web = createApp(testConfig('/nonexistent').app, services, log);
  const fast = fastStatus(services, undefined, log, false);
  const server = http.createServer((req, res) => {
    if (!fast(req, res)) web(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;

  const expected: [number, string, string][] = [
    [500, 'MAG_ERR_INTERNAL', 'internal server error'],
    [403, 'MAG_ERR_PATH_DENIED', 'metadata/job_stdout is a symlink'],
    [500, 'MAG_ERR_INTERNAL', 'internal server error'],
    [409, 'MAG_ERR_JOB_STATE', 'job x is running'],
  ];
  for (const [index, failure] of failures.entries()) {
    next = failure;
    const quick = await request(base, 'GET', '/jobs/j1/status?job_id=j1');
    const slow = await request(base, 'POST', '/jobs/j1/status?job_id=j1', { body: 'x' });
    const [status, code, message] = expected[index]!;
    t.is(quick.status, status, String(failure));
    t.deepEqual(quick.json(), { error: code, message });
    t.is(slow.status, quick.status);
    t.is(slow.text, quick.text);
    t.deepEqual(stable(quick.headers), stable(slow.headers));
    t.is(quick.headers['content-length'], String(Buffer.byteLength(quick.text)));
  }
  // Unexpected failures are logged (both paths alike), catalog ones are answers only.
  t.is(logged.filter((line) => line.includes('unhandled error')).length, 4);
});
