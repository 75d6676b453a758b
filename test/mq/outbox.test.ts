import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLogger } from '../../src/log.js';
import { Outbox, type EntryDraft } from '../../src/mq/outbox.js';

const log = createLogger({ level: 'silent' });

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-outbox-'));
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  return path.join(root, 'outbox');
}

function draft(jobId: string, status: string, options: { terminal?: boolean; requested?: boolean; incarnation?: string; extra?: string } = {}): EntryDraft {
  const document = { complete: options.terminal === true ? 'true' : 'false', status, job_id: jobId, ...(options.extra === undefined ? {} : { stdout: options.extra }) };
  return {
    jobId,
    incarnation: options.incarnation ?? 'inc1',
    status,
    terminal: options.terminal ?? false,
    requested: options.requested ?? false,
    payload: JSON.stringify(document),
    document,
  };
}

test('entries are written as <20-digit seq>-<32 hex>.json, read back in seq order after a reopen, and removed', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, log);
  t.true(outbox.fresh);
  const a = await outbox.append(draft('j1', 'queued'));
  const b = await outbox.append(draft('j2', 'running'));
  // Big payloads are not kept in memory: read back from the file when published.
  const c = await outbox.append(draft('j1', 'complete', { terminal: true, extra: 'x'.repeat(100_000) }));
  t.true(a.seq < b.seq && b.seq < c.seq);
  t.not(a.cached, undefined);
  t.is(c.cached, undefined);
  const names = (await fs.readdir(dir)).filter((n) => n.endsWith('.json')).sort();
  t.deepEqual(names, [a.file, b.file, c.file]);
  for (const name of names) t.regex(name, /^\d{20}-[0-9a-f]{32}\.json$/);
  const onDisk = JSON.parse(await fs.readFile(path.join(dir, c.file), 'utf8')) as Record<string, unknown>;
  t.like(onDisk, { id: c.id, seq: c.seq, jobId: 'j1', incarnation: 'inc1', status: 'complete', terminal: true, payload: { status: 'complete' } });
  t.true(outbox.isMarked('j1', 'inc1'), 'a pending terminal entry is in the ledger');

  const again = await Outbox.open(dir, log);
  t.deepEqual([...again.entries()].map((e) => e.file), names);
  t.true(again.isMarked('j1', 'inc1'));
  const loaded = await again.load([...again.entries()][2]!);
  t.is(loaded?.payload['stdout'], 'x'.repeat(100_000));
  t.is(loaded?.id, c.id);
  const next = await again.append(draft('j3', 'queued'));
  t.true(next.seq > c.seq, 'seqs are not reused after a reopen');

  for (const entry of [...again.entries()]) await again.remove(entry);
  t.is(again.size, 0);
  t.deepEqual(await fs.readdir(path.join(dir, 'delivered')), ['j1']);
  t.is(await fs.readFile(path.join(dir, 'delivered', 'j1'), 'utf8'), 'inc1');
  const third = await Outbox.open(dir, log);
  t.is(third.size, 0);
  t.true(third.isMarked('j1', 'inc1'), 'the marker keeps the job in the ledger once its entry is gone');
  t.false(third.isMarked('j1', 'inc2'), 'a new incarnation of the id is a new job');
});

test('answers to status requests are not terminal updates: no ledger mark, no marker', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, log);
  const answer = await outbox.append(draft('j', 'complete', { terminal: true, requested: true }));
  t.false(outbox.isMarked('j', 'inc1'));
  t.is((await outbox.load(answer))?.requested, true);
  await outbox.remove(answer);
  t.deepEqual(await fs.readdir(path.join(dir, 'delivered')), []);
});

test('temp files are removed at open; unreadable entries are set aside', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, log);
  const good = await outbox.append(draft('j', 'queued'));
  await fs.writeFile(path.join(dir, `${good.file}.abcd1234.tmp`), '{"partial');
  await fs.writeFile(path.join(dir, 'delivered', '.j.0000.tmp'), 'x');
  const torn = `${'0'.repeat(19)}1-${'d'.repeat(32)}.json`;
  await fs.writeFile(path.join(dir, torn), '{"id":"ddd');
  const again = await Outbox.open(dir, log);
  t.is(again.size, 1);
  t.is(again.setAside, 1);
  t.deepEqual((await fs.readdir(dir)).sort(), [good.file, `${torn}.bad`, 'delivered'].sort());
  t.deepEqual(await fs.readdir(path.join(dir, 'delivered')), []);

  // An entry that goes bad after open is set aside when it is to be published.
  const pending = [...again.entries()][0]!;
  pending.cached = undefined;
  await fs.writeFile(path.join(dir, good.file), '[]');
  t.is(await again.load(pending), undefined);
  t.is(again.size, 0);
  t.is(again.setAside, 2);
  t.true((await fs.readdir(dir)).includes(`${good.file}.bad`));
});

test('prune forgets delivered jobs that are no longer known, but never a pending terminal entry', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, log);
  for (const id of ['gone', 'kept']) await outbox.remove(await outbox.append(draft(id, 'complete', { terminal: true })));
  await outbox.append(draft('pending', 'failed', { terminal: true }));
  t.is(outbox.marked, 3);
  t.is(await outbox.prune((jobId) => jobId === 'kept'), 1);
  t.is(outbox.marked, 2);
  t.false(outbox.isMarked('gone', 'inc1'));
  t.true(outbox.isMarked('pending', 'inc1'));
  t.deepEqual(await fs.readdir(path.join(dir, 'delivered')), ['kept']);
});

test('settle marks a job delivered without an entry; markInitialized ends the fresh state for good', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, log);
  await outbox.settle('old', 'inc9');
  await outbox.markInitialized();
  t.false(outbox.fresh);
  t.is(outbox.size, 0);
  const again = await Outbox.open(dir, log);
  t.false(again.fresh);
  t.true(again.isMarked('old', 'inc9'));
});
