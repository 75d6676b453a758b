import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import type { ManagerConfig } from '../../src/config/types.js';
import { downloadOutput, request, qs, statusOf, waitForJob } from './client.js';

export { statusOf };
/** The text of the output file `name` of job `id`. */
export const outputText = downloadOutput;
import { writeServerIni } from './process.js';
import { makeRoot, managerConfig } from './server.js';
import { waitUntil } from './wait.js';

// Scaffolding shared by the queued_cli end-to-end tests against real schedulers (cli-*.test.ts).

export const exec = promisify(execFile);

/** A queued_cli manager named `name`, staging in `<root>/staging-<name>`, polling every 0.25 s. */
export function cliManager(root: string, name: string, backendOptions: Record<string, string>): ManagerConfig {
  return managerConfig(root, {
    name,
    type: 'queued_cli',
    stagingDirectory: path.join(root, `staging-${name}`),
    minPollingInterval: 0.25,
    backendOptions,
  });
}

/**
 * Sets a job up, uploads the input `in.txt` (`input of <id>`; unless `input` is false) and
 * submits `command`; returns when the submission was sent.
 */
export async function setupAndSubmit(
  base: string,
  id: string,
  command: string,
  prefix = '',
  { input = true }: { input?: boolean } = {},
): Promise<{ submittedAt: number }> {
  const setup = await request(base, 'POST', `${prefix}/jobs?${qs({ job_id: id })}`);
  if (setup.status !== 200) throw new Error(setup.text);
  if (input) {
    const up = await request(base, 'POST', `${prefix}/jobs/${id}/files?${qs({ job_id: id, name: 'in.txt', type: 'input' })}`, { body: `input of ${id}\n` });
    if (up.status !== 200) throw new Error(up.text);
  }
  const submittedAt = Date.now();
  const submit = await request(base, 'POST', `${prefix}/jobs/${id}/submit?${qs({ job_id: id, command_line: command })}`);
  if (submit.text !== 'OK') throw new Error(`submit answered ${submit.status}: ${submit.text}`);
  return { submittedAt };
}

export const until = (what: string, check: () => Promise<boolean>, timeoutMs = 40_000): Promise<void> => waitUntil(what, check, timeoutMs);

/**
 * Submits `command` (setupAndSubmit), waits until the job has left `queued` and logs the time
 * from submission to then as `<label> submit→running` (also on the console, with `consoleLabel`).
 */
export async function submitAndTimeStart(
  t: ExecutionContext,
  base: string,
  id: string,
  command: string,
  label: string,
  consoleLabel: string,
  options: { input?: boolean } = {},
): Promise<void> {
  const { submittedAt } = await setupAndSubmit(base, id, command, '', options);
  await until('running', async () => (await statusOf(base, id)) !== 'queued');
  const toRunning = Date.now() - submittedAt;
  t.log(`${label} submit→running: ${toRunning} ms`);
  console.log(`# ${consoleLabel} submit→running: ${toRunning} ms`);
}

/** Slurm's view of the jobs named `pulsar_<id>` (all states, for MinJobAge after they end). */
export async function slurmJobs(id: string): Promise<{ id: string; state: string }[]> {
  const { stdout } = await exec('squeue', ['-h', '-a', '-t', 'all', '-n', `pulsar_${id}`, '-o', '%A %t']);
  return stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const [jobId = '', state = ''] = l.trim().split(/\s+/);
      return { id: jobId, state };
    });
}

/** Teardown: no test leaves a job behind in the shared cluster. */
export function scancelOnTeardown(t: ExecutionContext, id: string): void {
  t.teardown(async () => {
    await exec('scancel', ['-n', `pulsar_${id}`]).catch(() => undefined);
  });
}

/**
 * A server ini (in a fresh root, removed at teardown) whose `_default_` manager is queued_cli with
 * `managerLines` and a 0.25 s polling interval, for tests that kill and restart the server process.
 */
export async function restartableServerIni(t: ExecutionContext, managerLines: string[]): Promise<{ root: string; ini: string }> {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  await fs.writeFile(
    path.join(root, 'job_managers.ini'),
    ['[manager:_default_]', 'type = queued_cli', ...managerLines, 'min_polling_interval = 0.25', ''].join('\n'),
  );
  const ini = await writeServerIni(root, [
    `staging_directory = ${root}/staging`,
    `persistence_directory = ${root}/persisted`,
    `job_managers_config = ${root}/job_managers.ini`,
  ]);
  return { root, ini };
}

/**
 * Submits a long (8 s) and a short (3 s) job that copy their input to `out.txt` and print their id,
 * and waits until both run.
 */
export async function submitLongAndShort(base: string, long: string, short: string): Promise<void> {
  const copy = (id: string, delay: number): string => `sleep ${delay}; cat ../inputs/in.txt > ../outputs/out.txt; echo ${id}`;
  await setupAndSubmit(base, long, copy(long, 8));
  await setupAndSubmit(base, short, copy(short, 3));
  await until('both running', async () => (await statusOf(base, long)) === 'running' && (await statusOf(base, short)) === 'running');
}

/** Waits (with the server down) until job `id` in `<root>/staging` has written its return code. */
export async function untilReturnCode(root: string, id: string): Promise<void> {
  await until('short to finish while the server is down', async () =>
    fs.access(path.join(root, 'staging', id, 'return_code')).then(() => true, () => false),
  );
}

/**
 * After a restart: each of `ids` (submitted by submitLongAndShort) completes with exit code 0, its
 * id on stdout and its input in `out.txt`; `more` adds checks per job.
 */
export async function expectCopiesComplete(
  t: ExecutionContext,
  base: string,
  ids: readonly string[],
  more: (id: string) => Promise<void> = async () => undefined,
): Promise<void> {
  for (const id of ids) {
    const doc = await waitForJob(base, id, '', '', 40_000);
    t.is(doc.status, 'complete', `${id}: ${JSON.stringify(doc)}`);
    t.is(doc.returncode, 0, id);
    t.is(doc.job_stdout, `${id}\n`, id);
    t.is(await outputText(base, id, 'out.txt'), `input of ${id}\n`, id);
    await more(id);
  }
}
