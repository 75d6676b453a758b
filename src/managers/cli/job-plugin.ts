import { BackendError } from '../../errors.js';
import { describeFailure, type Command, type CommandResult, type Run } from './command.js';

export type JobPluginName = 'Torque' | 'SlurmTorque' | 'OpenPBS' | 'Slurm' | 'LSF' | 'GridEngine';

/**
 * What a scheduler state means for magnetar:
 * - `queued`: waiting (or held) and not started;
 * - `running`: started (also suspended, completing, exiting: the job has begun and is not over);
 * - `ended`: the scheduler is done with it; the job's `return_code` file decides between a
 *   finished job (file present, whatever the scheduler's own verdict on the exit status) and a
 *   failed one (absent: killed, timed out, node failure…);
 * - `failed`: the scheduler will never run it to its end (e.g. Grid Engine's error state `Eqw`).
 * States a plugin does not know are treated as `running` (the job is watched until it leaves the
 * queue, then judged by its `return_code` file), never as an unknown/null status.
 */
export type StateKind = 'queued' | 'running' | 'ended' | 'failed';

export type SchedulerStatus =
  | { readonly kind: 'queued'; readonly state: string }
  /** `unknown`: a state the plugin's table does not list, treated as running. */
  | { readonly kind: 'running'; readonly state: string; readonly unknown?: true }
  | { readonly kind: 'ended'; readonly state: string; readonly exitCode?: number }
  | { readonly kind: 'failed'; readonly state: string; readonly reason: string };

/** What the header lines describe (all paths absolute, the name made of safe characters). */
export interface HeaderJob {
  readonly jobName: string;
  readonly stdoutPath: string;
  readonly stderrPath: string;
  readonly workingDirectory: string;
}

/** One scheduler's command set and output formats (PROTOCOL §6.2, CLI table). */
export interface JobPlugin {
  readonly name: JobPluginName;
  /** The scheduler's name in messages. */
  readonly scheduler: string;
  /** Directive lines placed right after `#!/bin/bash`. */
  header(job: HeaderJob): string[];
  submit(scriptPath: string): Command;
  /** The external id in the submit command's standard output, if there is one. */
  parseSubmit(stdout: string): string | undefined;
  /**
   * One batch status query for all `ids`. Jobs missing from the answer have left the scheduler
   * ("gone"). Throws when the scheduler could not be asked (the monitor retries next round).
   */
  poll(ids: readonly string[], run: Run): Promise<Map<string, SchedulerStatus>>;
  kill(id: string): Command;
  /** What the scheduler still remembers about a job that ended without a return code. */
  explain(id: string, run: Run): Promise<string | undefined>;
}

/** A configured job parameter is invalid; `param` is its name without the `job_` prefix. */
export class JobParamError extends Error {
  readonly param: string;
  constructor(param: string, message: string) {
    super(message);
    this.name = 'JobParamError';
    this.param = param;
  }
}

/** A scheduler directive: `flag` alone, or `flag value`. */
export interface Directive {
  readonly flag: string;
  readonly value?: string;
}

/** How a named parameter (`job_partition`) becomes directives. */
export type ParamSpec =
  | { readonly flag: string; readonly boolean?: false }
  /** A switch: true → the flag alone, false → nothing. */
  | { readonly flag: string; readonly boolean: true }
  | { readonly expand: (value: string) => Directive[] };

const RAW_FLAG_RE = /^-{1,2}[A-Za-z0-9][A-Za-z0-9_-]*$/;
const MAX_VALUE_LENGTH = 4096;

/** Scheduler-assigned ids as magnetar accepts them (ids are also re-read from disk after a restart). */
export const EXTERNAL_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._@[\]-]{0,255}$/;

export function isExternalId(id: string): boolean {
  return EXTERNAL_ID_RE.test(id);
}

export function parseBoolean(value: string): boolean | undefined {
  const word = value.trim().toLowerCase();
  if (['true', 'yes', 'on', '1'].includes(word)) return true;
  if (['false', 'no', 'off', '0'].includes(word)) return false;
  return undefined;
}

/** A directive value: one line of printable text (a newline would start a new script line). */
export function checkDirectiveValue(param: string, value: string): string {
  if (/[\x00-\x1f\x7f]/.test(value)) {
    throw new JobParamError(param, 'must be one line of text without control characters (newline, NUL, tab…)');
  }
  if (value.length > MAX_VALUE_LENGTH) throw new JobParamError(param, `must be at most ${MAX_VALUE_LENGTH} characters`);
  return value;
}

/**
 * Turns `job_*` parameters into directives: names from `map` (case-insensitive: job_managers.ini
 * lower-cases keys, so `job_Resource_List` arrives as `resource_list`), or raw scheduler flags
 * (`job_-q`, `job_--mem`; an empty value gives the flag alone). Unknown names and flags that would
 * break magnetar's own directives (`reserved`: stdout/stderr paths, job name, arrays, blocking
 * submission…) are errors.
 */
export function mapParams(
  params: readonly (readonly [string, string])[],
  map: Readonly<Record<string, ParamSpec>>,
  reserved: ReadonlySet<string>,
): Directive[] {
  const directives: Directive[] = [];
  for (const [param, rawValue] of params) {
    const value = checkDirectiveValue(param, rawValue.trim());
    let produced: Directive[];
    if (param.startsWith('-')) {
      if (!RAW_FLAG_RE.test(param)) throw new JobParamError(param, 'is not a scheduler flag (expected -x or --long-name)');
      produced = [value === '' ? { flag: param } : { flag: param, value }];
    } else {
      const spec = map[param.toLowerCase()];
      if (spec === undefined) {
        throw new JobParamError(param, `is not a parameter of this job plugin (known: ${Object.keys(map).join(', ')}; or a raw flag such as job_-q)`);
      }
      if ('expand' in spec) {
        if (value === '') throw new JobParamError(param, 'needs a value');
        produced = spec.expand(value);
      } else if (spec.boolean === true) {
        const on = parseBoolean(value);
        if (on === undefined) throw new JobParamError(param, 'must be true or false');
        produced = on ? [{ flag: spec.flag }] : [];
      } else {
        if (value === '') throw new JobParamError(param, 'needs a value');
        produced = [{ flag: spec.flag, value }];
      }
    }
    for (const directive of produced) {
      if (reserved.has(directive.flag)) {
        throw new JobParamError(param, `would set ${directive.flag}, which magnetar sets itself (job name, stdout/stderr files, working directory) or which breaks job tracking`);
      }
      directives.push(directive);
    }
  }
  return directives;
}

export function directiveLines(prefix: string, directives: readonly Directive[]): string[] {
  return directives.map((d) => (d.value === undefined ? `${prefix} ${d.flag}` : `${prefix} ${d.flag} ${d.value}`));
}

/**
 * Paths in directives are read by the scheduler's own parser (whitespace splits words, `%`/`$`
 * are Slurm/SGE placeholders, `:` separates an SGE host): only plain path characters pass.
 */
const DIRECTIVE_PATH_RE = /^\/[A-Za-z0-9._/+@,=~-]*$/;

export function checkDirectivePath(what: string, value: string): string {
  if (!DIRECTIVE_PATH_RE.test(value)) {
    throw new BackendError('MAG_ERR_BACKEND_SUBMIT', `the ${what} ${JSON.stringify(value)} has characters a scheduler directive cannot carry (allowed: letters, digits and . _ / + @ , = ~ -)`);
  }
  return value;
}

export function checkJobName(name: string): string {
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new BackendError('MAG_ERR_BACKEND_SUBMIT', `job name ${JSON.stringify(name)} has characters a scheduler directive cannot carry`);
  return name;
}

/** The standard header for every plugin: output files and job name first, then the parameters. */
export function baseHeader(job: HeaderJob): HeaderJob {
  return {
    jobName: checkJobName(job.jobName),
    stdoutPath: checkDirectivePath('stdout path', job.stdoutPath),
    stderrPath: checkDirectivePath('stderr path', job.stderrPath),
    workingDirectory: checkDirectivePath('working directory', job.workingDirectory),
  };
}

/** Which directive flags carry the standard header's fields (`workingDirectory` only where the scheduler has one). */
export interface HeaderFlags {
  /** Directives placed before the output files (Grid Engine's `-S /bin/bash`). */
  readonly first?: readonly Directive[];
  readonly jobName: string;
  readonly workingDirectory?: string;
}

/**
 * The directive lines of a plugin's header: `first`, the stdout/stderr files (`-o`, `-e`), the job
 * name, the working directory (when `flags` names a flag for it), then the parameters' directives.
 */
export function headerLines(prefix: string, job: HeaderJob, flags: HeaderFlags, directives: readonly Directive[]): string[] {
  const j = baseHeader(job);
  return directiveLines(prefix, [
    ...(flags.first ?? []),
    { flag: '-o', value: j.stdoutPath },
    { flag: '-e', value: j.stderrPath },
    { flag: flags.jobName, value: j.jobName },
    ...(flags.workingDirectory === undefined ? [] : [{ flag: flags.workingDirectory, value: j.workingDirectory }]),
    ...directives,
  ]);
}

/** A status from a state table; states missing from the table count as running (see StateKind). */
export function statusFrom(table: Readonly<Record<string, StateKind>>, state: string, exitCode?: number): SchedulerStatus {
  if (!Object.hasOwn(table, state)) return { kind: 'running', state, unknown: true };
  const kind = table[state]!;
  switch (kind) {
    case 'queued':
    case 'running':
      return { kind, state };
    case 'ended':
      return exitCode === undefined ? { kind, state } : { kind, state, exitCode };
    case 'failed':
      return { kind, state, reason: `the scheduler reports state ${state}` };
  }
}

/** The non-empty lines of a command's output, trimmed. */
export function lines(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

/**
 * Status commands given several ids often fail as a whole because ONE id is unknown (finished and
 * purged) while still printing the others: accept a non-zero status when every line on stderr
 * matches `harmless`.
 */
export function onlyHarmlessErrors(stderr: string, harmless: RegExp): boolean {
  return lines(stderr).every((line) => harmless.test(line));
}

/**
 * Throws a BackendError when a status command failed (`what` names it in the message), unless it
 * exited with a status and every stderr line matches `harmless` (see onlyHarmlessErrors).
 */
export function checkStatusCommand(what: string, result: CommandResult, harmless?: RegExp): void {
  if (result.code === 0) return;
  if (harmless !== undefined && result.code !== null && onlyHarmlessErrors(result.stderr, harmless)) return;
  const code = result.code === null ? 'MAG_ERR_BACKEND_UNREACHABLE' : 'MAG_ERR_BACKEND_COMMAND';
  throw new BackendError(code, `${what} failed: ${describeFailure(result)}`);
}

/** The statuses of `ids` in a listing of jobs; ids missing from it are left out (gone). */
export function pickStatuses(all: ReadonlyMap<string, SchedulerStatus>, ids: readonly string[]): Map<string, SchedulerStatus> {
  const wanted = new Map<string, SchedulerStatus>();
  for (const id of ids) {
    const status = all.get(id);
    if (status !== undefined) wanted.set(id, status);
  }
  return wanted;
}
