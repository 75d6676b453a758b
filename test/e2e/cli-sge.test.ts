import type { ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { ManagerConfig } from '../../src/config/types.js';
import {
  cliManager,
  exec,
  expectCopiesComplete,
  outputText,
  restartableServerIni,
  setupAndSubmit,
  statusOf,
  submitAndTimeStart,
  submitLongAndShort,
  until,
  untilReturnCode,
} from '../helpers/cli-e2e.js';
import { clusterTest, SGE_ENV } from '../helpers/cluster.js';
import { request, waitForJob } from '../helpers/client.js';
import { spawnServer } from '../helpers/process.js';
import { startTestServer } from '../helpers/server.js';

// queued_cli + GridEngine plugin against the real single-node Grid Engine of scripts/ci/start-sge.sh.

const sgeTest = await clusterTest('sge');
/** Unique per run: job names must not match an earlier run's. */
const RUN = `ge${Date.now().toString(36)}${process.pid}`;

function sgeManager(root: string, name: string, options: Record<string, string>): ManagerConfig {
  return cliManager(root, name, { job_plugin: 'GridEngine', ...options });
}

function managers(root: string): ManagerConfig[] {
  return [
    sgeManager(root, '_default_', {}),
    sgeManager(root, 'held', { job_plugin: 'sge', job_hold: 'true' }),
    sgeManager(root, 'bad', { job_destination: 'no_such.q' }),
  ];
}

/** Grid Engine's view of the jobs named `pulsar_<id>` (finished jobs leave qstat at once). */
async function sgeJobs(id: string): Promise<{ id: string; state: string }[]> {
  const { stdout } = await exec('qstat', ['-xml'], { env: { ...process.env, ...SGE_ENV } });
  const jobs: { id: string; state: string }[] = [];
  for (const block of stdout.matchAll(/<job_list\b[^>]*>([\s\S]*?)<\/job_list>/g)) {
    const body = block[1]!;
    if (/<JB_name>([^<]*)<\/JB_name>/.exec(body)?.[1] !== `pulsar_${id}`) continue;
    jobs.push({ id: /<JB_job_number>(\d+)</.exec(body)?.[1] ?? '', state: /<state>([^<]*)</.exec(body)?.[1] ?? '' });
  }
  return jobs;
}

/** Teardown: no test leaves a job behind in the shared cluster. */
function qdelOnTeardown(t: ExecutionContext, id: string): void {
  t.teardown(async () => {
    for (const job of await sgeJobs(id).catch(() => [])) {
      await exec('qdel', [job.id], { env: { ...process.env, ...SGE_ENV } }).catch(() => undefined);
    }
  });
}

sgeTest('a Grid Engine job runs: outputs, exit code 3, stdout/stderr files, #$ header; submit→running measured', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-ok`;
  qdelOnTeardown(t, id);
  await submitAndTimeStart(
    t,
    server.url,
    id,
    'cat ../inputs/in.txt > ../outputs/o; echo hi >> ../outputs/o; echo to-stdout; echo to-stderr >&2; exit 3',
    'Grid Engine',
    'Grid Engine (LocalShell)',
  );

  const doc = await waitForJob(server.url, id, '', '', 60_000);
  t.is(doc.status, 'complete', JSON.stringify(doc));
  t.is(doc.returncode, 3);
  t.is(doc.job_stdout, 'to-stdout\n');
  t.is(doc.job_stderr, 'to-stderr\n');
  t.deepEqual(doc.outputs_directory_contents, ['o']);
  t.is(await outputText(server.url, id, 'o'), `input of ${id}\nhi\n`);

  const script = await fs.readFile(path.join(server.root, 'staging-_default_', id, 'command.sh'), 'utf8');
  const header = script.split('\n').slice(0, 6);
  t.deepEqual(header, [
    '#!/bin/bash',
    '#$ -S /bin/bash',
    `#$ -o ${path.join(server.root, 'staging-_default_', id, 'metadata', 'job_stdout')}`,
    `#$ -e ${path.join(server.root, 'staging-_default_', id, 'metadata', 'job_stderr')}`,
    `#$ -N pulsar_${id}`,
    `#$ -wd ${path.join(server.root, 'staging-_default_', id, 'working')}`,
  ]);
  t.deepEqual(await sgeJobs(id), [], 'finished jobs leave qstat');
});

sgeTest('a job with exit 0 completes; several jobs are watched by one qstat per round', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const ids = [1, 2, 3].map((n) => `${RUN}-many${n}`);
  for (const id of ids) qdelOnTeardown(t, id);
  await Promise.all(ids.map((id) => setupAndSubmit(server.url, id, `echo ${id} > ../outputs/o`)));
  for (const id of ids) {
    const doc = await waitForJob(server.url, id, '', '', 60_000);
    t.is(doc.status, 'complete', JSON.stringify(doc));
    t.is(doc.returncode, 0);
    t.is(await outputText(server.url, id, 'o'), `${id}\n`);
  }
});

sgeTest('cancel while queued (held with job_hold) removes the job from Grid Engine', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-held`;
  qdelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'echo should-not-run > ../outputs/o', '/managers/held');
  await until('the held job in qstat', async () => (await sgeJobs(id)).length === 1);
  const [job] = await sgeJobs(id);
  t.is(job!.state, 'hqw');
  // Held jobs stay queued.
  await new Promise((r) => setTimeout(r, 1000));
  t.is(await statusOf(server.url, id, '/managers/held'), 'queued');

  t.is((await request(server.url, 'PUT', `/managers/held/jobs/${id}/cancel?job_id=${id}`)).text, 'OK');
  const doc = await waitForJob(server.url, id, '/managers/held');
  t.is(doc.status, 'cancelled');
  await until('Grid Engine to delete the held job', async () => (await sgeJobs(id)).length === 0, 10_000);
  t.pass();
});

sgeTest('clean of a queued (held) job removes it from Grid Engine', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-heldclean`;
  qdelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'echo should-not-run > ../outputs/o', '/managers/held');
  await until('the held job in qstat', async () => (await sgeJobs(id)).length === 1);
  t.is((await request(server.url, 'DELETE', `/managers/held/jobs/${id}?job_id=${id}`)).text, 'OK');
  await until('Grid Engine to delete the held job', async () => (await sgeJobs(id)).length === 0, 10_000);
  t.is(await statusOf(server.url, id, '/managers/held'), 'lost');
});

sgeTest('cancel while running stops the Grid Engine job', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-cancel`;
  qdelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'echo started > ../outputs/o; sleep 120');
  await until('running', async () => (await statusOf(server.url, id)) === 'running');
  const before = await sgeJobs(id);
  t.true(['r', 't'].includes(before[0]?.state ?? ''), JSON.stringify(before));
  t.is((await request(server.url, 'PUT', `/jobs/${id}/cancel?job_id=${id}`)).text, 'OK');
  const doc = await waitForJob(server.url, id);
  t.is(doc.status, 'cancelled');
  await until('Grid Engine to delete the running job', async () => (await sgeJobs(id)).length === 0, 15_000);
  t.pass();
});

sgeTest('a job Grid Engine puts in error state (Eqw) fails with the error reason and is deleted', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-eqw`;
  qdelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'echo never', '/managers/held');
  await until('the held job in qstat', async () => (await sgeJobs(id)).length === 1);
  // Without its working directory (-wd) the job cannot start: Grid Engine sets it to Eqw.
  await fs.rm(path.join(server.root, 'staging-held', id, 'working'), { recursive: true });
  const [job] = await sgeJobs(id);
  await exec('qrls', [job!.id], { env: { ...process.env, ...SGE_ENV } });
  const doc = await waitForJob(server.url, id, '/managers/held', '', 30_000);
  t.is(doc.status, 'failed');
  t.log(doc.stderr);
  t.regex(doc.stderr, /Grid Engine put the job in error state Eqw: .*can't chdir/);
  await until('magnetar to delete the job in error state', async () => (await sgeJobs(id)).length === 0, 10_000);
  t.pass();
});

sgeTest('a job deleted behind magnetar\'s back (qdel) fails: the scheduler lost it, accounting says why', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-external`;
  qdelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'sleep 120');
  await until('running', async () => (await statusOf(server.url, id)) === 'running');
  const [job] = await sgeJobs(id);
  await exec('qdel', [job!.id], { env: { ...process.env, ...SGE_ENV } });
  const doc = await waitForJob(server.url, id, '', '', 30_000);
  t.is(doc.status, 'failed');
  t.log(doc.stderr);
  t.regex(doc.stderr, /the scheduler lost the job: Grid Engine no longer lists it(; Grid Engine accounting: failed=\d+.* exit_status=\d+)?/);
});

sgeTest('a job Grid Engine rejects (unknown queue) fails with qsub\'s message; the server keeps serving', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-bad`;
  await setupAndSubmit(server.url, id, 'echo never', '/managers/bad');
  const doc = await waitForJob(server.url, id, '/managers/bad');
  t.is(doc.status, 'failed');
  t.is(doc.returncode, 1);
  t.regex(doc.stderr, /Grid Engine did not accept the job: .*unknown queue "no_such.q"/);
  t.is((await request(server.url, 'GET', '/healthz')).status, 200);
  t.deepEqual(await sgeJobs(id), []);
});

sgeTest('kill -9 of the server mid-job: the Grid Engine jobs are re-attached after the restart, outputs intact', async (t) => {
  const { root, ini } = await restartableServerIni(t, ['job_plugin = GridEngine', 'job_resource_list = h_rt=600']);
  let server = await spawnServer(ini);
  t.teardown(() => server.kill('SIGKILL'));
  const long = `${RUN}-long`;
  const short = `${RUN}-short`;
  for (const id of [long, short]) qdelOnTeardown(t, id);
  await submitLongAndShort(server.url, long, short);
  const script = await fs.readFile(path.join(root, 'staging', long, 'command.sh'), 'utf8');
  t.true(script.includes('#$ -l h_rt=600\n'), 'job_Resource_List from job_managers.ini');

  await server.kill('SIGKILL');
  // "short" ends while no server watches it.
  await untilReturnCode(root, short);
  t.is((await sgeJobs(long))[0]?.state, 'r', 'the long job still runs in Grid Engine');

  server = await spawnServer(ini);
  await expectCopiesComplete(t, server.url, [long, short]);
  for (const id of [long, short]) {
    // Accounting records every run: each job ran once (not submitted again after the restart).
    let runs = 0;
    await until(`accounting of ${id}`, async () => {
      const acct = await exec('qacct', ['-j', `pulsar_${id}`], { env: { ...process.env, ...SGE_ENV } }).catch(() => ({ stdout: '' }));
      runs = (acct.stdout.match(/^jobnumber/gm) ?? []).length;
      return runs > 0;
    }, 10_000);
    t.is(runs, 1, `${id} ran once`);
  }
});
