import test from 'ava';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger } from '../../src/log.js';
import { RepeatedFailureLog } from '../../src/managers/failure-log.js';
import { PollingMonitor, type PolledState } from '../../src/managers/monitor.js';

function capture(): { log: ReturnType<typeof createLogger>; lines: Array<{ level: number; msg: string; err?: string; failures?: number }> } {
  const lines: Array<{ level: number; msg: string; err?: string; failures?: number }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as (typeof lines)[number]);
      callback();
    },
  });
  return { log: createLogger({ level: 'debug', destination: sink }), lines };
}

test('a failing poll is logged once per distinct failure, retried, and its recovery logged; the waits go on', async (t) => {
  const { log, lines } = capture();
  const answers: Array<Error | Map<string, PolledState>> = [
    new Error('squeue: error: Unable to contact slurm controller'),
    new Error('squeue: error: Unable to contact slurm controller'),
    new Error('squeue: error: Unable to contact slurm controller'),
    new Error('squeue: command not found'),
    new Map([['7', { state: 'running' }]]),
    new Map([['7', { state: 'exited', exitCode: 0 }]]),
  ];
  let polls = 0;
  const monitor = new PollingMonitor({
    intervalMs: 50,
    pollBatch: async () => {
      const answer = answers[Math.min(polls++, answers.length - 1)]!;
      if (answer instanceof Error) throw answer;
      return answer;
    },
    onGone: async () => ({ exitCode: null }),
    log,
  });
  t.teardown(() => monitor.close());
  const keepAlive = setInterval(() => undefined, 1000);
  t.teardown(() => clearInterval(keepAlive));
  const started = monitor.waitForStart('7');
  t.deepEqual(await monitor.waitForExit('7'), { exitCode: 0 });
  await started;
  const failures = lines.filter((l) => l.msg === 'status poll failed; trying again next round');
  t.deepEqual(failures.map((l) => [l.err, l.failures]), [
    ['squeue: error: Unable to contact slurm controller', 1],
    ['squeue: command not found', 4],
  ]);
  t.true(failures.every((l) => l.level === 40), 'warnings');
  t.deepEqual(lines.filter((l) => l.msg === 'status poll works again').map((l) => l.failures), [4]);
});

test('a failure that lasts is logged again after the repeat interval', async (t) => {
  const { log, lines } = capture();
  const failures = new RepeatedFailureLog(log, 'condor_q', 100);
  failures.failed(new Error('schedd down'));
  failures.failed(new Error('schedd down'));
  t.is(lines.length, 1);
  await sleep(120);
  failures.failed(new Error('schedd down'));
  t.is(lines.length, 2);
  failures.succeeded();
  failures.succeeded();
  t.deepEqual(lines.map((l) => l.msg), ['condor_q failed; trying again next round', 'condor_q failed; trying again next round', 'condor_q works again']);
  failures.failed('schedd down');
  t.is(lines.length, 4, 'after a recovery the same failure is news again');
});
