import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from './client.js';
import { makeRoot } from './server.js';

export const BIN = fileURLToPath(new URL('../../../bin/magnetar.js', import.meta.url));

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export interface ServerProcess {
  readonly url: string;
  readonly child: ChildProcess;
  readonly output: () => string;
  /** Send a signal to exactly this server process and wait for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Write `<root>/server.ini` (host 127.0.0.1, a free port unless given) with these [app:main] lines. */
export async function writeServerIni(root: string, appLines: string[], port?: number): Promise<string> {
  const p = port ?? (await freePort());
  const file = path.join(root, 'server.ini');
  await fs.writeFile(file, ['[server:main]', 'host = 127.0.0.1', `port = ${p}`, '', '[app:main]', ...appLines, ''].join('\n'));
  return file;
}

/** Run `magnetar serve --config FILE` as a real child process and wait for /healthz. */
export async function spawnServer(configFile: string, extraEnv: Record<string, string> = {}): Promise<ServerProcess> {
  const text = await fs.readFile(configFile, 'utf8');
  const port = /^port\s*=\s*(\d+)/m.exec(text)?.[1];
  if (port === undefined) throw new Error('server.ini has no port');
  const child = spawn(process.execPath, [BIN, 'serve', '--config', configFile], {
    env: { ...process.env, ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr.on('data', (c: Buffer) => { out += c.toString(); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}/`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited (${child.exitCode}): ${out}`);
    try {
      const r = await request(url, 'GET', '/healthz');
      if (r.status === 200 || r.status === 401) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`server did not become healthy: ${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    child,
    output: () => out,
    async kill(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

/**
 * A temp root (removed when the test ends) holding `job_managers.ini` (`managersIni`, the whole
 * file) and a `server.ini` that puts staging, persistence and that managers file inside it.
 */
export async function serverRoot(t: { teardown(fn: () => Promise<void>): void }, managersIni: string): Promise<{ root: string; ini: string }> {
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  await fs.writeFile(path.join(root, 'job_managers.ini'), managersIni);
  const ini = await writeServerIni(root, [
    `staging_directory = ${root}/staging`,
    `persistence_directory = ${root}/persisted`,
    `job_managers_config = ${root}/job_managers.ini`,
  ]);
  return { root, ini };
}
