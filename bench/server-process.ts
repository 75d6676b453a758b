/**
 * The server under test, run as a separate `node bin/magnetar.js serve --config <tmp>/server.ini`
 * process so that its RSS and CPU time can be read from /proc and the load generator does not share
 * its event loop.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { log } from './stats.js';

/** Repository root: dist/bench/server-process.js → ../.. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface ServerProcessOptions {
  readonly root: string;
  readonly numConcurrentJobs: number;
  /** Run the server under `node --cpu-prof`, writing the profile into this directory. */
  readonly cpuProfDir?: string | undefined;
  /** MAGNETAR_LOG_LEVEL for the server (default: its own default, info). */
  readonly logLevel?: string | undefined;
  /** Server entry script (default `<repo>/bin/magnetar.js`), e.g. to compare another build. */
  readonly entry?: string | undefined;
  /** Listen on this port (default: a free one). A restart passes the old port so the config is the same. */
  readonly port?: number | undefined;
  /** Give up when /healthz has not answered after this long (default 20 s). Recovery of many jobs is slower. */
  readonly startTimeoutMs?: number | undefined;
  /** Interval between /healthz polls (default 50 ms); shorter when the start-up time itself is measured. */
  readonly healthPollMs?: number | undefined;
  /** More lines for the `_default_` manager's section of job_managers.ini (e.g. `sandbox = true`). */
  readonly managerLines?: readonly string[] | undefined;
}

export interface CpuTimes {
  /** user + system CPU seconds consumed by the server process so far. */
  readonly cpuSeconds: number;
}

export class ServerProcess {
  readonly host = '127.0.0.1';
  readonly port: number;
  readonly pid: number;
  readonly logFile: string;
  /** `process.hrtime.bigint()` right after the spawn, to time the start-up. */
  readonly spawnedAt: bigint;
  readonly #exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  private constructor(child: ChildProcess, port: number, logFile: string) {
    this.port = port;
    this.logFile = logFile;
    if (child.pid === undefined) throw new Error('server process has no pid');
    this.pid = child.pid;
    this.spawnedAt = process.hrtime.bigint();
    this.#exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.#exitInfo = { code, signal };
        resolve({ code, signal });
      });
    });
  }

  get exited(): boolean {
    return this.#exitInfo !== undefined;
  }

  /** Write server.ini + job_managers.ini, start the server and wait until /healthz answers. */
  static async start(options: ServerProcessOptions): Promise<ServerProcess> {
    const { root } = options;
    const port = options.port ?? (await freePort());
    const staging = path.join(root, 'staging');
    const persisted = path.join(root, 'persisted');
    const managersIni = path.join(root, 'job_managers.ini');
    const serverIni = path.join(root, 'server.ini');
    await fsp.writeFile(
      managersIni,
      ['[manager:_default_]', 'type = queued_python', `num_concurrent_jobs = ${options.numConcurrentJobs}`, ...(options.managerLines ?? []), ''].join('\n'),
    );
    await fsp.writeFile(
      serverIni,
      [
        '[server:main]',
        'host = 127.0.0.1',
        `port = ${port}`,
        '',
        '[app:main]',
        `staging_directory = ${staging}`,
        `persistence_directory = ${persisted}`,
        'log_requests = false',
        `job_managers_config = ${managersIni}`,
        '',
      ].join('\n'),
    );
    const logFile = path.join(root, 'server.log');
    const out = fs.openSync(logFile, 'a');
    const nodeArgs: string[] = [];
    if (options.cpuProfDir !== undefined) nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${options.cpuProfDir}`, '--cpu-prof-interval=250');
    const env: NodeJS.ProcessEnv = { ...process.env };
    if (options.logLevel !== undefined) env['MAGNETAR_LOG_LEVEL'] = options.logLevel;
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, [...nodeArgs, path.resolve(options.entry ?? path.join(REPO_ROOT, 'bin', 'magnetar.js')), 'serve', '--config', serverIni], {
        cwd: root,
        env,
        stdio: ['ignore', out, out],
      });
    } finally {
      fs.closeSync(out);
    }
    const server = new ServerProcess(child, port, logFile);
    const timeoutMs = options.startTimeoutMs ?? 20_000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (server.exited) throw new Error(`server exited during startup:\n${await server.logTail()}`);
      if (await healthy(port)) break;
      if (Date.now() > deadline) {
        await server.stop();
        throw new Error(`server did not answer /healthz within ${timeoutMs / 1000} s:\n${await server.logTail()}`);
      }
      await sleep(options.healthPollMs ?? 50);
    }
    log(`server pid ${server.pid} listening on 127.0.0.1:${port} (log: ${logFile})`);
    return server;
  }

  /** VmRSS / VmHWM of the server in bytes (0 if the process is gone). */
  memory(): { rss: number; hwm: number } {
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
    } catch {
      return { rss: 0, hwm: 0 };
    }
    const kb = (key: string): number => {
      const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
      return m === null ? 0 : Number(m[1]) * 1024;
    };
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  }

  /** CPU seconds (user + system) of the server process, from /proc/<pid>/stat. */
  cpuSeconds(): number {
    try {
      const stat = fs.readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const utime = Number(rest[11]);
      const stime = Number(rest[12]);
      return (utime + stime) / CLOCK_TICKS;
    } catch {
      return Number.NaN;
    }
  }

  /** Sample VmRSS every `intervalMs` until the returned function is called; it returns the peak. */
  sampleRss(intervalMs = 50): () => { peakRss: number; samples: number } {
    let peak = this.memory().rss;
    let samples = 1;
    const timer = setInterval(() => {
      const { rss } = this.memory();
      samples++;
      if (rss > peak) peak = rss;
    }, intervalMs);
    return () => {
      clearInterval(timer);
      const { rss } = this.memory();
      if (rss > peak) peak = rss;
      return { peakRss: peak, samples: samples + 1 };
    };
  }

  async logTail(lines = 30): Promise<string> {
    try {
      const text = await fsp.readFile(this.logFile, 'utf8');
      return text.split('\n').slice(-lines).join('\n');
    } catch {
      return '(no server log)';
    }
  }

  /** SIGKILL by pid (a crash: no shutdown code runs) and wait for the exit. */
  async kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.exited) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    return this.#exitInfo ?? (await this.#exited);
  }

  /** SIGTERM by pid, wait for the exit (SIGKILL after 10 s). */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.exited) {
      try {
        process.kill(this.pid, 'SIGTERM');
      } catch {
        // already gone
      }
      const timer = setTimeout(() => {
        try {
          process.kill(this.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }, 10_000);
      await this.#exited;
      clearTimeout(timer);
    }
    return this.#exitInfo ?? (await this.#exited);
  }
}

/** Linux USER_HZ; 100 on every mainstream kernel configuration. */
const CLOCK_TICKS = 100;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function healthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/healthz', agent: false, timeout: 1000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode === 200));
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}
