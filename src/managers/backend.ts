/**
 * What a backend does: run a prepared job script and report on it. Queue limits, persistence,
 * polling and restart recovery live once, above the backends, in `jobs/service.ts`.
 */
export interface LaunchSpec {
  readonly jobId: string;
  readonly scriptPath: string;
  /** Where the script records its own pid (local backends). */
  readonly pidPath: string;
  readonly workingDirectory: string;
  readonly stdoutPath: string;
  readonly stderrPath: string;
  /** The job's whole environment (backends never inherit the server's). */
  readonly env: Readonly<Record<string, string>>;
}

export type BackendState = 'queued' | 'running' | 'exited' | 'unknown';

export interface Backend {
  readonly kind: string;
  /** Start the job; resolves with the id needed to find it again after a restart. */
  submit(spec: LaunchSpec): Promise<string>;
  status(externalId: string): Promise<BackendState>;
  /** Resolves once the job has ended (or can no longer be observed). */
  waitForExit(externalId: string): Promise<{ exitCode: number | null }>;
  /** Stop the job and everything it started; resolves when the signal has been sent. */
  kill(externalId: string): Promise<void>;
  /** Find a job again after a restart (PROTOCOL §5.4): the external id of the spec, if it is still known. */
  recover(spec: LaunchSpec): Promise<string | undefined>;
  /** Release what the backend holds (helper processes); running jobs are not affected. */
  close(): void;
}
