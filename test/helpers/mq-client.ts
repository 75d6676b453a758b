/**
 * A Galaxy-like message-queue client: publishes setup, kill and status messages exactly as
 * Pulsar's client library does (PROTOCOL §11.2: exchange `pulsar`, routing key = queue name
 * `<prefix>_<name>`, JSON bodies, persistent; with the ack protocol the acknowledge_* keys), and
 * consumes `status_update`, answering acknowledgements when asked to.
 */
import * as amqp from 'amqplib';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestFn } from 'ava';
import type { MessageQueueConfig } from '../../src/config/index.js';
import { Broker } from './rabbitmq.js';

export interface StatusUpdate {
  readonly job_id: string;
  readonly status: string;
  readonly complete?: string;
  readonly acknowledge_uuid?: string;
  readonly force_noack?: boolean;
  readonly [key: string]: unknown;
}

export interface MqClientOptions {
  readonly manager?: string;
  readonly keyPrefix?: string;
  /** Add acknowledge_* keys to setup/kill messages and acknowledge status updates that ask. */
  readonly acknowledge?: boolean;
  /** Do not answer acknowledgements (to see the server republish). */
  readonly withholdAcks?: boolean;
}

export const TERMINAL = new Set(['complete', 'failed', 'cancelled', 'lost']);

export class MqClient {
  readonly #connection: amqp.ChannelModel;
  readonly #channel: amqp.ConfirmChannel;
  readonly #prefix: string;
  readonly #options: MqClientOptions;
  /** Every status update received, in order (duplicates included). */
  readonly updates: StatusUpdate[] = [];
  /** acknowledge_uuid_response messages received on the setup/kill ack queues. */
  readonly acks: string[] = [];
  readonly #waiters = new Set<() => void>();

  private constructor(connection: amqp.ChannelModel, channel: amqp.ConfirmChannel, prefix: string, options: MqClientOptions) {
    this.#connection = connection;
    this.#channel = channel;
    this.#prefix = prefix;
    this.#options = options;
  }

  static async connect(url: string, options: MqClientOptions = {}): Promise<MqClient> {
    const manager = options.manager ?? '_default_';
    const prefix = options.keyPrefix ?? (manager === '_default_' ? 'pulsar_' : `pulsar_${manager}_`);
    const connection = await amqp.connect(url);
    connection.on('error', () => undefined);
    const channel = await connection.createConfirmChannel();
    channel.on('error', () => undefined);
    await channel.assertExchange('pulsar', 'direct', { durable: true });
    const client = new MqClient(connection, channel, prefix, options);
    const updates = client.queue('status_update');
    await channel.assertQueue(updates, { durable: true });
    await channel.bindQueue(updates, 'pulsar', updates);
    await channel.consume(updates, (msg) => {
      if (msg === null) return;
      const body = JSON.parse(msg.content.toString('utf8')) as StatusUpdate;
      client.updates.push(body);
      if (body.acknowledge_uuid !== undefined && options.withholdAcks !== true) {
        channel.publish('pulsar', client.queue('status_update_ack'), Buffer.from(JSON.stringify({ acknowledge_uuid_response: body.acknowledge_uuid })), { persistent: true });
      }
      channel.ack(msg);
      client.#notify();
    });
    if (options.acknowledge === true) {
      for (const name of ['setup_ack', 'kill_ack']) {
        const q = client.queue(name);
        await channel.assertQueue(q, { durable: true });
        await channel.bindQueue(q, 'pulsar', q);
        await channel.consume(q, (msg) => {
          if (msg === null) return;
          client.acks.push((JSON.parse(msg.content.toString('utf8')) as { acknowledge_uuid_response: string }).acknowledge_uuid_response);
          channel.ack(msg);
          client.#notify();
        });
      }
    }
    return client;
  }

  queue(name: string): string {
    return `${this.#prefix}_${name}`;
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }

  /** Messages waiting in `<prefix>_<name>`. */
  async queuedMessages(name: string): Promise<number> {
    return (await this.#channel.checkQueue(this.queue(name))).messageCount;
  }

  /** Publish a raw body to `<prefix>_<name>` and wait for the broker's confirm. */
  async publishRaw(name: string, content: Buffer): Promise<void> {
    this.#channel.publish('pulsar', this.queue(name), content, { persistent: true, contentType: 'application/json' });
    await this.#channel.waitForConfirms();
  }

  /** Publish as Pulsar's client does (ack keys added unless force_noack); returns the acknowledge_uuid, if any. */
  async publish(name: string, payload: Record<string, unknown>): Promise<string | undefined> {
    const body = { ...payload };
    let uuid: string | undefined;
    if (this.#options.acknowledge === true && !('force_noack' in body)) {
      uuid = randomUUID();
      body['acknowledge_uuid'] = uuid;
      body['acknowledge_queue'] = `${name}_ack`;
      body['acknowledge_submit_queue'] = name;
    }
    await this.publishRaw(name, Buffer.from(JSON.stringify(body)));
    return uuid;
  }

  /** The setup message of MessageJobClient.launch (PROTOCOL §11.2). */
  async setup(jobId: string, commandLine: string, extra: Record<string, unknown> = {}): Promise<string | undefined> {
    return this.publish('setup', {
      command_line: commandLine,
      job_id: jobId,
      dynamic_file_sources: null,
      token_endpoint: null,
      setup_params: { job_id: jobId, tool_id: 'cat1', tool_version: '1.0.0', use_metadata: true, preserve_galaxy_python_environment: null },
      ...extra,
    });
  }

  async kill(jobId: string): Promise<string | undefined> {
    return this.publish('kill', { job_id: jobId });
  }

  /** A status request as the client library sends it: to the setup queue, force_noack. */
  async requestStatus(jobId: string): Promise<void> {
    await this.publish('setup', { request: 'status', job_id: jobId, force_noack: true });
  }

  updatesOf(jobId: string): StatusUpdate[] {
    return this.updates.filter((u) => u.job_id === jobId);
  }

  terminalsOf(jobId: string): StatusUpdate[] {
    return this.updatesOf(jobId).filter((u) => TERMINAL.has(u.status));
  }

  /** Wait until `predicate` holds (checked on every message received), at most `ms`. */
  async waitFor(what: string, predicate: () => boolean, ms = 60_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!predicate()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; updates: ${JSON.stringify(this.updates.map((u) => [u.job_id, u.status]))}`);
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.#waiters.delete(done);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, 250));
        this.#waiters.add(done);
      });
    }
  }

  async waitForTerminal(jobId: string, ms = 60_000): Promise<StatusUpdate> {
    await this.waitFor(`a terminal status of ${jobId}`, () => this.terminalsOf(jobId).length > 0, ms);
    const first = this.terminalsOf(jobId)[0];
    if (first === undefined) throw new Error('unreachable');
    return first;
  }

  /** Let messages under way arrive (used before counting: "exactly one"). */
  async settle(ms = 1500): Promise<void> {
    await sleep(ms);
  }

  async close(): Promise<void> {
    await this.#connection.close().catch(() => undefined);
  }
}

/** Message-queue settings for a test server (fast timers; the rest as the schema's defaults). */
export function mqConfig(url: string, overrides: Partial<MessageQueueConfig> = {}): MessageQueueConfig {
  return {
    url,
    consume: true,
    publish: true,
    keyPrefix: undefined,
    durable: true,
    acknowledge: false,
    ackRepublishTime: 30,
    heartbeat: 60,
    prefetch: 8,
    maxMessageSize: 32 * 1024 * 1024,
    publishTimeout: 30,
    publishRetry: undefined,
    reconnectMaxDelay: 1,
    tls: { caCerts: undefined, certFile: undefined, keyFile: undefined, certReqs: 'cert_required' },
    outboxDrainInterval: 0.2,
    ...overrides,
  };
}

/** One private broker for a test file: started before its tests, closed after; the getter throws if it never started. */
export function fileBroker(test: TestFn): () => Broker {
  let broker: Broker | undefined;
  test.before(async () => {
    broker = await Broker.start();
  });
  test.after.always(async () => {
    await broker?.close();
  });
  return () => {
    if (broker === undefined) throw new Error('the broker did not start');
    return broker;
  };
}

/** A setup message's `remote_staging` (unencoded): stage-in `setup` entries, outputs under `galaxyDir` pushed to `filesEndpoint`. */
export function mqRemoteStaging(filesEndpoint: string, setup: object[], outputs: string[], galaxyDir = '/galaxy/files'): object {
  return {
    setup,
    action_mapper: { default_action: 'remote_transfer', files_endpoint: filesEndpoint, ssh_key: null, paths: [] },
    client_outputs: {
      working_directory: '/galaxy/jobs/w',
      metadata_directory: '/galaxy/jobs/m',
      job_directory: null,
      work_dir_outputs: [],
      output_files: outputs.map((o) => `${galaxyDir}/${o}`),
      version_file: null,
      dynamic_outputs: [],
      dynamic_file_sources: [],
      dataset_collector_descriptions: [],
    },
    ssh_key: null,
  };
}
