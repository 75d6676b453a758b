/**
 * A private RabbitMQ broker for the `mq` bench section: Debian's `rabbitmq-server` on 127.0.0.1
 * with its own data directory, node name, epmd and ports, stopped by PID.
 *
 * The tests' broker (test/helpers/rabbitmq.ts) cannot be imported here: that module imports `ava`,
 * which exits any process not started by the AVA CLI. This is the same start-up, reduced to what
 * the bench needs (start once, close); no restarts.
 */
import * as amqp from 'amqplib';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../test/helpers/process.js';

const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';

/** Why a broker cannot be started here, or undefined when it can. */
export function brokerUnavailable(): string | undefined {
  return existsSync(RABBITMQ_SERVER) ? undefined : `${RABBITMQ_SERVER} is missing (Debian package rabbitmq-server)`;
}

/** Does the broker take an AMQP login yet? */
async function accepts(url: string): Promise<boolean> {
  try {
    const connection = await amqp.connect(url);
    await connection.close();
    return true;
  } catch {
    return false;
  }
}

async function gone(child: ChildProcess, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await Promise.race([new Promise((resolve) => child.once('exit', resolve)), sleep(ms)]);
}

export class BenchBroker {
  readonly dir: string;
  readonly port: number;
  readonly #server: ChildProcess;
  readonly #epmd: ChildProcess;

  private constructor(dir: string, port: number, server: ChildProcess, epmd: ChildProcess) {
    this.dir = dir;
    this.port = port;
    this.#server = server;
    this.#epmd = epmd;
  }

  /** guest/guest on the default vhost (loopback_users = none). */
  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.port}/`;
  }

  get pid(): number | undefined {
    return this.#server.pid;
  }

  /** Start a broker in `dir` (created); resolves once it takes an AMQP login (60 s at most). */
  static async start(dir: string): Promise<BenchBroker> {
    const [port, distPort, epmdPort] = [await freePort(), await freePort(), await freePort()];
    await fs.mkdir(path.join(dir, 'log'), { recursive: true });
    await fs.writeFile(path.join(dir, 'rabbit.conf'), `listeners.tcp.default = 127.0.0.1:${port}\nloopback_users = none\n`);
    await fs.writeFile(path.join(dir, 'enabled_plugins'), '[].\n');
    const env: NodeJS.ProcessEnv = {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      HOME: dir,
      LANG: 'C.UTF-8',
      ERL_EPMD_PORT: String(epmdPort),
      ERL_EPMD_ADDRESS: '127.0.0.1',
      RABBITMQ_NODENAME: `magnetarbench${port}@localhost`,
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
      RABBITMQ_NODE_PORT: String(port),
      RABBITMQ_DIST_PORT: String(distPort),
      RABBITMQ_MNESIA_BASE: path.join(dir, 'mnesia'),
      RABBITMQ_LOG_BASE: path.join(dir, 'log'),
      RABBITMQ_CONFIG_FILE: path.join(dir, 'rabbit'),
      RABBITMQ_ENABLED_PLUGINS_FILE: path.join(dir, 'enabled_plugins'),
      RABBITMQ_PID_FILE: path.join(dir, 'pid'),
      // The script then execs the VM: the child's PID is the broker's, so it is stopped by PID.
      RUNNING_UNDER_SYSTEMD: '1',
    };
    const epmdBin = ['/usr/bin/epmd', '/usr/lib/erlang/bin/epmd'].find((p) => existsSync(p)) ?? 'epmd';
    const epmd = spawn(epmdBin, ['-port', String(epmdPort), '-address', '127.0.0.1'], { env, stdio: 'ignore' });
    epmd.once('error', () => undefined);
    const out = await fs.open(path.join(dir, 'log', 'console.log'), 'a');
    const server = spawn(RABBITMQ_SERVER, [], { env, cwd: dir, stdio: ['ignore', out.fd, out.fd] });
    await out.close();
    const broker = new BenchBroker(dir, port, server, epmd);
    let exited: string | undefined;
    server.once('error', (error) => (exited = error.message));
    server.once('exit', (code, signal) => (exited = `exited (${code ?? signal})`));
    const deadline = Date.now() + 60_000;
    while (!(await accepts(broker.url))) {
      if (exited !== undefined || Date.now() > deadline) {
        await broker.close(false);
        throw new Error(`rabbitmq-server ${exited ?? 'did not listen within 60 s'}; see ${path.join(dir, 'log')}`);
      }
      await sleep(100);
    }
    return broker;
  }

  /** SIGKILL the broker and its epmd now (for a SIGINT handler); `close` still removes the directory. */
  killNow(): void {
    for (const child of [this.#server, this.#epmd]) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }

  /** Kill the broker and its epmd by PID; remove the data directory unless `remove` is false. */
  async close(remove = true): Promise<void> {
    for (const child of [this.#server, this.#epmd]) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await gone(child, 10_000);
      }
    }
    if (remove) await fs.rm(this.dir, { recursive: true, force: true });
  }
}
