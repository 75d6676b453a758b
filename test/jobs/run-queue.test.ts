import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger } from '../../src/log.js';
import { RunQueue } from '../../src/jobs/run-queue.js';

const log = createLogger({ level: 'silent' });

test('at most `limit` tasks hold a slot, in submit order, and every slot is freed whatever the task does', async (t) => {
  let running = 0;
  let peak = 0;
  const started: string[] = [];
  const failed: string[] = [];
  const queue = new RunQueue({
    limit: 2,
    task: async (id) => {
      started.push(id);
      running += 1;
      peak = Math.max(peak, running);
      await sleep(5);
      running -= 1;
      if (id.endsWith('!')) throw new Error(`task ${id} broke`);
    },
    onError: async (id) => {
      failed.push(id);
    },
    log,
  });
  const ids = Array.from({ length: 20 }, (_, i) => (i % 3 === 0 ? `${i}!` : String(i)));
  for (const id of ids) queue.enqueue(id);
  await queue.drain();
  t.deepEqual(started, ids, 'started in submit order');
  t.is(peak, 2, 'never more than the limit');
  t.deepEqual(failed, ids.filter((id) => id.endsWith('!')), 'every throwing task was handed to onError');
  t.is(queue.activeCount, 0, 'every slot was freed');
  t.is(queue.waitingCount, 0);
});

test('a failing onError still frees the slot, and adopted jobs count against the limit', async (t) => {
  const started: string[] = [];
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  const queue = new RunQueue({
    limit: 1,
    task: async (id) => {
      started.push(id);
      throw new Error('no');
    },
    onError: async () => {
      throw new Error('and no again');
    },
    log,
  });
  queue.adopt('running-before-restart', async () => held);
  queue.enqueue('a');
  queue.enqueue('b');
  await sleep(10);
  t.deepEqual(started, [], 'nothing starts while the adopted job holds the only slot');
  release();
  await queue.drain();
  t.deepEqual(started, ['a', 'b']);
  t.is(queue.activeCount, 0);
});

test('close starts nothing more', async (t) => {
  const started: string[] = [];
  const queue = new RunQueue({ limit: 1, task: async (id) => { started.push(id); await sleep(5); }, onError: async () => undefined, log });
  queue.enqueue('a');
  queue.enqueue('b');
  queue.close();
  queue.enqueue('c');
  await queue.drain();
  t.deepEqual(started, ['a']);
});

test('an id queued again while its earlier task still holds a slot starts once that task ends', async (t) => {
  const started: string[] = [];
  let endFirst!: () => void;
  const firstEnds = new Promise<void>((resolve) => {
    endFirst = resolve;
  });
  const queue = new RunQueue({
    limit: 4,
    task: async (id) => {
      started.push(id);
      if (started.length === 1) await firstEnds;
    },
    onError: async () => undefined,
    log,
  });
  queue.enqueue('reused');
  await sleep(5);
  queue.enqueue('reused');
  await sleep(5);
  t.deepEqual(started, ['reused'], 'not twice at once');
  endFirst();
  await queue.drain();
  t.deepEqual(started, ['reused', 'reused'], 'the second life of the id ran');
});
