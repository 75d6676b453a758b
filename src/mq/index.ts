/**
 * Message-queue mode for the whole server: one broker link, and per manager a status feed (its
 * outbox under `<persistence>/<manager>-status-outbox`) and an AMQP front door.
 *
 * Order: `open` (feeds subscribe before the services start, so the recovery's state changes are
 * reported), the services start, `start` (connect, declare, consume). Stopping: `stopConsuming`
 * (no new messages; unacknowledged ones go back to the broker) before the services shut down,
 * then `close` (feeds stop, the connection closes; pending updates stay in the outboxes).
 */
import * as path from 'node:path';
import type { MessageQueueConfig } from '../config/types.js';
import type { JobService } from '../jobs/service.js';
import type { Logger } from '../log.js';
import { BrokerLink, redactUrl } from './amqp.js';
import { AmqpFrontDoor } from './front-door.js';
import { StatusFeed } from './status-feed.js';

export { BrokerStartupError, redactUrl } from './amqp.js';

export class MessageQueueMode {
  readonly #link: BrokerLink;
  readonly #doors: AmqpFrontDoor[];
  readonly #feeds: StatusFeed[];
  readonly #log: Logger;

  private constructor(link: BrokerLink, doors: AmqpFrontDoor[], feeds: StatusFeed[], log: Logger) {
    this.#link = link;
    this.#doors = doors;
    this.#feeds = feeds;
    this.#log = log;
  }

  /** Open every manager's status feed and front door (nothing is connected yet). */
  static async open(mq: MessageQueueConfig, services: ReadonlyMap<string, JobService>, persistenceDirectory: string, log: Logger): Promise<MessageQueueMode> {
    const link = new BrokerLink(mq, log);
    const doors: AmqpFrontDoor[] = [];
    const feeds: StatusFeed[] = [];
    try {
      for (const [name, service] of services) {
        const feed = mq.publish
          ? await StatusFeed.open(service, { dir: path.join(persistenceDirectory, `${name}-status-outbox`), log, drainIntervalMs: mq.outboxDrainInterval * 1000 })
          : undefined;
        if (feed !== undefined) feeds.push(feed);
        const door = new AmqpFrontDoor({ service, feed, mq, persistenceDirectory, log });
        await door.open();
        doors.push(door);
        link.use(door);
        feed?.attach(door);
      }
    } catch (error) {
      await Promise.allSettled([...doors.map(async (d) => d.close()), ...feeds.map(async (f) => f.close())]);
      throw error;
    }
    log.info({ broker: redactUrl(mq.url), consume: mq.consume, publish: mq.publish, acknowledge: mq.acknowledge, durable: mq.durable }, 'message-queue mode');
    return new MessageQueueMode(link, doors, feeds, log);
  }

  /** Connect (a refused login or an unknown host rejects with a `BrokerStartupError`). */
  async start(): Promise<void> {
    await this.#link.start();
  }

  /** For `/healthz`. */
  health(): object {
    return {
      ...this.#link.health(),
      pendingUpdates: this.#feeds.reduce((n, f) => n + f.pending, 0),
      rejectedMessages: this.#doors.reduce((n, d) => n + d.rejected, 0),
    };
  }

  async stopConsuming(): Promise<void> {
    await Promise.allSettled(this.#doors.map(async (d) => d.stopConsuming()));
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.#doors.map(async (d) => d.close()));
    const results = await Promise.allSettled(this.#feeds.map(async (f) => f.close()));
    for (const r of results) if (r.status === 'rejected') this.#log.error({ err: r.reason as unknown }, 'closing a status feed failed');
    await this.#link.close();
  }
}

/** Relay mode (`message_queue_url = http(s)://…`): the same feeds, a long-poll front door per manager (mq/relay.ts). */
export { RelayMode, RelayStartupError } from './relay.js';
