/**
 * The `relay` section: relay mode end to end through the relay fake (test/helpers/relay-fake.ts,
 * a memory pulsar-relay on 127.0.0.1) and a real `magnetar serve` process polling it.
 *
 * Reported:
 * - `setup_to_complete`: `BENCH_RELAY_JOBS` (default 40) trivial jobs one after another, after 5
 *   warm-up jobs: from the `job_setup` publish to the `complete` status update stored at the relay
 *   (the fake's `whenMessage`: what Galaxy's consumer would receive next), p50/p95/max ms; and the
 *   relay requests each job cost (polls, publishes, auth);
 * - `idle`: requests magnetar sends while nothing happens, over `BENCH_RELAY_IDLE_SECONDS`
 *   (default 60: the default 30 s long poll makes a 20 s window read 0 or 1 poll), per minute, by
 *   route; plus the steady state that follows from the settings (polls per minute per manager +
 *   logins at the token renewal period), since a window rarely contains a renewal.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { startRelayFake, type RelayFake } from '../test/helpers/relay-fake.js';
import { spawnServer, writeServerIni, type ServerProcess } from '../test/helpers/process.js';
import { log, msSince, percentileSorted, round, sortedCopy } from './stats.js';

const USER = 'relay';
const PASSWORD = 'relay-password';
const LONG_POLL_S = 30;
const TOKEN_S = 600;

export interface RelayBenchResult {
  readonly setup_to_complete: { jobs: number; p50_ms: number; p95_ms: number; max_ms: number; requests_per_job: number };
  readonly idle: { seconds: number; requests: number; per_minute: number; by_route: Record<string, number>; steady_state_per_minute: number; long_poll_timeout_s: number; token_lifetime_s: number };
}

function envCount(name: string, fallback: number): number {
  const raw = process.env[name];
  const value = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer`);
  return value;
}

async function oneJob(fake: RelayFake, id: string): Promise<number> {
  const start = process.hrtime.bigint();
  const done = fake.whenMessage(USER, 'job_status_update', (p) => p['job_id'] === id && ['complete', 'failed', 'cancelled', 'lost'].includes(String(p['status'])));
  fake.publish(USER, 'job_setup', {
    command_line: 'true',
    job_id: id,
    setup_params: { job_id: id, tool_id: 'cat1', tool_version: '1.0.0', use_metadata: true, preserve_galaxy_python_environment: null },
    dynamic_file_sources: null,
    token_endpoint: null,
  });
  const message = await done;
  if (message.payload['status'] !== 'complete') throw new Error(`job ${id} ended ${String(message.payload['status'])}`);
  return msSince(start);
}

export async function runRelay(root: string, logLevel: string | undefined): Promise<RelayBenchResult> {
  const jobs = envCount('BENCH_RELAY_JOBS', 40);
  const idleSeconds = envCount('BENCH_RELAY_IDLE_SECONDS', 60);
  // Every client of the fake is 127.0.0.1: the per-IP limits would throttle the bench, not magnetar.
  const fake = await startRelayFake({ users: [{ username: USER, password: PASSWORD }], accessTokenSeconds: TOKEN_S, rateLimits: { login: null, refresh: null, publish: null } });
  let server: ServerProcess | undefined;
  try {
    const dir = path.join(root, 'relay');
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(path.join(dir, 'job_managers.ini'), '[manager:_default_]\ntype = queued_python\nnum_concurrent_jobs = 4\n');
    const ini = await writeServerIni(dir, [
      `staging_directory = ${dir}/staging`,
      `persistence_directory = ${dir}/persisted`,
      `job_managers_config = ${dir}/job_managers.ini`,
      `message_queue_url = ${fake.url}`,
      `message_queue_username = ${USER}`,
      `message_queue_password = ${PASSWORD}`,
      `relay_long_poll_timeout = ${LONG_POLL_S}`,
      'log_requests = false',
      'finished_expiry = 0',
    ]);
    server = await spawnServer(ini, { MAGNETAR_LOG_LEVEL: logLevel ?? 'warn' });
    await fake.whenWaiting(USER, 'job_setup');
    for (let i = 0; i < 5; i++) await oneJob(fake, `bench_relay_warm_${i}`);
    log(`relay: ${jobs} jobs one after another`);
    const before = fake.requests.length;
    const latencies: number[] = [];
    for (let i = 0; i < jobs; i++) latencies.push(await oneJob(fake, `bench_relay_${i}`));
    const jobRequests = fake.requests.slice(before).length;
    const sorted = sortedCopy(latencies);
    // Let the last updates and the poll that follows settle before the idle window.
    await new Promise((r) => setTimeout(r, 2000));
    log(`relay: idle for ${idleSeconds} s`);
    const idleStart = fake.requests.length;
    await new Promise((r) => setTimeout(r, idleSeconds * 1000));
    const idle = fake.requests.slice(idleStart);
    const byRoute: Record<string, number> = {};
    for (const r of idle) byRoute[r.route ?? 'other'] = (byRoute[r.route ?? 'other'] ?? 0) + 1;
    // Steady state: one poll per timeout per manager, one login per renewal (min(300 s, lifetime/2) before expiry).
    const renewEveryS = TOKEN_S - Math.min(300, TOKEN_S / 2);
    return {
      setup_to_complete: {
        jobs,
        p50_ms: round(percentileSorted(sorted, 50)),
        p95_ms: round(percentileSorted(sorted, 95)),
        max_ms: round(sorted[sorted.length - 1] ?? Number.NaN),
        requests_per_job: round(jobRequests / jobs, 1),
      },
      idle: {
        seconds: idleSeconds,
        requests: idle.length,
        per_minute: round((idle.length / idleSeconds) * 60, 1),
        by_route: byRoute,
        steady_state_per_minute: round(60 / LONG_POLL_S + 60 / renewEveryS, 2),
        long_poll_timeout_s: LONG_POLL_S,
        token_lifetime_s: TOKEN_S,
      },
    };
  } finally {
    await server?.kill('SIGTERM');
    await fake.close();
  }
}

/** `node dist/bench/relay.js`: this section alone. */
if (process.argv[1]?.endsWith('/bench/relay.js') === true) {
  const root = await fs.mkdtemp(path.join((await import('node:os')).tmpdir(), 'magnetar-bench-relay-'));
  try {
    process.stdout.write(`${JSON.stringify({ relay: await runRelay(root, process.env['BENCH_SERVER_LOG_LEVEL']) }, null, 2)}\n`);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
}
