/**
 * Workload 1: the full lifecycle of a trivial job, as the Pulsar client drives it —
 * setup, one small input upload, submit, status polling until complete, output download, clean.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, qs, shellQuote, submitParams } from './client.js';
import type { ServerProcess } from './server-process.js';
import { log, msSince, percentileSorted, round, sortedCopy } from './stats.js';

export interface LifecycleResult {
  readonly clients: number;
  readonly jobs: number;
  readonly seconds: number;
  readonly jobs_per_s: number;
  readonly p50_ms: number;
  readonly p95_ms: number;
  readonly max_ms: number;
  /** Mean HTTP requests per job (status polls make this vary). */
  readonly requests_per_job: number;
  /** Server CPU use during the run, in cores (1.0 = one core fully busy). */
  readonly server_cpu_cores: number;
  /** Median duration of each step of a job (ms); `run` = submit answered → first "complete" status. */
  readonly step_p50_ms: Record<Step, number>;
}

const INPUT = Buffer.from('magnetar bench input\n');
const POLL_MS = 5;
/** A trivial job that is not finished after this long is reported as stuck (the level fails). */
export const STUCK_MS = 10_000;

export class StuckJobError extends Error {}

/**
 * Explain a job that never finished: the bench runs on the server's machine, so it can look at the
 * job directory and tell "the command never ran" from "it ran and the server missed its end".
 */
async function diagnoseStuck(id: string, status: string, jobDirectory: string): Promise<string> {
  const read = async (name: string): Promise<string | undefined> => {
    try {
      return (await fs.readFile(path.join(jobDirectory, name), 'utf8')).trim();
    } catch {
      return undefined;
    }
  };
  const [rc, pid] = await Promise.all([read('return_code'), read('pid')]);
  let alive = false;
  if (pid !== undefined) {
    try {
      process.kill(Number(pid), 0);
      alive = true;
    } catch {
      alive = false;
    }
  }
  const facts = `pid file ${pid ?? 'absent'}${pid === undefined ? '' : alive ? ' (process alive)' : ' (process gone)'}, return_code file ${rc ?? 'absent'}`;
  const verdict =
    rc !== undefined && !alive
      ? 'the job script finished but the server never noticed its exit (lost child exit event?)'
      : 'the job did not finish';
  return `job ${id} still "${status}" after ${STUCK_MS / 1000} s: ${verdict}; ${facts}`;
}

interface JobConfig {
  readonly job_id: string;
  readonly job_directory: string;
  readonly outputs_directory: string;
}

export const STEPS = ['setup', 'upload', 'submit', 'run', 'download', 'clean'] as const;
export type Step = (typeof STEPS)[number];

/**
 * One whole job; returns the number of HTTP requests it made and, if `steps` is given, adds each
 * step's duration (ms) to it. `run` is from the end of submit to the first status saying complete.
 * Throws on any deviation.
 */
export async function runOneJob(client: Client, jobId: string, steps?: Record<Step, number[]>): Promise<number> {
  let requests = 0;
  let t = process.hrtime.bigint();
  const mark = (step: Step): void => {
    if (steps === undefined) return;
    const now = process.hrtime.bigint();
    steps[step].push(Number(now - t) / 1e6);
    t = now;
  };
  const setup = await client.json<JobConfig>('POST', `/jobs?${qs({ job_id: jobId, tool_id: 'bench_cat', tool_version: '1.0', use_metadata: 'true' })}`);
  requests++;
  mark('setup');
  const id = setup.job_id;
  const upload = await client.json<{ path: string }>('POST', `/jobs/${id}/files?${qs({ job_id: id, name: 'dataset_1.dat', type: 'input' })}`, INPUT);
  requests++;
  mark('upload');
  const commandLine = `cat ${shellQuote(upload.path)} > ${shellQuote(`${setup.outputs_directory}/out.txt`)}`;
  const ok = await client.request('POST', `/jobs/${id}/submit?${submitParams(id, commandLine)}`);
  requests++;
  if (ok.body.toString() !== 'OK') throw new Error(`submit of ${id} answered ${ok.body.toString()}`);
  mark('submit');
  const deadline = Date.now() + STUCK_MS;
  for (;;) {
    const status = await client.json<{ complete: string; status: string; returncode?: number | null; stderr?: string }>(
      'GET',
      `/jobs/${id}/status?job_id=${id}`,
    );
    requests++;
    if (status.complete === 'true') {
      if (status.status !== 'complete' || status.returncode !== 0) {
        throw new Error(`job ${id} ended ${status.status} (returncode ${String(status.returncode)}): ${status.stderr ?? ''}`);
      }
      mark('run');
      break;
    }
    if (Date.now() > deadline) throw new StuckJobError(await diagnoseStuck(id, status.status, setup.job_directory));
    await sleep(POLL_MS);
  }
  const output = await client.request('GET', `/jobs/${id}/files?${qs({ name: 'out.txt', job_id: id, type: 'output' })}`);
  requests++;
  if (!output.body.equals(INPUT)) throw new Error(`job ${id}: downloaded output differs from the input`);
  mark('download');
  await client.request('DELETE', `/jobs/${id}?job_id=${id}`);
  requests++;
  mark('clean');
  return requests;
}

export interface LifecycleOptions {
  readonly clients: number;
  readonly maxJobs: number;
  /** Stop starting new jobs after this many ms (jobs in flight still finish). */
  readonly maxMs: number;
  readonly idPrefix: string;
}

export interface LifecycleFailure {
  readonly clients: number;
  readonly error: string;
  /** Jobs that completed their whole lifecycle before the failure. */
  readonly jobs_completed: number;
  readonly seconds: number;
}

/**
 * `clients` closed loops, each running whole jobs back to back, until `maxJobs` were started or
 * `maxMs` passed. The first failing job stops every loop (no new jobs) and fails the level.
 */
export async function runLifecycle(server: ServerProcess, options: LifecycleOptions): Promise<LifecycleResult | LifecycleFailure> {
  const client = new Client(server.host, server.port, options.clients);
  const latencies: number[] = [];
  const steps = Object.fromEntries(STEPS.map((k) => [k, [] as number[]])) as Record<Step, number[]>;
  let next = 0;
  let requests = 0;
  let failure: unknown;
  const cpu0 = server.cpuSeconds();
  const start = process.hrtime.bigint();
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < options.maxJobs && msSince(start) < options.maxMs) {
      const n = next++;
      const t0 = process.hrtime.bigint();
      try {
        // (not `requests += await …`: that reads `requests` before the await and loses updates)
        const made = await runOneJob(client, `${options.idPrefix}${n}`, steps);
        requests += made;
      } catch (error) {
        failure ??= error;
        return;
      }
      latencies.push(msSince(t0));
    }
  };
  try {
    await Promise.all(Array.from({ length: options.clients }, worker));
  } finally {
    client.close();
  }
  const seconds = msSince(start) / 1000;
  if (failure !== undefined) {
    const result: LifecycleFailure = {
      clients: options.clients,
      error: failure instanceof Error ? failure.message : String(failure),
      jobs_completed: latencies.length,
      seconds: round(seconds, 3),
    };
    log(`lifecycle c${options.clients} FAILED: ${JSON.stringify(result)}`);
    return result;
  }
  const cpu = server.cpuSeconds() - cpu0;
  const sorted = sortedCopy(latencies);
  const result: LifecycleResult = {
    clients: options.clients,
    jobs: latencies.length,
    seconds: round(seconds, 3),
    jobs_per_s: round(latencies.length / seconds, 1),
    p50_ms: round(percentileSorted(sorted, 50)),
    p95_ms: round(percentileSorted(sorted, 95)),
    max_ms: round(sorted[sorted.length - 1] ?? Number.NaN),
    requests_per_job: round(requests / Math.max(1, latencies.length), 1),
    server_cpu_cores: round(cpu / seconds, 2),
    step_p50_ms: Object.fromEntries(STEPS.map((k) => [k, round(percentileSorted(sortedCopy(steps[k]), 50))])) as Record<Step, number>,
  };
  log(`lifecycle c${options.clients}: ${JSON.stringify(result)}`);
  return result;
}
