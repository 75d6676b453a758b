import type { ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { request } from '../helpers/client.js';
import { FAST_RETRY, JOB_KEY, testEndpoint } from '../helpers/files-endpoint.js';
import { fileBroker, mqRemoteStaging, MqClient, mqConfig, type MqClientOptions } from '../helpers/mq-client.js';
import { brokerTest } from '../helpers/rabbitmq.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import type { MessageQueueConfig } from '../../src/config/index.js';

const test = brokerTest();
const GALAXY = '/galaxy/files';

const theBroker = fileBroker(test);

function brokerUrl(): string {
  return theBroker().url;
}

/** A server in MQ mode with its own key prefix (tests share the broker), and a client for it. */
async function mqServer(t: ExecutionContext, mq: Partial<MessageQueueConfig> = {}, client: MqClientOptions = {}): Promise<{ server: TestServer; client: MqClient; prefix: string }> {
  const prefix = `t${randomBytes(4).toString('hex')}`;
  const server = await startTestServer({
    app: {
      messageQueue: mqConfig(brokerUrl(), { keyPrefix: prefix, ...mq }),
      staging: { allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4 },
    },
    managers: (root) => [managerConfig(root, { preprocessRetry: FAST_RETRY, postprocessRetry: FAST_RETRY })],
  });
  t.teardown(async () => server.stop());
  const c = await MqClient.connect(brokerUrl(), { keyPrefix: prefix, ...client });
  t.teardown(async () => c.close());
  return { server, client: c, prefix };
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

test.serial('setup → running → complete through the broker: input staged in, output staged out, one terminal update; /healthz says connected', async (t) => {
  const e = await testEndpoint(t);
  const { server, client } = await mqServer(t);
  const input = randomBytes(256 * 1024 + 3);
  e.files.set('/galaxy/in/a.dat', input);
  const id = '1001';
  const setup = [{ name: 'a.dat', type: 'input', action: { action_type: 'remote_transfer', path: '/galaxy/in/a.dat', url: e.inputUrl(id, '/galaxy/in/a.dat') } }];
  await client.setup(id, 'sleep 0.5; cat ../inputs/a.dat > ../outputs/dataset_1.dat', { remote_staging: mqRemoteStaging(e.filesEndpoint(id), setup, ['dataset_1.dat']), env: [{ name: 'X', value: '1' }] });
  const terminal = await client.waitForTerminal(id);
  t.is(terminal.status, 'complete', JSON.stringify(terminal));
  t.is(terminal.complete, 'true');
  t.is(terminal.returncode, 0);
  t.true(e.posted.get(`${GALAXY}/dataset_1.dat`)?.equals(input));
  await client.settle();
  const statuses = client.updatesOf(id).map((u) => u.status);
  t.true(statuses.includes('running'), statuses.join(','));
  t.deepEqual(client.terminalsOf(id).length, 1);
  // Lifecycle order: nothing after the terminal update.
  t.is(statuses[statuses.length - 1], 'complete');
  const health = (await request(server.url, 'GET', '/healthz')).json() as { version: string; message_queue: { state: string; broker: string } };
  t.is(health.message_queue.state, 'connected');
  t.false(health.message_queue.broker.includes('guest:guest'));
  const logged = server.logLines.join('\n');
  t.false(logged.includes('guest:guest'));
  t.false(logged.includes(JOB_KEY));
});

test.serial('kill → cancelled is published (exactly once); a kill of an unknown job is harmless', async (t) => {
  const { client } = await mqServer(t);
  const id = '1002';
  await client.setup(id, 'sleep 60');
  await client.waitFor('running', () => client.updatesOf(id).some((u) => u.status === 'running'));
  await client.kill(id);
  await client.kill('9999');
  const terminal = await client.waitForTerminal(id);
  t.is(terminal.status, 'cancelled');
  await client.settle();
  t.is(client.terminalsOf(id).length, 1);
});

test.serial('status requests on the setup queue (as the client sends them) and on the status queue are answered', async (t) => {
  const { client } = await mqServer(t);
  const id = '1003';
  await client.setup(id, 'true');
  await client.waitForTerminal(id);
  const before = client.updatesOf(id).length;
  await client.requestStatus(id);
  await client.waitFor('the answer on the setup queue', () => client.updatesOf(id).length > before);
  t.is(client.updatesOf(id).at(-1)?.status, 'complete');
  await client.publish('status', { job_id: id });
  await client.waitFor('the answer on the status queue', () => client.updatesOf(id).length > before + 1);
  t.is(client.updatesOf(id).at(-1)?.status, 'complete');
  // An unknown job: the HTTP status route's answer (lost), never a spurious launch.
  await client.requestStatus('424242');
  await client.waitFor('the unknown job', () => client.updatesOf('424242').length > 0);
  t.is(client.updatesOf('424242')[0]?.status, 'lost');
});

test.serial('poison messages on every queue are rejected; the consumers keep consuming; nothing runs or is written', async (t) => {
  const { server, client } = await mqServer(t, { acknowledge: true, maxMessageSize: 64 * 1024 }, { acknowledge: true });
  const poison = [
    Buffer.from('not json at all'),
    Buffer.from('[1,2,3]'),
    Buffer.from('{"job_id": "2001"}'),
    Buffer.from(JSON.stringify({ job_id: '2002', command_line: 'touch /tmp/should-not-exist', env: 'not a list' })),
    Buffer.from(JSON.stringify({ job_id: '../../etc', command_line: 'true' })),
    Buffer.from(`${'['.repeat(100)}${']'.repeat(100)}`),
    Buffer.from([0xff, 0xfe, 0x00]),
    Buffer.alloc(100 * 1024, 0x20),
    Buffer.from(JSON.stringify({ job_id: '2003', command_line: 'true', acknowledge_uuid: '../../x' })),
    Buffer.from(JSON.stringify({ request: 'delete', job_id: '2004' })),
  ];
  for (const name of ['setup', 'kill', 'status', 'status_update_ack']) {
    for (const body of poison) await client.publishRaw(name, body);
  }
  const id = '2010';
  await client.setup(id, 'true');
  t.is((await client.waitForTerminal(id)).status, 'complete');
  const health = (await request(server.url, 'GET', '/healthz')).json() as { message_queue: { rejectedMessages: number } };
  // Every one on setup and the ack queue; on kill and status, all but the three whose job_id is
  // well formed (a kill of an unknown job does nothing; a status request for one is answered lost).
  t.is(health.message_queue.rejectedMessages, poison.length * 4 - 6);
  for (const job of ['2001', '2002', '2003', '2004', 'etc']) t.false(await exists(path.join(server.staging, job)), job);
  t.deepEqual((await fs.readdir(server.staging)).sort(), [id]);
  t.deepEqual(client.updates.filter((u) => u.job_id !== id && u.status !== 'lost'), []);
  // A refused setup with a well-formed job id is answered lost: Galaxy fails the job instead of waiting.
  await client.waitFor('the refused setup answered', () => client.updatesOf('2002').some((u) => u.status === 'lost'));
  t.pass();
  t.false(await exists('/tmp/should-not-exist'));
  t.false(server.logLines.join('\n').includes('should-not-exist'));
});

test.serial('ack protocol: setup acknowledged, status updates carry acknowledge_uuid and leave the publish store once acknowledged; a redelivered setup is skipped', async (t) => {
  const { server, client } = await mqServer(t, { acknowledge: true }, { acknowledge: true });
  const id = '3001';
  const uuid = await client.setup(id, 'true');
  t.truthy(uuid);
  await client.waitForTerminal(id);
  await client.waitFor('the setup ack', () => client.acks.includes(uuid ?? ''));
  const updates = client.updatesOf(id);
  t.true(updates.every((u) => typeof u.acknowledge_uuid === 'string' && u['acknowledge_queue'] === 'status_update_ack'));
  const store = path.join(server.root, 'persisted', 'amqp_ack-_default_', 'publish');
  await client.waitFor('the publish store to empty', () => true);
  for (let i = 0; i < 100 && (await fs.readdir(store)).filter((f) => !f.endsWith('.tmp')).length > 0; i++) await client.settle(100);
  t.deepEqual(await fs.readdir(store), []);
  // The client republishes the same message (same uuid, force_noack): acknowledged again, not acted on.
  const before = client.updatesOf(id).length;
  await client.publish('setup', { command_line: 'echo again > ../outputs/again', job_id: id, acknowledge_uuid: uuid, acknowledge_queue: 'setup_ack', force_noack: true, setup_params: { job_id: id } });
  await client.waitFor('the second ack', () => client.acks.filter((a) => a === uuid).length >= 2);
  await client.settle();
  t.is(client.updatesOf(id).length, before);
  t.true(server.logLines.some((l) => l.includes('already acted on')));
});

test.serial('ack protocol: an unacknowledged status update is published again with force_noack and the same uuid', async (t) => {
  const { client } = await mqServer(t, { acknowledge: true, ackRepublishTime: 0.5 }, { acknowledge: true, withholdAcks: true });
  const id = '3002';
  await client.setup(id, 'true');
  const first = await client.waitForTerminal(id);
  await client.waitFor('a republish', () => client.terminalsOf(id).some((u) => u.force_noack === true), 30_000);
  const again = client.terminalsOf(id).find((u) => u.force_noack === true);
  t.is(again?.acknowledge_uuid, first.acknowledge_uuid);
});

test.serial('without the ack protocol: no acknowledge keys; a duplicate setup (redelivery) runs the job once', async (t) => {
  const { server, client } = await mqServer(t);
  const id = '4001';
  await client.setup(id, 'echo x >> ../outputs/count');
  await client.setup(id, 'echo x >> ../outputs/count');
  await client.waitForTerminal(id);
  await client.settle();
  t.is(client.terminalsOf(id).length, 1);
  t.true(client.updatesOf(id).every((u) => u.acknowledge_uuid === undefined));
  t.is(await fs.readFile(path.join(server.staging, id, 'outputs', 'count'), 'utf8'), 'x\n');
});

test.serial('message_queue_publish = false: jobs run, nothing is published; message_queue_consume = false: setups stay queued', async (t) => {
  const quiet = await mqServer(t, { publish: false });
  await quiet.client.setup('4101', 'true');
  let status = '';
  for (let i = 0; i < 400 && status !== 'complete'; i++) {
    await quiet.client.settle(25);
    const r = await request(quiet.server.url, 'GET', '/jobs/4101/status?job_id=4101');
    if (r.status === 200) status = (r.json() as { status: string }).status;
  }
  t.is(status, 'complete');
  await quiet.client.settle();
  t.deepEqual(quiet.client.updates, []);

  const deaf = await mqServer(t, { consume: false });
  await deaf.client.setup('4102', 'true');
  await deaf.client.settle();
  t.false(await exists(path.join(deaf.server.staging, '4102')));
  const probe = await MqClient.connect(brokerUrl(), { keyPrefix: deaf.prefix });
  t.teardown(async () => probe.close());
  t.is(await probe.queuedMessages('setup'), 1);
});
