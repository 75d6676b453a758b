/**
 * What a backend does: run a prepared job script and report on it. Queue limits, persistence,
 * polling of local jobs and restart recovery live once, above the backends, in `jobs/service.ts`.
 */
export interface LaunchSpec {
  readonly jobId: string;
  /** The scheduler job name (`job_name_template`, default `pulsar_<job id>`), safe characters only. */
  readonly jobName: string;
  readonly jobDirectory: string;
  readonly scriptPath: string;
  /** Where the script records its own pid (local backends). */
  readonly pidPath: string;
  /** Where the script records the command's exit status (`jobs/layout.ts` reads it). */
  readonly returnCodePath: string;
  readonly workingDirectory: string;
  readonly stdoutPath: string;
  readonly stderrPath: string;
  /** The job's whole environment for local backends (cluster jobs get the scheduler's). */
  readonly env: Readonly<Record<string, string>>;
  /**
   * Submit parameters from the client (`params`, PROTOCOL §2.5), already reduced to the names the
   * administrator allow-listed (`allowed_submit_params`).
   */
  readonly submitParams: Readonly<Record<string, unknown>>;
}

export type BackendState = 'queued' | 'running' | 'exited' | 'unknown';

export interface ExitReport {
  /** The script's exit status when the backend knows it (the service prefers `return_code`). */
  readonly exitCode: number | null;
  /** Why the job ended abnormally (scheduler failure, lost job…), reported in the status `stderr`. */
  readonly reason?: string;
}

export interface Backend {
  /** Lines for the job script right after `#!/bin/bash` (scheduler directives such as `#SBATCH`). */
  scriptHeader(spec: LaunchSpec): readonly string[];
  /** Start (or submit) the job; resolves with the id needed to find it again after a restart. */
  submit(spec: LaunchSpec): Promise<string>;
  status(externalId: string): Promise<BackendState>;
  /** Resolves once the job is running (at once for local jobs). */
  waitForStart(externalId: string): Promise<void>;
  /** Resolves once the job has ended (or can no longer be observed). */
  waitForExit(externalId: string): Promise<ExitReport>;
  /** Stop the job and everything it started; resolves when the request has been made. */
  kill(externalId: string): Promise<void>;
  /**
   * Find a job again after a restart (PROTOCOL §5.4). `externalId` is what `submit` returned, if
   * the server recorded it before it stopped. Resolves with the id to watch, or undefined.
   */
  recover(spec: LaunchSpec, externalId: string | undefined): Promise<string | undefined>;
  /** At most this many jobs are handed to the backend at once (Infinity: the scheduler queues). */
  readonly maxConcurrent: number;
  /** Release what the backend holds (helper processes, timers); running jobs are not affected. */
  close(): void;
}
