import type { PolledState } from '../monitor.js';

/**
 * `condor_q`, asked for all jobs of one poll in one call: about jobs whose user log does not exist
 * (yet), and every so often about all unfinished jobs, so that a job that left the queue without
 * a final event is noticed.
 */

/** Arguments for one condor_q call about `ids`: `<cluster>.<proc> <JobStatus>` per line. */
export function condorQArguments(ids: readonly string[]): string[] {
  return ['-format', '%d.', 'ClusterId', '-format', '%d ', 'ProcId', '-format', '%d\\n', 'JobStatus', ...ids];
}

/** JobStatus by cluster id (process 0) from condor_q's answer. */
export function parseCondorQ(output: string): Map<string, number> {
  const statuses = new Map<string, number>();
  for (const line of output.split('\n')) {
    const match = /^\s*(\d+)\.(\d+)\s+(\d+)\s*$/.exec(line);
    if (match === null || Number(match[2]) !== 0) continue;
    statuses.set(String(Number(match[1])), Number(match[3]));
  }
  return statuses;
}

/** HTCondor's JobStatus: 1 idle, 2 running, 3 removed, 4 completed, 5 held, 6 transferring output, 7 suspended. */
export function queueState(status: number): PolledState {
  switch (status) {
    case 2:
    case 6:
    case 7:
      return { state: 'running' };
    case 3:
      return { state: 'exited', exitCode: null, reason: 'the job was removed from the HTCondor queue' };
    case 4:
      return { state: 'exited', exitCode: null };
    default:
      return { state: 'queued' };
  }
}
