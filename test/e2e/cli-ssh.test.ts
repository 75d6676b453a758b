import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ManagerConfig } from '../../src/config/types.js';
import { createLogger } from '../../src/log.js';
import { CliBackend } from '../../src/managers/cli/cli-backend.js';
import { parseCliOptions } from '../../src/managers/cli/options.js';
import {
  cliManager,
  outputText,
  scancelOnTeardown,
  setupAndSubmit,
  slurmJobs,
  statusOf,
  submitAndTimeStart,
  until,
} from '../helpers/cli-e2e.js';
import { clusterTest } from '../helpers/cluster.js';
import { request, waitForJob } from '../helpers/client.js';
import { startTestServer } from '../helpers/server.js';

// queued_cli with the SecureShell plugin: ssh to the sshd of scripts/ci/start-sshd.sh
// (root@127.0.0.1:2222, strict host key checking against its known_hosts), submitting to the
// real Slurm of scripts/ci/start-slurm.sh.

const slurm = await clusterTest('slurm');
const sshTest = slurm === test ? await clusterTest('sshd') : slurm;
const RUN = `ss${Date.now().toString(36)}${process.pid}`;

const KEY = process.env['MAGNETAR_TEST_SSH_KEY'] ?? '/tmp/magnetar-sshd/client_ed25519';
const KNOWN_HOSTS = process.env['MAGNETAR_TEST_SSH_KNOWN_HOSTS'] ?? path.join(path.dirname(KEY), 'known_hosts');
const PORT = process.env['MAGNETAR_TEST_SSH_PORT'] ?? '2222';
const HOST = process.env['MAGNETAR_TEST_SSH_HOST'] ?? '127.0.0.1';
const USER = process.env['MAGNETAR_TEST_SSH_USER'] ?? os.userInfo().username;

function sshOptions(extra: Record<string, string> = {}): Record<string, string> {
  return {
    job_plugin: 'Slurm',
    shell_plugin: 'SecureShell',
    shell_hostname: HOST,
    shell_port: PORT,
    shell_username: USER,
    shell_private_key: KEY,
    shell_known_hosts_file: KNOWN_HOSTS,
    shell_connect_timeout: '10',
    ...extra,
  };
}

function sshManager(root: string, name: string, extra: Record<string, string> = {}): ManagerConfig {
  return cliManager(root, name, sshOptions(extra));
}

sshTest('queued_cli over SecureShell submits to Slurm: outputs and exit code; submit→running measured', async (t) => {
  const server = await startTestServer({ managers: (root) => [sshManager(root, '_default_')] });
  t.teardown(() => server.stop());
  const id = `${RUN}-ok`;
  scancelOnTeardown(t, id);
  await submitAndTimeStart(t, server.url, id, 'echo hi > ../outputs/o; echo over-ssh; exit 3', 'Slurm over SecureShell', 'Slurm (SecureShell)', {
    input: false,
  });
  const doc = await waitForJob(server.url, id, '', '', 60_000);
  t.is(doc.status, 'complete', JSON.stringify(doc));
  t.is(doc.returncode, 3);
  t.is(doc.job_stdout, 'over-ssh\n');
  t.is(await outputText(server.url, id, 'o'), 'hi\n');
  t.is((await slurmJobs(id)).length, 1);
});

sshTest('cancel over SecureShell stops the running Slurm job', async (t) => {
  const server = await startTestServer({ managers: (root) => [sshManager(root, '_default_')] });
  t.teardown(() => server.stop());
  const id = `${RUN}-cancel`;
  scancelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'sleep 120', '', { input: false });
  await until('running', async () => (await statusOf(server.url, id)) === 'running');
  t.is((await request(server.url, 'PUT', `/jobs/${id}/cancel?job_id=${id}`)).text, 'OK');
  t.is((await waitForJob(server.url, id)).status, 'cancelled');
  await until('Slurm to cancel the job', async () => {
    const jobs = await slurmJobs(id);
    return jobs.length === 0 || jobs[0]!.state === 'CA';
  }, 15_000);
  t.pass();
});

sshTest('an unknown host key fails the submission (StrictHostKeyChecking=yes) with ssh\'s message; the server keeps serving', async (t) => {
  const server = await startTestServer({
    managers: (root) => [sshManager(root, '_default_', { shell_known_hosts_file: path.join(root, 'empty_known_hosts') })],
  });
  t.teardown(() => server.stop());
  await fs.writeFile(path.join(server.root, 'empty_known_hosts'), '');
  const id = `${RUN}-hostkey`;
  scancelOnTeardown(t, id);
  await setupAndSubmit(server.url, id, 'echo never', '', { input: false });
  const doc = await waitForJob(server.url, id);
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /SecureShell could not run sbatch on [^ ]+@127\.0\.0\.1:\d+: .*Host key verification failed/s);
  t.deepEqual(await slurmJobs(id), []);
  t.is((await request(server.url, 'GET', '/healthz')).status, 200);
});

sshTest('hostile arguments reach the remote side as literal single words', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-ssh-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const manager = sshManager(root, 'quoting');
  const ctx = { log: createLogger({ level: 'silent' }), serverEnv: process.env, configFile: 'test' };
  const backend = new CliBackend(manager, parseCliOptions(manager, ctx), ctx);
  t.teardown(() => backend.close());
  const canary = path.join(root, 'canary');
  const hostile = [`x'; touch ${canary} #`, '$(touch ' + canary + ')', '`touch ' + canary + '`', '*', '"; touch ' + canary + '; "', 'a b\tc', '', '-n', "'", '\\'];
  const result = await backend.run({ argv: ['printf', '[%s]\\n', ...hostile] });
  t.is(result.code, 0, result.stderr);
  t.is(result.stdout, hostile.map((h) => `[${h}]\n`).join(''));
  await t.throwsAsync(fs.access(canary), undefined, 'nothing was executed');
  // Standard input files become a quoted redirect on the remote side (bsub < script).
  const input = path.join(root, "in put's file");
  await fs.writeFile(input, 'from stdin\n');
  const piped = await backend.run({ argv: ['cat'], stdinFile: input });
  t.is(piped.stdout, 'from stdin\n');
});
