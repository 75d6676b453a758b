/**
 * Workload 3: many keep-alive clients hammering `GET /jobs/<id>/status?job_id=<id>` of one
 * running job and of one finished job. The load runs in worker_threads (see status-worker.ts).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, qs, submitParams } from './client.js';
import type { ServerProcess } from './server-process.js';
import type { StatusWorkerInput, StatusWorkerOutput } from './status-worker.js';
import { STUCK_MS } from './lifecycle.js';
import { readFileSync } from 'node:fs';
import { log, percentileSorted, round } from './stats.js';

export interface StatusResult {
  readonly connections: number;
  readonly requests: number;
  readonly errors: number;
  readonly req_per_s: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
  readonly max_ms: number;
  readonly response_bytes: number;
  readonly server_cpu_cores: number;
  /** Event-loop utilisation of each client worker (≈1 means the client, not the server, limited). */
  readonly client_elu: number[];
}

export interface StatusOptions {
  readonly connections: number;
  readonly workers: number;
  readonly durationMs: number;
  readonly warmupMs: number;
  readonly mode: 'raw' | 'http';
}

function runWorker(input: StatusWorkerInput): Promise<StatusWorkerOutput> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./status-worker.js', import.meta.url), { workerData: input });
    worker.once('message', (msg: StatusWorkerOutput | { fatal: string }) => {
      if ('fatal' in msg) reject(new Error(`status worker failed: ${msg.fatal}`));
      else resolve(msg);
      void worker.terminate();
    });
    worker.once('error', reject);
  });
}

/** What the load needs to know about its target. */
interface Target {
  readonly host: string;
  readonly port: number;
  cpuSeconds(): number;
}

async function hammer(server: Target, path: string, options: StatusOptions): Promise<StatusResult> {
  const per = Math.floor(options.connections / options.workers);
  const inputs: StatusWorkerInput[] = Array.from({ length: options.workers }, (_, i) => ({
    host: server.host,
    port: server.port,
    path,
    connections: i === options.workers - 1 ? options.connections - per * (options.workers - 1) : per,
    warmupMs: options.warmupMs,
    durationMs: options.durationMs,
    mode: options.mode,
  }));
  // Server CPU is read around the measured window only (workers start measuring after warm-up).
  const pending = inputs.map(runWorker);
  await sleep(options.warmupMs);
  const cpu0 = server.cpuSeconds();
  const t0 = Date.now();
  await sleep(options.durationMs);
  const cpu = server.cpuSeconds() - cpu0;
  const cpuWindow = (Date.now() - t0) / 1000;
  const outputs = await Promise.all(pending);
  let total = 0;
  for (const o of outputs) total += o.latencies.length;
  const all = new Float64Array(total);
  let at = 0;
  for (const o of outputs) {
    all.set(o.latencies, at);
    at += o.latencies.length;
  }
  all.sort();
  const windowS = Math.max(...outputs.map((o) => o.windowMs)) / 1000;
  const errors = outputs.reduce((n, o) => n + o.errors, 0);
  const firstError = outputs.find((o) => o.firstError !== undefined)?.firstError;
  const slow = outputs.flatMap((o) => o.slow);
  if (slow.length > 0) log(`${path}: requests over 200 ms [sent at ms into the window, latency ms]: ${JSON.stringify(slow.slice(0, 20))}`);
  if (errors > 0 || total === 0) {
    throw new Error(`status load on ${path}: ${errors} errors, ${total} successes; first error: ${firstError ?? 'none'}`);
  }
  const completed = outputs.reduce((n, o) => n + o.completed, 0);
  return {
    connections: options.connections,
    requests: completed,
    errors,
    req_per_s: Math.round(completed / windowS),
    p50_ms: round(percentileSorted(all, 50), 3),
    p99_ms: round(percentileSorted(all, 99), 3),
    max_ms: round(all[all.length - 1] ?? Number.NaN, 3),
    response_bytes: Math.round(outputs.reduce((n, o) => n + o.bodyBytes, 0) / total),
    server_cpu_cores: round(cpu / cpuWindow, 2),
    client_elu: outputs.map((o) => round(o.clientElu, 2)),
  };
}

/** A bare node:http server (no framework) answering every request with a fixed JSON body. */
const BARE_SERVER = `
const http = require('node:http');
const body = process.argv[1];
const server = http.createServer({ keepAliveTimeout: 30000 }, (req, res) => {
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});
server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));
process.on('SIGTERM', () => process.exit(0));
`;

/**
 * The same load against a bare node:http server in its own process, serving a body as long as the
 * running job's status document: the ceiling of this machine + client for this workload.
 */
export async function runCalibration(options: StatusOptions, body: string): Promise<StatusResult> {
  const child = spawn(process.execPath, ['-e', BARE_SERVER, body], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const [line] = (await Promise.race([
      once(child.stdout, 'data'),
      sleep(10_000).then(() => {
        throw new Error('calibration server did not start');
      }),
    ])) as [Buffer];
    const port = Number(line.toString().trim());
    const pid = child.pid!;
    const target: Target = {
      host: '127.0.0.1',
      port,
      cpuSeconds: () => {
        try {
          const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
          const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
          return (Number(rest[11]) + Number(rest[12])) / 100;
        } catch {
          return Number.NaN;
        }
      },
    };
    return await hammer(target, '/jobs/calibration/status?job_id=calibration', options);
  } finally {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  }
}

type StatusDoc = { complete: string; status: string; returncode?: number | null };

async function waitFor(client: Client, id: string, done: (doc: StatusDoc) => boolean): Promise<StatusDoc> {
  const deadline = Date.now() + STUCK_MS;
  for (;;) {
    const doc = await client.json<StatusDoc>('GET', `/jobs/${id}/status?job_id=${id}`);
    if (done(doc)) return doc;
    if (Date.now() > deadline) throw new Error(`job ${id} still "${doc.status}" after ${STUCK_MS / 1000} s`);
    await sleep(10);
  }
}

/** Runs `fn` as a named phase (the caller records its time window, e.g. for the CPU profile). */
export type Phase = <T>(name: string, fn: () => Promise<T>) => Promise<T>;

export interface StatusSection {
  readonly running: StatusResult;
  readonly finished: StatusResult;
  /** The running job's status document, for the calibration run. */
  readonly runningDoc: string;
}

export async function runStatus(server: ServerProcess, options: StatusOptions, phase: Phase): Promise<StatusSection> {
  const client = new Client(server.host, server.port, 2);
  const running = `bench_status_running_${process.pid}`;
  const finished = `bench_status_finished_${process.pid}`;
  try {
    // (a) a running job
    await client.json('POST', `/jobs?${qs({ job_id: running, tool_id: 'bench_sleep' })}`);
    await client.request('POST', `/jobs/${running}/submit?${submitParams(running, 'sleep 30')}`);
    await waitFor(client, running, (d) => d.status === 'running' || d.complete === 'true');
    const runningResult = await phase('status running', () => hammer(server, `/jobs/${running}/status?job_id=${running}`, options));
    const runningDoc = (await client.request('GET', `/jobs/${running}/status?job_id=${running}`)).body.toString('utf8');
    const after = JSON.parse(runningDoc) as StatusDoc;
    if (after.status !== 'running') throw new Error(`the "running" job was ${after.status} at the end of its status run`);
    log(`status running: ${JSON.stringify(runningResult)}`);
    await client.request('PUT', `/jobs/${running}/cancel?job_id=${running}`);
    await client.request('DELETE', `/jobs/${running}?job_id=${running}`);

    // (b) a finished job (full status document)
    await client.json('POST', `/jobs?${qs({ job_id: finished, tool_id: 'bench_echo' })}`);
    await client.request('POST', `/jobs/${finished}/submit?${submitParams(finished, 'echo ok')}`);
    const doc = await waitFor(client, finished, (d) => d.complete === 'true');
    if (doc.status !== 'complete') throw new Error(`the "finished" job ended ${doc.status}`);
    const finishedResult = await phase('status finished', () => hammer(server, `/jobs/${finished}/status?job_id=${finished}`, options));
    log(`status finished: ${JSON.stringify(finishedResult)}`);
    await client.request('DELETE', `/jobs/${finished}?job_id=${finished}`);
    return { running: runningResult, finished: finishedResult, runningDoc };
  } catch (error) {
    // Do not leave the `sleep 30` job behind when something failed half-way.
    await client.request('PUT', `/jobs/${running}/cancel?job_id=${running}`).catch(() => undefined);
    throw error;
  } finally {
    client.close();
  }
}
