/**
 * Relay mode end to end: a real magnetar server polling the relay fake, Galaxy's side posting to
 * the fake and reading the status updates it stores.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { request } from '../helpers/client.js';
import { JOB_KEY, testEndpoint } from '../helpers/files-endpoint.js';
import { mqRemoteStaging } from '../helpers/mq-client.js';
import { managerConfig, startTestServer } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';
import { Galaxy, PASSWORD, relayConfig, relayFake, relayServer, settle, USER, within } from './helpers.js';

const GALAXY = '/galaxy/files';

interface RelayHealth {
  state: string;
  relay: string;
  auth: string;
  polling: number;
  pendingUpdates: number;
  authError?: string;
}

async function health(url: string): Promise<RelayHealth> {
  return ((await request(url, 'GET', '/healthz')).json() as { relay: RelayHealth }).relay;
}

test.serial('setup with remote staging → running → complete: input staged in, output staged out, one terminal update keyed by its outbox entry; capabilities; /healthz', async (t) => {
  const e = await testEndpoint(t);
  const fake = await relayFake(t);
  const server = await relayServer(t, fake);
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  const input = randomBytes(256 * 1024 + 3);
  e.files.set('/galaxy/in/a.dat', input);
  const id = '3001';
  const setup = [{ name: 'a.dat', type: 'input', action: { action_type: 'remote_transfer', path: '/galaxy/in/a.dat', url: e.inputUrl(id, '/galaxy/in/a.dat') } }];
  galaxy.setup(id, 'sleep 0.5; cat ../inputs/a.dat > ../outputs/dataset_1.dat', { remote_staging: mqRemoteStaging(e.filesEndpoint(id), setup, ['dataset_1.dat']), env: [{ name: 'X', value: '1' }] });
  const terminal = await within('complete', galaxy.whenTerminal(id));
  t.is(terminal['status'], 'complete', JSON.stringify(terminal));
  t.is(terminal['complete'], 'true');
  t.is(terminal['returncode'], 0);
  t.true(e.posted.get(`${GALAXY}/dataset_1.dat`)?.equals(input));
  await settle();
  const statuses = galaxy.statuses(id);
  // Only what Galaxy acts on goes to the relay (its publish limit is per address): running, then the terminal state.
  t.deepEqual(statuses, ['running', 'complete']);
  t.is(galaxy.terminals(id).length, 1);
  // Every status update carried its outbox entry's id as Idempotency-Key: 32 hex, one per update.
  const updates = fake.published.filter((p) => p.topic === 'job_status_update');
  t.true(updates.length >= 2);
  t.true(updates.every((p) => p.idempotencyKey !== null && /^[0-9a-f]{32}$/.test(p.idempotencyKey)));
  t.is(new Set(updates.map((p) => p.idempotencyKey)).size, updates.length);
  // The capability snapshot, once.
  const caps = fake.messages(USER, 'pulsar_capabilities');
  t.is(caps.length, 1);
  t.like(caps[0]?.payload, { schema_version: 1, manager_name: '_default_', manager: { name: '_default_', type: 'queued_python' } });
  // Polls: the three topics, whole seconds, and after the baseline always a non-empty since.
  const polls = fake.requests.filter((r) => r.route === 'poll');
  t.deepEqual((polls[0]?.body as { topics: string[] }).topics, ['job_setup', 'job_status_request', 'job_kill']);
  t.true(polls.every((p) => Number.isInteger((p.body as { timeout: number }).timeout) && Object.keys((p.body as { since?: object }).since ?? {}).length > 0));
  const h = await health(server.url);
  t.is(h.state, 'connected');
  t.is(h.auth, 'password');
  t.is(h.polling, 1);
  t.is(h.relay, fake.url);
  // Neither the password, the bearer tokens nor the files endpoint's key are logged.
  const logged = server.logLines.join('\n');
  t.false(logged.includes(PASSWORD));
  t.false(logged.includes(JOB_KEY));
  for (const r of fake.requests) if (r.bearer !== null) t.false(logged.includes(r.bearer));
  // The cursor is on disk, past the setup.
  const cursor = JSON.parse(await fs.readFile(path.join(server.root, 'persisted', '_default_-relay-cursor.json'), 'utf8')) as Record<string, string>;
  t.is(cursor['job_setup'], fake.messages(USER, 'job_setup').at(-1)?.message_id);
});

test.serial('kill → cancelled is published at once (exactly once); a kill of an unknown job publishes nothing', async (t) => {
  const fake = await relayFake(t);
  await relayServer(t, fake);
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  const id = '3002';
  galaxy.setup(id, 'sleep 60');
  await within('running', galaxy.whenStatus(id, 'running'));
  galaxy.kill(id);
  galaxy.kill('9999');
  const terminal = await within('cancelled', galaxy.whenTerminal(id));
  t.is(terminal['status'], 'cancelled');
  await settle();
  t.is(galaxy.terminals(id).length, 1);
  t.deepEqual(galaxy.updates('9999'), []);
});

test.serial('status requests are answered with the current status; an unknown job is lost; poison messages are skipped and the loop goes on', async (t) => {
  const fake = await relayFake(t);
  const server = await relayServer(t, fake);
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  fake.publish(USER, 'job_setup', { job_id: '../../etc', command_line: 'touch /tmp/relay-should-not-exist' });
  fake.publish(USER, 'job_setup', { job_id: '3100', command_line: 'true', env: 'not a list' });
  fake.publish(USER, 'job_kill', { nothing: true });
  fake.publish(USER, 'job_status_request', { job_id: { nested: 1 } });
  const id = '3003';
  galaxy.setup(id, 'true');
  await within('complete', galaxy.whenTerminal(id));
  const before = galaxy.updates(id).length;
  galaxy.requestStatus(id);
  await waitUntil('the answer', async () => galaxy.updates(id).length > before, 30_000);
  t.is(galaxy.updates(id).at(-1)?.['status'], 'complete');
  galaxy.requestStatus('424242');
  t.is((await within('lost', galaxy.whenTerminal('424242')))['status'], 'lost');
  // The malformed setup with a good job id is answered (lost), so Galaxy does not wait.
  t.is((await within('the refused setup', galaxy.whenTerminal('3100')))['status'], 'lost');
  t.false(await fs.access('/tmp/relay-should-not-exist').then(() => true, () => false));
  t.true(((await request(server.url, 'GET', '/healthz')).json() as { relay: { rejectedMessages: number } }).relay.rejectedMessages >= 4);
});

test.serial('a fresh server never acts on messages published before its first start; after a restart it takes what came meanwhile', async (t) => {
  const fake = await relayFake(t);
  const galaxy = new Galaxy(fake);
  // Left on the relay by another server's life.
  galaxy.requestStatus('7001');
  galaxy.kill('7002');
  galaxy.setup('7003', 'touch ../outputs/should-not-run');
  galaxy.requestStatus('7004');
  const first = await relayServer(t, fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  const id = '3004';
  galaxy.setup(id, 'true');
  await within('complete', galaxy.whenTerminal(id));
  galaxy.requestStatus(id);
  await waitUntil('the answer', async () => galaxy.updates(id).length > 0 && galaxy.updates(id).at(-1)?.['status'] === 'complete' && fake.requests.filter((r) => r.route === 'poll').length >= 3, 30_000);
  await settle();
  for (const old of ['7001', '7002', '7003', '7004']) t.deepEqual(galaxy.updates(old), [], old);
  t.false(await fs.access(path.join(first.staging, '7003')).then(() => true, () => false));
  // Stopped (files kept): messages published meanwhile are taken at the next start, the old ones still not.
  const root = first.root;
  await first.close();
  galaxy.setup('3005', 'true');
  galaxy.requestStatus('3004');
  const second = await relayServer(t, fake, {}, root);
  t.is((await within('the job set up while stopped', galaxy.whenTerminal('3005')))['status'], 'complete');
  await waitUntil('the status answer', async () => galaxy.updates('3004').length >= 3, 30_000);
  await settle();
  for (const old of ['7001', '7002', '7003', '7004']) t.deepEqual(galaxy.updates(old), [], old);
  t.is(galaxy.terminals('3005').length, 1);
  await second.stop();
});

test.serial('relay restart (memory relay loses tokens and messages): magnetar logs in again and carries on', async (t) => {
  const fake = await relayFake(t);
  const server = await relayServer(t, fake, { longPollTimeout: 2 });
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  galaxy.setup('3006', 'true');
  await within('complete before', galaxy.whenTerminal('3006'));
  const loginsBefore = fake.requests.filter((r) => r.route === 'login').length;
  await fake.restart({ downMs: 1500 });
  await within('a poll after the restart', fake.whenWaiting(USER, 'job_setup'));
  galaxy.setup('3007', 'sleep 0.2');
  t.is((await within('complete after', galaxy.whenTerminal('3007')))['status'], 'complete');
  t.true(fake.requests.filter((r) => r.route === 'login').length > loginsBefore);
  await waitUntil('connected', async () => (await health(server.url)).state === 'connected', 10_000);
  t.is(galaxy.terminals('3007').length, 1);
});

test.serial('429 on login: magnetar backs off and logs in (upstream gives up); the job then runs', async (t) => {
  const fake = await relayFake(t);
  fake.inject('login', { status: 429, body: { error: 'Rate limit exceeded: 5 per 1 minute' }, times: 2 });
  const server = await relayServer(t, fake);
  const galaxy = new Galaxy(fake);
  await within('a poll after the 429s', fake.whenWaiting(USER, 'job_setup'));
  galaxy.setup('3008', 'true');
  t.is((await within('complete', galaxy.whenTerminal('3008')))['status'], 'complete');
  const logins = fake.requests.filter((r) => r.route === 'login');
  t.is(logins.length, 3, JSON.stringify(logins.map((l) => l.status)));
  t.deepEqual(logins.map((l) => l.status), [429, 429, 200]);
  t.is((await health(server.url)).state, 'connected');
});

test.serial('429 and 5xx on polls and publishes back off and recover; nothing is lost', async (t) => {
  const fake = await relayFake(t);
  await relayServer(t, fake, { longPollTimeout: 1 });
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  fake.inject('publish', { status: 503, body: { detail: 'unavailable' }, times: 2 });
  fake.inject('publish', { status: 429, body: { error: 'Rate limit exceeded: 120 per 1 minute' }, times: 1 });
  fake.inject('poll', { status: 500, body: { detail: 'boom' }, times: 2 });
  galaxy.setup('3009', 'true');
  t.is((await within('complete', galaxy.whenTerminal('3009')))['status'], 'complete');
  await settle();
  t.is(galaxy.terminals('3009').length, 1);
  const publishStatuses = fake.requests.filter((r) => r.route === 'publish').map((r) => r.status);
  t.true(publishStatuses.includes(503) && publishStatuses.includes(429), publishStatuses.join(','));
});

test.serial('the since race: a setup published between the relay’s storage read and its waiter registration is taken by the next poll', async (t) => {
  let sneak: (() => void) | undefined;
  const fake = await relayFake(t, { betweenSinceReadAndWait: () => sneak?.() });
  await relayServer(t, fake, { longPollTimeout: 1 });
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  await settle(1200);
  let hit = false;
  sneak = () => {
    sneak = undefined;
    hit = true;
    galaxy.setup('3010', 'true');
  };
  t.is((await within('complete', galaxy.whenTerminal('3010')))['status'], 'complete');
  t.true(hit, 'the race was hit');
});

test.serial('a relay down at startup is waited for (the server starts; /healthz says disconnected), then used', async (t) => {
  const fake = await relayFake(t);
  const restarting = fake.restart({ downMs: 3000 });
  await settle(300);
  const server = await relayServer(t, fake, { longPollTimeout: 2 });
  t.not((await health(server.url)).state, 'connected');
  await restarting;
  const galaxy = new Galaxy(fake);
  await within('a poll once the relay is up', fake.whenWaiting(USER, 'job_setup'));
  galaxy.setup('3011', 'true');
  t.is((await within('complete', galaxy.whenTerminal('3011')))['status'], 'complete');
  await waitUntil('connected', async () => (await health(server.url)).state === 'connected', 10_000);
});

test.serial('two managers: topics with the prefix and the _<manager> suffix, one loop each, one login for the server', async (t) => {
  const fake = await relayFake(t);
  const server = await startTestServer({
    app: { relay: relayConfig(fake, { topicPrefix: 'site' }) },
    managers: (r) => [managerConfig(r), managerConfig(r, { name: 'gpu', stagingDirectory: path.join(r, 'staging-gpu') })],
  });
  t.teardown(async () => server.stop());
  const main = new Galaxy(fake, 'site');
  const gpu = new Galaxy(fake, 'site', 'gpu');
  await within('both loops', Promise.all([fake.whenWaiting(USER, 'site_job_setup'), fake.whenWaiting(USER, 'site_job_setup_gpu')]));
  main.setup('3012', 'true');
  gpu.setup('3013', 'true');
  t.is((await within('main', main.whenTerminal('3012')))['status'], 'complete');
  t.is((await within('gpu', gpu.whenTerminal('3013')))['status'], 'complete');
  t.deepEqual(main.updates('3013'), []);
  t.deepEqual(gpu.updates('3012'), []);
  t.deepEqual(fake.messages(USER, 'site_pulsar_capabilities_gpu').map((m) => m.payload['manager_name']), ['gpu']);
  t.is(fake.requests.filter((r) => r.route === 'login').length, 1);
  t.is((await health(server.url)).polling, 2);
});

test.serial('a relay answer redirecting elsewhere is not followed: the bearer never leaves for another origin; polling carries on', async (t) => {
  const seen: string[] = [];
  const elsewhere = http.createServer((req, res) => {
    seen.push(`${req.method ?? ''} ${req.url ?? ''} ${req.headers.authorization ?? ''}`);
    res.end('{}');
  });
  await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => elsewhere.close(() => resolve())));
  const target = `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/steal`;
  const fake = await relayFake(t);
  fake.inject('poll', { status: 307, headers: { location: target }, body: {}, times: 2 });
  const server = await relayServer(t, fake, { longPollTimeout: 1 });
  const galaxy = new Galaxy(fake);
  await within('a poll after the redirects', fake.whenWaiting(USER, 'job_setup'));
  galaxy.setup('3014', 'true');
  t.is((await within('complete', galaxy.whenTerminal('3014')))['status'], 'complete');
  t.deepEqual(seen, []);
  t.true(fake.requests.filter((r) => r.route === 'poll' && r.status === 307).length === 2);
  t.true(server.logLines.some((l) => l.includes('relay poll failed')));
});

test.serial('back-pressure (max_live_jobs): a setup waits on the relay, and a status request for it waits too instead of answering lost', async (t) => {
  const fake = await relayFake(t);
  const server = await startTestServer({ app: { relay: relayConfig(fake, { longPollTimeout: 1 }), maxLiveJobs: 1 }, managers: (r) => [managerConfig(r)] });
  t.teardown(async () => server.stop());
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  galaxy.setup('3015', 'sleep 2');
  await within('running', galaxy.whenStatus('3015', 'running'));
  galaxy.setup('3016', 'true');
  galaxy.requestStatus('3016');
  t.is((await within('the first job', galaxy.whenTerminal('3015')))['status'], 'complete');
  t.is((await within('the waiting job', galaxy.whenTerminal('3016')))['status'], 'complete');
  await waitUntil('the status answer', async () => galaxy.updates('3016').filter((u) => u['status'] === 'complete').length >= 2 || galaxy.statuses('3016').length >= 3, 30_000);
  t.false(galaxy.statuses('3016').includes('lost'), galaxy.statuses('3016').join(','));
  t.true(server.logLines.some((l) => l.includes('job_setup deferred: too many unfinished jobs')));
});

test.serial('more than a poll answer holds (100 per topic): every setup published while the server was stopped runs once; a status request behind them is not answered lost', async (t) => {
  const fake = await relayFake(t);
  const galaxy = new Galaxy(fake);
  const first = await relayServer(t, fake, { longPollTimeout: 1 });
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  const root = first.root;
  await first.close();
  const ids = Array.from({ length: 130 }, (_, i) => String(8000 + i));
  for (const id of ids) galaxy.setup(id, 'true');
  galaxy.requestStatus(ids.at(-1) ?? '');
  const second = await relayServer(t, fake, { longPollTimeout: 1 }, root);
  await within('every job', waitUntil('terminals', async () => ids.every((id) => galaxy.terminals(id).length > 0), 110_000), 115_000);
  for (const id of ids) t.is(galaxy.terminals(id)[0]?.['status'], 'complete', id);
  t.false(galaxy.statuses(ids.at(-1) ?? '').includes('lost'));
  t.true(fake.requests.some((r) => r.route === 'poll' && r.status === 200));
  await second.stop();
});
