import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { ManagerConfig } from '../../src/config/types.js';
import { BackendError, ConfigError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import type { Backend, LaunchSpec } from '../../src/managers/backend.js';
import { createCondorBackend, type CondorBackendOptions } from '../../src/managers/condor/backend.js';
import { condorQArguments, parseCondorQ } from '../../src/managers/condor/queue.js';
import { buildSubmitDescription, parseClusterId } from '../../src/managers/condor/submit-description.js';
import { parseUserLog, submittedCluster } from '../../src/managers/condor/user-log.js';
import type { BackendContext } from '../../src/managers/context.js';
import { createBackend } from '../../src/managers/registry.js';
import { managerConfig } from '../helpers/server.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/condor/', import.meta.url));
const fixture = (name: string): Promise<string> => fs.readFile(path.join(FIXTURES, name), 'utf8');

// ------------------------------------------------------------------------------------------------
// Recorded outputs of the HTCondor tools (HTCondor 10.x/23.x on a single-node pool).

const SUBMIT_OK = (cluster: number): string => `Submitting job(s).\n1 job(s) submitted to cluster ${cluster}.\n`;
const SUBMIT_PARSE_ERROR = '\nERROR: on Line 5 of submit file: \nERROR: Failed to parse command file (line 5).\n';
const SUBMIT_NO_SCHEDD = '\nERROR: Can\'t find address of local schedd\n';
const Q_UNREACHABLE =
  '\n-- Failed to fetch ads from: <127.0.0.1:9618?addrs=127.0.0.1-9618&alias=submit.example.org&noUDP&sock=schedd_1563_e7a1> : submit.example.org\nCEDAR:6001:Failed to connect to <127.0.0.1:9618?addrs=127.0.0.1-9618&alias=submit.example.org&noUDP&sock=schedd_1563_e7a1>\n';
const RM_OK = (cluster: string): string => `All jobs in cluster ${cluster} have been marked for removal\n`;
const RM_UNKNOWN = (cluster: string): string => `Couldn't find/remove all jobs in cluster ${cluster}\n`;

/** A submit event as the schedd writes it when condor_submit succeeds. */
const SUBMIT_EVENT = (cluster: number | string): string =>
  `000 (${String(cluster).padStart(3, '0')}.000.000) 2024-05-02 14:11:36 Job submitted from host: <10.0.0.1:9618?addrs=10.0.0.1-9618&alias=submit.example.org&noUDP&sock=schedd_1563_e7a1>\n...\n`;
const EXECUTE_EVENT = (cluster: string): string =>
  `001 (${cluster}.000.000) 2024-05-02 14:11:41 Job executing on host: <10.0.0.2:9618?addrs=10.0.0.2-9618&alias=node1.example.org&noUDP&sock=startd_1471_2a7e>\n\tSlotName: slot1_1@node1.example.org\n\tCpus = 1\n\tMemory = 1024\n...\n`;
const TERMINATED_EVENT = (cluster: string, value: number): string =>
  `005 (${cluster}.000.000) 2024-05-02 14:11:53 Job terminated.\n\t(1) Normal termination (return value ${value})\n\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n\t0  -  Run Bytes Sent By Job\n...\n`;
const ABORTED_EVENT = (cluster: string): string => `009 (${cluster}.000.000) 2024-05-02 14:50:20 Job was aborted.\n\tvia condor_rm (by user galaxy)\n...\n`;

// ------------------------------------------------------------------------------------------------
// Fake HTCondor: shell scripts that record how they were called and print recorded answers.

interface FakeCondor {
  readonly dir: string;
  readonly bin: string;
  /** Each call: the tool name, its working directory and its arguments. */
  calls(): Promise<Array<{ tool: string; cwd: string; args: string[] }>>;
  /** What the next calls of `tool` print (stdout, stderr) and exit with. */
  answer(tool: 'condor_submit' | 'condor_q' | 'condor_rm', stdout: string, rc?: number, stderr?: string): Promise<void>;
  /** The environment condor_submit ran with. */
  submitEnv(): Promise<Record<string, string>>;
}

async function tempDir(t: ExecutionContext, prefix: string): Promise<string> {
  const dir = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), prefix)));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function fakeCondor(t: ExecutionContext): Promise<FakeCondor> {
  const dir = await tempDir(t, 'magnetar-condor-fake-');
  const bin = path.join(dir, 'bin');
  await fs.mkdir(bin);
  const record = (tool: string): string =>
    `{ printf '\\036%s\\037%s\\n' ${tool} "$PWD"; for a in "$@"; do printf '\\037%s\\n' "$a"; done; } >> '${dir}/calls'`;
  const reply = (tool: string): string =>
    `cat '${dir}/${tool}.out' 2>/dev/null; cat '${dir}/${tool}.err' >&2 2>/dev/null; exit "$(cat '${dir}/${tool}.rc' 2>/dev/null || echo 0)"`;
  // condor_submit also plays the schedd: a successful submission writes the submit event to the log.
  await fs.writeFile(
    path.join(bin, 'condor_submit'),
    `#!/bin/sh
${record('condor_submit')}
env > '${dir}/submit.env'
rc="$(cat '${dir}/condor_submit.rc' 2>/dev/null || echo 0)"
if [ "$rc" = 0 ] && [ ! -f '${dir}/condor_submit.out' ]; then
  cluster=$(cat '${dir}/cluster' 2>/dev/null || echo 8135)
  echo $((cluster + 1)) > '${dir}/cluster'
  log=$(sed -n 's/^log = //p' "$1")
  printf '000 (%03d.000.000) 2024-05-02 14:11:36 Job submitted from host: <10.0.0.1:9618?addrs=10.0.0.1-9618&alias=submit.example.org&noUDP&sock=schedd_1563_e7a1>\\n...\\n' "$cluster" >> "$log"
  printf 'Submitting job(s).\\n1 job(s) submitted to cluster %s.\\n' "$cluster"
  exit 0
fi
${reply('condor_submit')}
`,
    { mode: 0o755 },
  );
  for (const tool of ['condor_q', 'condor_rm']) {
    await fs.writeFile(path.join(bin, tool), `#!/bin/sh\n${record(tool)}\n${reply(tool)}\n`, { mode: 0o755 });
  }
  return {
    dir,
    bin,
    async calls() {
      const text = await fs.readFile(path.join(dir, 'calls'), 'utf8').catch(() => '');
      return text
        .split('\x1e')
        .filter((chunk) => chunk !== '')
        .map((chunk) => {
          const [head, ...args] = chunk.split('\n\x1f');
          const [tool, cwd] = (head ?? '').split('\x1f');
          return { tool: tool ?? '', cwd: (cwd ?? '').replace(/\n$/, ''), args: args.map((a) => a.replace(/\n$/, '')) };
        });
    },
    async answer(tool, stdout, rc = 0, stderr = '') {
      await fs.writeFile(path.join(dir, `${tool}.out`), stdout);
      await fs.writeFile(path.join(dir, `${tool}.err`), stderr);
      await fs.writeFile(path.join(dir, `${tool}.rc`), String(rc));
    },
    async submitEnv() {
      const text = await fs.readFile(path.join(dir, 'submit.env'), 'utf8');
      return Object.fromEntries(text.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    },
  };
}

interface Setup {
  readonly fake: FakeCondor;
  readonly backend: Backend;
  readonly logLines: string[];
  spec(jobId?: string, submitParams?: Record<string, unknown>): Promise<LaunchSpec>;
}

const SERVER_ENV = {
  PATH: '/usr/bin:/bin',
  HOME: '/home/galaxy',
  CONDOR_CONFIG: '/etc/condor/condor_config',
  _CONDOR_SCHEDD_HOST: 'submit.example.org',
  MAGNETAR_SECRET: 'must-not-reach-jobs',
};

function condorManager(overrides: Partial<ManagerConfig> = {}): ManagerConfig {
  return managerConfig('/srv', { name: 'condor', type: 'queued_condor', minPollingInterval: 0.05, ...overrides });
}

function context(logLines: string[] = []): BackendContext {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logLines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
      cb();
    },
  });
  return { log: createLogger({ level: 'debug', destination: sink }), serverEnv: SERVER_ENV, configFile: 'job_managers.ini' };
}

async function setup(t: ExecutionContext, manager: Partial<ManagerConfig> = {}, options: CondorBackendOptions = {}): Promise<Setup> {
  const fake = await fakeCondor(t);
  const logLines: string[] = [];
  const backend = createCondorBackend(condorManager(manager), context(logLines), {
    commands: { condorSubmit: path.join(fake.bin, 'condor_submit'), condorQ: path.join(fake.bin, 'condor_q'), condorRm: path.join(fake.bin, 'condor_rm') },
    ...options,
  });
  t.teardown(() => backend.close());
  const staging = await tempDir(t, 'magnetar-condor-jobs-');
  let next = 1;
  return {
    fake,
    backend,
    logLines,
    async spec(jobId = String(next++), submitParams = {}) {
      const jobDirectory = path.join(staging, jobId);
      for (const sub of ['working', 'metadata']) await fs.mkdir(path.join(jobDirectory, sub), { recursive: true });
      return {
        jobId,
        jobName: `pulsar_${jobId}`,
        jobDirectory,
        scriptPath: path.join(jobDirectory, 'command.sh'),
        pidPath: path.join(jobDirectory, 'pid'),
        returnCodePath: path.join(jobDirectory, 'return_code'),
        workingDirectory: path.join(jobDirectory, 'working'),
        stdoutPath: path.join(jobDirectory, 'metadata', 'job_stdout'),
        stderrPath: path.join(jobDirectory, 'metadata', 'job_stderr'),
        env: { PATH: '/usr/bin:/bin', HOME: '/home/galaxy', TMPDIR: '/tmp', LC_CTYPE: 'C.UTF-8' },
        submitParams,
      };
    },
  };
}

const logOf = (spec: LaunchSpec): string => path.join(spec.jobDirectory, 'job_condor.log');

async function until(check: () => boolean): Promise<void> {
  while (!check()) await sleep(20);
}

async function within<T>(promise: Promise<T>, ms = 5000): Promise<T> {
  return Promise.race([promise, sleep(ms).then(() => Promise.reject(new Error(`not settled within ${ms} ms`)))]);
}

// ------------------------------------------------------------------------------------------------
// Submit description

test('the submit description: defaults, then client parameters, then submit_* options, then the lines magnetar owns', async (t) => {
  const { backend, spec, fake } = await setup(t, { backendOptions: { submit_request_memory: '4096', submit_universe: 'docker', submit_requirements: '(OpSysAndVer == "AlmaLinux9")', 'submit_MY.AccountingGroup': '"galaxy.user"' } });
  const job = await spec('41', { request_memory: '1024', request_cpus: 4, Notification: 'Always', rank: 'Memory' });
  const id = await backend.submit(job);
  t.is(id, '8135');
  const text = await fs.readFile(path.join(job.jobDirectory, 'job.condor.submit'), 'utf8');
  t.is(
    text,
    [
      'universe = docker',
      'getenv = true',
      'Notification = Always',
      'request_memory = 4096',
      'request_cpus = 4',
      'rank = Memory',
      'requirements = (OpSysAndVer == "AlmaLinux9")',
      'MY.AccountingGroup = "galaxy.user"',
      `executable = ${job.scriptPath}`,
      `output = ${job.stdoutPath}`,
      `error = ${job.stderrPath}`,
      `log = ${logOf(job)}`,
      'queue',
      '',
    ].join('\n'),
  );
  const mode = (await fs.stat(path.join(job.jobDirectory, 'job.condor.submit'))).mode & 0o777;
  t.is(mode, 0o600);
  const calls = await fake.calls();
  t.deepEqual(calls, [{ tool: 'condor_submit', cwd: job.workingDirectory, args: [path.join(job.jobDirectory, 'job.condor.submit')] }]);
});

test('condor_submit gets the job environment (getenv = true) plus the HTCondor settings, never the server secrets', async (t) => {
  const { backend, spec, fake } = await setup(t);
  await backend.submit(await spec());
  const env = await fake.submitEnv();
  t.is(env['CONDOR_CONFIG'], '/etc/condor/condor_config');
  t.is(env['_CONDOR_SCHEDD_HOST'], 'submit.example.org');
  t.is(env['LC_CTYPE'], 'C.UTF-8');
  t.is(env['TMPDIR'], '/tmp');
  t.false('MAGNETAR_SECRET' in env);
});

test('client submit parameters that would add or replace lines are refused before anything is written or run', async (t) => {
  const { backend, spec, fake } = await setup(t);
  const hostile: Array<[Record<string, unknown>, RegExp]> = [
    [{ executable: '/bin/evil' }, /"executable" is set by magnetar/],
    [{ Log: '/tmp/other.log' }, /"Log" is set by magnetar/],
    [{ QUEUE: '5' }, /is set by magnetar/],
    [{ log_xml: 'true' }, /is set by magnetar/],
    [{ '+Cmd': '"/bin/evil"' }, /is set by magnetar/],
    [{ 'MY.UserLog': '"/tmp/x"' }, /is set by magnetar/],
    [{ 'request memory': '1' }, /not an HTCondor submit command name/],
    [{ 'x = 1\nexecutable': '/bin/evil' }, /not an HTCondor submit command name/],
    [{ '': '1' }, /not an HTCondor submit command name/],
    [{ request_memory: '1\nexecutable = /bin/evil' }, /line break/],
    [{ request_memory: '1\rqueue' }, /line break/],
    [{ request_memory: '1\0' }, /NUL/],
    [{ request_memory: '1 \\' }, /backslash/],
    [{ request_memory: { nested: 1 } }, /string, a number or a boolean/],
    [{ request_memory: ['1'] }, /string, a number or a boolean/],
    [{ request_memory: null }, /string, a number or a boolean/],
  ];
  for (const [params, message] of hostile) {
    const job = await spec(undefined, params);
    const error = await t.throwsAsync(backend.submit(job), { instanceOf: BackendError, message }, JSON.stringify(params));
    t.is(error?.code, 'MAG_ERR_BACKEND_SUBMIT');
    await t.throwsAsync(fs.access(path.join(job.jobDirectory, 'job.condor.submit')), undefined, 'no submit file');
  }
  t.deepEqual(await fake.calls(), [], 'condor_submit never ran');
  // Harmless oddities pass: macros, quotes, = and # inside a value; booleans.
  const text = buildSubmitDescription({
    scriptPath: '/j/command.sh', stdoutPath: '/j/o', stderrPath: '/j/e', userLogPath: '/j/l',
    clientParams: { requirements: 'TARGET.Name =?= "a#b" && $(x)', 'periodic_remove': false },
    managerParams: [],
  });
  t.true(text.includes('requirements = TARGET.Name =?= "a#b" && $(x)\n'));
  t.true(text.includes('periodic_remove = false\n'));
});

test('manager options: submit_* only, checked at startup (ConfigError naming the option)', (t) => {
  const bad: Array<[Record<string, string>, RegExp]> = [
    [{ native_specification: '-q long' }, /native_specification: unknown option for a queued_condor manager/],
    [{ submit_executable: '/bin/evil' }, /submit_executable: "executable" is set by magnetar/],
    [{ submit_log: '/tmp/l' }, /is set by magnetar/],
    [{ 'submit_+Out': '"x"' }, /is set by magnetar/],
    [{ 'submit_bad key': '1' }, /not an HTCondor submit command name/],
    [{ submit_: '1' }, /not an HTCondor submit command name/],
    [{ submit_requirements: 'a\nqueue' }, /the value contains a line break/],
    [{ submit_rank: 'Memory \\' }, /backslash/],
  ];
  for (const [backendOptions, message] of bad) {
    const error = t.throws(() => createCondorBackend(condorManager({ backendOptions }), context()), { instanceOf: ConfigError, message }, JSON.stringify(backendOptions));
    t.is(error?.file, 'job_managers.ini');
  }
  const backend = createBackend(condorManager({ backendOptions: { submit_request_memory: '2 GB', 'submit_+AccountingGroup': '"g"' } }), context());
  t.is(backend.constructor.name, 'CondorBackend');
  t.is(backend.maxConcurrent, Number.POSITIVE_INFINITY);
  t.deepEqual(backend.scriptHeader({} as LaunchSpec), []);
  backend.close();
});

// ------------------------------------------------------------------------------------------------
// condor_submit answers

test('the external id is the cluster of condor_submit; failures carry its message', async (t) => {
  t.is(parseClusterId(SUBMIT_OK(8135)), '8135');
  t.is(parseClusterId('Submitting job(s)...\n3 job(s) submitted to cluster 0042.\n'), '42');
  t.is(parseClusterId(SUBMIT_PARSE_ERROR), undefined);

  const { backend, spec, fake } = await setup(t);
  await fake.answer('condor_submit', '', 1, SUBMIT_PARSE_ERROR);
  const refused = await t.throwsAsync(backend.submit(await spec()), { instanceOf: BackendError, message: /^HTCondor did not accept the job: ERROR: on Line 5 of submit file.*\(exit status 1\)$/s });
  t.is(refused?.code, 'MAG_ERR_BACKEND_SUBMIT');
  await fake.answer('condor_submit', '', 1, SUBMIT_NO_SCHEDD);
  await t.throwsAsync(backend.submit(await spec()), { message: /Can't find address of local schedd/ });
  await fake.answer('condor_submit', 'Submitting job(s).\n', 0);
  const unreadable = await t.throwsAsync(backend.submit(await spec()), { instanceOf: BackendError, message: /did not say which cluster/ });
  t.is(unreadable?.code, 'MAG_ERR_BACKEND_COMMAND');

  const missing = createCondorBackend(condorManager(), context(), { commands: { condorSubmit: path.join(fake.dir, 'nowhere', 'condor_submit') } });
  t.teardown(() => missing.close());
  const notFound = await t.throwsAsync(missing.submit(await spec()), { instanceOf: BackendError, message: /could not run .*condor_submit: .*command not found.*is it installed/ });
  t.is(notFound?.code, 'MAG_ERR_BACKEND_UNREACHABLE');
});

// ------------------------------------------------------------------------------------------------
// User log

test('user logs: every event kind maps to a state, a return value or a reason', async (t) => {
  const normal = parseUserLog(await fixture('normal-termination.log'), '8135');
  t.deepEqual(normal, { submitted: true, state: 'exited', exitCode: 3, reason: undefined, removeFromQueue: false });

  const signal = parseUserLog(await fixture('abnormal-termination.log'), 8136);
  t.is(signal.state, 'exited');
  t.is(signal.exitCode, null);
  t.is(signal.reason, 'the job was killed by signal 9 (SIGKILL; often the memory limit)');

  const released = await fixture('held-released.log');
  const lines = released.split('\n');
  const upTo = (marker: string): string => lines.slice(0, lines.findIndex((l) => l.startsWith(marker)) - 0).join('\n');
  const held = parseUserLog(`${upTo('013 ')}\n`, '8137');
  t.is(held.state, 'queued');
  t.is(held.reason, 'held by HTCondor: via condor_hold (by user galaxy) (waiting for condor_release)');
  t.false(held.removeFromQueue);
  t.deepEqual(parseUserLog(`${upTo('001 ')}\n`, '8137'), { submitted: true, state: 'queued', exitCode: null, reason: undefined, removeFromQueue: false });
  t.is(parseUserLog(`${upTo('005 ')}\n`, '8137').state, 'running');
  t.is(parseUserLog(released, '8137').exitCode, 0);

  const memory = parseUserLog(await fixture('held-memory.log'), '8138');
  t.is(memory.state, 'exited');
  t.true(memory.removeFromQueue);
  t.regex(memory.reason ?? '', /^the job was held by HTCondor because it exceeded its memory request: Error from slot1_1@node1.example.org: Job has gone over cgroup memory limit of 128 megabytes/);

  const aborted = parseUserLog(await fixture('aborted.log'), '8139');
  t.is(aborted.state, 'exited');
  t.is(aborted.reason, 'the job was removed from the HTCondor queue (via condor_rm (by user galaxy))');

  const evicted = parseUserLog(await fixture('evicted.log'), '8140');
  t.is(evicted.state, 'queued');
  t.is(evicted.reason, 'evicted by HTCondor; it will run again');

  const shadow = parseUserLog(await fixture('shadow-exception.log'), '8141');
  t.is(shadow.state, 'queued');
  t.regex(shadow.reason ?? '', /^HTCondor shadow exception \(Error from slot1_1@node1.example.org: Failed to open/);

  const old = parseUserLog(await fixture('old-format.log'), '7');
  t.deepEqual(old, { submitted: true, state: 'exited', exitCode: 0, reason: undefined, removeFromQueue: false });
  t.is(submittedCluster(await fixture('old-format.log')), '7');

  t.deepEqual(parseUserLog(await fixture('normal-termination.log'), '9999').state, 'queued', 'other clusters are not this job');
  const execError = parseUserLog(`${SUBMIT_EVENT(5)}002 (005.000.000) 2024-05-02 14:11:37 (errno=13: 'Permission denied')\n\tJob not executable.\n...\n`, '5');
  t.is(execError.state, 'exited');
  t.regex(execError.reason ?? '', /could not execute the job script/);
  const periodic = parseUserLog(`${SUBMIT_EVENT(6)}012 (006.000.000) 2024-05-02 14:11:37 Job was held.\n\tThe job attribute PeriodicHold expression '(JobDurationSeconds >= 60)' evaluated to TRUE\n\tCode 3 Subcode 0\n...\n`, '6');
  t.is(periodic.state, 'queued', 'only the documented codes end a job');
  const walltime = parseUserLog(`${SUBMIT_EVENT(6)}012 (006.000.000) 2024-05-02 14:11:37 Job was held.\n\tperiodic_hold\n\tCode 16 Subcode 0\n...\n`, '6');
  t.is(walltime.state, 'exited');
  t.regex(walltime.reason ?? '', /periodic_hold expression became true/);
  t.is(parseUserLog('000 (001.000.000) 2024-05-02 14:11:36 Job submitted from host: <x>\n', '1').submitted, false, 'an event without its "..." is not complete');
});

// ------------------------------------------------------------------------------------------------
// Following a job

test('a submitted job is followed in its user log: start, then the return value', async (t) => {
  const { backend, spec, fake } = await setup(t);
  const job = await spec();
  const id = await backend.submit(job);
  t.is(await backend.status(id), 'queued');
  let started = false;
  const start = backend.waitForStart(id).then(() => {
    started = true;
  });
  const exit = backend.waitForExit(id);
  await sleep(150);
  t.false(started);
  await fs.appendFile(logOf(job), EXECUTE_EVENT(id));
  await within(start);
  t.is(await backend.status(id), 'running');
  // Half an event (HTCondor is still writing it) changes nothing.
  const terminated = TERMINATED_EVENT(id, 3);
  await fs.appendFile(logOf(job), terminated.slice(0, 60));
  await sleep(150);
  t.is(await backend.status(id), 'running');
  await fs.appendFile(logOf(job), terminated.slice(60));
  t.deepEqual(await within(exit), { exitCode: 3 });
  t.deepEqual((await fake.calls()).map((c) => c.tool), ['condor_submit'], 'the log answered everything: no condor_q');
  // A finished job is forgotten: asked again, condor_q (no longer listing it) answers.
  t.is(await backend.status(id), 'exited');
});

test('jobs without a log are looked up with ONE condor_q per round; gone jobs end, the return code decides', async (t) => {
  const { backend, spec, fake } = await setup(t);
  const a = await spec();
  const b = await spec();
  const c = await spec();
  const ids = [await backend.submit(a), await backend.submit(b), await backend.submit(c)];
  t.deepEqual(ids, ['8135', '8136', '8137']);
  for (const job of [a, b, c]) await fs.rm(logOf(job));
  await fake.answer('condor_q', '8135.0 2\n8136.0 5\n');
  const started = backend.waitForStart('8135');
  const exitA = backend.waitForExit('8135');
  const exitB = backend.waitForExit('8136');
  const exitC = backend.waitForExit('8137');
  await within(started);
  t.deepEqual(await within(exitC), { exitCode: null }, 'not in the queue and no log: gone');
  // Another round (or two) asks only about the jobs still watched.
  const calls = async (): Promise<Array<{ args: string[] }>> => (await fake.calls()).filter((call) => call.tool === 'condor_q');
  const before = (await calls()).length;
  while ((await calls()).length <= before) await sleep(20);
  const queries = await calls();
  t.true(queries.length >= 1);
  t.deepEqual(queries[0]?.args, ['-format', '%d.', 'ClusterId', '-format', '%d ', 'ProcId', '-format', '%d\\n', 'JobStatus', '8135', '8136', '8137']);
  t.deepEqual(queries.at(-1)?.args.slice(9), ['8135', '8136'], 'an ended job is no longer asked about');
  await fake.answer('condor_q', '8135.0 4\n8136.0 3\n');
  t.deepEqual(await within(exitA), { exitCode: null });
  t.deepEqual(await within(exitB), { exitCode: null, reason: 'the job was removed from the HTCondor queue' });
  t.deepEqual(condorQArguments(['1']).slice(-1), ['1']);
  t.deepEqual([...parseCondorQ('8135.0 2\n8135.1 1\n  77.0 5  \ngarbage\n').entries()], [['8135', 2], ['77', 5]]);
});

test('an unreachable schedd: status says queued (keep watching), waits go on, the failure is logged once, the next good answer settles them', async (t) => {
  const { backend, spec, fake, logLines } = await setup(t);
  const job = await spec();
  const id = await backend.submit(job);
  await fs.rm(logOf(job));
  await fake.answer('condor_q', '', 1, Q_UNREACHABLE);
  t.is(await backend.status(id), 'queued', 'cannot ask is not "ended": the job stays watched, as with the cli and DRMAA backends');
  const exit = backend.waitForExit(id);
  const failures = (): string[] => logLines.filter((l) => l.includes('condor_q failed; trying again next round'));
  await within(until(() => failures().some((l) => l.includes('Failed to fetch ads'))));
  const rounds = async (): Promise<number> => (await fake.calls()).filter((call) => call.tool === 'condor_q').length;
  const before = await rounds();
  while ((await rounds()) < before + 3) await sleep(20);
  t.is(failures().length, 1, 'the same failure, round after round, is logged once');
  await fs.appendFile(logOf(job), SUBMIT_EVENT(id) + EXECUTE_EVENT(id) + TERMINATED_EVENT(id, 0));
  t.deepEqual(await within(exit), { exitCode: 0 });
});

test('restart during a condor_q outage: a recovered job without a log is kept (queued), and ends once condor_q answers', async (t) => {
  const { backend, spec, fake } = await setup(t);
  const job = await spec();
  await fake.answer('condor_q', '', 1, Q_UNREACHABLE);
  t.is(await backend.recover(job, '8300'), '8300');
  t.is(await backend.status('8300'), 'queued');
  const started = backend.waitForStart('8300');
  const exit = backend.waitForExit('8300');
  await sleep(150);
  await fake.answer('condor_q', '8300.0 2\n');
  await within(started);
  await fake.answer('condor_q', '');
  t.deepEqual(await within(exit), { exitCode: null }, 'gone: the return_code file decides');
});

test('every so often condor_q checks unfinished jobs: one that left the queue without a final event ends', async (t) => {
  const { backend, spec, fake } = await setup(t, {}, { queueCheckIntervalMs: 100 });
  const job = await spec();
  const id = await backend.submit(job);
  await fake.answer('condor_q', `${id}.0 1\n`);
  const exit = backend.waitForExit(id);
  await sleep(300);
  t.is(await backend.status(id), 'queued');
  await fake.answer('condor_q', '');
  t.deepEqual(await within(exit), { exitCode: null });
});

test('cancel: condor_rm <id>; the abort event then ends the wait as cancelled; condor_rm errors are only logged', async (t) => {
  const { backend, spec, fake, logLines } = await setup(t);
  const job = await spec();
  const id = await backend.submit(job);
  await fs.appendFile(logOf(job), EXECUTE_EVENT(id));
  const exit = backend.waitForExit(id);
  await fake.answer('condor_rm', RM_OK(id));
  await backend.kill(id);
  const rm = (await fake.calls()).filter((call) => call.tool === 'condor_rm');
  t.deepEqual(rm.map((call) => call.args), [[id]]);
  await fs.appendFile(logOf(job), ABORTED_EVENT(id));
  t.deepEqual(await within(exit), { exitCode: null, reason: 'cancelled (removed with condor_rm)' });

  await fake.answer('condor_rm', '', 1, RM_UNKNOWN('999'));
  await t.notThrowsAsync(backend.kill('999'));
  t.true(logLines.some((l) => l.includes('condor_rm failed') && l.includes("Couldn't find/remove all jobs in cluster 999")));
});

test('a job removed by someone else fails with how it was removed; a memory hold fails it and removes it', async (t) => {
  const { backend, spec, fake } = await setup(t);
  const removed = await spec();
  const removedId = await backend.submit(removed);
  const removedExit = backend.waitForExit(removedId);
  await fs.appendFile(logOf(removed), ABORTED_EVENT(removedId));
  t.deepEqual(await within(removedExit), { exitCode: null, reason: 'the job was removed from the HTCondor queue (via condor_rm (by user galaxy))' });

  const held = await spec();
  const heldId = await backend.submit(held);
  const memory = (await fixture('held-memory.log')).replaceAll('8138', heldId).split('...\n').slice(1).join('...\n');
  await fs.appendFile(logOf(held), memory);
  const report = await within(backend.waitForExit(heldId));
  t.regex(report.reason ?? '', /held by HTCondor because it exceeded its memory request/);
  const removals = async (): Promise<string[][]> => (await fake.calls()).filter((call) => call.tool === 'condor_rm').map((call) => call.args);
  while ((await removals()).length === 0) await sleep(20);
  t.deepEqual(await removals(), [[heldId]]);
});

test('recovery: the recorded id, else the submit event of the log; nothing submitted → undefined', async (t) => {
  const { backend, spec } = await setup(t);
  const running = await spec();
  await fs.writeFile(logOf(running), SUBMIT_EVENT(8200) + EXECUTE_EVENT('8200'));
  t.is(await backend.recover(running, '8200'), '8200');
  t.is(await backend.status('8200'), 'running');

  const unrecorded = await spec();
  await fs.writeFile(logOf(unrecorded), SUBMIT_EVENT(8201) + EXECUTE_EVENT('8201') + TERMINATED_EVENT('8201', 0));
  t.is(await backend.recover(unrecorded, undefined), '8201', 'submitted but the id was never recorded');
  t.is(await backend.status('8201'), 'exited');
  t.deepEqual(await within(backend.waitForExit('8201')), { exitCode: 0 });

  const never = await spec();
  t.is(await backend.recover(never, undefined), undefined);
  t.is(await backend.recover(never, 'not-a-cluster'), undefined);
});

// ------------------------------------------------------------------------------------------------
// Through a real server: a "mini HTCondor" on the PATH runs the script and writes the user log.

const MINI_CONDOR_SUBMIT = (state: string): string => `#!/bin/bash
f="$1"
get() { sed -n "s/^$1 = //p" "$f"; }
exe=$(get executable); out=$(get output); err=$(get error); log=$(get log)
cp "$f" '${state}/last.submit'
cluster=$(cat '${state}/cluster' 2>/dev/null || echo 500)
echo $((cluster + 1)) > '${state}/cluster'
stamp() { date '+%Y-%m-%d %H:%M:%S'; }
echo "$log" > '${state}/log.'$cluster
set -m
printf '000 (%03d.000.000) %s Job submitted from host: <127.0.0.1:9618?addrs=127.0.0.1-9618&noUDP&sock=schedd_1_1>\\n...\\n' "$cluster" "$(stamp)" >> "$log"
(
  printf '001 (%03d.000.000) %s Job executing on host: <127.0.0.1:9618?addrs=127.0.0.1-9618&noUDP&sock=startd_1_1>\\n\\tSlotName: slot1@localhost\\n...\\n' "$cluster" "$(stamp)" >> "$log"
  "$exe" > "$out" 2> "$err"
  rc=$?
  printf '005 (%03d.000.000) %s Job terminated.\\n\\t(1) Normal termination (return value %d)\\n\\t\\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\\n...\\n' "$cluster" "$(stamp)" "$rc" >> "$log"
) </dev/null >/dev/null 2>&1 &
echo $! > '${state}/pgid.'$cluster
echo 'Submitting job(s).'
echo "1 job(s) submitted to cluster $cluster."
`;

test('end to end: a queued_condor manager runs a job through condor_submit and the user log', async (t) => {
  const { request, qs, waitForJob } = await import('../helpers/client.js');
  const { makeRoot, testConfig } = await import('../helpers/server.js');
  const { startServer } = await import('../../src/server.js');
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const bin = path.join(root, 'bin');
  await fs.mkdir(bin);
  await fs.writeFile(path.join(bin, 'condor_submit'), MINI_CONDOR_SUBMIT(root), { mode: 0o755 });
  await fs.writeFile(path.join(bin, 'condor_q'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  // condor_rm: stop the job's process group, then the schedd writes the abort event.
  await fs.writeFile(
    path.join(bin, 'condor_rm'),
    `#!/bin/bash\necho "$@" >> '${root}/rm.argv'\nkill -TERM -- "-$(cat '${root}/pgid.'$1)" 2>/dev/null\nprintf '009 (%03d.000.000) 2024-05-02 14:50:20 Job was aborted.\\n\\tvia condor_rm (by user galaxy)\\n...\\n' "$1" >> "$(cat '${root}/log.'$1)"\necho "All jobs in cluster $1 have been marked for removal"\n`,
    { mode: 0o755 },
  );
  const manager = managerConfig(root, { type: 'queued_condor', minPollingInterval: 0.05, backendOptions: { submit_request_cpus: '2' } });
  const config = testConfig(root, { allowedSubmitParams: ['request_memory'] }, [manager]);
  const env = { ...process.env, PATH: `${bin}:${process.env['PATH'] ?? '/usr/bin:/bin'}` };
  const server = await startServer(config, { log: createLogger({ level: 'silent' }), env, port: 0 });
  t.teardown(() => server.close());

  t.is((await request(server.url, 'POST', `/jobs?${qs({ job_id: 'c1' })}`)).status, 200);
  const submitted = await request(server.url, 'POST', `/jobs/c1/submit?${qs({ job_id: 'c1', command_line: 'echo "hello $GALAXY_SLOTS"; exit 4', params: JSON.stringify({ request_memory: '512', rank: 'Memory' }) })}`);
  t.is(submitted.text, 'OK');
  const doc = await waitForJob(server.url, 'c1', '', '', 15_000);
  t.is(doc.status, 'complete');
  t.is(Number(doc.returncode), 4);
  t.is(doc.job_stdout, 'hello 1\n', 'the script ran with the job environment (1 slot)');
  const submitFile = await fs.readFile(path.join(root, 'last.submit'), 'utf8');
  t.regex(submitFile, /^request_memory = 512$/m, 'an allow-listed client parameter');
  t.notRegex(submitFile, /^rank/m, 'a parameter that is not allow-listed never reaches the file');
  t.regex(submitFile, /^request_cpus = 2$/m);

  // A client parameter that would inject a line fails the job with the reason.
  t.is((await request(server.url, 'POST', `/jobs?${qs({ job_id: 'c2' })}`)).status, 200);
  await request(server.url, 'POST', `/jobs/c2/submit?${qs({ job_id: 'c2', command_line: 'true', params: JSON.stringify({ request_memory: '1\nexecutable = /bin/sh' }) })}`);
  const failed = await waitForJob(server.url, 'c2', '', '', 15_000);
  t.is(failed.status, 'failed');
  t.regex(JSON.stringify(failed), /submit parameter request_memory contains a line break/);

  // Cancel of a running job: condor_rm <cluster>, and the job ends cancelled.
  t.is((await request(server.url, 'POST', `/jobs?${qs({ job_id: 'c3' })}`)).status, 200);
  await request(server.url, 'POST', `/jobs/c3/submit?${qs({ job_id: 'c3', command_line: 'sleep 30' })}`);
  const deadline = Date.now() + 10_000;
  while ((await request(server.url, 'GET', '/jobs/c3/status?job_id=c3')).json().status !== 'running') {
    if (Date.now() > deadline) throw new Error('c3 never ran');
    await sleep(25);
  }
  t.is((await request(server.url, 'PUT', '/jobs/c3/cancel?job_id=c3')).text, 'OK');
  const cancelled = await waitForJob(server.url, 'c3', '', '', 15_000);
  t.is(cancelled.status, 'cancelled');
  t.is((await fs.readFile(path.join(root, 'rm.argv'), 'utf8')).trim(), '501', 'c2 never reached condor_submit');
});
