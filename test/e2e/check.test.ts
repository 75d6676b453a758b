import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { report, runCheck, runCheckCli } from '../helpers/check.js';
import { loadConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/log.js';
import { startServer } from '../../src/server.js';
import { makeRoot, managerConfig, startTestServer } from '../helpers/server.js';

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

test('check passes against a fresh server and cleans up after itself', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const run = await runCheck({ url: server.url });
  t.is(run.code, 0, report(run));
  t.is(run.lines[run.lines.length - 1], 'check passed');
  t.deepEqual(run.errors, []);
  for (const expected of [
    'ok  setup', 'ok  upload tool script.sh', 'ok  upload tool subdir/helper.txt', 'ok  upload jobdir tool_script.sh',
    'ok  upload input dataset_0_files/input_subdir/extra', 'ok  upload config config.txt', 'ok  submit', 'ok  status',
    'ok  verify status', 'ok  download output dataset_3.dat', 'ok  download output_metadata tool_stdout',
    'ok  download output dataset_1_files/extra', 'ok  download output_workdir gjson_refer',
    'ok  download of a missing output answers 404', 'ok  clean', 'ok  status after clean',
  ]) {
    t.true(run.lines.some((l) => l.startsWith(expected)), `no line starting with "${expected}":\n${report(run)}`);
  }
  t.false(run.lines.some((l) => l.startsWith('FAIL')));
  // The empty and the big upload were exercised.
  t.true(run.lines.some((l) => /^ok {2}upload unstructured [0-9a-f]{32}\/bwa\/human\.fa \(1\.\d+ MiB, streamed/.test(l)), report(run));
  t.true(run.lines.some((l) => /^ok {2}upload unstructured [0-9a-f]{32}\/bwa\/human\.fa\.fai \(empty\)/.test(l)), report(run));
  t.deepEqual(await fs.readdir(server.staging), []);
});

test('check --cache sends every file through the file cache (as pulsar-check --cache) and passes', async (t) => {
  const root = await makeRoot();
  const server = await startTestServer({ root, app: { fileCacheDir: path.join(root, 'cache') } });
  t.teardown(() => server.stop());
  const run = await runCheck({ url: server.url, cache: true });
  t.is(run.code, 0, report(run));
  t.is(run.lines[run.lines.length - 1], 'check passed');
  t.true(run.lines.some((l) => /^ok {2}upload unstructured [0-9a-f]{32}\/bwa\/human\.fa \(1\.\d+ MiB, streamed from a file, through the file cache/.test(l)), report(run));
  t.true(run.lines.some((l) => /^ok {2}upload config config\.txt \(\d+ bytes\)$/.test(l)), 'the in-memory config goes as a plain upload');
  // 11 files from disk: 11 entries (data + metadata each), no temp file.
  const files = await fs.readdir(path.join(root, 'cache'));
  t.is(files.filter((f) => /^[0-9a-f]{64}$/.test(f)).length, 11, files.join(' '));
  t.is(files.length, 22);
  t.deepEqual(await fs.readdir(server.staging), []);
  // Through a manager prefix, too (the cache is the server's).
  const again = await runCheck({ url: server.url, cache: true, manager: '_default_' });
  t.is(again.code, 0, report(again));
});

test('check --cache against a server without file_cache_dir fails (exit 1) saying so', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const run = await runCheck({ url: server.url, cache: true });
  t.not(run.code, 0, report(run));
  t.regex(report(run), /file cache \(file_cache_dir\) is not configured/);
  t.deepEqual(await fs.readdir(server.staging), [], 'the job was removed');
});

test('check uses the given job id and keeps the job with disableCleanup', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const run = await runCheck({ url: server.url, jobId: 'my-check.1', disableCleanup: true });
  t.is(run.code, 0, report(run));
  t.true(run.lines.includes('ok  setup (job my-check.1)'), report(run));
  t.false(run.lines.some((l) => l.startsWith('ok  clean')));
  const outputs = await fs.readdir(path.join(server.staging, 'my-check.1', 'outputs'));
  t.true(outputs.includes('dataset_1.dat'));
  t.true(outputs.includes('touched.dat'));
});

test('check follows a server-assigned job id (assign_ids: uuid)', async (t) => {
  const server = await startTestServer({ managers: (root) => [managerConfig(root, { assignIds: 'uuid' })] });
  t.teardown(() => server.stop());
  const run = await runCheck({ url: server.url, jobId: 'client-id' });
  t.is(run.code, 0, report(run));
  t.true(run.lines.some((l) => /^ok {2}setup \(the server assigned job id [0-9a-f]{32}\)$/.test(l)), report(run));
});

test('check with a token server: the right token passes, a wrong or missing one exits 2 with a clear message', async (t) => {
  const server = await startTestServer({ app: { privateToken: 's3cret token' } });
  t.teardown(() => server.stop());

  const good = await runCheck({ url: server.url, privateToken: 's3cret token' });
  t.is(good.code, 0, report(good));

  const wrong = await runCheck({ url: server.url, privateToken: 'nope' });
  t.is(wrong.code, 2, report(wrong));
  t.is(wrong.errors.length, 1);
  t.regex(wrong.errors[0]!, /refused the private token \(HTTP 401\)/);
  t.true(wrong.lines.some((l) => l.startsWith('FAIL setup: POST /jobs answered HTTP 401')), report(wrong));
  t.regex(wrong.lines[wrong.lines.length - 1]!, /^check failed: setup: /);

  const missing = await runCheck({ url: server.url });
  t.is(missing.code, 2, report(missing));
  t.regex(missing.errors[0]!, /requires a private token.*--private-token/);

  // A token embedded in the URL is used as the private token (as Galaxy does).
  const embedded = await runCheck({ url: server.url.replace('http://', 'http://s3cret%20token@') });
  t.is(embedded.code, 0, report(embedded));
  t.deepEqual(await fs.readdir(server.staging), []);
});

test('check through a manager prefix', async (t) => {
  const server = await startTestServer({
    managers: (root) => [managerConfig(root), managerConfig(root, { name: 'other', stagingDirectory: path.join(root, 'other') })],
  });
  t.teardown(() => server.stop());
  const run = await runCheck({ url: server.url, manager: 'other', jobId: 'via-other', disableCleanup: true });
  t.is(run.code, 0, report(run));
  // The job ran under the other manager's staging directory, not the default one.
  t.true((await fs.readdir(path.join(server.root, 'other'))).includes('via-other'));
  t.false((await fs.readdir(server.staging)).includes('via-other'));

  const cleaned = await runCheck({ url: server.url, manager: 'other' });
  t.is(cleaned.code, 0, report(cleaned));

  const unknown = await runCheck({ url: server.url, manager: 'nope' });
  t.is(unknown.code, 2, report(unknown));
  t.regex(unknown.errors[0]!, /HTTP 404: no manager named "nope".*--manager/);
});

test('check against a closed port exits 2', async (t) => {
  const port = await closedPort();
  const run = await runCheck({ url: `http://127.0.0.1:${port}/` });
  t.is(run.code, 2, report(run));
  t.is(run.errors.length, 1);
  t.regex(run.errors[0]!, /connection refused/);
  t.true(run.lines.some((l) => l.startsWith('FAIL setup:')));
});

test('check rejects bad options with exit 2', async (t) => {
  const badId = await runCheck({ url: 'http://127.0.0.1:1/', jobId: '../x' });
  t.is(badId.code, 2);
  t.regex(badId.errors[0]!, /--job-id/);
  const badTimeout = await runCheck({ url: 'http://127.0.0.1:1/', timeout: 'soon' });
  t.is(badTimeout.code, 2);
  t.regex(badTimeout.errors[0]!, /--timeout/);
  const badUrl = await runCheck({ url: 'ftp://example.org/' });
  t.is(badUrl.code, 2);
  t.regex(badUrl.errors[0]!, /scheme/);
});

test('check times out (exit 1) when the job never finishes, and removes the job', async (t) => {
  // A manager that never starts a job: the job stays queued.
  const server = await startTestServer({ managers: (root) => [managerConfig(root, { numConcurrentJobs: 0 })] });
  t.teardown(() => server.stop());
  // Long enough for the uploads before the status polls even when the other check tests load both cores.
  const run = await runCheck({ url: server.url, timeout: '10', jobId: 'stuck' });
  t.is(run.code, 1, report(run));
  t.true(run.lines.some((l) => /^FAIL status: the job is still queued after 10 s/.test(l)), report(run));
  t.true(run.lines.some((l) => l.startsWith('..  removed job stuck')), report(run));
  t.regex(run.lines[run.lines.length - 1]!, /^check failed: status: /);
  t.deepEqual(await fs.readdir(server.staging), []);
});

test('check fails (exit 1) on a server whose answers break the protocol', async (t) => {
  // Answers setup with a layout Galaxy cannot work with.
  const fake = http.createServer((req, res) => {
    res.setHeader('Content-Type', 'application/json');
    const dirs = {
      job_id: '1', job_directory: '/s/1', working_directory: '/s/1/work', metadata_directory: '/s/1/metadata',
      outputs_directory: '/s/1/outputs', configs_directory: '/s/1/configs', tools_directory: '/s/1/tool_files',
      inputs_directory: '/s/1/inputs', unstructured_files_directory: '/s/1/unstructured', system_properties: { separator: '/' },
    };
    if (req.method === 'POST' && req.url?.startsWith('/jobs?') === true) res.end(JSON.stringify(dirs));
    else res.end('OK');
  });
  await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => fake.close(() => resolve())));
  const run = await runCheck({ url: `http://127.0.0.1:${(fake.address() as AddressInfo).port}` });
  t.is(run.code, 1, report(run));
  t.true(run.lines.some((l) => l.startsWith('FAIL setup: "working_directory" is "/s/1/work", expected "/s/1/working"')), report(run));
  t.deepEqual(run.errors, []);
});

test('check reports what the tool found wrong (exit 1) when a staged file is altered on the way', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const target = new URL(server.url);
  // A proxy that passes everything through but replaces the body of the dataset_0.dat upload.
  const proxy = http.createServer((req, res) => {
    const tamper = req.url?.includes('name=dataset_0.dat&') === true;
    const headers = { ...req.headers };
    if (tamper) headers['content-length'] = '8';
    const upstream = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    if (tamper) {
      req.resume();
      upstream.end('tampered');
    } else {
      req.pipe(upstream);
    }
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    proxy.close(() => resolve());
    proxy.closeAllConnections();
  }));
  const run = await runCheck({ url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}/` });
  t.is(run.code, 1, report(run));
  t.true(run.lines.some((l) => /^FAIL verify status: the tool reported a problem: the input dataset \(.*dataset_0\.dat\) does not have the contents/.test(l)), report(run));
  t.deepEqual(await fs.readdir(server.staging), []);
});

test('the real CLI: magnetar check --url passes with exit code 0', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const { code, stdout, stderr } = await runCheckCli(['--url', server.url]);
  t.is(code, 0, `${stdout}\n${stderr}`);
  t.regex(stdout, /^check passed$/m);
  t.regex(stdout, /^ok {2}setup /m);
  t.is(stderr, '');
});

test('the real CLI: magnetar check --cache passes against a server with file_cache_dir', async (t) => {
  const root = await makeRoot();
  const server = await startTestServer({ root, app: { fileCacheDir: path.join(root, 'cache') } });
  t.teardown(() => server.stop());
  const { code, stdout, stderr } = await runCheckCli(['--url', server.url, '--cache']);
  t.is(code, 0, `${stdout}\n${stderr}`);
  t.regex(stdout, /through the file cache/);
  t.regex(stdout, /^check passed$/m);
});

// ------------------------------------------------------------------------------------------------
// HTTPS with a generated certificate: --ca and --insecure

/** A server started through the real config loader with `ssl_pem = *`. */
async function generatedTlsServer(t: ExecutionContext): Promise<{ url: string; pem: string; crt: string }> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-check-tls-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  await fs.writeFile(
    path.join(root, 'server.ini'),
    ['[server:main]', 'host = 127.0.0.1', 'ssl_pem = *', '[app:main]', `staging_directory = ${root}/staging`, `persistence_directory = ${root}/persisted`, ''].join('\n'),
  );
  const { config } = await loadConfig({ configFile: path.join(root, 'server.ini'), cwd: root, env: {} });
  const server = await startServer(config, { log: createLogger({ level: 'silent' }), env: process.env, port: 0 });
  t.teardown(() => server.close());
  return { url: server.url, pem: path.join(root, 'magnetar-selfsigned.pem'), crt: path.join(root, 'magnetar-selfsigned.crt') };
}

test('check over HTTPS with a generated certificate: --ca passes, no --ca fails with a certificate error (exit 2), --insecure passes with a warning', async (t) => {
  const server = await generatedTlsServer(t);
  t.true(server.url.startsWith('https://127.0.0.1:'));

  const trusted = await runCheck({ url: server.url, ca: server.pem });
  t.is(trusted.code, 0, report(trusted));
  t.is(trusted.lines[trusted.lines.length - 1], 'check passed');
  t.deepEqual(trusted.errors, []);

  const untrusted = await runCheck({ url: server.url });
  t.is(untrusted.code, 2, report(untrusted));
  t.is(untrusted.errors.length, 1, report(untrusted));
  t.regex(untrusted.errors[0]!, /TLS certificate error: the server's certificate is self-signed and not trusted \(DEPTH_ZERO_SELF_SIGNED_CERT\); pass --ca FILE/);
  t.true(untrusted.lines.some((l) => l.startsWith('FAIL setup:')), report(untrusted));

  const insecure = await runCheck({ url: server.url, insecure: true });
  t.is(insecure.code, 0, report(insecure));
  t.is(insecure.errors.length, 1);
  t.regex(insecure.errors[0]!, /^magnetar check: warning: --insecure: the server's TLS certificate is not verified/);
});

test('check --ca with a file that is missing or holds no certificate exits 2', async (t) => {
  const missing = await runCheck({ url: 'https://127.0.0.1:1/', ca: '/nonexistent/ca.pem' });
  t.is(missing.code, 2);
  t.regex(missing.errors[0]!, /--ca \/nonexistent\/ca\.pem: cannot read it \(ENOENT\)/);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-check-ca-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.writeFile(path.join(dir, 'empty.pem'), 'not a certificate\n');
  const empty = await runCheck({ url: 'https://127.0.0.1:1/', ca: path.join(dir, 'empty.pem') });
  t.is(empty.code, 2);
  t.regex(empty.errors[0]!, /no PEM certificate/);
});

test('the real CLI: magnetar check --ca <server certificate> passes over HTTPS', async (t) => {
  const server = await generatedTlsServer(t);
  const { code, stdout, stderr } = await runCheckCli(['--url', server.url, '--ca', server.crt]);
  t.is(code, 0, `${stdout}\n${stderr}`);
  t.regex(stdout, /^check passed$/m);
  t.is(stderr, '');
});
