import * as path from 'node:path';
import type { ManagerConfig } from '../config/types.js';
import type { LaunchSpec } from '../managers/backend.js';
import type { JobDirectory } from './directory.js';
import { buildJobScript, quoteEnvValue } from './script.js';
import type { JobRecord } from './store.js';

/**
 * Launch preparation as a pure step: from a job's record and its manager's options to what a
 * backend needs (`LaunchSpec`) and the job script's text. No I/O here: the job service writes the
 * script and hands the spec to the backend.
 */

export interface LaunchContext {
  readonly manager: ManagerConfig;
  /** The whole environment local jobs start with (`jobEnvironment`). */
  readonly jobEnv: Readonly<Record<string, string>>;
}

export interface PreparedLaunch {
  readonly spec: LaunchSpec;
  readonly script: string;
}

/** Where a job's files are and how the backend should name and run it. */
export function launchSpec(record: JobRecord, dir: JobDirectory, context: LaunchContext): LaunchSpec {
  return {
    jobId: record.id,
    jobName: jobName(context.manager.jobNameTemplate, record.id),
    jobDirectory: dir.root,
    scriptPath: dir.scriptPath,
    pidPath: dir.control('pid'),
    returnCodePath: dir.returnCodePath,
    workingDirectory: dir.working,
    stdoutPath: dir.jobStdoutPath,
    stderrPath: dir.jobStderrPath,
    env: context.jobEnv,
    submitParams: record.launch?.submitParams ?? {},
  };
}

/**
 * The spec and the script of a job whose launch record is set. `clientEnv` and `dependencies` are
 * shell statements the authorizer and the dependency resolver already rendered; `header` is the
 * backend's scheduler directives for this spec.
 */
export function prepareLaunch(input: {
  readonly record: JobRecord;
  readonly dir: JobDirectory;
  readonly context: LaunchContext;
  readonly clientEnv: readonly string[];
  readonly dependencies: readonly string[];
  readonly header: (spec: LaunchSpec) => readonly string[];
}): PreparedLaunch {
  const { record, dir, context } = input;
  const launch = record.launch;
  if (launch === undefined) throw new Error(`job ${record.id} has no launch record`);
  const manager = context.manager;
  const spec = launchSpec(record, dir, context);
  const managerEnv = Object.entries(manager.env).map(([k, v]) => `${k}=${quoteEnvValue(v)}; export ${k}`);
  const script = buildJobScript({
    header: input.header(spec),
    dependencyStatements: input.dependencies,
    jobId: record.id,
    jobDirectory: dir.root,
    commandLine: launch.commandLine,
    envStatements: [...managerEnv, ...input.clientEnv],
    tmpDir: manager.tmpDir,
    galaxyLib: manager.galaxyHome === undefined ? undefined : path.join(manager.galaxyHome, 'lib'),
    galaxyVirtualEnv: manager.galaxyVirtualEnv,
    preserveGalaxyPythonEnvironment: launch.request.setupParams?.preserveGalaxyPythonEnvironment ?? false,
    sandbox: manager.sandbox === false ? undefined : manager.sandbox,
  });
  return { spec, script };
}

/** The command line to run: in a setup-via-submit job, `__PULSAR_JOBS_DIRECTORY__` is the staging directory. */
export function effectiveCommandLine(commandLine: string, setupViaSubmit: boolean, stagingDirectory: string): string {
  return setupViaSubmit ? commandLine.replaceAll('__PULSAR_JOBS_DIRECTORY__', stagingDirectory) : commandLine;
}

/** `job_name_template` with `$job_id` / `${job_id}`; only safe characters survive. */
export function jobName(template: string, id: string): string {
  const name = template.replaceAll('${job_id}', id).replaceAll('$job_id', id);
  return name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 200) || `pulsar_${id}`;
}

/** Client submit params split into those the administrator allow-listed and the names dropped. */
export function allowedSubmitParams(
  params: Readonly<Record<string, unknown>>,
  allowed: readonly string[],
): { readonly kept: Readonly<Record<string, unknown>>; readonly dropped: readonly string[] } {
  const names = new Set(allowed);
  const kept: Record<string, unknown> = {};
  const dropped: string[] = [];
  for (const [key, value] of Object.entries(params)) {
    if (names.has(key)) kept[key] = value;
    else dropped.push(key);
  }
  return { kept, dropped };
}

/**
 * A clean environment for jobs (PROTOCOL §6.2): only PATH and TMPDIR come from the server's (TMPDIR
 * only for a `tmp_dir` statement that names it: the job script sets the job's own). Never HOME:
 * the server's home is shared by every job, and the job script sets `<jobdir>/home`.
 */
export function jobEnvironment(serverEnv: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const env: Record<string, string> = { LC_CTYPE: 'C.UTF-8' };
  for (const key of ['PATH', 'TMPDIR'] as const) {
    const value = serverEnv[key];
    if (value !== undefined) env[key] = value;
  }
  env['TMPDIR'] ??= '/tmp';
  env['PATH'] ??= '/usr/local/bin:/usr/bin:/bin';
  return env;
}
