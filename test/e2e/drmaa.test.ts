import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { SGE_ENV, clusterTest } from '../helpers/cluster.js';
import { downloadOutput as download, request, qs, setupJob as setup, statusOf, waitForJob } from '../helpers/client.js';
import { spawnServer, serverRoot } from '../helpers/process.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';

// queued_drmaa against the real Grid Engine that scripts/ci/start-sge.sh runs, through the HTTP API.
const sgeTest = await clusterTest('sge');
const run = promisify(execFile);
for (const [key, value] of Object.entries(SGE_ENV)) process.env[key] ??= value;
const sgeEnv = { ...process.env, ...SGE_ENV };
/** Job ids found by name in qstat: unique per run, so a job a crashed earlier run left behind is never taken. */
const RUN = String(process.pid);

function drmaaServer(backendOptions: Record<string, string> = {}, app: Parameters<typeof startTestServer>[0] = {}): Promise<TestServer> {
  return startTestServer({
    ...app,
    managers: (root) => [managerConfig(root, { type: 'queued_drmaa', backendOptions, minPollingInterval: 0.2 })],
  });
}

async function submit(base: string, id: string, command: string, params?: Record<string, unknown>): Promise<void> {
  const query: Record<string, string> = { job_id: id, command_line: command };
  if (params !== undefined) query['params'] = JSON.stringify(params);
  const r = await request(base, 'POST', `/jobs/${id}/submit?${qs(query)}`);
  if (r.text !== 'OK') throw new Error(`submit answered ${r.status}: ${r.text}`);
}

const until = (what: string, check: () => Promise<boolean>, timeoutMs = 30_000, everyMs = 50): Promise<void> =>
  waitUntil(what, check, timeoutMs, everyMs);

/** The Grid Engine job id of the job named `name` (job_name_template default: pulsar_<id>). */
async function sgeJobId(name: string): Promise<string> {
  const { stdout } = await run('qstat', ['-u', '*', '-xml'], { env: sgeEnv });
  const match = new RegExp(`<JB_job_number>(\\d+)</JB_job_number>\\s*<JAT_prio>[^<]*</JAT_prio>\\s*<JB_name>${name}</JB_name>`).exec(stdout);
  if (match?.[1] === undefined) throw new Error(`no Grid Engine job named ${name}`);
  return match[1];
}

async function sgeKnows(jobId: string): Promise<boolean> {
  try {
    await run('qstat', ['-j', jobId], { env: sgeEnv });
    return true;
  } catch {
    return false;
  }
}

/** Pids of the DRMAA helper processes serving the manager whose files live under `root`. */
async function helperPids(root: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = (await fs.readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0');
      if (argv.some((a) => a.endsWith('drmaa/helper.js')) && argv.some((a) => a.startsWith(root))) pids.push(Number(entry));
    } catch {
      // gone
    }
  }
  return pids;
}

sgeTest('a job runs on Grid Engine: exit code, outputs, job stdout/stderr; submit to running is timed', async (t) => {
  const server = await drmaaServer();
  t.teardown(() => server.stop());
  /** Milliseconds from the submit request until the HTTP status leaves `queued`. */
  const timeToRunning = async (id: string, command: string): Promise<number> => {
    await setup(server.url, id);
    const started = Date.now();
    await submit(server.url, id, command);
    await until(`${id} running`, async () => (await statusOf(server.url, id)) !== 'queued', 30_000, 10);
    return Date.now() - started;
  };
  const first = await timeToRunning('hello', 'echo hi > ../outputs/o; echo out-line; echo err-line >&2; exit 3');
  const doc = await waitForJob(server.url, 'hello', '', '', 60_000);
  t.is(doc.status, 'complete', JSON.stringify(doc));
  t.is(doc.returncode, 3);
  t.is(doc.job_stdout, 'out-line\n');
  t.is(doc.job_stderr, 'err-line\n');
  t.is(await download(server.url, 'hello', 'o'), 'hi\n');
  const warm = await timeToRunning('again', 'exit 0');
  t.is((await waitForJob(server.url, 'again', '', '', 60_000)).status, 'complete');
  const backend = server.logLines.map((l) => JSON.parse(l)).filter((l) => l.msg === 'DRMAA job started').map((l) => l.submitToRunningMs as number);
  t.log(`submit -> running over HTTP: first job ${first} ms (helper start included), next job ${warm} ms; DRMAA run_job -> RUNNING seen by the poll: ${backend.join(', ')} ms`);
  // The session contact is kept for re-attaching after a restart.
  const contact = await fs.readFile(path.join(server.staging, '.magnetar-drmaa-_default_.contact'), 'utf8');
  t.regex(contact, /^session=/);
});

sgeTest('a native specification the DRM rejects fails the job with the DRM\'s reason; the server stays up', async (t) => {
  const server = await drmaaServer({ native_specification: '-l nonexistent_resource=1' });
  t.teardown(() => server.stop());
  await setup(server.url, 'rejected');
  await submit(server.url, 'rejected', 'echo never');
  const doc = await waitForJob(server.url, 'rejected', '', '', 30_000);
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /refused the job: DENIED_BY_DRM: unknown resource "nonexistent_resource"/);
  t.is((await request(server.url, 'GET', '/healthz')).status, 200);
});

sgeTest('client native specifications: resource requests reach the DRM, file/env options are refused', async (t) => {
  const server = await drmaaServer({}, { app: { allowedSubmitParams: ['native_specification'] } });
  t.teardown(() => server.stop());
  await setup(server.url, 'badqueue');
  await submit(server.url, 'badqueue', 'echo never', { native_specification: '-q no_such_queue' });
  await setup(server.url, 'sneaky');
  await submit(server.url, 'sneaky', 'echo never', { native_specification: '-l h_rt=60 -o /tmp/elsewhere' });
  await setup(server.url, 'fine');
  await submit(server.url, 'fine', 'echo ok > ../outputs/o', { native_specification: '-q all.q -l h_rt=00:05:00' });
  const badqueue = await waitForJob(server.url, 'badqueue', '', '', 30_000);
  t.is(badqueue.status, 'failed');
  t.regex(badqueue.stderr, /unknown queue "no_such_queue"/);
  const sneaky = await waitForJob(server.url, 'sneaky', '', '', 30_000);
  t.is(sneaky.status, 'failed');
  t.regex(sneaky.stderr, /option -o is not allowed from clients/);
  const fine = await waitForJob(server.url, 'fine', '', '', 60_000);
  t.is(fine.status, 'complete', fine.stderr);
  t.is(await download(server.url, 'fine', 'o'), 'ok\n');
});

sgeTest('cancel while queued (held by the native specification) removes the job from Grid Engine', async (t) => {
  const server = await drmaaServer({ native_specification: '-h' });
  t.teardown(() => server.stop());
  const held = `held-${RUN}`;
  const config = await setup(server.url, held);
  await submit(server.url, held, 'touch ran');
  let sgeId = '';
  await until('the job in qstat', async () => {
    sgeId = await sgeJobId(`pulsar_${held}`).catch(() => '');
    return sgeId !== '';
  });
  t.teardown(async () => {
    await run('qdel', [sgeId], { env: sgeEnv }).catch(() => undefined);
  });
  await new Promise((r) => setTimeout(r, 600));
  t.is(await statusOf(server.url, held), 'queued');
  t.is((await request(server.url, 'PUT', `/jobs/${held}/cancel?job_id=${held}`)).text, 'OK');
  t.is((await waitForJob(server.url, held)).status, 'cancelled');
  await until('Grid Engine to forget the job', async () => !(await sgeKnows(sgeId)), 15_000, 200);
  await t.throwsAsync(fs.access(path.join(config.working_directory, 'ran')));
});

sgeTest('cancel while running terminates the Grid Engine job', async (t) => {
  const server = await drmaaServer();
  t.teardown(() => server.stop());
  const sleeper = `sleeper-${RUN}`;
  const config = await setup(server.url, sleeper);
  await submit(server.url, sleeper, 'echo started > started; sleep 120; touch finished');
  await until('running', async () => (await statusOf(server.url, sleeper)) === 'running');
  const sgeId = await sgeJobId(`pulsar_${sleeper}`);
  t.teardown(async () => {
    await run('qdel', [sgeId], { env: sgeEnv }).catch(() => undefined);
  });
  await until('the script to start', () => fs.access(path.join(config.working_directory, 'started')).then(() => true, () => false));
  t.is((await request(server.url, 'PUT', `/jobs/${sleeper}/cancel?job_id=${sleeper}`)).text, 'OK');
  t.is((await waitForJob(server.url, sleeper)).status, 'cancelled');
  await until('Grid Engine to forget the job', async () => !(await sgeKnows(sgeId)), 15_000, 200);
  await t.throwsAsync(fs.access(path.join(config.working_directory, 'finished')));
});

sgeTest('a job Grid Engine reports FAILED ends failed with the reason, never complete', async (t) => {
  const server = await drmaaServer({ native_specification: '-h' });
  t.teardown(() => server.stop());
  const doomed = `doomed-${RUN}`;
  const config = await setup(server.url, doomed);
  await submit(server.url, doomed, 'echo never');
  let sgeId = '';
  await until('the job in qstat', async () => {
    sgeId = await sgeJobId(`pulsar_${doomed}`).catch(() => '');
    return sgeId !== '';
  });
  t.teardown(async () => {
    await run('qdel', [sgeId], { env: sgeEnv }).catch(() => undefined);
  });
  // Its working directory vanishes before it may start: the execution daemon cannot run it.
  await fs.rm(config.working_directory, { recursive: true, force: true });
  await run('qrls', [sgeId], { env: sgeEnv });
  const doc = await waitForJob(server.url, doomed, '', '', 30_000);
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /the DRM reports the job FAILED: it was aborted/);
});

sgeTest('a crash of the DRMAA helper: the server survives, the running job is still reaped, the next job runs', async (t) => {
  const server = await drmaaServer();
  t.teardown(() => server.stop());
  await setup(server.url, 'survivor');
  await submit(server.url, 'survivor', 'sleep 3; echo kept > ../outputs/o; exit 4');
  await until('running', async () => (await statusOf(server.url, 'survivor')) === 'running');
  const [pid] = await helperPids(server.root);
  t.truthy(pid, 'the helper process is found');
  process.kill(pid!, 'SIGKILL');
  await until('a new helper', async () => (await helperPids(server.root)).some((p) => p !== pid), 15_000, 100);
  t.is((await request(server.url, 'GET', '/healthz')).status, 200);
  const doc = await waitForJob(server.url, 'survivor', '', '', 60_000);
  t.is(doc.status, 'complete', doc.stderr);
  t.is(doc.returncode, 4);
  t.is(await download(server.url, 'survivor', 'o'), 'kept\n');
  await setup(server.url, 'next');
  await submit(server.url, 'next', 'echo next > ../outputs/o');
  const next = await waitForJob(server.url, 'next', '', '', 60_000);
  t.is(next.status, 'complete', next.stderr);
  t.is(await download(server.url, 'next', 'o'), 'next\n');
  const messages = server.logLines.map((l) => JSON.parse(l).msg as string);
  t.true(messages.includes('the DRMAA helper process was killed by SIGKILL'));
  t.true(messages.includes('DRMAA session re-attached'));
});

sgeTest('kill -9 of the server mid-job: after the restart the jobs are re-attached, exit codes and outputs intact', async (t) => {
  const { root, ini } = await serverRoot(t, '[manager:_default_]\ntype = queued_drmaa\nmin_polling_interval = 0.2\n');
  let server = await spawnServer(ini, SGE_ENV);
  t.teardown(() => server.kill('SIGKILL'));
  for (const [id, command] of [
    ['early', 'sleep 1; echo early > ../outputs/o; exit 2'],
    ['late', 'sleep 6; echo late > ../outputs/o; exit 5'],
  ] as const) {
    await setup(server.url, id);
    await submit(server.url, id, command);
  }
  await until('both running', async () => (await statusOf(server.url, 'early')) === 'running' && (await statusOf(server.url, 'late')) === 'running');
  await server.kill('SIGKILL');
  // "early" ends while no server watches it.
  await until('early to end while the server is down', () => fs.access(path.join(root, 'staging', 'early', 'return_code')).then(() => true, () => false));
  t.is(await statusOfFile(root, 'late'), undefined, 'late still runs');

  server = await spawnServer(ini, SGE_ENV);
  for (const [id, code] of [['early', 2], ['late', 5]] as const) {
    const doc = await waitForJob(server.url, id, '', '', 60_000);
    t.is(doc.status, 'complete', `${id}: ${doc.stderr}`);
    t.is(doc.returncode, code, id);
    t.is(await download(server.url, id, 'o'), `${id}\n`);
  }
  t.regex(server.output(), /DRMAA session re-attached/);
});

async function statusOfFile(root: string, id: string): Promise<string | undefined> {
  return fs.readFile(path.join(root, 'staging', id, 'return_code'), 'utf8').catch(() => undefined);
}
