/**
 * The server-wide transfer limit (staging/transfer-pool.ts): transfers beyond `staging_max_transfers`
 * wait, round-robin by client; an abort while waiting takes no slot; a transfer waiting to retry
 * holds none. Real transfers (worker threads, GETs from the test files endpoint). The limit is
 * module-wide, so these tests run one after another (`test.serial`) in their own file.
 */
import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/log.js';
import { downloadInWorker, type GetOptions } from '../../src/staging/http-get.js';
import { StagingPolicy } from '../../src/staging/policy.js';
import { DEFAULT_MAX_TRANSFERS, setMaxTransfers, transferCounts } from '../../src/staging/transfer-pool.js';
import { startFilesEndpoint, type FilesEndpoint } from '../helpers/files-endpoint.js';
import { waitUntil } from '../helpers/wait.js';

async function fixture(t: { teardown(fn: () => Promise<void> | void): void }) {
  const e = await startFilesEndpoint();
  t.teardown(async () => e.close());
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-pool-'));
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }));
  t.teardown(() => setMaxTransfers(DEFAULT_MAX_TRANSFERS));
  const lines: string[] = [];
  const log = createLogger({ level: 'info', destination: new Writable({ write(c: Buffer, _e, cb) { lines.push(c.toString()); cb(); } }) });
  const options = (overrides: Partial<GetOptions> = {}): GetOptions => ({
    policy: new StagingPolicy({ allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4 }, false),
    retry: { maxRetries: -1, intervalStart: 0, intervalStep: 0, intervalMax: 0 },
    signal: new AbortController().signal,
    log,
    maxBytes: 0,
    ...overrides,
  });
  return { e, dir, lines, options };
}

/** A file at `galaxyPath` whose GET sends half and then waits for the returned release. */
function slowFile(e: FilesEndpoint, galaxyPath: string): { release: () => void } {
  let release!: () => void;
  const released = new Promise<void>((r) => { release = r; });
  e.files.set(galaxyPath, Buffer.alloc(64 * 1024, galaxyPath.length));
  e.faults.set(galaxyPath, [{ kind: 'slow', reached: () => undefined, released }]);
  return { release };
}

const getsOf = (e: FilesEndpoint): (string | null)[] => e.requests.filter((r) => r.method === 'GET').map((r) => r.path);

test.serial('at most staging_max_transfers run at once; the others start as slots free, and all arrive', async (t) => {
  const { e, dir, options } = await fixture(t);
  setMaxTransfers(2);
  const slow = ['/g/1', '/g/2', '/g/3', '/g/4', '/g/5'].map((p) => slowFile(e, p));
  const transfers = [1, 2, 3, 4, 5].map((i) => downloadInWorker(e.inputUrl('1', `/g/${i}`), path.join(dir, `f${i}`), { ...options(), client: 'a' }));
  await waitUntil('two transfers running', async () => getsOf(e).length === 2, 10_000);
  t.deepEqual(transferCounts(), { running: 2, waiting: 3, max: 2 });
  t.deepEqual(getsOf(e).sort(), ['/g/1', '/g/2'], 'the first two (in either order); the others have not connected');
  for (const s of slow) s.release();
  const results = await Promise.all(transfers);
  t.deepEqual(results.map((r) => r.bytes), [65536, 65536, 65536, 65536, 65536]);
  t.deepEqual(transferCounts(), { running: 0, waiting: 0, max: 2 });
  t.is(getsOf(e).length, 5);
});

test.serial('waiting transfers are served round-robin by client: one client\'s backlog does not hold another\'s transfer', async (t) => {
  const { e, dir, options } = await fixture(t);
  setMaxTransfers(1);
  const first = slowFile(e, '/g/a0');
  for (const p of ['/g/a1', '/g/a2', '/g/a3', '/g/b1']) e.files.set(p, Buffer.from(p));
  const a = ['/g/a0', '/g/a1', '/g/a2', '/g/a3'].map((p) => downloadInWorker(e.inputUrl('1', p), path.join(dir, p.slice(3)), { ...options(), client: 'client-a' }));
  await waitUntil('a0 running', async () => getsOf(e).length === 1, 10_000);
  const b = downloadInWorker(e.inputUrl('1', '/g/b1'), path.join(dir, 'b1'), { ...options(), client: 'client-b' });
  await waitUntil('all queued', async () => transferCounts().waiting === 4, 10_000);
  first.release();
  await Promise.all([...a, b]);
  t.deepEqual(getsOf(e), ['/g/a0', '/g/a1', '/g/b1', '/g/a2', '/g/a3'], 'client-b comes next in the round after client-a\'s first waiter');
});

test.serial('an abort while waiting rejects at once, takes no slot and never connects', async (t) => {
  const { e, dir, options } = await fixture(t);
  setMaxTransfers(1);
  const running = slowFile(e, '/g/r');
  e.files.set('/g/w', Buffer.from('w'));
  const first = downloadInWorker(e.inputUrl('1', '/g/r'), path.join(dir, 'r'), options());
  await waitUntil('running', async () => getsOf(e).length === 1, 10_000);
  const controller = new AbortController();
  const waiting = downloadInWorker(e.inputUrl('1', '/g/w'), path.join(dir, 'w'), options({ signal: controller.signal }));
  await waitUntil('queued', async () => transferCounts().waiting === 1, 10_000);
  controller.abort();
  const error: unknown = await waiting.then(() => undefined, (err: unknown) => err);
  t.is((error as Error).name, 'AbortError');
  t.deepEqual(transferCounts(), { running: 1, waiting: 0, max: 1 });
  running.release();
  await first;
  t.deepEqual(getsOf(e), ['/g/r'], 'the aborted transfer never reached the endpoint');
  await t.throwsAsync(fs.access(path.join(dir, 'w')));
  t.deepEqual(transferCounts(), { running: 0, waiting: 0, max: 1 });
});

test.serial('a transfer waiting to retry holds no slot: another transfer runs meanwhile', async (t) => {
  const { e, dir, options, lines } = await fixture(t);
  setMaxTransfers(1);
  e.files.set('/g/x', Buffer.from('x'));
  e.files.set('/g/y', Buffer.from('y'));
  e.faults.set('/g/x', [{ kind: 'status', status: 503 }]);
  const x = downloadInWorker(e.inputUrl('1', '/g/x'), path.join(dir, 'x'), options({ retry: { maxRetries: 2, intervalStart: 1, intervalStep: 0, intervalMax: 1 } }));
  await waitUntil('x failed once', async () => lines.some((l) => l.includes('retrying')), 10_000);
  const y = await downloadInWorker(e.inputUrl('1', '/g/y'), path.join(dir, 'y'), options());
  t.is(y.bytes, 1);
  const xr = await x;
  t.is(xr.attempts, 2);
  t.deepEqual(getsOf(e), ['/g/x', '/g/y', '/g/x'], 'y ran while x waited to retry');
});
