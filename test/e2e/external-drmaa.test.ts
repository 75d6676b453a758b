import test, { type TestFn } from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { SGE_ENV, clusterTest } from '../helpers/cluster.js';
import { downloadOutput as download, request, qs, setupJob as setup, statusOf, waitForJob } from '../helpers/client.js';
import { makeRoot, managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';

// queued_external_drmaa against the real Grid Engine: jobs run as a real extra Unix user created
// here (tests run as root in CI; root may sudo without any sudoers entry).
const run = promisify(execFile);
const SCRIPTS = fileURLToPath(new URL('../../../scripts/', import.meta.url));
const CHOWN = path.join(SCRIPTS, 'chown-working-directory.sh');
const LAUNCH = path.join(SCRIPTS, 'drmaa-launch.sh');
const KILL = path.join(SCRIPTS, 'drmaa-kill.sh');
for (const [key, value] of Object.entries(SGE_ENV)) process.env[key] ??= value;
const sgeEnv = { ...process.env, ...SGE_ENV };

async function usersReason(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'these tests create Unix users and need root';
  try {
    await run('sudo', ['-n', 'true']);
    await run('useradd', ['--help']);
  } catch (error) {
    return `sudo or useradd is missing: ${(error as Error).message.split('\n')[0]}`;
  }
  // The helpers run from this checkout as the job's user: every directory above it must let others through.
  for (let dir = SCRIPTS; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (((await fs.stat(dir)).mode & 0o001) === 0) return `${dir} is not searchable by other users (chmod o+x), so the job's user cannot run the helper scripts of this checkout`;
  }
  return undefined;
}

async function externalTest(): Promise<TestFn> {
  const sge = await clusterTest('sge');
  const reason = await usersReason();
  if (reason === undefined) return sge;
  if (process.env['CI'] === 'true') {
    const failing = ((title: string) => test(title, (t) => t.fail(reason))) as unknown as TestFn;
    return Object.assign(failing, { serial: failing }) as TestFn;
  }
  console.log(`# skipping queued_external_drmaa tests: ${reason}`);
  return test.skip as unknown as TestFn;
}

const sgeTest = await externalTest();
const USER = `magtest${process.pid % 100000}`;
let userCreated = false;

test.before(async () => {
  if ((await usersReason()) !== undefined) return;
  await run('useradd', ['-m', '-U', '-s', '/bin/bash', USER]);
  userCreated = true;
});

test.after.always(async () => {
  if (!userCreated) return;
  await run('qdel', ['-u', USER], { env: sgeEnv }).catch(() => undefined);
  await run('userdel', ['-r', USER]).catch(() => undefined);
});

async function externalServer(allowedSubmitParams: string[] = ['user'], backendOptions: Record<string, string> = {}): Promise<TestServer> {
  const root = await makeRoot();
  // The job's user must reach its job directory.
  await fs.chmod(root, 0o755);
  return startTestServer({
    root,
    app: { allowedSubmitParams },
    managers: (r) => [managerConfig(r, { type: 'queued_external_drmaa', backendOptions, minPollingInterval: 0.2 })],
  });
}

async function submit(base: string, id: string, command: string, params: Record<string, unknown>): Promise<void> {
  const r = await request(base, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, params: JSON.stringify(params) })}`);
  if (r.text !== 'OK') throw new Error(`submit answered ${r.status}: ${r.text}`);
}

const until = (what: string, check: () => Promise<boolean>, timeoutMs = 30_000, everyMs = 50): Promise<void> =>
  waitUntil(what, check, timeoutMs, everyMs);

async function uid(name: string): Promise<number> {
  return Number((await run('id', ['-u', name])).stdout.trim());
}

/** Exit status and stderr of a command that is expected to fail. */
async function refused(file: string, args: string[], env: NodeJS.ProcessEnv = sgeEnv): Promise<{ code: number; stderr: string }> {
  try {
    await run(file, args, { env });
    return { code: 0, stderr: '' };
  } catch (error) {
    const e = error as { code?: number; stderr?: string };
    return { code: e.code ?? -1, stderr: e.stderr ?? '' };
  }
}

sgeTest('a job runs as the user the client names; its outputs are downloadable afterwards', async (t) => {
  const server = await externalServer();
  t.teardown(() => server.stop());
  const config = await setup(server.url, 'asuser');
  await submit(server.url, 'asuser', 'id -un > ../outputs/who; stat -c %U ../outputs/who > ../outputs/owner; echo hello; exit 7', { user: USER });
  const doc = await waitForJob(server.url, 'asuser', '', '', 60_000);
  t.is(doc.status, 'complete', doc.stderr);
  t.is(doc.returncode, 7);
  t.is(doc.job_stdout, 'hello\n');
  t.is(await download(server.url, 'asuser', 'who'), `${USER}\n`);
  t.is(await download(server.url, 'asuser', 'owner'), `${USER}\n`, 'its files belonged to the user while it ran');
  // Once it has ended, the directory is the server's again.
  const serverUid = process.getuid!();
  t.is((await fs.stat(path.join(config.outputs_directory, 'who'))).uid, serverUid);
  t.is((await fs.stat(config.job_directory)).uid, serverUid);
  const template = JSON.parse(await fs.readFile(path.join(config.job_directory, 'jt.json'), 'utf8'));
  t.is(template.remoteCommand, '/bin/bash');
  t.is(template.workingDirectory, await fs.realpath(config.working_directory));
});

sgeTest('the user is strictly checked: missing, not allow-listed, root, a system account, unknown, or malformed', async (t) => {
  const server = await externalServer();
  t.teardown(() => server.stop());
  const closed = await externalServer([]);
  t.teardown(() => closed.stop());
  const cases: [TestServer, string, Record<string, unknown>, RegExp][] = [
    [server, 'nouser', {}, /needs submit_params.user/],
    [closed, 'notallowed', { user: USER }, /needs submit_params.user/],
    [server, 'root', { user: 'root' }, /root or a system account/],
    [server, 'daemon', { user: 'daemon' }, /root or a system account/],
    [server, 'nobody', { user: 'nobody' }, /root or a system account/],
    [server, 'unknown', { user: 'nosuchuser_mg' }, /there is no user nosuchuser_mg/],
    [server, 'quoted', { user: `${USER}'; touch /tmp/pwned; '` }, /must be a user name/],
    [server, 'number', { user: 1001 }, /must be a user name/],
  ];
  for (const [srv, id, params] of cases) {
    await setup(srv.url, id);
    await submit(srv.url, id, 'touch ../outputs/ran', params);
  }
  for (const [srv, id, , reason] of cases) {
    const doc = await waitForJob(srv.url, id, '', '', 30_000);
    t.is(doc.status, 'failed', id);
    t.regex(doc.stderr, reason, id);
    t.false(doc.outputs_directory_contents.includes('ran'), id);
  }
  await t.throwsAsync(fs.access('/tmp/pwned'));
});

sgeTest('cancel of a running job goes through the kill helper as the user', async (t) => {
  const server = await externalServer();
  t.teardown(() => server.stop());
  const config = await setup(server.url, 'longjob');
  await submit(server.url, 'longjob', 'echo started > started; sleep 120; touch finished', { user: USER });
  await until('running', async () => (await statusOf(server.url, 'longjob')) === 'running');
  await until('the script to start', () => fs.access(path.join(config.working_directory, 'started')).then(() => true, () => false));
  t.is((await request(server.url, 'PUT', '/jobs/longjob/cancel?job_id=longjob')).text, 'OK');
  t.is((await waitForJob(server.url, 'longjob')).status, 'cancelled');
  await until('the user to have no job left', async () => !(await run('qstat', ['-u', USER], { env: sgeEnv })).stdout.includes('pulsar_lon'), 15_000, 200);
  await until('the directory to be the server\'s again', async () => (await fs.stat(config.job_directory)).uid === process.getuid!(), 15_000, 100);
  await t.throwsAsync(fs.access(path.join(config.working_directory, 'finished')));
});

sgeTest('the ownership helper refuses everything but a job directory directly under a staging root the caller owns', async (t) => {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const staging = path.join(root, 'staging');
  await fs.mkdir(path.join(staging, 'job1'), { recursive: true });
  await fs.mkdir(path.join(`${staging}2`, 'job1'), { recursive: true });
  await fs.symlink(path.join(`${staging}2`, 'job1'), path.join(staging, 'link'));
  const chown = (...args: string[]) => refused('sudo', ['-n', CHOWN, ...args]);
  const bad: [string[], RegExp][] = [
    [['--staging_root', staging, '--job_directory', path.join(`${staging}2`, 'job1'), '--user', USER], /not a job directory of the staging root/],
    [['--staging_root', staging, '--job_directory', path.join(staging, 'link'), '--user', USER], /symbolic links/],
    [['--staging_root', staging, '--job_directory', `${staging}/../staging2/job1`, '--user', USER], /symbolic links or \. and \.\./],
    [['--staging_root', staging, '--job_id', '../staging2', '--user', USER], /not a job id/],
    [['--staging_root', staging, '--job_id', 'job1', '--user', `${USER}'; id; '`], /not a valid user name/],
    [['--staging_root', staging, '--job_id', 'job1', '--user', 'root'], /root or a system account/],
    [['--staging_root', staging, '--job_id', 'job1', '--user', 'nobody'], /root or a system account/],
    [['--staging_root', staging, '--job_id', 'job1', '--user', 'nosuchuser_mg'], /does not exist/],
    [['--staging_root', '/', '--job_id', 'tmp', '--user', USER], /must not be \//],
    [['--staging_root', 'relative', '--job_id', 'job1', '--user', USER], /absolute path/],
    [['--staging_root', staging, '--job_id', 'job1', '--job_id', 'job1', '--user', USER], /given twice/],
    [['--staging_root', staging, '--job_id', 'job1', '--user', USER, '--restore'], /exactly one of --user and --restore/],
    [['--staging_root', staging, '--job_id', 'job1', '--shell', 'x'], /unknown argument/],
  ];
  for (const [args, reason] of bad) {
    const result = await chown(...args);
    t.is(result.code, 2, args.join(' '));
    t.regex(result.stderr, reason, args.join(' '));
  }
  // Only through sudo (it needs to know whom to give the directory back to).
  t.regex((await refused(CHOWN, ['--staging_root', staging, '--job_id', 'job1', '--restore'])).stderr, /through sudo/);
  // And what is allowed works, without following links out of the directory.
  const outside = path.join(root, 'outside');
  await fs.writeFile(outside, 'x');
  await fs.symlink(outside, path.join(staging, 'job1', 'escape'));
  t.is((await chown('--staging_root', staging, '--job_id', 'job1', '--user', USER)).code, 0);
  t.is((await fs.stat(path.join(staging, 'job1'))).uid, await uid(USER));
  t.is((await fs.stat(outside)).uid, 0, 'a symlink in the job directory is not followed');
  t.is((await chown('--staging_root', staging, '--job_directory', path.join(staging, 'job1'), '--restore')).code, 0);
  t.is((await fs.stat(path.join(staging, 'job1'))).uid, 0);
});

sgeTest('the launch and kill helpers refuse templates that leave their job directory, bad ids, and root', async (t) => {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  await fs.chmod(root, 0o755);
  const staging = path.join(root, 'staging');
  const job = path.join(staging, 'job1');
  await fs.mkdir(job, { recursive: true });
  const good = {
    remoteCommand: '/bin/bash',
    args: [path.join(job, 'command.sh')],
    jobName: 'pulsar_job1',
    outputPath: `:${job}/metadata/job_stdout`,
    errorPath: `:${job}/metadata/job_stderr`,
    workingDirectory: path.join(job, 'working'),
  };
  const env = { ...sgeEnv, MAGNETAR_NODE: process.execPath };
  const launch = async (template: object, args?: string[]) => {
    await fs.writeFile(path.join(job, 'jt.json'), JSON.stringify(template), { mode: 0o644 });
    return refused('sudo', ['-n', '-E', '-u', USER, LAUNCH, ...(args ?? ['--job_attributes', path.join(job, 'jt.json'), '--staging_root', staging])], env);
  };
  const cases: [object, RegExp][] = [
    [{ ...good, remoteCommand: '/bin/sh' }, /must run \/bin\/bash/],
    [{ ...good, args: ['/etc/passwd'] }, /job script is outside the job directory/],
    [{ ...good, args: [`${job}/../job2/command.sh`] }, /job script is outside the job directory/],
    [{ ...good, workingDirectory: `${staging}2/job1/working` }, /working directory is outside/],
    [{ ...good, outputPath: ':/tmp/elsewhere' }, /output path is outside/],
    [{ ...good, errorPath: `${job}/metadata/job_stderr` }, /error path must be ":<path>"/],
    [{ ...good, env: ['LD_PRELOAD=/tmp/x.so'] }, /may not set env/],
    [{ ...good, extra: 1 }, /malformed/],
  ];
  for (const [template, reason] of cases) {
    const result = await launch(template);
    t.is(result.code, 2, JSON.stringify(template));
    t.regex(result.stderr, reason, JSON.stringify(template));
  }
  t.regex((await launch(good, ['--job_attributes', '/etc/passwd', '--staging_root', staging])).stderr, /must be <staging root>\/<job id>\/jt.json|symbolic link/);
  t.regex((await launch(good, ['--job_attributes', path.join(job, 'jt.json'), '--staging_root', '/'])).stderr, /must not be the file system root/);
  t.regex((await launch(good, ['--job_attributes', path.join(job, 'jt.json')])).stderr, /--staging_root must be an absolute path/);
  t.regex((await refused(LAUNCH, ['--job_attributes', path.join(job, 'jt.json'), '--staging_root', staging], env)).stderr, /refusing to run as root/);
  const kill = (id: string) => refused('sudo', ['-n', '-E', '-u', USER, KILL, '--job_id', id], env);
  for (const id of ['1;id', '../1', '', '-1', '1 2']) {
    const result = await kill(id);
    t.is(result.code, 2, id);
    t.regex(result.stderr, /--job_id must be a DRM job id/, id);
  }
  // An id the DRM does not know is not an error for kill.
  t.is((await kill('999999')).code, 0);
});
