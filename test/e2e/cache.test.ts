/**
 * The file cache over real HTTP (PROTOCOL §9.1): PUT → POST → status → upload with cache_token →
 * a job reads it; keying by the authenticated client (never a raw X-Forwarded-For); token
 * validation; concurrent fills; eviction; persistence across a restart; streaming.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { cacheToken } from '../../src/staging/cache.js';
import { collectReply, qs, request, waitForJob, type Reply } from '../helpers/client.js';
import { makeRoot, managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';
import type { AppSection } from '../../src/config/index.js';

const PUBLIC = fileURLToPath(new URL('../../../test/fixtures/public/', import.meta.url));

async function cacheServer(t: ExecutionContext, app: Partial<AppSection> = {}, root?: string): Promise<TestServer> {
  const dir = root ?? (await makeRoot());
  const server = await startTestServer({ root: dir, app: { fileCacheDir: path.join(dir, 'cache'), fileCacheSize: 0, ...app } });
  t.teardown(() => server.stop().catch(() => undefined));
  return server;
}

/** A request from `localAddress` (another loopback address stands for another machine). */
function from(
  base: string,
  method: string,
  target: string,
  options: { localAddress?: string | undefined; body?: Buffer | string | Readable; headers?: Record<string, string> } = {},
): Promise<Reply> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method, path: target, localAddress: options.localAddress ?? '127.0.0.1', headers: options.headers ?? {}, agent: false },
      (res) => collectReply(res, resolve, reject),
    );
    req.on('error', reject);
    const body = options.body;
    if (body instanceof Readable) body.pipe(req);
    else if (body !== undefined) req.end(body);
    else req.end();
  });
}

async function fill(base: string, clientPath: string, body: Buffer | string, localAddress?: string): Promise<string> {
  const put = await from(base, 'PUT', `/cache?${qs({ path: clientPath })}`, { localAddress });
  if (put.status !== 200) throw new Error(`PUT ${put.status}: ${put.text}`);
  const post = await from(base, 'POST', `/cache?${qs({ path: clientPath })}`, { body, localAddress });
  if (post.status !== 200 || post.text !== 'null') throw new Error(`POST ${post.status}: ${post.text}`);
  const status = await from(base, 'GET', `/cache/status?${qs({ path: clientPath })}`, { localAddress });
  const doc = status.json<{ token: string; ready: boolean }>();
  if (!doc.ready) throw new Error('entry not ready after POST');
  return doc.token;
}

function uploadCached(base: string, id: string, name: string, type: string, token: string, localAddress?: string): Promise<Reply> {
  return from(base, 'POST', `/jobs/${id}/files?${qs({ job_id: id, name, type, cache_token: token })}`, { localAddress });
}

async function setup(base: string, id: string, extra: Record<string, string> = {}): Promise<any> {
  const r = await request(base, 'POST', `/jobs?${qs({ job_id: id, ...extra })}`);
  if (r.status !== 200) throw new Error(`setup ${r.status}: ${r.text}`);
  return r.json();
}

async function cacheFiles(server: TestServer): Promise<string[]> {
  return (await fs.readdir(path.join(server.root, 'cache'))).sort();
}

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

test('the whole flow: PUT true, POST, status ready, PUT false, upload with cache_token, the job reads it', async (t) => {
  const server = await cacheServer(t);
  const base = server.url;
  const p = '/galaxy/files/dataset_1.dat';
  const put = await request(base, 'PUT', `/cache?${qs({ path: p })}`);
  t.is(put.status, 200);
  t.is(put.text, 'true');
  t.is((await request(base, 'PUT', `/cache?${qs({ path: p })}`)).text, 'false', 'announced: the next caller waits instead of sending');
  const before = (await request(base, 'GET', `/cache/status?${qs({ path: p })}`)).json();
  t.false(before.ready);
  t.regex(before.token, /^[0-9a-f]{64}$/);
  t.is(before.token, cacheToken('127.0.0.1', p), 'the token is derived from the client address and the path');
  const post = await request(base, 'POST', `/cache?${qs({ path: p })}`, { body: 'cached contents\n' });
  t.is(post.status, 200);
  t.is(post.text, 'null');
  const after = (await request(base, 'GET', `/cache/status?${qs({ path: p })}`)).json();
  t.deepEqual(after, { token: before.token, ready: true });
  t.is((await request(base, 'PUT', `/cache?${qs({ path: p })}`)).text, 'false');

  const config = await setup(base, 'c1');
  const up = await uploadCached(base, 'c1', 'dataset_1.dat', 'input', after.token);
  t.is(up.status, 200, up.text);
  t.is(up.json().path, path.join(config.inputs_directory, 'dataset_1.dat'));
  const sub = await request(base, 'POST', `/jobs/c1/submit?${qs({ job_id: 'c1', command_line: `cat ${config.inputs_directory}/dataset_1.dat > ${config.outputs_directory}/out.txt` })}`);
  t.is(sub.text, 'OK');
  const doc = await waitForJob(base, 'c1');
  t.is(doc.status, 'complete');
  const out = await request(base, 'GET', `/jobs/c1/files?${qs({ job_id: 'c1', name: 'out.txt', type: 'output' })}`);
  t.is(out.text, 'cached contents\n');
  // The entry stays for the next job; under /managers/_default_ the same cache answers.
  t.deepEqual((await request(base, 'GET', `/managers/_default_/cache/status?${qs({ path: p })}`)).json(), after);
  t.is((await request(base, 'GET', `/managers/nope/cache/status?${qs({ path: p })}`)).status, 404);
});

test('without file_cache_dir every cache call is a clear 404 "not configured"', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  for (const [method, target] of [['PUT', '/cache?path=/x'], ['POST', '/cache?path=/x'], ['GET', '/cache/status?path=/x']] as const) {
    const r = await request(server.url, method, target);
    t.is(r.status, 404);
    t.is(r.json().error, 'MAG_ERR_NOT_CONFIGURED');
    t.regex(r.json().message, /file_cache_dir/);
  }
});

test('X-Forwarded-For does not change the key without trusted_proxies; it does behind a trusted proxy', async (t) => {
  const server = await cacheServer(t);
  const p = '/data/x';
  const plain = (await from(server.url, 'GET', `/cache/status?${qs({ path: p })}`)).json().token;
  const spoofed = (await from(server.url, 'GET', `/cache/status?${qs({ path: p })}`, { headers: { 'X-Forwarded-For': '10.9.9.9' } })).json().token;
  t.is(spoofed, plain, 'an untrusted X-Forwarded-For is ignored');
  t.is(plain, cacheToken('127.0.0.1', p));

  const proxied = await cacheServer(t, { trustedProxies: ['127.0.0.1'] });
  const viaProxy = (await from(proxied.url, 'GET', `/cache/status?${qs({ path: p })}`, { headers: { 'X-Forwarded-For': '10.9.9.9' } })).json().token;
  t.is(viaProxy, cacheToken('10.9.9.9', p), 'behind a trusted proxy, the forwarded client is the key');
});

test('two clients get different tokens for one path, and neither can use the other\'s entry', async (t) => {
  const server = await cacheServer(t);
  const p = '/shared/name.dat';
  const a = await fill(server.url, p, 'from A', '127.0.0.1');
  const b = (await from(server.url, 'GET', `/cache/status?${qs({ path: p })}`, { localAddress: '127.0.0.2' })).json();
  t.not(b.token, a);
  t.false(b.ready, 'B sees no entry of its own');
  t.is((await from(server.url, 'PUT', `/cache?${qs({ path: p })}`, { localAddress: '127.0.0.2' })).text, 'true');
  await setup(server.url, 'b1');
  // B learned A's token somehow: it is still not B's entry.
  const stolen = await uploadCached(server.url, 'b1', 'x.dat', 'input', a, '127.0.0.2');
  t.is(stolen.status, 404);
  t.is(stolen.json().error, 'MAG_ERR_FILE_NOT_FOUND');
  await t.throwsAsync(fs.access(path.join(server.staging, 'b1', 'inputs', 'x.dat')));
  // A can.
  t.is((await uploadCached(server.url, 'b1', 'x.dat', 'input', a, '127.0.0.1')).status, 200);
  t.is(await fs.readFile(path.join(server.staging, 'b1', 'inputs', 'x.dat'), 'utf8'), 'from A');
});

test('bad cache tokens are refused with 400 and leave no trace; unknown tokens are 404', async (t) => {
  const server = await cacheServer(t);
  await fill(server.url, '/real', 'real');
  const config = await setup(server.url, 't1');
  const before = await cacheFiles(server);
  for (const token of ['abc', 'g'.repeat(64), '../x', `../${'a'.repeat(61)}`, `${'a'.repeat(64)}/`, 'a'.repeat(65), `${'a'.repeat(63)}\n`]) {
    const r = await uploadCached(server.url, 't1', 'in.dat', 'input', token);
    t.is(r.status, 400, `token ${JSON.stringify(token)}: ${r.text}`);
    t.is(r.json().error, 'MAG_ERR_BAD_REQUEST');
  }
  const unknown = await uploadCached(server.url, 't1', 'in.dat', 'input', 'f'.repeat(64));
  t.is(unknown.status, 404);
  await t.throwsAsync(fs.access(path.join(config.inputs_directory, 'in.dat')));
  t.deepEqual((await fs.readdir(config.job_directory)).filter((n) => n.startsWith('.upload-')), [], 'no temp file left in the job');
  t.deepEqual(await cacheFiles(server), before, 'the cache directory is unchanged');
  // Paths: empty and overlong are refused.
  t.is((await request(server.url, 'PUT', '/cache?path=')).status, 400);
  t.is((await request(server.url, 'PUT', `/cache?${qs({ path: 'x'.repeat(5000) })}`)).status, 400);
});

test('many parallel POSTs of one entry leave one complete entry', async (t) => {
  const server = await cacheServer(t);
  const p = '/big/parallel.bin';
  const bodies = Array.from({ length: 12 }, (_, i) => Buffer.alloc(512 * 1024 + i, String.fromCharCode(65 + i)));
  const replies = await Promise.all(bodies.map((body) => from(server.url, 'POST', `/cache?${qs({ path: p })}`, { body })));
  for (const r of replies) t.is(r.status, 200, r.text);
  const token = cacheToken('127.0.0.1', p);
  const files = await cacheFiles(server);
  t.deepEqual(files, [token, `${token}.json`], 'one entry, no temp files left');
  const stored = await fs.readFile(path.join(server.root, 'cache', token));
  t.true(bodies.some((b) => b.equals(stored)), 'the entry is exactly one of the bodies, never mixed or partial');
  const meta = JSON.parse(await fs.readFile(path.join(server.root, 'cache', `${token}.json`), 'utf8'));
  t.is(meta.size, stored.length);
  // A job copying it gets the whole entry.
  await setup(server.url, 'p1');
  t.is((await uploadCached(server.url, 'p1', 'in.bin', 'input', token)).status, 200);
  t.is(sha(await fs.readFile(path.join(server.staging, 'p1', 'inputs', 'in.bin'))), sha(stored));
});

test('copies racing fills and evictions always read a whole entry', async (t) => {
  const server = await cacheServer(t, { fileCacheSize: 3 * 256 * 1024 });
  const p = '/racy.bin';
  const body = (i: number): Buffer => Buffer.alloc(256 * 1024, i);
  const token = await fill(server.url, p, body(1));
  await setup(server.url, 'r1');
  const work: Promise<unknown>[] = [];
  for (let i = 0; i < 10; i++) {
    work.push(from(server.url, 'POST', `/cache?${qs({ path: p })}`, { body: body(i + 2) }));
    work.push(from(server.url, 'POST', `/cache?${qs({ path: `/other${i}` })}`, { body: body(100 + i) }));
    work.push(uploadCached(server.url, 'r1', `copy${i}.bin`, 'input', token));
  }
  const replies = (await Promise.all(work)) as Reply[];
  for (const r of replies) t.true(r.status === 200 || r.status === 404, `${r.status} ${r.text}`);
  for (let i = 0; i < 10; i++) {
    const copy = await fs.readFile(path.join(server.staging, 'r1', 'inputs', `copy${i}.bin`)).catch(() => undefined);
    if (copy === undefined) continue; // evicted before the copy opened it: a 404, never a partial file
    t.is(copy.length, 256 * 1024);
    t.true(copy.every((byte) => byte === copy[0]), 'one entry\'s bytes, whole');
  }
});

test('eviction: least recently used entries go when a fill would pass file_cache_size', async (t) => {
  const server = await cacheServer(t, { fileCacheSize: 3000 });
  const a = await fill(server.url, '/a', Buffer.alloc(1000, 'a'));
  const b = await fill(server.url, '/b', Buffer.alloc(1000, 'b'));
  const c = await fill(server.url, '/c', Buffer.alloc(1000, 'c'));
  // Using A makes B the least recently used.
  await setup(server.url, 'e1');
  t.is((await uploadCached(server.url, 'e1', 'a', 'input', a)).status, 200);
  const d = await fill(server.url, '/d', Buffer.alloc(1000, 'd'));
  const ready = async (p: string): Promise<boolean> => (await request(server.url, 'GET', `/cache/status?${qs({ path: p })}`)).json().ready;
  t.false(await ready('/b'), 'B (least recently used) was evicted');
  t.true(await ready('/a'));
  t.true(await ready('/c'));
  t.true(await ready('/d'));
  t.deepEqual(await cacheFiles(server), [a, `${a}.json`, c, `${c}.json`, d, `${d}.json`].sort());
  t.is((await uploadCached(server.url, 'e1', 'b', 'input', b)).status, 404);
  t.is((await request(server.url, 'PUT', `/cache?${qs({ path: '/b' })}`)).text, 'true', 'an evicted entry is asked for again');
  // An entry larger than the whole cache is refused, and leaves nothing behind.
  const huge = await request(server.url, 'POST', `/cache?${qs({ path: '/huge' })}`, { body: Buffer.alloc(4000) });
  t.is(huge.status, 413);
  t.deepEqual(await cacheFiles(server), [a, `${a}.json`, c, `${c}.json`, d, `${d}.json`].sort());
});

test('entries survive a restart; damaged ones are dropped with a log line', async (t) => {
  const root = await makeRoot();
  const first = await startTestServer({ root, app: { fileCacheDir: path.join(root, 'cache'), fileCacheSize: 0 } });
  const keep = await fill(first.url, '/keep', 'kept bytes');
  const damaged = await fill(first.url, '/damaged', 'twelve bytes');
  const noMeta = await fill(first.url, '/nometa', 'x');
  await first.close();
  await fs.writeFile(path.join(root, 'cache', `${damaged}.json`), '{not json');
  await fs.rm(path.join(root, 'cache', `${noMeta}.json`));
  await fs.writeFile(path.join(root, 'cache', '.fill-0123456789abcdef.part'), 'half a fil');
  const second = await cacheServer(t, {}, root);
  t.true((await request(second.url, 'GET', `/cache/status?${qs({ path: '/keep' })}`)).json().ready);
  t.false((await request(second.url, 'GET', `/cache/status?${qs({ path: '/damaged' })}`)).json().ready);
  t.is((await request(second.url, 'PUT', `/cache?${qs({ path: '/keep' })}`)).text, 'false');
  t.deepEqual(await cacheFiles(second), [keep, `${keep}.json`].sort(), 'damaged entries and temp files removed');
  t.true(second.logLines.some((l) => l.includes('dropping a damaged or stray entry')));
  await setup(second.url, 'k1');
  t.is((await uploadCached(second.url, 'k1', 'k', 'input', keep)).status, 200);
  t.is(await fs.readFile(path.join(second.staging, 'k1', 'inputs', 'k'), 'utf8'), 'kept bytes');
});

test.serial('a 50 MiB entry streams in and out without the server holding it in memory', async (t) => {
  const server = await cacheServer(t);
  const size = 50 * 1024 * 1024;
  const pauseAt = 40 * 1024 * 1024;
  const chunk = Buffer.alloc(1024 * 1024, 7);
  const hash = createHash('sha256');
  for (let i = 0; i < 50; i++) hash.update(chunk);
  v8.setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  let resume: () => void = () => undefined;
  const resumed = new Promise<void>((r) => (resume = r));
  let sent = 0;
  const body = new Readable({
    read() {
      if (sent >= size) {
        this.push(null);
        return;
      }
      if (sent === pauseAt) {
        // Hold the rest back until the server's memory has been measured.
        void resumed.then(() => {
          sent += chunk.length;
          this.push(chunk);
        });
        return;
      }
      sent += chunk.length;
      this.push(chunk);
    },
  });
  t.is((await request(server.url, 'PUT', `/cache?${qs({ path: '/big' })}`)).text, 'true');
  // Warm the code paths (first-use compilation and pools are not the file's bytes).
  await fill(server.url, '/warm', Buffer.alloc(4 * 1024 * 1024, 1));
  gc();
  const retained = (): number => {
    const m = process.memoryUsage();
    return m.heapUsed + m.external + m.arrayBuffers;
  };
  const before = retained();
  const posted = from(server.url, 'POST', `/cache?${qs({ path: '/big' })}`, { body });
  // The server has written 40 MiB to its temp file and the client waits: whatever the server
  // held in memory now, it holds because it keeps it (after a full GC).
  await waitUntil('40 MiB on disk', async () => {
    for (const f of await cacheFiles(server)) {
      if (f.startsWith('.fill-') && (await fs.stat(path.join(server.root, 'cache', f)).catch(() => undefined))?.size === pauseAt) return true;
    }
    return false;
  }, 60_000);
  gc();
  const grown = retained() - before;
  resume();
  const post = await posted;
  t.is(post.status, 200, post.text);
  // A server that buffered the body would hold at least the 40 MiB; a streaming one holds its
  // stream buffers (a few MiB, more with allocator noise).
  t.true(grown < 24 * 1024 * 1024, `memory held grew by ${grown} bytes with 40 MiB of the file received`);
  t.log(`memory held with 40 MiB received: ${(grown / 1024 / 1024).toFixed(1)} MiB`);
  const token = cacheToken('127.0.0.1', '/big');
  await setup(server.url, 'm1');
  t.is((await uploadCached(server.url, 'm1', 'big', 'input', token)).status, 200);
  const copy = createHash('sha256');
  const handle = await fs.open(path.join(server.staging, 'm1', 'inputs', 'big'));
  for await (const c of handle.createReadStream()) copy.update(c as Buffer);
  t.is(copy.digest('hex'), hash.digest('hex'));
});

test('public mode: a tool file from the cache is hash-checked like any upload', async (t) => {
  const root = await makeRoot();
  const server = await startTestServer({
    root,
    app: { toolConfigFiles: [path.join(PUBLIC, 'toolbox.xml')], allowUnsafeEnv: false, fileCacheDir: path.join(root, 'cache'), fileCacheSize: 0 },
    managers: (r) => [managerConfig(r, { assignIds: 'uuid' })],
  });
  t.teardown(() => server.stop());
  const good = await fill(server.url, '/tools/helper.sh', await fs.readFile(path.join(PUBLIC, 'tools/mag_wrap/scripts/helper.sh')));
  const canary = path.join(root, 'CANARY');
  const evil = await fill(server.url, '/tools/evil.sh', `#!/bin/sh\ntouch ${canary}\n`);
  const config = await setup(server.url, '77', { tool_id: 'mag_wrap' });
  const tampered = await uploadCached(server.url, config.job_id, 'scripts/helper.sh', 'tool', evil);
  t.is(tampered.status, 403);
  t.regex(tampered.json().message, /differs from the toolbox/);
  const stored = await fs.readdir(config.tools_directory, { recursive: true, withFileTypes: true });
  t.deepEqual(stored.filter((e) => !e.isDirectory()).map((e) => e.name), [], 'nothing stored in tool_files');
  t.deepEqual((await fs.readdir(config.job_directory)).filter((n) => n.startsWith('.upload-')), []);
  const ok = await uploadCached(server.url, config.job_id, 'scripts/helper.sh', 'tool', good);
  t.is(ok.status, 200, ok.text);
  t.deepEqual(await fs.readFile(path.join(config.tools_directory, 'scripts/helper.sh')), await fs.readFile(path.join(PUBLIC, 'tools/mag_wrap/scripts/helper.sh')));
  await t.throwsAsync(fs.access(canary));
});

test('a fill cut off mid-body leaves no trace, and the next PUT asks for the file again', async (t) => {
  const server = await cacheServer(t);
  const p = '/cut/off.bin';
  t.is((await request(server.url, 'PUT', `/cache?${qs({ path: p })}`)).text, 'true');
  t.is((await request(server.url, 'PUT', `/cache?${qs({ path: p })}`)).text, 'false');
  const url = new URL(server.url);
  const req = http.request({ host: url.hostname, port: url.port, method: 'POST', path: `/cache?${qs({ path: p })}`, headers: { 'Content-Length': '1000000' }, agent: false });
  req.on('error', () => undefined);
  req.write(Buffer.alloc(1000, 1));
  const temps = async (): Promise<string[]> => (await cacheFiles(server)).filter((f) => f.startsWith('.fill-'));
  await waitUntil('the fill started', async () => (await temps()).length === 1, 10_000);
  req.destroy();
  await waitUntil('the temp file is gone', async () => (await temps()).length === 0, 10_000);
  t.deepEqual(await cacheFiles(server), []);
  t.false((await request(server.url, 'GET', `/cache/status?${qs({ path: p })}`)).json().ready);
  t.is((await request(server.url, 'PUT', `/cache?${qs({ path: p })}`)).text, 'true', 'asked again after the failed fill');
});

test('a lower file_cache_size at restart evicts the least recently used entries first', async (t) => {
  const root = await makeRoot();
  const first = await startTestServer({ root, app: { fileCacheDir: path.join(root, 'cache'), fileCacheSize: 0 } });
  const old = await fill(first.url, '/old', Buffer.alloc(1000, 'o'));
  const used = await fill(first.url, '/used', Buffer.alloc(1000, 'u'));
  const recent = await fill(first.url, '/recent', Buffer.alloc(1000, 'r'));
  // Recency is the data file's mtime: make the order explicit (used last, old first).
  await fs.utimes(path.join(root, 'cache', old), new Date(1_000_000), new Date(1_000_000));
  await fs.utimes(path.join(root, 'cache', recent), new Date(2_000_000), new Date(2_000_000));
  await fs.utimes(path.join(root, 'cache', used), new Date(3_000_000), new Date(3_000_000));
  await first.close();
  const second = await cacheServer(t, { fileCacheSize: 2000 }, root);
  t.deepEqual(await cacheFiles(second), [recent, `${recent}.json`, used, `${used}.json`].sort());
  t.false((await request(second.url, 'GET', `/cache/status?${qs({ path: '/old' })}`)).json().ready);
});

test('the cache routes need the private token like every other route', async (t) => {
  const server = await cacheServer(t, { privateToken: 'tok' });
  for (const [method, target] of [['PUT', '/cache?path=/x'], ['POST', '/cache?path=/x'], ['GET', '/cache/status?path=/x']] as const) {
    const r = await request(server.url, method, target, method === 'POST' ? { body: 'data' } : {});
    t.is(r.status, 401, `${method} ${target}`);
    t.is(r.json().error, 'MAG_ERR_UNAUTHORIZED');
  }
  t.deepEqual(await cacheFiles(server), [], 'nothing stored without the token');
  t.is((await request(server.url, 'PUT', '/cache?path=/x&private_token=tok')).text, 'true');
});
