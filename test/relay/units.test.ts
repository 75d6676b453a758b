import test from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fitted, RELAY_MAX_BODY } from '../../src/mq/relay.js';
import { EMPTY_TOPIC, RelayCursor } from '../../src/mq/relay-cursor.js';
import { makeRoot } from '../helpers/server.js';

test('a status update too large for the relay keeps the tail of its output, marked; small ones are untouched', (t) => {
  const small = { job_id: '1', status: 'complete', stdout: 'ok' };
  t.is(fitted(small, 'job_status_update'), small);
  const big = { job_id: '1', status: 'complete', stdout: `${'a'.repeat(3 * RELAY_MAX_BODY)}THE END`, stderr: '"\\'.repeat(200_000), job_stdout: '' };
  const cut = fitted(big, 'job_status_update');
  t.true(Buffer.byteLength(JSON.stringify({ topic: 'job_status_update', payload: cut })) < RELAY_MAX_BODY);
  t.true((cut['stdout'] as string).endsWith('THE END'));
  t.regex(cut['stdout'] as string, /^\[magnetar: \d+ characters cut/);
  t.is(cut['job_id'], '1');
});

test('the cursor: a non-empty since map always; topics empty at the baseline left out (read from the oldest); written atomically', async (t) => {
  const dir = await makeRoot();
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'm-relay-cursor.json');
  const topics = ['job_setup', 'job_status_request', 'job_kill'];
  const cursor = new RelayCursor(file, topics);
  t.false(await cursor.load());
  await cursor.baseline(new Map([['job_setup', undefined], ['job_status_request', undefined], ['job_kill', undefined]]));
  t.deepEqual(cursor.since(), { job_setup: EMPTY_TOPIC });
  cursor.advance('job_kill', 'msg_000000000001');
  t.deepEqual(cursor.since(), { job_kill: 'msg_000000000001' });
  await cursor.save();
  const again = new RelayCursor(file, topics);
  t.true(await again.load());
  t.deepEqual(again.since(), { job_kill: 'msg_000000000001' });
  t.deepEqual((await fs.readdir(dir)).sort(), ['m-relay-cursor.json']);
  t.is((await fs.stat(file)).mode & 0o777, 0o600);
  await fs.writeFile(file, 'not json');
  await t.throwsAsync(new RelayCursor(file, topics).load(), { message: /not JSON/ });
});
