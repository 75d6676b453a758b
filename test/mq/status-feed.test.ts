import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import type { JobService } from '../../src/jobs/service.js';
import { createLogger } from '../../src/log.js';
import { StatusFeed } from '../../src/mq/status-feed.js';
import type { OutboxEntry, StatusPublisher } from '../../src/mq/types.js';
import { qs, request } from '../helpers/client.js';
import { makeRoot, startTestServer, type TestServer } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';

/**
 * The status feed against a real server (real JobService, real local jobs, real files) and a
 * publisher of our own that records what it is given, fails on demand, or holds its answers.
 */

const LIFECYCLE = ['preprocessing', 'queued', 'running', 'postprocessing', 'complete', 'failed', 'cancelled', 'lost'];
const TERMINAL = new Set(['complete', 'failed', 'cancelled', 'lost']);

class TestPublisher implements StatusPublisher {
  ready = true;
  /** Rejects every publish while set. */
  failing = false;
  /** Publishes in the order they were called. */
  readonly calls: OutboxEntry[] = [];
  /** Publishes that resolved (confirmed). */
  readonly confirmed: OutboxEntry[] = [];
  /** Publishes called and not yet answered, per job. */
  readonly #inFlight = new Map<string, number>();
  /** Times a publish was called for a job that had one in flight already. */
  overlaps = 0;
  maxInFlight = 0;
  #held: (() => void)[] | undefined;

  /** Hold every answer until `release`. */
  hold(): void {
    this.#held ??= [];
  }

  /** Answer the publishes held now (later ones are held again). */
  release(): void {
    const held = this.#held ?? [];
    if (this.#held !== undefined) this.#held = [];
    for (const go of held) go();
  }

  async publish(entry: OutboxEntry): Promise<void> {
    this.calls.push(entry);
    if (this.failing) throw new Error('broker unreachable (test)');
    if (this.#inFlight.has(entry.jobId)) this.overlaps++;
    this.#inFlight.set(entry.jobId, (this.#inFlight.get(entry.jobId) ?? 0) + 1);
    let total = 0;
    for (const n of this.#inFlight.values()) total += n;
    this.maxInFlight = Math.max(this.maxInFlight, total);
    try {
      if (this.#held !== undefined) await new Promise<void>((resolve) => this.#held!.push(resolve));
    } finally {
      const left = (this.#inFlight.get(entry.jobId) ?? 1) - 1;
      if (left > 0) this.#inFlight.set(entry.jobId, left);
      else this.#inFlight.delete(entry.jobId);
    }
    this.confirmed.push(entry);
  }

  of(jobId: string): OutboxEntry[] {
    return this.confirmed.filter((e) => e.jobId === jobId);
  }
}

interface Harness {
  readonly root: string;
  server: TestServer;
  readonly outbox: string;
  readonly logLines: string[];
  service(): JobService;
  open(options?: { maxPending?: number }): Promise<StatusFeed>;
  /** A feed with a new test publisher attached. */
  attached(): Promise<{ feed: StatusFeed; publisher: TestPublisher }>;
  restart(): Promise<void>;
}

/** A real server whose feed writes under `<root>/outbox`; `restart` stops it and starts another on the same files. */
async function harness(t: ExecutionContext): Promise<Harness> {
  const root = await makeRoot();
  const outbox = path.join(root, 'persisted', '_default_-status-outbox');
  const logLines: string[] = [];
  const log = createLogger({
    level: 'info',
    destination: new Writable({
      write(chunk: Buffer, _enc, cb) {
        logLines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
        cb();
      },
    }),
  });
  const feeds: StatusFeed[] = [];
  const h: Harness = {
    root,
    outbox,
    logLines,
    server: await startTestServer({ root }),
    service() {
      const service = h.server.services.get('_default_');
      if (service === undefined) throw new Error('no default manager');
      return service;
    },
    async open(options = {}) {
      const feed = await StatusFeed.open(h.service(), { dir: outbox, log, drainIntervalMs: 50, ...options });
      feeds.push(feed);
      return feed;
    },
    async attached() {
      const feed = await h.open();
      const publisher = new TestPublisher();
      feed.attach(publisher);
      return { feed, publisher };
    },
    async restart() {
      for (const feed of feeds.splice(0)) await feed.close();
      await h.server.close();
      h.server = await startTestServer({ root });
    },
  };
  t.teardown(async () => {
    for (const feed of feeds) await feed.close();
    await h.server.close().catch(() => undefined);
    await fs.rm(root, { recursive: true, force: true });
  });
  return h;
}

async function submit(url: string, id: string, command: string): Promise<void> {
  const setup = await request(url, 'POST', `/jobs?${qs({ job_id: id })}`);
  if (setup.status !== 200) throw new Error(setup.text);
  const submitted = await request(url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command })}`);
  if (submitted.text !== 'OK') throw new Error(submitted.text);
}

/** A job whose submit is refused (an unsupported server-side staging action): it ends failed in preprocessing. */
async function submitRefused(url: string, id: string): Promise<void> {
  const setup = await request(url, 'POST', `/jobs?${qs({ job_id: id })}`);
  if (setup.status !== 200) throw new Error(setup.text);
  const remote = JSON.stringify({ setup: [{ name: 'a', type: 'input', action: { action_type: 'remote_scp_transfer', path: '/x' } }] });
  const submitted = await request(url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: 'true', remote_staging: remote })}`);
  if (submitted.status !== 403) throw new Error(`expected a refusal: ${submitted.status} ${submitted.text}`);
}

async function httpStatus(url: string, id: string): Promise<unknown> {
  return (await request(url, 'GET', `/jobs/${id}/status?job_id=${id}`)).json();
}

const until = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> =>
  waitUntil(what, async () => check(), timeoutMs, 20);

/** The job's states in outbox order, and how many of them are terminal. */
function statuses(entries: readonly OutboxEntry[]): string[] {
  return entries.map((e) => e.status);
}

function assertLifecycle(t: ExecutionContext, entries: readonly OutboxEntry[], last: string): void {
  const seen = statuses(entries);
  t.is(seen[0], 'preprocessing', seen.join(','));
  t.is(seen.at(-1), last, seen.join(','));
  t.is(seen.filter((s) => TERMINAL.has(s)).length, 1, `exactly one terminal update: ${seen.join(',')}`);
  for (let i = 1; i < seen.length; i++) t.true(LIFECYCLE.indexOf(seen[i]!) > LIFECYCLE.indexOf(seen[i - 1]!), `lifecycle order: ${seen.join(',')}`);
  for (const e of entries) {
    t.is(e.terminal, TERMINAL.has(e.status));
    t.not(e.requested, true);
    if (!e.terminal) t.deepEqual(e.payload, { complete: 'false', status: e.status, job_id: e.jobId });
  }
}

async function entryFiles(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((n) => n.endsWith('.json')).sort();
}

/** Has every one of these jobs its unsolicited terminal entry in the outbox directory? */
async function terminalWritten(dir: string, ids: readonly string[]): Promise<boolean> {
  const docs = await Promise.all((await entryFiles(dir)).map(async (n) => JSON.parse(await fs.readFile(path.join(dir, n), 'utf8')) as OutboxEntry));
  return ids.every((id) => docs.some((d) => d.jobId === id && d.terminal && d.requested !== true));
}

test('every state change of a job is published in lifecycle order, the terminal one once, with the HTTP status document', async (t) => {
  const h = await harness(t);
  const { feed, publisher } = await h.attached();
  await submit(h.server.url, 'ok', 'sleep 1; echo hello');
  await submit(h.server.url, 'bad', 'echo oops >&2; exit 3');
  await submitRefused(h.server.url, 'refused');
  const ids = ['ok', 'bad', 'refused'];
  await until('the terminal updates', () => ids.every((id) => publisher.of(id).some((e) => e.terminal)));
  await until('the outbox to drain', () => feed.pending === 0);

  const ok = publisher.of('ok');
  assertLifecycle(t, ok, 'complete');
  t.deepEqual(statuses(ok), ['preprocessing', 'queued', 'running', 'postprocessing', 'complete']);
  const complete = ok.at(-1)!;
  t.deepEqual(complete.payload, await httpStatus(h.server.url, 'ok'), 'the terminal payload is what the HTTP status route answers');
  t.is(complete.payload['job_stdout'], 'hello\n');

  // A command that exits non-zero completed (Galaxy reads its return code), as over HTTP.
  const bad = publisher.of('bad');
  assertLifecycle(t, bad, 'complete');
  t.deepEqual(bad.at(-1)!.payload, await httpStatus(h.server.url, 'bad'));
  t.is(bad.at(-1)!.payload['returncode'], 3);

  const refused = publisher.of('refused');
  assertLifecycle(t, refused, 'failed');
  t.deepEqual(statuses(refused), ['preprocessing', 'failed']);
  t.deepEqual(refused.at(-1)!.payload, await httpStatus(h.server.url, 'refused'));

  // Every entry left the outbox, and the ledger remembers both finished jobs.
  t.deepEqual(await entryFiles(h.outbox), []);
  t.deepEqual((await fs.readdir(path.join(h.outbox, 'delivered'))).sort(), ['bad', 'ok', 'refused']);
  t.is(feed.delivered, 3);
  t.is(new Set(publisher.confirmed.map((e) => e.id)).size, publisher.confirmed.length, 'every entry has its own id');
  for (const id of ids) {
    const seqs = publisher.of(id).map((e) => e.seq);
    t.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `${id}: published in seq order`);
  }
});

test('a cancelled job publishes cancelled once, and nothing after it', async (t) => {
  const h = await harness(t);
  const { feed, publisher } = await h.attached();
  await submit(h.server.url, 'long', 'sleep 60');
  await until('running update', () => publisher.of('long').some((e) => e.status === 'running'));
  await h.service().cancel('long');
  await until('cancelled update', () => publisher.of('long').some((e) => e.status === 'cancelled'));
  // A second cancel and the job's process ending change nothing.
  await h.service().cancel('long');
  await until('the job to leave its run slot', () => h.service().runningCount === 0);
  await until('the outbox to drain', () => feed.pending === 0);
  assertLifecycle(t, publisher.of('long'), 'cancelled');
  t.deepEqual(statuses(publisher.of('long')), ['preprocessing', 'queued', 'running', 'cancelled']);
  t.is(publisher.of('long').at(-1)!.payload['complete'], 'true');
});

test('a job that ends in memory because its record cannot be written publishes that ending, once', async (t) => {
  const h = await harness(t);
  const { feed, publisher } = await h.attached();
  await submit(h.server.url, 'doomed', 'sleep 1');
  await until('running update', () => publisher.of('doomed').some((e) => e.status === 'running'));
  // The job store's directory becomes a file: the next record write fails.
  const jobs = path.join(h.root, 'persisted', '_default_-jobs');
  await fs.rename(jobs, `${jobs}.away`);
  await fs.writeFile(jobs, '');
  const restore = async (): Promise<void> => {
    if (!(await fs.stat(jobs)).isFile()) return;
    await fs.rm(jobs);
    await fs.rename(`${jobs}.away`, jobs);
  };
  t.teardown(restore);
  await until('the terminal update', () => publisher.of('doomed').some((e) => e.terminal));
  await restore();
  await until('the outbox to drain', () => feed.pending === 0);
  const doomed = publisher.of('doomed');
  assertLifecycle(t, doomed, 'failed');
  t.regex(String(doomed.at(-1)!.payload['stderr']), /could not be written/);
  t.deepEqual(doomed.at(-1)!.payload, await httpStatus(h.server.url, 'doomed'));
});

test('every entry is written before its transition resolves: a state change leaves an entry file even with no publisher', async (t) => {
  const h = await harness(t);
  const feed = await h.open();
  await submit(h.server.url, 'j', 'true');
  // The submit answered: its preprocessing and queued entries are on disk already.
  const early = await entryFiles(h.outbox);
  t.true(early.length >= 2, early.join(','));
  const first = JSON.parse(await fs.readFile(path.join(h.outbox, early[0]!), 'utf8')) as Record<string, unknown>;
  t.like(first, { jobId: 'j', status: 'preprocessing', terminal: false, payload: { complete: 'false', status: 'preprocessing', job_id: 'j' } });
  t.regex(early[0]!, /^\d{20}-[0-9a-f]{32}\.json$/);
  t.is(String(first['seq']).padStart(20, '0'), early[0]!.slice(0, 20));
  t.is(first['id'], early[0]!.slice(21, 53));
  t.is(typeof first['ts'], 'number');
  await until('the terminal entry', async () => terminalWritten(h.outbox, ['j']));
  const all = await entryFiles(h.outbox);
  const docs = await Promise.all(all.map(async (n) => JSON.parse(await fs.readFile(path.join(h.outbox, n), 'utf8')) as { status: string; terminal: boolean }));
  t.deepEqual(docs.filter((d) => d.terminal).map((d) => d.status), ['complete']);
  t.is(feed.pending, all.length);
});

test('entries survive a crash: a second feed on the same outbox publishes them in order, and writes no second terminal update', async (t) => {
  const h = await harness(t);
  const feed = await h.open();
  await submit(h.server.url, 'a', 'echo a');
  await submitRefused(h.server.url, 'b');
  await until('both terminal entries', async () => terminalWritten(h.outbox, ['a', 'b']));
  t.true(feed.pending >= 6);
  const files = await entryFiles(h.outbox);
  // A crash mid-write leaves a temp file: removed at open, never published.
  await fs.writeFile(path.join(h.outbox, `${files[0]!}.1234abcd.tmp`), '{"id":');

  await h.restart();
  const again = await h.open();
  t.is(again.pending, files.length);
  const publisher = new TestPublisher();
  again.attach(publisher);
  await until('the outbox to drain', () => again.pending === 0);
  const published = publisher.confirmed.map((e) => `${e.seq.toString().padStart(20, '0')}-${e.id}.json`);
  t.deepEqual([...published].sort(), files, 'the same entries, same ids');
  for (const id of ['a', 'b']) {
    const seqs = publisher.of(id).map((e) => e.seq);
    t.deepEqual(seqs, [...seqs].sort((x, y) => x - y), `${id}: in seq order`);
  }
  assertLifecycle(t, publisher.of('a'), 'complete');
  assertLifecycle(t, publisher.of('b'), 'failed');
  t.deepEqual((await fs.readdir(h.outbox)).sort(), ['delivered', 'initialized']);

  // And once more: delivered jobs get nothing new.
  await h.restart();
  const third = await h.open();
  t.is(third.pending, 0);
  t.is(third.delivered, 2);
});

test('after a crash between the job record and the outbox, open writes the missing terminal update, once', async (t) => {
  const h = await harness(t);
  // The feed has run on this server before (its outbox is initialized)...
  await (await h.open()).close();
  // ...but not now: the records say complete/failed, the outbox has nothing (as after a kill -9 between the two writes).
  await submit(h.server.url, 'done', 'echo done');
  await submitRefused(h.server.url, 'broke');
  await submit(h.server.url, 'third', 'true');
  await until('the jobs to finish', () =>
    h.service().knownJob('done')?.state === 'complete' && h.service().knownJob('broke')?.state === 'failed' && h.service().knownJob('third')?.state === 'complete');
  await h.restart();

  const feed = await h.open();
  t.is(feed.pending, 3, 'one terminal entry per finished job');
  const publisher = new TestPublisher();
  feed.attach(publisher);
  await until('the outbox to drain', () => feed.pending === 0);
  t.deepEqual(publisher.confirmed.map((e) => [e.jobId, e.status, e.terminal]).sort(), [
    ['broke', 'failed', true],
    ['done', 'complete', true],
    ['third', 'complete', true],
  ]);
  t.deepEqual(publisher.of('done')[0]!.payload, await httpStatus(h.server.url, 'done'));
  t.true(h.logLines.some((l) => l.includes('terminal status updates written after a restart')));

  await h.restart();
  const again = await h.open();
  t.is(again.pending, 0, 'the ledger remembers them: no second terminal update');
});

test('a feed opened before the service starts sees the recovery, then reconciles', async (t) => {
  const h = await harness(t);
  await (await h.open()).close();
  await submit(h.server.url, 'old', 'true');
  await submit(h.server.url, 'live', 'sleep 2');
  await until('one job to finish, one to run', () => h.service().knownJob('old')?.state === 'complete' && h.service().knownJob('live')?.state === 'running');
  // The server stops (no feed ran meanwhile); the running job goes on without it.
  await h.server.close();
  // A service built but not started: the feed subscribes first, reconciles once it has started.
  const { JobService } = await import('../../src/jobs/service.js');
  const { createBackend } = await import('../../src/managers/index.js');
  const { createAuthorizer } = await import('../../src/tools/index.js');
  const { jobEnvironment } = await import('../../src/jobs/launch.js');
  const config = h.server.config;
  const log = createLogger({ level: 'silent' });
  const manager = config.app.managers[0]!;
  const service = new JobService({
    manager,
    app: config.app,
    backend: createBackend(manager, { log, serverEnv: process.env, configFile: 'test' }),
    authorizer: await createAuthorizer(config, log),
    log,
    jobEnv: jobEnvironment(process.env),
  });
  const feed = await StatusFeed.open(service, { dir: h.outbox, log, drainIntervalMs: 50 });
  t.is(feed.pending, 0, 'nothing known yet');
  await service.start();
  // The finished job is reconciled; the re-attached one is followed to its end.
  await until('both terminal entries', async () => terminalWritten(h.outbox, ['old', 'live']));
  const publisher = new TestPublisher();
  feed.attach(publisher);
  await until('the outbox to drain', () => feed.pending === 0);
  t.deepEqual(statuses(publisher.of('old')), ['complete']);
  t.deepEqual(statuses(publisher.of('live')), ['postprocessing', 'complete']);
  await feed.close();
  await service.shutdown();
  h.server = await startTestServer({ root: h.root });
});

test('a new outbox does not publish the jobs that finished before it existed; it publishes the ones that end now', async (t) => {
  const h = await harness(t);
  await submit(h.server.url, 'before', 'true');
  await until('the job to finish', () => h.service().knownJob('before')?.state === 'complete');
  await submit(h.server.url, 'during', 'sleep 1');
  const { feed, publisher } = await h.attached();
  t.true((await fs.readdir(h.outbox)).includes('initialized'));
  t.deepEqual(await fs.readdir(path.join(h.outbox, 'delivered')), ['before'], 'marked delivered, not published');
  await until('the running job to finish', () => publisher.of('during').some((e) => e.terminal));
  t.is(publisher.of('during').filter((e) => e.terminal).length, 1);
  t.deepEqual(publisher.of('before'), []);
  await until('the outbox to drain', () => feed.pending === 0);
  await h.restart();
  t.is((await h.open()).pending, 0);
});

test('a rejected publish keeps the entry; it is published again, in order, at the next interval or kick', async (t) => {
  const h = await harness(t);
  const feed = await h.open();
  const publisher = new TestPublisher();
  publisher.failing = true;
  feed.attach(publisher);
  await submit(h.server.url, 'x', 'echo x');
  await until('the job to finish', () => h.service().knownJob('x')?.state === 'complete');
  await until('publishes to be tried and refused', () => publisher.calls.length >= 3);
  t.is(publisher.confirmed.length, 0);
  t.true(feed.pending >= 4);
  t.true((await entryFiles(h.outbox)).length >= 4, 'refused entries stay on disk');

  // The transport goes down altogether: nothing is tried while it says it is not ready.
  publisher.ready = false;
  publisher.failing = false;
  await new Promise((r) => setTimeout(r, 200));
  const tried = publisher.calls.length;
  await new Promise((r) => setTimeout(r, 200));
  t.is(publisher.calls.length, tried, 'no publish while the transport is not ready');
  publisher.ready = true;
  feed.kick();
  await until('the outbox to drain', () => feed.pending === 0);
  assertLifecycle(t, publisher.of('x'), 'complete');
  t.is(publisher.confirmed.length, new Set(publisher.calls.map((e) => e.id)).size, 'every entry refused was confirmed later, once');
});

test('with publishes held in flight, each job still sees its updates in lifecycle order', async (t) => {
  const h = await harness(t);
  const feed = await h.open();
  const publisher = new TestPublisher();
  publisher.hold();
  feed.attach(publisher);
  const ids = Array.from({ length: 6 }, (_, i) => `p${i}`);
  for (const id of ids) await submit(h.server.url, id, `echo ${id}`);
  await until('all terminal entries', async () => terminalWritten(h.outbox, ids));
  // Answered a few at a time, later: the feed keeps several publishes in flight meanwhile.
  const release = setInterval(() => publisher.release(), 5);
  t.teardown(() => clearInterval(release));
  await until('the outbox to drain', () => feed.pending === 0);
  clearInterval(release);
  t.is(publisher.overlaps, 0, 'never two publishes of one job in flight');
  t.true(publisher.maxInFlight > 1, `publishes are pipelined (at most ${publisher.maxInFlight} in flight)`);
  for (const id of ids) assertLifecycle(t, publisher.of(id), 'complete');
});

test('a status request queues the current document: lost for an unknown job, the terminal one again for a finished job', async (t) => {
  const h = await harness(t);
  const { feed, publisher } = await h.attached();
  await feed.requestStatus('nobody');
  await submit(h.server.url, 'f', 'echo f');
  await until('the job to finish', () => publisher.of('f').some((e) => e.terminal));
  await feed.requestStatus('f');
  await until('the outbox to drain', () => feed.pending === 0);

  const lost = publisher.of('nobody');
  t.is(lost.length, 1);
  t.like(lost[0], { status: 'lost', terminal: true, requested: true });
  t.deepEqual(lost[0]!.payload, await httpStatus(h.server.url, 'nobody'));
  const f = publisher.of('f');
  t.like(f.at(-1), { status: 'complete', requested: true });
  assertLifecycle(t, f.slice(0, -1), 'complete');
  t.deepEqual(f.at(-1)!.payload, f.at(-2)!.payload);
  t.is(feed.delivered, 1, 'an answer is not a terminal update: the unknown job is not in the ledger');
  await t.throwsAsync(feed.requestStatus('../etc'), { message: /invalid job_id/ });

  // The answered request leaves the ledger as it was: a restart writes nothing new.
  await h.restart();
  t.is((await h.open()).pending, 0);
});

/** Run a job with a feed (no publisher), then restart: resolves with its entry files, in seq order. */
async function runThenRestart(t: ExecutionContext, h: Harness, id: string): Promise<string[]> {
  const feed = await h.open();
  await submit(h.server.url, id, 'true');
  await until('its terminal entry', async () => terminalWritten(h.outbox, [id]));
  t.true(feed.pending >= 4);
  const files = await entryFiles(h.outbox);
  await h.restart();
  return files;
}

test('an unreadable entry is set aside (*.bad) and logged; open goes on with the others', async (t) => {
  const h = await harness(t);
  const files = await runThenRestart(t, h, 'c');
  // A torn write of the first entry, an entry whose name and id differ, and a non-JSON one.
  await fs.writeFile(path.join(h.outbox, files[0]!), '{"id":"');
  const wrongId = `${'9'.repeat(20)}-${'a'.repeat(32)}.json`;
  await fs.writeFile(path.join(h.outbox, wrongId), JSON.stringify({ id: 'b'.repeat(32), seq: 1, jobId: 'c', status: 'running', terminal: false, ts: 1, payload: {} }));
  const junk = `${'9'.repeat(19)}8-${'c'.repeat(32)}.json`;
  await fs.writeFile(path.join(h.outbox, junk), Buffer.from([0xff, 0x00, 0x13]));

  const again = await h.open();
  t.is(again.setAside, 3);
  t.is(again.pending, files.length - 1);
  const names = await fs.readdir(h.outbox);
  for (const bad of [files[0]!, wrongId, junk]) t.true(names.includes(`${bad}.bad`), bad);
  t.is(h.logLines.filter((l) => l.includes('set aside')).length, 3);
  const publisher = new TestPublisher();
  again.attach(publisher);
  await until('the outbox to drain', () => again.pending === 0);
  t.deepEqual(statuses(publisher.of('c')).filter((s) => s === 'complete'), ['complete']);
});

test('a terminal entry that became unreadable is written again, once', async (t) => {
  const h = await harness(t);
  const files = await runThenRestart(t, h, 'torn');
  const terminal = files.at(-1)!;
  await fs.writeFile(path.join(h.outbox, terminal), 'not json');
  const again = await h.open();
  t.is(again.setAside, 1);
  // The job is finished, its terminal entry unreadable and no marker: reconciliation writes a new one.
  t.is(again.pending, files.length);
  const publisher = new TestPublisher();
  again.attach(publisher);
  await until('the outbox to drain', () => again.pending === 0);
  t.is(publisher.of('torn').filter((e) => e.terminal).length, 1);
});

test('at max_pending, non-terminal updates and answers are dropped (logged); terminal updates are still written', async (t) => {
  const h = await harness(t);
  const feed = await h.open({ maxPending: 2 });
  await submit(h.server.url, 'full', 'true');
  await until('its terminal entry', async () => terminalWritten(h.outbox, ['full']));
  await feed.requestStatus('full');
  t.is(feed.pending, 3, 'preprocessing, queued, then only the terminal one');
  t.true(feed.dropped >= 2);
  t.true(h.logLines.some((l) => l.includes('status outbox full')));
  const publisher = new TestPublisher();
  feed.attach(publisher);
  await until('the outbox to drain', () => feed.pending === 0);
  t.deepEqual(statuses(publisher.of('full')), ['preprocessing', 'queued', 'complete']);
});

test('the ledger forgets cleaned jobs at the next open', async (t) => {
  const h = await harness(t);
  const { feed, publisher } = await h.attached();
  await submit(h.server.url, 'gone', 'true');
  await submit(h.server.url, 'kept', 'true');
  await until('both terminal updates', () => publisher.of('gone').some((e) => e.terminal) && publisher.of('kept').some((e) => e.terminal));
  await until('the outbox to drain', () => feed.pending === 0);
  await h.service().clean('gone');
  await h.restart();
  const again = await h.open();
  t.is(again.delivered, 1);
  t.deepEqual(await fs.readdir(path.join(h.outbox, 'delivered')), ['kept']);

  // The id set up and run again is a new job: it gets its own terminal update.
  const publisher2 = new TestPublisher();
  again.attach(publisher2);
  await submit(h.server.url, 'gone', 'true');
  await until('the new terminal update', () => publisher2.of('gone').some((e) => e.terminal));
  await until('the outbox to drain', () => again.pending === 0);
  assertLifecycle(t, publisher2.of('gone'), 'complete');
});
