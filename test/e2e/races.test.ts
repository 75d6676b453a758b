/**
 * Races in the job lifecycle, driven over HTTP against a real in-process server on 127.0.0.1:
 *
 * 1. uploads racing a submit in public mode (a config file swapped after its validator ran);
 * 2. cancel / clean racing the start of a job (nothing killed, a cleaned record written back);
 * 3. job-record writes failing mid-run (a leaked slot wedges the queue; jobs hang in queued). An
 *    unhandled rejection on that path (a crash outside tests) fails this file through ava.
 *
 * Every loop is bounded in iterations and time. Processes are found by the test's own staging
 * directory (in their command line or working directory) and killed by pid / process group.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { collectReply, request, qs, type Reply } from '../helpers/client.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';

const TOOLBOX = fileURLToPath(new URL('../../../test/fixtures/races/toolbox.xml', import.meta.url));
const GOOD = 'validated';
const BAD = 'NOT validated';
const CONFIG_NAME = 'race.conf';

// ------------------------------------------------------------------------------------------ helpers

interface JobConfig {
  readonly job_id: string;
  readonly job_directory: string;
  readonly configs_directory: string;
  readonly outputs_directory: string;
}

interface StatusDoc {
  readonly complete: string;
  readonly status: string;
  readonly returncode?: number | null;
  readonly stderr?: string;
}

function parseJson<T>(reply: Reply): T | undefined {
  try {
    return reply.json<T>();
  } catch {
    return undefined;
  }
}

/** `{error, message}` with two strings: the body every refusal must carry. */
function isErrorBody(reply: Reply): boolean {
  const body = parseJson<{ error?: unknown; message?: unknown }>(reply);
  return typeof body === 'object' && body !== null && typeof body.error === 'string' && typeof body.message === 'string';
}

function brief(reply: Reply): string {
  return `${reply.status} ${reply.text.slice(0, 300)}`;
}

async function setup(base: string, id: string, extra: Record<string, string> = {}): Promise<Reply> {
  return request(base, 'POST', `/jobs?${qs({ job_id: id, ...extra })}`);
}

async function setupOk(base: string, id: string, extra: Record<string, string> = {}): Promise<JobConfig> {
  const reply = await setup(base, id, extra);
  if (reply.status !== 200) throw new Error(`setup of ${id} answered ${brief(reply)}`);
  return reply.json<JobConfig>();
}

async function upload(base: string, id: string, name: string, type: string, body: string): Promise<Reply> {
  return request(base, 'POST', `/jobs/${id}/files?${qs({ job_id: id, name, type })}`, { body });
}

async function submit(base: string, id: string, commandLine: string): Promise<Reply> {
  return request(base, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: commandLine })}`);
}

async function submitOk(base: string, id: string, commandLine: string): Promise<void> {
  const reply = await submit(base, id, commandLine);
  if (reply.status !== 200 || reply.text !== 'OK') throw new Error(`submit of ${id} answered ${brief(reply)}`);
}

async function cancel(base: string, id: string): Promise<Reply> {
  return request(base, 'PUT', `/jobs/${id}/cancel?${qs({ job_id: id })}`);
}

async function clean(base: string, id: string): Promise<Reply> {
  return request(base, 'DELETE', `/jobs/${id}?${qs({ job_id: id })}`);
}

interface Status {
  readonly http: number;
  readonly doc: StatusDoc | undefined;
  readonly text: string;
}

async function getStatus(base: string, id: string): Promise<Status> {
  const reply = await request(base, 'GET', `/jobs/${id}/status?${qs({ job_id: id })}`);
  return { http: reply.status, doc: reply.status === 200 ? parseJson<StatusDoc>(reply) : undefined, text: reply.text.slice(0, 500) };
}

function isTerminal(s: Status): boolean {
  return s.http === 200 && s.doc?.complete === 'true';
}

function describeStatus(s: Status): string {
  if (s.http !== 200 || s.doc === undefined) return `HTTP ${s.http}: ${s.text}`;
  return `${s.doc.status} (complete=${s.doc.complete}, returncode=${String(s.doc.returncode)}, stderr=${JSON.stringify(s.doc.stderr ?? '')})`;
}

/** Poll the status until it is terminal or `timeoutMs` passed; returns the last answer either way. */
async function waitTerminal(base: string, id: string, timeoutMs: number): Promise<Status> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await getStatus(base, id);
    if (isTerminal(s) || Date.now() > deadline) return s;
    await sleep(25);
  }
}

/** Output `name` of job `id`: its text, or undefined when the download is refused. */
async function output(base: string, id: string, name: string): Promise<{ http: number; text: string | undefined }> {
  const r = await request(base, 'GET', `/jobs/${id}/files?${qs({ job_id: id, name, type: 'output' })}`);
  return { http: r.status, text: r.status === 200 ? r.text : undefined };
}

/** Reject with a message naming `what` when `promise` takes longer than `ms` (a hang is a failure, not a stall). */
async function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(
    () => true,
    () => false,
  );
}

// ------------------------------------------------------------------------- processes of a test

interface FoundProcess {
  readonly pid: number;
  readonly pgid: number;
  readonly cmdline: string;
  readonly cwd: string;
}

async function processGroupOf(pid: number): Promise<number | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const pgid = Number(fields[2]);
    return Number.isSafeInteger(pgid) ? pgid : undefined;
  } catch {
    return undefined;
  }
}

/** Live processes whose command line or working directory mentions one of `markers` (directories ending in "/"). */
async function processesUnder(markers: readonly string[]): Promise<FoundProcess[]> {
  const found: FoundProcess[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).replaceAll('\0', ' ').trim();
    } catch {
      continue; // gone
    }
    // A zombie has an empty command line: it has exited already.
    if (cmdline === '') continue;
    let cwd = '';
    try {
      cwd = await fs.readlink(`/proc/${pid}/cwd`); // "… (deleted)" once the directory is removed
    } catch {
      // gone meanwhile
    }
    const cwdSlash = cwd.endsWith(' (deleted)') ? `${cwd.slice(0, -' (deleted)'.length)}/` : `${cwd}/`;
    if (!markers.some((m) => cmdline.includes(m) || cwdSlash.startsWith(m))) continue;
    const pgid = await processGroupOf(pid);
    if (pgid === undefined) continue;
    found.push({ pid, pgid, cmdline, cwd });
  }
  return found;
}

/**
 * SIGKILL what runs under `markers`: the job scripts are process-group leaders (the launcher
 * starts them with job control), so their whole group goes; anything else (the launcher's
 * watcher subshell shares the test's group) is killed by its own pid only.
 */
async function killProcessesUnder(markers: readonly string[]): Promise<number> {
  const ownGroup = await processGroupOf(process.pid);
  const found = await processesUnder(markers);
  for (const p of found) {
    if (p.pgid === p.pid && p.pgid !== ownGroup) {
      try {
        process.kill(-p.pgid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  await sleep(100);
  for (const p of await processesUnder(markers)) {
    if (p.pid === process.pid) continue;
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  return found.length;
}

/** Markers for a directory: its path and its real path, each with a trailing "/". */
async function markersFor(dir: string): Promise<string[]> {
  const real = await fs.realpath(dir).catch(() => dir);
  return [...new Set([`${dir}/`, `${real}/`])];
}

/** A server whose job processes are all killed when the test ends (before its files are removed). */
async function serverWithCleanup(t: ExecutionContext, options: Parameters<typeof startTestServer>[0]): Promise<{ server: TestServer; markers: string[] }> {
  const server = await startTestServer(options);
  const markers = await markersFor(server.staging);
  t.teardown(async () => {
    const killed = await killProcessesUnder(markers);
    if (killed > 0) t.log(`teardown killed ${killed} leftover process(es) under ${server.staging}`);
    await server.stop();
  });
  return { server, markers };
}

function describeProcesses(found: readonly FoundProcess[]): string {
  return found
    .slice(0, 8)
    .map((p) => `pid ${p.pid} (group ${p.pgid}) "${p.cmdline.replace(/\s+/g, " ").slice(0, 100)}" cwd ${p.cwd}`)
    .join('; ');
}

// ------------------------------------------------------------------------------- 1. public mode

async function publicServer(t: ExecutionContext, numConcurrentJobs: number): Promise<{ server: TestServer; markers: string[] }> {
  return serverWithCleanup(t, {
    app: { toolConfigFiles: [TOOLBOX], allowUnsafeEnv: false },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid', numConcurrentJobs })],
  });
}

function catCommand(config: JobConfig): string {
  return `cat ${path.join(config.configs_directory, CONFIG_NAME)} > ${path.join(config.outputs_directory, 'out')}`;
}

async function setupRaceCat(server: TestServer): Promise<JobConfig> {
  const config = await setupOk(server.url, '1', { tool_id: 'race_cat' });
  const good = await upload(server.url, config.job_id, CONFIG_NAME, 'config', GOOD);
  if (good.status !== 200) throw new Error(`upload of the validated config answered ${brief(good)}`);
  return config;
}

/**
 * What a job that ended must show, given how its submit was answered. Returns the violations.
 *  - submit 200 OK: status complete, returncode 0, output "out" = the validated bytes;
 *  - submit 403 with {error, message}: status failed, and nothing ran (no output, no pid, no return_code).
 */
async function checkOutcome(server: TestServer, config: JobConfig, submitReply: Reply, label: string): Promise<string[]> {
  const id = config.job_id;
  const problems: string[] = [];
  const final = await waitTerminal(server.url, id, 15_000);
  if (!isTerminal(final)) return [`${label}: job ${id} did not end within 15 s: ${describeStatus(final)}`];
  if (submitReply.status === 200 && submitReply.text === 'OK') {
    const out = await output(server.url, id, 'out');
    if (final.doc?.status !== 'complete' || final.doc.returncode !== 0) {
      problems.push(`${label}: submit answered OK but the job ended ${describeStatus(final)}`);
    }
    if (out.text !== GOOD) {
      problems.push(`${label}: submit answered OK but the job ran with ${out.text === undefined ? `no output (download ${out.http})` : JSON.stringify(out.text)} instead of the validated ${JSON.stringify(GOOD)}`);
    }
  } else if (submitReply.status === 403 && isErrorBody(submitReply)) {
    if (final.doc?.status !== 'failed') problems.push(`${label}: submit was refused (403) but the job ended ${describeStatus(final)}`);
    const out = await output(server.url, id, 'out');
    if (out.text !== undefined) problems.push(`${label}: submit was refused (403) but the job wrote output ${JSON.stringify(out.text)}`);
    for (const name of ['pid', 'return_code']) {
      if (await exists(path.join(config.job_directory, name))) problems.push(`${label}: submit was refused (403) but ${name} exists: the job ran`);
    }
  } else {
    problems.push(`${label}: submit answered ${brief(submitReply)} (expected 200 OK, or 403 with a JSON {error, message})`);
  }
  return problems;
}

test.serial('fixture: race_cat runs only the validated config (bad config refused with 403, job failed)', async (t) => {
  t.timeout(30_000);
  const { server } = await publicServer(t, 2);
  const good = await setupRaceCat(server);
  const ok = await submit(server.url, good.job_id, catCommand(good));
  t.is(ok.text, 'OK', brief(ok));
  t.deepEqual(await checkOutcome(server, good, ok, 'good config'), []);

  const bad = await setupOk(server.url, '2', { tool_id: 'race_cat' });
  t.is((await upload(server.url, bad.job_id, CONFIG_NAME, 'config', BAD)).status, 200);
  const refused = await submit(server.url, bad.job_id, catCommand(bad));
  t.is(refused.status, 403, brief(refused));
  t.true(isErrorBody(refused), `a refused submit carries {error, message}: ${refused.text}`);
  t.deepEqual(await checkOutcome(server, bad, refused, 'bad config'), []);
});

const RACE_ITERATIONS = 120;
const RACE_MIN_ITERATIONS = 50;
const RACE_BUDGET_MS = 60_000;
/**
 * When each of the 10 bad uploads is sent, in ms after the iteration starts, before a random
 * shift of 0–6 ms; the submit goes at 0–4 ms. So some uploads land before the submit, some
 * while it runs and some after it, and in some iterations all of them come after it.
 */
const UPLOAD_OFFSETS_MS = [0, 0, 1, 2, 3, 4, 5, 7, 10, 15] as const;

test.serial('public mode: bad config uploads racing a submit never run unvalidated bytes; late uploads get 409', async (t) => {
  t.timeout(RACE_BUDGET_MS + 60_000);
  const { server } = await publicServer(t, 2);
  const violations: string[] = [];
  const failing: number[] = [];
  const stats = { iterations: 0, submitOk: 0, submit403: 0, upload200: 0, upload409: 0, uploadOther: 0, badLanded: 0 };
  const started = Date.now();
  for (let i = 0; i < RACE_ITERATIONS && Date.now() - started < RACE_BUDGET_MS; i++) {
    const label = `iteration ${i}`;
    const problems: string[] = [];
    const config = await setupRaceCat(server);
    const id = config.job_id;
    const submitAt = Math.floor(Math.random() * 5);
    const shift = Math.floor(Math.random() * 7);
    const submitting = sleep(submitAt).then(async () => submit(server.url, id, catCommand(config)));
    const uploads = UPLOAD_OFFSETS_MS.map(async (offset) => {
      if (offset + shift > 0) await sleep(offset + shift);
      return upload(server.url, id, CONFIG_NAME, 'config', BAD);
    });
    const [submitReply, ...uploadReplies] = await Promise.all([submitting, ...uploads]);
    // An upload sent after the submit was answered: the job is no longer staging.
    const late = await upload(server.url, id, CONFIG_NAME, 'config', BAD);
    stats.iterations++;
    if (submitReply.status === 200) stats.submitOk++;
    if (submitReply.status === 403) stats.submit403++;

    for (const [k, r] of uploadReplies.entries()) {
      if (r.status === 200) stats.upload200++;
      else if (r.status === 409) stats.upload409++;
      else stats.uploadOther++;
      if (r.status !== 200 && r.status !== 409) problems.push(`${label}: bad upload #${k} answered ${brief(r)} (expected 200 or 409)`);
      if (r.status === 409 && !isErrorBody(r)) problems.push(`${label}: 409 without a JSON {error, message} body: ${r.text}`);
    }
    if (late.status !== 409 || !isErrorBody(late)) problems.push(`${label}: an upload after the submit was answered got ${brief(late)} (expected 409 with {error, message})`);

    const landed = uploadReplies.filter((r) => r.status === 200).length;
    if (landed > 0) {
      stats.badLanded++;
      // A bad upload that was accepted landed before the submit authorized the config files, so
      // the authorizer saw it: the submit must have been refused.
      if (submitReply.status !== 403) problems.push(`${label}: ${landed} bad upload(s) answered 200 yet the submit answered ${brief(submitReply)} (expected 403)`);
    } else if (submitReply.status === 403) {
      // Every bad upload lost (409): the only config file the job has is the validated one.
      problems.push(`${label}: every bad upload answered 409, yet the submit was refused: ${brief(submitReply)} (expected 200 OK)`);
    }
    problems.push(...(await checkOutcome(server, config, submitReply, label)));
    if (problems.length > 0) failing.push(i);
    violations.push(...problems);
    await clean(server.url, id);
  }
  t.log(`${stats.iterations} iterations in ${Date.now() - started} ms, ${failing.length} with violations: ${JSON.stringify(stats)}`);
  if (violations.length > 0) t.log(`violations by kind: ${JSON.stringify(tally(violations))}`);
  t.true(stats.iterations >= RACE_MIN_ITERATIONS, `at least ${RACE_MIN_ITERATIONS} iterations ran (${stats.iterations})`);
  t.deepEqual(violations.slice(0, 15), [], `${violations.length} violation(s) in ${failing.length} of ${stats.iterations} iterations`);
  // The race was really run: uploads lost to the submit, and both outcomes of the submit occurred.
  t.true(stats.upload409 > 0, 'some bad uploads lost the race (409)');
  t.true(stats.submitOk > 0 && stats.submit403 > 0, `the submit both won (200) and lost (403) in some iterations: ${JSON.stringify(stats)}`);
});

const VIOLATION_KINDS: readonly (readonly [string, RegExp])[] = [
  ['the job ran unvalidated bytes', /ran with "NOT validated"/],
  ['the job ran without the validated config', /ran with (""|no output)/],
  ['a bad upload was accepted (200) yet the submit ran', /answered 200 yet the submit answered/],
  ['the submit was refused though every bad upload lost', /every bad upload answered 409/],
  ['the submit ran but the job did not end complete with returncode 0', /submit answered OK but the job ended/],
  ['an upload answered neither 200 nor 409', /expected 200 or 409/],
  ['a late upload was not refused with 409', /after the submit was answered/],
];

/** How many violations of each kind (one iteration may show several). */
function tally(violations: readonly string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const v of violations) {
    const kind = VIOLATION_KINDS.find(([, re]) => re.test(v))?.[0] ?? 'other';
    counts[kind] = (counts[kind] ?? 0) + 1;
  }
  return counts;
}

/** An upload whose body is sent in two parts: the request is under way while the test does something else. */
function streamedUpload(base: string, id: string, name: string, type: string, first: string, rest: string): { finish: () => void; reply: Promise<Reply> } {
  const url = new URL(base);
  const total = Buffer.byteLength(first) + Buffer.byteLength(rest);
  let req: http.ClientRequest | undefined;
  const reply = new Promise<Reply>((resolve, reject) => {
    req = http.request(
      {
        host: url.hostname,
        port: url.port,
        method: 'POST',
        path: `/jobs/${id}/files?${qs({ job_id: id, name, type })}`,
        headers: { 'content-length': String(total), 'content-type': 'application/octet-stream' },
        agent: false,
      },
      (res) => collectReply(res, resolve, reject),
    );
    req.on('error', reject);
    req.write(first);
  });
  return {
    finish: () => {
      if (req !== undefined && !req.destroyed) req.end(rest);
    },
    reply,
  };
}

test.serial('public mode: an upload whose body is still arriving when the submit runs cannot swap the validated config', async (t) => {
  t.timeout(60_000);
  const { server } = await publicServer(t, 1);
  // The only job slot is busy, so the raced job is still queued when the upload ends.
  const blocker = await setupOk(server.url, 'b', { tool_id: 'race_sleep' });
  await submitOk(server.url, blocker.job_id, 'sleep 2');
  const config = await setupRaceCat(server);
  const id = config.job_id;
  const slow = streamedUpload(server.url, id, CONFIG_NAME, 'config', 'NOT ', 'validated');
  await sleep(150); // the server has the upload request and is reading its body
  const submitting = submit(server.url, id, catCommand(config));
  // A server may answer the submit at once, or hold it until the upload is decided.
  const early = await Promise.race([submitting.then(() => true), sleep(300).then(() => false)]);
  slow.finish();
  const [uploadReply, submitReply] = await within('upload and submit', 15_000, Promise.all([slow.reply, submitting]));
  t.log(`submit answered ${early ? 'before' : 'after'} the upload ended: submit ${brief(submitReply)}, upload ${brief(uploadReply)}`);
  if (uploadReply.status === 200) {
    t.is(submitReply.status, 403, `the bad upload was accepted (200), so the submit must have seen it and refused: ${brief(submitReply)}`);
  } else {
    t.is(uploadReply.status, 409, `the upload lost to the submit: ${brief(uploadReply)}`);
    t.true(isErrorBody(uploadReply), `409 carries {error, message}: ${uploadReply.text}`);
    t.is(submitReply.text, 'OK', `the upload lost (409), so the only config file is the validated one and the submit must run it: ${brief(submitReply)}`);
  }
  t.deepEqual(await checkOutcome(server, config, submitReply, 'streamed upload'), []);
  await cancel(server.url, blocker.job_id);
  const blockerMarkers = await markersFor(blocker.job_directory);
  const deadline = Date.now() + 2000;
  while ((await processesUnder(blockerMarkers)).length > 0 && Date.now() < deadline) await sleep(20);
});

// ----------------------------------------------------------------- 2. cancel / clean vs starting

function recordsDirectory(server: TestServer): string {
  const persisted = server.config.app.persistenceDirectory;
  if (persisted === undefined) throw new Error('the test server has no persistence directory');
  return path.join(persisted, '_default_-jobs');
}

async function recordFiles(server: TestServer): Promise<string[]> {
  const names = await fs.readdir(recordsDirectory(server)).catch(() => []);
  return names.filter((n) => n.endsWith('.json'));
}

const JOBS = 1000;
const SHUFFLE_BLOCK = 64;

test.serial('1,000 queued jobs cancelled and cleaned from 8 clients leave no process, no record and no directory', async (t) => {
  t.timeout(150_000);
  const { server, markers } = await serverWithCleanup(t, { managers: (root) => [managerConfig(root, { numConcurrentJobs: 1 })] });
  const ids = Array.from({ length: JOBS }, (_, i) => `q${String(i).padStart(4, '0')}`);
  const t0 = Date.now();
  await mapLimit(ids, 16, async (id) => {
    await setupOk(server.url, id);
    await submitOk(server.url, id, 'sleep 600');
  });
  const tSubmitted = Date.now();

  const problems: string[] = [];
  // Shuffled in blocks of 64 that follow the queue: jobs are still cancelled deep in the queue, and
  // the running job's cancel keeps starting the next one while other clients cancel or clean it.
  // (A full shuffle starts only ~ln(1000) jobs in all, and almost never hits a starting job.)
  const order = Array.from({ length: Math.ceil(ids.length / SHUFFLE_BLOCK) }, (_, b) => shuffled(ids.slice(b * SHUFFLE_BLOCK, (b + 1) * SHUFFLE_BLOCK))).flat();
  const plan = order.map((id) => ({ id, cancelFirst: Math.random() < 0.5 }));
  await mapLimit(plan, 8, async ({ id, cancelFirst }) => {
    if (cancelFirst) {
      const c = await cancel(server.url, id);
      if (c.status !== 200 || c.text !== 'OK') problems.push(`cancel ${id}: ${brief(c)}`);
    }
    const d = await clean(server.url, id);
    if (d.status !== 200 || d.text !== 'OK') problems.push(`clean ${id}: ${brief(d)}`);
    const s = await getStatus(server.url, id);
    if (!isTerminal(s)) problems.push(`status of ${id} right after its clean: ${describeStatus(s)}`);
  });
  const tCleaned = Date.now();

  // Everything answered: within a few seconds nothing of any job may be left.
  const deadline = Date.now() + 10_000;
  let left: FoundProcess[] = [];
  let records: string[] = [];
  let staged: string[] = [];
  for (;;) {
    left = await processesUnder(markers);
    records = await recordFiles(server);
    staged = await fs.readdir(server.staging);
    if ((left.length === 0 && records.length === 0 && staged.length === 0) || Date.now() > deadline) break;
    await sleep(200);
  }
  const statuses = await mapLimit(ids, 16, async (id) => ({ id, s: await getStatus(server.url, id) }));
  const nonTerminal = statuses.filter(({ s }) => !isTerminal(s));
  const ran = server.logLines.filter((l) => l.includes('"state":"running"')).length;
  t.log(`setup+submit ${tSubmitted - t0} ms, cancel/clean ${tCleaned - tSubmitted} ms, settle+status ${Date.now() - tCleaned} ms; ${ran} job(s) logged as running`);

  if (left.length > 0) problems.push(`processes of cleaned jobs still run 10 s after the last clean: ${describeProcesses(left)}`);
  if (records.length > 0) problems.push(`${records.length} job record(s) left in ${recordsDirectory(server)}: ${records.slice(0, 10).join(', ')}`);
  if (staged.length > 0) problems.push(`${staged.length} job directory(ies) left in the staging directory: ${staged.slice(0, 10).join(', ')}`);
  for (const { id, s } of nonTerminal.slice(0, 10)) problems.push(`cleaned job ${id} reports a non-terminal state: ${describeStatus(s)}`);
  t.deepEqual(problems.slice(0, 15), [], `${problems.length} problem(s); ${nonTerminal.length} cleaned job(s) report a non-terminal state`);
});

const QUICK_ITERATIONS = 200;
const MAX_LEAKS = 5;
/** A killed `sleep` is gone in milliseconds; a job process still there this long after was never killed. */
const KILL_GRACE_MS = 1500;

/** The job id of a process under the staging directory (the first path component after a marker). */
function jobOf(p: FoundProcess, markers: readonly string[]): string {
  for (const m of markers) {
    for (const text of [p.cmdline, `${p.cwd}/`]) {
      const at = text.indexOf(m);
      if (at >= 0) return text.slice(at + m.length).split('/')[0] ?? '?';
    }
  }
  return '?';
}

/**
 * Processes of jobs that should all be stopped: poll until none is left or `KILL_GRACE_MS`
 * passed, then kill the survivors (so the only job slot frees and later iterations test the race
 * again) and return them by job id.
 */
async function survivingJobs(markers: readonly string[]): Promise<Map<string, FoundProcess[]>> {
  const deadline = Date.now() + KILL_GRACE_MS;
  let left = await processesUnder(markers);
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(20);
    left = await processesUnder(markers);
  }
  const byJob = new Map<string, FoundProcess[]>();
  for (const p of left) byJob.set(jobOf(p, markers), [...(byJob.get(jobOf(p, markers)) ?? []), p]);
  if (left.length > 0) {
    await killProcessesUnder(markers);
    await sleep(100);
  }
  return byJob;
}

test.serial('cancel right after submit (200 times, one job slot): the job is cancelled, stays cancelled, and no process of it survives', async (t) => {
  t.timeout(120_000);
  const { server, markers } = await serverWithCleanup(t, { managers: (root) => [managerConfig(root, { numConcurrentJobs: 1 })] });
  const problems: string[] = [];
  const cancelled: string[] = [];
  const leaked = new Set<string>();
  let i = 0;
  const started = Date.now();
  for (; i < QUICK_ITERATIONS && leaked.size < MAX_LEAKS && Date.now() - started < 90_000; i++) {
    const id = `c${i}`;
    await setupOk(server.url, id);
    await submitOk(server.url, id, 'sleep 600');
    const c = await cancel(server.url, id);
    if (c.status !== 200 || c.text !== 'OK') problems.push(`cancel ${id}: ${brief(c)}`);
    cancelled.push(id);
    const s = await getStatus(server.url, id);
    if (s.doc?.status !== 'cancelled' || s.doc.complete !== 'true') problems.push(`${id} right after its cancel: ${describeStatus(s)}`);
    await sleep(30); // a start that was under way shows up by now (or at a later iteration's check)
    // Every job so far is cancelled: no process of any of them may be left.
    for (const [job, found] of await survivingJobs(markers)) {
      leaked.add(job);
      problems.push(`${job}: cancelled, but its process still ran ${KILL_GRACE_MS} ms later (seen at iteration ${i}): ${describeProcesses(found)}`);
    }
    const after = await getStatus(server.url, id);
    if (after.doc?.status !== 'cancelled') problems.push(`${id} a moment later: ${describeStatus(after)}`);
  }
  await sleep(300);
  for (const [job, found] of await survivingJobs(markers)) {
    leaked.add(job);
    problems.push(`${job}: cancelled, but its process still ran at the end: ${describeProcesses(found)}`);
  }
  // Cancelled stays cancelled.
  const later = await mapLimit(cancelled, 16, async (id) => ({ id, s: await getStatus(server.url, id) }));
  for (const { id, s } of later) if (s.doc?.status !== 'cancelled') problems.push(`${id} at the end: ${describeStatus(s)}`);
  t.log(`${i} iterations in ${Date.now() - started} ms; jobs whose process survived the cancel: ${[...leaked].join(', ') || 'none'}`);
  t.deepEqual(problems.slice(0, 12), [], `${problems.length} problem(s) in ${i} iterations (${leaked.size} job(s) left running)`);
  t.true(i === QUICK_ITERATIONS || leaked.size >= MAX_LEAKS, `all ${QUICK_ITERATIONS} iterations ran (${i})`);
});

test.serial('clean right after submit (200 times, one job slot): the record never comes back and no process of the job survives', async (t) => {
  t.timeout(120_000);
  const { server, markers } = await serverWithCleanup(t, { managers: (root) => [managerConfig(root, { numConcurrentJobs: 1 })] });
  const problems: string[] = [];
  const cleaned: string[] = [];
  const leaked = new Set<string>();
  const returned = new Set<string>();
  let i = 0;
  const started = Date.now();
  const checkRecords = async (when: string): Promise<void> => {
    for (const name of await recordFiles(server)) {
      const job = name.slice(0, -'.json'.length);
      if (returned.has(job)) continue;
      returned.add(job);
      problems.push(`${job}: cleaned, but its record ${name} is back in the persistence directory (${when})`);
    }
  };
  for (; i < QUICK_ITERATIONS && leaked.size + returned.size < MAX_LEAKS && Date.now() - started < 90_000; i++) {
    const id = `k${i}`;
    await setupOk(server.url, id);
    await submitOk(server.url, id, 'sleep 600');
    const d = await clean(server.url, id);
    if (d.status !== 200 || d.text !== 'OK') problems.push(`clean ${id}: ${brief(d)}`);
    cleaned.push(id);
    const s = await getStatus(server.url, id);
    if (!isTerminal(s)) problems.push(`${id} right after its clean: ${describeStatus(s)}`);
    await sleep(30); // a start that was under way shows up by now (or at a later iteration's check)
    for (const [job, found] of await survivingJobs(markers)) {
      leaked.add(job);
      problems.push(`${job}: cleaned, but its process still ran ${KILL_GRACE_MS} ms later (seen at iteration ${i}): ${describeProcesses(found)}`);
    }
    // Every job so far is cleaned: no record may exist.
    await checkRecords(`seen at iteration ${i}`);
    const again = await getStatus(server.url, id);
    if (!isTerminal(again)) problems.push(`${id} a moment later: ${describeStatus(again)}`);
  }
  await sleep(300);
  for (const [job, found] of await survivingJobs(markers)) {
    leaked.add(job);
    problems.push(`${job}: cleaned, but its process still ran at the end: ${describeProcesses(found)}`);
  }
  await checkRecords('at the end');
  const staged = await fs.readdir(server.staging);
  const later = await mapLimit(cleaned, 16, async (id) => ({ id, s: await getStatus(server.url, id) }));
  for (const { id, s } of later) if (!isTerminal(s)) problems.push(`${id} at the end: ${describeStatus(s)}`);
  t.log(`${i} iterations in ${Date.now() - started} ms; process survived the clean: ${[...leaked].join(', ') || 'none'}; record came back: ${[...returned].join(', ') || 'none'}`);
  t.deepEqual(problems.slice(0, 12), [], `${problems.length} problem(s) in ${i} iterations`);
  t.deepEqual(staged, [], 'the staging directory is empty');
  t.true(i === QUICK_ITERATIONS || leaked.size + returned.size >= MAX_LEAKS, `all ${QUICK_ITERATIONS} iterations ran (${i})`);
});

// ----------------------------------------------------------- 3. job-record writes failing mid-run

/**
 * Make every write of a job record fail with ENOTDIR (root ignores permissions, so chmod would not):
 * the record directory is renamed away and a regular file takes its place. Returns the undo.
 */
async function breakRecords(server: TestServer): Promise<() => Promise<void>> {
  const dir = recordsDirectory(server);
  const away = `${dir}.away`;
  await fs.rename(dir, away);
  await fs.writeFile(dir, 'not a directory: job record writes fail with ENOTDIR\n');
  let restored = false;
  return async () => {
    if (restored) return;
    restored = true;
    await fs.rm(dir, { force: true });
    await fs.rename(away, dir);
  };
}

/** Every refusal for a broken store is either a success or a server error with a JSON {error, message}. */
function acceptableWhileBroken(reply: Reply): boolean {
  return reply.status === 200 || (reply.status >= 500 && reply.status < 600 && isErrorBody(reply));
}

/** The reason a job failed for its record, in the stderr of its status (wording is the server's). */
const RECORD_REASON = /record|persist|ENOTDIR|not a directory/i;

async function healthy(server: TestServer): Promise<number> {
  return (await within('GET /healthz', 5000, request(server.url, 'GET', '/healthz'))).status;
}

/** What a job hit by a failed record write must show: failed, with the reason in stderr. */
function recordFailureProblems(id: string, s: Status): string[] {
  if (s.http !== 200) return [`status of ${id} answered ${describeStatus(s)} (expected 200)`];
  if (!isTerminal(s)) return [`${id} is still ${describeStatus(s)}: it must reach a terminal state`];
  const problems: string[] = [];
  if (s.doc?.status !== 'failed') problems.push(`${id} ended ${describeStatus(s)} (expected failed: its record could not be written)`);
  else if (!RECORD_REASON.test(s.doc.stderr ?? '')) problems.push(`${id} failed, but its stderr does not name the record write failure: ${JSON.stringify(s.doc.stderr ?? '')}`);
  return problems;
}

test.serial('job-record directory replaced by a file mid-run: affected jobs end failed (no hang), the server keeps answering, and runs new jobs once it is back', async (t) => {
  t.timeout(90_000);
  const { server } = await serverWithCleanup(t, { managers: (root) => [managerConfig(root, { numConcurrentJobs: 1 })] });
  const inFlight = ['p1', 'p2', 'p3', 'p4'];
  for (const id of inFlight) {
    await setupOk(server.url, id);
    await submitOk(server.url, id, 'sleep 1');
  }
  await setupOk(server.url, 'p5'); // set up now, submitted while the records cannot be written
  const deadline = Date.now() + 10_000;
  while ((await getStatus(server.url, 'p1')).doc?.status !== 'running' && Date.now() < deadline) await sleep(25);
  t.is((await getStatus(server.url, 'p1')).doc?.status, 'running', 'p1 runs');
  t.is((await getStatus(server.url, 'p2')).doc?.status, 'queued', 'p2 waits for the only slot');

  const restore = await breakRecords(server);
  t.teardown(async () => restore().catch(() => undefined));
  const problems: string[] = [];

  const health = await healthy(server);
  if (health !== 200) problems.push(`healthz answered ${health} while records cannot be written`);
  const newSetup = await within('setup while broken', 10_000, setup(server.url, 'p6'));
  if (!acceptableWhileBroken(newSetup)) problems.push(`setup while broken answered ${brief(newSetup)} (expected 200 or a 5xx JSON {error, message})`);
  const lateSubmit = await within('submit while broken', 10_000, submit(server.url, 'p5', 'sleep 1'));
  if (!acceptableWhileBroken(lateSubmit)) problems.push(`submit while broken answered ${brief(lateSubmit)} (expected 200 or a 5xx JSON {error, message})`);

  // p1 ends about 1 s in; each job's end or start then needs a record write that fails.
  const affected = [...inFlight, 'p5'];
  const finals = await Promise.all(affected.map(async (id) => ({ id, s: await waitTerminal(server.url, id, 15_000) })));
  for (const { id, s } of finals) problems.push(...recordFailureProblems(id, s));
  const healthLater = await healthy(server);
  if (healthLater !== 200) problems.push(`healthz answered ${healthLater} after the jobs ended`);

  await restore();
  problems.push(...(await recordsWrittenLater(server, affected)));
  await setupOk(server.url, 'p7');
  await submitOk(server.url, 'p7', 'echo after');
  const after = await waitTerminal(server.url, 'p7', 15_000);
  if (after.doc?.status !== 'complete' || after.doc.returncode !== 0) {
    problems.push(`p7, set up once the records are back, ended ${describeStatus(after)} (expected complete with returncode 0 within 15 s)`);
  }
  t.deepEqual(problems, [], `${problems.length} problem(s)`);
  t.is(await healthy(server), 200, 'the server did not crash');
});

/**
 * Once records can be written again, the failures that could not be recorded reach the disk (a
 * restart must not find those jobs as they were before they failed). Polls up to 10 s.
 */
async function recordsWrittenLater(server: TestServer, ids: readonly string[]): Promise<string[]> {
  const dir = path.join(server.config.app.persistenceDirectory ?? '', '_default_-jobs');
  const stateOnDisk = async (id: string): Promise<string> =>
    fs.readFile(path.join(dir, `${id}.json`), 'utf8').then((text) => String((JSON.parse(text) as { state?: unknown }).state), () => 'no record');
  const deadline = Date.now() + 10_000;
  let states: string[] = [];
  while (Date.now() < deadline) {
    states = await Promise.all(ids.map(stateOnDisk));
    if (states.every((state) => state === 'failed')) return [];
    await sleep(100);
  }
  return ids.map((id, i) => `${id}: its record on disk says ${states[i]} 10 s after records could be written again (expected failed)`).filter((_, i) => states[i] !== 'failed');
}

test.serial('submit while job records cannot be written: the job ends failed instead of staying queued, and the queue still runs', async (t) => {
  t.timeout(60_000);
  const { server } = await serverWithCleanup(t, { managers: (root) => [managerConfig(root, { numConcurrentJobs: 1 })] });
  await setupOk(server.url, 's1');
  const restore = await breakRecords(server);
  t.teardown(async () => restore().catch(() => undefined));
  const problems: string[] = [];
  const reply = await within('submit while broken', 10_000, submit(server.url, 's1', 'true'));
  if (!acceptableWhileBroken(reply)) problems.push(`submit while broken answered ${brief(reply)} (expected 200 or a 5xx JSON {error, message})`);
  problems.push(...recordFailureProblems('s1', await waitTerminal(server.url, 's1', 10_000)));
  await restore();
  problems.push(...(await recordsWrittenLater(server, ['s1'])));
  await setupOk(server.url, 's2');
  await submitOk(server.url, 's2', 'true');
  const s2 = await waitTerminal(server.url, 's2', 10_000);
  if (s2.doc?.status !== 'complete' || s2.doc.returncode !== 0) problems.push(`s2, submitted once the records are back, ended ${describeStatus(s2)} (expected complete with returncode 0)`);
  t.deepEqual(problems, [], `${problems.length} problem(s)`);
  t.is(await healthy(server), 200, 'the server did not crash');
});
