import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { buildJobScript, envStatements } from '../../src/jobs/script.js';

const run = promisify(execFile);

const REPORTED = ['GALAXY_SLOTS', 'GALAXY_SLOTS_CONFIGURED', 'GALAXY_MEMORY_MB', 'GALAXY_MEMORY_MB_PER_SLOT', 'GALAXY_MEMORY_GB', 'GALAXY_MEMORY_GB_PER_SLOT'] as const;
type Reported = Partial<Record<(typeof REPORTED)[number], string>>;

interface Job {
  readonly dir: string;
  readonly script: string;
}

/** A job directory whose command prints the slot and memory variables it sees (exported only). */
async function makeJob(t: ExecutionContext, env: readonly string[] = [], command?: string): Promise<Job> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-memory-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  // As the service does before it starts a job (so the script need not run mkdir).
  for (const sub of ['working', 'metadata', 'tmp', 'home']) await fs.mkdir(path.join(dir, sub));
  const printer = REPORTED.map((name) => `if [ -n "\${${name}+x}" ]; then printf '%s=%s\\n' ${name} "$(printenv ${name})"; fi`).join('; ');
  const script = buildJobScript({
    jobId: '1',
    jobDirectory: dir,
    commandLine: command ?? printer,
    envStatements: [...env],
    tmpDir: undefined,
    galaxyLib: undefined,
    galaxyVirtualEnv: undefined,
    preserveGalaxyPythonEnvironment: false,
  });
  const file = path.join(dir, 'command.sh');
  await fs.writeFile(file, script, { mode: 0o700 });
  return { dir, script: file };
}

/** Run the job under `schedulerEnv` (nothing else but PATH) and read what it exported. */
async function runJob(job: Job, schedulerEnv: Record<string, string>): Promise<{ vars: Reported; instrument: string; log: string }> {
  await fs.rm(path.join(job.dir, 'metadata', 'memory_statement.log'), { force: true });
  const { stdout } = await run('/bin/bash', [job.script], { cwd: path.join(job.dir, 'working'), env: { PATH: '/usr/bin:/bin', ...schedulerEnv } });
  const vars: Record<string, string> = {};
  for (const line of stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) vars[line.slice(0, eq)] = line.slice(eq + 1);
  }
  const instrument = await fs.readFile(path.join(job.dir, 'metadata', '__instrument_core_galaxy_memory_mb'), 'utf8');
  const log = await fs.readFile(path.join(job.dir, 'metadata', 'memory_statement.log'), 'utf8').catch(() => '');
  return { vars, instrument, log };
}

test('no scheduler: 1 slot, not configured, no memory variables, empty memory instrument', async (t) => {
  const job = await makeJob(t);
  const { vars, instrument, log } = await runJob(job, {});
  t.deepEqual(vars, { GALAXY_SLOTS: '1' });
  t.is(instrument, '\n', 'upstream writes an empty line when the memory is unknown');
  t.is(log, '');
  t.is((await fs.readFile(path.join(job.dir, 'metadata', '__instrument_core_galaxy_slots'), 'utf8')).trim(), '1');
});

test('Slurm: SLURM_MEM_PER_NODE is the job total (MB), divided among SLURM_CPUS_ON_NODE slots', async (t) => {
  const job = await makeJob(t);
  const { vars, instrument } = await runJob(job, { SLURM_JOB_ID: '42', SLURM_CPUS_ON_NODE: '4', SLURM_MEM_PER_NODE: '4096' });
  t.deepEqual(vars, {
    GALAXY_SLOTS: '4',
    GALAXY_SLOTS_CONFIGURED: '1',
    GALAXY_MEMORY_MB: '4096',
    GALAXY_MEMORY_MB_PER_SLOT: '1024',
    GALAXY_MEMORY_GB: '4',
    GALAXY_MEMORY_GB_PER_SLOT: '1',
  });
  t.is(instrument.trim(), '4096');
});

test('GALAXY_SLOTS_CONFIGURED is exported whenever a scheduler said how many slots, even 1 (upstream)', async (t) => {
  const job = await makeJob(t);
  t.deepEqual((await runJob(job, { SLURM_CPUS_ON_NODE: '1' })).vars, { GALAXY_SLOTS: '1', GALAXY_SLOTS_CONFIGURED: '1' });
  t.deepEqual((await runJob(job, { PYTHON_CPU_COUNT: '2' })).vars, { GALAXY_SLOTS: '2', GALAXY_SLOTS_CONFIGURED: '1' }, 'HTCondor');
  t.deepEqual((await runJob(job, { NSLOTS: ' 3 ' })).vars, { GALAXY_SLOTS: '3', GALAXY_SLOTS_CONFIGURED: '1' });
  t.deepEqual((await runJob(job, { NSLOTS: '08' })).vars, { GALAXY_SLOTS: '8', GALAXY_SLOTS_CONFIGURED: '1' }, 'decimal, not octal');
  t.deepEqual((await runJob(job, { NSLOTS: 'many' })).vars, { GALAXY_SLOTS: '1', GALAXY_SLOTS_CONFIGURED: '1' }, 'not a number: 1');
  t.deepEqual((await runJob(job, {})).vars, { GALAXY_SLOTS: '1' });
});

test('Slurm: SLURM_MEM_PER_CPU × slots; SLURM_NTASKS × SLURM_CPUS_PER_TASK slots', async (t) => {
  const job = await makeJob(t);
  const perCpu = await runJob(job, { SLURM_JOB_ID: '42', SLURM_CPUS_ON_NODE: '3', SLURM_MEM_PER_CPU: '1000' });
  t.is(perCpu.vars.GALAXY_MEMORY_MB, '3000');
  t.is(perCpu.vars.GALAXY_MEMORY_MB_PER_SLOT, '1000');
  t.is(perCpu.vars.GALAXY_MEMORY_GB, '2');
  const tasks = await runJob(job, { SLURM_NTASKS: '2', SLURM_CPUS_PER_TASK: '3', SLURM_MEM_PER_CPU: '2G' });
  t.is(tasks.vars.GALAXY_SLOTS, '6');
  t.is(tasks.vars.GALAXY_MEMORY_MB_PER_SLOT, '2048');
  t.is(tasks.vars.GALAXY_MEMORY_MB, '12288');
  t.is(tasks.vars.GALAXY_MEMORY_GB_PER_SLOT, '2');
});

test('Slurm without memory variables asks scontrol (Mem= of -do show job) as upstream', async (t) => {
  const job = await makeJob(t);
  const bin = path.join(job.dir, 'bin');
  await fs.mkdir(bin);
  // Recorded `scontrol -do show job` line (Slurm 22.05, abridged), with the -d "Mem=" node detail.
  const recorded =
    'JobId=42 JobName=pulsar_1 UserId=galaxy(1000) GroupId=galaxy(1000) MCS_label=N/A Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:01 TimeLimit=UNLIMITED NumNodes=1 NumCPUs=2 NumTasks=1 CPUs/Task=2 ReqB:S:C:T=0:0:*:* TRES=cpu=2,mem=512M,node=1,billing=2 Nodes=vm CPU_IDs=0-1 Mem=512 GRES= MinCPUsNode=2 MinMemoryCPU=256M MinTmpDiskNode=0';
  await fs.writeFile(path.join(bin, 'scontrol'), `#!/bin/sh\necho "$@" > '${job.dir}/scontrol.argv'\necho '${recorded}'\n`, { mode: 0o755 });
  const { vars } = await runJob(job, { PATH: `${bin}:/usr/bin:/bin`, SLURM_JOB_ID: '42', SLURM_CPUS_ON_NODE: '2' });
  t.is(vars.GALAXY_MEMORY_MB, '512');
  t.is(vars.GALAXY_MEMORY_MB_PER_SLOT, '256');
  t.is((await fs.readFile(path.join(job.dir, 'scontrol.argv'), 'utf8')).trim(), '-do show job 42');
});

test('Grid Engine: SGE_HGR_h_vmem is per slot, in every memory_specifier form', async (t) => {
  const job = await makeJob(t);
  const cases: Array<[value: string, perSlot: string | undefined]> = [
    ['4G', '4096'],
    ['4.5G', '4608'],
    ['4096M', '4096'],
    ['4g', '3814'], // lower case: powers of 1000 (sge_types)
    ['2147483648', '2048'], // bare: bytes
    ['1048576K', '1024'],
    ['1T', '1048576'],
    ['4096', undefined], // 4096 bytes: less than 1 MB
    ['INFINITY', undefined],
  ];
  for (const [value, perSlot] of cases) {
    const { vars, log } = await runJob(job, { NSLOTS: '2', SGE_HGR_h_vmem: value });
    t.is(vars.GALAXY_SLOTS, '2', value);
    t.is(vars.GALAXY_MEMORY_MB_PER_SLOT, perSlot, value);
    t.is(vars.GALAXY_MEMORY_MB, perSlot === undefined ? undefined : String(Number(perSlot) * 2), value);
    if (perSlot === undefined) t.regex(log, new RegExp(`SGE_HGR_h_vmem=${value} `), 'the reason is logged');
    else t.is(log, '');
  }
});

test('PBS: PBS_RESC_MEM is the job total (bytes, or kb/mb/gb); LSF: LSB_MAX_MEM_RUSAGE in KB', async (t) => {
  const job = await makeJob(t);
  const gb = await runJob(job, { PBS_NCPUS: '4', PBS_RESC_MEM: '16gb' });
  t.is(gb.vars.GALAXY_SLOTS, '4');
  t.is(gb.vars.GALAXY_MEMORY_MB, '16384');
  t.is(gb.vars.GALAXY_MEMORY_MB_PER_SLOT, '4096');
  const bytes = await runJob(job, { NCPUS: '2', PBS_RESC_MEM: String(8 * 1024 ** 3) });
  t.is(bytes.vars.GALAXY_MEMORY_MB, '8192');
  t.is(bytes.vars.GALAXY_MEMORY_MB_PER_SLOT, '4096');
  const nodefile = path.join(job.dir, 'nodes');
  await fs.writeFile(nodefile, 'n1\nn1\nn1\n');
  const nodes = await runJob(job, { PBS_NODEFILE: nodefile, PBS_RESC_MEM: '3000mb' });
  t.is(nodes.vars.GALAXY_SLOTS, '3');
  t.is(nodes.vars.GALAXY_MEMORY_MB_PER_SLOT, '1000');
  const lsf = await runJob(job, { LSB_DJOB_NUMPROC: '2', LSB_MAX_MEM_RUSAGE: '8388608' });
  t.is(lsf.vars.GALAXY_SLOTS, '2');
  t.is(lsf.vars.GALAXY_MEMORY_MB, '8192');
  t.is(lsf.vars.GALAXY_MEMORY_GB_PER_SLOT, '4');
});

test('values set for the job win; overhead and floor as upstream; zero and garbage are not exported', async (t) => {
  const preset = await makeJob(t, envStatements([{ name: 'GALAXY_MEMORY_MB', value: '6000' }], false));
  const first = await runJob(preset, { SLURM_CPUS_ON_NODE: '2', SLURM_MEM_PER_NODE: '100000' });
  t.is(first.vars.GALAXY_MEMORY_MB, '6000', 'a destination <env> value is kept');
  t.is(first.vars.GALAXY_MEMORY_MB_PER_SLOT, '3000');

  const overhead = await makeJob(t, envStatements([{ name: 'GALAXY_MEMORY_MB_OVERHEAD', value: '1024' }], false));
  t.is((await runJob(overhead, { SLURM_MEM_PER_NODE: '4096' })).vars.GALAXY_MEMORY_MB, '3072');
  t.is((await runJob(overhead, { SLURM_MEM_PER_NODE: '1100' })).vars.GALAXY_MEMORY_MB, '256', 'never below the floor');

  const zero = await makeJob(t);
  const z = await runJob(zero, { SLURM_MEM_PER_NODE: '0' });
  t.is(z.vars.GALAXY_MEMORY_MB, undefined);
  t.is(z.instrument, '\n');
  t.regex(z.log, /SLURM_MEM_PER_NODE=0 is less than 1 MB/);
});

test('hostile scheduler or env values are never evaluated as arithmetic or commands', async (t) => {
  const job = await makeJob(t);
  const canary = path.join(job.dir, 'canary');
  const hostile = `a[$(touch ${canary})]`;
  for (const name of ['SLURM_MEM_PER_NODE', 'SLURM_MEM_PER_CPU', 'SGE_HGR_h_vmem', 'PBS_RESC_MEM', 'LSB_MAX_MEM_RUSAGE', 'SLURM_CPUS_ON_NODE', 'NSLOTS']) {
    const { vars } = await runJob(job, { [name]: hostile, SLURM_NTASKS: hostile });
    t.is(vars.GALAXY_MEMORY_MB, undefined, name);
  }
  const viaEnv = await makeJob(t, envStatements([{ name: 'GALAXY_MEMORY_MB', value: hostile }, { name: 'GALAXY_SLOTS', value: hostile }], false));
  const { vars, log } = await runJob(viaEnv, { SLURM_MEM_PER_NODE: '2048' });
  t.is(vars.GALAXY_MEMORY_MB, '2048', 'a preset that is not a number is dropped; the scheduler value is used');
  t.regex(log, /GALAXY_MEMORY_MB=.* is not a whole number/);
  await t.throwsAsync(fs.access(canary), undefined, 'no command ran');
});

test('a local job starts no process for slots and memory (only the command subshell)', async (t) => {
  const job = await makeJob(t, [], ':');
  let output: string;
  try {
    ({ stderr: output } = await run('strace', ['-f', '-qq', '-e', 'trace=fork,vfork,clone,clone3', '/bin/bash', job.script], {
      cwd: path.join(job.dir, 'working'),
      env: { PATH: '/usr/bin:/bin' },
    }));
  } catch (error) {
    t.log(`strace unavailable here: ${(error as Error).message.split('\n')[0]}`);
    t.pass();
    return;
  }
  const forks = output.split('\n').filter((line) => /^(\[pid +\d+\] )?(clone3?|v?fork)\(/.test(line));
  t.is(forks.length, 1, output);
});
