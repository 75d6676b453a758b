/**
 * Section `staging`: server-side stage-in (PROTOCOL §8.2) of one big file from a files endpoint on
 * 127.0.0.1 (the check's Galaxy job-files API: GET with Range, streamed from disk), beside `curl`
 * GET of the same file from the same endpoint in the same run. Throughput is MiB/s; the ratio is
 * magnetar ÷ curl. The server's RSS is sampled during the stage-ins.
 *
 * Stage-out (postprocessing, PROTOCOL §8.4: the server POSTs outputs to the files endpoint) is
 * measured beside `curl -F file=@<source>` POST to the same streaming multipart sink
 * (bench/post-sink.ts): a job copies the source into its output, mapped `remote_transfer` to the
 * sink, and the push is timed from the job's command ending to the sink's answer.
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
import { startPostSink, type PostSink, type SinkPost } from './post-sink.js';

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

export interface StageOutRound {
  readonly curl_post_mib_s: number;
  /** The job's command ending → the sink's answer to the server's POST. */
  readonly stage_out_mib_s: number;
  /** curl seconds ÷ stage-out seconds. */
  readonly ratio: number;
  /** The server's POST alone: the sink's first body byte → its answer. */
  readonly post_only_mib_s: number;
  /** From the server's own log line (`staged out (remote_transfer)`, its `ms`), when found. */
  readonly server_logged_mib_s: number | null;
  /** The job's command ending → the status poll that saw `complete` (polled every BENCH_STAGING_POLL_MS). */
  readonly command_end_to_complete_s: number;
}

export interface StageOutHalf {
  readonly available: boolean;
  readonly reason?: string;
  /** Medians over the rounds. */
  readonly curl_post_mib_s?: number;
  readonly stage_out_mib_s?: number;
  /** median(stage_out) ÷ median(curl POST). */
  readonly ratio?: number | null;
  readonly ratio_median_of_rounds?: number;
  readonly each?: StageOutRound[];
  /** Peak VmRSS sampled every 50 ms during the warm-up stage-out (the small size). */
  readonly server_peak_rss_warmup_mib?: number;
  /** VmRSS after the warm-up stage-out. */
  readonly server_rss_before_mib?: number;
  /** Peak VmRSS sampled every 50 ms over the big stage-outs (curl rounds included: the server idles then). */
  readonly server_peak_rss_mib?: number;
  /** Peak during the big stage-outs − VmRSS after the warm-up. */
  readonly server_rss_growth_mib?: number;
  readonly how?: string;
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
const wallMs = (): number => performance.timeOrigin + performance.now();

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

/**
 * Memory touched and freed right before each timed transfer (untimed), curl's and magnetar's alike:
 * `BENCH_STAGING_PREFAULT_MIB` (default twice the file size, at least 256; 0 = off). On a VM whose
 * balloon reports free pages to the host (virtio-balloon free page reporting, as on the
 * development VM), pages freed for more than ~2 s go back to the host, and whoever touches them
 * next — curl, the server, the sink writing the POSTed file, the page cache of the job's copy —
 * pays a host page fault per page: the same stage-out ran at ~1,040 MiB/s right after the
 * previous round and at ~300–530 MiB/s after a 4 s pause. Touching a fresh allocation first and
 * freeing it leaves warm pages in the guest's free lists for the transfer that follows.
 */
let prefaultMiB = 0;

/** The command that touches `prefaultMiB` MiB (256 MiB pieces, all held until the end) and exits. */
function prefaultArgs(): string[] {
  return ['-e', `const a=[];for(let m=${prefaultMiB};m>0;m-=256)a.push(Buffer.alloc(Math.min(m,256)*1048576,1));`];
}

function prefault(): void {
  if (prefaultMiB > 0) spawnSync(process.execPath, prefaultArgs(), { stdio: 'ignore' });
}

/** `prefault` as a shell command for a job (empty when off). */
function prefaultCommand(): string {
  if (prefaultMiB <= 0) return '';
  const [flag, script] = prefaultArgs();
  return ` && '${process.execPath}' ${flag as string} '${script as string}'`;
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

function remoteStaging(filesEndpoint: string, id: string, setup: object[], outputsBy: 'transfer' | 'remote_transfer'): string {
  return JSON.stringify({
    setup,
    action_mapper: {
      default_action: 'remote_transfer',
      files_endpoint: filesEndpoint,
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
  prefault();
  const cpu0 = server.cpuSeconds();
  const [user0, sys0] = userSys(server.pid);
  const t0 = process.hrtime.bigint();
  const landed = stagedIn(path.join(config.inputs_directory, 'big.dat'), watch).then((at) => ({ at, cpu: server.cpuSeconds(), us: userSys(server.pid) }));
  try {
    await phase(`staging stage-in ${id}`, async () => {
      await client.request('POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: remoteStaging(endpoint.filesEndpoint(id), id, setup, 'transfer') })}`);
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

// ---------------------------------------------------------------------------------------------
// STAGE-OUT MEASUREMENT. Per round: `curl -F file=@<source>` POST to the sink (bench/post-sink.ts),
// then a job that copies the source into outputs/out.dat (and `sync`s, untimed) with the output
// mapped remote_transfer to the same sink; the server POSTs it when the job's command ends.
// ---------------------------------------------------------------------------------------------

/** Wait until the sink has received more than `count` POSTs (an in-process check: costs the server nothing). */
async function sinkPosted(sink: PostSink, count: number, done: { failed: boolean }): Promise<SinkPost | undefined> {
  for (;;) {
    const post = sink.posts[count];
    if (post !== undefined) return post;
    if (done.failed) return undefined;
    await sleep(2);
  }
}

/** The server's `staged out (remote_transfer)` log line for `name` after `from` (its `ms`), if logged. */
async function loggedStageOutMs(server: ServerProcess, jobId: string): Promise<number | undefined> {
  const text = await fs.readFile(server.logFile, 'utf8').catch(() => '');
  let ms: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.includes('staged out (remote_transfer)') || !line.includes(encodeURIComponent(jobId))) continue;
    try {
      const rec = JSON.parse(line) as { ms?: unknown };
      if (typeof rec.ms === 'number') ms = rec.ms;
    } catch {
      // not a JSON line
    }
  }
  return ms;
}

interface StageOutTiming {
  /** The job's command ending (its `date` stamp) → the sink's answer to the server's POST. */
  readonly seconds: number;
  /** The sink's first body byte → its answer (the POST alone). */
  readonly postSeconds: number;
  /** The server's own per-file figure (log line `staged out (remote_transfer)`), if found. */
  readonly loggedMs: number | undefined;
  /** The command ending → the status poll that saw `complete`. */
  readonly toCompleteSeconds: number;
}

/** One stage-out of `source` (size bytes, sha256 wantSha) through a fresh job, checked at the sink. */
async function stageOutRound(server: ServerProcess, client: Client, sink: PostSink, source: string, wantSha: string, size: number, id: string, phase: Phase): Promise<StageOutTiming> {
  const config = await client.json<{ working_directory: string }>('POST', `/jobs?${qs({ job_id: id, tool_id: 'bench_stage_out' })}`);
  const stamp = path.join(config.working_directory, 'command-ended');
  // `sync` (and the prefault) before the stamp: the copy's dirty pages are written back before the timed part.
  const command = `cp ${source} ../outputs/out.dat && sync${prefaultCommand()} && date +%s%N > ${stamp}`;
  const before = sink.posts.length;
  const watch = { failed: false };
  const posted = sinkPosted(sink, before, watch);
  let st: Status;
  let completeAt = 0;
  try {
    st = await phase(`staging stage-out ${id}`, async () => {
      await client.request('POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: remoteStaging(sink.filesEndpoint(id), id, [], 'remote_transfer') })}`);
      // Polled every POLL_MS meanwhile (not faster: the polls would compete with the push).
      const done = await waitForJob(client, id, POLL_MS);
      completeAt = wallMs();
      watch.failed = true;
      await posted;
      return done;
    });
  } finally {
    watch.failed = true;
  }
  const post = await posted;
  if (st.status !== 'complete' || st.returncode !== 0) throw new Error(`stage-out job ${id} ended ${st.status} (returncode ${String(st.returncode)}): ${st.stderr ?? ''}`);
  if (post === undefined) throw new Error(`job ${id} completed but nothing reached the sink`);
  const ended = Number(BigInt((await fs.readFile(stamp, 'utf8')).trim()) / 1000n) / 1000;
  await checkPost(post, size, wantSha);
  const loggedMs = await loggedStageOutMs(server, id);
  await client.request('DELETE', `/jobs/${id}?job_id=${id}`);
  return { seconds: (post.answeredAt - ended) / 1000, postSeconds: (post.answeredAt - post.firstByteAt) / 1000, loggedMs, toCompleteSeconds: (completeAt - ended) / 1000 };
}

/** The sink got `size` bytes hashing to `wantSha` (checked untimed; the file is then removed). */
async function checkPost(post: SinkPost, size: number, wantSha: string): Promise<void> {
  try {
    if (post.bytes !== size) throw new Error(`the sink received ${post.bytes} bytes of field "file", expected ${size}`);
    if ((await sha256(post.file)) !== wantSha) throw new Error('the file the sink received differs from the source (sha256)');
  } finally {
    await fs.rm(post.file, { force: true });
  }
}

async function measureStageOut(server: ServerProcess, client: Client, sink: PostSink, files: { source: string; sha: string; warm: string; warmSha: string }, sizeMiB: number, warmMiB: number, rounds: number, phase: Phase): Promise<StageOutHalf> {
  const size = sizeMiB * MIB;
  syncDisks();
  const stopWarm = server.sampleRss(50);
  await stageOutRound(server, client, sink, files.warm, files.warmSha, warmMiB * MIB, 'bench_stage_out_warmup', phase);
  const warm = stopWarm();
  syncDisks();
  const before = server.memory().rss;
  const stopAll = server.sampleRss(50);
  const each: StageOutRound[] = [];
  for (let r = 0; r < rounds; r++) {
    syncDisks();
    const url = sink.postUrl('bench_curl', '/galaxy/job/out.dat', 'output');
    const count = sink.posts.length;
    prefault();
    const curlS = await phase(`staging curl POST ${r}`, () => curl(['--output', '/dev/null', '-F', `file=@${files.source}`, url]));
    const curlPost = sink.posts[count];
    if (curlPost === undefined) throw new Error('curl POST: the sink recorded nothing');
    await checkPost(curlPost, size, files.sha);
    syncDisks();
    const t = await stageOutRound(server, client, sink, files.source, files.sha, size, `bench_stage_out_${r}`, phase);
    syncDisks();
    const round_: StageOutRound = {
      curl_post_mib_s: round(sizeMiB / curlS, 1),
      stage_out_mib_s: round(sizeMiB / t.seconds, 1),
      ratio: round(curlS / t.seconds, 3),
      post_only_mib_s: round(sizeMiB / t.postSeconds, 1),
      server_logged_mib_s: t.loggedMs === undefined || t.loggedMs <= 0 ? null : round(sizeMiB / (t.loggedMs / 1000), 1),
      command_end_to_complete_s: round(t.toCompleteSeconds, 3),
    };
    log(`staging stage-out round ${r}: ${JSON.stringify(round_)}`);
    each.push(round_);
  }
  const all = stopAll();
  const curlMedian = median(each.map((e) => e.curl_post_mib_s));
  const outMedian = median(each.map((e) => e.stage_out_mib_s));
  return {
    available: true,
    curl_post_mib_s: round(curlMedian, 1),
    stage_out_mib_s: round(outMedian, 1),
    ratio: round(outMedian / curlMedian, 3),
    ratio_median_of_rounds: round(median(each.map((e) => e.ratio)), 3),
    each,
    server_peak_rss_warmup_mib: toMiB(warm.peakRss),
    server_rss_before_mib: toMiB(before),
    server_peak_rss_mib: toMiB(all.peakRss),
    server_rss_growth_mib: toMiB(Math.max(0, all.peakRss - before)),
    how: `stage-out = the job's command ending (a \`date +%s%N\` stamp after \`cp\` + \`sync\` of the source into outputs/out.dat) → the sink's answer to the server's multipart POST (the sink answers once the file is written and closed); curl = ${CURL} -F file=@<source> to the same sink, spawn → exit; the sink strips the framing, streams the field to disk, and the bytes and sha256 are checked after each POST (untimed); a warm-up stage-out of ${warmMiB} MiB first (server_peak_rss_warmup_mib); ${prefaultMiB} MiB touched and freed right before each timed transfer, curl's and the server's (BENCH_STAGING_PREFAULT_MIB); medians of ${rounds} rounds`,
  };
}

export async function runStaging(server: ServerProcess, root: string, sizeMiB: number, rounds: number, phase: Phase): Promise<StagingResult> {
  const prefaultEnv = process.env['BENCH_STAGING_PREFAULT_MIB'];
  prefaultMiB = prefaultEnv === undefined || prefaultEnv === '' ? Math.max(256, 2 * sizeMiB) : Math.max(0, Math.floor(Number(prefaultEnv)) || 0);
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
  const sink = await startPostSink(postDir);
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
      prefault();
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
    log(`staging: stage-out of ${sizeMiB} MiB to a multipart sink on 127.0.0.1 beside curl POST (${rounds} rounds)`);
    const stageOut = await measureStageOut(server, client, sink, { source, sha: wantSha, warm: warmSource, warmSha }, sizeMiB, warmMiB, rounds, phase);
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
      how: `stage-in = submit sent → the staged file appearing under its real name in the job's inputs/ (stat every 2 ms; the status is polled every ${POLL_MS} ms), the job then checks size and sha256; curl = ${CURL} GET of the same URL to a file on the staging directory's filesystem (both removed unsynced after each round); \`sync\` after each phase; a warm-up stage-in of ${warmMiB} MiB first; ${prefaultMiB} MiB touched and freed right before each timed transfer (BENCH_STAGING_PREFAULT_MIB); medians of ${rounds} rounds`,
    };
    log(`staging: ${JSON.stringify(result)}`);
    return result;
  } finally {
    client.close();
    await endpoint.close();
    await sink.close();
    await fs.rm(source, { force: true });
    await fs.rm(warmSource, { force: true });
    await fs.rm(curlOut, { force: true });
    await fs.rm(postDir, { recursive: true, force: true });
  }
}
