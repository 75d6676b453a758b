/**
 * Section `mq` (BENCH_ONLY=mq): message-queue mode end to end. A private RabbitMQ broker
 * (test/helpers/broker.ts, as the tests start it), a real server process with `message_queue_url` pointing at it, and a
 * Galaxy-like client on amqplib that publishes setup messages as Pulsar's client library does
 * (PROTOCOL §11.2: exchange `pulsar`, routing key `pulsar__setup`, the launch payload as a JSON
 * object, persistent) and consumes `pulsar__status_update`.
 *
 * Measured, per variant (`amqp_acknowledge` off, then on):
 * - jobs/s end to end, from the setup publish to the arrival of the job's `complete` update,
 *   with 1 producer (one job in flight, sequential) and with 8 producers (8 in flight), and the
 *   p50/p99 of that time per job;
 * - the publish latency of status updates: the update's arrival at the consumer minus the time
 *   of the server's `job state changed` log line for that job and state (pino `time`, whole ms,
 *   same host clock), for `running` and `complete`;
 * - the round trip of a status request (`{"request":"status","job_id"}` on the setup queue →
 *   the status_update that answers it) for finished jobs;
 * - the server's peak RSS (VmRSS sampled every 50 ms) and CPU per job.
 *
 * Knobs: BENCH_MQ_JOBS (200 jobs per phase), BENCH_MQ_PRODUCERS (1,8), BENCH_MQ_STATUS_REQUESTS
 * (200), BENCH_MQ_ACK (off,on), BENCH_MQ_COMMAND (`true`).
 */
import * as amqp from 'amqplib';
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { TERMINAL_STATES } from '../src/jobs/state.js';
import { Broker, brokerUnavailable } from '../test/helpers/broker.js';
import { findProfile, formatSummary, summariseProfile, type ProfileSummary, type Window } from './profile.js';
import { ServerProcess } from './server-process.js';
import { MIB, log, percentileSorted, round, sortedCopy } from './stats.js';

const EXCHANGE = 'pulsar';
/** Queue names of the `_default_` manager: prefix `pulsar_`, then `_<name>` (PROTOCOL §11.1). */
const queue = (name: string): string => `pulsar__${name}`;
const JOB_TIMEOUT_MS = 60_000;
const WARMUP_JOBS = 5;
/** Jobs that may run at once: above the 8 producers, so the run queue never holds a job back. */
const NUM_CONCURRENT_JOBS = 16;

export interface MqOptions {
  readonly dir: string;
  readonly jobs: number;
  readonly producers: readonly number[];
  readonly statusRequests: number;
  readonly acknowledge: readonly boolean[];
  readonly commandLine: string;
  readonly entry: string | undefined;
  readonly keep: boolean;
  /** BENCH_CPU_PROF: run the servers under `node --cpu-prof` here; summaries per phase go to `profiles`. */
  readonly cpuProfDir: string | undefined;
  readonly profiles: ProfileSummary[];
  /** Told about the live server (undefined: none), so SIGINT can stop it. */
  readonly track: (server: ServerProcess | undefined) => void;
}

interface Spread {
  readonly n: number;
  readonly p50_ms: number | null;
  readonly p99_ms: number | null;
  readonly max_ms: number | null;
}

export interface MqPhase {
  readonly producers: number;
  readonly jobs: number;
  readonly seconds: number;
  readonly jobs_per_s: number;
  /** Setup publish → `complete` update arrival, per job. */
  readonly end_to_end: Spread;
  /** Setup publish → the broker's confirm (persistent message, durable queue), per job. */
  readonly setup_publish_confirm: Spread;
  /** Jobs whose terminal update was not `complete` (each one is also an error of the phase). */
  readonly not_complete: number;
  /** Update arrival − the server's `job state changed` log time, for that job and state. */
  readonly publish_latency: { readonly running: Spread; readonly complete: Spread };
  /**
   * Median of each step, from the publish time, the server's `job state changed` log times (whole
   * ms) and the arrival of `complete`: where a job's end-to-end time goes.
   */
  readonly steps_p50_ms: Record<string, number | null>;
  /** Status updates received per job (all states, duplicates included). */
  readonly updates_per_job: number;
  readonly server_peak_rss_mib: number;
  readonly server_cpu_ms_per_job: number;
}

export interface MqVariant {
  readonly acknowledge: boolean;
  readonly phases: Record<string, MqPhase>;
  /** Status request published on the setup queue → its answer on status_update (finished jobs, one at a time). */
  status_request_round_trip: Spread | null;
  /** setup_ack responses received (ack protocol on: one per setup message). */
  setup_acks: number;
  readonly server_rss_at_start_mib: number;
  readonly server_peak_rss_mib: number;
  readonly server_hwm_mib: number;
  error?: string;
}

export interface MqResult {
  readonly broker: string;
  readonly command_line: string;
  readonly num_concurrent_jobs: number;
  readonly publish_latency_method: string;
  readonly variants: Record<string, MqVariant | { error: string }>;
}

function spread(values: readonly number[]): Spread {
  if (values.length === 0) return { n: 0, p50_ms: null, p99_ms: null, max_ms: null };
  const sorted = sortedCopy(values);
  return { n: values.length, p50_ms: round(percentileSorted(sorted, 50), 2), p99_ms: round(percentileSorted(sorted, 99), 2), max_ms: round(sorted[sorted.length - 1] ?? Number.NaN, 2) };
}

/** Wall-clock ms with sub-ms resolution, comparable to the server's `Date.now()` log times. */
function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

interface Update {
  readonly jobId: string;
  readonly status: string;
  readonly at: number;
}

/**
 * The Galaxy side: one connection consuming status_update (and setup_ack with the ack protocol),
 * answering the acknowledgements the server asks for, and one connection + confirm channel per
 * producer.
 */
class Galaxy {
  readonly #connection: amqp.ChannelModel;
  readonly #acknowledge: boolean;
  readonly #url: string;
  readonly #waiters = new Map<string, Set<(u: Update) => void>>();
  /** First arrival (wall ms) of each status per job: `<job>/<status>`. */
  readonly firstArrival = new Map<string, number>();
  updates = 0;
  setupAcks = 0;

  private constructor(connection: amqp.ChannelModel, acknowledge: boolean, url: string) {
    this.#connection = connection;
    this.#acknowledge = acknowledge;
    this.#url = url;
  }

  static async connect(url: string, acknowledge: boolean): Promise<Galaxy> {
    const connection = await amqp.connect(url);
    connection.on('error', () => undefined);
    const channel = await connection.createConfirmChannel();
    channel.on('error', () => undefined);
    const galaxy = new Galaxy(connection, acknowledge, url);
    await channel.assertExchange(EXCHANGE, 'direct', { durable: true });
    const updates = queue('status_update');
    await channel.assertQueue(updates, { durable: true });
    await channel.bindQueue(updates, EXCHANGE, updates);
    await channel.prefetch(256);
    await channel.consume(updates, (msg) => {
      if (msg === null) return;
      const at = wallMs();
      const body = JSON.parse(msg.content.toString('utf8')) as { job_id?: unknown; status?: unknown; acknowledge_uuid?: unknown };
      if (typeof body.acknowledge_uuid === 'string') {
        channel.publish(EXCHANGE, queue('status_update_ack'), Buffer.from(JSON.stringify({ acknowledge_uuid_response: body.acknowledge_uuid })), { persistent: true });
      }
      channel.ack(msg);
      if (typeof body.job_id !== 'string' || typeof body.status !== 'string') return;
      galaxy.updates++;
      const update = { jobId: body.job_id, status: body.status, at };
      const key = `${update.jobId}/${update.status}`;
      if (!galaxy.firstArrival.has(key)) galaxy.firstArrival.set(key, at);
      for (const w of [...(galaxy.#waiters.get(update.jobId) ?? [])]) w(update);
    });
    if (acknowledge) {
      const acks = queue('setup_ack');
      await channel.assertQueue(acks, { durable: true });
      await channel.bindQueue(acks, EXCHANGE, acks);
      await channel.consume(acks, (msg) => {
        if (msg === null) return;
        galaxy.setupAcks++;
        channel.ack(msg);
      });
    }
    return galaxy;
  }

  /** Resolves with the first update of `jobId` that `accept` takes (registered before publishing). */
  next(jobId: string, accept: (u: Update) => boolean): { update: Promise<Update>; cancel: () => void } {
    let cancel = (): void => undefined;
    const update = new Promise<Update>((resolve, reject) => {
      const set = this.#waiters.get(jobId) ?? new Set();
      this.#waiters.set(jobId, set);
      const done = (): void => {
        clearTimeout(timer);
        set.delete(waiter);
        if (set.size === 0) this.#waiters.delete(jobId);
      };
      const waiter = (u: Update): void => {
        if (!accept(u)) return;
        done();
        resolve(u);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no matching status update for ${jobId} within ${JOB_TIMEOUT_MS / 1000} s`));
      }, JOB_TIMEOUT_MS);
      set.add(waiter);
      cancel = done;
    });
    return { update, cancel };
  }

  /** A producer: its own connection and confirm channel. */
  async producer(): Promise<Producer> {
    const connection = await amqp.connect(this.#url);
    connection.on('error', () => undefined);
    const channel = await connection.createConfirmChannel();
    channel.on('error', () => undefined);
    return new Producer(connection, channel, this.#acknowledge);
  }

  async close(): Promise<void> {
    await this.#connection.close().catch(() => undefined);
  }
}

class Producer {
  readonly #connection: amqp.ChannelModel;
  readonly #channel: amqp.ConfirmChannel;
  readonly #acknowledge: boolean;

  constructor(connection: amqp.ChannelModel, channel: amqp.ConfirmChannel, acknowledge: boolean) {
    this.#connection = connection;
    this.#channel = channel;
    this.#acknowledge = acknowledge;
  }

  /** Publish on the setup queue as Pulsar's client does and wait for the broker's confirm. */
  async publish(body: Record<string, unknown>): Promise<void> {
    const payload = { ...body };
    if (this.#acknowledge && !('force_noack' in payload)) {
      payload['acknowledge_uuid'] = randomUUID();
      payload['acknowledge_queue'] = 'setup_ack';
      payload['acknowledge_submit_queue'] = 'setup';
    }
    this.#channel.publish(EXCHANGE, queue('setup'), Buffer.from(JSON.stringify(payload)), { persistent: true, contentType: 'application/json' });
    await this.#channel.waitForConfirms();
  }

  /** The setup message of MessageJobClient.launch (PROTOCOL §11.2), no remote staging. */
  async setup(jobId: string, commandLine: string): Promise<void> {
    await this.publish({
      command_line: commandLine,
      job_id: jobId,
      dynamic_file_sources: null,
      token_endpoint: null,
      setup_params: { job_id: jobId, tool_id: 'cat1', tool_version: '1.0.0', use_metadata: true, preserve_galaxy_python_environment: null },
    });
  }

  async requestStatus(jobId: string): Promise<void> {
    await this.publish({ request: 'status', job_id: jobId, force_noack: true });
  }

  async close(): Promise<void> {
    await this.#connection.close().catch(() => undefined);
  }
}

/** `job state changed` log times: `<job>/<state>` → ms since the epoch (the first of each). */
async function stateChangeTimes(logFile: string): Promise<Map<string, number>> {
  const times = new Map<string, number>();
  const text = await fs.readFile(logFile, 'utf8');
  for (const line of text.split('\n')) {
    if (!line.includes('"job state changed"')) continue;
    try {
      const entry = JSON.parse(line) as { time?: unknown; jobId?: unknown; state?: unknown };
      if (typeof entry.time !== 'number' || typeof entry.jobId !== 'string' || typeof entry.state !== 'string') continue;
      const key = `${entry.jobId}/${entry.state}`;
      if (!times.has(key)) times.set(key, entry.time);
    } catch {
      // a partial line
    }
  }
  return times;
}

/** One job: publish its setup, wait for its terminal update; the time in ms, and whether it completed. */
async function oneJob(galaxy: Galaxy, producer: Producer, jobId: string, commandLine: string): Promise<{ ms: number; complete: boolean; publishedAt: number; confirmMs: number }> {
  const terminal = galaxy.next(jobId, (u) => (TERMINAL_STATES as ReadonlySet<string>).has(u.status));
  const publishedAt = wallMs();
  const start = performance.now();
  try {
    await producer.setup(jobId, commandLine);
  } catch (error) {
    terminal.cancel();
    throw error;
  }
  const confirmMs = performance.now() - start;
  const update = await terminal.update;
  return { ms: performance.now() - start, complete: update.status === 'complete', publishedAt, confirmMs };
}

/** The states a job passes through after its setup message, in order, and the steps between them. */
const STEP_STATES = ['preprocessing', 'queued', 'running', 'postprocessing', 'complete'] as const;
const STEP_NAMES = [
  'publish_to_accepted', // setup publish → the job recorded (setup → preprocessing)
  'accepted_to_queued',
  'queued_to_running',
  'running_to_postprocessing', // the command itself, and noticing it ended
  'postprocessing_to_complete',
  'complete_to_arrival', // the status update's publish latency
] as const;

async function runPhase(server: ServerProcess, galaxy: Galaxy, producers: Producer[], jobs: number, idPrefix: string, commandLine: string): Promise<MqPhase> {
  const latencies: number[] = [];
  const confirms: number[] = [];
  const ids: string[] = [];
  const publishedAt = new Map<string, number>();
  let notComplete = 0;
  let next = 0;
  const updates0 = galaxy.updates;
  const cpu0 = server.cpuSeconds();
  const stopRss = server.sampleRss(50);
  const start = performance.now();
  let seconds: number;
  let peakRss: number;
  try {
    // A failed job stops the other producers taking new ones; their jobs in flight finish first.
    const ended = await Promise.allSettled(
      producers.map(async (producer) => {
        for (;;) {
          const n = next++;
          if (n >= jobs) return;
          const jobId = `${idPrefix}${n}`;
          ids.push(jobId);
          try {
            const r = await oneJob(galaxy, producer, jobId, commandLine);
            latencies.push(r.ms);
            confirms.push(r.confirmMs);
            publishedAt.set(jobId, r.publishedAt);
            if (!r.complete) notComplete++;
          } catch (error) {
            next = jobs;
            throw error;
          }
        }
      }),
    );
    const failed = ended.find((e) => e.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  } finally {
    seconds = (performance.now() - start) / 1000;
    peakRss = stopRss().peakRss;
  }
  const cpu = server.cpuSeconds() - cpu0;
  // Let the last log lines reach the file (pino writes them before the publish; this is margin).
  await sleep(200);
  const changed = await stateChangeTimes(server.logFile);
  const publish = { running: [] as number[], complete: [] as number[] };
  for (const id of ids) {
    for (const state of ['running', 'complete'] as const) {
      const at = galaxy.firstArrival.get(`${id}/${state}`);
      const when = changed.get(`${id}/${state}`);
      if (at !== undefined && when !== undefined) publish[state].push(at - when);
    }
  }
  const steps: Record<string, number[]> = {};
  for (const id of ids) {
    const times = [publishedAt.get(id), ...STEP_STATES.map((state) => changed.get(`${id}/${state}`)), galaxy.firstArrival.get(`${id}/complete`)];
    STEP_NAMES.forEach((name, i) => {
      const [a, b] = [times[i], times[i + 1]];
      if (a !== undefined && b !== undefined) (steps[name] ??= []).push(b - a);
    });
  }
  if (notComplete > 0) throw new Error(`${notComplete} of ${jobs} jobs ended other than complete`);
  return {
    producers: producers.length,
    jobs,
    seconds: round(seconds, 2),
    jobs_per_s: round(jobs / seconds, 1),
    end_to_end: spread(latencies),
    setup_publish_confirm: spread(confirms),
    not_complete: notComplete,
    publish_latency: { running: spread(publish.running), complete: spread(publish.complete) },
    steps_p50_ms: Object.fromEntries(STEP_NAMES.map((name) => [name, spread(steps[name] ?? []).p50_ms])),
    updates_per_job: round((galaxy.updates - updates0) / jobs, 2),
    server_peak_rss_mib: round(peakRss / MIB, 1),
    server_cpu_ms_per_job: round((cpu * 1000) / jobs, 2),
  };
}

/** Start the server with the message-queue settings in its environment (PULSAR_CONFIG_*). */
async function startServer(dir: string, url: string, acknowledge: boolean, options: MqOptions): Promise<ServerProcess> {
  const settings: Record<string, string> = {
    PULSAR_CONFIG_MESSAGE_QUEUE_URL: url,
    PULSAR_CONFIG_AMQP_ACKNOWLEDGE: String(acknowledge),
  };
  const saved = Object.fromEntries(Object.keys(settings).map((k) => [k, process.env[k]]));
  Object.assign(process.env, settings);
  try {
    // The publish latency is read from the `job state changed` lines, logged at info.
    return await ServerProcess.start({ root: dir, numConcurrentJobs: NUM_CONCURRENT_JOBS, logLevel: 'info', entry: options.entry, cpuProfDir: options.cpuProfDir });
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

async function runVariant(broker: Broker, options: MqOptions, acknowledge: boolean, label: string): Promise<MqVariant | { error: string }> {
  const dir = path.join(options.dir, label);
  await fs.mkdir(dir, { recursive: true });
  let server: ServerProcess;
  try {
    server = await startServer(dir, broker.url, acknowledge, options);
  } catch (error) {
    return { error: `server did not start: ${message(error)}` };
  }
  options.track(server);
  const rssAtStart = server.memory().rss;
  const stopRss = server.sampleRss(50);
  const galaxy = await Galaxy.connect(broker.url, acknowledge);
  const producers: Producer[] = [];
  const windows: Window[] = [];
  const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);
  const result: MqVariant = {
    acknowledge,
    phases: {},
    status_request_round_trip: null,
    setup_acks: 0,
    server_rss_at_start_mib: round(rssAtStart / MIB, 1),
    server_peak_rss_mib: 0,
    server_hwm_mib: 0,
  };
  try {
    const most = Math.max(...options.producers);
    for (let i = 0; i < most; i++) producers.push(await galaxy.producer());
    const first = producers[0];
    if (first === undefined) throw new Error('no producer');
    for (let w = 0; w < WARMUP_JOBS; w++) await oneJob(galaxy, first, `bench_mq_${label}_warm_${w}`, options.commandLine);
    for (const p of options.producers) {
      log(`mq ${label}: ${options.jobs} jobs, ${p} producer(s)`);
      const startUs = nowUs();
      const phase = await runPhase(server, galaxy, producers.slice(0, p), options.jobs, `bench_mq_${label}_c${p}_`, options.commandLine);
      windows.push({ name: `mq ${label} c${p}`, startUs, endUs: nowUs() });
      log(`mq ${label} c${p}: ${JSON.stringify(phase)}`);
      result.phases[`c${p}`] = phase;
    }
    const rtts: number[] = [];
    for (let i = 0; i < Math.min(options.statusRequests, options.jobs); i++) {
      const jobId = `bench_mq_${label}_c${options.producers[0] ?? 1}_${i}`;
      const answer = galaxy.next(jobId, () => true);
      const start = performance.now();
      await first.requestStatus(jobId);
      await answer.update;
      rtts.push(performance.now() - start);
    }
    result.status_request_round_trip = spread(rtts);
    log(`mq ${label} status request round trip: ${JSON.stringify(result.status_request_round_trip)}`);
  } catch (error) {
    result.error = message(error);
    log(`mq ${label} FAILED: ${result.error}\nserver log tail:\n${await server.logTail(15)}`);
  } finally {
    for (const p of producers) await p.close();
    result.setup_acks = galaxy.setupAcks;
    await galaxy.close();
    const { peakRss } = stopRss();
    Object.assign(result, { server_peak_rss_mib: round(peakRss / MIB, 1), server_hwm_mib: round(server.memory().hwm / MIB, 1) });
    const exit = await server.stop();
    options.track(undefined);
    log(`mq ${label}: server stopped (${exit.signal ?? `exit ${String(exit.code)}`})`);
  }
  if (options.cpuProfDir !== undefined) {
    const file = await findProfile(options.cpuProfDir, server.pid);
    if (file === undefined) log(`mq ${label}: no CPU profile found for pid ${server.pid}`);
    else {
      const summaries = await summariseProfile(file, `mq ${label}`, windows);
      for (const summary of summaries) process.stderr.write(`${formatSummary(summary)}\n`);
      options.profiles.push(...summaries.map((summary) => ({ ...summary, name: `${summary.name} [${path.basename(file)}]` })));
    }
  }
  if (result.error === undefined && !options.keep) await fs.rm(dir, { recursive: true, force: true });
  return result;
}

/** The section; `skipped` (not a failure) where no broker can be started. */
export async function runMq(options: MqOptions): Promise<MqResult | { error: string } | { skipped: string }> {
  const unavailable = brokerUnavailable();
  if (unavailable !== undefined) {
    log(`mq: skipped: ${unavailable}`);
    return { skipped: unavailable };
  }
  await fs.mkdir(options.dir, { recursive: true });
  let broker: Broker;
  try {
    broker = await Broker.start({ dir: path.join(options.dir, 'rabbitmq') });
  } catch (error) {
    return { error: `broker did not start: ${message(error)}` };
  }
  log(`mq: RabbitMQ pid ${broker.pid ?? '?'} on 127.0.0.1:${broker.port}`);
  // Ctrl-C: the bench's own handler stops the server; the broker goes here (by PID, synchronously).
  const onSigint = (): void => broker.killNow();
  process.once('SIGINT', onSigint);
  const variants: Record<string, MqVariant | { error: string }> = {};
  try {
    for (const ack of options.acknowledge) {
      const label = ack ? 'ack_on' : 'ack_off';
      log(`== mq ${label}: amqp_acknowledge = ${String(ack)}, warm-up ${WARMUP_JOBS} jobs`);
      variants[label] = await runVariant(broker, options, ack, label);
    }
  } finally {
    process.removeListener('SIGINT', onSigint);
    await broker.close(!options.keep);
  }
  return {
    broker: 'RabbitMQ (Debian rabbitmq-server), private, 127.0.0.1; durable queues, persistent messages, publisher confirms on both sides',
    command_line: options.commandLine,
    num_concurrent_jobs: NUM_CONCURRENT_JOBS,
    publish_latency_method:
      "status_update arrival at the consumer minus the server's `job state changed` log time for that job and state (same host clock; the log time is whole ms)",
    variants,
  };
}
