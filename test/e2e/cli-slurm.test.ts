import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { ManagerConfig } from '../../src/config/types.js';
import {
  cliManager,
  exec,
  expectCopiesComplete,
  outputText,
  restartableServerIni,
  scancelOnTeardown,
  setupAndSubmit,
  slurmJobs,
  statusOf,
  submitAndTimeStart,
  submitLongAndShort,
  until,
  untilReturnCode,
} from '../helpers/cli-e2e.js';
import { clusterTest } from '../helpers/cluster.js';
import { request, waitForJob } from '../helpers/client.js';
import { spawnServer } from '../helpers/process.js';
import { startTestServer } from '../helpers/server.js';

// queued_cli + Slurm plugin against the real single-node Slurm of scripts/ci/start-slurm.sh.

const slurmTest = await clusterTest('slurm');
/** Unique per run: Slurm remembers finished jobs (by name) for MinJobAge. */
const RUN = `sl${Date.now().toString(36)}${process.pid}`;

function slurmManager(root: string, name: string, options: Record<string, string>): ManagerConfig {
  return cliManager(root, name, { job_plugin: 'Slurm', ...options });
}

function managers(root: string): ManagerConfig[] {
  return [
    slurmManager(root, '_default_', {}),
    slurmManager(root, 'held', { job_plugin: 'slurm', job_hold: 'true' }),
    slurmManager(root, 'bad', { job_partition: 'no_such_partition' }),
  ];
}

slurmTest('a Slurm job runs: outputs, exit code 3, stdout/stderr files, #SBATCH header; submit→running measured', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-ok`;
  scancelOnTeardown(t, id);
  await submitAndTimeStart(
    t,
    server.url,
    id,
    'cat ../inputs/in.txt > ../outputs/o; echo hi >> ../outputs/o; echo to-stdout; echo to-stderr >&2; exit 3',
    'Slurm',
    'Slurm (LocalShell)',
  );

  const doc = await waitForJob(server.url, id, '', '', 60_000);
  t.is(doc.status, 'complete', JSON.stringify(doc));
  t.is(doc.returncode, 3);
  t.is(doc.job_stdout, 'to-stdout\n');
  t.is(doc.job_stderr, 'to-stderr\n');
  t.deepEqual(doc.outputs_directory_contents, ['o']);
  t.is(await outputText(server.url, id, 'o'), `input of ${id}\nhi\n`);

  const script = await fs.readFile(path.join(server.root, 'staging-_default_', id, 'command.sh'), 'utf8');
  const header = script.split('\n').slice(0, 5);
  t.deepEqual(header, [
    '#!/bin/bash',
    `#SBATCH -o ${path.join(server.root, 'staging-_default_', id, 'metadata', 'job_stdout')}`,
    `#SBATCH -e ${path.join(server.root, 'staging-_default_', id, 'metadata', 'job_stderr')}`,
    `#SBATCH -J pulsar_${id}`,
    `#SBATCH -D ${path.join(server.root, 'staging-_default_', id, 'working')}`,
  ]);
  // Slurm ran it once, and saw the script's non-zero exit as FAILED: magnetar still reports
  // complete with returncode 3 (the tool's exit status is Galaxy's to judge).
  const jobs = await slurmJobs(id);
  t.is(jobs.length, 1);
  t.true(['F', 'CG'].includes(jobs[0]!.state), JSON.stringify(jobs));
});

slurmTest('a job with exit 0 completes; several jobs are watched by one squeue per round', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const ids = [1, 2, 3].map((n) => `${RUN}-many${n}`);
  for (const id of ids) scancelOnTeardown(t, id);
  await Promise.all(ids.map((id) => setupAndSubmit(server.url, id, `echo ${id} > ../outputs/o`)));
  for (const id of ids) {
    const doc = await waitForJob(server.url, id, '', '', 60_000);
    t.is(doc.status, 'complete', JSON.stringify(doc));
    t.is(doc.returncode, 0);
    t.is(await outputText(server.url, id, 'o'), `${id}\n`);
  }
});

slurmTest('cancel while queued (held with job_hold) removes the job from Slurm', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-held`;
  scancelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'echo should-not-run > ../outputs/o', '/managers/held');
  await until('the held job in squeue', async () => (await slurmJobs(id)).length === 1);
  const [job] = await slurmJobs(id);
  t.is(job!.state, 'PD');
  // Held jobs stay queued.
  await new Promise((r) => setTimeout(r, 1000));
  t.is(await statusOf(server.url, id, '/managers/held'), 'queued');

  t.is((await request(server.url, 'PUT', `/managers/held/jobs/${id}/cancel?job_id=${id}`)).text, 'OK');
  const doc = await waitForJob(server.url, id, '/managers/held');
  t.is(doc.status, 'cancelled');
  await until('Slurm to cancel the held job', async () => {
    const jobs = await slurmJobs(id);
    return jobs.length === 0 || jobs[0]!.state === 'CA';
  }, 10_000);
  t.pass();
});

slurmTest('clean of a queued (held) job removes it from Slurm', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-heldclean`;
  scancelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'echo should-not-run > ../outputs/o', '/managers/held');
  await until('the held job in squeue', async () => (await slurmJobs(id)).length === 1);
  t.is((await request(server.url, 'DELETE', `/managers/held/jobs/${id}?job_id=${id}`)).text, 'OK');
  await until('Slurm to cancel the held job', async () => {
    const jobs = await slurmJobs(id);
    return jobs.length === 0 || jobs[0]!.state === 'CA';
  }, 10_000);
  t.is(await statusOf(server.url, id, '/managers/held'), 'lost');
});

slurmTest('cancel while running stops the Slurm job', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-cancel`;
  scancelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'echo started > ../outputs/o; sleep 120');
  await until('running', async () => (await statusOf(server.url, id)) === 'running');
  const before = await slurmJobs(id);
  t.true(['R', 'CF'].includes(before[0]?.state ?? ''), JSON.stringify(before));
  t.is((await request(server.url, 'PUT', `/jobs/${id}/cancel?job_id=${id}`)).text, 'OK');
  const doc = await waitForJob(server.url, id);
  t.is(doc.status, 'cancelled');
  await until('Slurm to cancel the running job', async () => {
    const jobs = await slurmJobs(id);
    return jobs.length === 0 || jobs[0]!.state === 'CA';
  }, 15_000);
  t.pass();
});

slurmTest('a job cancelled behind magnetar\'s back (scancel) fails with Slurm\'s account of it', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-external`;
  scancelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'sleep 120');
  await until('running', async () => (await statusOf(server.url, id)) === 'running');
  await exec('scancel', ['-n', `pulsar_${id}`]);
  const doc = await waitForJob(server.url, id, '', '', 30_000);
  t.is(doc.status, 'failed');
  t.log(doc.stderr);
  t.regex(doc.stderr, /Slurm ended the job \(state CA\); Slurm reports JobState=CANCELLED.*ExitCode=\d+:\d+/);
});

slurmTest('a job Slurm rejects (bad partition) fails with sbatch\'s message; the server keeps serving', async (t) => {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  const id = `${RUN}-bad`;
  await setupAndSubmit(server.url, id, 'echo never', '/managers/bad');
  const doc = await waitForJob(server.url, id, '/managers/bad');
  t.is(doc.status, 'failed');
  t.is(doc.returncode, 1);
  t.regex(doc.stderr, /Slurm did not accept the job: .*invalid partition/i);
  t.is((await request(server.url, 'GET', '/healthz')).status, 200);
  t.deepEqual(await slurmJobs(id), []);
});

slurmTest('kill -9 of the server mid-job: the Slurm jobs are re-attached after the restart, outputs intact', async (t) => {
  const { root, ini } = await restartableServerIni(t, ['job_plugin = Slurm', 'job_time = 10']);
  let server = await spawnServer(ini);
  t.teardown(() => server.kill('SIGKILL'));
  const long = `${RUN}-long`;
  const short = `${RUN}-short`;
  for (const id of [long, short]) scancelOnTeardown(t, id);
  await submitLongAndShort(server.url, long, short);
  const script = await fs.readFile(path.join(root, 'staging', long, 'command.sh'), 'utf8');
  t.true(script.includes('#SBATCH -t 10\n'), 'job_time from job_managers.ini');

  await server.kill('SIGKILL');
  // "short" ends while no server watches it.
  await untilReturnCode(root, short);
  t.is((await slurmJobs(long))[0]?.state, 'R', 'the long job still runs in Slurm');

  server = await spawnServer(ini);
  await expectCopiesComplete(t, server.url, [long, short], async (id) => {
    t.is((await slurmJobs(id)).length, 1, `${id} was submitted once`);
  });
});
