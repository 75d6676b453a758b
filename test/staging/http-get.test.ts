import test from 'ava';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/log.js';
import { downloadInWorker, downloadToFile, partialPathFor, type GetOptions } from '../../src/staging/http-get.js';
import { StagingPolicy } from '../../src/staging/policy.js';
import { startFilesEndpoint, JOB_KEY } from '../helpers/files-endpoint.js';
import { waitUntil } from '../helpers/wait.js';

async function fixture(t: { teardown(fn: () => Promise<void>): void }) {
  const e = await startFilesEndpoint();
  t.teardown(async () => e.close());
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-get-'));
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }));
  const lines: string[] = [];
  const log = createLogger({ level: 'info', destination: new Writable({ write(c: Buffer, _e, cb) { lines.push(c.toString()); cb(); } }) });
  const options = (overrides: Partial<GetOptions> = {}): GetOptions => ({
    policy: new StagingPolicy({ allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4 }, false),
    retry: { maxRetries: 2, intervalStart: 0.01, intervalStep: 0, intervalMax: 0.01 },
    signal: new AbortController().signal,
    log,
    maxBytes: 0,
    ...overrides,
  });
  return { e, dir, lines, options };
}

test('a host name is resolved through the checked lookup and fetched', async (t) => {
  const { e, dir, options } = await fixture(t);
  const body = randomBytes(100_000);
  e.files.set('/g/x', body);
  const url = e.inputUrl('1', '/g/x').replace('127.0.0.1', 'localhost');
  const dest = path.join(dir, 'x');
  const result = await downloadToFile(url, dest, options());
  t.is(result.bytes, body.length);
  t.true((await fs.readFile(dest)).equals(body));
  await t.throwsAsync(fs.access(partialPathFor(dest)));
});

test('a partial file already whole (416 with the same total) is completed without a body', async (t) => {
  const { e, dir, options } = await fixture(t);
  const body = Buffer.from('0123456789');
  e.files.set('/g/x', body);
  const dest = path.join(dir, 'x');
  await fs.writeFile(partialPathFor(dest), body);
  await downloadToFile(e.inputUrl('1', '/g/x'), dest, options());
  t.true((await fs.readFile(dest)).equals(body));
  t.deepEqual(e.requests.map((r) => [r.range, r.status]), [['bytes=10-', 416]]);
});

test('a file over maxBytes is refused without retry; a wrong job key is a 403 without retry', async (t) => {
  const { e, dir, options, lines } = await fixture(t);
  e.files.set('/g/x', Buffer.alloc(5000));
  await t.throwsAsync(downloadToFile(e.inputUrl('1', '/g/x'), path.join(dir, 'x'), options({ maxBytes: 4096 })), { message: /larger than the 4096 bytes/ });
  t.is(e.requests.length, 1);
  const wrongKey = e.inputUrl('1', '/g/x').replace(JOB_KEY, 'wrong');
  await t.throwsAsync(downloadToFile(wrongKey, path.join(dir, 'y'), options()), { message: /HTTP 403 from files endpoint http:\/\/127\.0\.0\.1:\d+\/api\/jobs\/1\/files$/ });
  t.is(e.requests.length, 2);
  t.false(lines.join('').includes(JOB_KEY));
});

test('retries use up the policy and the last error is thrown; each retry is logged without the query', async (t) => {
  const { e, dir, options, lines } = await fixture(t);
  e.files.set('/g/x', Buffer.from('x'));
  e.faults.set('/g/x', [{ kind: 'status', status: 502 }, { kind: 'status', status: 503 }, { kind: 'status', status: 504 }]);
  await t.throwsAsync(downloadToFile(e.inputUrl('1', '/g/x'), path.join(dir, 'x'), options()), { message: /HTTP 504/ });
  t.is(e.requests.length, 3);
  t.is(lines.filter((l) => l.includes('retrying')).length, 2);
  t.false(lines.join('').includes(JOB_KEY));
  t.false(lines.join('').includes('path=%2F'));
});

test('a connection refused is retried, then fails', async (t) => {
  const { e, dir, options } = await fixture(t);
  const url = e.inputUrl('1', '/g/x');
  await e.close();
  await t.throwsAsync(downloadToFile(url, path.join(dir, 'x'), options()), { message: /ECONNREFUSED/ });
});

for (const [where, get] of [['', downloadToFile], ['in a worker: ', downloadInWorker]] as const) {
  test(`${where}an abort stops the transfer (AbortError) and keeps the partial file for a later resume`, async (t) => {
    const { e, dir, options } = await fixture(t);
    e.files.set('/g/x', randomBytes(256 * 1024));
    let reached!: () => void;
    const reachedP = new Promise<void>((r) => { reached = r; });
    e.faults.set('/g/x', [{ kind: 'slow', reached, released: new Promise(() => undefined) }]);
    const controller = new AbortController();
    const dest = path.join(dir, 'x');
    const transfer = get(e.inputUrl('1', '/g/x'), dest, options({ signal: controller.signal }));
    await reachedP;
    await waitUntil('bytes on disk', async () => ((await fs.stat(partialPathFor(dest)).catch(() => undefined))?.size ?? 0) > 0, 10_000);
    controller.abort();
    const error: unknown = await transfer.then(() => undefined, (err: unknown) => err);
    t.is((error as { name?: string }).name, 'AbortError');
    await t.throwsAsync(fs.access(dest));
    t.true((await fs.stat(partialPathFor(dest))).size > 0, 'what arrived is kept for a resume');
  });
}

// The same transfers through the worker pool (stage-in's path): results, errors and aborts cross the
// thread boundary as themselves, and the policy (held by the main thread) still decides.

test('in a worker: a file arrives byte for byte; a 403 keeps its message; maxBytes refuses without retry; no job key in the log', async (t) => {
  const { e, dir, options, lines } = await fixture(t);
  const body = randomBytes(300_000);
  e.files.set('/g/x', body);
  const dest = path.join(dir, 'x');
  const result = await downloadInWorker(e.inputUrl('1', '/g/x').replace('127.0.0.1', 'localhost'), dest, options());
  t.is(result.bytes, body.length);
  t.true((await fs.readFile(dest)).equals(body));
  const wrongKey = e.inputUrl('1', '/g/x').replace(JOB_KEY, 'wrong');
  await t.throwsAsync(downloadInWorker(wrongKey, path.join(dir, 'y'), options()), { message: /HTTP 403 from files endpoint http:\/\/127\.0\.0\.1:\d+\/api\/jobs\/1\/files$/ });
  await t.throwsAsync(downloadInWorker(e.inputUrl('1', '/g/x'), path.join(dir, 'z'), options({ maxBytes: 4096 })), { message: /larger than the 4096 bytes/ });
  e.faults.set('/g/r', [{ kind: 'status', status: 502 }]);
  e.files.set('/g/r', Buffer.from('r'));
  await downloadInWorker(e.inputUrl('1', '/g/r'), path.join(dir, 'r'), options());
  t.is(lines.filter((l) => l.includes('retrying')).length, 1, 'the retry is logged by the main thread');
  t.false(lines.join('').includes(JOB_KEY));
});

test('in a worker: a host resolving to loopback is refused when private addresses are off, before anything is fetched', async (t) => {
  const { e, dir, options } = await fixture(t);
  e.files.set('/g/x', Buffer.from('x'));
  const policy = new StagingPolicy({ allowedEndpoints: [], copyRoots: [], privateAddresses: false, concurrency: 4 }, false);
  const dest = path.join(dir, 'x');
  const error: unknown = await downloadInWorker(e.inputUrl('1', '/g/x').replace('127.0.0.1', 'localhost'), dest, options({ policy })).then(() => undefined, (err: unknown) => err);
  t.truthy(error);
  t.regex(String((error as Error).message), /address|private|loopback/i);
  t.is(e.requests.length, 0, 'the endpoint saw no request');
  await t.throwsAsync(fs.access(dest));
});
