import test from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { request, qs, statusOf, waitForJob } from '../helpers/client.js';
import { makeRoot } from '../helpers/server.js';
import { spawnServer, serverRoot, writeServerIni } from '../helpers/process.js';
import { alive, waitUntil } from '../helpers/wait.js';

async function setupAndSubmit(url: string, id: string, command: (outputs: string) => string): Promise<void> {
  const setup = await request(url, 'POST', `/jobs?${qs({ job_id: id })}`);
  if (setup.status !== 200) throw new Error(setup.text);
  const outputs = setup.json().outputs_directory as string;
  const up = await request(url, 'POST', `/jobs/${id}/files?${qs({ job_id: id, name: 'in.txt', type: 'input' })}`, { body: `input of ${id}\n` });
  if (up.status !== 200) throw new Error(up.text);
  const submit = await request(url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command(outputs) })}`);
  if (submit.text !== 'OK') throw new Error(submit.text);
}

const until = (what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> => waitUntil(what, check, timeoutMs);

test('kill -9 of the server loses no job: finished, running, ending-while-down and queued jobs all complete', async (t) => {
  const { root, ini } = await serverRoot(t, '[manager:_default_]\ntype = queued_python\nnum_concurrent_jobs = 2\n');
  let server = await spawnServer(ini);
  t.teardown(() => server.kill('SIGKILL'));
  const copy = (id: string, delay: number) => (outputs: string) => `sleep ${delay}; cat ../inputs/in.txt > '${outputs}/out.txt'; echo ${id}`;

  await setupAndSubmit(server.url, 'finished', copy('finished', 0));
  await waitForJob(server.url, 'finished');
  await setupAndSubmit(server.url, 'long', copy('long', 3));
  await setupAndSubmit(server.url, 'short', copy('short', 1));
  await setupAndSubmit(server.url, 'queued1', copy('queued1', 0));
  await setupAndSubmit(server.url, 'queued2', copy('queued2', 0));
  await until('two running jobs', async () => (await statusOf(server.url, 'long')) === 'running' && (await statusOf(server.url, 'short')) === 'running');
  t.is(await statusOf(server.url, 'queued1'), 'queued');

  await server.kill('SIGKILL');
  const longPid = Number((await fs.readFile(path.join(root, 'staging', 'long', 'pid'), 'utf8')).trim());
  t.true(alive(longPid), 'the running job survives the server');
  // "short" ends while no server is watching.
  await until('short to finish while the server is down', async () => {
    try {
      await fs.access(path.join(root, 'staging', 'short', 'return_code'));
      return true;
    } catch {
      return false;
    }
  });

  server = await spawnServer(ini);
  for (const id of ['finished', 'long', 'short', 'queued1', 'queued2']) {
    const doc = await waitForJob(server.url, id, '', '', 30_000);
    t.is(doc.status, 'complete', `${id}: ${JSON.stringify(doc)}`);
    t.is(doc.returncode, 0, id);
    t.is(doc.job_stdout, `${id}\n`, id);
    const out = await request(server.url, 'GET', `/jobs/${id}/files?${qs({ job_id: id, name: 'out.txt', type: 'output' })}`);
    t.is(out.status, 200, id);
    t.is(out.text, `input of ${id}\n`, id);
  }
});

test('a server killed while jobs are only queued runs them all after the restart', async (t) => {
  const { ini } = await serverRoot(t, '[manager:_default_]\ntype = queued_python\nnum_concurrent_jobs = 1\n');
  let server = await spawnServer(ini);
  t.teardown(() => server.kill('SIGKILL'));
  await setupAndSubmit(server.url, 'blocker', () => 'sleep 1.5');
  await until('blocker running', async () => (await statusOf(server.url, 'blocker')) === 'running');
  for (const id of ['q1', 'q2', 'q3']) await setupAndSubmit(server.url, id, (o) => `cat ../inputs/in.txt > '${o}/out.txt'`);
  await server.kill('SIGKILL');
  server = await spawnServer(ini);
  for (const id of ['blocker', 'q1', 'q2', 'q3']) {
    const doc = await waitForJob(server.url, id, '', '', 30_000);
    t.is(doc.status, 'complete', id);
  }
  const out = await request(server.url, 'GET', `/jobs/q3/files?${qs({ job_id: 'q3', name: 'out.txt' })}`);
  t.is(out.text, 'input of q3\n');
});

test('preprocessing and postprocessing are persisted states: a server killed in either resumes the job after the restart', async (t) => {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const ini = await writeServerIni(root, [`staging_directory = ${root}/staging`, `persistence_directory = ${root}/persisted`]);
  let server = await spawnServer(ini);
  t.teardown(() => server.kill('SIGKILL'));
  const records = path.join(root, 'persisted', '_default_-jobs');

  // "pre": set up and staged; the server dies right after recording the submit (preprocessing).
  const setup = await request(server.url, 'POST', `/jobs?${qs({ job_id: 'pre' })}`);
  t.is(setup.status, 200);
  const outputs = setup.json().outputs_directory as string;
  const up = await request(server.url, 'POST', `/jobs/pre/files?${qs({ job_id: 'pre', name: 'in.txt', type: 'input' })}`, { body: 'input of pre\n' });
  t.is(up.status, 200);
  // "post": ran to the end; the server dies while postprocessing it.
  await setupAndSubmit(server.url, 'post', (out) => `cat ../inputs/in.txt > '${out}/out.txt'`);
  t.is((await waitForJob(server.url, 'post')).status, 'complete');
  await server.kill('SIGKILL');

  const commandLine = `cat ../inputs/in.txt > '${outputs}/out.txt'; echo resumed`;
  const pre = JSON.parse(await fs.readFile(path.join(records, 'pre.json'), 'utf8')) as Record<string, unknown>;
  const request_ = { commandLine, submitParams: {}, dependenciesDescription: null, env: [], remoteStaging: {}, touchOutputs: [], dynamicFileSources: [] };
  await fs.writeFile(path.join(records, 'pre.json'), JSON.stringify({ ...pre, state: 'preprocessing', launch: { request: request_, commandLine, submitParams: {} } }));
  const post = JSON.parse(await fs.readFile(path.join(records, 'post.json'), 'utf8')) as Record<string, unknown>;
  await fs.writeFile(path.join(records, 'post.json'), JSON.stringify({ ...post, state: 'postprocessing' }));

  server = await spawnServer(ini);
  const preDoc = await waitForJob(server.url, 'pre', '', '', 30_000);
  t.is(preDoc.status, 'complete', JSON.stringify(preDoc));
  t.is(preDoc.job_stdout, 'resumed\n');
  const out = await request(server.url, 'GET', `/jobs/pre/files?${qs({ job_id: 'pre', name: 'out.txt', type: 'output' })}`);
  t.is(out.text, 'input of pre\n');
  const postDoc = await waitForJob(server.url, 'post', '', '', 30_000);
  t.is(postDoc.status, 'complete', JSON.stringify(postDoc));
  t.is(postDoc.returncode, 0);
  const saved = JSON.parse(await fs.readFile(path.join(records, 'post.json'), 'utf8')) as { state: string };
  t.is(saved.state, 'complete', 'the resumed postprocessing was recorded');
});
