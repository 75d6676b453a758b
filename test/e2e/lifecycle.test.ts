import test from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { request, qs, waitForJob } from '../helpers/client.js';
import { startTestServer } from '../helpers/server.js';

test('a job runs end to end: setup, upload, submit, status, download, clean', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const base = server.url;
  const setup = await request(base, 'POST', `/jobs?${qs({ job_id: '42', tool_id: 'cat1', tool_version: '1.0', use_metadata: 'true' })}`);
  t.is(setup.status, 200, setup.text);
  const config = setup.json();
  t.is(config.job_id, '42');
  t.is(config.working_directory, path.join(server.staging, '42', 'working'));
  t.is(config.tool_id, 'cat1');
  t.deepEqual(config.system_properties, { separator: '/' });

  const up = await request(base, 'POST', `/jobs/42/files?${qs({ job_id: '42', name: 'dataset_1.dat', type: 'input' })}`, {
    body: 'hello\n',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
  });
  t.is(up.status, 200, up.text);
  t.is(up.json().path, path.join(server.staging, '42', 'inputs', 'dataset_1.dat'));

  const input = up.json().path as string;
  const out = path.join(config.outputs_directory, 'out.dat');
  const commandLine = `cat "${input}" > "${out}"; echo done; exit 3`;
  const submit = await request(base, 'POST', `/jobs/42/submit?${qs({ job_id: '42', command_line: commandLine, submit_extras: '{"touch_outputs": []}' })}`);
  t.is(submit.status, 200, submit.text);
  t.is(submit.text, 'OK');

  const doc = await waitForJob(base, '42');
  t.is(doc.status, 'complete');
  t.is(doc.complete, 'true');
  t.is(doc.returncode, 3);
  t.true(doc.outputs_directory_contents.includes('out.dat'));
  t.is(doc.job_stdout, 'done\n');

  const down = await request(base, 'GET', `/jobs/42/files?${qs({ job_id: '42', name: 'out.dat', type: 'output' })}`);
  t.is(down.status, 200);
  t.is(down.text, 'hello\n');
  t.is(down.headers['content-length'], '6');

  const clean = await request(base, 'DELETE', '/jobs/42?job_id=42');
  t.is(clean.text, 'OK');
  await t.throwsAsync(fs.stat(path.join(server.staging, '42')));
  const lost = await request(base, 'GET', '/jobs/42/status?job_id=42');
  t.is(lost.json().status, 'lost');
});
