/** FairShare (web/fair-share.ts) with a utilization the test decides: who waits, for how long, in what order. */
import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { FairShare, WINDOW_MS, requestCost } from '../../src/web/fair-share.js';

/** A FairShare whose loop is as busy as `busy.value` says. */
function fairShare(busy: { value: number }, held: string[] = []): FairShare {
  return new FairShare({ utilization: () => busy.value, onHold: (client) => held.push(client) });
}

const windows = (n: number): Promise<void> => sleep(n * WINDOW_MS + WINDOW_MS / 2);

test('a busy loop holds back the client over its share and serves the other at once', async (t) => {
  const busy = { value: 1 };
  const held: string[] = [];
  const fair = fairShare(busy, held);
  t.teardown(() => fair.close());
  let flood = 0;
  for (let i = 0; i < 200; i++) fair.admit('10.0.0.2', 1, () => flood++);
  fair.admit('10.0.0.1', 1, () => undefined);
  t.is(flood, 200, 'nobody waits before a window has measured the shares');
  await windows(2);

  const order: string[] = [];
  fair.admit('10.0.0.2', 1, () => order.push('flood-1'));
  fair.admit('10.0.0.2', 1, () => order.push('flood-2'));
  fair.admit('10.0.0.1', 1, () => order.push('good'));
  t.deepEqual(order, ['good'], 'the flooding client waits, the other goes on');
  t.is(fair.waiting, 2);
  t.deepEqual(held, ['10.0.0.2']);

  // At most MAX_DEFERRALS windows each (timers may run late on a loaded machine: wait for them).
  for (let waited = 0; fair.waiting > 0 && waited < 5000; waited += WINDOW_MS) await sleep(WINDOW_MS);
  t.deepEqual(order, ['good', 'flood-1', 'flood-2'], 'held requests go on in their order, within the bound');
  t.is(fair.waiting, 0);
});

test('an idle loop, or a single client, is never held back', async (t) => {
  const busy = { value: 0 };
  const fair = fairShare(busy);
  t.teardown(() => fair.close());
  for (let i = 0; i < 200; i++) fair.admit('10.0.0.2', 1, () => undefined);
  fair.admit('10.0.0.1', 1, () => undefined);
  await windows(2);
  let ran = false;
  fair.admit('10.0.0.2', 1, () => (ran = true));
  t.true(ran, 'not busy: the heavy client goes on');

  const alone = fairShare({ value: 1 });
  t.teardown(() => alone.close());
  for (let i = 0; i < 200; i++) alone.admit('10.0.0.3', 1, () => undefined);
  await windows(2);
  ran = false;
  alone.admit('10.0.0.3', 1, () => (ran = true));
  t.true(ran, 'busy, but the only client: it goes on');
});

test('close lets every held request go on', async (t) => {
  const fair = fairShare({ value: 1 });
  for (let i = 0; i < 100; i++) fair.admit('a', 1, () => undefined);
  fair.admit('b', 1, () => undefined);
  await windows(2);
  let ran = 0;
  for (let i = 0; i < 5; i++) fair.admit('a', 1, () => ran++);
  t.is(ran, 0);
  fair.close();
  t.is(ran, 5);
  t.is(fair.waiting, 0);
});

test('a request costs one unit plus one per 64 KiB it brings', (t) => {
  t.is(requestCost(100, 0), 1);
  t.is(requestCost(65_536, 0), 2);
  t.is(requestCost(1000, 1024 * 1024), 17);
});
