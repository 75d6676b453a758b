/**
 * Workload 5: the server with N jobs queued behind one running job (`queued_python`,
 * `num_concurrent_jobs = 1`, every job `sleep 600`). Measures how long queuing takes, the server's
 * RSS, status latency over the queued jobs, the restart after kill -9 (until the jobs answer again),
 * and cancel + clean of all N; then checks that no job process and no job record is left.
 *
 * A level's figures are kept even when a later step fails (`error` says which), and the level
 * always ends with the server stopped and every job process under its staging directory killed.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, qs, submitParams } from './client.js';
import { findJobProcesses, killJobProcesses, waitForNoJobProcesses, type JobProcess } from './procs.js';
import { ServerProcess } from './server-process.js';
import { log, msSince, percentileSorted, round, sortedCopy } from './stats.js';

export interface ScaleOptions {
  /** The level's own directory (created here): config, staging, persistence, server.log. */
  readonly dir: string;
  readonly jobs: number;
  /** Clients in flight for setup + submit and for cancel + clean. */
  readonly concurrency: number;
  readonly statusRequests: number;
  readonly statusClients: number;
  readonly logLevel: string | undefined;
  readonly entry: string | undefined;
  readonly keep: boolean;
  /** Told about the live server (undefined: none), so SIGINT can stop it. */
  readonly track: (server: ServerProcess | undefined) => void;
}

export interface ScaleResult {
  readonly jobs: number;
  queueSeconds: number | null;
  queueJobsPerS: number | null;
  /** Job scripts running once all N were queued (1 expected: num_concurrent_jobs = 1). */
  jobScriptsWhileQueued: number | null;
  /** Server VmRSS in MB (10^6 bytes) once all N are queued. */
  rssMb: number | null;
  statusRequests: number | null;
  statusP50Ms: number | null;
  statusP99Ms: number | null;
  statusMaxMs: number | null;
  /** Sampled status answers that did not say "queued". */
  statusNotQueued: number | null;
  /** Spawn → /healthz answers (the server recovers its jobs before it listens). */
  healthzSeconds: number | null;
  /** Spawn → /healthz answers and the last queued job's status says "queued". */
  restartSeconds: number | null;
  /** The job that ran before the kill -9 runs on (same pid) and its status says "running". */
  reattached: boolean | null;
  jobScriptsAfterRestart: number | null;
  cancelCleanSeconds: number | null;
  cancelCleanErrors: number | null;
  /** Processes under the staging dir after cancel + clean (job script, its children, launcher watcher). */
  leftoverProcesses: number | null;
  /** Distinct jobs those processes belong to. */
  leftoverJobsRunning: number | null;
  leftoverRecords: number | null;
  leftoverJobDirs: number | null;
  /** Details for the server's developers: which jobs, in which state (a few each). */
  leftoverDetail: { processes: string[]; recordStates: Record<string, number>; records: string[] } | null;
  /** Job processes the bench itself killed at the end (after stopping the server). */
  killedByBench: number;
  firstErrors: string[];
  error?: string;
}

const REQUEST_TIMEOUT_MS = 30_000;
const STATUS_WARMUP = 200;
const MANAGER = '_default_';

function emptyResult(jobs: number): ScaleResult {
  return {
    jobs,
    queueSeconds: null,
    queueJobsPerS: null,
    jobScriptsWhileQueued: null,
    rssMb: null,
    statusRequests: null,
    statusP50Ms: null,
    statusP99Ms: null,
    statusMaxMs: null,
    statusNotQueued: null,
    healthzSeconds: null,
    restartSeconds: null,
    reattached: null,
    jobScriptsAfterRestart: null,
    cancelCleanSeconds: null,
    cancelCleanErrors: null,
    leftoverProcesses: null,
    leftoverJobsRunning: null,
    leftoverRecords: null,
    leftoverJobDirs: null,
    leftoverDetail: null,
    killedByBench: 0,
    firstErrors: [],
  };
}

/** Every phase gets a time bound that grows with N, so a stuck server ends the level, not the bench. */
function phaseBoundMs(jobs: number): number {
  return 60_000 + jobs * 30;
}

interface PoolOutcome {
  readonly errors: number;
  readonly firstErrors: string[];
  /** Items not started because the time bound passed (or, with stopOnError, after a failure). */
  readonly skipped: number;
}

/**
 * Run `fn` over `items` with `concurrency` in flight, starting nothing new after `boundMs`.
 * With `stopOnError` the first failure stops the pool (a measurement that needs every item).
 */
async function pool<T>(items: readonly T[], concurrency: number, boundMs: number, stopOnError: boolean, fn: (item: T) => Promise<void>): Promise<PoolOutcome> {
  const deadline = Date.now() + boundMs;
  let next = 0;
  let errors = 0;
  const firstErrors: string[] = [];
  const worker = async (): Promise<void> => {
    while (next < items.length && Date.now() < deadline && !(stopOnError && errors > 0)) {
      const item = items[next++] as T;
      try {
        await fn(item);
      } catch (error) {
        errors++;
        if (firstErrors.length < 5) firstErrors.push(error instanceof Error ? error.message : String(error));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return { errors, firstErrors, skipped: items.length - next };
}

type StatusDoc = { status: string };

async function statusOf(client: Client, id: string): Promise<string> {
  return (await client.json<StatusDoc>('GET', `/jobs/${id}/status?job_id=${id}`)).status;
}

/** Poll one job's status (every 5 ms) until it is `wanted`; throws after `boundMs`. */
async function waitForStatus(client: Client, id: string, wanted: string, boundMs: number): Promise<void> {
  const deadline = Date.now() + boundMs;
  let last = '';
  while (Date.now() < deadline) {
    last = await statusOf(client, id);
    if (last === wanted) return;
    await sleep(5);
  }
  throw new Error(`job ${id} still "${last}" after ${boundMs / 1000} s (waited for "${wanted}")`);
}

async function setupAndSubmit(client: Client, id: string): Promise<void> {
  await client.json('POST', `/jobs?${qs({ job_id: id, tool_id: 'bench_sleep', tool_version: '1.0' })}`);
  const ok = await client.request('POST', `/jobs/${id}/submit?${submitParams(id, 'sleep 600')}`);
  if (ok.body.toString() !== 'OK') throw new Error(`submit of ${id} answered ${ok.body.toString()}`);
}

/**
 * Set up and submit every job (`sleep 600`); returns the wall-clock seconds. The first job goes
 * alone, so it is the one that runs (the restart checks that it is re-attached).
 */
async function queueJobs(server: ServerProcess, ids: readonly string[], concurrency: number): Promise<number> {
  const client = new Client(server.host, server.port, concurrency, REQUEST_TIMEOUT_MS);
  const start = process.hrtime.bigint();
  try {
    await setupAndSubmit(client, ids[0] as string);
    const outcome = await pool(ids.slice(1), concurrency, phaseBoundMs(ids.length), true, (id) => setupAndSubmit(client, id));
    if (outcome.errors > 0) throw new Error(`queuing failed: ${outcome.firstErrors[0] ?? ''}`);
    if (outcome.skipped > 0) throw new Error(`queuing took longer than ${phaseBoundMs(ids.length) / 1000} s (${outcome.skipped} jobs not queued)`);
    return msSince(start) / 1000;
  } finally {
    client.close();
  }
}

/** A small seeded PRNG (mulberry32): the same sample of jobs on every run. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface StatusSample {
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly notQueued: number;
}

/**
 * `requests` status GETs of randomly chosen queued jobs from `clients` closed loops over keep-alive
 * connections, after an unmeasured warm-up (JIT, connection set-up).
 */
async function statusLatency(server: ServerProcess, queued: readonly string[], requests: number, clients: number): Promise<StatusSample> {
  const client = new Client(server.host, server.port, clients, REQUEST_TIMEOUT_MS);
  const pick = random(queued.length);
  const latencies: number[] = [];
  let notQueued = 0;
  let sent = 0;
  const total = STATUS_WARMUP + requests;
  const loop = async (): Promise<void> => {
    while (sent < total) {
      const measured = sent++ >= STATUS_WARMUP;
      const id = queued[Math.floor(pick() * queued.length)] as string;
      const t0 = process.hrtime.bigint();
      const reply = await client.request('GET', `/jobs/${id}/status?job_id=${id}`);
      if (measured) latencies.push(msSince(t0));
      if ((JSON.parse(reply.body.toString('utf8')) as StatusDoc).status !== 'queued') notQueued++;
    }
  };
  try {
    await Promise.all(Array.from({ length: clients }, loop));
  } finally {
    client.close();
  }
  const sorted = sortedCopy(latencies);
  return { p50: percentileSorted(sorted, 50), p99: percentileSorted(sorted, 99), max: sorted[sorted.length - 1] ?? Number.NaN, notQueued };
}

function jobScripts(staging: string): JobProcess[] {
  return findJobProcesses(staging).filter((p) => p.cmdline.includes('command.sh'));
}

async function readPid(staging: string, id: string): Promise<number | undefined> {
  try {
    const pid = Number((await fs.readFile(path.join(staging, id, 'pid'), 'utf8')).trim());
    return Number.isSafeInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

interface Restarted {
  readonly server: ServerProcess;
  readonly healthzSeconds: number;
  readonly restartSeconds: number;
}

/**
 * kill -9 the server, start it again on the same config and port, and time spawn → the last
 * queued job answers "queued" (so the job records were recovered, not just the port reopened).
 */
async function killAndRestart(old: ServerProcess, options: ScaleOptions, lastId: string): Promise<Restarted> {
  await old.kill();
  options.track(undefined);
  const server = await ServerProcess.start({
    root: options.dir,
    numConcurrentJobs: 1,
    port: old.port,
    logLevel: options.logLevel,
    entry: options.entry,
    startTimeoutMs: phaseBoundMs(options.jobs),
    healthPollMs: 5,
  });
  options.track(server);
  const healthzSeconds = msSince(server.spawnedAt) / 1000;
  const client = new Client(server.host, server.port, 1, REQUEST_TIMEOUT_MS);
  try {
    await waitForStatus(client, lastId, 'queued', phaseBoundMs(options.jobs));
  } finally {
    client.close();
  }
  return { server, healthzSeconds, restartSeconds: msSince(server.spawnedAt) / 1000 };
}

/** The job that was running before the kill: same pid alive, and its status says running. */
async function checkReattached(server: ServerProcess, staging: string, firstId: string, pidBefore: number | undefined): Promise<boolean> {
  const client = new Client(server.host, server.port, 1, REQUEST_TIMEOUT_MS);
  try {
    const status = await statusOf(client, firstId);
    const alive = jobScripts(staging).some((p) => p.pid === pidBefore && p.jobId === firstId);
    if (status !== 'running' || !alive) log(`scale: job ${firstId} after restart: status "${status}", pid ${String(pidBefore)} ${alive ? 'alive' : 'gone'}`);
    return status === 'running' && alive && (await readPid(staging, firstId)) === pidBefore;
  } finally {
    client.close();
  }
}

/** PUT cancel then DELETE every job from `concurrency` clients, in submission order. */
async function cancelAndClean(server: ServerProcess, ids: readonly string[], concurrency: number): Promise<{ seconds: number } & PoolOutcome> {
  const client = new Client(server.host, server.port, concurrency, REQUEST_TIMEOUT_MS);
  const start = process.hrtime.bigint();
  try {
    const outcome = await pool(ids, concurrency, phaseBoundMs(ids.length), false, async (id) => {
      await client.request('PUT', `/jobs/${id}/cancel?job_id=${id}`);
      await client.request('DELETE', `/jobs/${id}?job_id=${id}`);
    });
    return { seconds: msSince(start) / 1000, ...outcome };
  } finally {
    client.close();
  }
}

async function listOr(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch {
    return [];
  }
}

/** Job records still on disk, tallied by state (records are small JSON files). */
async function leftoverRecords(persisted: string): Promise<{ count: number; states: Record<string, number>; ids: string[] }> {
  const dir = path.join(persisted, `${MANAGER}-jobs`);
  const names = (await listOr(dir)).filter((n) => n.endsWith('.json'));
  const states: Record<string, number> = {};
  for (const name of names) {
    let state = 'unreadable';
    try {
      state = String((JSON.parse(await fs.readFile(path.join(dir, name), 'utf8')) as { state?: unknown }).state);
    } catch {
      // counted as unreadable
    }
    states[state] = (states[state] ?? 0) + 1;
  }
  return { count: names.length, states, ids: names.slice(0, 10).map((n) => n.slice(0, -'.json'.length)) };
}

/** After cancel + clean: what is left (processes get the server's 2 s kill grace and some slack). */
async function measureLeftovers(result: ScaleResult, staging: string, persisted: string): Promise<void> {
  await sleep(500);
  const processes = await waitForNoJobProcesses(staging, 5000);
  const records = await leftoverRecords(persisted);
  result.leftoverProcesses = processes.length;
  result.leftoverJobsRunning = new Set(processes.map((p) => p.jobId)).size;
  result.leftoverRecords = records.count;
  result.leftoverJobDirs = (await listOr(staging)).length;
  result.leftoverDetail = {
    processes: processes.slice(0, 10).map((p) => `pid ${p.pid} job ${p.jobId ?? '?'}: ${p.cmdline.slice(0, 120)}`),
    recordStates: records.states,
    records: records.ids,
  };
}

/** The measured steps, in order; each fills its fields of `result` as soon as it has them. */
async function measure(result: ScaleResult, options: ScaleOptions, first: ServerProcess): Promise<void> {
  const staging = path.join(options.dir, 'staging');
  const ids = Array.from({ length: options.jobs }, (_, i) => `scale${options.jobs}_${i}`);
  const firstId = ids[0] as string;
  const lastId = ids[ids.length - 1] as string;
  let server = first;

  log(`scale ${options.jobs}: queuing ${options.jobs} × "sleep 600" with ${options.concurrency} clients`);
  result.queueSeconds = round(await queueJobs(server, ids, options.concurrency), 3);
  result.queueJobsPerS = round(options.jobs / result.queueSeconds, 1);
  result.rssMb = round(server.memory().rss / 1e6, 1);
  const probe = new Client(server.host, server.port, 1, REQUEST_TIMEOUT_MS);
  try {
    await waitForStatus(probe, firstId, 'running', 10_000);
    await waitForStatus(probe, lastId, 'queued', 1000);
  } finally {
    probe.close();
  }
  result.jobScriptsWhileQueued = jobScripts(staging).length;
  log(`scale ${options.jobs}: queued in ${result.queueSeconds} s, RSS ${result.rssMb} MB, ${result.jobScriptsWhileQueued} job script(s) running`);

  const sample = await statusLatency(server, ids.slice(1), options.statusRequests, options.statusClients);
  result.statusRequests = options.statusRequests;
  result.statusP50Ms = round(sample.p50, 3);
  result.statusP99Ms = round(sample.p99, 3);
  result.statusMaxMs = round(sample.max, 3);
  result.statusNotQueued = sample.notQueued;
  log(`scale ${options.jobs}: status p50 ${result.statusP50Ms} ms, p99 ${result.statusP99Ms} ms`);

  const pidBefore = await readPid(staging, firstId);
  const restarted = await killAndRestart(server, options, lastId);
  server = restarted.server;
  result.healthzSeconds = round(restarted.healthzSeconds, 3);
  result.restartSeconds = round(restarted.restartSeconds, 3);
  result.reattached = await checkReattached(server, staging, firstId, pidBefore);
  result.jobScriptsAfterRestart = jobScripts(staging).length;
  log(`scale ${options.jobs}: up again ${result.restartSeconds} s after kill -9 (healthz ${result.healthzSeconds} s), re-attached: ${String(result.reattached)}`);

  const cleaned = await cancelAndClean(server, ids, options.concurrency);
  result.cancelCleanSeconds = round(cleaned.seconds, 3);
  result.cancelCleanErrors = cleaned.errors + cleaned.skipped;
  result.firstErrors.push(...cleaned.firstErrors);
  await measureLeftovers(result, staging, path.join(options.dir, 'persisted'));
  log(`scale ${options.jobs}: cancel + clean ${result.cancelCleanSeconds} s, ${cleaned.errors} errors, leftovers: ${result.leftoverProcesses} processes, ${result.leftoverRecords} records`);
}

/** Stop whatever server is live, then kill every job process it leaves under the staging dir. */
async function tearDown(result: ScaleResult, options: ScaleOptions, server: ServerProcess | undefined): Promise<void> {
  const staging = path.join(options.dir, 'staging');
  if (server !== undefined) await server.stop();
  options.track(undefined);
  // Killed after the server is gone, or it would start the next queued job in their place.
  result.killedByBench = killJobProcesses(staging);
  const left = await waitForNoJobProcesses(staging, 3000);
  if (left.length > 0) log(`scale ${options.jobs}: ${left.length} job process(es) would not die: ${left.map((p) => p.pid).join(' ')}`);
  if (result.error !== undefined) log(`scale ${options.jobs}: server log kept in ${path.join(options.dir, 'server.log')}`);
  else if (!options.keep) await fs.rm(options.dir, { recursive: true, force: true });
}

export async function runScaleLevel(options: ScaleOptions): Promise<ScaleResult> {
  const result = emptyResult(options.jobs);
  await fs.mkdir(options.dir, { recursive: true });
  // The restart replaces the server mid-level: whichever is live at the end is the one to stop.
  const live: { server: ServerProcess | undefined } = { server: undefined };
  const tracked: ScaleOptions = {
    ...options,
    track: (server) => {
      live.server = server;
      options.track(server);
    },
  };
  try {
    const server = await ServerProcess.start({ root: options.dir, numConcurrentJobs: 1, logLevel: options.logLevel, entry: options.entry });
    tracked.track(server);
    await measure(result, tracked, server);
  } catch (error) {
    result.error = error instanceof Error ? error.message : String(error);
    log(`scale ${options.jobs} FAILED: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  } finally {
    await tearDown(result, tracked, live.server);
  }
  return result;
}
