import test from 'ava';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { report, runCheck as runCheckWith, runCheckCli, type CheckRun as Run } from '../helpers/check.js';
import { startLocalFilesEndpoint } from '../../src/check/files-endpoint.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/** The check with a longer default timeout: stage-in adds transfers to each job. */
const runCheck = (options: Parameters<typeof runCheckWith>[0]): Promise<Run> => runCheckWith(options, '60');

async function server(t: { teardown(fn: () => Promise<void>): void }, privateAddresses: boolean, allowedEndpoints: string[] = []): Promise<TestServer> {
  const s = await startTestServer({ app: { staging: { allowedEndpoints, copyRoots: [], privateAddresses, concurrency: 4 } } });
  t.teardown(async () => s.stop());
  return s;
}

test('check --remote-transfer: the server pulls every input from the check\'s files endpoint, the outputs are verified', async (t) => {
  const s = await server(t, true);
  const run = await runCheck({ url: s.url, remoteTransfer: true });
  t.is(run.code, 0, report(run));
  t.is(run.lines[run.lines.length - 1], 'check passed');
  t.deepEqual(run.errors, []);
  // 11 files from disk pulled by remote_transfer, the in-memory config as a message; no upload.
  t.true(run.lines.some((l) => /^ok {2}stage-in plan \(11 remote_transfer from http:\/\/127\.0\.0\.1:\d+, 1 message\)$/.test(l)), report(run));
  t.false(run.lines.some((l) => l.startsWith('ok  upload ')), report(run));
  t.true(run.lines.some((l) => /^ok {2}files endpoint \((1[1-9]|[2-9]\d) GETs answered, 1\.\d+ MiB; 0 outputs pushed/.test(l)), report(run));
  // The big index file came back byte-identical (sha256 compared) through the staged-in copy.
  t.true(run.lines.some((l) => l.startsWith('ok  download output dataset_3.dat (1.')), report(run));
  t.deepEqual(await fs.readdir(s.staging), []);
  // The job key is never logged by the server.
  t.false(s.logLines.join('\n').includes('job_key='));
});

test('check --remote-transfer against a server that refuses loopback transfers: exit 1, one line naming the option', async (t) => {
  const s = await server(t, false);
  const run = await runCheck({ url: s.url, remoteTransfer: true });
  t.is(run.code, 1, report(run));
  t.true(run.lines.some((l) => l.startsWith('FAIL submit: ')), report(run));
  t.is(run.errors.length, 1, report(run));
  t.regex(run.errors[0] ?? '', /^magnetar check: the server refused remote staging from http:\/\/127\.0\.0\.1:\d+, a loopback or private address: set staging_private_addresses = true, or list http:\/\/127\.0\.0\.1:\d+\/api\/jobs\/ in staging_allowed_endpoints$/);
  // The refused job was removed again, and nothing was fetched.
  t.deepEqual(await fs.readdir(s.staging), []);
});

test('check --remote-transfer against an allow-list that does not name the endpoint: the option to set', async (t) => {
  const s = await server(t, true, ['https://galaxy.example.org/api/jobs/']);
  const run = await runCheck({ url: s.url, remoteTransfer: true });
  t.is(run.code, 1, report(run));
  t.regex(run.errors[0] ?? '', /^magnetar check: the server refused remote staging from http:\/\/127\.0\.0\.1:\d+: list http:\/\/127\.0\.0\.1:\d+\/api\/jobs\/ in its staging_allowed_endpoints$/, report(run));
});

test('check --remote-transfer with an advertised address the server cannot reach: the job fails in stage-in, the line says so', async (t) => {
  const s = await startTestServer({
    app: { staging: { allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4 } },
  });
  t.teardown(async () => s.stop());
  // 127.0.0.1 is where the endpoint listens; 127.0.0.3 is where the server is told to go (nothing there).
  const run = await runCheck({ url: s.url, remoteTransfer: true, filesHost: '127.0.0.1', filesAdvertise: '127.0.0.3' });
  t.is(run.code, 1, report(run));
  t.true(run.lines.some((l) => l.startsWith('FAIL verify status: the job ended failed')), report(run));
  t.regex(run.errors[0] ?? '', /^magnetar check: the server could not fetch the inputs from http:\/\/127\.0\.0\.3:\d+: the server must reach this machine/, report(run));
});

test('check --remote-transfer usage errors: with --cache, files options without it, a bad host or port', async (t) => {
  const url = 'http://127.0.0.1:1/';
  for (const [options, pattern] of [
    [{ remoteTransfer: true, cache: true }, /--cache and --remote-transfer exclude each other/],
    [{ filesHost: '127.0.0.1' }, /need --remote-transfer/],
    [{ remoteTransfer: true, filesHost: 'http://x/' }, /--files-host "http:\/\/x\/" is not a host name/],
    [{ remoteTransfer: true, filesPort: '70000' }, /--files-port must be a port number/],
  ] as const) {
    const run = await runCheck({ url, ...options });
    t.is(run.code, 2);
    t.regex(run.errors[0] ?? '', pattern);
  }
});

test('the real CLI: magnetar check --remote-transfer --files-host 127.0.0.1 passes with exit code 0', async (t) => {
  const s = await server(t, true);
  const { code, stdout, stderr } = await runCheckCli(['--url', s.url, '--remote-transfer', '--files-host', '127.0.0.1']);
  t.is(code, 0, `${stdout}\n${stderr}`);
  t.regex(stdout, /^ok {2}stage-in plan /m);
  t.regex(stdout, /^check passed$/m);
  t.is(stderr, '');
});

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: Buffer; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    http.get(url, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), headers: res.headers }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

test('the check\'s files endpoint serves only the files it was given, only with the job key; Range works', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-files-endpoint-'));
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'input.dat');
  await fs.writeFile(file, '0123456789');
  await fs.writeFile(path.join(dir, 'secret.txt'), 'not served');
  const e = await startLocalFilesEndpoint();
  t.teardown(async () => e.close());
  e.serve(file, file);
  const good = e.inputUrl('j1', file, 'input');
  t.is((await get(good)).body.toString(), '0123456789');
  const ranged = await get(good, { range: 'bytes=4-' });
  t.is(ranged.status, 206);
  t.is(ranged.body.toString(), '456789');
  t.is(ranged.headers['content-range'], 'bytes 4-9/10');
  t.is((await get(good, { range: 'bytes=10-' })).status, 416);
  // A wrong or missing job key: 403, whatever the path.
  t.is((await get(good.replace(/job_key=[0-9a-f]+/, 'job_key=0000'))).status, 403);
  t.is((await get(good.replace(/job_key=[0-9a-f]+&/, ''))).status, 403);
  // Files not handed to serve(): 404, even next to a served one, by any spelling of the path.
  for (const other of [path.join(dir, 'secret.txt'), `${dir}/../${path.basename(dir)}/secret.txt`, '/etc/passwd', `${file}/..`]) {
    const r = await get(e.inputUrl('j1', other, 'input'));
    t.is(r.status, 404, other);
    t.false(r.body.toString().includes('not served'));
  }
  t.is((await get(`${e.base}/etc/passwd`)).status, 404);
});

function post(url: string, body: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'content-type': 'multipart/form-data; boundary=b', 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', (error: NodeJS.ErrnoException) => (error.code === 'ECONNRESET' || error.code === 'EPIPE' ? resolve(413) : reject(error)));
    req.end(body);
  });
}

test('the check\'s files endpoint takes a stage-out POST (stored, bounded) only with the job key', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-files-endpoint-'));
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }));
  const e = await startLocalFilesEndpoint({ postDir: dir, maxPostBytes: 1024 });
  t.teardown(async () => e.close());
  const body = Buffer.from('--b\r\nContent-Disposition: form-data; name="file"; filename="out"\r\n\r\nresult\r\n--b--\r\n');
  const url = e.inputUrl('j1', '/galaxy/out/dataset_9.dat', 'output');
  t.is(await post(url, body), 200);
  t.is(e.posts.length, 1);
  t.is(e.posts[0]?.path, '/galaxy/out/dataset_9.dat');
  t.is(e.posts[0]?.fileType, 'output');
  t.true((await fs.readFile(e.posts[0]?.file ?? '')).equals(body));
  t.is(await post(url.replace(/job_key=[0-9a-f]+/, 'job_key=x'), body), 403);
  t.is(await post(url, Buffer.alloc(2048, 1)), 413);
  t.is(e.posts.length, 1);
});
