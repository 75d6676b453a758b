import test from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { request, qs, waitForJob } from '../helpers/client.js';
import { managerConfig, startTestServer } from '../helpers/server.js';

test('50 jobs with num_concurrent_jobs = 2 never run more than 2 at once', async (t) => {
  const server = await startTestServer({ managers: (root) => [managerConfig(root, { numConcurrentJobs: 2 })] });
  t.teardown(() => server.stop());
  const log = path.join(server.root, 'intervals');
  await fs.mkdir(log);
  const ids = Array.from({ length: 50 }, (_, i) => `c${i}`);
  let maxSeen = 0;
  const sampler = setInterval(() => {
    maxSeen = Math.max(maxSeen, server.services.get('_default_')!.runningCount);
  }, 2);
  t.teardown(() => clearInterval(sampler));
  await Promise.all(
    ids.map(async (id) => {
      await request(server.url, 'POST', `/jobs?${qs({ job_id: id })}`);
      // Each job records when it started and ended (ns); overlapping intervals reveal concurrency.
      const cmd = `s=$(date +%s%N); sleep 0.05; e=$(date +%s%N); echo "$s $e" > '${log}/${id}'`;
      const r = await request(server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: cmd })}`);
      t.is(r.text, 'OK');
    }),
  );
  for (const id of ids) t.is((await waitForJob(server.url, id)).status, 'complete');
  clearInterval(sampler);
  const events: [bigint, number][] = [];
  for (const id of ids) {
    const [s, e] = (await fs.readFile(path.join(log, id), 'utf8')).trim().split(' ').map(BigInt);
    events.push([s!, 1], [e!, -1]);
  }
  events.sort((a, b) => (a[0] === b[0] ? a[1] - b[1] : a[0] < b[0] ? -1 : 1));
  let current = 0;
  let peak = 0;
  for (const [, delta] of events) {
    current += delta;
    peak = Math.max(peak, current);
  }
  t.true(peak <= 2, `at most 2 jobs overlapped (saw ${peak})`);
  t.true(peak === 2, 'the 2 slots were actually used');
  t.true(maxSeen <= 2, `server never had more than 2 running (saw ${maxSeen})`);
});

test('an unqueued manager runs jobs immediately, side by side', async (t) => {
  const server = await startTestServer({ managers: (root) => [managerConfig(root, { type: 'unqueued' })] });
  t.teardown(() => server.stop());
  const ids = ['u1', 'u2', 'u3', 'u4'];
  for (const id of ids) {
    await request(server.url, 'POST', `/jobs?${qs({ job_id: id })}`);
    await request(server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: 'sleep 3' })}`);
  }
  const deadline = Date.now() + 2500;
  while (server.services.get('_default_')!.runningCount < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.is(server.services.get('_default_')!.runningCount, 4, 'all four run at the same time');
  for (const id of ids) t.is((await waitForJob(server.url, id)).status, 'complete');
});
