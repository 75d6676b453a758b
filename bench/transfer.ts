/**
 * Workload 2: one large upload (type=input) and the download of the same bytes back, after a job
 * copied the input into outputs/ with `cp`. Throughput is MiB/s (bytes / 2^20 / s); the server's
 * RSS is sampled every 50 ms while the bytes flow.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, qs, shellQuote, submitParams } from './client.js';
import type { ServerProcess } from './server-process.js';
import type { Phase } from './status.js';
import { MIB, log, msSince, round } from './stats.js';

/** One upload + download of the whole file, through a fresh job. */
export interface TransferRound {
  readonly upload_mib_s: number;
  readonly download_mib_s: number;
  readonly server_peak_rss_mib: number;
  readonly server_cpu_cores_upload: number;
  readonly server_cpu_cores_download: number;
}

export interface TransferResult {
  readonly size_mib: number;
  readonly rounds: number;
  /** Median over the rounds (this VM's file writes vary a lot from one run to the next). */
  readonly upload_mib_s: number;
  readonly download_mib_s: number;
  readonly upload_mib_s_each: number[];
  readonly download_mib_s_each: number[];
  /** Peak VmRSS sampled every 50 ms from the first upload to the last download. */
  readonly server_peak_rss_mib: number;
  readonly server_rss_before_mib: number;
  /** VmHWM (lifetime peak RSS of the server process) read after the last download. */
  readonly server_vmhwm_mib: number;
  readonly rss_samples: number;
  readonly server_cpu_cores_upload_each: number[];
  readonly server_cpu_cores_download_each: number[];
}

const CHUNK = MIB;

/**
 * Write `sizeMiB` MiB of random-looking data with a streamed write: one random MiB, each copy
 * stamped with its index in its first 8 bytes (so misordered or repeated chunks are detectable).
 */
export async function generateFile(file: string, sizeMiB: number): Promise<Buffer> {
  const base = randomBytes(CHUNK);
  const out = createWriteStream(file, { highWaterMark: 4 * CHUNK });
  for (let i = 0; i < sizeMiB; i++) {
    const chunk = Buffer.from(base);
    chunk.writeBigUInt64LE(BigInt(i), 0);
    if (!out.write(chunk)) await once(out, 'drain');
  }
  out.end();
  await once(out, 'close');
  await flush(file);
  return base;
}

/**
 * fsync a file (a read-only descriptor is enough on Linux) so that the writeback of GiBs of dirty
 * pages written *before* a timed phase does not compete with the phase for the disk.
 */
async function flush(file: string): Promise<void> {
  const handle = await fs.open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Checks a downloaded stream against the generated pattern without hashing 1 GiB on the client. */
class PatternChecker {
  #offset = 0;
  #errors = 0;
  #checked = 0;
  constructor(readonly base: Buffer) {}

  feed(chunk: Buffer): void {
    const start = this.#offset;
    const end = start + chunk.length;
    // Every chunk header (8-byte index at each MiB boundary) fully inside this piece is verified,
    // and so are up to 64 bytes of payload after it.
    let boundary = Math.ceil(start / CHUNK) * CHUNK;
    for (; boundary + 72 <= end; boundary += CHUNK) {
      const at = boundary - start;
      const index = chunk.readBigUInt64LE(at);
      if (index !== BigInt(boundary / CHUNK)) this.#errors++;
      if (!chunk.subarray(at + 8, at + 72).equals(this.base.subarray(8, 72))) this.#errors++;
      this.#checked++;
    }
    this.#offset = end;
  }

  get errors(): number {
    return this.#errors;
  }
  get checked(): number {
    return this.#checked;
  }
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const toMiB = (b: number): number => round(b / MIB, 1);

async function oneRound(server: ServerProcess, client: Client, source: string, base: Buffer, sizeMiB: number, id: string, phase: Phase): Promise<TransferRound> {
  const size = sizeMiB * MIB;
  const setup = await client.json<{ job_id: string; outputs_directory: string }>('POST', `/jobs?${qs({ job_id: id, tool_id: 'bench_cp' })}`);

  // ---- upload
  let stopPhase = server.sampleRss(50);
  let cpu0 = server.cpuSeconds();
  let t = process.hrtime.bigint();
  const reply = await phase(`transfer upload ${id}`, () =>
    client.upload(`/jobs/${id}/files?${qs({ job_id: id, name: 'big.dat', type: 'input' })}`, createReadStream(source, { highWaterMark: CHUNK }), size),
  );
  const uploadS = msSince(t) / 1000;
  const uploadCpu = server.cpuSeconds() - cpu0;
  const uploadPeak = stopPhase().peakRss;
  const uploaded = (JSON.parse(reply.body.toString('utf8')) as { path: string }).path;
  const stagedSize = (await fs.stat(uploaded)).size;
  if (stagedSize !== size) throw new Error(`uploaded file has ${stagedSize} bytes, expected ${size}`);

  // ---- the job copies the input into outputs/ (not timed)
  const output = `${setup.outputs_directory}/big.dat`;
  const cmd = `cp ${shellQuote(uploaded)} ${shellQuote(output)}`;
  await client.request('POST', `/jobs/${id}/submit?${submitParams(id, cmd)}`);
  const deadline = Date.now() + 120_000;
  for (;;) {
    const st = await client.json<{ complete: string; status: string; returncode?: number | null; stderr?: string }>('GET', `/jobs/${id}/status?job_id=${id}`);
    if (st.complete === 'true') {
      if (st.status !== 'complete' || st.returncode !== 0) throw new Error(`cp job ended ${st.status}: ${st.stderr ?? ''}`);
      break;
    }
    if (Date.now() > deadline) throw new Error(`cp job still "${st.status}" after 120 s`);
    await sleep(20);
  }

  // ---- download (after flushing the staged input and the job's copy, written just before)
  await Promise.all([flush(uploaded), flush(output)]);
  const checker = new PatternChecker(base);
  stopPhase = server.sampleRss(50);
  cpu0 = server.cpuSeconds();
  t = process.hrtime.bigint();
  const got = await phase(`transfer download ${id}`, () =>
    client.download(`/jobs/${id}/files?${qs({ name: 'big.dat', job_id: id, type: 'output' })}`, (c) => checker.feed(c)),
  );
  const downloadS = msSince(t) / 1000;
  const downloadCpu = server.cpuSeconds() - cpu0;
  const downloadPeak = stopPhase().peakRss;
  if (got.bytes !== size) throw new Error(`downloaded ${got.bytes} bytes, expected ${size}`);
  if (got.contentLength !== undefined && got.contentLength !== size) throw new Error(`Content-Length ${got.contentLength}, expected ${size}`);
  if (checker.errors > 0) throw new Error(`downloaded data differs from the upload (${checker.errors} bad blocks of ${checker.checked} checked)`);
  await client.request('DELETE', `/jobs/${id}?job_id=${id}`);
  const result: TransferRound = {
    upload_mib_s: round(sizeMiB / uploadS, 1),
    download_mib_s: round(sizeMiB / downloadS, 1),
    server_peak_rss_mib: toMiB(Math.max(uploadPeak, downloadPeak)),
    server_cpu_cores_upload: round(uploadCpu / uploadS, 2),
    server_cpu_cores_download: round(downloadCpu / downloadS, 2),
  };
  log(`transfer ${id}: ${JSON.stringify(result)} (${checker.checked} block headers verified)`);
  return result;
}

export async function runTransfer(server: ServerProcess, root: string, sizeMiB: number, rounds: number, phase: Phase): Promise<TransferResult> {
  const source = path.join(root, 'bench-source.dat');
  log(`transfer: generating ${sizeMiB} MiB source file`);
  const t0 = process.hrtime.bigint();
  const base = await generateFile(source, sizeMiB);
  log(`transfer: generated and fsynced in ${round(msSince(t0) / 1000, 2)} s`);

  const client = new Client(server.host, server.port, 2);
  try {
    const before = server.memory().rss;
    const stopAll = server.sampleRss(50);
    const results: TransferRound[] = [];
    for (let r = 0; r < rounds; r++) results.push(await oneRound(server, client, source, base, sizeMiB, `bench_transfer_${r}`, phase));
    const all = stopAll();
    const hwm = server.memory().hwm;
    const result: TransferResult = {
      size_mib: sizeMiB,
      rounds,
      upload_mib_s: round(median(results.map((x) => x.upload_mib_s)), 1),
      download_mib_s: round(median(results.map((x) => x.download_mib_s)), 1),
      upload_mib_s_each: results.map((x) => x.upload_mib_s),
      download_mib_s_each: results.map((x) => x.download_mib_s),
      server_peak_rss_mib: toMiB(all.peakRss),
      server_rss_before_mib: toMiB(before),
      server_vmhwm_mib: toMiB(hwm),
      rss_samples: all.samples,
      server_cpu_cores_upload_each: results.map((x) => x.server_cpu_cores_upload),
      server_cpu_cores_download_each: results.map((x) => x.server_cpu_cores_download),
    };
    log(`transfer: ${JSON.stringify(result)}`);
    return result;
  } finally {
    client.close();
    await fs.rm(source, { force: true });
  }
}
