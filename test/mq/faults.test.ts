import type { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { request } from '../helpers/client.js';
import { FAST_RETRY, heldFault, testEndpoint } from '../helpers/files-endpoint.js';
import { fileBroker, mqRemoteStaging, MqClient, mqConfig } from '../helpers/mq-client.js';
import { BIN, spawnServer, writeServerIni, type ServerProcess } from '../helpers/process.js';
import { brokerTest } from '../helpers/rabbitmq.js';
import { makeRoot, managerConfig, startTestServer } from '../helpers/server.js';

const test = brokerTest();
const GALAXY = '/galaxy/files';

const theBroker = fileBroker(test);


async function client(t: ExecutionContext, prefix: string): Promise<MqClient> {
  const c = await MqClient.connect(theBroker().url, { keyPrefix: prefix });
  t.teardown(async () => c.close());
  return c;
}

/** A real `magnetar serve` process in MQ mode (restartable on the same root). */
async function serverFiles(t: ExecutionContext, prefix: string, managerLines: string[] = []): Promise<{ root: string; ini: string }> {
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  await fs.writeFile(path.join(root, 'job_managers.ini'), ['[manager:_default_]', 'type = queued_python', ...managerLines, ''].join('\n'));
  const ini = await writeServerIni(root, [
    `job_managers_config = ${root}/job_managers.ini`,
    `staging_directory = ${root}/staging`,
    `persistence_directory = ${root}/persisted`,
    `message_queue_url = ${theBroker().url}`,
    `amqp_key_prefix = ${prefix}`,
    'status_outbox_drain_interval = 0.2',
    'amqp_reconnect_max_delay = 1',
    'log_requests = false',
  ]);
  return { root, ini };
}

async function started(t: ExecutionContext, ini: string): Promise<ServerProcess> {
  const server = await spawnServer(ini);
  t.teardown(async () => server.kill('SIGKILL'));
  return server;
}

/** Run `magnetar serve` expecting it to stop at startup: its exit code and output. */
async function failedStart(ini: string): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, [BIN, 'serve', '--config', ini], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (c: Buffer) => { output += c.toString(); });
  child.stderr.on('data', (c: Buffer) => { output += c.toString(); });
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  return { code, output };
}

function prefix(): string {
  return `f${randomBytes(4).toString('hex')}`;
}

test.serial('broker kill -9 and restart while a job runs: /healthz shows the loss, the job’s terminal status still arrives exactly once', async (t) => {
  const p = prefix();
  const server = await startTestServer({
    app: { messageQueue: mqConfig(theBroker().url, { keyPrefix: p, reconnectMaxDelay: 1 }) },
    managers: (root) => [managerConfig(root)],
  });
  t.teardown(async () => server.stop());
  let c = await client(t, p);
  const id = '5001';
  await c.setup(id, 'sleep 3; echo ok > ../outputs/out');
  await c.waitFor('running', () => c.updatesOf(id).some((u) => u.status === 'running'));
  const seen = [...c.updatesOf(id)];
  await theBroker().kill9();
  const health = async (): Promise<string> => ((await request(server.url, 'GET', '/healthz')).json() as { message_queue: { state: string } }).message_queue.state;
  for (let i = 0; i < 200 && (await health()) === 'connected'; i++) await c.settle(50);
  t.not(await health(), 'connected');
  await c.close();
  await theBroker().start();
  c = await client(t, p);
  const terminal = await c.waitForTerminal(id, 90_000);
  t.is(terminal.status, 'complete');
  await c.settle();
  t.is([...seen, ...c.updatesOf(id)].filter((u) => u.status === 'complete').length, 1);
  for (let i = 0; i < 200 && (await health()) !== 'connected'; i++) await c.settle(50);
  t.is(await health(), 'connected');
});

test.serial('a broker that is down at startup is waited for: the server starts, /healthz says so, jobs run once it is up', async (t) => {
  const p = prefix();
  await theBroker().stop();
  const server = await startTestServer({
    app: { messageQueue: mqConfig(theBroker().url, { keyPrefix: p, reconnectMaxDelay: 1 }) },
    managers: (root) => [managerConfig(root)],
  });
  t.teardown(async () => server.stop());
  const health = (await request(server.url, 'GET', '/healthz')).json() as { message_queue: { state: string; lastError?: string } };
  t.not(health.message_queue.state, 'connected');
  t.true(server.logLines.some((l) => l.includes('not reachable yet')));
  await theBroker().start();
  const c = await client(t, p);
  // Until the server has declared its queues, a setup would be unroutable (dropped by the broker).
  const state = async (): Promise<string> => ((await request(server.url, 'GET', '/healthz')).json() as { message_queue: { state: string } }).message_queue.state;
  for (let i = 0; i < 400 && (await state()) !== 'connected'; i++) await c.settle(50);
  await c.setup('5101', 'true');
  t.is((await c.waitForTerminal('5101', 90_000)).status, 'complete');
});

test.serial('magnetar kill -9 while jobs are queued and running: after the restart each delivers exactly one terminal status', async (t) => {
  const p = prefix();
  const { ini } = await serverFiles(t, p, ['num_concurrent_jobs = 1']);
  const c = await client(t, p);
  let server = await started(t, ini);
  await c.setup('6001', 'sleep 2; echo a > ../outputs/a');
  await c.setup('6002', 'echo b > ../outputs/b');
  await c.waitFor('6001 running', () => c.updatesOf('6001').some((u) => u.status === 'running'));
  await c.waitFor('6002 queued', () => c.updatesOf('6002').some((u) => u.status === 'queued'));
  await server.kill('SIGKILL');
  server = await started(t, ini);
  t.is((await c.waitForTerminal('6001', 90_000)).status, 'complete');
  t.is((await c.waitForTerminal('6002', 90_000)).status, 'complete');
  await c.settle(2000);
  t.is(c.terminalsOf('6001').length, 1);
  t.is(c.terminalsOf('6002').length, 1);
  t.false(server.output().includes('guest:guest'));
});

test.serial('magnetar kill -9 during postprocessing (a stage-out under way): after the restart exactly one terminal status', async (t) => {
  const e = await testEndpoint(t);
  const p = prefix();
  const { ini } = await serverFiles(t, p, [
    'postprocess_action_max_retries = 3',
    `postprocess_action_interval_start = ${FAST_RETRY.intervalStart}`,
    `postprocess_action_interval_step = ${FAST_RETRY.intervalStep}`,
  ]);
  const c = await client(t, p);
  let server = await started(t, ini);
  const held = heldFault(t);
  e.faults.set(`${GALAXY}/out.dat`, [held.fault]);
  const id = '7001';
  await c.setup(id, 'head -c 200000 /dev/zero > ../outputs/out.dat', {
    remote_staging: mqRemoteStaging(e.filesEndpoint(id), [], ['out.dat']),
  });
  await held.reached;
  await server.kill('SIGKILL');
  held.release();
  server = await started(t, ini);
  const terminal = await c.waitForTerminal(id, 90_000);
  t.is(terminal.status, 'complete', JSON.stringify(terminal));
  t.is(e.posted.get(`${GALAXY}/out.dat`)?.length, 200000);
  await c.settle(2000);
  t.is(c.terminalsOf(id).length, 1);
});

test.serial('startup errors: a refused login and an unknown host stop the server with one line naming message_queue_url, without the password', async (t) => {
  const b = theBroker();
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  const cases = [
    `amqp://guest:s3cr3t-pw@127.0.0.1:${b.port}/`,
    'amqp://guest:s3cr3t-pw@no-such-host.invalid:5672/',
  ];
  for (const url of cases) {
    const ini = await writeServerIni(root, [`staging_directory = ${root}/staging`, `persistence_directory = ${root}/persisted`, `message_queue_url = ${url}`]);
    const { code, output } = await failedStart(ini);
    t.not(code, 0, output);
    t.regex(output, /magnetar: message_queue_url: cannot connect to the broker at amqp:\/\/guest:\*\*\*@/);
    t.false(output.includes('s3cr3t-pw'), output);
  }
  // Queues declared durable (by Galaxy) and a server told amqp_durable = false: said at startup.
  const p = prefix();
  const c = await client(t, p);
  await c.close();
  const nondurable = await writeServerIni(root, [`persistence_directory = ${root}/persisted`, `message_queue_url = ${b.url}`, `amqp_key_prefix = ${p}`, 'amqp_durable = false']);
  const mismatch = await failedStart(nondurable);
  t.not(mismatch.code, 0);
  t.regex(mismatch.output, /message_queue_url: .*PRECONDITION.FAILED.*durable/);
  const ini = await writeServerIni(root, [`persistence_directory = ${root}/persisted`, 'message_queue_url = amqp://u:s3cr3t-pw@[bad/']);
  const { code, output } = await failedStart(ini);
  t.is(code, 2);
  t.regex(output, /message_queue_url/);
  t.false(output.includes('s3cr3t-pw'));
});
