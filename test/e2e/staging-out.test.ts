import test from 'ava';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { qs, request, waitForJob } from '../helpers/client.js';
import { FAST_RETRY, JOB_KEY, startFilesEndpoint, heldFault, stagingServer as serverWith, testEndpoint as endpoint, type FilesEndpoint } from '../helpers/files-endpoint.js';
import { spawnServer, serverRoot } from '../helpers/process.js';
import { makeRoot, managerConfig, startTestServer } from '../helpers/server.js';

const GALAXY = '/galaxy/files';

interface JobSpec {
  readonly setup?: object[];
  readonly outputs: string[];
  readonly defaultAction?: string;
  readonly paths?: object[];
  readonly dynamic?: string[];
  readonly workDirOutputs?: [string, string][];
  readonly collectors?: object[];
  readonly jobDirectory?: string;
}

function remoteStaging(e: FilesEndpoint, id: string, spec: JobSpec): string {
  return JSON.stringify({
    setup: spec.setup ?? [],
    action_mapper: { default_action: spec.defaultAction ?? 'remote_transfer', files_endpoint: e.filesEndpoint(id), ssh_key: null, paths: spec.paths ?? [] },
    client_outputs: {
      working_directory: '/galaxy/jobs/w',
      metadata_directory: '/galaxy/jobs/m',
      job_directory: spec.jobDirectory ?? null,
      work_dir_outputs: spec.workDirOutputs ?? [],
      output_files: spec.outputs.map((o) => `${GALAXY}/${o}`),
      version_file: null,
      dynamic_outputs: spec.dynamic ?? [],
      dynamic_file_sources: [],
      dataset_collector_descriptions: spec.collectors ?? [],
    },
  });
}

async function submit(base: string, e: FilesEndpoint, id: string, command: string, spec: JobSpec): Promise<void> {
  const s = await request(base, 'POST', `/jobs?${qs({ job_id: id })}`);
  if (s.status !== 200) throw new Error(s.text);
  const r = await request(base, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: remoteStaging(e, id, spec) })}`);
  if (r.text !== 'OK') throw new Error(r.text);
}

function posts(e: FilesEndpoint, galaxyPath: string) {
  return e.requests.filter((r) => r.method === 'POST' && r.path === galaxyPath);
}

test('stage-out end to end: inputs staged in, outputs (and extra files) pushed by multipart POST, byte-compared', async (t) => {
  const e = await endpoint(t);
  const big = randomBytes(3 * 1024 * 1024 + 5);
  e.files.set('/galaxy/in/a.dat', big);
  const server = await serverWith(t);
  const id = 'so1';
  const setup = [{ name: 'a.dat', type: 'input', action: { action_type: 'remote_transfer', path: '/galaxy/in/a.dat', url: e.inputUrl(id, '/galaxy/in/a.dat') } }];
  await submit(server.url, e, id, 'cat ../inputs/a.dat > ../outputs/dataset_1.dat && mkdir -p ../outputs/dataset_1_files && printf extra > ../outputs/dataset_1_files/x.txt && printf two > ../outputs/dataset_2.dat', {
    setup,
    outputs: ['dataset_1.dat', 'dataset_2.dat'],
  });
  const doc = await waitForJob(server.url, id);
  t.is(doc.status, 'complete', doc.stderr);
  t.true(e.posted.get(`${GALAXY}/dataset_1.dat`)?.equals(big));
  t.is(e.posted.get(`${GALAXY}/dataset_2.dat`)?.toString(), 'two');
  t.is(e.posted.get(`${GALAXY}/dataset_1_files/x.txt`)?.toString(), 'extra');
  t.deepEqual(posts(e, `${GALAXY}/dataset_1.dat`).map((r) => [r.fileType, r.status]), [['output', 200]]);
  const logged = server.logLines.join('\n');
  t.false(logged.includes(JOB_KEY));
  t.false(logged.includes('file_type='));
  t.regex(logged, /staged out \(remote_transfer\)/);
  t.regex(logged, /"bytes":3145733/);
  t.regex(logged, /"rate":"[\d.]+ MiB\/s"/);
});

test('stage-out: remote_copy to a copy root (parents made, byte-compared); client-side actions are left alone', async (t) => {
  const e = await endpoint(t);
  const copyRoot = await makeRoot();
  t.teardown(async () => fs.rm(copyRoot, { recursive: true, force: true }));
  const server = await serverWith(t, { staging: { allowedEndpoints: [], copyRoots: [copyRoot], privateAddresses: true, concurrency: 2 } });
  const big = randomBytes(2 * 1024 * 1024 + 3);
  const src = path.join(copyRoot, 'src.bin');
  await fs.writeFile(src, big);
  const dest = path.join(copyRoot, 'deep', 'er', 'out.dat');
  const rs = JSON.stringify({
    action_mapper: { default_action: 'transfer', files_endpoint: e.filesEndpoint('rc'), paths: [{ path: copyRoot, action: 'remote_copy', match_type: 'prefix', path_types: 'output' }] },
    client_outputs: { working_directory: '/w', metadata_directory: '/m', output_files: [dest, '/galaxy/files/mine.dat'] },
  });
  await request(server.url, 'POST', `/jobs?${qs({ job_id: 'rc' })}`);
  const r = await request(server.url, 'POST', `/jobs/rc/submit?${qs({ job_id: 'rc', command_line: `cp ${src} ../outputs/out.dat && printf client > ../outputs/mine.dat`, remote_staging: rs })}`);
  t.is(r.text, 'OK');
  const doc = await waitForJob(server.url, 'rc');
  t.is(doc.status, 'complete', doc.stderr);
  t.true((await fs.readFile(dest)).equals(big));
  // No temp file is left next to it; mine.dat (transfer) is the client's to fetch.
  t.deepEqual(await fs.readdir(path.dirname(dest)), ['out.dat']);
  t.is(e.requests.length, 0);
  t.regex(server.logLines.join('\n'), /staged out \(remote_copy\)/);
});

test('stage-out: remote_copy outside the copy roots is refused and writes nothing', async (t) => {
  const e = await endpoint(t);
  const copyRoot = await makeRoot();
  const outside = await makeRoot();
  t.teardown(async () => fs.rm(copyRoot, { recursive: true, force: true }));
  t.teardown(async () => fs.rm(outside, { recursive: true, force: true }));
  const server = await serverWith(t, { staging: { allowedEndpoints: [], copyRoots: [copyRoot], privateAddresses: true, concurrency: 2 } });
  // client_outputs names the Galaxy output paths: put them in and outside the root.
  const spec = (id: string): string =>
    JSON.stringify({
      action_mapper: { default_action: 'remote_copy', files_endpoint: null, paths: [] },
      client_outputs: { working_directory: '/w', metadata_directory: '/m', output_files: [path.join(copyRoot, 'a', 'in.dat'), path.join(outside, 'x', 'out.dat'), path.join(copyRoot, '..', path.basename(outside), 'y.dat')] },
    });
  await request(server.url, 'POST', `/jobs?${qs({ job_id: 'rc2' })}`);
  const r = await request(server.url, 'POST', `/jobs/rc2/submit?${qs({ job_id: 'rc2', command_line: 'printf in > ../outputs/in.dat; printf out > ../outputs/out.dat; printf y > ../outputs/y.dat', remote_staging: spec('rc2') })}`);
  t.is(r.text, 'OK');
  const doc = await waitForJob(server.url, 'rc2');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /out\.dat.*outside staging_copy_roots/);
  t.regex(doc.stderr, /y\.dat.*outside staging_copy_roots/);
  t.is(await fs.readFile(path.join(copyRoot, 'a', 'in.dat'), 'utf8'), 'in');
  t.deepEqual(await fs.readdir(outside), []);
  t.is(e.requests.length, 0);
});

test('stage-out: a 500 then a 200 is retried; a 403 is tolerated', async (t) => {
  const e = await endpoint(t);
  e.faults.set(`${GALAXY}/a.dat`, [{ kind: 'status', status: 500 }]);
  e.faults.set(`${GALAXY}/b.dat`, [{ kind: 'status', status: 403 }]);
  const server = await serverWith(t);
  await submit(server.url, e, 'retry', 'printf a > ../outputs/a.dat; printf b > ../outputs/b.dat', { outputs: ['a.dat', 'b.dat'] });
  const doc = await waitForJob(server.url, 'retry');
  t.is(doc.status, 'complete', doc.stderr);
  t.deepEqual(posts(e, `${GALAXY}/a.dat`).map((r) => r.status), [500, 200]);
  t.is(e.posted.get(`${GALAXY}/a.dat`)?.toString(), 'a');
  t.deepEqual(posts(e, `${GALAXY}/b.dat`).map((r) => r.status), [403]);
  t.regex(server.logLines.join('\n'), /403 \(tolerated/);
});

test('stage-out: an endpoint that answers 413 (or 403) before the body and closes is heard, not waited on', async (t) => {
  const e = await endpoint(t);
  e.faults.set(`${GALAXY}/big.dat`, [{ kind: 'refuse-early', status: 413 }, { kind: 'refuse-early', status: 413 }, { kind: 'refuse-early', status: 413 }, { kind: 'refuse-early', status: 413 }]);
  e.faults.set(`${GALAXY}/also.dat`, [{ kind: 'refuse-early', status: 403 }]);
  const server = await serverWith(t);
  // 32 MiB each: far more than the socket buffers take before the endpoint's answer.
  await submit(server.url, e, 'early', 'head -c 33554432 /dev/zero > ../outputs/big.dat; head -c 33554432 /dev/zero > ../outputs/also.dat', { outputs: ['big.dat', 'also.dat'] });
  const doc = await waitForJob(server.url, 'early');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /HTTP 413/);
  t.notRegex(doc.stderr, /also\.dat/);
  t.is(e.posted.get(`${GALAXY}/big.dat`), undefined);
});

test('stage-out: a missing output fails the job naming it, without a retry; the others still arrive', async (t) => {
  const e = await endpoint(t);
  const server = await serverWith(t, {}, { maxRetries: 0, intervalStart: 0.01, intervalStep: 0.01, intervalMax: 0.05 });
  await submit(server.url, e, 'miss', 'printf a > ../outputs/a.dat', { outputs: ['a.dat', 'never.dat'] });
  const doc = await waitForJob(server.url, 'miss');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /output "never\.dat" was not produced/);
  t.is(e.posted.get(`${GALAXY}/a.dat`)?.toString(), 'a');
  t.deepEqual(posts(e, `${GALAXY}/never.dat`), []);
});

test('stage-out: the endpoint gone → failed with the list of what did not arrive', async (t) => {
  const e = await startFilesEndpoint();
  const server = await serverWith(t);
  const id = 'gone';
  await request(server.url, 'POST', `/jobs?${qs({ job_id: id })}`);
  const rs = remoteStaging(e, id, { outputs: ['a.dat', 'b.dat'] });
  await e.close();
  const r = await request(server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: 'printf a > ../outputs/a.dat; printf b > ../outputs/b.dat', remote_staging: rs })}`);
  t.is(r.text, 'OK');
  const doc = await waitForJob(server.url, id);
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /did not deliver 2 file\(s\)/);
  t.regex(doc.stderr, /output "a\.dat"/);
  t.regex(doc.stderr, /output "b\.dat"/);
  t.false(doc.stderr.includes(JOB_KEY));
});

test('stage-out: dynamic outputs matched by a Python regex in the working and metadata directories; a hostile pattern does not stall', async (t) => {
  const e = await endpoint(t);
  const server = await serverWith(t);
  const long = 'a'.repeat(200);
  await submit(server.url, e, 'dyn', `printf p > primary_1_x_visible_txt; printf n > notme.txt; printf ${long} > ${long}; printf m > ../metadata/metadata_out; printf o > ../outputs/o.dat`, {
    outputs: ['o.dat'],
    dynamic: ['primary_(?P<designation>\\d+)_.*|metadata_.*', '(a+)+$'],
  });
  const doc = await waitForJob(server.url, 'dyn');
  t.is(doc.status, 'complete', doc.stderr);
  t.is(e.posted.get('/galaxy/jobs/w/primary_1_x_visible_txt')?.toString(), 'p');
  t.is(e.posted.get('/galaxy/jobs/m/metadata_out')?.toString(), 'm');
  t.is(e.posted.get(`/galaxy/jobs/w/${long}`)?.toString(), long);
  t.false(e.posted.has('/galaxy/jobs/w/notme.txt'));
  t.is(posts(e, '/galaxy/jobs/w/primary_1_x_visible_txt')[0]?.fileType, 'output_workdir');
  t.is(posts(e, '/galaxy/jobs/m/metadata_out')[0]?.fileType, 'output_metadata');
});

test('stage-out: a dynamic_outputs regex the linear engine cannot run fails the job with the reason', async (t) => {
  const e = await endpoint(t);
  const server = await serverWith(t);
  await submit(server.url, e, 'badre', 'printf o > ../outputs/o.dat', { outputs: ['o.dat'], dynamic: ['(?P<a>x)(?P=a)'] });
  const doc = await waitForJob(server.url, 'badre');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /backreferences are not supported/);
});

test('kill -9 during stage-out: after the restart the job resumes postprocessing and ends complete once', async (t) => {
  const e = await endpoint(t);
  const { fault: held, reached: reachedP, release } = heldFault(t);
  e.faults.set(`${GALAXY}/b.dat`, [held]);
  const { root, ini } = await serverRoot(t, '[manager:_default_]\ntype = queued_python\npostprocess_action_max_retries = 3\npostprocess_action_interval_start = 0.01\n');
  let server = await spawnServer(ini);
  t.teardown(async () => server.kill('SIGKILL'));
  const big = randomBytes(1024 * 1024);
  await fs.writeFile(path.join(root, 'big'), big);
  // staging_concurrency defaults to more than 1: make b.dat wait until a.dat has arrived.
  await submit(server.url, e, 'k9', `printf a > ../outputs/a.dat; cp ${path.join(root, 'big')} ../outputs/b.dat`, { outputs: ['a.dat', 'b.dat'] });
  await reachedP;
  const status = await request(server.url, 'GET', `/jobs/k9/status?${qs({ job_id: 'k9' })}`);
  t.is(status.json().status, 'postprocessing');
  await server.kill('SIGKILL');
  release();
  server = await spawnServer(ini);
  const doc = await waitForJob(server.url, 'k9');
  t.is(doc.status, 'complete', doc.stderr);
  t.true(e.posted.get(`${GALAXY}/b.dat`)?.equals(big));
  t.is(e.postCounts.get(`${GALAXY}/b.dat`), 1);
  // a.dat arrived before the kill (or was in flight with b.dat): at most one re-push.
  t.true((e.postCounts.get(`${GALAXY}/a.dat`) ?? 0) >= 1 && (e.postCounts.get(`${GALAXY}/a.dat`) ?? 0) <= 2);
  // The job ended complete once: its status stays complete.
  t.is((await waitForJob(server.url, 'k9')).status, 'complete');
});

const PUBLIC_TOOLBOX = fileURLToPath(new URL('../../../test/fixtures/public/toolbox.xml', import.meta.url));

test('public mode: stage-out pushes declared outputs to a listed endpoint only, never dynamic outputs', async (t) => {
  const e = await endpoint(t);
  e.files.set('/g/a.dat', Buffer.from('public input\n'));
  const server = await startTestServer({
    app: {
      toolConfigFiles: [PUBLIC_TOOLBOX],
      allowUnsafeEnv: false,
      staging: { allowedEndpoints: [`http://127.0.0.1:${e.port}/api/jobs/`], copyRoots: [], privateAddresses: false, concurrency: 4 },
    },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid', preprocessRetry: FAST_RETRY, postprocessRetry: FAST_RETRY })],
  });
  t.teardown(async () => server.stop());
  const s = await request(server.url, 'POST', `/jobs?${qs({ job_id: '1', tool_id: 'mag_cat' })}`);
  const config = s.json();
  const id = config.job_id as string;
  const command = `cat ${path.join(config.inputs_directory, 'a.dat')} > ${path.join(config.outputs_directory, 'o')}`;
  const rs = JSON.stringify({
    setup: [{ name: 'a.dat', type: 'input', action: { action_type: 'remote_transfer', path: '/g/a.dat', url: e.inputUrl(id, '/g/a.dat') } }],
    action_mapper: { default_action: 'remote_transfer', files_endpoint: e.filesEndpoint(id), paths: [] },
    client_outputs: { working_directory: '/galaxy/w', metadata_directory: '/galaxy/m', job_directory: '/galaxy/j', output_files: ['/galaxy/files/o'], dynamic_outputs: ['.*'] },
  });
  const reply = await request(server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: rs })}`);
  t.is(reply.text, 'OK');
  const doc = await waitForJob(server.url, id);
  t.is(doc.status, 'complete', doc.stderr);
  t.is(e.posted.get('/galaxy/files/o')?.toString(), 'public input\n');
  t.deepEqual([...e.posted.keys()], ['/galaxy/files/o']);
});

test('cancel during stage-out stops it (the job fails, saying so); clean then removes the job', async (t) => {
  const e = await endpoint(t);
  const { fault: held, reached: reachedP } = heldFault(t);
  e.faults.set(`${GALAXY}/a.dat`, [held]);
  const server = await serverWith(t);
  await submit(server.url, e, 'cx', 'printf a > ../outputs/a.dat', { outputs: ['a.dat'] });
  await reachedP;
  const cancel = await request(server.url, 'PUT', `/jobs/cx/cancel?${qs({ job_id: 'cx' })}`);
  t.is(cancel.status, 200, cancel.text);
  const doc = await waitForJob(server.url, 'cx');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /cancelled during stage-out/);
  const clean = await request(server.url, 'DELETE', `/jobs/cx?${qs({ job_id: 'cx' })}`);
  t.is(clean.status, 200, clean.text);
  t.false(await fs.stat(path.join(server.staging, 'cx')).then(() => true, () => false));
});

test('stage-out: files named by a realized galaxy.json (filename, extra_files) are pushed like dynamic outputs', async (t) => {
  const e = await endpoint(t);
  const server = await serverWith(t);
  const id = 'gj';
  await request(server.url, 'POST', `/jobs?${qs({ job_id: id })}`);
  const rs = remoteStaging(e, id, { outputs: ['o.dat'] });
  const command = `printf o > ../outputs/o.dat; printf r > report.txt; mkdir -p extra_dir; printf x > extra_dir/x; printf n > other.txt; echo '{"filename": "report.txt", "extra_files": "extra_dir"}' > galaxy.json`;
  const r = await request(server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: rs, dynamic_file_sources: JSON.stringify([{ type: 'legacy_galaxy', path: 'galaxy.json' }]) })}`);
  t.is(r.text, 'OK');
  const doc = await waitForJob(server.url, id);
  t.is(doc.status, 'complete', doc.stderr);
  t.is(e.posted.get('/galaxy/jobs/w/report.txt')?.toString(), 'r');
  t.is(e.posted.get('/galaxy/jobs/w/extra_dir/x')?.toString(), 'x');
  t.false(e.posted.has('/galaxy/jobs/w/other.txt'));
  t.false(e.posted.has('/galaxy/jobs/w/galaxy.json'));
});

const WORK = '/galaxy/jobs/w';

test('stage-out: a __designation_and_ext__ collector with directory and recurse pushes the files below it, byte-compared', async (t) => {
  const e = await endpoint(t);
  const server = await serverWith(t);
  const scratch = await makeRoot();
  t.teardown(async () => fs.rm(scratch, { recursive: true, force: true }));
  const big = randomBytes(2 * 1024 * 1024 + 7);
  await fs.writeFile(path.join(scratch, 'big'), big);
  const command = [
    'mkdir -p results/sub/deeper other',
    `cp ${path.join(scratch, 'big')} results/sub/a.txt`,
    'printf b > results/b.tsv',
    'printf c > results/sub/deeper/c.fa',
    'printf n > results/noext',
    'printf o > other/x.txt',
    'printf t > top.txt',
    'printf o > ../outputs/o.dat',
  ].join(' && ');
  await submit(server.url, e, 'coll', command, {
    outputs: ['o.dat'],
    dynamic: ['tool_stdout'],
    collectors: [{ discover_via: 'pattern', pattern: '__designation_and_ext__', directory: 'results', recurse: true, match_relative_path: false, format: 'txt', sort_by: 'filename' }],
  });
  const doc = await waitForJob(server.url, 'coll');
  t.is(doc.status, 'complete', doc.stderr);
  t.true(e.posted.get(`${WORK}/results/sub/a.txt`)?.equals(big));
  t.is(e.posted.get(`${WORK}/results/b.tsv`)?.toString(), 'b');
  t.is(e.posted.get(`${WORK}/results/sub/deeper/c.fa`)?.toString(), 'c');
  t.deepEqual(posts(e, `${WORK}/results/sub/a.txt`).map((r) => [r.fileType, r.status]), [['output_workdir', 200]]);
  // No extension, outside the directory, or at the top of the working directory: not collected.
  for (const name of ['results/noext', 'other/x.txt', 'top.txt']) t.false(e.posted.has(`${WORK}/${name}`), name);
  t.deepEqual([...e.posted.keys()].sort(), [`${GALAXY}/o.dat`, `${WORK}/results/b.tsv`, `${WORK}/results/sub/a.txt`, `${WORK}/results/sub/deeper/c.fa`]);
});

test('stage-out: a pathological collector pattern is matched in linear time (no backtracking) and the job completes', async (t) => {
  const e = await endpoint(t);
  const server = await serverWith(t);
  const as = 'a'.repeat(200);
  // A backtracking engine would not finish (a+)+$ against 200 a's and a "!" (nor (x+x+)+y against 250 x's).
  await submit(server.url, e, 'redos', `printf yes > ${as}; printf no > '${as}!'; printf no > ${'x'.repeat(250)}; printf o > ../outputs/o.dat`, {
    outputs: ['o.dat'],
    collectors: [{ pattern: '(a+)+$' }, { pattern: '(?P<name>(x+x+)+y)' }],
  });
  const doc = await waitForJob(server.url, 'redos');
  t.is(doc.status, 'complete', doc.stderr);
  t.is(e.posted.get(`${WORK}/${as}`)?.toString(), 'yes');
  t.false(e.posted.has(`${WORK}/${as}!`));
  t.false(e.posted.has(`${WORK}/${'x'.repeat(250)}`));
});

test('stage-out: a collector-matched symlink out of the job directory is not pushed (nor anything below a symlinked directory)', async (t) => {
  const e = await endpoint(t);
  const server = await serverWith(t);
  const outside = await makeRoot();
  t.teardown(async () => fs.rm(outside, { recursive: true, force: true }));
  await fs.writeFile(path.join(outside, 'secret.txt'), 'SECRET');
  const command = [
    'mkdir -p out/sub',
    'printf in > out/in.txt',
    `ln -s ${path.join(outside, 'secret.txt')} out/leak.txt`,
    `ln -s ${path.join(outside, 'secret.txt')} out/sub/leak2.txt`,
    `ln -s ${path.join(outside, 'missing')} out/sub/dangling.txt`,
    `ln -s ${outside} out/linkdir`,
    'ln -s ../in.txt out/sub/inside.txt',
    'printf o > ../outputs/o.dat',
  ].join(' && ');
  await submit(server.url, e, 'links', command, { outputs: ['o.dat'], collectors: [{ pattern: '__name__', directory: 'out', recurse: 'true' }] });
  const doc = await waitForJob(server.url, 'links');
  t.is(doc.status, 'complete', doc.stderr);
  t.is(e.posted.get(`${WORK}/out/in.txt`)?.toString(), 'in');
  // A symlink that stays inside the working directory is pushed (its target's bytes).
  t.is(e.posted.get(`${WORK}/out/sub/inside.txt`)?.toString(), 'in');
  for (const name of ['out/leak.txt', 'out/sub/leak2.txt', 'out/sub/dangling.txt', 'out/linkdir/secret.txt']) t.false(e.posted.has(`${WORK}/${name}`), name);
  t.false([...e.posted.values()].some((body) => body.toString().includes('SECRET')));
  t.false(e.requests.some((r) => r.path?.includes('leak') === true || r.path?.includes('linkdir') === true));
  t.regex(server.logLines.join('\n'), /symlink leads out of its directory/);
});

test('stage-out: a remote_copy that fails for good (the parent is a file) is not retried and fails the job', async (t) => {
  const e = await endpoint(t);
  const copyRoot = await makeRoot();
  t.teardown(async () => fs.rm(copyRoot, { recursive: true, force: true }));
  const server = await serverWith(t, { staging: { allowedEndpoints: [], copyRoots: [copyRoot], privateAddresses: true, concurrency: 2 } });
  await fs.writeFile(path.join(copyRoot, 'blocker'), 'a file, not a directory');
  const rs = JSON.stringify({
    action_mapper: { default_action: 'remote_copy', files_endpoint: e.filesEndpoint('rcx'), paths: [] },
    client_outputs: { working_directory: '/w', metadata_directory: '/m', output_files: [path.join(copyRoot, 'blocker', 'out.dat'), path.join(copyRoot, 'ok', 'fine.dat')] },
  });
  await request(server.url, 'POST', `/jobs?${qs({ job_id: 'rcx' })}`);
  const r = await request(server.url, 'POST', `/jobs/rcx/submit?${qs({ job_id: 'rcx', command_line: 'printf x > ../outputs/out.dat; printf f > ../outputs/fine.dat', remote_staging: rs })}`);
  t.is(r.text, 'OK');
  const doc = await waitForJob(server.url, 'rcx');
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, /out\.dat.*remote_copy/);
  t.is(await fs.readFile(path.join(copyRoot, 'ok', 'fine.dat'), 'utf8'), 'f');
  t.is(await fs.readFile(path.join(copyRoot, 'blocker'), 'utf8'), 'a file, not a directory');
  const logged = server.logLines.join('\n');
  t.false(logged.includes('stage-out copy failed; retrying'));
});

test('stage-out: a catch-all collector over the job directory pushes the job\'s own files there, never the server\'s control files', async (t) => {
  const e = await endpoint(t);
  const server = await serverWith(t);
  await submit(server.url, e, 'jd', 'printf note > ../extra_note.txt; printf o > ../outputs/o.dat', { outputs: ['o.dat'], jobDirectory: '/galaxy/jobs/j', collectors: [{ pattern: '__name__' }] });
  const doc = await waitForJob(server.url, 'jd');
  t.is(doc.status, 'complete', doc.stderr);
  t.is(e.posted.get('/galaxy/jobs/j/extra_note.txt')?.toString(), 'note');
  t.is(posts(e, '/galaxy/jobs/j/extra_note.txt')[0]?.fileType, 'output_jobdir');
  for (const name of ['command.sh', 'return_code', 'launch_config', 'tool_id', '.upload-stage-out.done']) t.false(e.posted.has(`/galaxy/jobs/j/${name}`), name);
});
