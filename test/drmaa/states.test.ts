import test from 'ava';
import { drmaaProcessEnvironment } from '../../src/drmaa/client.js';
import { JOB_PS, type JobPsName } from '../../src/drmaa/constants.js';
import type { ExitMessage } from '../../src/drmaa/protocol.js';
import { BackendError } from '../../src/errors.js';
import { DrmaaPollError, checkClientNativeSpecification, jobTemplate, mapPollEntry, nativeSpecification } from '../../src/managers/drmaa.js';
import type { LaunchSpec } from '../../src/managers/backend.js';

const exited = (status: number): ExitMessage => ({ exited: true, exitStatus: status, signaled: false, termSignal: null, aborted: false, rusage: {} });

test('every DRMAA program state is mapped', (t) => {
  const expected: Record<JobPsName, 'queued' | 'running' | 'exited'> = {
    UNDETERMINED: 'queued',
    QUEUED_ACTIVE: 'queued',
    SYSTEM_ON_HOLD: 'queued',
    USER_ON_HOLD: 'queued',
    USER_SYSTEM_ON_HOLD: 'queued',
    RUNNING: 'running',
    SYSTEM_SUSPENDED: 'running',
    USER_SUSPENDED: 'running',
    USER_SYSTEM_SUSPENDED: 'running',
    DONE: 'exited',
    FAILED: 'exited',
  };
  for (const [name, state] of Object.entries(expected)) {
    t.is(mapPollEntry({ ps: JOB_PS[name as JobPsName] }).state, state, name);
  }
});

test('DONE carries the exit status; FAILED is a failure with a reason, never a plain exit', (t) => {
  t.deepEqual(mapPollEntry({ ps: JOB_PS.DONE, exit: exited(3) }), { state: 'exited', exitCode: 3 });
  const signaled = mapPollEntry({ ps: JOB_PS.DONE, exit: { ...exited(0), exited: false, exitStatus: null, signaled: true, termSignal: 'SIGKILL' } });
  t.deepEqual(signaled, { state: 'exited', exitCode: null, reason: 'the job was killed by signal SIGKILL' });
  // Another session's job: the return_code file decides.
  t.deepEqual(mapPollEntry({ ps: JOB_PS.DONE, reapError: { code: 'INVALID_JOB', message: 'x' } }), { state: 'exited', exitCode: null });
  // Not final yet.
  t.deepEqual(mapPollEntry({ ps: JOB_PS.DONE, reapError: { code: 'EXIT_TIMEOUT', message: 'x' } }), { state: 'running' });

  const aborted = mapPollEntry({ ps: JOB_PS.FAILED, exit: { ...exited(0), exited: false, exitStatus: null, aborted: true } });
  t.is(aborted.state, 'exited');
  t.regex((aborted as { reason: string }).reason, /^the DRM reports the job FAILED: it was aborted/);
  const failedWithStatus = mapPollEntry({ ps: JOB_PS.FAILED, exit: exited(9) });
  t.deepEqual(failedWithStatus, { state: 'exited', exitCode: 9, reason: 'the DRM reports the job FAILED (exit status 9)' });
  const stuck = mapPollEntry({ ps: JOB_PS.FAILED, reapError: { code: 'EXIT_TIMEOUT', message: 'the job has not ended yet' } });
  t.deepEqual(stuck, { state: 'exited', exitCode: null, reason: 'the DRM reports the job FAILED (the job has not ended yet)' });
});

test('a job the DRM does not know is gone; any other error makes the poll retry', (t) => {
  t.deepEqual(mapPollEntry({ error: { code: 'INVALID_JOB', message: 'gone' } }), { state: 'gone' });
  const down = t.throws(() => mapPollEntry({ error: { code: 'DRM_COMMUNICATION_FAILURE', message: 'qmaster down' } }), { instanceOf: DrmaaPollError, message: 'qmaster down' });
  t.is(down?.code, 'MAG_ERR_BACKEND_UNREACHABLE');
});

test('client native specifications: resource requests only', (t) => {
  for (const ok of ['-q all.q', '-l h_rt=01:00:00,h_vmem=4G -pe smp 4', '-P proj -A acct -p -100', '-soft -l arch=lx-amd64 -hard -q *@vm', '-R y -binding linear:2']) {
    t.notThrows(() => checkClientNativeSpecification(ok), ok);
  }
  const refused: [string, RegExp][] = [
    ['-o /etc/cron.d/x', /option -o is not allowed/],
    ['-l /etc/cron.d/x', /contain "\/etc\/cron.d\/x"/],
    ['-o x', /option -o is not allowed/],
    ['-V', /option -V is not allowed/],
    ['-v SECRET=1', /option -v is not allowed/],
    ['-S /bin/sh', /option -S is not allowed/],
    ['-wd x', /option -wd is not allowed/],
    ['-@ file', /option -@ is not allowed|contain/],
    ['-l h_rt=1 $(id)', /contain/],
    ["-q 'all.q'", /contain/],
    ['-q all.q\n-o x', /contain/],
    ['all.q', /must start with an option/],
    ['-' + 'l'.repeat(2000), /longer than/],
  ];
  for (const [spec, reason] of refused) {
    const error = t.throws(() => checkClientNativeSpecification(spec), { instanceOf: BackendError, message: reason }, spec);
    t.is(error?.code, 'MAG_ERR_BACKEND_SUBMIT', 'the job fails: the backend refuses it');
  }
});

test('the manager\'s native specification wins over the client\'s, which is checked', (t) => {
  t.is(nativeSpecification('-q admin.q', { native_specification: '-o /x' }), '-q admin.q');
  t.is(nativeSpecification(undefined, { native_specification: '-q all.q' }), '-q all.q');
  t.is(nativeSpecification(undefined, { submit_native_specification: '-q all.q' }), '-q all.q');
  t.is(nativeSpecification(undefined, {}), undefined);
  t.throws(() => nativeSpecification(undefined, { native_specification: '-V' }), { message: /-V is not allowed/ });
  t.throws(() => nativeSpecification(undefined, { native_specification: ['-q'] }), { message: /must be a string/ });
});

test('the job template runs the script with bash, in the working directory, output to the metadata files', (t) => {
  const spec: LaunchSpec = {
    jobId: 'j1',
    jobName: 'pulsar_j1',
    jobDirectory: '/s/j1',
    scriptPath: '/s/j1/command.sh',
    pidPath: '/s/j1/pid',
    returnCodePath: '/s/j1/return_code',
    workingDirectory: '/s/j1/working',
    stdoutPath: '/s/j1/metadata/job_stdout',
    stderrPath: '/s/j1/metadata/job_stderr',
    env: {},
    submitParams: {},
  };
  t.deepEqual(jobTemplate(spec, '-q all.q'), {
    remoteCommand: '/bin/bash',
    args: ['/s/j1/command.sh'],
    jobName: 'pulsar_j1',
    outputPath: ':/s/j1/metadata/job_stdout',
    errorPath: ':/s/j1/metadata/job_stderr',
    workingDirectory: '/s/j1/working',
    nativeSpecification: '-q all.q',
  });
  t.false('nativeSpecification' in jobTemplate(spec, undefined));
});

test('the helper environment: DRM variables and the static TLS tunable, no server secrets', (t) => {
  const env = drmaaProcessEnvironment({
    PATH: '/usr/bin',
    SGE_ROOT: '/var/lib/gridengine',
    SGE_CELL: 'default',
    DRMAA_LIBRARY_PATH: '/lib/libdrmaa.so',
    MAGNETAR_PRIVATE_TOKEN: 'secret',
    AWS_SECRET_ACCESS_KEY: 'secret',
  });
  t.deepEqual(env, {
    PATH: '/usr/bin',
    SGE_ROOT: '/var/lib/gridengine',
    SGE_CELL: 'default',
    DRMAA_LIBRARY_PATH: '/lib/libdrmaa.so',
    GLIBC_TUNABLES: 'glibc.rtld.optional_static_tls=4096',
  });
  t.is(drmaaProcessEnvironment({ GLIBC_TUNABLES: 'glibc.malloc.check=3' })['GLIBC_TUNABLES'], 'glibc.malloc.check=3:glibc.rtld.optional_static_tls=4096');
  t.is(drmaaProcessEnvironment({ GLIBC_TUNABLES: 'glibc.rtld.optional_static_tls=8192' })['GLIBC_TUNABLES'], 'glibc.rtld.optional_static_tls=8192');
});
