/**
 * The AMQP front door of one manager (PROTOCOL §11): a thin adapter that turns messages into the
 * same JobService calls as HTTP, and publishes the status feed's updates.
 *
 * - Topology: exchange `pulsar` (direct), queues `<prefix>_setup`, `_kill`, `_status`,
 *   `_status_update` (and with the ack protocol `_status_update_ack`, `_setup_ack`, `_kill_ack`),
 *   each bound under its own name; durable unless `amqp_durable` is false.
 *   The server declares `_status_update` too, so updates wait there until Galaxy consumes.
 * - A setup message is acknowledged (AMQP) only once `service.submit` resolved: the job is
 *   recorded. A duplicate is ignored by the service (and by the consume store, with acks).
 * - A malformed message (too big, not JSON, wrong shape, bad job id) is logged without its content
 *   and rejected without requeue (dead-lettered where the queue has a DLX); the consumer goes on.
 * - Status updates are published on a confirm channel: `publish` resolves on the broker's confirm,
 *   and the feed drops the outbox entry only then.
 */
import type * as amqp from 'amqplib';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MessageQueueConfig } from '../config/types.js';
import { JobRefused, MagnetarError, ServerStopping, TooManyJobs, messageOf } from '../errors.js';
import type { JobService } from '../jobs/service.js';
import type { Logger } from '../log.js';
import type { LinkUser } from './amqp.js';
import { ACK_QUEUE_SUFFIX, PARSERS, ackUuidOf, jobIdOfRefusedSetup, type AckRequest, type InboundMessage, type MessageLimits } from './messages.js';
import type { StatusFeed } from './status-feed.js';
import type { OutboxEntry, StatusPublisher } from './types.js';

export const EXCHANGE = 'pulsar';
/** Upstream's ack manager period (seconds); shorter when the republish time is. */
const ACK_SWEEP_SECONDS = 15;
/** Consume-store entries (uuids of messages already acted on) are kept this long. */
const CONSUME_STORE_RETENTION_MS = 7 * 24 * 3600 * 1000;
/** How long a setup that failed on the server's side (5xx) waits before it is requeued once. */
const REQUEUE_DELAY_MS = 1000;
/** How long a setup refused for `max_live_jobs` waits before it goes back to the queue. */
const BUSY_REQUEUE_DELAY_MS = 5000;

type ConsumedQueue = keyof typeof PARSERS;
type Outcome = 'ack' | 'reject' | 'requeue' | 'leave';

/** `<prefix>_<name>` (PROTOCOL §11.1): prefix `amqp_key_prefix`, else `pulsar_` / `pulsar_<manager>_`. */
export function queueName(manager: string, keyPrefix: string | undefined, name: string): string {
  const prefix = keyPrefix ?? (manager === '_default_' ? 'pulsar_' : `pulsar_${manager}_`);
  return `${prefix}_${name}`;
}

export interface FrontDoorOptions {
  readonly service: JobService;
  /** The manager's status feed; undefined when `message_queue_publish` is off. */
  readonly feed: StatusFeed | undefined;
  readonly mq: MessageQueueConfig;
  readonly persistenceDirectory: string;
  readonly log: Logger;
}

export class AmqpFrontDoor implements LinkUser, StatusPublisher {
  readonly #service: JobService;
  readonly #feed: StatusFeed | undefined;
  readonly #mq: MessageQueueConfig;
  readonly #log: Logger;
  readonly #manager: string;
  readonly #acks: AckStores | undefined;
  readonly #limits: MessageLimits;
  #consume: amqp.Channel | undefined;
  #confirm: amqp.ConfirmChannel | undefined;
  #closing = false;
  readonly #tasks = new Set<Promise<void>>();
  #sweepTimer: NodeJS.Timeout | undefined;
  /** Messages rejected as malformed since startup (for /healthz). */
  rejected = 0;

  constructor(options: FrontDoorOptions) {
    this.#service = options.service;
    this.#feed = options.feed;
    this.#mq = options.mq;
    this.#manager = options.service.manager.name;
    this.#log = options.log.child({ component: 'amqp', manager: this.#manager });
    this.#acks = options.mq.acknowledge ? new AckStores(path.join(options.persistenceDirectory, `amqp_ack-${this.#manager}`), this.#log) : undefined;
    this.#limits = { ...options.service.submitLimits, maxMessageSize: options.mq.maxMessageSize };
  }

  /** Create the ack stores; start the republish sweep. */
  async open(): Promise<void> {
    if (this.#acks === undefined) return;
    await this.#acks.open();
    const everyMs = Math.max(100, Math.min(ACK_SWEEP_SECONDS, this.#mq.ackRepublishTime / 2) * 1000);
    this.#sweepTimer = setInterval(() => this.#track(this.#republishDue()), everyMs);
    this.#sweepTimer.unref();
  }

  #queue(name: string): string {
    return queueName(this.#manager, this.#mq.keyPrefix, name);
  }

  // ---------------------------------------------------------------- connection

  async connected(connection: amqp.ChannelModel): Promise<void> {
    const { durable } = this.#mq;
    const confirm = await connection.createConfirmChannel();
    confirm.on('error', (error: Error) => this.#log.warn({ reason: messageOf(error) }, 'publish channel error'));
    // A channel the broker closed on its own (a channel error) while the connection lives: drop the
    // connection, so the link reconnects and every channel is opened again.
    const reopen = (): void => {
      if (!this.#closing) connection.close().catch(() => undefined);
    };
    confirm.once('close', () => {
      if (this.#confirm !== confirm) return;
      this.#confirm = undefined;
      reopen();
    });
    await confirm.assertExchange(EXCHANGE, 'direct', { durable });
    const names = ['setup', 'kill', 'status', 'status_update'];
    // Replies to the client's setup and kill wait in their queues; a reply to a status-queue message
    // (no client consumes `status_ack`) is not kept: nobody would ever drain that queue.
    if (this.#mq.acknowledge) names.push('status_update_ack', 'setup_ack', 'kill_ack');
    for (const name of names) {
      const queue = this.#queue(name);
      await confirm.assertQueue(queue, { durable });
      await confirm.bindQueue(queue, EXCHANGE, queue);
    }
    this.#confirm = confirm;
    const consumed: ConsumedQueue[] = [];
    if (this.#mq.consume && !this.#closing) consumed.push('setup', 'kill', 'status');
    if (this.#mq.acknowledge && this.#mq.publish) consumed.push('status_update_ack');
    if (consumed.length > 0) {
      const channel = await connection.createChannel();
      channel.on('error', (error: Error) => this.#log.warn({ reason: messageOf(error) }, 'consume channel error'));
      channel.once('close', () => {
        if (this.#consume !== channel) return;
        this.#consume = undefined;
        reopen();
      });
      await channel.prefetch(this.#mq.prefetch);
      this.#consume = channel;
      for (const name of consumed) {
        const queue = this.#queue(name);
        await channel.consume(queue, (msg) => {
          if (msg !== null) this.#track(this.#handle(name, channel, msg));
          else this.#log.warn({ queue }, 'the broker cancelled the consumer (queue deleted?): consuming again after the next reconnect');
        });
      }
    }
    this.#log.info({ consuming: consumed.map((n) => this.#queue(n)), publishing: this.#mq.publish ? this.#queue('status_update') : undefined }, 'message queues ready');
    this.#feed?.kick();
  }

  disconnected(): void {
    this.#consume = undefined;
    this.#confirm = undefined;
  }

  /** Stop consuming (unacknowledged messages go back to their queues); wait for the handlers under way. */
  async stopConsuming(): Promise<void> {
    this.#closing = true;
    const channel = this.#consume;
    this.#consume = undefined;
    if (channel !== undefined) await channel.close().catch(() => undefined);
    await Promise.allSettled([...this.#tasks]);
  }

  async close(): Promise<void> {
    clearInterval(this.#sweepTimer);
    await this.stopConsuming();
    await Promise.allSettled([...this.#tasks]);
  }

  #track(task: Promise<void>): void {
    const tracked = task.catch((error: unknown) => this.#log.error({ err: error }, 'message handling failed'));
    this.#tasks.add(tracked);
    void tracked.finally(() => this.#tasks.delete(tracked));
  }

  // ---------------------------------------------------------------- publishing

  get ready(): boolean {
    return this.#confirm !== undefined;
  }

  /** Publish one status update (PROTOCOL §11.2) and resolve on the broker's confirm. */
  async publish(entry: OutboxEntry): Promise<void> {
    const payload: Record<string, unknown> = { ...entry.payload };
    if (this.#acks !== undefined) {
      const uuid = ackUuidOf(entry.id);
      payload['acknowledge_uuid'] = uuid;
      payload['acknowledge_queue'] = `status_update${ACK_QUEUE_SUFFIX}`;
      payload['acknowledge_submit_queue'] = 'status_update';
      await this.#acks.remember(uuid, payload);
    }
    await this.#withRetry(async () => this.#confirmed(this.#queue('status_update'), payload));
  }

  /** `amqp_publish_retry`: upstream's kombu policy (interval start, + step each time, capped); off: one attempt. */
  async #withRetry(publish: () => Promise<void>): Promise<void> {
    const retry = this.#mq.publishRetry;
    let interval = retry?.intervalStart ?? 0;
    for (let attempt = 0; ; attempt++) {
      try {
        await publish();
        return;
      } catch (error) {
        if (retry === undefined || attempt >= retry.maxRetries || this.#closing) throw error;
        this.#log.info({ reason: messageOf(error), retryIn: interval }, 'publish failed: retrying');
        await sleep(interval * 1000);
        interval = Math.min(retry.intervalMax, interval + retry.intervalStep);
      }
    }
  }

  /** Publish on the confirm channel; resolves when the broker confirmed, rejects on nack, close or timeout. */
  async #confirmed(routingKey: string, body: object): Promise<void> {
    const channel = this.#confirm;
    if (channel === undefined) throw new Error('not connected to the broker');
    const content = Buffer.from(JSON.stringify(body));
    const { durable } = this.#mq;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the broker did not confirm within amqp_publish_timeout (${this.#mq.publishTimeout} s)`)), this.#mq.publishTimeout * 1000);
      try {
        channel.publish(EXCHANGE, routingKey, content, { persistent: durable, contentType: 'application/json' }, (error: unknown) => {
          clearTimeout(timer);
          if (error === null || error === undefined) resolve();
          else reject(error instanceof Error ? error : new Error('the broker refused the message'));
        });
      } catch (error) {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      }
    });
  }

  async #republishDue(): Promise<void> {
    const acks = this.#acks;
    if (acks === undefined || !this.ready) return;
    for (const { uuid, payload } of await acks.due(this.#mq.ackRepublishTime * 1000)) {
      const submitQueue = typeof payload['acknowledge_submit_queue'] === 'string' ? payload['acknowledge_submit_queue'] : 'status_update';
      if (submitQueue !== 'status_update') continue;
      try {
        await this.#confirmed(this.#queue(submitQueue), { ...payload, force_noack: true });
        await acks.touch(uuid);
        this.#log.info({ uuid }, 'status update not acknowledged: published again (force_noack)');
      } catch (error) {
        this.#log.warn({ uuid, reason: messageOf(error) }, 'republishing an unacknowledged status update failed');
        return;
      }
    }
  }

  // ---------------------------------------------------------------- consuming

  async #handle(queue: ConsumedQueue, channel: amqp.Channel, msg: amqp.ConsumeMessage): Promise<void> {
    let message: InboundMessage;
    try {
      message = PARSERS[queue](msg.content, this.#limits);
    } catch (error) {
      this.rejected++;
      // Never the content: it may hold tokens (files endpoint keys, ssh keys).
      const jobId = jobIdOfRefusedSetup(error);
      this.#log.warn({ queue: this.#queue(queue), bytes: msg.content.length, jobId, reason: messageOf(error) }, 'malformed message rejected');
      if (jobId !== undefined) await this.#answerRefusedSetup(jobId);
      this.#settle(channel, msg, 'reject');
      return;
    }
    if (message.kind === 'ack') {
      await this.#acks?.acknowledged(message.uuid);
      this.#settle(channel, msg, 'ack');
      return;
    }
    const ack = message.ack;
    if (ack !== undefined && this.#acks !== undefined && (await this.#acks.seen(ack.uuid))) {
      this.#log.info({ queue: this.#queue(queue), jobId: message.jobId, uuid: ack.uuid }, 'message already acted on (acknowledge_uuid): skipped');
      await this.#replyAck(queue, ack);
      this.#settle(channel, msg, 'ack');
      return;
    }
    const outcome = await this.#act(message, msg.fields.redelivered);
    if (outcome === 'ack' && ack !== undefined) {
      await this.#acks?.record(ack.uuid);
      await this.#replyAck(queue, ack);
    }
    if (outcome === 'requeue') await sleep(REQUEUE_DELAY_MS);
    this.#settle(channel, msg, outcome);
  }

  /** The service call a message asks for, and what becomes of the message. */
  async #act(message: Exclude<InboundMessage, { kind: 'ack' }>, redelivered: boolean): Promise<Outcome> {
    const { jobId } = message;
    try {
      if (message.kind === 'setup') {
        await this.#service.submit(jobId, message.request, 'amqp');
        this.#log.info({ jobId }, 'setup message: job submitted');
      } else if (message.kind === 'kill') {
        await this.#service.cancel(jobId);
        this.#log.info({ jobId }, 'kill message: job cancelled');
      } else if (this.#feed !== undefined) {
        await this.#feed.requestStatus(jobId);
      } else {
        this.#log.info({ jobId }, 'status request ignored: message_queue_publish is off');
      }
      return 'ack';
    } catch (error) {
      if (error instanceof ServerStopping || this.#closing) return 'leave';
      // The job was refused and failed: its failed status is published; the message is done.
      if (error instanceof JobRefused) {
        this.#log.info({ jobId, reason: error.message }, `${message.kind} message: job refused`);
        return 'ack';
      }
      if (error instanceof TooManyJobs) {
        // Back-pressure: the setup waits in the queue until jobs have finished.
        this.#log.warn({ jobId, reason: error.message }, 'setup message requeued: too many unfinished jobs');
        await sleep(BUSY_REQUEUE_DELAY_MS);
        return 'requeue';
      }
      if (error instanceof MagnetarError && error.status < 500) {
        this.rejected++;
        this.#log.warn({ jobId, reason: error.message }, `${message.kind} message rejected`);
        if (message.kind === 'setup') await this.#answerRefusedSetup(jobId);
        return 'reject';
      }
      this.#log.error({ jobId, reason: messageOf(error) }, `${message.kind} message could not be handled${redelivered ? ': rejected (second failure)' : ': requeued once'}`);
      return redelivered ? 'reject' : 'requeue';
    }
  }

  /**
   * A setup that was refused before it became a job: publish the job's status (for a job the
   * service does not know, the `lost` document) so Galaxy fails the job instead of waiting forever.
   */
  async #answerRefusedSetup(jobId: string): Promise<void> {
    try {
      await this.#feed?.requestStatus(jobId);
    } catch (error) {
      this.#log.info({ jobId, reason: messageOf(error) }, 'no status published for the refused setup');
    }
  }

  async #replyAck(queue: ConsumedQueue, ack: AckRequest): Promise<void> {
    try {
      await this.#confirmed(this.#queue(`${queue}${ACK_QUEUE_SUFFIX}`), { acknowledge_uuid_response: ack.uuid });
    } catch (error) {
      // The client publishes again (force_noack) and the consume store skips it then.
      this.#log.warn({ uuid: ack.uuid, reason: messageOf(error) }, 'acknowledgement reply not published');
    }
  }

  /** Settle on the channel the message came on; a closed channel has already given it back to the broker. */
  #settle(channel: amqp.Channel, msg: amqp.ConsumeMessage, outcome: Outcome): void {
    if (outcome === 'leave') return;
    try {
      if (outcome === 'ack') channel.ack(msg);
      else channel.nack(msg, false, outcome === 'requeue');
    } catch {
      // The channel closed meanwhile: the broker redelivers the message; handling it is idempotent.
    }
  }
}

/**
 * The ack protocol's stores (PROTOCOL §11.3): `publish/<uuid>` holds a status update published
 * with an `acknowledge_uuid` until its acknowledgement arrives (republished meanwhile);
 * `consume/<uuid>` marks a message already acted on (kept `CONSUME_STORE_RETENTION_MS`, unlike
 * upstream's, which grow without bound).
 */
class AckStores {
  readonly #publish: string;
  readonly #consume: string;
  readonly #log: Logger;
  /** Entries that could not be read once: a second failure discards them (as upstream). */
  readonly #failed = new Set<string>();
  #lastPrune = 0;

  constructor(dir: string, log: Logger) {
    this.#publish = path.join(dir, 'publish');
    this.#consume = path.join(dir, 'consume');
    this.#log = log;
  }

  async open(): Promise<void> {
    await fs.mkdir(this.#publish, { recursive: true, mode: 0o700 });
    await fs.mkdir(this.#consume, { recursive: true, mode: 0o700 });
  }

  async remember(uuid: string, payload: Record<string, unknown>): Promise<void> {
    const file = path.join(this.#publish, uuid);
    const temp = `${file}.tmp`;
    await fs.writeFile(temp, JSON.stringify(payload), { mode: 0o600 });
    // A republished outbox entry keeps its first time (its ack clock runs from the first publish).
    await fs.link(temp, file).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    });
    await fs.unlink(temp);
  }

  async acknowledged(uuid: string): Promise<void> {
    await fs.unlink(path.join(this.#publish, uuid)).catch(() => undefined);
    this.#failed.delete(uuid);
  }

  async touch(uuid: string): Promise<void> {
    const now = new Date();
    await fs.utimes(path.join(this.#publish, uuid), now, now).catch(() => undefined);
  }

  /** Payloads published longer than `ageMs` ago and not acknowledged. */
  async due(ageMs: number): Promise<{ uuid: string; payload: Record<string, unknown> }[]> {
    await this.#prune();
    const due: { uuid: string; payload: Record<string, unknown> }[] = [];
    const cutoff = Date.now() - ageMs;
    for (const uuid of await fs.readdir(this.#publish)) {
      if (uuid.endsWith('.tmp')) continue;
      const file = path.join(this.#publish, uuid);
      try {
        const st = await fs.stat(file);
        if (st.mtimeMs > cutoff) continue;
        const payload = JSON.parse(await fs.readFile(file, 'utf8')) as unknown;
        if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) throw new Error('not a JSON object');
        due.push({ uuid, payload: payload as Record<string, unknown> });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
        if (this.#failed.has(uuid)) {
          this.#log.error({ uuid, reason: messageOf(error) }, 'unreadable entry of the ack publish store: discarded');
          await fs.unlink(file).catch(() => undefined);
          this.#failed.delete(uuid);
        } else {
          this.#log.error({ uuid, reason: messageOf(error) }, 'unreadable entry of the ack publish store: tried again later');
          this.#failed.add(uuid);
        }
      }
    }
    return due;
  }

  async seen(uuid: string): Promise<boolean> {
    return fs.access(path.join(this.#consume, uuid)).then(
      () => true,
      () => false,
    );
  }

  async record(uuid: string): Promise<void> {
    await fs.writeFile(path.join(this.#consume, uuid), '', { mode: 0o600 });
  }

  /** Drop consume-store entries past their retention (once an hour). */
  async #prune(): Promise<void> {
    const now = Date.now();
    if (now - this.#lastPrune < 3600_000) return;
    this.#lastPrune = now;
    let dropped = 0;
    for (const uuid of await fs.readdir(this.#consume)) {
      const file = path.join(this.#consume, uuid);
      const st = await fs.stat(file).catch(() => undefined);
      if (st !== undefined && now - st.mtimeMs > CONSUME_STORE_RETENTION_MS) {
        await fs.unlink(file).catch(() => undefined);
        dropped++;
      }
    }
    if (dropped > 0) this.#log.info({ dropped }, 'ack consume store pruned');
  }
}
