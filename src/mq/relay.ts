/**
 * Relay mode (RELAY.md; PROTOCOL §11.5): Galaxy drives magnetar through an HTTP pulsar-relay that
 * magnetar long-polls, so the site needs no inbound port and no broker. Files still move by
 * server-side staging, as in AMQP mode.
 *
 * Per manager: one long-poll loop over `[job_setup, job_status_request, job_kill]` (topic names
 * `[<relay_topic_prefix>_]<base>[_<manager>]`, no suffix for `_default_`), handled as the AMQP
 * front door handles its messages (the same parsers and JobService calls), a status feed whose
 * outbox drains to `job_status_update` with `Idempotency-Key` = the outbox entry's id, and the
 * `pulsar_capabilities` snapshot once at start. One auth cache (mq/relay-auth.ts) for the server.
 *
 * Where this is stronger than upstream (RELAY.md, last section):
 * - the cursor (`<persistence>/<manager>-relay-cursor.json`) is written only after the messages it
 *   covers were handled durably (a setup recorded, a kill recorded, a status answer in the outbox);
 * - a server without a cursor starts from each topic's newest message (a baseline read from the
 *   topic history), so old kills and status requests are never replayed into `lost` updates, and
 *   every later poll sends a non-empty `since` (relay-cursor.ts);
 * - a kill publishes `cancelled` at once (the status feed reports the cancel);
 * - 429, 5xx and lost connections back off (capped, jittered) and the loops carry on; a relay that
 *   restarted (and forgot tokens and messages) is logged into again;
 * - `/healthz` reports the relay link.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RelayConfig } from '../config/types.js';
import { BadRequest, JobRefused, MagnetarError, ServerStopping, TooManyJobs, messageOf } from '../errors.js';
import type { JobService } from '../jobs/service.js';
import type { Logger } from '../log.js';
import { PULSAR_COMPAT_VERSION } from '../version.js';
import { PARSERS, jobIdOfRefusedSetup, type InboundMessage, type MessageLimits } from './messages.js';
import { RelayAuth, RelayAuthRefused } from './relay-auth.js';
import { Backoff, RelayClient, RelayHttpError, RelayUnreachable } from './relay-client.js';
import { RelayCursor } from './relay-cursor.js';
import { StatusFeed } from './status-feed.js';
import type { OutboxEntry, StatusPublisher } from './types.js';

/** A startup failure of relay mode: the server stops with this one line. */
export class RelayStartupError extends Error {
  override readonly name = 'RelayStartupError';
}

export type ConsumedTopic = 'job_setup' | 'job_status_request' | 'job_kill';
/** Non-terminal states published to the relay (Galaxy's relay handler acts on no other). */
const RELAYED_STATES: ReadonlySet<string> = new Set(['running']);
const CONSUMED: readonly ConsumedTopic[] = ['job_setup', 'job_status_request', 'job_kill'];
const PARSER_OF: Readonly<Record<ConsumedTopic, keyof typeof PARSERS>> = { job_setup: 'setup', job_status_request: 'status', job_kill: 'kill' };

/** The relay refuses bodies over 1 MiB (Content-Length): a status update is cut to fit below it. */
export const RELAY_MAX_BODY = 1024 * 1024;
const PUBLISH_BODY_TARGET = RELAY_MAX_BODY - 16 * 1024;
/** A message payload larger than this is refused unparsed (the relay took it in a ≤ 1 MiB body). */
const MAX_PAYLOAD_BYTES = 2 * RELAY_MAX_BODY;
/** A poll answer: at most 100 messages per topic of ≤ 1 MiB each. */
const MAX_POLL_ANSWER = 128 * 1024 * 1024;
const CALL_TIMEOUT_MS = 30_000;
/** The most messages the relay answers per topic in one poll. */
const PER_TOPIC_ANSWER = 100;
/** How long a setup refused for `max_live_jobs` waits before it is polled (and tried) again. */
const BUSY_DELAY_MS = 5000;
/** How long a message that failed on the server's side waits before its one retry. */
const RETRY_DELAY_MS = 1000;
/** Publish answers that say the message itself will never be taken (malformed, too large). */
const NEVER_TAKEN: ReadonlySet<number> = new Set([400, 413, 422]);
/** Fields of a status document cut (their head) when it is too large for the relay. */
const CUTTABLE = ['stdout', 'stderr', 'job_stdout', 'job_stderr'] as const;

/** `[<prefix>_]<base>[_<manager>]` (RELAY.md "Topics and payloads"). */
export function relayTopic(prefix: string, base: string, manager: string): string {
  return `${prefix === '' ? '' : `${prefix}_`}${base}${manager === '_default_' ? '' : `_${manager}`}`;
}

/** Relay topic names are `[A-Za-z0-9_-]{1,255}`. */
function validTopic(name: string): boolean {
  return name.length >= 1 && name.length <= 255 && /^[A-Za-z0-9_-]+$/.test(name);
}

export interface RelayModeContext {
  readonly persistenceDirectory: string;
  readonly toolDependencyDir: string | undefined;
  readonly log: Logger;
}

type Outcome = { readonly kind: 'done' } | { readonly kind: 'defer'; readonly ms: number } | { readonly kind: 'stop' };
const DONE: Outcome = { kind: 'done' };

export class RelayMode {
  readonly #config: RelayConfig;
  readonly #auth: RelayAuth;
  readonly #client: RelayClient;
  readonly #doors: RelayFrontDoor[];
  readonly #feeds: StatusFeed[];
  readonly #log: Logger;
  readonly #stopping = new AbortController();
  readonly #tasks = new Set<Promise<void>>();
  readonly #publishBackoff = new Backoff(1000, 60_000);
  #publishBlockedUntil = 0;
  #publishTimer: NodeJS.Timeout | undefined;
  /** Publishing waits for `start` (the credentials file's lock is taken there). */
  #started = false;

  private constructor(config: RelayConfig, auth: RelayAuth, client: RelayClient, log: Logger) {
    this.#config = config;
    this.#auth = auth;
    this.#client = client;
    this.#doors = [];
    this.#feeds = [];
    this.#log = log;
  }

  /** Open every manager's status feed and front door (nothing is sent to the relay yet). */
  static async open(config: RelayConfig, services: ReadonlyMap<string, JobService>, context: RelayModeContext): Promise<RelayMode> {
    const log = context.log.child({ component: 'relay', relay: config.url });
    for (const name of services.keys()) {
      const topic = relayTopic(config.topicPrefix, 'job_status_request', name);
      if (!validTopic(topic)) throw new RelayStartupError(`relay mode: manager ${JSON.stringify(name)} gives the topic name ${JSON.stringify(topic)}, which the relay refuses (only letters, digits, _ and -, at most 255)`);
    }
    const auth = new RelayAuth(config, context.log);
    const client = new RelayClient(config.url, auth, log);
    const mode = new RelayMode(config, auth, client, log);
    try {
      for (const [name, service] of services) {
        const feed = config.publish
          ? await StatusFeed.open(service, { dir: path.join(context.persistenceDirectory, `${name}-status-outbox`), log: context.log, drainIntervalMs: config.outboxDrainInterval * 1000 })
          : undefined;
        if (feed !== undefined) mode.#feeds.push(feed);
        const cursor = new RelayCursor(
          path.join(context.persistenceDirectory, `${name}-relay-cursor.json`),
          CONSUMED.map((base) => relayTopic(config.topicPrefix, base, name)),
        );
        await cursor.removeTemps();
        await cursor.load();
        const door = new RelayFrontDoor({ mode, service, feed, cursor, config, client, persistenceDirectory: context.persistenceDirectory, toolDependencyDir: context.toolDependencyDir, log });
        mode.#doors.push(door);
        feed?.attach(door);
      }
    } catch (error) {
      await Promise.allSettled(mode.#feeds.map(async (f) => f.close()));
      throw error;
    }
    client.onConnected(() => mode.#kickFeeds());
    log.info({ auth: auth.method, consume: config.consume, publish: config.publish, topicPrefix: config.topicPrefix, longPollTimeout: config.longPollTimeout }, 'relay mode');
    return mode;
  }

  /**
   * Log in once (refused credentials reject with a `RelayStartupError`; a relay that does not
   * answer is waited for in the background), then start the loops and the capability snapshots.
   */
  async start(): Promise<void> {
    try {
      await this.#auth.lock();
      await this.#auth.bearer(this.#stopping.signal);
      this.#client.succeeded();
    } catch (error) {
      if (error instanceof RelayAuthRefused) {
        this.#client.failed(error);
        throw new RelayStartupError(`relay mode (${this.#config.url}): ${error.message}`);
      }
      this.#client.failed(error);
      this.#log.warn({ reason: messageOf(error) }, 'the relay is not reachable yet: retrying in the background (status updates wait in the outbox)');
    }
    this.#started = true;
    this.#kickFeeds();
    for (const door of this.#doors) {
      if (this.#config.consume) this.#track(door.run(this.#stopping.signal));
      if (this.#config.publishCapabilities) this.#track(door.publishCapabilities(this.#stopping.signal));
    }
  }

  /** For `/healthz`: the link, the auth, the loops, the outboxes. */
  health(): object {
    return {
      relay: this.#config.url,
      ...this.#client.health(),
      ...this.#auth.health(),
      requests: this.#client.requests + this.#auth.attempts,
      polling: this.#doors.filter((d) => d.polling).length,
      pendingUpdates: this.#feeds.reduce((n, f) => n + f.pending, 0),
      rejectedMessages: this.#doors.reduce((n, d) => n + d.rejected, 0),
    };
  }

  /** Stop polling (messages not yet handled stay after the cursor); wait for the handlers under way. */
  async stopConsuming(): Promise<void> {
    this.#stopping.abort(new ServerStopping());
    await Promise.allSettled([...this.#tasks]);
  }

  async close(): Promise<void> {
    await this.stopConsuming();
    clearTimeout(this.#publishTimer);
    const results = await Promise.allSettled(this.#feeds.map(async (f) => f.close()));
    for (const r of results) if (r.status === 'rejected') this.#log.error({ err: r.reason as unknown }, 'closing a status feed failed');
    this.#client.close();
    await this.#auth.unlock();
  }

  // ---------------------------------------------------------------- publishing (shared by the managers)

  get canPublish(): boolean {
    return this.#started && Date.now() >= this.#publishBlockedUntil && !this.#auth.refused;
  }

  /** A publish met 429, 5xx or no answer: every manager's publishing pauses (capped, jittered), then resumes. */
  publishFailed(error: unknown): void {
    const retryAfter = error instanceof RelayHttpError ? error.retryAfterMs : undefined;
    const delay = this.#publishBackoff.next(retryAfter);
    this.#publishBlockedUntil = Date.now() + delay;
    clearTimeout(this.#publishTimer);
    this.#publishTimer = setTimeout(() => this.#kickFeeds(), delay + 10);
    this.#publishTimer.unref();
    this.#log.warn({ reason: messageOf(error), retryIn: Math.round(delay / 100) / 10 }, 'status update not published: publishing paused');
  }

  publishSucceeded(): void {
    this.#publishBackoff.reset();
  }

  #kickFeeds(): void {
    for (const feed of this.#feeds) feed.kick();
  }

  #track(task: Promise<void>): void {
    const tracked = task.catch((error: unknown) => this.#log.error({ err: error }, 'relay task failed'));
    this.#tasks.add(tracked);
    void tracked.finally(() => this.#tasks.delete(tracked));
  }
}

interface DoorOptions {
  readonly mode: RelayMode;
  readonly service: JobService;
  readonly feed: StatusFeed | undefined;
  readonly cursor: RelayCursor;
  readonly config: RelayConfig;
  readonly client: RelayClient;
  readonly persistenceDirectory: string;
  readonly toolDependencyDir: string | undefined;
  readonly log: Logger;
}

interface PolledMessage {
  readonly topic: string;
  readonly id: string;
  readonly payload: unknown;
}

interface Polled {
  readonly messages: readonly PolledMessage[];
  /** The relay held more than it answered (100 per topic). */
  readonly hasMore: boolean;
}

/** One manager's relay front door: its poll loop, its message handling, its status publisher. */
class RelayFrontDoor implements StatusPublisher {
  readonly #o: DoorOptions;
  readonly #manager: string;
  readonly #log: Logger;
  readonly #topics: ReadonlyMap<string, ConsumedTopic>;
  readonly #updateTopic: string;
  readonly #setupTopic: string;
  readonly #limits: MessageLimits;
  /** Messages that failed once on the server's side: the next failure gives up on them. */
  readonly #failedOnce = new Set<string>();
  /** Messages refused as malformed since startup (for /healthz). */
  rejected = 0;
  polling = false;

  constructor(options: DoorOptions) {
    this.#o = options;
    this.#manager = options.service.manager.name;
    this.#log = options.log.child({ manager: this.#manager });
    const { topicPrefix } = options.config;
    this.#topics = new Map(CONSUMED.map((base) => [relayTopic(topicPrefix, base, this.#manager), base]));
    this.#updateTopic = relayTopic(topicPrefix, 'job_status_update', this.#manager);
    this.#setupTopic = relayTopic(topicPrefix, 'job_setup', this.#manager);
    this.#limits = { ...options.service.submitLimits, maxMessageSize: MAX_PAYLOAD_BYTES };
  }

  // ---------------------------------------------------------------- the poll loop

  async run(stopping: AbortSignal): Promise<void> {
    const backoff = new Backoff(1000, 30_000);
    let lastReason: string | undefined;
    this.#log.info({ topics: [...this.#topics.keys()], cursor: this.#o.cursor.exists ? 'kept' : 'none yet (baseline: newest messages)' }, 'relay polling');
    while (!stopping.aborted) {
      let delay = 0;
      try {
        if (!this.#o.cursor.exists) await this.#baseline(stopping);
        this.polling = true;
        const messages = await this.#poll(stopping);
        backoff.reset();
        if (lastReason !== undefined) this.#log.info('relay polling again');
        lastReason = undefined;
        delay = await this.#handleAll(messages, stopping);
      } catch (error) {
        this.polling = false;
        if (stopping.aborted) break;
        const retryAfter = error instanceof RelayHttpError ? error.retryAfterMs : undefined;
        delay = backoff.next(retryAfter);
        const reason = messageOf(error);
        // A failure that repeats is logged once per backoff cap, not once per try.
        if (reason !== lastReason || backoff.attempts % 8 === 0) {
          const level = error instanceof RelayUnreachable || (error instanceof RelayHttpError && error.transient) ? 'warn' : 'error';
          this.#log[level]({ reason, retryIn: Math.round(delay / 100) / 10, attempt: backoff.attempts }, 'relay poll failed: backing off');
        }
        lastReason = reason;
      }
      if (delay > 0) await sleep(delay, undefined, { signal: stopping }).catch(() => undefined);
    }
    this.polling = false;
  }

  /**
   * A server without a cursor starts after each topic's newest message (read from the topic's
   * history; 404 = the topic holds nothing), and writes that cursor before its first poll.
   */
  async #baseline(signal: AbortSignal): Promise<void> {
    const newest = new Map<string, string | undefined>();
    for (const topic of this.#topics.keys()) {
      const answer = await this.#o.client.call({
        method: 'GET',
        path: `/api/v1/topics/${encodeURIComponent(topic)}/messages?limit=1&order=desc`,
        route: 'history',
        timeoutMs: CALL_TIMEOUT_MS,
        signal,
        accept: [404],
      });
      const first = answer.status === 404 ? undefined : (answer.json as { messages?: { message_id?: unknown }[] } | undefined)?.messages?.[0]?.message_id;
      newest.set(topic, typeof first === 'string' ? first : undefined);
    }
    await this.#o.cursor.baseline(newest);
    const skipped = [...newest.entries()].filter(([, id]) => id !== undefined).map(([topic]) => topic);
    this.#log.info({ cursor: this.#o.cursor.file, topicsWithHistory: skipped }, 'relay cursor started at the newest messages: messages published before this server’s first start are not acted on');
  }

  async #poll(signal: AbortSignal): Promise<Polled> {
    const { longPollTimeout } = this.#o.config;
    try {
      const answer = await this.#o.client.call({
        method: 'POST',
        path: '/messages/poll',
        route: 'poll',
        json: { topics: [...this.#topics.keys()], timeout: longPollTimeout, since: this.#o.cursor.since() },
        // The relay answers after `timeout` at the latest: a little more is a lost answer.
        timeoutMs: (longPollTimeout + 5) * 1000,
        maxBytes: MAX_POLL_ANSWER,
        signal,
      });
      return this.#messagesOf(answer.json);
    } catch (error) {
      // A read timeout is "no messages" (as upstream's client treats it).
      if (error instanceof RelayUnreachable && error.timedOut) return { messages: [], hasMore: false };
      throw error;
    }
  }

  #messagesOf(json: unknown): Polled {
    const list = (json as { messages?: unknown } | undefined)?.messages;
    const hasMore = (json as { has_more?: unknown } | undefined)?.has_more === true;
    if (!Array.isArray(list)) throw new RelayHttpError(200, 'poll', 'the answer has no messages list', undefined);
    const messages: PolledMessage[] = [];
    for (const item of list as unknown[]) {
      const m = item as { topic?: unknown; message_id?: unknown; payload?: unknown } | null;
      if (m === null || typeof m !== 'object' || typeof m.topic !== 'string' || typeof m.message_id !== 'string' || !this.#topics.has(m.topic)) {
        this.rejected++;
        this.#log.warn('relay poll: an entry without a topic of this manager or a message id: skipped');
        continue;
      }
      messages.push({ topic: m.topic, id: m.message_id, payload: m.payload });
    }
    return { messages, hasMore };
  }

  /**
   * Handle a poll's messages in their order (topic by topic, as the relay groups them); then write
   * the cursor past those handled. A message deferred (back-pressure, a retry) stops its topic
   * for this round: it and those after it come again with the next poll. Returns the pause
   * before the next poll.
   */
  async #handleAll({ messages, hasMore }: Polled, stopping: AbortSignal): Promise<number> {
    const deferred = new Set<string>();
    let delay = 0;
    let advanced = false;
    // The relay answers at most 100 messages per topic: with that many setups, more may wait.
    const setupsCut = hasMore && messages.filter((m) => m.topic === this.#setupTopic).length >= PER_TOPIC_ANSWER;
    for (const message of messages) {
      if (deferred.has(message.topic)) continue;
      // Setups come first (the poll's topic order). While some wait (back-pressure, a retry, more
      // than one answer holds), a kill or status request for a job not known yet may be about one
      // of them: it waits too, instead of cancelling nothing or answering `lost`.
      const setupsPending = setupsCut || deferred.has(this.#setupTopic);
      const outcome = stopping.aborted ? ({ kind: 'stop' } as const) : await this.#handle(message, setupsPending);
      if (outcome.kind === 'stop') break;
      if (outcome.kind === 'defer') {
        deferred.add(message.topic);
        delay = Math.max(delay, outcome.ms);
        continue;
      }
      this.#o.cursor.advance(message.topic, message.id);
      advanced = true;
    }
    if (advanced) await this.#o.cursor.save();
    // Messages that did not move the cursor would come back at once: never a tight loop.
    if (messages.length > 0 && !advanced) delay = Math.max(delay, RETRY_DELAY_MS);
    return delay;
  }

  async #handle(polled: PolledMessage, setupsPending: boolean): Promise<Outcome> {
    const base = this.#topics.get(polled.topic);
    if (base === undefined) return DONE;
    let message: InboundMessage;
    try {
      if (typeof polled.payload !== 'object' || polled.payload === null || Array.isArray(polled.payload)) throw new BadRequest('the payload is not a JSON object');
      message = PARSERS[PARSER_OF[base]](Buffer.from(JSON.stringify(polled.payload)), this.#limits);
    } catch (error) {
      this.rejected++;
      // Never the content: it may hold tokens (files endpoint keys, ssh keys).
      const jobId = jobIdOfRefusedSetup(error);
      this.#log.warn({ topic: polled.topic, messageId: polled.id, jobId, reason: messageOf(error) }, 'malformed relay message skipped');
      if (jobId !== undefined) await this.#answerRefusedSetup(jobId);
      return DONE;
    }
    if (message.kind === 'ack') return DONE;
    if (setupsPending && message.kind !== 'setup' && this.#o.service.knownJob(message.jobId) === undefined) {
      return { kind: 'defer', ms: RETRY_DELAY_MS };
    }
    return this.#act(polled, message);
  }

  /** The service call a message asks for (as the AMQP front door's), and whether the cursor may pass it. */
  async #act(polled: PolledMessage, message: Exclude<InboundMessage, { kind: 'ack' }>): Promise<Outcome> {
    const { jobId } = message;
    try {
      if (message.kind === 'setup') {
        await this.#o.service.submit(jobId, message.request, 'relay', { viaMessageQueue: true });
        this.#log.info({ jobId }, 'job_setup: job submitted');
      } else if (message.kind === 'kill') {
        await this.#o.service.cancel(jobId);
        this.#log.info({ jobId }, 'job_kill: job cancelled');
      } else if (this.#o.feed !== undefined) {
        await this.#o.feed.requestStatus(jobId);
      } else {
        this.#log.info({ jobId }, 'status request ignored: message_queue_publish is off');
      }
      this.#failedOnce.delete(polled.id);
      return DONE;
    } catch (error) {
      if (error instanceof ServerStopping) return { kind: 'stop' };
      if (error instanceof JobRefused) {
        this.#log.info({ jobId, reason: error.message }, `${message.kind} message: job refused`);
        return DONE;
      }
      if (error instanceof TooManyJobs) {
        this.#log.warn({ jobId, reason: error.message }, 'job_setup deferred: too many unfinished jobs');
        return { kind: 'defer', ms: BUSY_DELAY_MS };
      }
      if (error instanceof MagnetarError && error.status < 500) {
        this.rejected++;
        this.#log.warn({ jobId, reason: error.message }, `${message.kind} message rejected`);
        if (message.kind === 'setup') await this.#answerRefusedSetup(jobId);
        return DONE;
      }
      if (!this.#failedOnce.has(polled.id)) {
        this.#failedOnce.add(polled.id);
        this.#log.error({ jobId, reason: messageOf(error) }, `${message.kind} message could not be handled: tried once more`);
        return { kind: 'defer', ms: RETRY_DELAY_MS };
      }
      this.#failedOnce.delete(polled.id);
      this.#log.error({ jobId, reason: messageOf(error) }, `${message.kind} message could not be handled twice: given up`);
      if (message.kind === 'setup') await this.#answerRefusedSetup(jobId);
      return DONE;
    }
  }

  /** A setup refused before it became a job: publish its status (`lost` for an unknown job) so Galaxy does not wait. */
  async #answerRefusedSetup(jobId: string): Promise<void> {
    try {
      await this.#o.feed?.requestStatus(jobId);
    } catch (error) {
      this.#log.info({ jobId, reason: messageOf(error) }, 'no status published for the refused setup');
    }
  }

  // ---------------------------------------------------------------- publishing

  get ready(): boolean {
    return this.#o.mode.canPublish;
  }

  /** Publish one status update; resolves on the relay's 201. `Idempotency-Key` = the entry's id. */
  async publish(entry: OutboxEntry): Promise<void> {
    // Galaxy acts on `running` and the terminal states only, and the relay counts every publish
    // against a per-address limit (120 a minute by default): the other states are confirmed here
    // without a call. An answer to a status request is always sent.
    if (!entry.terminal && entry.requested !== true && !RELAYED_STATES.has(entry.status)) return;
    const payload = fitted(entry.payload, this.#updateTopic);
    try {
      await this.#o.client.call({
        method: 'POST',
        path: '/api/v1/messages',
        route: 'publish',
        json: { topic: this.#updateTopic, payload },
        headers: { 'idempotency-key': entry.id },
        timeoutMs: CALL_TIMEOUT_MS,
      });
      this.#o.mode.publishSucceeded();
    } catch (error) {
      if (error instanceof RelayHttpError && NEVER_TAKEN.has(error.status)) {
        // The relay will never take this one: keeping it would hold the job's later updates forever.
        // (A 403 — a relay user without `write` — is kept: fixing the user at the relay delivers it.)
        this.#log.error({ jobId: entry.jobId, status: entry.status, reason: error.message }, 'status update refused by the relay: dropped');
        return;
      }
      this.#o.mode.publishFailed(error);
      throw error;
    }
  }

  /** The `pulsar_capabilities` snapshot (RELAY.md), once per start; retried (backing off) until the relay took it. */
  async publishCapabilities(stopping: AbortSignal): Promise<void> {
    const topic = relayTopic(this.#o.config.topicPrefix, 'pulsar_capabilities', this.#manager);
    const key = randomBytes(16).toString('hex');
    const backoff = new Backoff(1000, 60_000);
    const payload = await capabilities(this.#o);
    while (!stopping.aborted) {
      try {
        await this.#o.client.call({
          method: 'POST',
          path: '/api/v1/messages',
          route: 'publish',
          json: { topic, payload: { ...payload, published_at: new Date().toISOString() } },
          headers: { 'idempotency-key': key },
          timeoutMs: CALL_TIMEOUT_MS,
          signal: stopping,
        });
        this.#log.info({ topic }, 'pulsar_capabilities published');
        return;
      } catch (error) {
        if (stopping.aborted) return;
        if (error instanceof RelayHttpError && NEVER_TAKEN.has(error.status)) {
          this.#log.error({ topic, reason: error.message }, 'pulsar_capabilities refused by the relay: not published');
          return;
        }
        await sleep(backoff.next(error instanceof RelayHttpError ? error.retryAfterMs : undefined), undefined, { signal: stopping }).catch(() => undefined);
      }
    }
  }
}

/** The capability snapshot of a manager (RELAY.md "Topics and payloads"). */
async function capabilities(o: DoorOptions): Promise<Record<string, unknown>> {
  const manager = o.service.manager;
  const [docker, singularity, apptainer] = await Promise.all(['docker', 'singularity', 'apptainer'].map(onPath));
  return {
    schema_version: 1,
    manager_name: manager.name,
    pulsar_version: PULSAR_COMPAT_VERSION,
    staging_directory: manager.stagingDirectory,
    persistence_directory: o.persistenceDirectory,
    tool_dependency_dir: o.toolDependencyDir ?? null,
    dependency_resolvers: [],
    conda_available: false,
    container_runtime: { docker_available: docker, singularity_available: singularity, apptainer_available: apptainer },
    manager: { name: manager.name, type: manager.type, num_concurrent_jobs: manager.numConcurrentJobs },
  };
}

async function onPath(command: string): Promise<boolean> {
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    if (dir === '') continue;
    try {
      await fs.access(path.join(dir, command), fs.constants.X_OK);
      return true;
    } catch {
      // not here
    }
  }
  return false;
}

/**
 * The payload cut to fit the relay's 1 MiB body limit: the heads of the largest output fields go
 * first (the tail of a job's output says most), each cut marked. Small documents are untouched.
 */
export function fitted(payload: Readonly<Record<string, unknown>>, topic: string): Readonly<Record<string, unknown>> {
  const size = (p: Readonly<Record<string, unknown>>): number => Buffer.byteLength(JSON.stringify({ topic, payload: p }));
  let current = payload;
  let over = size(current) - PUBLISH_BODY_TARGET;
  const cut = new Set<string>();
  while (over > 0) {
    const field = CUTTABLE.filter((f) => !cut.has(f) && typeof current[f] === 'string' && (current[f] as string).length > 0).sort((a, b) => (current[b] as string).length - (current[a] as string).length)[0];
    if (field === undefined) break;
    cut.add(field);
    const text = current[field] as string;
    // JSON escaping may make a character up to 6 bytes: cutting characters by the byte overflow over-cuts a little, never under.
    const keep = Math.max(0, text.length - over - 256);
    current = { ...current, [field]: `[magnetar: ${text.length - keep} characters cut: relay messages are limited to 1 MiB]\n${text.slice(text.length - keep)}` };
    over = size(current) - PUBLISH_BODY_TARGET;
  }
  return current;
}
