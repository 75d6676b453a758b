import test from 'ava';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { request, qs, setupJob, waitForJob, type Reply } from '../helpers/client.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/public/', import.meta.url));
const MiB = 1024 * 1024;

// Heap growth is measured after a full collection: what is retained, not garbage not yet collected.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
function retainedHeap(): number {
  gc();
  return process.memoryUsage().heapUsed;
}

async function submit(server: TestServer, id: string, params: Record<string, string>): Promise<Reply> {
  return request(server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, ...params })}`);
}

function assertLimit(t: import('ava').ExecutionContext, reply: Reply, option: RegExp): void {
  t.is(reply.status, 413, reply.text);
  t.is(reply.json().error, 'MAG_ERR_LIMIT');
  t.regex(reply.json().message, option);
}

async function recordOf(server: TestServer, id: string): Promise<any> {
  return JSON.parse(await fs.readFile(path.join(server.root, 'persisted', '_default_-jobs', `${id}.json`), 'utf8'));
}

async function countFiles(dir: string): Promise<number> {
  let n = 0;
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) if (entry.isFile()) n++;
  return n;
}

test('each submit parameter is bounded by max_submit_param_size; command_line and dependencies_description by their own', async (t) => {
  const server = await startTestServer({ app: { maxSubmitParamSize: 64 * 1024, maxDependenciesDescriptionSize: 8 * 1024, maxCommandLineSize: 32 * 1024 } });
  t.teardown(() => server.stop());
  await setupJob(server.url, '1');
  const big = 'x'.repeat(64 * 1024 + 1);
  const bigJson = JSON.stringify(['x'.repeat(64 * 1024)]);
  const cases: [string, string][] = [
    ['env', JSON.stringify([{ name: 'A', value: big }])],
    ['params', JSON.stringify({ a: big })],
    ['submit_extras', JSON.stringify({ touch_outputs: [big] })],
    ['dynamic_file_sources', JSON.stringify([{ path: big }])],
    ['setup_params', JSON.stringify({ job_id: '1', tool_id: big })],
  ];
  for (const [name, value] of cases) {
    const reply = await submit(server, '1', { command_line: 'true', [name]: value });
    assertLimit(t, reply, new RegExp(`"${name}" is larger than max_submit_param_size \\(65536 bytes\\)`));
  }
  assertLimit(t, await submit(server, '1', { command_line: 'true', params: bigJson }), /max_submit_param_size/);
  // remote_staging lists every input and output of a job: it has the command line's (larger) bound.
  const staging = JSON.stringify({ x: 'x'.repeat(40 * 1024) });
  assertLimit(t, await submit(server, '1', { command_line: 'true', remote_staging: staging }), /"remote_staging" is larger than max_command_line_size \(32768 bytes\)/);
  const deps = JSON.stringify(Array.from({ length: 3000 }, () => ({})));
  assertLimit(t, await submit(server, '1', { command_line: 'true', dependencies_description: deps }), /"dependencies_description" is larger than max_dependencies_description_size \(8192 bytes\)/);
  assertLimit(t, await submit(server, '1', { command_line: `echo ${'x'.repeat(32 * 1024)}` }), /"command_line" is larger than max_command_line_size \(32768 bytes\)/);
  // UTF-8 bytes are counted, not characters.
  assertLimit(t, await submit(server, '1', { command_line: `echo ${'é'.repeat(20 * 1024)}` }), /max_command_line_size/);
  // Nothing was recorded: the job is still set up and runs when asked properly.
  t.is((await submit(server, '1', { command_line: 'true' })).text, 'OK');
  t.is((await waitForJob(server.url, '1')).status, 'complete');
});

test('JSON parameters nest no deeper than max_submit_json_depth (checked before parsing)', async (t) => {
  const server = await startTestServer({ app: { maxSubmitJsonDepth: 8 } });
  t.teardown(() => server.stop());
  await setupJob(server.url, '2');
  const deep = `${'['.repeat(9)}${']'.repeat(9)}`;
  assertLimit(t, await submit(server, '2', { command_line: 'true', params: JSON.stringify({ a: JSON.parse(deep) }) }), /"params" nests deeper than max_submit_json_depth \(8\)/);
  assertLimit(t, await submit(server, '2', { command_line: 'true', dependencies_description: deep }), /"dependencies_description" nests deeper/);
  // Brackets inside strings are text, not nesting.
  const ok = await submit(server, '2', { command_line: 'true', params: JSON.stringify({ a: `${'['.repeat(50)}"\\` }) });
  t.is(ok.text, 'OK');
});

// Memory is measured in this process: the tests that measure it run alone.
test.serial('a flood of oversized submits is refused without the heap growing', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  // The payload of the finding: [{},{},…] in dependencies_description, here 4 MiB (12 MiB URL-encoded; cap 256 KiB).
  const deps = `[${'{},'.repeat((4 * MiB) / 3)}{}]`;
  const before = retainedHeap();
  for (let i = 0; i < 12; i++) {
    const id = `flood${i}`;
    await setupJob(server.url, id);
    assertLimit(t, await submit(server, id, { command_line: 'true', dependencies_description: deps }), /max_dependencies_description_size/);
  }
  const grown = retainedHeap() - before;
  t.true(grown < 32 * MiB, `heap grew ${Math.round(grown / MiB)} MiB`);
  for (let i = 0; i < 12; i++) t.is((await recordOf(server, `flood${i}`)).state, 'setup');
});

test('dynamic_file_sources are deduplicated by path and capped by max_dynamic_file_sources', async (t) => {
  const server = await startTestServer({ app: { maxDynamicFileSources: 5 } });
  t.teardown(() => server.stop());
  const config = await setupJob(server.url, '3');
  const six = JSON.stringify(Array.from({ length: 6 }, (_, i) => ({ type: 'galaxy', path: `s${i}.json` })));
  assertLimit(t, await submit(server, '3', { command_line: 'true', dynamic_file_sources: six }), /6 paths, more than max_dynamic_file_sources \(5\)/);
  // 600 entries naming one path: one source, realized once.
  const repeated = JSON.stringify(Array.from({ length: 600 }, () => ({ type: 'galaxy', path: 'galaxy.json' })));
  const reply = await submit(server, '3', { command_line: `echo '{"a":1}' > ${path.join(config.working_directory, 'galaxy.json')}`, dynamic_file_sources: repeated });
  t.is(reply.text, 'OK');
  const doc = await waitForJob(server.url, '3');
  t.is(doc.status, 'complete', doc.stderr);
  t.deepEqual(doc.realized_dynamic_file_sources, [{ type: 'galaxy', path: 'galaxy.json', contents: '{"a":1}\n' }]);
});

test('uploads are capped by max_job_files (each name component counts): over the cap nothing is created', async (t) => {
  const server = await startTestServer({ app: { maxJobFiles: 5 } });
  t.teardown(() => server.stop());
  const config = await setupJob(server.url, 'files');
  const upload = async (name: string): Promise<Reply> =>
    request(server.url, 'POST', `/jobs/files/files?${qs({ job_id: 'files', name, type: 'input' })}`, { body: 'x' });
  t.is((await upload('a/b/c.txt')).status, 200);
  t.is((await upload('d/e.txt')).status, 200);
  assertLimit(t, await upload('f.txt'), /more than max_job_files \(5\)/);
  assertLimit(t, await upload('g/h/i/j/k/l.txt'), /max_job_files/);
  const entries = await fs.readdir(config.inputs_directory, { recursive: true });
  t.deepEqual(entries.sort(), ['a', 'a/b', 'a/b/c.txt', 'd', 'd/e.txt']);
});

test('uploads streaming into one job at once are capped by max_concurrent_uploads_per_job', async (t) => {
  const server = await startTestServer({ app: { maxConcurrentUploadsPerJob: 2 } });
  t.teardown(() => server.stop());
  await setupJob(server.url, 'slow');
  const url = new URL(server.url);
  // Two uploads that announce a body and send only part of it: they hold their places.
  const held = await Promise.all([0, 1].map(async (i) => {
    const socket = await new Promise<import('node:net').Socket>((resolve, reject) => {
      const s = net.connect(Number(url.port), url.hostname, () => resolve(s));
      s.on('error', reject);
    });
    socket.write(`POST /jobs/slow/files?${qs({ job_id: 'slow', name: `s${i}`, type: 'input' })} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc`);
    return socket;
  }));
  t.teardown(() => held.forEach((s) => s.destroy()));
  let third: Reply | undefined;
  for (let i = 0; i < 100 && third?.status !== 413; i++) {
    third = await request(server.url, 'POST', `/jobs/slow/files?${qs({ job_id: 'slow', name: 'third', type: 'input' })}`, { body: 'x' });
    if (third.status !== 413) await new Promise((r) => setTimeout(r, 20));
  }
  assertLimit(t, third!, /max_concurrent_uploads_per_job/);
  held.forEach((s) => s.destroy());
  let after: Reply | undefined;
  for (let i = 0; i < 100 && after?.status !== 200; i++) {
    after = await request(server.url, 'POST', `/jobs/slow/files?${qs({ job_id: 'slow', name: 'fourth', type: 'input' })}`, { body: 'x' });
    if (after.status !== 200) await new Promise((r) => setTimeout(r, 20));
  }
  t.is(after?.status, 200, 'once the stalled uploads went, uploads are accepted again');
});

test('touch_outputs are capped by max_touch_outputs: over the cap nothing is created', async (t) => {
  const server = await startTestServer({ app: { maxTouchOutputs: 50 } });
  t.teardown(() => server.stop());
  const config = await setupJob(server.url, '4');
  const names = (n: number): string => JSON.stringify({ touch_outputs: Array.from({ length: n }, (_, i) => `o${i}`) });
  assertLimit(t, await submit(server, '4', { command_line: 'true', submit_extras: names(51) }), /51 files, more than max_touch_outputs \(50\)/);
  t.is(await countFiles(config.outputs_directory), 0);
  t.is((await recordOf(server, '4')).state, 'setup');
  t.is((await submit(server, '4', { command_line: 'true', submit_extras: names(50) })).text, 'OK');
  t.is((await waitForJob(server.url, '4')).status, 'complete');
  t.is(await countFiles(config.outputs_directory), 50);
});

test('a refused job keeps no launch payload, in memory or on disk', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  await setupJob(server.url, '5');
  // An unsupported server-side staging action is refused (JobRefused) after the launch was recorded.
  const reply = await submit(server, '5', {
    command_line: 'true',
    env: JSON.stringify([{ name: 'SECRETISH', value: 'v'.repeat(1000) }]),
    remote_staging: JSON.stringify({ setup: [{ name: 'a', type: 'input', action: { action_type: 'remote_scp_transfer', path: '/x' } }] }),
  });
  t.is(reply.status, 403, reply.text);
  const doc = await waitForJob(server.url, '5');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /server-side staging/);
  const record = await recordOf(server, '5');
  t.is(record.state, 'failed');
  t.false('launch' in record, 'the record file keeps no launch');
  t.false(JSON.stringify(record).includes('SECRETISH'));
});

test('public mode does not keep dependencies_description (it ignores it)', async (t) => {
  const server = await startTestServer({
    app: { toolConfigFiles: [path.join(FIXTURES, 'toolbox.xml')], allowUnsafeEnv: false },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid' })],
  });
  t.teardown(() => server.stop());
  const setup = await request(server.url, 'POST', `/jobs?${qs({ job_id: '6', tool_id: 'mag_cat' })}`);
  const config = setup.json();
  const id: string = config.job_id;
  const a = (await request(server.url, 'POST', `/jobs/${id}/files?${qs({ job_id: id, name: 'a.dat', type: 'input' })}`, { body: 'x' })).json().path;
  const deps = JSON.stringify({ requirements: [{ name: 'MARKER_PACKAGE', version: '1', type: 'package' }] });
  const reply = await submit(server, id, { command_line: `cat ${a} > ${path.join(config.outputs_directory, 'o')}`, dependencies_description: deps });
  t.is(reply.text, 'OK');
  t.is((await waitForJob(server.url, id)).status, 'complete');
  const record = await recordOf(server, id);
  t.is(record.launch.request.dependenciesDescription, null);
  t.false(JSON.stringify(record).includes('MARKER_PACKAGE'));
});

test.serial('a status document realizes at most max_status_size of streams and dynamic file sources, cut where marked', async (t) => {
  const server = await startTestServer({ app: { maxDynamicFileSources: 0, maxStatusSize: 2 * MiB } });
  t.teardown(() => server.stop());
  const config = await setupJob(server.url, '7');
  const work: string = config.working_directory;
  // 40 sources of 1 MiB each (maximum_stream_size is 1 MiB): 40 MiB unbounded.
  const command = `head -c 300000 /dev/zero | tr '\\0' o; for i in $(seq 1 40); do head -c 1048576 /dev/zero | tr '\\0' a > ${work}/s$i.json; done`;
  const sources = JSON.stringify(Array.from({ length: 40 }, (_, i) => ({ type: 'galaxy', path: `s${i + 1}.json` })));
  t.is((await submit(server, '7', { command_line: command, dynamic_file_sources: sources })).text, 'OK');
  const before = retainedHeap();
  const doc = await waitForJob(server.url, '7');
  t.is(doc.status, 'complete', doc.stderr);
  const raw = (await request(server.url, 'GET', '/jobs/7/status?job_id=7')).body.length;
  t.true(raw < 2 * MiB + 64 * 1024, `document of ${raw} bytes`);
  t.is(doc.job_stdout.length, 300000, 'the streams come first, whole');
  t.regex(doc.status_truncated, /max_status_size \(2097152 bytes\).*dynamic file source\(s\) left out/);
  const realized: any[] = doc.realized_dynamic_file_sources;
  t.true(realized.length >= 1 && realized.length <= 2);
  const last = realized[realized.length - 1];
  t.true(last.truncated);
  // The document (~2 MiB, cached as UTF-16) and little else stays.
  const grown = retainedHeap() - before;
  t.true(grown < 32 * MiB, `heap grew ${Math.round(grown / MiB)} MiB`);
});

test('a stream cut by max_status_size ends with a marker naming it', async (t) => {
  const server = await startTestServer({ app: { maxStatusSize: 1000 } });
  t.teardown(() => server.stop());
  await setupJob(server.url, '9');
  t.is((await submit(server, '9', { command_line: "head -c 5000 /dev/zero | tr '\\0' o; head -c 5000 /dev/zero | tr '\\0' e >&2" })).text, 'OK');
  const doc = await waitForJob(server.url, '9');
  t.is(doc.status, 'complete', doc.stderr);
  t.true(doc.job_stdout.startsWith('o'.repeat(1000)));
  t.regex(doc.job_stdout, /\n\[magnetar: truncated here: the status document reached max_status_size \(1000 bytes\)\]$/);
  t.true(doc.job_stdout.length < 1100);
  t.regex(doc.job_stderr, /^\n\[magnetar: truncated here/, 'nothing is left for stderr: only the marker');
  t.regex(doc.status_truncated, /max_status_size \(1000 bytes\)/);
});

test('finished status documents are cached within status_cache_size bytes', async (t) => {
  const limit = 16 * 1024;
  const server = await startTestServer({ app: { statusCacheSize: limit } });
  t.teardown(() => server.stop());
  const service = server.services.get('_default_')!;
  for (let i = 0; i < 12; i++) {
    await setupJob(server.url, `c${i}`);
    t.is((await submit(server, `c${i}`, { command_line: `echo job ${i}` })).text, 'OK');
  }
  for (let i = 0; i < 12; i++) t.is((await waitForJob(server.url, `c${i}`)).job_stdout, `job ${i}\n`);
  t.true(service.statusCacheBytes > 0);
  t.true(service.statusCacheBytes <= limit, `${service.statusCacheBytes} bytes cached`);
  // Evicted documents are read again, unchanged.
  for (let i = 0; i < 12; i++) t.is((await request(server.url, 'GET', `/jobs/c${i}/status?job_id=c${i}`)).json().job_stdout, `job ${i}\n`);
  t.true(service.statusCacheBytes <= limit);
});

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

test('live jobs per manager are capped by max_live_jobs: a flood of setups creates nothing past it', async (t) => {
  const server = await startTestServer({ app: { maxLiveJobs: 3 } });
  t.teardown(() => server.stop());
  for (const id of ['l1', 'l2', 'l3']) await setupJob(server.url, id);
  const replies = await Promise.all(Array.from({ length: 200 }, async (_, i) => request(server.url, 'POST', `/jobs?${qs({ job_id: `f${i}` })}`)));
  for (const reply of replies) {
    t.is(reply.status, 503, reply.text);
    t.is(reply.json().error, 'MAG_ERR_TOO_MANY_JOBS');
    t.regex(reply.json().message, /max_live_jobs \(3\)/);
  }
  t.deepEqual((await fs.readdir(server.staging)).sort(), ['l1', 'l2', 'l3']);
  // Setting up a set-up job again adds no job; a submit with setup_params for a new id is refused too.
  await setupJob(server.url, 'l1');
  const viaSubmit = await submit(server, 'n1', { command_line: 'true', setup_params: JSON.stringify({ job_id: 'n1' }) });
  t.is(viaSubmit.status, 503, viaSubmit.text);
  // A finished job is not live: its slot is free again.
  t.is((await submit(server, 'l1', { command_line: 'true' })).text, 'OK');
  t.is((await waitForJob(server.url, 'l1')).status, 'complete');
  await setupJob(server.url, 'l4');
  t.is((await request(server.url, 'POST', `/jobs?${qs({ job_id: 'l5' })}`)).status, 503);
});

test('max_live_jobs holds when the setups arrive all at once', async (t) => {
  const server = await startTestServer({ app: { maxLiveJobs: 3 } });
  t.teardown(() => server.stop());
  const replies = await Promise.all(Array.from({ length: 60 }, async (_, i) => request(server.url, 'POST', `/jobs?${qs({ job_id: `g${i}` })}`)));
  t.is(replies.filter((r) => r.status === 200).length, 3);
  t.is(replies.filter((r) => r.status === 503).length, 57);
  t.is((await fs.readdir(server.staging)).length, 3);
});

/** A setup sent from `localAddress` (another loopback address stands for another machine). */
function setupFrom(base: string, localAddress: string, id: string): Promise<{ status: number; body: string }> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, method: 'POST', path: `/jobs?${qs({ job_id: id })}`, localAddress, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

test('max_live_jobs_per_address: one client cannot take every place, others still can; the count survives a restart', async (t) => {
  const app = { maxLiveJobs: 100, maxLiveJobsPerAddress: 3 };
  const first = await startTestServer({ app });
  let server = first;
  t.teardown(() => server.stop());
  const mine = await Promise.all(Array.from({ length: 20 }, async (_, i) => setupFrom(server.url, '127.0.0.1', `a${i}`)));
  t.is(mine.filter((r) => r.status === 200).length, 3);
  for (const refused of mine.filter((r) => r.status !== 200)) {
    t.is(refused.status, 503, refused.body);
    t.regex(refused.body, /MAG_ERR_TOO_MANY_JOBS/);
    t.regex(refused.body, /max_live_jobs_per_address \(3\)/);
  }
  t.is((await setupFrom(server.url, '127.0.0.2', 'b0')).status, 200, 'another address still sets up');
  t.is((await fs.readdir(server.staging)).length, 4);
  // A finished job frees its place; after a restart the unfinished ones still count.
  const setUp = mine.map((r, i) => (r.status === 200 ? `a${i}` : undefined)).filter((id): id is string => id !== undefined);
  t.is((await submit(server, setUp[0]!, { command_line: 'true' })).text, 'OK');
  t.is((await waitForJob(server.url, setUp[0]!)).status, 'complete');
  t.is((await setupFrom(server.url, '127.0.0.1', 'a100')).status, 200);
  await first.close();
  server = await startTestServer({ app, root: first.root });
  t.is((await setupFrom(server.url, '127.0.0.1', 'a101')).status, 503, 'after the restart, 127.0.0.1 still holds 3');
  t.is((await setupFrom(server.url, '127.0.0.2', 'b1')).status, 200);
});

test('expiry: set-up jobs never submitted and finished jobs never cleaned are cleaned by the sweep; live jobs are not', async (t) => {
  const server = await startTestServer({ app: { setupExpiry: 0.4, finishedExpiry: 0.4 } });
  t.teardown(() => server.stop());
  const records = path.join(server.root, 'persisted', '_default_-jobs');
  await setupJob(server.url, 'idle');
  await setupJob(server.url, 'done');
  t.is((await submit(server, 'done', { command_line: 'true' })).text, 'OK');
  t.is((await waitForJob(server.url, 'done')).status, 'complete');
  await setupJob(server.url, 'slow');
  t.is((await submit(server, 'slow', { command_line: 'sleep 2' })).text, 'OK');
  const deadline = Date.now() + 10_000;
  while ((await exists(path.join(server.staging, 'idle'))) || (await exists(path.join(server.staging, 'done')))) {
    if (Date.now() > deadline) throw new Error('expired jobs were not cleaned');
    await new Promise((r) => setTimeout(r, 50));
  }
  t.false(await exists(path.join(records, 'idle.json')));
  t.false(await exists(path.join(records, 'done.json')));
  // The running job outlived both expiries and is untouched; once finished, it expires in turn.
  t.true(await exists(path.join(records, 'slow.json')));
  t.is((await waitForJob(server.url, 'slow')).status, 'complete');
  // The record goes first, then the directory (the clean path's order).
  while (await exists(path.join(server.staging, 'slow'))) {
    if (Date.now() > deadline + 5000) throw new Error('the finished job was not cleaned');
    await new Promise((r) => setTimeout(r, 50));
  }
  t.false(await exists(path.join(records, 'slow.json')));
  t.true(server.logLines.some((l) => l.includes('set-up job expired (setup_expiry)')));
  t.true(server.logLines.some((l) => l.includes('finished job expired (finished_expiry)')));
});

test('a finished job keeps of its launch only its dynamic file sources', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  await setupJob(server.url, '8');
  const reply = await submit(server, '8', {
    command_line: 'echo MARKER_COMMAND',
    env: JSON.stringify([{ name: 'MARKER_ENV', value: 'v'.repeat(100_000) }]),
    params: JSON.stringify({ MARKER_PARAM: 'p'.repeat(100_000) }),
    dynamic_file_sources: JSON.stringify([{ type: 'galaxy', path: 'galaxy.json' }]),
  });
  t.is(reply.text, 'OK');
  t.is((await waitForJob(server.url, '8')).job_stdout, 'MARKER_COMMAND\n');
  const text = await fs.readFile(path.join(server.root, 'persisted', '_default_-jobs', '8.json'), 'utf8');
  t.true(text.length < 2000, `record of ${text.length} bytes`);
  t.false(/MARKER_(COMMAND|ENV|PARAM)/.test(text));
  t.deepEqual(JSON.parse(text).launch.request.dynamicFileSources, [{ type: 'galaxy', path: 'galaxy.json' }]);
});

test("the defaults refuse the issue's floods: 6,000 dynamic sources, a 4.5 MiB dependencies_description, 300,000 touch_outputs", async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const config = await setupJob(server.url, 'floods');
  const sources = JSON.stringify(Array.from({ length: 6000 }, (_, i) => ({ type: 'galaxy', path: `f${i}.json` })));
  assertLimit(t, await submit(server, 'floods', { command_line: 'true', dynamic_file_sources: sources }), /max_dynamic_file_sources|max_submit_param_size/);
  // 4.5 MiB of `{},` is 13.5 MiB percent-encoded: inside the 16 MiB request line, so the bound answers.
  const deps = `[${'{},'.repeat(1.5 * MiB - 1)}{}]`;
  assertLimit(t, await submit(server, 'floods', { command_line: 'true', dependencies_description: deps }), /max_dependencies_description_size/);
  const touches = JSON.stringify({ touch_outputs: Array.from({ length: 300_000 }, (_, i) => `t${i}`) });
  assertLimit(t, await submit(server, 'floods', { command_line: 'true', submit_extras: touches }), /max_touch_outputs|max_submit_param_size/);
  t.is(await countFiles(config.outputs_directory), 0, 'nothing was created');
  t.is((await recordOf(server, 'floods')).state, 'setup', 'the job is still set up: a refused parameter changes nothing');
});
