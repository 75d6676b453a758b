import { randomBytes } from 'node:crypto';
import { EXIT_USAGE, runCheck } from '../check/run.js';

export interface CheckOptions {
  readonly url: string;
  readonly privateToken?: string;
  readonly manager?: string;
  /** '' → a fresh `check-<random hex>` id. */
  readonly jobId: string;
  /** Seconds (a decimal number) the whole check may take. */
  readonly timeout: string;
  readonly disableCleanup?: boolean;
  /** Milliseconds between status polls (default 250). */
  readonly pollInterval?: number;
  /** Receives each report line (default: stdout). */
  readonly out?: (line: string) => void;
  /** Receives the one-line reason of a usage/connection error (default: stderr). */
  readonly err?: (line: string) => void;
}

const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * `magnetar check`: run one real job through a server the way Galaxy's Pulsar client does and
 * verify every answer. Resolves with the exit code: 0 passed, 1 the check failed, 2 usage or
 * connection problem. Never exits the process (usable in-process).
 */
export async function check(options: CheckOptions): Promise<number> {
  const out = options.out ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const err = options.err ?? ((line: string) => void process.stderr.write(`${line}\n`));
  const usage = (message: string): number => {
    err(`magnetar check: ${message}`);
    return EXIT_USAGE;
  };
  const timeout = Number(options.timeout);
  if (options.timeout.trim() === '' || !Number.isFinite(timeout) || timeout <= 0) {
    return usage(`--timeout must be a positive number of seconds, not "${options.timeout}"`);
  }
  const jobId = options.jobId === '' ? `check-${randomBytes(8).toString('hex')}` : options.jobId;
  if (!JOB_ID.test(jobId) || jobId.includes('..')) {
    return usage(`--job-id "${options.jobId}" is not a valid job id (1-128 characters of [A-Za-z0-9._-], starting with a letter or digit)`);
  }
  if (options.manager !== undefined && !/^[A-Za-z0-9_.-]+$/.test(options.manager)) {
    return usage(`--manager "${options.manager}" is not a valid manager name`);
  }
  const pollInterval = options.pollInterval ?? 250;
  if (!Number.isFinite(pollInterval) || pollInterval <= 0 || pollInterval > 500) {
    return usage('the poll interval must be between 0 and 500 ms');
  }
  return runCheck({
    url: options.url,
    privateToken: options.privateToken,
    manager: options.manager,
    jobId,
    timeoutSeconds: timeout,
    disableCleanup: options.disableCleanup === true,
    pollIntervalMs: pollInterval,
    out,
    err,
  });
}
