/**
 * `node dist/bench/mq.js` (after `npm run build`): message-queue mode end to end. A private
 * RabbitMQ (Debian's rabbitmq-server, as the tests start it) and a real `magnetar serve` process in
 * MQ mode; a Galaxy-like client publishes setup messages and waits for each job's `complete`
 * status update.
 *
 * Reported (one JSON object on stdout, progress on stderr):
 * - `jobs`: closed loops of 1 and 8 producers (each: publish a setup of a trivial job, wait for its
 *   complete update, next), `BENCH_MQ_SECONDS` (default 8) each after 10 warm-up jobs: jobs/s and
 *   the setup-to-complete latency p50/p95/max;
 * - `status_update_latency`: 200 status requests one after another (published on the setup queue,
 *   as Pulsar's client does) to the answer's arrival: the round trip of one status update through
 *   the outbox, the confirm channel and the broker, p50/p95/max.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { MqClient } from '../test/helpers/mq-client.js';
import { spawnServer, writeServerIni } from '../test/helpers/process.js';
import { Broker } from '../test/helpers/broker.js';
import { makeRoot } from '../test/helpers/server.js';
import { log, msSince, percentileSorted, round, sortedCopy } from './stats.js';

const SECONDS = Number(process.env['BENCH_MQ_SECONDS'] ?? 8);

function summary(latencies: number[]): { p50_ms: number; p95_ms: number; max_ms: number } {
  const sorted = sortedCopy(latencies);
  return { p50_ms: round(percentileSorted(sorted, 50)), p95_ms: round(percentileSorted(sorted, 95)), max_ms: round(sorted[sorted.length - 1] ?? Number.NaN) };
}

async function main(): Promise<void> {
  const broker = await Broker.start();
  const root = await makeRoot();
  let client: MqClient | undefined;
  let server: Awaited<ReturnType<typeof spawnServer>> | undefined;
  try {
    await fs.writeFile(path.join(root, 'job_managers.ini'), '[manager:_default_]\ntype = queued_python\nnum_concurrent_jobs = 8\n');
    const ini = await writeServerIni(root, [
      `staging_directory = ${root}/staging`,
      `persistence_directory = ${root}/persisted`,
      `job_managers_config = ${root}/job_managers.ini`,
      `message_queue_url = ${broker.url}`,
      'log_requests = false',
      'finished_expiry = 0',
    ]);
    server = await spawnServer(ini, { MAGNETAR_LOG_LEVEL: 'warn' });
    client = await MqClient.connect(broker.url);
    const c = client;
    let next = 0;
    const oneJob = async (): Promise<number> => {
      const id = `${process.pid}${String(next++).padStart(6, '0')}`;
      const start = process.hrtime.bigint();
      await c.setup(id, 'true');
      const done = await c.waitForTerminal(id, 60_000);
      if (done.status !== 'complete') throw new Error(`job ${id} ended ${done.status}`);
      return msSince(start);
    };
    for (let i = 0; i < 10; i++) await oneJob();
    const jobs: Record<string, unknown> = {};
    for (const producers of [1, 8]) {
      const latencies: number[] = [];
      const start = process.hrtime.bigint();
      const until = Date.now() + SECONDS * 1000;
      await Promise.all(
        Array.from({ length: producers }, async () => {
          while (Date.now() < until) latencies.push(await oneJob());
        }),
      );
      const seconds = msSince(start) / 1000;
      jobs[`c${producers}`] = { producers, jobs: latencies.length, jobs_per_s: round(latencies.length / seconds), ...summary(latencies) };
      log(`mq c${producers}: ${JSON.stringify(jobs[`c${producers}`])}`);
    }
    const statusLatencies: number[] = [];
    const id = `${process.pid}000000`;
    for (let i = 0; i < 200; i++) {
      const before = c.updatesOf(id).length;
      const start = process.hrtime.bigint();
      await c.requestStatus(id);
      await c.waitFor('a status answer', () => c.updatesOf(id).length > before, 30_000);
      statusLatencies.push(msSince(start));
    }
    const result = { mq: { jobs, status_update_latency: { samples: statusLatencies.length, ...summary(statusLatencies) } } };
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    await client?.close();
    await server?.kill('SIGTERM');
    await broker.close();
    await fs.rm(root, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`[bench] mq FAILED: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
