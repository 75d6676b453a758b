import test from 'ava';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/log.js';
import { startServer } from '../../src/server.js';
import { qs, request, setupJob, statusOf } from '../helpers/client.js';
import { makeRoot, managerConfig, testConfig } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';

// One test in this file: ava runs each file in its own process, so every child process of
// `process.pid` was started by the servers below.

/** Pids of this process's live children (a zombie has exited: only its exit is not yet collected). */
async function children(): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await fs.readFile(`/proc/${entry}/stat`, 'utf8');
      // pid (comm) state ppid …: comm may hold spaces and parentheses, so read after the last ')'.
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(ppid) === process.pid && state !== 'Z') pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

async function takenPort(): Promise<{ port: number; close: () => Promise<void> }> {
  const holder = net.createServer();
  await new Promise<void>((resolve, reject) => {
    holder.once('error', reject);
    holder.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    port: (holder.address() as net.AddressInfo).port,
    close: () => new Promise((resolve) => holder.close(() => resolve())),
  };
}

async function submit(base: string, id: string, command: string): Promise<void> {
  const r = await request(base, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command })}`);
  if (r.text !== 'OK') throw new Error(`submit of ${id} answered ${r.status}: ${r.text}`);
}

test('a server that cannot listen stops what its recovery started: no child process is left behind', async (t) => {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const config = testConfig(root, {}, [managerConfig(root, { numConcurrentJobs: 1 })]);
  const log = createLogger({ destination: new Writable({ write: (_chunk, _enc, cb) => cb() }) });
  const release = path.join(root, 'release');
  const staging = path.join(root, 'staging');

  // A first server leaves a job queued behind one that holds the only slot, and a few set up only.
  const first = await startServer(config, { log, env: process.env, port: 0 });
  try {
    await setupJob(first.url, 'blocker');
    await submit(first.url, 'blocker', `while [ ! -e '${release}' ]; do sleep 0.05; done`);
    await waitUntil('blocker running', async () => (await statusOf(first.url, 'blocker')) === 'running', 20_000);
    await setupJob(first.url, 'waiting');
    await submit(first.url, 'waiting', 'true');
    t.is(await statusOf(first.url, 'waiting'), 'queued');
    // Nothing else is recovered after "waiting": its launch is still under way when the listen
    // fails, and shutting the services down must wait for it and then stop its launcher.
  } finally {
    await first.close();
  }
  await fs.writeFile(release, '');
  await waitUntil('blocker ended', async () => fs.access(path.join(staging, 'blocker', 'return_code')).then(() => true, () => false), 20_000);
  await waitUntil("the first server's launcher gone", async () => (await children()).length === 0, 20_000);

  // The second start recovers "waiting" and launches it (a launcher process), then cannot listen.
  const holder = await takenPort();
  t.teardown(() => holder.close());
  await t.throwsAsync(startServer(config, { log, env: process.env, port: holder.port }), { code: 'EADDRINUSE' });
  await waitUntil('the recovered job launched', async () => fs.access(path.join(staging, 'waiting', 'pid')).then(() => true, () => false), 20_000);
  await t.notThrowsAsync(waitUntil('no child process left', async () => (await children()).length === 0, 10_000));
});
