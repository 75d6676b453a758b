/** Runs `magnetar check` in-process and keeps what it printed (check.test.ts, check-remote-transfer.test.ts). */
import { check, type CheckOptions } from '../../src/cli/check.js';

export interface CheckRun {
  readonly code: number;
  readonly lines: string[];
  readonly errors: string[];
}

/** `check` with a default job id and `timeout` (seconds) unless the options give them. */
export async function runCheck(
  options: Omit<CheckOptions, 'out' | 'err' | 'jobId' | 'timeout'> & { jobId?: string; timeout?: string },
  timeout = '30',
): Promise<CheckRun> {
  const lines: string[] = [];
  const errors: string[] = [];
  const code = await check({ jobId: '', timeout, ...options, out: (l) => lines.push(l), err: (l) => errors.push(l) });
  return { code, lines, errors };
}

/** Everything the check printed, stdout then stderr. */
export const report = (run: CheckRun): string => [...run.lines, ...run.errors].join('\n');
