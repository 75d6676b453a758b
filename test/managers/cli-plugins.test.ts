import test from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import type { ManagerConfig } from '../../src/config/types.js';
import { BackendError, ConfigError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import type { LaunchSpec } from '../../src/managers/backend.js';
import { CliBackend, schedulerEnvironment } from '../../src/managers/cli/cli-backend.js';
import { posixQuote, remoteCommandLine, type Command, type CommandResult } from '../../src/managers/cli/command.js';
import { parseQacct, parseQstatXml, parseSgeErrorReason, parseSgeQsub, sgeStateKind } from '../../src/managers/cli/grid-engine.js';
import type { HeaderJob, JobPluginName, SchedulerStatus } from '../../src/managers/cli/job-plugin.js';
import { LSF_STATES, parseBjobs, parseBsub } from '../../src/managers/cli/lsf.js';
import { parseCliOptions } from '../../src/managers/cli/options.js';
import { localShell, remoteShell, secureShell } from '../../src/managers/cli/shell.js';
import { parseSbatch, parseScontrol, parseSqueue, SLURM_STATES } from '../../src/managers/cli/slurm.js';
import { parseQstatFull, parseQstatJson, parseQstatTable, parseQsub, PBS_STATES } from '../../src/managers/cli/torque.js';
import { createBackend } from '../../src/managers/registry.js';
import { managerConfig } from '../helpers/server.js';

const exec = promisify(execFile);
const HOSTILE = "x'; rm -rf / #";

const ctx = { log: createLogger({ level: 'silent' }), serverEnv: process.env, configFile: '/etc/magnetar/job_managers.ini' };

function manager(options: Record<string, string>, overrides: Partial<ManagerConfig> = {}): ManagerConfig {
  return managerConfig('/srv/magnetar', { name: 'cluster', type: 'queued_cli', backendOptions: options, ...overrides });
}

function options(backendOptions: Record<string, string>) {
  return parseCliOptions(manager(backendOptions), ctx);
}

function configError(t: import('ava').ExecutionContext, backendOptions: Record<string, string>, pattern: RegExp): void {
  const error = t.throws(() => options(backendOptions), { instanceOf: ConfigError });
  t.regex(error?.message ?? '', pattern);
  t.true(error?.message.startsWith('/etc/magnetar/job_managers.ini: manager cluster '), error?.message);
}

const JOB: HeaderJob = {
  jobName: 'pulsar_42',
  stdoutPath: '/srv/staging/42/metadata/job_stdout',
  stderrPath: '/srv/staging/42/metadata/job_stderr',
  workingDirectory: '/srv/staging/42/working',
};

/** A fake `run` answering from a table of argv prefixes, recording what was asked. */
function fakeRun(answers: [string, Partial<CommandResult>][]): { run: (c: Command) => Promise<CommandResult>; asked: string[][] } {
  const asked: string[][] = [];
  return {
    asked,
    run: async (command) => {
      asked.push([...command.argv]);
      const line = command.argv.join(' ');
      const answer = answers.find(([prefix]) => line.startsWith(prefix))?.[1];
      if (answer === undefined) throw new Error(`unexpected command ${line}`);
      return { code: 0, stdout: '', stderr: '', ...answer };
    },
  };
}

function kinds(states: ReadonlyMap<string, SchedulerStatus>): Record<string, string> {
  return Object.fromEntries([...states].map(([id, s]) => [id, s.kind]));
}

// ------------------------------------------------------------------------------------ options

test('job_plugin accepts upstream class names and module names', (t) => {
  const cases: [string, JobPluginName][] = [
    ['Slurm', 'Slurm'], ['slurm', 'Slurm'], ['Torque', 'Torque'], ['torque', 'Torque'],
    ['SlurmTorque', 'SlurmTorque'], ['slurm_torque', 'SlurmTorque'], ['OpenPBS', 'OpenPBS'], ['pbs', 'OpenPBS'],
    ['openpbs', 'OpenPBS'], ['LSF', 'LSF'], ['lsf', 'LSF'], ['GridEngine', 'GridEngine'], ['sge', 'GridEngine'],
  ];
  for (const [value, name] of cases) t.is(options({ job_plugin: value }).jobPlugin.name, name, value);
});

test('shell_plugin: LocalShell by default; RemoteShell and SecureShell in several spellings', (t) => {
  t.is(options({ job_plugin: 'Slurm' }).shell.name, 'LocalShell');
  for (const v of ['LocalShell', 'local_shell']) t.is(options({ job_plugin: 'Slurm', shell_plugin: v }).shell.name, 'LocalShell');
  for (const v of ['RemoteShell', 'rsh', 'remote_shell']) t.is(options({ job_plugin: 'Slurm', shell_plugin: v }).shell.name, 'RemoteShell');
  for (const v of ['SecureShell', 'secure_shell', 'ssh']) t.is(options({ job_plugin: 'Slurm', shell_plugin: v }).shell.name, 'SecureShell');
});

test('invalid options are ConfigErrors naming the option', (t) => {
  configError(t, {}, /job_plugin: a queued_cli manager needs job_plugin/);
  configError(t, { job_plugin: 'PBSPro9000' }, /job_plugin: unknown job plugin "PBSPro9000"/);
  configError(t, { job_plugin: 'Slurm', native_specification: '-p x', shell_bogus: '1' }, /unknown options for a queued_cli manager: native_specification, shell_bogus/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'ParamikoShell' }, /shell_plugin: .*not supported; use SecureShell/);
  configError(t, { job_plugin: 'Slurm', shell_port: '22' }, /shell_port: is not an option of the LocalShell shell plugin/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'RemoteShell', shell_private_key: '/k' }, /shell_private_key: is not an option of the RemoteShell/);
  configError(t, { job_plugin: 'Slurm', job_partition: 'a\nb' }, /job_partition: Slurm plugin: job_partition must be one line of text/);
  configError(t, { job_plugin: 'Slurm', job_partition: 'a\0b' }, /job_partition: .*without control characters/);
  configError(t, { job_plugin: 'Slurm', job_bogus: 'x' }, /job_bogus: Slurm plugin: job_bogus is not a parameter of this job plugin \(known: time, ncpus, partition/);
  configError(t, { job_plugin: 'Slurm', 'job_-o': '/tmp/x' }, /job_-o: .*would set -o, which magnetar sets itself/);
  configError(t, { job_plugin: 'Slurm', 'job_--array': '1-3' }, /would set --array/);
  configError(t, { job_plugin: 'Slurm', 'job_-x;y': '1' }, /is not a scheduler flag/);
  configError(t, { job_plugin: 'Slurm', job_hold: 'maybe' }, /job_hold must be true or false/);
  configError(t, { job_plugin: 'Torque', job_job_name: 'x' }, /job_job_name: Torque plugin: job_job_name is not a parameter/);
  configError(t, { job_plugin: 'Torque', 'job_-N': 'x' }, /would set -N/);
  configError(t, { job_plugin: 'GridEngine', 'job_-sync': 'y' }, /would set -sync/);
  configError(t, { job_plugin: 'LSF', 'job_-K': '' }, /would set -K/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'SecureShell', shell_hostname: '-oProxyCommand=touch /tmp/x' }, /shell_hostname: must be a host name/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'SecureShell', shell_username: 'root -oX' }, /shell_username: must be a user name/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'SecureShell', shell_port: '70000' }, /shell_port: must be a port number/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'SecureShell', shell_private_key: 'id_rsa' }, /shell_private_key: must be an absolute path/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'SecureShell', shell_strict_host_key_checking: 'sometimes' }, /must be true or false/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'SecureShell', shell_connect_timeout: '1.5' }, /shell_connect_timeout: must be a whole number of seconds/);
  configError(t, { job_plugin: 'Slurm', shell_timeout: '0' }, /shell_timeout: must be a number of seconds greater than 0/);
  configError(t, { job_plugin: 'Slurm', shell_plugin: 'RemoteShell', shell_rsh: '-oProxyCommand=x' }, /shell_rsh: must be a program/);
});

test('the registry builds a queued_cli backend: no concurrency limit of its own, ConfigError on bad options', (t) => {
  const backend = createBackend(manager({ job_plugin: 'slurm' }), ctx);
  t.teardown(() => backend.close());
  t.is(backend.constructor.name, 'CliBackend');
  t.is(backend.maxConcurrent, Number.POSITIVE_INFINITY);
  t.throws(() => createBackend(manager({ job_plugin: 'slurm', submit_universe: 'vanilla' }), ctx), { instanceOf: ConfigError, message: /submit_universe/ });
});

test('scheduler commands see only scheduler-related server environment variables', (t) => {
  const env = schedulerEnvironment({ PATH: '/bin', HOME: '/root', SGE_ROOT: '/sge', SLURM_CONF: '/etc/slurm.conf', MAGNETAR_PRIVATE_TOKEN: 'secret', AWS_SECRET_ACCESS_KEY: 'x' });
  t.deepEqual(env, { PATH: '/bin', HOME: '/root', SGE_ROOT: '/sge', SLURM_CONF: '/etc/slurm.conf' });
});

// ------------------------------------------------------------------------------------ headers

test('Slurm header: -o/-e/-J/-D, then mapped and raw parameters in order', (t) => {
  const plugin = options({
    job_plugin: 'Slurm', job_partition: 'debug', job_time: '1:00:00', job_ncpus: '4', job_hold: 'true', job_exclusive: 'false', 'job_--mem': '4G', 'job_--requeue': '',
  }).jobPlugin;
  t.deepEqual(plugin.header(JOB), [
    '#SBATCH -o /srv/staging/42/metadata/job_stdout',
    '#SBATCH -e /srv/staging/42/metadata/job_stderr',
    '#SBATCH -J pulsar_42',
    '#SBATCH -D /srv/staging/42/working',
    '#SBATCH -p debug',
    '#SBATCH -t 1:00:00',
    '#SBATCH -c 4',
    '#SBATCH -H',
    '#SBATCH --mem 4G',
    '#SBATCH --requeue',
  ]);
});

test('PBS header (Torque, SlurmTorque, OpenPBS): PBS attribute names case-insensitively, raw flags', (t) => {
  for (const name of ['Torque', 'SlurmTorque', 'OpenPBS']) {
    const plugin = options({
      job_plugin: name, job_destination: 'batch', job_Resource_List: 'walltime=01:00:00,nodes=1:ppn=2', job_account_name: 'proj', 'job_-m': 'n', job_hold: 'yes',
    }).jobPlugin;
    t.deepEqual(plugin.header(JOB), [
      '#PBS -o /srv/staging/42/metadata/job_stdout',
      '#PBS -e /srv/staging/42/metadata/job_stderr',
      '#PBS -N pulsar_42',
      '#PBS -q batch',
      '#PBS -l walltime=01:00:00,nodes=1:ppn=2',
      '#PBS -A proj',
      '#PBS -m n',
      '#PBS -h',
    ], name);
  }
});

test('LSF header: memory gives -M and an rusage reservation; excluded_hosts a select string', async (t) => {
  const plugin = options({ job_plugin: 'LSF', job_memory: '4000', job_cores: '2', job_queue: 'normal', job_project: 'p1', job_excluded_hosts: 'node1, node2' }).jobPlugin;
  t.deepEqual(plugin.header(JOB), [
    '#BSUB -o /srv/staging/42/metadata/job_stdout',
    '#BSUB -e /srv/staging/42/metadata/job_stderr',
    '#BSUB -J pulsar_42',
    '#BSUB -M 4000',
    '#BSUB -R "rusage[mem=4000]"',
    '#BSUB -n 2',
    '#BSUB -q normal',
    '#BSUB -P p1',
    `#BSUB -R "select[hname!='node1' && hname!='node2']"`,
  ]);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-lsf-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.writeFile(path.join(dir, 'hosts'), 'bad1\nbad2\n');
  const fromFile = options({ job_plugin: 'LSF', job_excluded_hosts: path.join(dir, 'hosts') }).jobPlugin;
  t.is(fromFile.header(JOB).at(-1), `#BSUB -R "select[hname!='bad1' && hname!='bad2']"`);
  configError(t, { job_plugin: 'LSF', job_excluded_hosts: "a'b" }, /job_excluded_hosts: .*is not a host name/);
});

test('Grid Engine header: #$ -S /bin/bash (queues default to csh), -o/-e/-N/-wd, parameters', (t) => {
  const plugin = options({ job_plugin: 'GridEngine', job_destination: 'all.q', job_resource_list: 'h_vmem=2G', job_pe: 'smp 4', job_hold: 'true', 'job_-notify': '' }).jobPlugin;
  t.deepEqual(plugin.header(JOB), [
    '#$ -S /bin/bash',
    '#$ -o /srv/staging/42/metadata/job_stdout',
    '#$ -e /srv/staging/42/metadata/job_stderr',
    '#$ -N pulsar_42',
    '#$ -wd /srv/staging/42/working',
    '#$ -q all.q',
    '#$ -l h_vmem=2G',
    '#$ -pe smp 4',
    '#$ -h',
    '#$ -notify',
  ]);
});

test('headers refuse paths a directive parser would split or expand', (t) => {
  const plugin = options({ job_plugin: 'Slurm' }).jobPlugin;
  for (const bad of ['/srv/my staging/1/metadata/job_stdout', '/srv/staging/%j/out', '/srv/$HOME/x', '/srv/a\nb', 'relative/path', '/srv/host:path']) {
    t.throws(() => plugin.header({ ...JOB, stdoutPath: bad }), { message: /cannot carry/ }, bad);
  }
  t.throws(() => plugin.header({ ...JOB, jobName: 'a b' }), { message: /cannot carry/ });
});

// ------------------------------------------------------------------------------------ commands

test('submit, kill and status commands are argument arrays', async (t) => {
  const script = `/srv/staging/${HOSTILE}/command.sh`;
  const p = (name: string) => options({ job_plugin: name }).jobPlugin;
  t.deepEqual(p('Slurm').submit(script), { argv: ['sbatch', script] });
  t.deepEqual(p('Slurm').kill('12'), { argv: ['scancel', '12'] });
  t.deepEqual(p('Torque').submit(script), { argv: ['qsub', script] });
  t.deepEqual(p('OpenPBS').kill('12.srv'), { argv: ['qdel', '12.srv'] });
  t.deepEqual(p('LSF').submit(script), { argv: ['bsub'], stdinFile: script });
  t.deepEqual(p('LSF').kill('12'), { argv: ['bkill', '12'] });
  t.deepEqual(p('GridEngine').submit(script), { argv: ['qsub', script] });
  t.deepEqual(p('GridEngine').kill('12'), { argv: ['qdel', '12'] });

  const polls: [string, string, string[]][] = [
    ['Slurm', '12 R\n13 PD\n', ['squeue', '-h', '-a', '-t', 'all', '-o', '%A %t', '-j', '12,13']],
    ['Torque', 'Job Id: 12.srv\n    job_state = R\n', ['qstat', '-f', '12', '13']],
    ['OpenPBS', '{"Jobs":{"12.srv":{"job_state":"R"}}}', ['qstat', '-f', '-F', 'json', '-x', '12', '13']],
    ['SlurmTorque', '12 pulsar_1 root 0 R debug\n', ['qstat']],
    ['LSF', '12 RUN\n', ['bjobs', '-o', 'jobid stat', '-noheader', '12', '13']],
    ['GridEngine', '<job_list state="running"><JB_job_number>12</JB_job_number><state>r</state></job_list>', ['qstat', '-xml']],
  ];
  for (const [name, stdout, argv] of polls) {
    const fake = fakeRun([[argv[0]!, { stdout }]]);
    const states = await p(name).poll(['12', '13'], fake.run);
    t.deepEqual(fake.asked, [argv], `${name}: one command for all jobs`);
    t.is(states.get('12')?.kind, 'running', name);
    t.false(states.has('13') && name !== 'Slurm', name);
  }
  const many = Array.from({ length: 201 }, (_, i) => String(i + 1));
  const lists: [string, string[]][] = [
    ['Torque', ['qstat', '-f']],
    ['OpenPBS', ['qstat', '-f', '-F', 'json']],
    ['LSF', ['bjobs', '-a', '-o', 'jobid stat', '-noheader']],
    ['GridEngine', ['qstat', '-xml']],
  ];
  for (const [name, argv] of lists) {
    const fake = fakeRun([[argv[0]!, { stdout: '' }]]);
    await p(name).poll(many, fake.run);
    t.deepEqual(fake.asked, [argv], `${name}: a long id list becomes one listing of all jobs`);
  }
});

test('POSIX quoting: hostile values stay one literal word for sh', async (t) => {
  const values = [HOSTILE, '$(id)', '`id`', '*', 'a b', '', "'", '\\', '"$HOME"', '-n', 'line\nbreak', ';|&<>'];
  for (const value of values) {
    const { stdout } = await exec('sh', ['-c', `printf '[%s]' ${posixQuote(value)}`]);
    t.is(stdout, `[${value}]`, JSON.stringify(value));
  }
  t.is(posixQuote(HOSTILE), `'x'\\''; rm -rf / #'`);
  t.is(remoteCommandLine({ argv: ['scancel', HOSTILE] }), `'scancel' 'x'\\''; rm -rf / #'`);
  t.is(remoteCommandLine({ argv: ['bsub'], stdinFile: `/s/${HOSTILE}` }), `'bsub' < '/s/x'\\''; rm -rf / #'`);
  t.is(remoteCommandLine({ argv: ['condor_submit', 'j.submit'], cwd: `/s/${HOSTILE}` }), `cd '/s/x'\\''; rm -rf / #' && 'condor_submit' 'j.submit'`);
  t.throws(() => remoteCommandLine({ argv: ['true'], cwd: '-P' }), { instanceOf: BackendError, message: /absolute/ });
  t.throws(() => posixQuote('a\0b'), { instanceOf: BackendError, message: /NUL/ });
});

test('shell plugins: LocalShell runs argv directly; RemoteShell and SecureShell send one quoted command string', (t) => {
  const command: Command = { argv: ['qdel', HOSTILE] };
  t.deepEqual(localShell().invocation(command), { file: 'qdel', args: [HOSTILE] });
  t.deepEqual(localShell().invocation({ argv: ['bsub'], stdinFile: '/s/c.sh' }), { file: 'bsub', args: [], stdinFile: '/s/c.sh' });
  t.deepEqual(localShell().invocation({ argv: ['condor_submit', 'j'], cwd: '/s/w' }), { file: 'condor_submit', args: ['j'], cwd: '/s/w' });

  t.deepEqual(remoteShell({ rsh: 'rsh', hostname: 'submit1', username: 'galaxy' }).invocation(command), {
    file: 'rsh',
    args: ['-l', 'galaxy', 'submit1', `'qdel' 'x'\\''; rm -rf / #'`],
  });

  const ssh = options({ job_plugin: 'Slurm', shell_plugin: 'SecureShell', shell_hostname: 'login.hpc', shell_username: 'galaxy' }).shell;
  t.deepEqual(ssh.invocation(command), {
    file: 'ssh',
    args: [
      '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR', '-o', 'StrictHostKeyChecking=yes', '-o', 'ConnectTimeout=60',
      '-l', 'galaxy', 'login.hpc', '--', `'qdel' 'x'\\''; rm -rf / #'`,
    ],
  });
  const full = secureShell({
    ssh: '/usr/bin/ssh', hostname: '10.0.0.5', username: 'root', port: 2222, privateKey: '/keys/id', strictHostKeyChecking: true,
    connectTimeout: 5, knownHostsFile: '/keys/known_hosts',
  });
  t.deepEqual(full.invocation({ argv: ['bsub'], stdinFile: '/s/c.sh' }), {
    file: '/usr/bin/ssh',
    args: [
      '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR', '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=/keys/known_hosts',
      '-o', 'ConnectTimeout=5', '-i', '/keys/id', '-o', 'IdentitiesOnly=yes', '-p', '2222', '-l', 'root', '10.0.0.5', '--', `'bsub' < '/s/c.sh'`,
    ],
  });
  const lax = options({ job_plugin: 'Slurm', shell_plugin: 'ssh', shell_strict_host_key_checking: 'false' }).shell.invocation({ argv: ['true'] });
  t.deepEqual(lax.args.slice(0, 10), ['-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=60']);
});

// ------------------------------------------------------------------------------------ Slurm outputs

test('Slurm: sbatch output, every squeue state, scontrol explanation', (t) => {
  t.is(parseSbatch('Submitted batch job 4242\n'), '4242');
  t.is(parseSbatch('Submitted batch job 77 on cluster ci\n'), '77');
  t.is(parseSbatch('88;ci\n'), '88');
  t.is(parseSbatch('sbatch: error: something\n'), undefined);

  const codes = Object.keys(SLURM_STATES);
  const states = parseSqueue(codes.map((code, i) => `${i + 1} ${code}`).join('\n') + '\n999 XX\n');
  const expect: Record<string, SchedulerStatus['kind']> = {
    PD: 'queued', CF: 'queued', RD: 'queued', RF: 'queued', RH: 'queued', RQ: 'queued',
    R: 'running', CG: 'running', RS: 'running', SI: 'running', SO: 'running', ST: 'running', S: 'running',
    CD: 'ended', CA: 'ended', F: 'ended', TO: 'ended', PR: 'ended', NF: 'ended', BF: 'ended', DL: 'ended', OOM: 'ended', RV: 'ended', SE: 'ended',
  };
  for (const [code, kind] of Object.entries(expect)) {
    t.is(states.get(String(codes.indexOf(code) + 1))?.kind, kind, code);
  }
  t.deepEqual(states.get('999'), { kind: 'running', state: 'XX', unknown: true }, 'unknown states are treated as running');
  t.is(SLURM_STATES['COMPLETED'], 'ended');
  t.is(SLURM_STATES['PENDING'], 'queued');

  const scontrol =
    'JobId=1 JobName=pulsar_1 UserId=root(0) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:15 RunTime=00:01:00\n';
  t.is(parseScontrol(scontrol), 'Slurm reports JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15');
  t.is(parseScontrol('JobId=2 JobState=COMPLETED Reason=None ExitCode=0:0'), 'Slurm reports JobState=COMPLETED ExitCode=0:0');
  t.is(parseScontrol('slurm_load_jobs error: Invalid job id specified'), undefined);
});

test('Slurm poll: an unknown id failing the -j query falls back to listing every job', async (t) => {
  const plugin = options({ job_plugin: 'Slurm' }).jobPlugin;
  const fake = fakeRun([
    ['squeue -h -a -t all -o %A %t -j', { code: 1, stderr: 'slurm_load_jobs error: Invalid job id specified\n' }],
    ['squeue -h -a -t all -o %A %t', { stdout: '5 R\n6 CD\n99 PD\n' }],
  ]);
  const states = await plugin.poll(['5', '6', '7'], fake.run);
  t.deepEqual(kinds(states), { 5: 'running', 6: 'ended' });
  t.is(fake.asked.length, 2);
  t.deepEqual(fake.asked[1], ['squeue', '-h', '-a', '-t', 'all', '-o', '%A %t']);

  const down = fakeRun([['squeue', { code: 1, stderr: 'squeue: error: Unable to contact slurm controller (connect failure)\n' }]]);
  await t.throwsAsync(plugin.poll(['5'], down.run), { message: /squeue failed: .*Unable to contact slurm controller/ });

  const many = Array.from({ length: 250 }, (_, i) => String(i + 1));
  const big = fakeRun([['squeue', { stdout: '1 R\n' }]]);
  await plugin.poll(many, big.run);
  t.deepEqual(big.asked, [['squeue', '-h', '-a', '-t', 'all', '-o', '%A %t']], 'long id lists: one listing instead');
});

// ------------------------------------------------------------------------------------ PBS outputs

const QSTAT_F = `Job Id: 101.torque.example.org
    Job_Name = pulsar_a
    Job_Owner = galaxy@galaxy.example.org
    job_state = R
    queue = batch
    server = torque.example.org
    Resource_List.walltime = 01:00:00
    Variable_List = PBS_O_QUEUE=batch,PBS_O_HOME=/home/galaxy,
\tPBS_O_LOGNAME=galaxy,PBS_O_PATH=/usr/bin:/bin

Job Id: 102.torque.example.org
    Job_Name = pulsar_b
    job_state = Q

Job Id: 103.torque.example.org
    Job_Name = pulsar_c
    job_state = C
    exit_status = 0

Job Id: 104.torque.example.org
    job_state = E
Job Id: 105.torque.example.org
    job_state = H
Job Id: 106.torque.example.org
    job_state = W
Job Id: 107.torque.example.org
    job_state = T
Job Id: 108.torque.example.org
    job_state = S
Job Id: 109.torque.example.org
    job_state = C
    exit_status = 271
Job Id: 110.torque.example.org
    job_state = Z
`;

test('Torque: qstat -f blocks for every job_state, exit_status kept, unknown ids on stderr tolerated', async (t) => {
  const states = parseQstatFull(QSTAT_F);
  t.deepEqual(kinds(states), {
    '101.torque.example.org': 'running', '102.torque.example.org': 'queued', '103.torque.example.org': 'ended',
    '104.torque.example.org': 'running', '105.torque.example.org': 'queued', '106.torque.example.org': 'queued',
    '107.torque.example.org': 'queued', '108.torque.example.org': 'running', '109.torque.example.org': 'ended',
    '110.torque.example.org': 'running',
  });
  t.deepEqual(states.get('103.torque.example.org'), { kind: 'ended', state: 'C', exitCode: 0 });
  t.deepEqual(states.get('109.torque.example.org'), { kind: 'ended', state: 'C', exitCode: 271 });
  t.deepEqual(states.get('110.torque.example.org'), { kind: 'running', state: 'Z', unknown: true });
  t.deepEqual(Object.keys(PBS_STATES).sort(), ['B', 'C', 'E', 'F', 'H', 'M', 'Q', 'R', 'S', 'T', 'U', 'W', 'X']);

  t.is(parseQsub('101.torque.example.org\n'), '101.torque.example.org');
  t.is(parseQsub('qsub: warning: something\n102.srv\n'), '102.srv');
  t.is(parseQsub('7[].srv\n'), '7[].srv');
  t.is(parseQsub('qsub: Unknown queue MSG=cannot locate queue\n'), undefined);

  const plugin = options({ job_plugin: 'Torque' }).jobPlugin;
  const fake = fakeRun([['qstat -f', { code: 153, stdout: QSTAT_F, stderr: 'qstat: Unknown Job Id 200.torque.example.org\n' }]]);
  // qsub said "101.torque" while qstat says "101.torque.example.org": matched by sequence number.
  const polled = await plugin.poll(['101.torque', '200.torque.example.org'], fake.run);
  t.deepEqual(kinds(polled), { '101.torque': 'running' });
  const broken = fakeRun([['qstat', { code: 1, stderr: 'Communication failure.\nqstat: cannot connect to server torque (errno=111)\n' }]]);
  await t.throwsAsync(plugin.poll(['101'], broken.run), { message: /qstat failed/ });
});

test('OpenPBS: qstat -f -F json -x, finished jobs with Exit_status', async (t) => {
  const json = JSON.stringify({
    timestamp: 1700000000,
    pbs_version: '22.05.11',
    pbs_server: 'pbs',
    Jobs: {
      '11.pbs': { Job_Name: 'pulsar_1', job_state: 'R' },
      '12.pbs': { Job_Name: 'pulsar_2', job_state: 'Q' },
      '13.pbs': { Job_Name: 'pulsar_3', job_state: 'F', Exit_status: 2 },
      '14.pbs': { Job_Name: 'pulsar_4', job_state: 'H' },
      '15.pbs': { Job_Name: 'pulsar_5', job_state: 'B' },
      '16.pbs': { Job_Name: 'pulsar_6', job_state: 'X', Exit_status: 0 },
      '17.pbs': { Job_Name: 'pulsar_7', job_state: 'M' },
      '18.pbs': { Job_Name: 'pulsar_8', job_state: 'U' },
    },
  }, null, 4);
  const states = parseQstatJson(json);
  t.deepEqual(kinds(states), {
    '11.pbs': 'running', '12.pbs': 'queued', '13.pbs': 'ended', '14.pbs': 'queued', '15.pbs': 'running', '16.pbs': 'ended', '17.pbs': 'queued', '18.pbs': 'running',
  });
  t.deepEqual(states.get('13.pbs'), { kind: 'ended', state: 'F', exitCode: 2 });
  t.deepEqual(parseQstatJson(''), new Map());
  t.throws(() => parseQstatJson('{"Jobs": {"1.pbs": }}'), { message: /invalid JSON/ });

  const plugin = options({ job_plugin: 'OpenPBS' }).jobPlugin;
  const fake = fakeRun([['qstat', { code: 35, stdout: json, stderr: 'qstat: Unknown Job Id 99.pbs\n' }]]);
  t.deepEqual(kinds(await plugin.poll(['11.pbs', '13.pbs', '99.pbs'], fake.run)), { '11.pbs': 'running', '13.pbs': 'ended' });
});

test('SlurmTorque: the qstat table of Slurm\'s Torque wrappers', async (t) => {
  const table = `Job id              Name             Username        Time Use S Queue
------------------- ---------------- --------------- -------- - ---------------
21                  pulsar_21        galaxy          00:00:05 R debug
22                  pulsar_22        galaxy          00:00:00 Q debug
23                  pulsar_23        galaxy          00:00:10 C debug
`;
  t.deepEqual(kinds(parseQstatTable(table)), { 21: 'running', 22: 'queued', 23: 'ended' });
  const plugin = options({ job_plugin: 'slurm_torque' }).jobPlugin;
  const fake = fakeRun([['qstat', { stdout: table }]]);
  t.deepEqual(kinds(await plugin.poll(['21', '23', '24'], fake.run)), { 21: 'running', 23: 'ended' });
});

// ------------------------------------------------------------------------------------ LSF outputs

test('LSF: bsub output, every bjobs state, "not found" ids tolerated', async (t) => {
  t.is(parseBsub('Job <9147983> is submitted to default queue <research-rh7>.\n'), '9147983');
  t.is(parseBsub('Job <12> is submitted to queue <normal>.\n'), '12');
  t.is(parseBsub('Request aborted by esub. Job not submitted.\n'), undefined);

  const rows = Object.keys(LSF_STATES).map((state, i) => `${i + 1} ${state}`);
  const states = parseBjobs(`${rows.join('\n')}\n50[3] RUN\n60 WHAT\n`);
  const expect: Record<string, SchedulerStatus['kind']> = {
    PEND: 'queued', PROV: 'queued', WAIT: 'queued', PSUSP: 'queued', RUN: 'running', USUSP: 'running', SSUSP: 'running',
    UNKWN: 'running', DONE: 'ended', EXIT: 'ended', ZOMBI: 'ended',
  };
  for (const [state, kind] of Object.entries(expect)) t.is(states.get(String(Object.keys(LSF_STATES).indexOf(state) + 1))?.kind, kind, state);
  t.is(states.get('50[3]')?.kind, 'running');
  t.deepEqual(states.get('60'), { kind: 'running', state: 'WHAT', unknown: true });
  t.deepEqual(states.get(String(Object.keys(LSF_STATES).indexOf('DONE') + 1)), { kind: 'ended', state: 'DONE', exitCode: 0 });

  const plugin = options({ job_plugin: 'LSF' }).jobPlugin;
  const fake = fakeRun([['bjobs', { code: 255, stdout: '1 RUN\n', stderr: 'Job <2> is not found\n' }]]);
  t.deepEqual(kinds(await plugin.poll(['1', '2'], fake.run)), { 1: 'running' });
  const down = fakeRun([['bjobs', { code: 255, stderr: 'LSF is down. Please wait ...\n' }]]);
  await t.throwsAsync(plugin.poll(['1'], down.run), { message: /bjobs failed/ });
});

// ------------------------------------------------------------------------------------ Grid Engine outputs

const QSTAT_XML = `<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>1</JB_job_number>
      <JAT_prio>0.75000</JAT_prio>
      <JB_name>pulsar_x</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-11-22T06:49:19</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
    </job_list>
    <job_list state="running">
      <JB_job_number>3</JB_job_number>
      <JB_name>pulsar_y</JB_name>
      <state>t</state>
      <queue_name>all.q@vm</queue_name>
    </job_list>
    <job_list state="running">
      <JB_job_number>4</JB_job_number>
      <state>dr</state>
    </job_list>
    <job_list state="running">
      <JB_job_number>5</JB_job_number>
      <state>s</state>
    </job_list>
    <job_list state="running">
      <JB_job_number>6</JB_job_number>
      <state>Rr</state>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>2</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>pulsar_x</JB_name>
      <JB_owner>root</JB_owner>
      <state>hqw</state>
      <JB_submission_time>2026-11-22T06:49:19</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
    </job_list>
    <job_list state="pending">
      <JB_job_number>7</JB_job_number>
      <state>qw</state>
    </job_list>
    <job_list state="pending">
      <JB_job_number>8</JB_job_number>
      <state>Eqw</state>
    </job_list>
    <job_list state="pending">
      <JB_job_number>9</JB_job_number>
      <state>??</state>
    </job_list>
  </job_info>
</job_info>
`;

test('Grid Engine: qsub output, qstat -xml for every state letter, error reasons, accounting', async (t) => {
  t.is(parseSgeQsub('Your job 1 ("pulsar_x") has been submitted\n'), '1');
  t.is(parseSgeQsub('Your job-array 12.1-4:1 ("pulsar_x") has been submitted\n'), '12');
  t.is(parseSgeQsub('3\n'), '3');
  t.is(parseSgeQsub('Unable to run job: Job was rejected because job requests unknown queue "nope.q".\nExiting.\n'), undefined);

  const states = parseQstatXml(QSTAT_XML);
  t.deepEqual(kinds(states), { 1: 'running', 2: 'queued', 3: 'running', 4: 'running', 5: 'running', 6: 'running', 7: 'queued', 8: 'failed', 9: 'running' });
  t.deepEqual(states.get('9'), { kind: 'running', state: '??', unknown: true });
  const table: Record<string, SchedulerStatus['kind']> = {
    qw: 'queued', hqw: 'queued', hRwq: 'queued', Rq: 'queued', r: 'running', t: 'running', Rr: 'running', Rt: 'running', s: 'running',
    ts: 'running', S: 'running', T: 'running', dr: 'running', dt: 'running', hr: 'running', Eqw: 'failed', Ehqw: 'failed', EhRqw: 'failed', z: 'ended',
  };
  for (const [state, kind] of Object.entries(table)) t.is(sgeStateKind(state), kind, state);

  const qstatJ = `==============================================================
job_number:                 8
jobname:                    pulsar_8
error reason    1:          11/22/2026 06:55:01 [0:1234]: error: can't chdir to /nonexistent: No such file or directory
scheduling info:            (Collecting of scheduler job information is turned off)
`;
  t.is(parseSgeErrorReason(qstatJ), "11/22/2026 06:55:01 [0:1234]: error: can't chdir to /nonexistent: No such file or directory");
  t.is(parseQacct('==============\nqname        all.q\njobname      pulsar_x\nfailed       100 : assumedly after job\nexit_status  137                  (Killed)\n'), 'Grid Engine accounting: failed=100 : assumedly after job exit_status=137 (Killed)');
  t.is(parseQacct('error: job id 5 not found\n'), undefined);

  const plugin = options({ job_plugin: 'GridEngine' }).jobPlugin;
  const fake = fakeRun([['qstat -xml', { stdout: QSTAT_XML }], ['qstat -j 8', { stdout: qstatJ }]]);
  const polled = await plugin.poll(['1', '8', '100'], fake.run);
  t.deepEqual(kinds(polled), { 1: 'running', 8: 'failed' });
  const failed = polled.get('8');
  t.regex(failed?.kind === 'failed' ? failed.reason : '', /error state Eqw: .*can't chdir/);
});

// ------------------------------------------------------------------------------------ backend flow

/** Fake LSF commands (bash scripts) keeping state in files: what the backend does end to end. */
async function fakeLsf(dir: string): Promise<string> {
  const bin = path.join(dir, 'bin');
  await fs.mkdir(bin);
  const q = posixQuote;
  const scripts: Record<string, string> = {
    bsub: `n=$(( $(cat ${q(dir)}/next 2>/dev/null || echo 100) + 1 )); echo $n > ${q(dir)}/next
cat > ${q(dir)}/submitted-$n
echo PEND > ${q(dir)}/state-$n
echo "Job <$n> is submitted to queue <normal>."`,
    bjobs: `echo "$*" >> ${q(dir)}/bjobs.log
shift 3; rc=0
for id in "$@"; do
  if [ -f ${q(dir)}/state-$id ]; then echo "$id $(cat ${q(dir)}/state-$id)"; else echo "Job <$id> is not found" >&2; rc=255; fi
done
exit $rc`,
    bkill: `echo "$1" >> ${q(dir)}/bkill.log; echo EXIT > ${q(dir)}/state-$1; echo "Job <$1> is being terminated"`,
  };
  for (const [name, body] of Object.entries(scripts)) await fs.writeFile(path.join(bin, name), `#!/bin/bash\n${body}\n`, { mode: 0o755 });
  return bin;
}

function launchSpec(root: string, id: string): LaunchSpec {
  const dir = path.join(root, 'staging', id);
  return {
    jobId: id,
    jobName: `pulsar_${id}`,
    jobDirectory: dir,
    scriptPath: path.join(dir, 'command.sh'),
    pidPath: path.join(dir, 'pid'),
    returnCodePath: path.join(dir, 'return_code'),
    workingDirectory: path.join(dir, 'working'),
    stdoutPath: path.join(dir, 'metadata', 'job_stdout'),
    stderrPath: path.join(dir, 'metadata', 'job_stderr'),
    env: { PATH: '/usr/bin:/bin', HOME: '/tmp' },
    submitParams: {},
  };
}

async function lsfBackend(t: import('ava').ExecutionContext): Promise<{ root: string; backend: CliBackend; spec: (id: string) => Promise<LaunchSpec> }> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-cli-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const bin = await fakeLsf(root);
  const m = manager({ job_plugin: 'LSF', job_queue: 'normal' }, { minPollingInterval: 0.05 });
  const testCtx = { ...ctx, serverEnv: { PATH: `${bin}:${process.env['PATH'] ?? '/usr/bin:/bin'}`, MAGNETAR_PRIVATE_TOKEN: 'secret' } };
  const backend = new CliBackend(m, parseCliOptions(m, testCtx), testCtx, { graceMs: 200 });
  // The monitor's timer does not hold the process open (a server's socket does): this test's must.
  const keepAlive = setInterval(() => undefined, 1000);
  t.teardown(() => {
    clearInterval(keepAlive);
    backend.close();
  });
  const spec = async (id: string): Promise<LaunchSpec> => {
    const s = launchSpec(root, id);
    await fs.mkdir(path.join(s.jobDirectory, 'metadata'), { recursive: true });
    await fs.mkdir(s.workingDirectory);
    await fs.writeFile(s.scriptPath, ['#!/bin/bash', ...backend.scriptHeader(s), 'echo hi', ''].join('\n'));
    return s;
  };
  return { root, backend, spec };
}

test('backend flow (fake LSF): bsub < script, one bjobs per round for all jobs, return_code decides', async (t) => {
  const { root, backend, spec } = await lsfBackend(t);
  const specs = await Promise.all(['a', 'b', 'c'].map(spec));
  const ids: string[] = [];
  for (const s of specs) ids.push(await backend.submit(s)); // the fake bsub numbers jobs without locking
  t.deepEqual(ids, ['101', '102', '103']);
  const submitted = await fs.readFile(path.join(root, `submitted-${ids[0]}`), 'utf8');
  t.true(submitted.startsWith('#!/bin/bash\n#BSUB -o '), 'the script reached bsub on stdin');
  t.true(submitted.includes('#BSUB -q normal\n'));
  t.is(await backend.status(ids[0]!), 'queued');

  const [a, b, c] = ids as [string, string, string];
  const exits = ids.map((id) => backend.waitForExit(id));
  const started = backend.waitForStart(a);
  await new Promise((r) => setTimeout(r, 200));
  await fs.writeFile(path.join(root, `state-${a}`), 'RUN');
  await started;
  // a: DONE with a return code → exited normally; b: EXIT (non-zero) with a return code → still
  // exited normally (the tool's status is Galaxy's to judge); c: EXIT and no return code → failed.
  await fs.writeFile(path.join(specs[0]!.jobDirectory, 'return_code'), '0\n');
  await fs.writeFile(path.join(root, `state-${a}`), 'DONE');
  await fs.writeFile(path.join(specs[1]!.jobDirectory, 'return_code'), '3\n');
  await fs.writeFile(path.join(root, `state-${b}`), 'EXIT');
  await fs.writeFile(path.join(root, `state-${c}`), 'EXIT');
  const [ra, rb, rc] = await Promise.all(exits);
  t.deepEqual(ra, { exitCode: 0 });
  t.deepEqual(rb, { exitCode: 3 });
  t.is(rc?.exitCode, null);
  t.is(rc?.reason, 'LSF ended the job (state EXIT)');

  const log = (await fs.readFile(path.join(root, 'bjobs.log'), 'utf8')).trim().split('\n');
  const batched = log.filter((l) => l.endsWith(` ${a} ${b} ${c}`));
  t.true(batched.length >= 2, 'several rounds asked for the three jobs in one bjobs call each');
  t.true(log.every((l) => l.startsWith('-o jobid stat -noheader ')));
});

test('backend flow (fake LSF): a vanished job without return code fails "scheduler lost the job"; kill uses bkill', async (t) => {
  const { root, backend, spec } = await lsfBackend(t);
  const lost = await backend.submit(await spec('lost'));
  const done = await backend.submit(await spec('done'));
  const exits = [backend.waitForExit(lost), backend.waitForExit(done)];
  await fs.rm(path.join(root, `state-${lost}`));
  await fs.writeFile(path.join(root, 'staging', 'done', 'return_code'), '0');
  await fs.rm(path.join(root, `state-${done}`));
  const [rLost, rDone] = await Promise.all(exits);
  t.is(rLost?.reason, 'the scheduler lost the job: LSF no longer lists it');
  t.deepEqual(rDone, { exitCode: 0 }, 'gone from the queue with a return code: ended normally');

  const victim = await backend.submit(await spec('victim'));
  await backend.kill(victim);
  t.is((await fs.readFile(path.join(root, 'bkill.log'), 'utf8')).trim(), victim);
  await backend.kill("1; touch /tmp/x'"); // not an id: ignored
  t.is((await fs.readFile(path.join(root, 'bkill.log'), 'utf8')).trim(), victim);

  // After a restart: re-attached by external id; a job whose directory was cleaned is killed.
  t.is(await backend.recover(launchSpec(root, 'victim'), victim), victim);
  t.is(await backend.recover(launchSpec(root, 'x'), undefined), undefined);
  t.is(await backend.recover(launchSpec(root, 'x'), '$(id)'), undefined);
  const orphan = await backend.submit(await spec('orphan'));
  const orphanExit = backend.waitForExit(orphan);
  await fs.rm(path.join(root, 'staging', 'orphan'), { recursive: true });
  t.regex((await orphanExit).reason ?? '', /job directory was removed/);
  // The kill is sent as the exit is reported: wait for it.
  const deadline = Date.now() + 5000;
  while (!(await fs.readFile(path.join(root, 'bkill.log'), 'utf8')).includes(orphan) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  t.true((await fs.readFile(path.join(root, 'bkill.log'), 'utf8')).includes(orphan));
});

test('backend: a submission the scheduler refuses, or whose output has no id, is an error with its message', async (t) => {
  const { root, backend, spec } = await lsfBackend(t);
  await fs.writeFile(path.join(root, 'bin', 'bsub'), '#!/bin/bash\necho "Bad queue name. Job not submitted." >&2\nexit 255\n', { mode: 0o755 });
  const refused = await t.throwsAsync(backend.submit(await spec('refused')), { instanceOf: BackendError, message: 'LSF did not accept the job: Bad queue name. Job not submitted. (exit status 255)' });
  t.is(refused?.code, 'MAG_ERR_BACKEND_SUBMIT');
  await fs.writeFile(path.join(root, 'bin', 'bsub'), '#!/bin/bash\necho "all good"\n', { mode: 0o755 });
  const noId = await t.throwsAsync(backend.submit(await spec('noid')), { instanceOf: BackendError, message: 'no job id in the answer of bsub: "all good"' });
  t.is(noId?.code, 'MAG_ERR_BACKEND_COMMAND');
  await fs.rm(path.join(root, 'bin', 'bsub'));
  const missing = await t.throwsAsync(backend.submit(await spec('missing')), { instanceOf: BackendError, message: /^LocalShell could not run bsub: .*command not found/ });
  t.is(missing?.code, 'MAG_ERR_BACKEND_UNREACHABLE');
  await fs.writeFile(path.join(root, 'bin', 'bjobs'), '#!/bin/bash\necho "LSF is down" >&2\nexit 255\n', { mode: 0o755 });
  t.is(await backend.status('5'), 'queued', 'scheduler unreachable after a restart: keep watching');
});
