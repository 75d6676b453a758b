import test from 'ava';
import { request, qs } from '../helpers/client.js';
import { startTestServer } from '../helpers/server.js';

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
