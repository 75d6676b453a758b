import test from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import { readFileSync as fsReadSync } from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { request, qs, setupJob as setup, waitForJob } from '../helpers/client.js';
import { makeRoot, managerConfig, startTestServer, testConfig } from '../helpers/server.js';
import { createLogger } from '../../src/log.js';
import { startServer } from '../../src/server.js';
import { alive, waitUntil } from '../helpers/wait.js';

const run = promisify(execFile);

async function submit(base: string, id: string, command: string, extra: Record<string, string> = {}, prefix = ''): Promise<string> {
  return (await request(base, 'POST', `${prefix}/jobs/${id}/submit?${qs({ job_id: id, command_line: command, ...extra })}`)).text;
}

async function status(base: string, id: string): Promise<any> {
  return (await request(base, 'GET', `/jobs/${id}/status?job_id=${id}`)).json();
}

const until = (check: () => Promise<boolean>, what: string): Promise<void> => waitUntil(what, check, 15_000, 25);

test('cancel of a running job kills its whole process group', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const config = await setup(server.url, 'run1');
  const childPidFile = path.join(config.working_directory, 'child.pid');
  // The job starts a background grandchild that would outlive a plain kill of the leader.
  t.is(await submit(server.url, 'run1', `sleep 60 & echo $! > child.pid; wait`), 'OK');
  await until(async () => (await status(server.url, 'run1')).status === 'running' && (await fs.stat(childPidFile).then(() => true, () => false)), 'running');
  const grandchild = Number((await fs.readFile(childPidFile, 'utf8')).trim());
  t.true(alive(grandchild));
  t.is((await request(server.url, 'PUT', '/jobs/run1/cancel?job_id=run1')).text, 'OK');
  const doc = await waitForJob(server.url, 'run1');
  t.is(doc.status, 'cancelled');
  await until(async () => !alive(grandchild), 'grandchild killed');
  t.pass();
});

test('cancel of a queued job: it never runs, and the queue moves on', async (t) => {
  const server = await startTestServer({ managers: (root) => [managerConfig(root, { numConcurrentJobs: 1 })] });
  t.teardown(() => server.stop());
  await setup(server.url, 'blocker');
  await submit(server.url, 'blocker', 'sleep 0.5');
  const q = await setup(server.url, 'queued');
  const marker = path.join(q.working_directory, 'ran');
  await submit(server.url, 'queued', 'touch ran');
  await setup(server.url, 'after');
  await submit(server.url, 'after', 'true');
  t.is((await status(server.url, 'queued')).status, 'queued');
  await request(server.url, 'PUT', '/jobs/queued/cancel?job_id=queued');
  t.is((await status(server.url, 'queued')).status, 'cancelled');
  t.is((await waitForJob(server.url, 'after')).status, 'complete');
  await t.throwsAsync(fs.access(marker), undefined, 'the cancelled job never ran');
});

test('an id set up and submitted again right after its job was cancelled runs (20 times)', async (t) => {
  const server = await startTestServer({ managers: (root) => [managerConfig(root, { numConcurrentJobs: 2 })] });
  t.teardown(() => server.stop());
  for (let i = 0; i < 20; i++) {
    await setup(server.url, 'again');
    t.is(await submit(server.url, 'again', 'sleep 30'), 'OK');
    t.is((await request(server.url, 'PUT', '/jobs/again/cancel?job_id=again')).text, 'OK');
    // The cancelled job's process may not have been seen to end yet: its run slot is still held.
    await setup(server.url, 'again');
    t.is(await submit(server.url, 'again', `echo ${i}`), 'OK');
    const doc = await waitForJob(server.url, 'again', '', '', 15_000);
    t.is(doc.status, 'complete', `round ${i}: ${JSON.stringify(doc.status)}`);
    t.is(doc.job_stdout, `${i}\n`);
  }
});

test('cancel before submit: the job is cancelled and a later submit is ignored', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const config = await setup(server.url, 'early');
  t.is((await status(server.url, 'early')).status, 'preprocessing');
  await request(server.url, 'PUT', '/jobs/early/cancel?job_id=early');
  t.is(await submit(server.url, 'early', 'touch ran'), 'OK');
  t.is((await status(server.url, 'early')).status, 'cancelled');
  await new Promise((r) => setTimeout(r, 200));
  await t.throwsAsync(fs.access(path.join(config.working_directory, 'ran')));
});

test('duplicate submit is ignored; a refused launch answers 403 and is a failed job with the reason in stderr', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const config = await setup(server.url, 'dup');
  await submit(server.url, 'dup', 'echo once >> ../outputs/count');
  await waitForJob(server.url, 'dup');
  t.is(await submit(server.url, 'dup', 'echo twice >> ../outputs/count'), 'OK');
  await new Promise((r) => setTimeout(r, 200));
  t.is(await fs.readFile(path.join(config.outputs_directory, 'count'), 'utf8'), 'once\n');

  await setup(server.url, 'remote');
  // An action magnetar does not perform (staging-in.test.ts covers the ones it does).
  const staging = JSON.stringify({ setup: [{ name: 'a', type: 'input', action: { action_type: 'remote_rsync_transfer', path: '/etc/passwd', ssh_host: 'h' } }] });
  t.regex(await submit(server.url, 'remote', 'cat ../inputs/a', { remote_staging: staging }), /"error":"MAG_ERR_TOOL_DENIED"/);
  const doc = await waitForJob(server.url, 'remote');
  t.is(doc.status, 'failed');
  t.is(doc.returncode, 1);
  t.regex(doc.stderr, /remote_rsync_transfer" is not supported by this server for server-side staging/);
  t.deepEqual(doc.working_directory_contents, []);
});

test('a job script that dies without a return code is failed, not complete', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  await setup(server.url, 'killed');
  await submit(server.url, 'killed', 'kill -9 $$; sleep 5');
  const doc = await waitForJob(server.url, 'killed');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /did not record a return code/);
});

test('setup of a reused id starts from an empty directory; setup of an active id is refused', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const config = await setup(server.url, 'reuse');
  await request(server.url, 'POST', `/jobs/reuse/files?${qs({ job_id: 'reuse', name: 'old.dat', type: 'input' })}`, { body: 'old' });
  await submit(server.url, 'reuse', 'echo old > ../outputs/result');
  await waitForJob(server.url, 'reuse');
  await setup(server.url, 'reuse');
  t.deepEqual(await fs.readdir(config.inputs_directory), []);
  t.deepEqual(await fs.readdir(config.outputs_directory), []);
  t.is((await status(server.url, 'reuse')).status, 'preprocessing');
  const missing = await request(server.url, 'GET', `/jobs/reuse/files?${qs({ job_id: 'reuse', name: 'result' })}`);
  t.is(missing.status, 404, "the previous job's output is not served");

  await submit(server.url, 'reuse', 'sleep 2');
  await until(async () => (await status(server.url, 'reuse')).status === 'running', 'running');
  const again = await request(server.url, 'POST', `/jobs?${qs({ job_id: 'reuse' })}`);
  t.is(again.status, 409);
  t.is(again.json().error, 'MAG_ERR_JOB_STATE');
  await request(server.url, 'DELETE', '/jobs/reuse?job_id=reuse');
  t.is((await status(server.url, 'reuse')).status, 'lost');
});

test('assign_ids = uuid gives a fresh 32-hex id on every setup', async (t) => {
  const server = await startTestServer({ managers: (root) => [managerConfig(root, { assignIds: 'uuid' })] });
  t.teardown(() => server.stop());
  const a = await setup(server.url, '123');
  const b = await setup(server.url, '123');
  t.regex(a.job_id, /^[0-9a-f]{32}$/);
  t.not(a.job_id, b.job_id);
  t.is(a.job_directory, path.join(server.staging, a.job_id));
  t.is(await submit(server.url, a.job_id, 'true'), 'OK');
  t.is((await waitForJob(server.url, a.job_id)).status, 'complete');
});

test('touch_outputs, env entries, setup_params and __PULSAR_JOBS_DIRECTORY__', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  // Submit with setup_params: setup happens inside submit (Pulsar's local-setup/MQ path).
  const env = JSON.stringify([{ name: 'GREETING', value: 'hi $HOME', raw: false, job_directory_path: '/x' }]);
  const command = 'echo "$GREETING" > ../outputs/env.txt; ls __PULSAR_JOBS_DIRECTORY__/inside > ../outputs/ls.txt';
  const text = await submit(server.url, 'inside', command, {
    setup_params: JSON.stringify({ job_id: 'inside', tool_id: 't', tool_version: '1', use_metadata: true }),
    submit_extras: JSON.stringify({ touch_outputs: ['touched.dat', 'nested/t2.dat'] }),
    env,
  });
  t.is(text, 'OK');
  const doc = await waitForJob(server.url, 'inside');
  t.is(doc.status, 'complete');
  t.true(doc.outputs_directory_contents.includes('touched.dat'));
  t.true(doc.outputs_directory_contents.includes('nested/t2.dat'));
  const envOut = await request(server.url, 'GET', `/jobs/inside/files?${qs({ job_id: 'inside', name: 'env.txt' })}`);
  t.is(envOut.text, `hi ${path.join(server.staging, 'inside', 'home')}\n`, '$HOME in a value is the job\'s own home, never the server\'s');
  const ls = await request(server.url, 'GET', `/jobs/inside/files?${qs({ job_id: 'inside', name: 'ls.txt' })}`);
  t.regex(ls.text, /working/);

  await setup(server.url, 'badtouch');
  const bad = await submit(server.url, 'badtouch', 'true', { submit_extras: JSON.stringify({ touch_outputs: ['../../escape'] }) });
  t.regex(bad, /"error":"MAG_ERR_PATH_DENIED"/, 'a refused touch_outputs name refuses the job (403)');
  t.is((await waitForJob(server.url, 'badtouch')).status, 'failed');
  await t.throwsAsync(fs.access(path.join(server.staging, 'escape')));
});

test('status of a finished job is served from memory; dynamic file sources stay inside working/', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const config = await setup(server.url, 'dyn');
  const sources = JSON.stringify([
    { type: 'galaxy', path: 'galaxy.json' },
    { type: 'galaxy', path: 'absent.json' },
    { type: 'galaxy', path: '../../../../../../etc/passwd' },
    { type: 'galaxy', path: 'link.json' },
  ]);
  await submit(server.url, 'dyn', `echo '{"a": 1}' > galaxy.json; ln -s /etc/passwd link.json`, { dynamic_file_sources: sources });
  const doc = await waitForJob(server.url, 'dyn');
  t.deepEqual(doc.realized_dynamic_file_sources, [{ type: 'galaxy', path: 'galaxy.json', contents: '{"a": 1}\n' }]);
  // A finished job's document does not change: a later file is not listed (no disk scan per request).
  await fs.writeFile(path.join(config.working_directory, 'later'), 'x');
  const again = await status(server.url, 'dyn');
  t.false(again.working_directory_contents.includes('later'));
});

test('routes work under /managers/{name} and each manager has its own staging directory', async (t) => {
  const server = await startTestServer({
    managers: (root) => [managerConfig(root), managerConfig(root, { name: 'big', stagingDirectory: path.join(root, 'big') })],
  });
  t.teardown(() => server.stop());
  const config = await setup(server.url, '7', '/managers/big');
  t.is(config.job_directory, path.join(server.root, 'big', '7'));
  await submit(server.url, '7', 'true', {}, '/managers/big');
  t.is((await waitForJob(server.url, '7', '/managers/big')).status, 'complete');
  t.is((await status(server.url, '7')).status, 'lost', 'the default manager does not know the job');
});

test('HTTPS with ssl_pem serves the same API; a missing pem file stops startup', async (t) => {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const key = path.join(root, 'key.pem');
  const cert = path.join(root, 'cert.pem');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
  const pem = path.join(root, 'host.pem');
  await fs.writeFile(pem, (await fs.readFile(key, 'utf8')) + (await fs.readFile(cert, 'utf8')));
  const base = testConfig(root);
  const log = createLogger({ level: 'silent' });
  const server = await startServer({ ...base, server: { ...base.server, sslPem: pem } }, { log, env: process.env, port: 0 });
  t.teardown(() => server.close());
  t.true(server.url.startsWith('https://'));
  const body = await new Promise<string>((resolve, reject) => {
    https.get(`${server.url}healthz`, { ca: [fsReadSync(cert)] }, (res) => {
      let data = '';
      res.on('data', (c: Buffer) => { data += c.toString(); });
      res.on('end', () => resolve(data));
    }).on('error', reject);
  });
  const health = JSON.parse(body) as { version: string; staging_transfers: { max: number } };
  t.is(health.version, '0.15.16');
  t.deepEqual(Object.keys(health).sort(), ['staging_transfers', 'version']);
  t.is(health.staging_transfers.max, 16);
  await t.throwsAsync(startServer({ ...base, server: { ...base.server, sslPem: path.join(root, 'missing.pem') } }, { log, env: process.env, port: 0 }), {
    code: 'MAG_ERR_CONFIG',
  });
});


async function launcherPids(): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await fs.readFile(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid !== process.pid) continue;
      if ((await fs.readFile(`/proc/${entry}/cmdline`, 'utf8')).includes('read -r tok')) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

test.serial('a job outlives a crashed launcher and still reports its result; the next job gets a new launcher', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  await setup(server.url, 'outlive');
  await submit(server.url, 'outlive', 'sleep 1; echo survived > ../outputs/o');
  await until(async () => (await status(server.url, 'outlive')).status === 'running', 'running');
  const launchers = await launcherPids();
  t.true(launchers.length >= 1);
  for (const pid of launchers) process.kill(pid, 'SIGKILL');
  const doc = await waitForJob(server.url, 'outlive');
  t.is(doc.status, 'complete');
  t.is(doc.returncode, 0);
  t.is((await request(server.url, 'GET', `/jobs/outlive/files?${qs({ job_id: 'outlive', name: 'o' })}`)).text, 'survived\n');
  await setup(server.url, 'next');
  await submit(server.url, 'next', 'exit 5');
  t.is((await waitForJob(server.url, 'next')).returncode, 5);
});
