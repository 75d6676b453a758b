/** Runs `magnetar check` in-process and keeps what it printed (check.test.ts, check-remote-transfer.test.ts). */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
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

/** Run the real `magnetar check ARGS…` as a child process; its exit code and what it printed. */
export function runCheckCli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const bin = fileURLToPath(new URL('../../../bin/magnetar.js', import.meta.url));
  const child = spawn(process.execPath, [bin, 'check', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}
