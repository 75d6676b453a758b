import test from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { request } from './helpers/client.js';
import { makeRoot } from './helpers/server.js';
import { writeServerIni } from './helpers/process.js';

const run = promisify(execFile);
const RUN_SH = fileURLToPath(new URL('../../scripts/run.sh', import.meta.url));

test('scripts/run.sh --daemon starts a server with a pid file and log, sources local_env.sh, and --stop-daemon stops it', async (t) => {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const ini = await writeServerIni(root, [`staging_directory = ${root}/staging`, `persistence_directory = ${root}/persisted`]);
  const port = /port = (\d+)/.exec(await fs.readFile(ini, 'utf8'))![1];
  await fs.writeFile(path.join(root, 'local_env.sh'), `echo "local_env sourced" >> "${root}/sourced"\nexport MAGNETAR_CONFIG_OVERRIDE_PRIVATE_TOKEN=from-local-env\n`);
  const started = await run(RUN_SH, ['--daemon'], { cwd: root });
  t.regex(started.stdout, /magnetar started \(pid \d+/);
  const pid = Number((await fs.readFile(path.join(root, 'magnetar.pid'), 'utf8')).trim());
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already stopped
    }
  });
  t.is(await fs.readFile(path.join(root, 'sourced'), 'utf8'), 'local_env sourced\n');
  const url = `http://127.0.0.1:${port}/`;
  let reply;
  for (let i = 0; i < 100; i++) {
    try {
      reply = await request(url, 'GET', '/healthz?private_token=from-local-env');
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  t.is(reply?.status, 200, 'the daemon serves, with the token set by local_env.sh');
  await t.throwsAsync(run(RUN_SH, ['--daemon'], { cwd: root }), undefined, 'a second daemon is refused');
  const stopped = await run(RUN_SH, ['--stop-daemon'], { cwd: root });
  t.regex(stopped.stdout, /stopped/);
  await t.throwsAsync(fs.access(path.join(root, 'magnetar.pid')));
  t.regex(await fs.readFile(path.join(root, 'magnetar.log'), 'utf8'), /magnetar listening/);
});
