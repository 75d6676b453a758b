import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLogger } from '../../src/log.js';
import { JobStore, type JobRecord } from '../../src/jobs/store.js';

const log = createLogger({ level: 'silent' });

function record(id: string, state: JobRecord['state'] = 'setup'): JobRecord {
  const now = new Date().toISOString();
  return {
    id, incarnation: 'i1', manager: '_default_', state, toolId: undefined, toolVersion: undefined, createdAt: now,
    updatedAt: now, launch: undefined, externalId: undefined, returnCode: null, failureReason: undefined,
  };
}

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-store-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

test('records are written before they are visible, and come back after a restart', async (t) => {
  const dir = await tempDir(t);
  const store = new JobStore(dir, '_default_', log);
  await store.open();
  const first = record('1');
  t.true(await store.put(undefined, first));
  const queued = { ...first, state: 'queued' as const };
  t.true(await store.put(first, queued));
  const again = new JobStore(dir, '_default_', log);
  const loaded = await again.open();
  t.is(loaded.length, 1);
  t.is(loaded[0]?.state, 'queued');
});

test('a put against a record that changed meanwhile writes nothing; a deleted job never comes back', async (t) => {
  const dir = await tempDir(t);
  const store = new JobStore(dir, '_default_', log);
  await store.open();
  const first = record('1');
  await store.put(undefined, first);
  await store.delete('1');
  t.false(await store.put(first, { ...first, state: 'cancelled' }), 'a stale writer is refused');
  t.is(store.get('1'), undefined);
  t.deepEqual(await fs.readdir(path.join(dir, '_default_-jobs')), [], 'no record file reappeared');
});

test('a write that fails throws StoreUnavailable and leaves memory as it was', async (t) => {
  const dir = await tempDir(t);
  const store = new JobStore(dir, '_default_', log);
  await store.open();
  const first = record('1');
  await store.put(undefined, first);
  const jobs = path.join(dir, '_default_-jobs');
  await fs.rename(jobs, `${jobs}.away`);
  await fs.writeFile(jobs, 'not a directory');
  await t.throwsAsync(store.put(first, { ...first, state: 'preprocessing' }), { code: 'MAG_ERR_STORE_UNAVAILABLE' });
  t.is(store.get('1'), first, 'the memory copy did not change');
});

test('records that are not job records are logged and not loaded', async (t) => {
  const dir = await tempDir(t);
  const jobs = path.join(dir, '_default_-jobs');
  await fs.mkdir(jobs, { recursive: true });
  await fs.writeFile(path.join(jobs, 'a.json'), '{"id": "a", "state": "exploded"}');
  await fs.writeFile(path.join(jobs, 'b.json'), 'not json');
  await fs.writeFile(path.join(jobs, 'c.json'), JSON.stringify(record('other')));
  const lines: string[] = [];
  const store = new JobStore(dir, '_default_', createLogger({ destination: { write: (l: string) => lines.push(l) } as unknown as NodeJS.WritableStream }));
  t.deepEqual(await store.open(), []);
  t.is(lines.filter((l) => l.includes('job record not loaded')).length, 3);
});

test('liveCount follows records into and out of terminal states, restarts and deletes', async (t) => {
  const dir = await tempDir(t);
  const store = new JobStore(dir, '_default_', log);
  await store.open();
  const a = record('a');
  const b = record('b');
  t.true(await store.put(undefined, a));
  t.true(await store.put(undefined, b));
  t.is(store.liveCount, 2);
  const queued = { ...a, state: 'queued' as const };
  t.true(await store.put(a, queued));
  t.is(store.liveCount, 2);
  const done = { ...queued, state: 'complete' as const };
  t.true(await store.put(queued, done));
  t.is(store.liveCount, 1);
  t.true(store.putInMemory(b, { ...b, state: 'failed' }));
  t.is(store.liveCount, 0);
  await store.delete('a');
  t.is(store.liveCount, 0);
  const again = new JobStore(dir, '_default_', log);
  await again.open();
  // b's failure was never written: it comes back set up, live.
  t.is(again.liveCount, 1);
  t.deepEqual(again.records().map((r) => r.id), ['b']);
});

test('a finished record written with its whole launch is read back keeping only its dynamic file sources', async (t) => {
  const dir = await tempDir(t);
  const records = path.join(dir, '_default_-jobs');
  await fs.mkdir(records, { recursive: true });
  const request = {
    commandLine: 'echo MARKER', submitParams: {}, setupParams: undefined, dependenciesDescription: Array.from({ length: 1000 }, () => ({})),
    env: [{ name: 'A', value: 'MARKER' }], remoteStaging: {}, touchOutputs: ['o'], dynamicFileSources: [{ path: 'galaxy.json' }],
  };
  const launch = { request, commandLine: 'echo MARKER', submitParams: {} };
  await fs.writeFile(path.join(records, 'done.json'), JSON.stringify({ ...record('done', 'complete'), launch }));
  await fs.writeFile(path.join(records, 'live.json'), JSON.stringify({ ...record('live', 'queued'), launch }));
  const store = new JobStore(dir, '_default_', log);
  await store.open();
  const done = store.get('done')!;
  t.deepEqual(done.launch?.request.dynamicFileSources, [{ path: 'galaxy.json' }]);
  t.false(JSON.stringify(done).includes('MARKER'));
  t.is(done.launch?.request.dependenciesDescription, null);
  // A live job keeps its launch: it is needed to run it.
  t.is(store.get('live')!.launch?.commandLine, 'echo MARKER');
});
