/**
 * Section `staging`: server-side stage-in (PROTOCOL §8.2) of one big file from a files endpoint on
 * 127.0.0.1 (the check's Galaxy job-files API: GET with Range, streamed from disk), beside `curl`
 * GET of the same file from the same endpoint in the same run. Throughput is MiB/s; the ratio is
 * magnetar ÷ curl. The server's RSS is sampled during the stage-ins.
 *
 * Stage-out (postprocessing: the server POSTs outputs to the endpoint) is probed: a job whose
 * output is mapped `remote_transfer` runs, and the half reports "not available" when the server
 * pushed nothing. The measurement beside `curl` POST goes in `measureStageOut` (marked below).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLocalFilesEndpoint, type LocalFilesEndpoint } from '../src/check/files-endpoint.js';
import { Client, qs } from './client.js';
import type { ServerProcess } from './server-process.js';
import type { Phase } from './status.js';
import { MIB, log, round } from './stats.js';
import { generateFile } from './transfer.js';

const CURL = process.env['BENCH_CURL'] ?? '/usr/bin/curl';
/**
 * Status poll interval (ms). Galaxy polls every few seconds; polling every 5 ms during the
 * stage-in cut the server's own logged rate by about 2.5x on 2 vCPUs, so the end of the stage-in is
 * detected on the file system instead (see `stagedIn`).
 */
const POLL_MS = Number(process.env['BENCH_STAGING_POLL_MS'] ?? '250') || 250;

export interface StagingRound {
  readonly curl_get_mib_s: number;
  readonly stage_in_mib_s: number;
  readonly ratio: number;
  /** Server CPU seconds per second of stage-in (the job's own processes not counted). */
  readonly server_cpu_cores_stage_in: number;
  /** Server CPU seconds of the stage-in, user and system (from /proc/<pid>/stat). */
  readonly server_cpu_user_s: number;
  readonly server_cpu_sys_s: number;
}

export interface StageOutHalf {
  readonly available: boolean;
  readonly reason?: string;
  readonly curl_post_mib_s?: number;
  readonly stage_out_mib_s?: number;
  readonly ratio?: number | null;
}

export interface StagingResult {
  readonly size_mib: number;
  readonly rounds: number;
  /** Medians over the rounds. */
  readonly curl_get_mib_s: number;
  readonly stage_in_mib_s: number;
  /** median(stage_in) ÷ median(curl GET). */
  readonly ratio: number;
  /** The median of the per-round ratios (each round pairs a curl GET and a stage-in run back to back). */
  readonly ratio_median_of_rounds: number;
  readonly each: StagingRound[];
  /** VmRSS of the fresh server, before any job. */
  readonly server_rss_at_start_mib: number;
  /** VmRSS after a warm-up stage-in of min(64, size) MiB (the baseline: the first stage-in loads code and grows buffers whatever the size). */
  readonly server_rss_before_mib: number;
  /** Peak VmRSS sampled every 50 ms over all rounds. */
  readonly server_peak_rss_mib: number;
  /** VmHWM after the last round. */
  readonly server_vmhwm_mib: number;
  /** max(peak sampled, VmHWM) − VmRSS after the warm-up: what the big stage-ins added at most. */
  readonly server_rss_growth_mib: number;
  readonly stage_out: StageOutHalf;
  readonly how: string;
}

const toMiB = (b: number): number => round(b / MIB, 1);

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * MIB })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Run curl; resolves with the seconds it took (rejects on a non-zero exit, with its stderr). */
function curl(args: readonly string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(CURL, ['--silent', '--show-error', '--fail', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => {
      if (stderr.length < 2000) stderr += c.toString('utf8');
    });
    child.once('error', reject);
    child.once('exit', (code) => {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code === 0) resolve(s);
      else reject(new Error(`curl exited ${String(code)}: ${stderr.trim()}`));
    });
  });
}

/**
 * `sync` (untimed) between phases: 1 GiB files written and removed unsynced otherwise leave dirty
 * pages whose writeback throttled a later round to a fifth of its speed (curl and magnetar alike).
 */
function userSys(pid: number): [number, number] {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return [Number(rest[11]) / 100, Number(rest[12]) / 100];
  } catch {
    return [Number.NaN, Number.NaN];
  }
}

function syncDisks(): void {
  spawnSync('sync', { stdio: 'ignore' });
}

interface Status {
  complete: string;
  status: string;
  returncode?: number | null;
  stderr?: string;
}

/** Poll the status every `pollMs` until the job is complete. */
async function waitForJob(client: Client, id: string, pollMs: number): Promise<Status> {
  const deadline = Date.now() + 600_000;
  for (;;) {
    const st = await client.json<Status>('GET', `/jobs/${id}/status?job_id=${id}`);
    if (st.complete === 'true') return st;
    if (Date.now() > deadline) throw new Error(`job ${id} still "${st.status}" after 600 s`);
    await sleep(pollMs);
  }
}

/**
 * Resolves with hrtime when `file` exists: the stage-in writes `.<name>.stage-in.part` and renames
 * it to the real name when the last byte is written. A local stat every 2 ms costs the server nothing.
 */
async function stagedIn(file: string, done: { failed: boolean }): Promise<bigint | undefined> {
  for (;;) {
    try {
      await fs.stat(file);
      return process.hrtime.bigint();
    } catch {
      if (done.failed) return undefined;
      await sleep(2);
    }
  }
}

function remoteStaging(endpoint: LocalFilesEndpoint, id: string, setup: object[], outputsBy: 'transfer' | 'remote_transfer'): string {
  return JSON.stringify({
    setup,
    action_mapper: {
      default_action: 'remote_transfer',
      files_endpoint: endpoint.filesEndpoint(id),
      ssh_key: null, ssh_user: null, ssh_port: null, ssh_host: null,
      paths: outputsBy === 'transfer' ? [{ action: 'transfer', path_types: 'output,output_workdir,output_metadata,output_jobdir', match_type: 'path_type_only' }] : [],
    },
    client_outputs: {
      working_directory: '/galaxy/job/w',
      metadata_directory: '/galaxy/job/m',
      job_directory: null,
      work_dir_outputs: [],
      output_files: ['/galaxy/job/out.dat'],
      version_file: '/galaxy/job/GALAXY_VERSION',
      dynamic_outputs: [],
      dynamic_file_sources: [],
      dataset_collector_descriptions: [],
    },
  });
}

/** One stage-in of the whole file through a fresh job; the job hashes what it got. */
async function stageInRound(server: ServerProcess, client: Client, endpoint: LocalFilesEndpoint, galaxyPath: string, wantSha: string, size: number, id: string, phase: Phase): Promise<{ seconds: number; cpu: number; user: number; sys: number }> {
  const config = await client.json<{ inputs_directory: string }>('POST', `/jobs?${qs({ job_id: id, tool_id: 'bench_stage_in' })}`);
  const setup = [{
    name: 'big.dat',
    type: 'input',
    action: { path: galaxyPath, source: { path: galaxyPath, object_store_ref: null }, action_type: 'remote_transfer', url: endpoint.inputUrl(id, galaxyPath, 'input') },
  }];
  const command = 'stat -c %s ../inputs/big.dat > ../outputs/out.dat && sha256sum ../inputs/big.dat | cut -c1-64 >> ../outputs/out.dat';
  const watch = { failed: false };
  const cpu0 = server.cpuSeconds();
  const [user0, sys0] = userSys(server.pid);
  const t0 = process.hrtime.bigint();
  const landed = stagedIn(path.join(config.inputs_directory, 'big.dat'), watch).then((at) => ({ at, cpu: server.cpuSeconds(), us: userSys(server.pid) }));
  try {
    await phase(`staging stage-in ${id}`, async () => {
      await client.request('POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: remoteStaging(endpoint, id, setup, 'transfer') })}`);
      const st = await waitForJob(client, id, POLL_MS);
      if (st.status !== 'complete' || st.returncode !== 0) throw new Error(`stage-in job ${id} ended ${st.status} (returncode ${String(st.returncode)}): ${st.stderr ?? ''}`);
    });
  } finally {
    watch.failed = true;
  }
  const { at, cpu: cpu1, us } = await landed;
  if (at === undefined) throw new Error(`job ${id} completed but ${config.inputs_directory}/big.dat never appeared`);
  const seconds = Number(at - t0) / 1e9;
  const out = (await client.request('GET', `/jobs/${id}/files?${qs({ job_id: id, name: 'out.dat', type: 'output' })}`)).body.toString('utf8').trim().split('\n');
  if (Number(out[0]) !== size) throw new Error(`the job saw ${out[0] ?? '?'} bytes, expected ${size}`);
  if (out[1] !== wantSha) throw new Error('the staged-in file differs from the source (sha256)');
  await client.request('DELETE', `/jobs/${id}?job_id=${id}`);
  return { seconds, cpu: cpu1 - cpu0, user: us[0] - user0, sys: us[1] - sys0 };
}

/**
 * Probe stage-out: one job whose output is mapped remote_transfer. No POST reached the endpoint
 * when the job is complete → the server does not stage out (yet).
 */
async function probeStageOut(client: Client, endpoint: LocalFilesEndpoint): Promise<StageOutHalf> {
  const id = 'bench_stage_out_probe';
  await client.request('POST', `/jobs?${qs({ job_id: id, tool_id: 'bench_stage_out' })}`);
  const before = endpoint.posts.length;
  try {
    await client.request('POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: 'echo probe > ../outputs/out.dat', remote_staging: remoteStaging(endpoint, id, [], 'remote_transfer') })}`);
  } catch (error) {
    return { available: false, reason: `the server refused a submit with remote_transfer outputs: ${(error as Error).message.slice(0, 300)}` };
  }
  const st = await waitForJob(client, id, 20);
  await client.request('DELETE', `/jobs/${id}?job_id=${id}`).catch(() => undefined);
  if (endpoint.posts.length > before) return { available: true };
  if (st.status !== 'complete') return { available: false, reason: `the probe job ended ${st.status}: ${(st.stderr ?? '').slice(0, 300)}` };
  return { available: false, reason: 'the server completed a job whose output is mapped remote_transfer without pushing it (no stage-out in this build)' };
}

// ---------------------------------------------------------------------------------------------
// STAGE-OUT MEASUREMENT: not implemented yet (stage-out is being built on another branch).
// When `probeStageOut` says available, measure here, per round: `curl -F file=@<source>` POST to
// endpoint.inputUrl(...) (the endpoint stores the raw body under <dir>/posted), then a job that
// `cp`s a staged/uploaded copy of the source into outputs/out.dat with the output mapped
// remote_transfer; time from "running ended" to `complete` (or the server log's rate line), and
// compare the bytes the endpoint received. Report curl_post_mib_s, stage_out_mib_s and ratio.
// ---------------------------------------------------------------------------------------------
async function measureStageOut(probe: StageOutHalf): Promise<StageOutHalf> {
  if (!probe.available) return probe;
  return { available: true, reason: 'the server stages out, but the stage-out measurement is not written yet (bench/staging.ts, STAGE-OUT MEASUREMENT)', ratio: null };
}

export async function runStaging(server: ServerProcess, root: string, sizeMiB: number, rounds: number, phase: Phase): Promise<StagingResult> {
  await fs.mkdir(root, { recursive: true });
  const source = path.join(root, 'staging-source.dat');
  const curlOut = path.join(root, 'curl-get.dat');
  const postDir = path.join(root, 'posted');
  await fs.mkdir(postDir);
  log(`staging: generating ${sizeMiB} MiB source file`);
  await generateFile(source, sizeMiB);
  const wantSha = await sha256(source);
  const warmSource = path.join(root, 'staging-warmup.dat');
  const warmMiB = Math.min(64, sizeMiB);
  await generateFile(warmSource, warmMiB);
  const warmSha = await sha256(warmSource);
  const size = sizeMiB * MIB;
  const galaxyPath = '/galaxy/datasets/000/dataset_1.dat';
  const endpoint = await startLocalFilesEndpoint({ postDir });
  endpoint.serve(galaxyPath, source);
  endpoint.serve('/galaxy/datasets/000/warmup.dat', warmSource);
  const client = new Client(server.host, server.port, 2, 60_000);
  try {
    const atStart = server.memory().rss;
    await stageInRound(server, client, endpoint, '/galaxy/datasets/000/warmup.dat', warmSha, warmMiB * MIB, 'bench_stage_in_warmup', phase);
    syncDisks();
    const before = server.memory().rss;
    const stopAll = server.sampleRss(50);
    const each: StagingRound[] = [];
    for (let r = 0; r < rounds; r++) {
      // curl GET: the same URL the server is given, to a file on the same filesystem as the staging directory.
      const curlS = await phase(`staging curl GET ${r}`, () => curl(['--output', curlOut, endpoint.inputUrl('bench_curl', galaxyPath, 'input')]));
      const got = (await fs.stat(curlOut)).size;
      if (got !== size) throw new Error(`curl wrote ${got} bytes, expected ${size}`);
      // Removed unsynced, as the server's job directory is (DELETE): neither side's writeback is timed or left to compete.
      await fs.rm(curlOut);
      syncDisks();
      const stage = await stageInRound(server, client, endpoint, galaxyPath, wantSha, size, `bench_stage_in_${r}`, phase);
      const stageS = stage.seconds;
      syncDisks();
      const round_: StagingRound = {
        curl_get_mib_s: round(sizeMiB / curlS, 1),
        stage_in_mib_s: round(sizeMiB / stageS, 1),
        ratio: round(curlS / stageS, 3),
        server_cpu_cores_stage_in: round(stage.cpu / stageS, 2),
        server_cpu_user_s: round(stage.user, 2),
        server_cpu_sys_s: round(stage.sys, 2),
      };
      log(`staging round ${r}: ${JSON.stringify(round_)}`);
      each.push(round_);
    }
    const all = stopAll();
    const hwm = server.memory().hwm;
    const curlMedian = median(each.map((e) => e.curl_get_mib_s));
    const stageMedian = median(each.map((e) => e.stage_in_mib_s));
    log('staging: probing stage-out');
    const stageOut = await measureStageOut(await probeStageOut(client, endpoint));
    const result: StagingResult = {
      size_mib: sizeMiB,
      rounds,
      curl_get_mib_s: round(curlMedian, 1),
      stage_in_mib_s: round(stageMedian, 1),
      ratio: round(stageMedian / curlMedian, 3),
      ratio_median_of_rounds: round(median(each.map((e) => e.ratio)), 3),
      each,
      server_rss_at_start_mib: toMiB(atStart),
      server_rss_before_mib: toMiB(before),
      server_peak_rss_mib: toMiB(all.peakRss),
      server_vmhwm_mib: toMiB(hwm),
      server_rss_growth_mib: toMiB(Math.max(0, Math.max(hwm, all.peakRss) - before)),
      stage_out: stageOut,
      how: `stage-in = submit sent → the staged file appearing under its real name in the job's inputs/ (stat every 2 ms; the status is polled every ${POLL_MS} ms), the job then checks size and sha256; curl = ${CURL} GET of the same URL to a file on the staging directory's filesystem (both removed unsynced after each round); \`sync\` after each phase; a warm-up stage-in of ${warmMiB} MiB first; medians of ${rounds} rounds`,
    };
    log(`staging: ${JSON.stringify(result)}`);
    return result;
  } finally {
    client.close();
    await endpoint.close();
    await fs.rm(source, { force: true });
    await fs.rm(warmSource, { force: true });
    await fs.rm(curlOut, { force: true });
    await fs.rm(postDir, { recursive: true, force: true });
  }
}
