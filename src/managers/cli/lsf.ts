import { readFileSync } from 'node:fs';
import type { Run } from './command.js';
import {
  checkStatusCommand,
  headerLines,
  isExternalId,
  JobParamError,
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

const HOST_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/;

/**
 * `excluded_hosts`: an absolute path of a file with one host per line (upstream), or the hosts
 * themselves separated by commas or spaces.
 */
function excludedHosts(value: string): Directive[] {
  let text = value;
  if (value.startsWith('/')) {
    try {
      text = readFileSync(value, 'utf8');
    } catch (error) {
      throw new JobParamError('excluded_hosts', `cannot read ${value}: ${(error as Error).message}`);
    }
  }
  const hosts = text.split(/[\s,]+/).filter((h) => h !== '');
  for (const host of hosts) {
    if (!HOST_RE.test(host)) throw new JobParamError('excluded_hosts', `${JSON.stringify(host)} is not a host name`);
  }
  if (hosts.length === 0) return [];
  return [{ flag: '-R', value: `"select[${hosts.map((h) => `hname!='${h}'`).join(' && ')}]"` }];
}

/** `job_<name>` parameters of the LSF plugin (upstream Pulsar's argmap plus excluded_hosts). */
export const LSF_PARAMS: Readonly<Record<string, ParamSpec>> = {
  // Memory needs both the limit and a reservation.
  memory: { expand: (v) => [{ flag: '-M', value: v }, { flag: '-R', value: `"rusage[mem=${v}]"` }] },
  cores: { flag: '-n' },
  queue: { flag: '-q' },
  working_dir: { flag: '-cwd' },
  project: { flag: '-P' },
  excluded_hosts: { expand: excludedHosts },
};

// -K waits for the job to end; -I* are interactive; -J is the job name (arrays would change ids).
const RESERVED = new Set(['-o', '-oo', '-e', '-eo', '-J', '-K', '-I', '-Ip', '-Is']);

/** LSF job states (bjobs man page, "Job states"). */
export const LSF_STATES: Readonly<Record<string, StateKind>> = {
  PEND: 'queued',
  PROV: 'queued', // waiting for a provisioned host
  WAIT: 'queued', // chunk job member waiting to run
  PSUSP: 'queued', // suspended (held) while pending
  RUN: 'running',
  USUSP: 'running', // suspended by its owner or an administrator while running
  SSUSP: 'running', // suspended by LSF (load, run windows) while running
  UNKWN: 'running', // mbatchd lost contact with the host: the job may still be running
  DONE: 'ended', // exited 0
  EXIT: 'ended', // exited non-zero, or killed
  ZOMBI: 'ended', // killed while its host was unreachable
};

/** `bjobs -o 'jobid stat' -noheader` rows (ids may carry an array index: `123[4]`). */
export function parseBjobs(stdout: string): Map<string, SchedulerStatus> {
  const states = new Map<string, SchedulerStatus>();
  for (const line of lines(stdout)) {
    const match = /^(\S+)\s+([A-Z]+)$/.exec(line);
    if (match === null) continue;
    const state = match[2]!;
    states.set(match[1]!, statusFrom(LSF_STATES, state, state === 'DONE' ? 0 : undefined));
  }
  return states;
}

/** `Job <123> is submitted to queue <normal>.` */
export function parseBsub(stdout: string): string | undefined {
  const id = /Job <([^>]+)> is submitted/.exec(stdout)?.[1] ?? /Job <(\d+)>/.exec(stdout)?.[1];
  return id !== undefined && isExternalId(id) ? id : undefined;
}

/** Beyond this many ids one listing of all jobs replaces a long id list. */
const MAX_IDS_PER_QUERY = 200;

const NOT_FOUND = /is not found|No (unfinished )?job found/i;

/**
 * LSF: `#BSUB` directives are only read from a script given on standard input, so submission is
 * `bsub < script` (the shell plugin pipes the file, or adds the redirect to the remote command).
 */
export function lsfPlugin(params: readonly (readonly [string, string])[]): JobPlugin {
  const directives: Directive[] = mapParams(params, LSF_PARAMS, RESERVED);
  return {
    name: 'LSF',
    scheduler: 'LSF',
    header(job: HeaderJob) {
      return headerLines('#BSUB', job, { jobName: '-J' }, directives);
    },
    submit(scriptPath) {
      return { argv: ['bsub'], stdinFile: scriptPath };
    },
    parseSubmit: parseBsub,
    async poll(ids: readonly string[], run: Run) {
      if (ids.length === 0) return new Map();
      // A very long id list: all of the user's jobs, recently finished ones included (-a).
      const argv: [string, ...string[]] =
        ids.length > MAX_IDS_PER_QUERY ? ['bjobs', '-a', '-o', 'jobid stat', '-noheader'] : ['bjobs', '-o', 'jobid stat', '-noheader', ...ids];
      const result = await run({ argv });
      // Unknown (long finished) ids are reported as "Job <N> is not found", the others still listed.
      checkStatusCommand('bjobs', result, NOT_FOUND);
      return pickStatuses(parseBjobs(result.stdout), ids);
    },
    kill(id) {
      return { argv: ['bkill', id] };
    },
    async explain() {
      return undefined;
    },
  };
}
