/**
 * Relay mode across a kill -9 of the real `magnetar serve` process: messages published while it
 * handles others, and while it is down, are all acted on once; every job gets exactly one terminal
 * status update (the outbox's re-drain reuses the entry's Idempotency-Key).
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { spawnServer, writeServerIni, type ServerProcess } from '../helpers/process.js';
import { makeRoot } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';
import { Galaxy, PASSWORD, relayFake, settle, USER, within } from './helpers.js';

async function serverFiles(t: ExecutionContext, relayUrl: string): Promise<string> {
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  await fs.writeFile(path.join(root, 'job_managers.ini'), '[manager:_default_]\ntype = queued_python\nnum_concurrent_jobs = 8\n');
  return writeServerIni(root, [
    `job_managers_config = ${root}/job_managers.ini`,
    `staging_directory = ${root}/staging`,
    `persistence_directory = ${root}/persisted`,
    `message_queue_url = ${relayUrl}`,
    `message_queue_username = ${USER}`,
    `message_queue_password = ${PASSWORD}`,
    'relay_long_poll_timeout = 2',
    'status_outbox_drain_interval = 0.2',
    'log_requests = false',
  ]);
}

async function started(t: ExecutionContext, ini: string): Promise<ServerProcess> {
  const server = await spawnServer(ini);
  t.teardown(async () => server.kill('SIGKILL'));
  return server;
}

test.serial('kill -9 with messages in flight and published while down: every job acted on once, exactly one terminal update each', async (t) => {
  const fake = await relayFake(t);
  const galaxy = new Galaxy(fake);
  const ini = await serverFiles(t, fake.url);
  const first = await started(t, ini);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  const running = ['6001', '6002', '6003'];
  for (const id of running) galaxy.setup(id, id === '6002' ? 'sleep 60' : 'sleep 3; echo ok > ../outputs/out');
  await within('running', Promise.all(running.map(async (id) => galaxy.whenStatus(id, 'running'))));
  // In flight: published as the server dies (handled or not, the cursor says which).
  const inFlight = ['6004', '6005', '6006'];
  for (const id of inFlight) galaxy.setup(id, 'sleep 1');
  await first.kill('SIGKILL');
  // While it is down.
  galaxy.kill('6002');
  galaxy.setup('6007', 'true');
  const second = await started(t, ini);
  const all = [...running, ...inFlight, '6007'];
  await within(
    'every terminal status',
    waitUntil('terminals', async () => all.every((id) => galaxy.terminals(id).length > 0), 60_000),
    70_000,
  );
  await settle(2500);
  for (const id of all) t.is(galaxy.terminals(id).length, 1, `${id}: ${galaxy.statuses(id).join(',')}`);
  t.is(galaxy.terminals('6002')[0]?.['status'], 'cancelled');
  for (const id of all.filter((i) => i !== '6002')) t.is(galaxy.terminals(id)[0]?.['status'], 'complete', id);
  // Republished entries kept their keys: nothing stored twice even if sent twice.
  const keys = fake.published.filter((p) => p.topic === 'job_status_update' && !p.duplicate).map((p) => p.idempotencyKey);
  t.is(new Set(keys).size, keys.length);
  await second.kill('SIGTERM');
});
