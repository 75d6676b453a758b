import type { Command, CommandResult, Run } from './command.js';
import {
  checkStatusCommand,
  headerLines,
  isExternalId,
  lines,
  mapParams,
  pickStatuses,
  statusFrom,
  type Directive,
  type HeaderJob,
  type JobPlugin,
  type ParamSpec,
  type SchedulerStatus,
  type StateKind,
} from './job-plugin.js';

/** `job_<name>` parameters of the Slurm plugin (the first three are upstream Pulsar's). */
export const SLURM_PARAMS: Readonly<Record<string, ParamSpec>> = {
  time: { flag: '-t' },
  ncpus: { flag: '-c' },
  partition: { flag: '-p' },
  account: { flag: '-A' },
  qos: { flag: '--qos' },
  mem: { flag: '--mem' },
  mem_per_cpu: { flag: '--mem-per-cpu' },
  nodes: { flag: '-N' },
  ntasks: { flag: '-n' },
  constraint: { flag: '-C' },
  gres: { flag: '--gres' },
  reservation: { flag: '--reservation' },
  nodelist: { flag: '-w' },
  exclude: { flag: '-x' },
  dependency: { flag: '-d' },
  comment: { flag: '--comment' },
  hold: { flag: '-H', boolean: true },
  exclusive: { flag: '--exclusive', boolean: true },
};

const RESERVED = new Set([
  '-o', '--output', '-e', '--error', '-J', '--job-name', '-D', '--chdir',
  // Arrays change the ids squeue prints; --wait/-W blocks sbatch until the job ends; --wrap replaces the script.
  '-a', '--array', '-W', '--wait', '--wrap', '--test-only',
]);

/**
 * Slurm job states, compact (`squeue %t`) and long (`scontrol JobState`) forms, from the squeue
 * man page ("JOB STATE CODES").
 */
export const SLURM_STATES: Readonly<Record<string, StateKind>> = {
  PD: 'queued', PENDING: 'queued',
  CF: 'queued', CONFIGURING: 'queued',
  RD: 'queued', RESV_DEL_HOLD: 'queued',
  RF: 'queued', REQUEUE_FED: 'queued',
  RH: 'queued', REQUEUE_HOLD: 'queued',
  RQ: 'queued', REQUEUED: 'queued',
  R: 'running', RUNNING: 'running',
  CG: 'running', COMPLETING: 'running',
  RS: 'running', RESIZING: 'running',
  SI: 'running', SIGNALING: 'running',
  SO: 'running', STAGE_OUT: 'running',
  ST: 'running', STOPPED: 'running',
  S: 'running', SUSPENDED: 'running',
  CD: 'ended', COMPLETED: 'ended',
  CA: 'ended', CANCELLED: 'ended',
  F: 'ended', FAILED: 'ended',
  TO: 'ended', TIMEOUT: 'ended',
  PR: 'ended', PREEMPTED: 'ended',
  NF: 'ended', NODE_FAIL: 'ended',
  BF: 'ended', BOOT_FAIL: 'ended',
  DL: 'ended', DEADLINE: 'ended',
  OOM: 'ended', OUT_OF_MEMORY: 'ended',
  RV: 'ended', REVOKED: 'ended',
  SE: 'ended', SPECIAL_EXIT: 'ended',
};

/** Beyond this many ids one listing of all jobs is cheaper than a long `-j` list. */
const MAX_IDS_PER_QUERY = 200;
const FORMAT = '%A %t';

/** `squeue -h -o '%A %t'` rows → status per job id. */
export function parseSqueue(stdout: string): Map<string, SchedulerStatus> {
  const states = new Map<string, SchedulerStatus>();
  for (const line of lines(stdout)) {
    const match = /^(\S+)\s+(\S+)$/.exec(line);
    if (match === null) continue;
    states.set(match[1]!, statusFrom(SLURM_STATES, match[2]!));
  }
  return states;
}

/** `Submitted batch job 123` (also `… on cluster c`), or `--parsable` output `123[;cluster]`. */
export function parseSbatch(stdout: string): string | undefined {
  const id = /Submitted batch job (\d+)/.exec(stdout)?.[1] ?? /^(\d+)(?:;\S+)?$/m.exec(stdout.trim())?.[1];
  return id !== undefined && isExternalId(id) ? id : undefined;
}

/** `scontrol show job -o` → `JobState=… Reason=… ExitCode=…`. */
export function parseScontrol(stdout: string): string | undefined {
  // RegExp from constant field names below (never client text); no nested quantifiers.
  const field = (name: string): string | undefined => new RegExp(`(?:^|\\s)${name}=(\\S+)`).exec(stdout)?.[1];
  const state = field('JobState');
  if (state === undefined) return undefined;
  const parts = [`JobState=${state}`];
  const reason = field('Reason');
  if (reason !== undefined && reason !== 'None') parts.push(`Reason=${reason}`);
  const exit = field('ExitCode');
  if (exit !== undefined) parts.push(`ExitCode=${exit}`);
  return `Slurm reports ${parts.join(' ')}`;
}

function squeue(ids: readonly string[] | undefined): Command {
  const base = ['squeue', '-h', '-a', '-t', 'all', '-o', FORMAT] as const;
  return { argv: ids === undefined ? [...base] : [...base, '-j', ids.join(',')] };
}

export function slurmPlugin(params: readonly (readonly [string, string])[]): JobPlugin {
  const directives: Directive[] = mapParams(params, SLURM_PARAMS, RESERVED);
  return {
    name: 'Slurm',
    scheduler: 'Slurm',
    header(job: HeaderJob) {
      return headerLines('#SBATCH', job, { jobName: '-J', workingDirectory: '-D' }, directives);
    },
    submit(scriptPath) {
      return { argv: ['sbatch', scriptPath] };
    },
    parseSubmit: parseSbatch,
    async poll(ids: readonly string[], run: Run) {
      let result: CommandResult | undefined;
      if (ids.length <= MAX_IDS_PER_QUERY) {
        result = await run(squeue(ids));
        // One unknown (purged) id fails the whole query in some Slurm versions ("Invalid job id
        // specified"; 22.05 does so for a single id): list every job instead and filter.
        if (result.code !== 0 && /Invalid job id/i.test(result.stderr)) result = undefined;
      }
      result ??= await run(squeue(undefined));
      checkStatusCommand('squeue', result);
      return pickStatuses(parseSqueue(result.stdout), ids);
    },
    kill(id) {
      return { argv: ['scancel', id] };
    },
    async explain(id: string, run: Run) {
      // Slurm keeps finished jobs for MinJobAge (300 s by default) after they leave squeue.
      const result = await run({ argv: ['scontrol', 'show', 'job', '-o', id] });
      return result.code === 0 ? parseScontrol(result.stdout) : undefined;
    },
  };
}
