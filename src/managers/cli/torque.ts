import { BackendError } from '../../errors.js';
import type { Run } from './command.js';
import {
  checkStatusCommand,
  headerLines,
  isExternalId,
  lines,
  mapParams,
  statusFrom,
  type Directive,
  type HeaderJob,
  type JobPlugin,
  type JobPluginName,
  type ParamSpec,
  type SchedulerStatus,
  type StateKind,
} from './job-plugin.js';

/**
 * `job_<name>` parameters of the PBS family: upstream Pulsar's Torque argmap (PBS attribute names),
 * plus `hold`. Names are matched case-insensitively (`job_Resource_List` = `job_resource_list`).
 */
export const PBS_PARAMS: Readonly<Record<string, ParamSpec>> = {
  destination: { flag: '-q' },
  execution_time: { flag: '-a' },
  account_name: { flag: '-A' },
  checkpoint: { flag: '-c' },
  group_list: { flag: '-g' },
  hold_types: { flag: '-h' },
  join_paths: { flag: '-j' },
  keep_files: { flag: '-k' },
  resource_list: { flag: '-l' },
  mail_points: { flag: '-m' },
  mail_users: { flag: '-M' },
  priority: { flag: '-p' },
  rerunable: { flag: '-r' },
  shell_path_list: { flag: '-S' },
  user_list: { flag: '-u' },
  variable_list: { flag: '-v' },
  hold: { flag: '-h', boolean: true },
};

// Output_Path/Error_Path/Job_Name (-o/-e/-N) are magnetar's; arrays (-t, -J) change the ids; -I is interactive.
const RESERVED = new Set(['-o', '-e', '-N', '-t', '-J', '-I']);

/**
 * PBS `job_state` letters (Torque: Q H W T S R E C; PBS Pro/OpenPBS add B F X M U). `C`, `F` and
 * `X` are finished jobs (kept by the server for a while); `E` is exiting (still running its end).
 */
export const PBS_STATES: Readonly<Record<string, StateKind>> = {
  Q: 'queued', // queued, eligible to run
  H: 'queued', // held
  W: 'queued', // waiting for its execution time
  T: 'queued', // being moved to a new location
  M: 'queued', // moved to another server
  R: 'running',
  E: 'running', // exiting after having run
  S: 'running', // suspended
  U: 'running', // suspended by workstation activity (PBS Pro)
  B: 'running', // array job with at least one subjob started (PBS Pro)
  C: 'ended', // completed (Torque)
  F: 'ended', // finished (PBS Pro, qstat -x)
  X: 'ended', // subjob finished (PBS Pro)
};

/** The part of a PBS id before the server name (`123.server.domain` → `123`). */
function sequencePart(id: string): string {
  return id.split('.')[0] ?? id;
}

/** Look ids up by the full id, or by its sequence number (qsub and qstat may spell the server differently). */
function pick(all: ReadonlyMap<string, SchedulerStatus>, ids: readonly string[]): Map<string, SchedulerStatus> {
  const bySequence = new Map<string, SchedulerStatus>();
  for (const [id, status] of all) bySequence.set(sequencePart(id), status);
  const wanted = new Map<string, SchedulerStatus>();
  for (const id of ids) {
    const status = all.get(id) ?? bySequence.get(sequencePart(id));
    if (status !== undefined) wanted.set(id, status);
  }
  return wanted;
}

/** `qstat -f` text: `Job Id: X` blocks with `job_state = R` and (finished) `exit_status = N`. */
export function parseQstatFull(stdout: string): Map<string, SchedulerStatus> {
  const states = new Map<string, SchedulerStatus>();
  let id: string | undefined;
  let state: string | undefined;
  let exitCode: number | undefined;
  const flush = (): void => {
    if (id !== undefined && state !== undefined) states.set(id, statusFrom(PBS_STATES, state, exitCode));
    state = undefined;
    exitCode = undefined;
  };
  for (const line of stdout.split(/\r?\n/)) {
    const start = /^Job Id:\s*(\S+)/.exec(line);
    if (start !== null) {
      flush();
      id = start[1];
      continue;
    }
    const attr = /^\s+([A-Za-z_]+)\s*=\s*(.*?)\s*$/.exec(line);
    if (attr === null) continue;
    const name = attr[1]!.toLowerCase();
    if (name === 'job_state') state = attr[2];
    else if (name === 'exit_status' && /^-?\d+$/.test(attr[2]!)) exitCode = Number(attr[2]);
  }
  flush();
  return states;
}

/** OpenPBS `qstat -f -F json`: `{"Jobs": {"123.server": {"job_state": "R", "Exit_status": 0}}}`. */
export function parseQstatJson(stdout: string): Map<string, SchedulerStatus> {
  const states = new Map<string, SchedulerStatus>();
  const start = stdout.indexOf('{');
  const end = stdout.lastIndexOf('}');
  if (start === -1 || end < start) return states;
  let doc: unknown;
  try {
    doc = JSON.parse(stdout.slice(start, end + 1));
  } catch (error) {
    throw new BackendError('MAG_ERR_BACKEND_COMMAND', `qstat printed invalid JSON: ${(error as Error).message}`, { cause: error });
  }
  const jobs = typeof doc === 'object' && doc !== null ? (doc as Record<string, unknown>)['Jobs'] : undefined;
  if (typeof jobs !== 'object' || jobs === null) return states;
  for (const [id, job] of Object.entries(jobs as Record<string, unknown>)) {
    if (typeof job !== 'object' || job === null) continue;
    const fields = job as Record<string, unknown>;
    const state = fields['job_state'];
    if (typeof state !== 'string') continue;
    const exit = fields['Exit_status'] ?? fields['exit_status'];
    const exitCode = typeof exit === 'number' ? exit : typeof exit === 'string' && /^-?\d+$/.test(exit) ? Number(exit) : undefined;
    states.set(id, statusFrom(PBS_STATES, state, exitCode));
  }
  return states;
}

/** The `qstat` table of Slurm's Torque wrappers: `Job id  Name  Username  Time Use  S  Queue`. */
export function parseQstatTable(stdout: string): Map<string, SchedulerStatus> {
  const states = new Map<string, SchedulerStatus>();
  for (const line of lines(stdout)) {
    if (/^Job\s*id/i.test(line) || /^-+(\s+-+)*$/.test(line)) continue;
    const parts = line.split(/\s+/);
    if (parts.length < 5) continue;
    states.set(parts[0]!, statusFrom(PBS_STATES, parts[4]!));
  }
  return states;
}

/** qsub prints the new id alone (`123.server`), possibly after warnings. */
export function parseQsub(stdout: string): string | undefined {
  const last = lines(stdout).at(-1);
  return last !== undefined && /^\d+(\[\d*\])?(\.[A-Za-z0-9._-]+)?$/.test(last) && isExternalId(last) ? last : undefined;
}

/** Beyond this many ids one listing of all jobs replaces a long id list. */
const MAX_IDS_PER_QUERY = 200;

const UNKNOWN_JOB = /Unknown Job Id|Job has finished|does not exist/i;

type PbsFlavour = Extract<JobPluginName, 'Torque' | 'SlurmTorque' | 'OpenPBS'>;

/**
 * Torque, OpenPBS/PBS Pro and Slurm's Torque wrappers: the same `#PBS` header, `qsub`, `qdel`;
 * status by `qstat -f <ids>` (Torque), `qstat -f -F json -x <ids>` (OpenPBS, `-x` keeps finished
 * jobs with their exit status) or the plain `qstat` table (SlurmTorque, no `-f` exit status).
 */
export function pbsPlugin(flavour: PbsFlavour, params: readonly (readonly [string, string])[]): JobPlugin {
  const directives: Directive[] = mapParams(params, PBS_PARAMS, RESERVED);
  return {
    name: flavour,
    scheduler: flavour === 'OpenPBS' ? 'PBS' : flavour === 'SlurmTorque' ? 'Slurm (Torque wrappers)' : 'Torque',
    header(job: HeaderJob) {
      return headerLines('#PBS', job, { jobName: '-N' }, directives);
    },
    submit(scriptPath) {
      return { argv: ['qsub', scriptPath] };
    },
    parseSubmit: parseQsub,
    async poll(ids: readonly string[], run: Run) {
      if (flavour === 'SlurmTorque') {
        const result = await run({ argv: ['qstat'] });
        checkStatusCommand('qstat', result);
        return pick(parseQstatTable(result.stdout), ids);
      }
      if (ids.length === 0) return new Map();
      // A very long id list: list every job instead (OpenPBS without -x: the history can be huge;
      // finished jobs then count as gone and their return_code decides).
      const listAll = ids.length > MAX_IDS_PER_QUERY;
      const argv: [string, ...string[]] =
        flavour === 'OpenPBS'
          ? listAll ? ['qstat', '-f', '-F', 'json'] : ['qstat', '-f', '-F', 'json', '-x', ...ids]
          : listAll ? ['qstat', '-f'] : ['qstat', '-f', ...ids];
      const result = await run({ argv });
      // qstat reports finished-and-purged ids on stderr and still prints the others.
      checkStatusCommand('qstat', result, UNKNOWN_JOB);
      return pick(flavour === 'OpenPBS' ? parseQstatJson(result.stdout) : parseQstatFull(result.stdout), ids);
    },
    kill(id) {
      return { argv: ['qdel', id] };
    },
    async explain() {
      return undefined;
    },
  };
}
