import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadConfig } from '../../src/config/index.js';
import { ConfigError } from '../../src/errors.js';

async function configIn(t: ExecutionContext, name: string, text: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-allowed-env-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.writeFile(path.join(dir, name), text);
  return dir;
}

test('allowed_env: default none; comma-separated in server.ini, a list in app.yml', async (t) => {
  const none = await configIn(t, 'app.yml', 'debug: false\n');
  t.deepEqual((await loadConfig({ cwd: none, env: {}, configFile: 'app.yml' })).config.app.allowedEnv, []);
  const ini = await configIn(t, 'server.ini', '[app:main]\nallowed_env = OMP_NUM_THREADS, TOOL_MODE\n');
  t.deepEqual((await loadConfig({ cwd: ini, env: {}, configFile: 'server.ini' })).config.app.allowedEnv, ['OMP_NUM_THREADS', 'TOOL_MODE']);
  const yaml = await configIn(t, 'app.yml', 'allowed_env:\n  - OMP_NUM_THREADS\n');
  t.deepEqual((await loadConfig({ cwd: yaml, env: {}, configFile: 'app.yml' })).config.app.allowedEnv, ['OMP_NUM_THREADS']);
});

test('allowed_env: a name that is not a shell variable stops the server naming the key', async (t) => {
  const dir = await configIn(t, 'app.yml', 'allowed_env: "OMP_NUM_THREADS, A; rm"\n');
  const error = await t.throwsAsync(loadConfig({ cwd: dir, env: {}, configFile: 'app.yml' }), { instanceOf: ConfigError });
  t.is((error as ConfigError | undefined)?.key, 'allowed_env');
  t.regex(error?.message ?? '', /environment variable names/);
});
