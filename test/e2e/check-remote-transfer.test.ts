import test from 'ava';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { report, runCheck as runCheckWith, runCheckCli, type CheckRun as Run } from '../helpers/check.js';
import { multipartBoundary, multipartField, startLocalFilesEndpoint } from '../../src/check/files-endpoint.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/** The check with a longer default timeout: stage-in adds transfers to each job. */
const runCheck = (options: Parameters<typeof runCheckWith>[0]): Promise<Run> => runCheckWith(options, '60');

async function server(t: { teardown(fn: () => Promise<void>): void }, privateAddresses: boolean, allowedEndpoints: string[] = []): Promise<TestServer> {
  const s = await startTestServer({ app: { staging: { allowedEndpoints, copyRoots: [], privateAddresses, concurrency: 4 } } });
  t.teardown(async () => s.stop());
  return s;
}

test('check --remote-transfer: the server pulls every input from the check\'s files endpoint and pushes every output back to it, verified', async (t) => {
  const s = await server(t, true);
  const run = await runCheck({ url: s.url, remoteTransfer: true });
  t.is(run.code, 0, report(run));
  t.is(run.lines[run.lines.length - 1], 'check passed');
  t.deepEqual(run.errors, []);
  // 11 files from disk pulled by remote_transfer, the in-memory config as a message; no upload.
  t.true(run.lines.some((l) => /^ok {2}stage-in plan \(11 remote_transfer from http:\/\/127\.0\.0\.1:\d+, 1 message\)$/.test(l)), report(run));
  t.false(run.lines.some((l) => l.startsWith('ok  upload ')), report(run));
  // Every expected output came back by stage-out (a multipart POST), none was downloaded.
  t.false(run.lines.some((l) => l.startsWith('ok  download output')), report(run));
  for (const name of ['output_workdir env_test', 'output_workdir tmp_dir_test', 'output_workdir home_dir_test', 'output dataset_1.dat', 'output dataset_1_files/extra', 'output dataset_2.dat', 'output touched.dat', 'output COMMAND_VERSION', 'output_workdir galaxy.json', 'output_workdir gjson_refer', 'output_metadata tool_stdout', 'output_metadata metadata_test123', 'output_metadata metadata_output']) {
    t.true(run.lines.some((l) => l.startsWith(`ok  stage-out ${name} (`) && l.endsWith(' bytes, pushed by the server)')), `${name}\n${report(run)}`);
  }
  // The big index file came back byte-identical (sha256 compared): staged in, copied by the tool, pushed back.
  t.true(run.lines.includes('ok  stage-out output dataset_3.dat (1.01 MiB, pushed by the server)'), report(run));
  t.true(run.lines.some((l) => /^ok {2}files endpoint \((1[1-9]|[2-9]\d) GETs answered, 1\.\d+ MiB; (1[4-9]|[2-9]\d) outputs pushed by the server \(stage-out\), 1\.\d+ MiB\)$/.test(l)), report(run));
  t.true(run.lines.includes('ok  all expected outputs pushed (14 outputs by stage-out, none downloaded)'), report(run));
  t.deepEqual(await fs.readdir(s.staging), []);
  t.regex(s.logLines.join('\n'), /staged out \(remote_transfer\)/);
  // The job key is never logged by the server.
  t.false(s.logLines.join('\n').includes('job_key='));
});

test('check --remote-transfer --files-max-post below the largest output: the endpoint refuses that push (413), exit 1 naming it', async (t) => {
  const s = await server(t, true);
  const run = await runCheck({ url: s.url, remoteTransfer: true, filesMaxPost: String(1024 * 1024) });
  t.is(run.code, 1, report(run));
  t.true(run.lines.some((l) => l.startsWith('FAIL verify status: the job ended failed, expected complete; stderr: "stage-out did not deliver 1 file(s): output \\"dataset_3.dat\\"')), report(run));
  t.is(run.errors.length, 1, report(run));
  t.regex(run.errors[0] ?? '', /^magnetar check: the files endpoint at http:\/\/127\.0\.0\.1:\d+ refused the server's stage-out of output dataset_3\.dat: HTTP 413, the body \(\d+ bytes\) is larger than 1048576 bytes$/, report(run));
  t.true(run.lines.some((l) => /^\.\. {2}removed job check-[0-9a-f]+ from the server/.test(l)), report(run));
  t.deepEqual(await fs.readdir(s.staging), []);
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
    [{ filesMaxPost: '1024' }, /need --remote-transfer/],
    [{ remoteTransfer: true, filesMaxPost: '1e6' }, /--files-max-post must be a number of bytes from 1 to 4294967296, not "1e6"/],
    [{ remoteTransfer: true, filesMaxPost: '0' }, /--files-max-post must be a number of bytes/],
    [{ remoteTransfer: true, filesMaxPost: '4294967297' }, /--files-max-post must be a number of bytes/],
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
  t.regex(stdout, /^ok {2}stage-out output dataset_3\.dat \(1\.01 MiB, pushed by the server\)$/m);
  t.regex(stdout, /^ok {2}all expected outputs pushed \(14 outputs by stage-out, none downloaded\)$/m);
  t.regex(stdout, /^check passed$/m);
  t.is(stderr, '');
});

/**
 * A reverse proxy in front of the check's endpoint (as a site's proxy or firewall would be) that
 * passes GETs through and refuses every POST with `status`: on 127.0.0.2, at the port given back.
 */
async function getOnlyProxy(t: { teardown(fn: () => Promise<void>): void }, status: number): Promise<{ port: number; refusedPosts: () => number }> {
  let port = 0;
  let refused = 0;
  const proxy = http.createServer((req, res) => {
    if (req.method === 'POST') {
      refused++;
      // Answered once the body is read, so the server sees the status (not a broken pipe).
      req.resume();
      req.on('end', () => {
        res.writeHead(status, { connection: 'close', 'content-type': 'text/plain' });
        res.end('POST not allowed here');
      });
      return;
    }
    const upstream = http.request({ host: '127.0.0.1', port, path: req.url, method: req.method, headers: req.headers, agent: false }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve, reject) => {
    proxy.once('error', reject);
    proxy.listen(0, '127.0.0.2', () => resolve());
  });
  port = (proxy.address() as AddressInfo).port;
  t.teardown(async () => {
    proxy.closeAllConnections();
    await new Promise<void>((resolve) => proxy.close(() => resolve()));
  });
  return { port, refusedPosts: () => refused };
}

test('the real CLI: a proxy in front of the files endpoint refuses the stage-out POSTs: exit 1, one line naming the refusal', async (t) => {
  const s = await server(t, true);
  const proxy = await getOnlyProxy(t, 404);
  // The endpoint listens on 127.0.0.1:<port>; the server is sent to the proxy at 127.0.0.2:<port>.
  const { code, stdout, stderr } = await runCheckCli(['--url', s.url, '--remote-transfer', '--files-host', '127.0.0.1', '--files-port', String(proxy.port), '--files-advertise', '127.0.0.2', '--timeout', '60']);
  t.is(code, 1, `${stdout}\n${stderr}`);
  // Stage-in went through the proxy; stage-out did not.
  t.regex(stdout, /^ok {2}status \(failed after /m);
  t.regex(stdout, /^FAIL verify status: the job ended failed, expected complete; stderr: "stage-out did not deliver \d+ file\(s\): /m);
  t.true(proxy.refusedPosts() > 0);
  const lines = stderr.trimEnd().split('\n');
  t.is(lines.length, 1, stderr);
  t.regex(lines[0] ?? '', /^magnetar check: the server's stage-out to http:\/\/127\.0\.0\.2:\d+ failed: stage-out did not deliver \d+ file\(s\): output(_workdir|_metadata)? \\"[^"\\]+\\" \(remote_transfer\) \(HTTP status 404\)/);
  t.deepEqual(await fs.readdir(s.staging), []);
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

test('the check\'s files endpoint takes a stage-out POST (its file field streamed to disk, bounded) only with the job key', async (t) => {
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
  t.is(e.posts[0]?.bytes, 6);
  t.is(await fs.readFile(e.posts[0]?.file ?? '', 'utf8'), 'result');
  t.is(await post(url.replace(/job_key=[0-9a-f]+/, 'job_key=x'), body), 403);
  t.is(await post(url, Buffer.alloc(2048, 1)), 413);
  t.is(e.posts.length, 1);
  t.deepEqual(e.refused.map((r) => r.status), [403, 413]);
  // Nothing but the one accepted file was written.
  t.deepEqual(await fs.readdir(dir), [path.basename(e.posts[0]?.file ?? '')]);
});

test('the check\'s files endpoint refuses POSTs to paths it does not expect, and bodies without a file field, leaving no trace', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-files-endpoint-'));
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }));
  const e = await startLocalFilesEndpoint({ postDir: dir, acceptPost: (p, type) => p === '/galaxy/out/dataset_1.dat' && type === 'output' });
  t.teardown(async () => e.close());
  const body = Buffer.from('--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nATTACK\r\n--b--\r\n');
  // The right job key, but a path (or a type) the check never asked for: 403, body not read.
  for (const [p, type] of [['/galaxy/out/dataset_2.dat', 'output'], ['/galaxy/out/dataset_1.dat', 'output_workdir'], ['/home/user/.bashrc', 'output'], ['/galaxy/out/../out/dataset_1.dat', 'output']] as const) {
    t.is(await post(e.inputUrl('j1', p, type), body), 403, p);
  }
  // The expected path, but no `file` field, another field only, or a body cut before its closing boundary: 400.
  const url = e.inputUrl('j1', '/galaxy/out/dataset_1.dat', 'output');
  t.is(await post(url, Buffer.from('--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nATTACK\r\n--b--\r\n')), 400);
  t.is(await post(url, Buffer.from('--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nATTACK-no-end')), 400);
  t.is(await post(url, Buffer.from('no multipart at all')), 400);
  t.is(e.posts.length, 0);
  t.is(e.refused.length, 7);
  t.deepEqual(await fs.readdir(dir), []);
  // The expected one is taken.
  t.is(await post(url, body), 200);
  t.is(await fs.readFile(e.posts[0]?.file ?? '', 'utf8'), 'ATTACK');
});

test('multipartField streams the file field whatever the chunking, including bytes that look like a boundary', async (t) => {
  const contents = Buffer.concat([Buffer.from('a\r\n--bo\r\n-'), randomBytes(3000), Buffer.from('\r\n--boundar')]);
  const body = Buffer.concat([
    Buffer.from('preamble\r\n--boundary\r\nContent-Disposition: form-data; name="meta"\r\n\r\nskip me\r\n--boundary\r\n'),
    Buffer.from('Content-Disposition: form-data; name="file"; filename="f"\r\nContent-Type: application/octet-stream\r\n\r\n'),
    contents,
    Buffer.from('\r\n--boundary--\r\n'),
  ]);
  for (const size of [1, 2, 3, 7, 13, 64, 1000, body.length]) {
    const chunks = async function* (): AsyncGenerator<Buffer> {
      for (let i = 0; i < body.length; i += size) yield body.subarray(i, i + size);
    };
    const out: Buffer[] = [];
    for await (const chunk of multipartField(chunks(), 'boundary', 'file')) out.push(Buffer.from(chunk));
    t.true(Buffer.concat(out).equals(contents), `chunks of ${size}`);
  }
  t.is(multipartBoundary('multipart/form-data; boundary="x y"'), 'x y');
  t.is(multipartBoundary('multipart/form-data; charset=utf-8; boundary=abc'), 'abc');
  t.is(multipartBoundary('text/plain; boundary=abc'), undefined);
  t.is(multipartBoundary('multipart/form-data'), undefined);
});

test('check --remote-transfer: pushes the server gave up on (403 from a proxy, tolerated as upstream) fail the check, each missing output named', async (t) => {
  const s = await server(t, true);
  const proxy = await getOnlyProxy(t, 403);
  const run = await runCheck({ url: s.url, remoteTransfer: true, filesHost: '127.0.0.1', filesPort: String(proxy.port), filesAdvertise: '127.0.0.2' });
  t.is(run.code, 1, report(run));
  // The job completes (a 403 is not a stage-out failure for the server), but nothing arrived.
  t.true(run.lines.some((l) => l.startsWith('ok  status (complete after ')), report(run));
  t.true(proxy.refusedPosts() >= 14, report(run));
  t.false(run.lines.some((l) => l.startsWith('ok  stage-out ')), report(run));
  const fail = run.lines.find((l) => l.startsWith('FAIL all expected outputs pushed: never pushed to the files endpoint by the server\'s stage-out: '));
  t.truthy(fail, report(run));
  for (const name of ['output_workdir env_test', 'output dataset_1.dat', 'output dataset_3.dat', 'output COMMAND_VERSION', 'output_metadata tool_stdout']) t.true(fail?.includes(name), name);
  t.is(run.errors.length, 1, report(run));
  t.regex(run.errors[0] ?? '', /^magnetar check: the server's stage-out to http:\/\/127\.0\.0\.2:\d+ is incomplete: never pushed to the files endpoint by the server's stage-out: output_workdir env_test, /);
});
