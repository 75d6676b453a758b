import test from 'ava';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { qs, request, statusOf, waitForJob } from '../helpers/client.js';
import { FAST_RETRY, JOB_KEY, heldFault, stagingServer as serverWith, testEndpoint as endpoint, type FilesEndpoint } from '../helpers/files-endpoint.js';
import { spawnServer, serverRoot } from '../helpers/process.js';
import { makeRoot, managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';


type Entry = { name: string; type: string; action: Record<string, unknown> };

function transfer(e: FilesEndpoint, jobId: string, name: string, galaxyPath: string): Entry {
  return { name, type: 'input', action: { path: galaxyPath, source: { path: galaxyPath, object_store_ref: null }, action_type: 'remote_transfer', url: e.inputUrl(jobId, galaxyPath) } };
}

async function setupAndSubmit(base: string, id: string, command: string, setup: Entry[]) {
  const s = await request(base, 'POST', `/jobs?${qs({ job_id: id })}`);
  if (s.status !== 200) throw new Error(s.text);
  const remoteStaging = { setup, action_mapper: { default_action: 'remote_transfer', files_endpoint: null, paths: [] }, client_outputs: {} };
  return request(base, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: JSON.stringify(remoteStaging) })}`);
}

async function output(base: string, id: string, name: string): Promise<Buffer> {
  const r = await request(base, 'GET', `/jobs/${id}/files?${qs({ job_id: id, name, type: 'output' })}`);
  if (r.status !== 200) throw new Error(`download answered ${r.status}`);
  return r.body;
}

/** Every regular file below `dir`, relative. */
async function filesBelow(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name))).sort();
}

test('stage-in: remote_transfer (nested names too), remote_copy (legacy form), message and none, then the job reads them', async (t) => {
  const e = await endpoint(t);
  const copyRoot = await makeRoot();
  t.teardown(async () => fs.rm(copyRoot, { recursive: true, force: true }));
  const big = randomBytes(3 * 1024 * 1024 + 17);
  const extra = Buffer.from('extra file\n');
  const local = Buffer.from('copied from a shared disk\n');
  e.files.set('/galaxy/files/dataset_1.dat', big);
  e.files.set('/galaxy/files/dataset_1_files/sub/x', extra);
  await fs.writeFile(path.join(copyRoot, 'shared.txt'), local);
  const server = await serverWith(t, { staging: { allowedEndpoints: [], copyRoots: [copyRoot], privateAddresses: true, concurrency: 2 } });
  const id = 'st1';
  const setup: Entry[] = [
    transfer(e, id, 'dataset_1.dat', '/galaxy/files/dataset_1.dat'),
    transfer(e, id, 'dataset_1_files/sub/x', '/galaxy/files/dataset_1_files/sub/x'),
    { name: 'shared.txt', type: 'input', action: { action_type: 'remote_copy', path: path.join(copyRoot, 'shared.txt') } },
    { name: 'note.txt', type: 'input', action: { action_type: 'message', contents: 'a message\n' } },
    { name: 'untouched', type: 'input', action: { action_type: 'none', path: '/galaxy/files/untouched' } },
  ];
  const submit = await setupAndSubmit(server.url, id, 'cat ../inputs/dataset_1.dat > ../outputs/out.dat && cat ../inputs/dataset_1_files/sub/x ../inputs/shared.txt ../inputs/note.txt > ../outputs/rest.txt', setup);
  t.is(submit.text, 'OK');
  const doc = await waitForJob(server.url, id);
  t.is(doc.status, 'complete', doc.stderr);
  t.true((await output(server.url, id, 'out.dat')).equals(big));
  t.is((await output(server.url, id, 'rest.txt')).toString(), `${extra.toString()}${local.toString()}a message\n`);
  // Every GET carried the job key and the file type, as Galaxy's client builds them.
  t.deepEqual(e.requests.map((r) => [r.method, r.fileType, r.status]).sort(), [['GET', 'input', 200], ['GET', 'input', 200]]);
  // No partial file is left, and no log line carries the job key or a URL query.
  t.deepEqual((await filesBelow(path.join(server.staging, id, 'inputs'))).filter((f) => f.includes('.part')), []);
  const logged = server.logLines.join('\n');
  t.false(logged.includes(JOB_KEY));
  t.false(logged.includes('file_type='));
  t.regex(logged, /staged in \(remote_transfer\)/);
  t.regex(logged, /"bytes":3145745/);
});

test('stage-in resumes with Range after the endpoint dies mid-file', async (t) => {
  const e = await endpoint(t);
  const big = randomBytes(2 * 1024 * 1024);
  e.files.set('/g/big.dat', big);
  e.faults.set('/g/big.dat', [{ kind: 'die-mid' }]);
  const server = await serverWith(t);
  await setupAndSubmit(server.url, 'resume', 'cat ../inputs/big.dat > ../outputs/out.dat', [transfer(e, 'resume', 'big.dat', '/g/big.dat')]);
  const doc = await waitForJob(server.url, 'resume');
  t.is(doc.status, 'complete', doc.stderr);
  t.true((await output(server.url, 'resume', 'out.dat')).equals(big));
  const gets = e.requests.filter((r) => r.path === '/g/big.dat');
  t.is(gets.length, 2);
  t.is(gets[0]?.range, undefined);
  t.regex(gets[1]?.range ?? '', /^bytes=[1-9]\d*-$/);
  t.is(gets[1]?.status, 206);
});

test('stage-in starts over when the endpoint ignores Range', async (t) => {
  const e = await endpoint(t);
  e.honoursRange = false;
  const big = randomBytes(1024 * 1024);
  e.files.set('/g/big.dat', big);
  e.faults.set('/g/big.dat', [{ kind: 'die-mid' }]);
  const server = await serverWith(t);
  await setupAndSubmit(server.url, 'norange', 'cat ../inputs/big.dat > ../outputs/out.dat', [transfer(e, 'norange', 'big.dat', '/g/big.dat')]);
  t.is((await waitForJob(server.url, 'norange')).status, 'complete');
  t.true((await output(server.url, 'norange', 'out.dat')).equals(big));
});

test('a 500 then a 200 is retried; a 403 fails at once with the status in stderr', async (t) => {
  const e = await endpoint(t);
  e.files.set('/g/a', Buffer.from('alpha\n'));
  e.files.set('/g/b', Buffer.from('beta\n'));
  e.faults.set('/g/a', [{ kind: 'status', status: 500 }]);
  e.faults.set('/g/b', [{ kind: 'status', status: 403 }]);
  const server = await serverWith(t);
  await setupAndSubmit(server.url, 'r500', 'cat ../inputs/a > ../outputs/out', [transfer(e, 'r500', 'a', '/g/a')]);
  t.is((await waitForJob(server.url, 'r500')).status, 'complete');
  t.is((await output(server.url, 'r500', 'out')).toString(), 'alpha\n');
  t.deepEqual(e.requests.filter((r) => r.path === '/g/a').map((r) => r.status), [500, 200]);

  await setupAndSubmit(server.url, 'r403', 'echo ran > ../outputs/ran', [transfer(e, 'r403', 'b', '/g/b')]);
  const doc = await waitForJob(server.url, 'r403');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /HTTP status 403/);
  t.false(doc.stderr.includes(JOB_KEY));
  t.deepEqual(e.requests.filter((r) => r.path === '/g/b').map((r) => r.status), [403]);
  t.deepEqual(await filesBelow(path.join(server.staging, 'r403', 'inputs')), []);
  t.deepEqual(await filesBelow(path.join(server.staging, 'r403', 'outputs')), []);
});

test('a missing file (404) fails the job; with the default policy (no retries) a 500 fails it too', async (t) => {
  const e = await endpoint(t);
  e.files.set('/g/a', Buffer.from('alpha\n'));
  e.faults.set('/g/a', [{ kind: 'status', status: 503 }]);
  const server = await serverWith(t, {}, { maxRetries: -1, intervalStart: 2, intervalStep: 2, intervalMax: 30 });
  await setupAndSubmit(server.url, 'n404', 'true', [transfer(e, 'n404', 'missing', '/g/missing')]);
  const doc = await waitForJob(server.url, 'n404');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /HTTP status 404/);
  await setupAndSubmit(server.url, 'n503', 'true', [transfer(e, 'n503', 'a', '/g/a')]);
  const doc2 = await waitForJob(server.url, 'n503');
  t.is(doc2.status, 'failed');
  t.regex(doc2.stderr, /HTTP status 503/);
  t.is(e.requests.filter((r) => r.path === '/g/a').length, 1);
});

test('status reports preprocessing during stage-in, and a cancel stops it without leaving the file', async (t) => {
  const e = await endpoint(t);
  e.files.set('/g/slow', randomBytes(512 * 1024));
  let reached!: () => void;
  const reachedP = new Promise<void>((r) => { reached = r; });
  let release!: () => void;
  const released = new Promise<void>((r) => { release = r; });
  e.faults.set('/g/slow', [{ kind: 'slow', reached, released }]);
  const server = await serverWith(t);
  const submit = await setupAndSubmit(server.url, 'slow', 'echo ran > ../outputs/ran', [transfer(e, 'slow', 'slow', '/g/slow')]);
  t.is(submit.text, 'OK');
  await reachedP;
  t.is(await statusOf(server.url, 'slow'), 'preprocessing');
  // Other tests of this file transfer meanwhile: this one is among those running.
  const health = (await request(server.url, 'GET', '/healthz')).json() as { staging_transfers: { running: number; waiting: number; max: number } };
  t.true(health.staging_transfers.running >= 1);
  t.is(health.staging_transfers.max, 16);
  t.is((await request(server.url, 'PUT', `/jobs/slow/cancel?job_id=slow`)).status, 200);
  await waitUntil('stage-in stopped', async () => server.logLines.some((l) => l.includes('stage-in stopped')), 10_000);
  release();
  t.is(await statusOf(server.url, 'slow'), 'cancelled');
  t.deepEqual(await filesBelow(path.join(server.staging, 'slow', 'outputs')), []);
  t.false((await filesBelow(path.join(server.staging, 'slow', 'inputs'))).includes('slow'));
});

test('SSRF and path refusals: outside the allow-list, redirect out of it, file:, private addresses, remote_copy outside the roots, ".." names', async (t) => {
  const e = await endpoint(t);
  const other = await endpoint(t);
  const copyRoot = await makeRoot();
  t.teardown(async () => fs.rm(copyRoot, { recursive: true, force: true }));
  e.files.set('/g/a', Buffer.from('alpha\n'));
  other.files.set('/g/a', Buffer.from('other\n'));
  const allowed = `http://127.0.0.1:${e.port}/api/jobs/`;
  const server = await serverWith(t, { staging: { allowedEndpoints: [allowed], copyRoots: [copyRoot], privateAddresses: true, concurrency: 4 } });
  const cases: Array<[string, Entry, RegExp]> = [
    ['outside', transfer(other, 'outside', 'a', '/g/a'), /not in staging_allowed_endpoints/],
    ['prefix', { name: 'a', type: 'input', action: { action_type: 'remote_transfer', url: `http://127.0.0.1:${e.port}/api/jobsX/1/files?path=%2Fg%2Fa` } }, /not in staging_allowed_endpoints/],
    ['fileurl', { name: 'a', type: 'input', action: { action_type: 'remote_transfer', url: 'file:///etc/passwd' } }, /only http and https/],
    ['copyout', { name: 'a', type: 'input', action: { action_type: 'remote_copy', source: { path: '/etc/passwd' } } }, /outside staging_copy_roots/],
    ['dotdot', { ...transfer(e, 'dotdot', '../../escape', '/g/a') }, /\.\./],
    ['absolute', { ...transfer(e, 'absolute', '/tmp/escape', '/g/a') }, /absolute/],
    ['rsync', { name: 'a', type: 'input', action: { action_type: 'remote_rsync_transfer', path: '/g/a', ssh_host: 'h' } }, /not supported/],
    ['outtype', { ...transfer(e, 'outtype', 'a', '/g/a'), type: 'output' }, /refused/],
  ];
  for (const [id, entry, message] of cases) {
    const r = await setupAndSubmit(server.url, id, 'echo ran > ../outputs/ran', [entry]);
    t.true(r.status === 403 || r.status === 400, `${id}: ${r.status} ${r.text}`);
    t.regex(r.text, message, id);
    t.is(await statusOf(server.url, id), 'failed', id);
    t.deepEqual(await filesBelow(path.join(server.staging, id)), [], id);
  }
  t.deepEqual(other.requests, [], 'nothing reached the endpoint outside the list');
  t.deepEqual(e.requests, [], 'nothing was fetched for a refused job');
  await fs.access(path.join(server.staging, 'escape')).then(() => t.fail('escape written'), () => t.pass());

  // A redirect from the listed endpoint to one outside it is not followed.
  e.faults.set('/g/a', [{ kind: 'redirect', location: other.inputUrl('redir', '/g/a') }]);
  await setupAndSubmit(server.url, 'redir', 'echo ran > ../outputs/ran', [transfer(e, 'redir', 'a', '/g/a')]);
  const doc = await waitForJob(server.url, 'redir');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /not in staging_allowed_endpoints/);
  t.deepEqual(other.requests, []);
  t.deepEqual(await filesBelow(path.join(server.staging, 'redir', 'inputs')), []);

  // A redirect within the list is followed.
  e.files.set('/g/b', Buffer.from('beta\n'));
  e.faults.set('/g/a', [{ kind: 'redirect', location: e.inputUrl('redir2', '/g/b') }]);
  await setupAndSubmit(server.url, 'redir2', 'cat ../inputs/a > ../outputs/out', [transfer(e, 'redir2', 'a', '/g/a')]);
  t.is((await waitForJob(server.url, 'redir2')).status, 'complete');
  t.is((await output(server.url, 'redir2', 'out')).toString(), 'beta\n');
});

test('with staging_private_addresses off, a host name resolving to loopback and a loopback literal are refused', async (t) => {
  const e = await endpoint(t);
  e.files.set('/g/a', Buffer.from('alpha\n'));
  const server = await serverWith(t, { staging: { allowedEndpoints: [], copyRoots: [], privateAddresses: false, concurrency: 4 } });
  const byName: Entry = { name: 'a', type: 'input', action: { action_type: 'remote_transfer', url: `http://localhost:${e.port}/api/jobs/x/files?job_key=${JOB_KEY}&path=%2Fg%2Fa` } };
  await setupAndSubmit(server.url, 'byname', 'true', [byName]);
  const doc = await waitForJob(server.url, 'byname');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /loopback or private address/);
  const literal = await setupAndSubmit(server.url, 'literal', 'true', [transfer(e, 'literal', 'a', '/g/a')]);
  t.is(literal.status, 403);
  t.regex(literal.text, /loopback or private address/);
  t.deepEqual(e.requests, []);
});

test('kill -9 during stage-in: after the restart the transfer resumes with Range and the job completes', async (t) => {
  const e = await endpoint(t);
  const big = randomBytes(2 * 1024 * 1024);
  e.files.set('/g/big.dat', big);
  const { fault: held, reached: reachedP } = heldFault(t);
  e.faults.set('/g/big.dat', [held]);
  const { root, ini } = await serverRoot(t, '[manager:_default_]\ntype = queued_python\npreprocess_action_max_retries = 3\npreprocess_action_interval_start = 0.01\n');
  let server = await spawnServer(ini);
  t.teardown(async () => server.kill('SIGKILL'));
  const submit = await setupAndSubmit(server.url, 'k9', 'cat ../inputs/big.dat > ../outputs/out.dat', [transfer(e, 'k9', 'big.dat', '/g/big.dat')]);
  t.is(submit.text, 'OK');
  await reachedP;
  const inputs = path.join(root, 'staging', 'k9', 'inputs');
  // Generous: on a loaded machine the spawned server may take a while to read and write its first chunk.
  await waitUntil('part of the file on disk', async () => ((await fs.stat(path.join(inputs, '.big.dat.stage-in.part')).catch(() => undefined))?.size ?? 0) > 0, 30_000);
  await server.kill('SIGKILL');
  // Only the partial file is there: nothing under the name the job reads.
  t.deepEqual(await filesBelow(inputs), ['.big.dat.stage-in.part']);
  server = await spawnServer(ini);
  const doc = await waitForJob(server.url, 'k9');
  t.is(doc.status, 'complete', doc.stderr);
  t.true((await output(server.url, 'k9', 'out.dat')).equals(big));
  const gets = e.requests.filter((r) => r.path === '/g/big.dat');
  t.is(gets.length, 2);
  t.regex(gets[1]?.range ?? '', /^bytes=[1-9]\d*-$/);
  t.deepEqual(await filesBelow(inputs), ['big.dat']);
});

const PUBLIC_TOOLBOX = fileURLToPath(new URL('../../../test/fixtures/public/toolbox.xml', import.meta.url));

test('public mode: stage-in only with an allow-list, only of inputs, only from listed endpoints; then the validated job runs', async (t) => {
  const e = await endpoint(t);
  const other = await endpoint(t);
  e.files.set('/g/a.dat', Buffer.from('public input\n'));
  other.files.set('/g/a.dat', Buffer.from('other\n'));
  const start = async (allowedEndpoints: string[]) => {
    const server = await startTestServer({
      app: {
        toolConfigFiles: [PUBLIC_TOOLBOX],
        allowUnsafeEnv: false,
        staging: { allowedEndpoints, copyRoots: [], privateAddresses: false, concurrency: 4 },
      },
      managers: (root) => [managerConfig(root, { assignIds: 'uuid', preprocessRetry: FAST_RETRY })],
    });
    t.teardown(async () => server.stop());
    return server;
  };
  const submitCat = async (server: TestServer, entry: (id: string) => Entry) => {
    const s = await request(server.url, 'POST', `/jobs?${qs({ job_id: '1', tool_id: 'mag_cat' })}`);
    const config = s.json();
    const id = config.job_id as string;
    const command = `cat ${path.join(config.inputs_directory, 'a.dat')} > ${path.join(config.outputs_directory, 'o')}`;
    const remoteStaging = JSON.stringify({ setup: [entry(id)] });
    const reply = await request(server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: remoteStaging })}`);
    return { id, config, reply };
  };

  // No allow-list: refused as before.
  const closed = await start([]);
  const refused = await submitCat(closed, (id) => transfer(e, id, 'a.dat', '/g/a.dat'));
  t.is(refused.reply.status, 403);
  t.regex(refused.reply.text, /server-side staging actions/);
  t.deepEqual(e.requests, []);

  const open = await start([`http://127.0.0.1:${e.port}/api/jobs/`]);
  const ok = await submitCat(open, (id) => transfer(e, id, 'a.dat', '/g/a.dat'));
  t.is(ok.reply.text, 'OK');
  const doc = await waitForJob(open.url, ok.id);
  t.is(doc.status, 'complete', doc.stderr);
  t.is((await output(open.url, ok.id, 'o')).toString(), 'public input\n');

  const cases: Array<[(id: string) => Entry, RegExp]> = [
    [(id) => ({ ...transfer(e, id, 'a.dat', '/g/a.dat'), type: 'config' }), /may only write inputs/],
    [(id) => transfer(other, id, 'a.dat', '/g/a.dat'), /not in staging_allowed_endpoints/],
    [() => ({ name: 'a.dat', type: 'input', action: { action_type: 'remote_copy', source: { path: '/etc/passwd' } } }), /no staging_copy_roots/],
    [() => ({ name: 'a.dat', type: 'input', action: { action_type: 'remote_transfer', url: `http://localhost:${e.port}/api/jobs/x/files?path=%2Fg%2Fa.dat` } }), /not in staging_allowed_endpoints/],
  ];
  for (const [entry, message] of cases) {
    const r = await submitCat(open, entry);
    t.is(r.reply.status, 403, r.reply.text);
    t.regex(r.reply.text, message);
    t.is((await waitForJob(open.url, r.id)).status, 'failed');
    t.deepEqual(await filesBelow(r.config.job_directory), []);
  }
  t.deepEqual(other.requests, []);
  t.is(e.requests.length, 1);
});

test('staging_concurrency bounds the transfers of one job running at once', async (t) => {
  const e = await endpoint(t);
  const releases: Array<() => void> = [];
  const reached: Array<Promise<void>> = [];
  for (const name of ['a', 'b', 'c']) {
    e.files.set(`/g/${name}`, Buffer.from(`${name}\n`.repeat(1000)));
    let reach!: () => void;
    reached.push(new Promise<void>((r) => { reach = r; }));
    let release!: () => void;
    const released = new Promise<void>((r) => { release = r; });
    releases.push(release);
    e.faults.set(`/g/${name}`, [{ kind: 'slow', reached: reach, released }]);
  }
  t.teardown(() => releases.forEach((r) => r()));
  const server = await serverWith(t, { staging: { allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 2 } });
  const setup = ['a', 'b', 'c'].map((n) => transfer(e, 'conc', n, `/g/${n}`));
  t.is((await setupAndSubmit(server.url, 'conc', 'cat ../inputs/a ../inputs/b ../inputs/c > ../outputs/out', setup)).text, 'OK');
  await Promise.all(reached.slice(0, 2));
  // Two transfers hang on the endpoint: the third cannot have started.
  t.deepEqual(e.requests.map((r) => r.path).sort(), ['/g/a', '/g/b']);
  releases[0]?.();
  await reached[2];
  releases[1]?.();
  releases[2]?.();
  t.is((await waitForJob(server.url, 'conc')).status, 'complete');
  t.is((await output(server.url, 'conc', 'out')).toString(), ['a', 'b', 'c'].map((n) => `${n}\n`.repeat(1000)).join(''));
});

test('local setup (setup_params in the submit) with remote_transfer inputs: the way message-queue clients stage', async (t) => {
  const e = await endpoint(t);
  e.files.set('/g/in.txt', Buffer.from('through setup_params\n'));
  const server = await serverWith(t);
  const id = 'local';
  const remoteStaging = JSON.stringify({ setup: [transfer(e, id, 'in.txt', '/g/in.txt')] });
  const reply = await request(server.url, 'POST', `/jobs/${id}/submit?${qs({
    job_id: id,
    command_line: 'cat ../inputs/in.txt > ../outputs/out',
    setup_params: JSON.stringify({ job_id: id, tool_id: 't', tool_version: '1' }),
    remote_staging: remoteStaging,
  })}`);
  t.is(reply.text, 'OK');
  t.is((await waitForJob(server.url, id)).status, 'complete');
  t.is((await output(server.url, id, 'out')).toString(), 'through setup_params\n');
});
