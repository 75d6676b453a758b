/**
 * A private RabbitMQ broker for the message-queue tests: Debian's `rabbitmq-server`, started by the
 * test on 127.0.0.1 with its own data directory, node name, epmd and ports, and stopped by PID. The
 * broker keeps its data directory across `restart()` and `kill9()` + `start()`, so durable queues
 * and persistent messages survive as they would on a real site.
 *
 * No `ava` here: the bench (bench/mq.ts) starts its broker with this class too. `brokerTest` is in
 * test/helpers/rabbitmq.ts.
 */
import * as amqp from 'amqplib';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './process.js';

const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';
const EPMD = process.env['MAGNETAR_TEST_EPMD'] ?? findEpmd();

function findEpmd(): string {
  for (const candidate of ['/usr/bin/epmd', '/usr/lib/erlang/bin/epmd']) if (existsSync(candidate)) return candidate;
  return 'epmd';
}

/** Does the broker take an AMQP login yet? (Its port opens before it does.) */
async function accepts(url: string): Promise<boolean> {
  try {
    const connection = await amqp.connect(url);
    await connection.close();
    return true;
  } catch {
    return false;
  }
}

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return Promise.race([
    new Promise<boolean>((resolve) => child.once('exit', () => resolve(true))),
    sleep(ms).then(() => false),
  ]);
}

export interface BrokerOptions {
  /** The data directory (kept across restarts); a new temporary one when unset. */
  readonly dir?: string;
  /** Extra lines for rabbit.conf (sysctl format). */
  readonly config?: readonly string[];
}

export class Broker {
  readonly dir: string;
  readonly port: number;
  readonly #distPort: number;
  readonly #epmdPort: number;
  readonly #config: readonly string[];
  #epmd: ChildProcess | undefined;
  #server: ChildProcess | undefined;

  private constructor(dir: string, port: number, distPort: number, epmdPort: number, config: readonly string[]) {
    this.dir = dir;
    this.port = port;
    this.#distPort = distPort;
    this.#epmdPort = epmdPort;
    this.#config = config;
    // A test or bench that dies before its teardown must not leave a broker behind.
    process.once('exit', this.#onExit);
  }

  readonly #onExit = (): void => this.killNow();

  /** Create and start a broker; resolves once it accepts AMQP connections. */
  static async start(options: BrokerOptions = {}): Promise<Broker> {
    const dir = options.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-rabbitmq-')));
    const broker = new Broker(dir, await freePort(), await freePort(), await freePort(), options.config ?? []);
    try {
      await broker.start();
    } catch (error) {
      await broker.close();
      throw error;
    }
    return broker;
  }

  /** The AMQP URL of the broker (guest/guest, the default vhost). */
  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.port}/`;
  }

  get running(): boolean {
    return this.#server !== undefined && this.#server.exitCode === null && this.#server.signalCode === null;
  }

  /** The broker's process id (beam), while it runs. */
  get pid(): number | undefined {
    return this.running ? this.#server?.pid : undefined;
  }

  async start(): Promise<void> {
    if (this.running) return;
    await fs.mkdir(path.join(this.dir, 'log'), { recursive: true });
    const conf = [`listeners.tcp.default = 127.0.0.1:${this.port}`, 'loopback_users = none', ...this.#config];
    await fs.writeFile(path.join(this.dir, 'rabbit.conf'), `${conf.join('\n')}\n`);
    await fs.writeFile(path.join(this.dir, 'enabled_plugins'), '[].\n');
    const env: NodeJS.ProcessEnv = {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      HOME: this.dir,
      LANG: 'C.UTF-8',
      ERL_EPMD_PORT: String(this.#epmdPort),
      ERL_EPMD_ADDRESS: '127.0.0.1',
      RABBITMQ_NODENAME: `magnetar${this.port}@localhost`,
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
      RABBITMQ_NODE_PORT: String(this.port),
      RABBITMQ_DIST_PORT: String(this.#distPort),
      RABBITMQ_MNESIA_BASE: path.join(this.dir, 'mnesia'),
      RABBITMQ_LOG_BASE: path.join(this.dir, 'log'),
      RABBITMQ_CONFIG_FILE: path.join(this.dir, 'rabbit'),
      RABBITMQ_ENABLED_PLUGINS_FILE: path.join(this.dir, 'enabled_plugins'),
      RABBITMQ_PID_FILE: path.join(this.dir, 'pid'),
      // The script then execs the VM: the child's PID is the broker's, so it is stopped by PID.
      RUNNING_UNDER_SYSTEMD: '1',
    };
    if (this.#epmd === undefined || this.#epmd.exitCode !== null) {
      this.#epmd = spawn(EPMD, ['-port', String(this.#epmdPort), '-address', '127.0.0.1'], { env, stdio: 'ignore' });
      this.#epmd.once('error', () => undefined);
    }
    const out = await fs.open(path.join(this.dir, 'log', 'console.log'), 'a');
    try {
      const child = spawn(RABBITMQ_SERVER, [], { env, cwd: this.dir, stdio: ['ignore', out.fd, out.fd] });
      this.#server = child;
      const failed = new Promise<never>((_, reject) => {
        child.once('error', reject);
        child.once('exit', (code, signal) => reject(new Error(`rabbitmq-server exited (${code ?? signal}); see ${path.join(this.dir, 'log')}`)));
      });
      failed.catch(() => undefined);
      const deadline = Date.now() + 60_000;
      while (!(await portOpen(this.port)) || !(await accepts(this.url))) {
        if (Date.now() > deadline) throw new Error(`rabbitmq-server did not take a login on 127.0.0.1:${this.port} within 60 s`);
        await Promise.race([sleep(100), failed]);
      }
    } catch (error) {
      await this.kill9();
      throw error;
    } finally {
      await out.close();
    }
  }

  /** SIGKILL the broker and its epmd now, synchronously (a SIGINT or exit handler); `close` still removes the directory. */
  killNow(): void {
    for (const child of [this.#server, this.#epmd]) if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }

  /** Stop the broker gracefully (its data is kept). */
  async stop(): Promise<void> {
    const child = this.#server;
    if (child === undefined || !this.running) return;
    child.kill('SIGTERM');
    if (!(await exited(child, 30_000))) {
      child.kill('SIGKILL');
      await exited(child, 10_000);
    }
  }

  /** Kill the broker with SIGKILL, as a crash would (its data is kept). */
  async kill9(): Promise<void> {
    const child = this.#server;
    if (child === undefined || !this.running) return;
    child.kill('SIGKILL');
    await exited(child, 10_000);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Stop the broker and its epmd; remove the data directory unless `remove` is false. */
  async close(remove = true): Promise<void> {
    process.removeListener('exit', this.#onExit);
    await this.kill9();
    const epmd = this.#epmd;
    if (epmd !== undefined && epmd.exitCode === null) {
      epmd.kill('SIGKILL');
      await exited(epmd, 5_000);
    }
    if (remove) await fs.rm(this.dir, { recursive: true, force: true });
  }
}


/** Why a broker cannot be started here, or undefined when it can. */
export function brokerUnavailable(): string | undefined {
  if (!existsSync(RABBITMQ_SERVER)) return `${RABBITMQ_SERVER} is missing (Debian package rabbitmq-server; .ci/run installs it)`;
  return undefined;
}
