/**
 * The relay fake against /work/shared/RELAY.md, with a plain HTTP client (fetch): what a relay
 * client in src/ will be tested against must itself behave as the real relay was observed to.
 */
import test, { type ExecutionContext } from 'ava';
import { startRelayFake, type RelayFake, type RelayFakeOptions } from '../helpers/relay-fake.js';
import { waitUntil } from '../helpers/wait.js';

interface Answer {
  status: number;
  headers: Headers;
  json: Record<string, unknown>;
}

interface Call {
  method?: string;
  token?: string;
  body?: unknown;
  /** Sent as is (no JSON encoding). */
  raw?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

async function call(fake: RelayFake, path: string, c: Call = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...c.headers };
  if (c.token !== undefined) headers['authorization'] = `Bearer ${c.token}`;
  let body: string | undefined = c.raw;
  if (c.body !== undefined) {
    body = JSON.stringify(c.body);
    headers['content-type'] = 'application/json';
  }
  const res = await fetch(`${fake.url}${path}`, {
    method: c.method ?? (body === undefined ? 'GET' : 'POST'),
    headers,
    ...(body === undefined ? {} : { body }),
    ...(c.signal === undefined ? {} : { signal: c.signal }),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

function loginCall(fake: RelayFake, username = 'relay', password = 'relay-password'): Promise<Answer> {
  const form = new URLSearchParams({ username, password, grant_type: 'password' }).toString();
  return call(fake, '/auth/login', { raw: form, headers: { 'content-type': 'application/x-www-form-urlencoded' } });
}

async function token(fake: RelayFake, username = 'relay', password = 'relay-password'): Promise<string> {
  const answer = await loginCall(fake, username, password);
  if (answer.status !== 200) throw new Error(`login failed: ${answer.status}`);
  return answer.json['access_token'] as string;
}

const publish = (fake: RelayFake, tok: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> =>
  call(fake, '/api/v1/messages', { token: tok, body, headers });

const poll = (fake: RelayFake, tok: string, body: unknown, signal?: AbortSignal): Promise<Answer> =>
  call(fake, '/messages/poll', { token: tok, body, ...(signal === undefined ? {} : { signal }) });

const messagesOf = (a: Answer): Record<string, unknown>[] => a.json['messages'] as Record<string, unknown>[];

async function fakeFor(t: ExecutionContext, options: RelayFakeOptions = {}): Promise<RelayFake> {
  const fake = await startRelayFake(options);
  t.teardown(() => fake.close());
  return fake;
}

const TWO_USERS = { users: [{ username: 'relay', password: 'relay-password' }, { username: 'other', password: 'other-password' }] };

test('health and ready answer without auth, in their observed shapes', async (t) => {
  const fake = await fakeFor(t);
  const health = await call(fake, '/health');
  t.is(health.status, 200);
  t.like(health.json, { status: 'healthy', version: '0.1.0' });
  t.is(typeof health.json['timestamp'], 'string');
  t.deepEqual((await call(fake, '/ready')).json, { ready: true, checks: { storage: 'ok' } });
  t.is((await call(fake, '/nowhere')).status, 404);
  t.is((await call(fake, '/messages/poll')).status, 405);
});

test('login: form-encoded, the token shape and JWT claims; a JSON body is 422; wrong password 401; inactive 403', async (t) => {
  const fake = await fakeFor(t, { users: [{ username: 'relay', password: 'relay-password' }, { username: 'off', password: 'off-password', active: false }] });
  const ok = await loginCall(fake);
  t.is(ok.status, 200);
  t.like(ok.json, { token_type: 'bearer', expires_in: 600, refresh_token_secondary: null });
  const [, claimsPart] = (ok.json['access_token'] as string).split('.');
  const claims = JSON.parse(Buffer.from(claimsPart!, 'base64url').toString()) as Record<string, unknown>;
  t.like(claims, { sub: fake.userId('relay'), username: 'relay', permissions: ['read', 'write'] });
  t.is((claims['exp'] as number) - (claims['iat'] as number), 600);
  t.true(/^[0-9a-f]{32}$/.test(claims['jti'] as string));
  const [jti, secret, ...rest] = (ok.json['refresh_token'] as string).split('.');
  t.true(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(jti!));
  t.is(secret!.length, 43);
  t.is(rest.length, 0);

  const json = await call(fake, '/auth/login', { body: { username: 'relay', password: 'relay-password' } });
  t.is(json.status, 422);
  const wrong = await loginCall(fake, 'relay', 'nope');
  t.is(wrong.status, 401);
  t.deepEqual(wrong.json, { detail: 'Incorrect username or password' });
  t.is(wrong.headers.get('www-authenticate'), 'Bearer');
  t.is((await loginCall(fake, 'off', 'off-password')).status, 403);
});

test('login rate limit: 5 per minute per IP, fixed window from the first hit; failures count, 422s do not', async (t) => {
  const fake = await fakeFor(t);
  for (let i = 0; i < 3; i++) t.is((await call(fake, '/auth/login', { body: {} })).status, 422);
  t.is((await loginCall(fake, 'relay', 'wrong')).status, 401);
  for (let i = 0; i < 4; i++) t.is((await loginCall(fake)).status, 200);
  const sixth = await loginCall(fake);
  t.is(sixth.status, 429);
  t.deepEqual(sixth.json, { error: 'Rate limit exceeded: 5 per 1 minute' });
  fake.advanceClock(59);
  t.is((await loginCall(fake)).status, 429);
  fake.advanceClock(1);
  t.is((await loginCall(fake)).status, 200, 'a new window starts 60 s after the first hit');
});

test('bearer errors: none is "Not authenticated", garbage and expired are "Invalid or expired token"; the lifetime knob sets expires_in', async (t) => {
  const fake = await fakeFor(t, { accessTokenSeconds: 360 });
  const none = await call(fake, '/messages/poll/stats');
  t.is(none.status, 401);
  t.deepEqual(none.json, { detail: 'Not authenticated' });
  const garbage = await call(fake, '/messages/poll/stats', { token: 'a.b.c' });
  t.deepEqual([garbage.status, garbage.json], [401, { detail: 'Invalid or expired token' }]);
  const login = await loginCall(fake);
  t.is(login.json['expires_in'], 360);
  const tok = login.json['access_token'] as string;
  t.is((await call(fake, '/messages/poll/stats', { token: tok })).status, 200);
  fake.advanceClock(358);
  t.is((await call(fake, '/messages/poll/stats', { token: tok })).status, 200);
  fake.advanceClock(2);
  t.deepEqual((await call(fake, '/messages/poll/stats', { token: tok })).json, { detail: 'Invalid or expired token' });
});

test('refresh: single-use rotation; a replay is 401 and revokes the chain, newest included; issued access tokens stay valid', async (t) => {
  const fake = await fakeFor(t);
  const first = await loginCall(fake);
  const r1 = first.json['refresh_token'] as string;
  const second = await call(fake, '/auth/token/refresh', { body: { refresh_token: r1 } });
  t.is(second.status, 200);
  t.like(second.json, { token_type: 'bearer', expires_in: 600, refresh_token_secondary: null });
  const r2 = second.json['refresh_token'] as string;
  t.not(r2, r1);
  const third = await call(fake, '/auth/token/refresh', { body: { refresh_token: r2 } });
  const r3 = third.json['refresh_token'] as string;
  const access3 = third.json['access_token'] as string;

  const replay = await call(fake, '/auth/token/refresh', { body: { refresh_token: r1 } });
  t.is(replay.status, 401);
  t.deepEqual(replay.json, { detail: 'invalid refresh token' });
  t.deepEqual((await call(fake, '/auth/token/refresh', { body: { refresh_token: r3 } })).json, { detail: 'invalid refresh token' }, 'the chain is revoked');
  t.is((await publish(fake, access3, { topic: 't', payload: {} })).status, 201, 'access tokens already issued stay valid');
  t.is((await publish(fake, first.json['access_token'] as string, { topic: 't', payload: {} })).status, 201);

  // Another login is another chain.
  const other = await loginCall(fake);
  t.is((await call(fake, '/auth/token/refresh', { body: { refresh_token: other.json['refresh_token'] } })).status, 200);
  t.is((await call(fake, '/auth/token/refresh', { body: { refresh_token: 'not-a-token' } })).status, 401);
  const fresh = (await loginCall(fake)).json['refresh_token'] as string;
  const twin = `${fresh.slice(0, -1)}${fresh.at(-1) === 'A' ? 'B' : 'A'}`;
  t.is((await call(fake, '/auth/token/refresh', { body: { refresh_token: twin } })).status, 401, 'a secret differing in its last character');
  t.is((await call(fake, '/auth/token/refresh', { body: { refresh_token: fresh } })).status, 200, 'the failed attempt did not spend the token');
  t.is((await call(fake, '/auth/token/refresh', { body: { token: 'x' } })).status, 422);
});

test('refresh is limited to 10 per minute; refresh tokens expire', async (t) => {
  const fake = await fakeFor(t, { refreshTokenSeconds: 3600 });
  let wire = (await loginCall(fake)).json['refresh_token'] as string;
  for (let i = 0; i < 10; i++) {
    const answer = await call(fake, '/auth/token/refresh', { body: { refresh_token: wire } });
    t.is(answer.status, 200);
    wire = answer.json['refresh_token'] as string;
  }
  const eleventh = await call(fake, '/auth/token/refresh', { body: { refresh_token: wire } });
  t.deepEqual([eleventh.status, eleventh.json], [429, { error: 'Rate limit exceeded: 10 per 1 minute' }]);
  fake.advanceClock(3600);
  t.is((await call(fake, '/auth/token/refresh', { body: { refresh_token: wire } })).status, 401, 'expired');
});

test('publish: 201 shape; topic, payload, metadata and ttl validation (422); 255-char topics pass; over 1 MiB is 413', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  const ok = await publish(fake, tok, { topic: 'job_setup', payload: { job_id: '1' }, ttl: 60, metadata: { a: 'b' } });
  t.is(ok.status, 201);
  t.true(/^msg_[0-9a-f]{12}$/.test(ok.json['message_id'] as string));
  t.is(ok.json['topic'], 'job_setup');
  t.true((ok.json['timestamp'] as string).endsWith('Z'));
  t.is((await publish(fake, tok, { topic: 'A-z_9'.padEnd(255, 'x'), payload: {} })).status, 201);

  const bad: unknown[] = [
    { topic: 'job_setup.x', payload: {} },
    { topic: 'a/b', payload: {} },
    { topic: '', payload: {} },
    { topic: 'x'.repeat(256), payload: {} },
    { topic: 'é', payload: {} },
    { topic: 't', payload: [1] },
    { topic: 't', payload: 'text' },
    { topic: 't', payload: null },
    { topic: 't' },
    { topic: 't', payload: {}, metadata: { a: 1 } },
    { topic: 't', payload: {}, ttl: 0 },
    { topic: 't', payload: {}, ttl: 1.5 },
    [],
  ];
  for (const body of bad) t.is((await publish(fake, tok, body)).status, 422, JSON.stringify(body));
  t.is((await call(fake, '/api/v1/messages', { token: tok, raw: '{not json' })).status, 422);

  const big = await publish(fake, tok, { topic: 't', payload: { blob: 'x'.repeat(1024 * 1024) } });
  t.is(big.status, 413);
  t.is(big.json['error'], 'PAYLOAD_TOO_LARGE');
  t.is(fake.messages('relay', 't').length, 0);
  t.is(fake.messages('relay', 'job_setup').length, 1);
  t.deepEqual(fake.messages('relay', 'job_setup')[0]!.payload, { job_id: '1' });
});

test('Idempotency-Key: same user and key within 600 s gives the same message_id and stores nothing; other users and later keys do not', async (t) => {
  const fake = await fakeFor(t, TWO_USERS);
  const tok = await token(fake);
  const key = 'a'.repeat(32);
  const first = await publish(fake, tok, { topic: 'job_status_update', payload: { n: 1 } }, { 'idempotency-key': key });
  const listener = poll(fake, tok, { topics: ['job_status_update'], timeout: 1 });
  await fake.whenWaiting('relay', 'job_status_update');
  const again = await publish(fake, tok, { topic: 'job_status_update', payload: { n: 2 } }, { 'idempotency-key': key });
  t.deepEqual((await listener).json, { messages: [], has_more: false }, 'a replayed key wakes nobody');
  t.deepEqual(again.json, first.json);
  t.is(again.status, 201);
  t.is(fake.messages('relay', 'job_status_update').length, 1);
  t.deepEqual(
    fake.published.map((p) => [p.idempotencyKey, p.duplicate]),
    [
      [key, false],
      [key, true],
    ],
  );
  const fresh = await publish(fake, tok, { topic: 'job_status_update', payload: { n: 3 } }, { 'idempotency-key': 'b'.repeat(32) });
  t.not(fresh.json['message_id'], first.json['message_id']);
  const otherUser = await publish(fake, await token(fake, 'other', 'other-password'), { topic: 'job_status_update', payload: {} }, { 'idempotency-key': key });
  t.not(otherUser.json['message_id'], first.json['message_id']);
  fake.advanceClock(600);
  const late = await publish(fake, await token(fake), { topic: 'job_status_update', payload: { n: 4 } }, { 'idempotency-key': key });
  t.is(late.status, 201);
  t.not(late.json['message_id'], first.json['message_id']);
  t.is(fake.messages('relay', 'job_status_update').length, 3);
});

test('poll without since ignores stored messages, waits, and answers the first publish in the waiter shape', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  await publish(fake, tok, { topic: 'job_setup', payload: { old: true } });
  const pending = poll(fake, tok, { topics: ['job_setup', 'job_kill'], timeout: 30 });
  await fake.whenWaiting('relay', 'job_kill');
  const stats = await call(fake, '/messages/poll/stats', { token: tok });
  const uid = fake.userId('relay');
  t.deepEqual(stats.json, { active_waiters: 1, subscribed_topics: 2, topic_subscriber_counts: { [`${uid}/job_setup`]: 1, [`${uid}/job_kill`]: 1 } });
  const sent = await publish(fake, tok, { topic: 'job_kill', payload: { job_id: '7' } });
  const answer = await pending;
  t.is(answer.json['has_more'], false);
  const [message, ...others] = messagesOf(answer);
  t.is(others.length, 0);
  t.deepEqual(message, { type: 'message', message_id: sent.json['message_id'], topic: 'job_kill', payload: { job_id: '7' }, timestamp: sent.json['timestamp'], metadata: null });
  t.is(fake.waiting(), 0);
});

test('poll timeouts are whole seconds: 30.0 accepted; 1.5, 0, 61, "30" are 422; an idle poll answers empty after its timeout', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  const sent = await publish(fake, tok, { topic: 'a', payload: {} });
  // A cursor that is unknown reads from the oldest, so this answers at once: the point is that 30.0 passes.
  const float = await call(fake, '/messages/poll', { token: tok, raw: '{"topics":["a"],"timeout":30.0,"since":{"a":"msg_000000000000"}}' });
  t.is(float.status, 200);
  t.is(messagesOf(float)[0]!['message_id'], sent.json['message_id']);
  for (const timeout of [1.5, 0, 61, '30', true, -1]) t.is((await poll(fake, tok, { topics: ['a'], timeout })).status, 422, String(timeout));
  t.deepEqual((await poll(fake, tok, { topics: ['a'], timeout: 1 })).json, { messages: [], has_more: false });
});

test('poll 422s: no topics, 21 topics, a bad topic name, a non-object since or a non-string cursor', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  const twentyOne = Array.from({ length: 21 }, (_, i) => `t${i}`);
  const bad: unknown[] = [
    { topics: [], timeout: 1 },
    { topics: twentyOne, timeout: 1 },
    { topics: 'job_setup', timeout: 1 },
    { topics: ['job_setup.x'], timeout: 1 },
    { topics: ['a'], timeout: 1, since: ['x'] },
    { topics: ['a'], timeout: 1, since: { a: 5 } },
    'nope',
  ];
  for (const body of bad) t.is((await poll(fake, tok, body)).status, 422, JSON.stringify(body));
  t.is((await call(fake, '/messages/poll', { token: tok, raw: '{"topics":' })).status, 422);
  t.is(fake.waiting(), 0);
});

test('since: newer messages at once, grouped by topic in request order, in the since shape; a topic missing from the map replays from the oldest', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  const ids: Record<string, string[]> = { job_setup: [], job_status_request: [], job_kill: [] };
  // Interleaved publishes: the answer is not in publish order.
  for (const topic of ['job_kill', 'job_setup', 'job_status_request', 'job_setup', 'job_kill']) {
    ids[topic]!.push((await publish(fake, tok, { topic, payload: { topic }, metadata: { m: topic } })).json['message_id'] as string);
  }
  await publish(fake, tok, { topic: 'job_status_request', payload: { topic: 'x' } });
  const lastStatusRequest = fake.messages('relay', 'job_status_request').at(-1)!.message_id;

  const answer = await poll(fake, tok, { topics: ['job_setup', 'job_status_request', 'job_kill'], timeout: 30, since: { job_setup: ids['job_setup']![0], job_status_request: lastStatusRequest } });
  const got = messagesOf(answer);
  t.deepEqual(
    got.map((m) => m['message_id']),
    [ids['job_setup']![1], ...ids['job_kill']!],
    'setup after the cursor, nothing newer for status requests, every retained kill (no cursor for it)',
  );
  t.is(answer.json['has_more'], false);
  const first = got[0]!;
  t.deepEqual(Object.keys(first).sort(), ['message_id', 'metadata', 'payload', 'stream_id', 'timestamp', 'topic']);
  t.like(first, { topic: 'job_setup', payload: { topic: 'job_setup' }, metadata: { m: 'job_setup' }, stream_id: null });
  t.true((first['timestamp'] as string).endsWith('+00:00'));

  // An unknown id reads everything retained.
  const unknown = await poll(fake, tok, { topics: ['job_setup'], timeout: 30, since: { job_setup: 'msg_ffffffffffff' } });
  t.deepEqual(messagesOf(unknown).map((m) => m['message_id']), ids['job_setup']);
  // A message published without metadata still has `metadata: {}` on this path.
  const plain = await publish(fake, tok, { topic: 'job_setup', payload: {} });
  const latest = await poll(fake, tok, { topics: ['job_setup'], timeout: 30, since: { job_setup: ids['job_setup']![1] } });
  t.deepEqual(messagesOf(latest).map((m) => [m['message_id'], m['metadata']]), [[plain.json['message_id'], {}]]);
});

test('since with nothing newer waits like a plain poll; an empty since map is no cursor at all', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  const old = (await publish(fake, tok, { topic: 'a', payload: { n: 0 } })).json['message_id'] as string;
  const waiting = poll(fake, tok, { topics: ['a'], timeout: 30, since: { a: old } });
  await fake.whenWaiting('relay', 'a');
  const sent = await publish(fake, tok, { topic: 'a', payload: { n: 1 } });
  const got = messagesOf(await waiting);
  t.deepEqual(got.map((m) => [m['type'], m['message_id']]), [['message', sent.json['message_id']]]);

  const empty = poll(fake, tok, { topics: ['a'], timeout: 30, since: {} });
  await fake.whenWaiting('relay', 'a');
  t.is(fake.messages('relay', 'a').length, 2, 'stored messages exist, yet the poll waits');
  const next = await publish(fake, tok, { topic: 'a', payload: { n: 2 } });
  t.deepEqual(messagesOf(await empty).map((m) => m['message_id']), [next.json['message_id']]);
});

test('since: at most 100 per topic, has_more when 100 or more come back', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  for (let i = 0; i < 150; i++) fake.publish('relay', 'a', { i });
  fake.publish('relay', 'b', { i: 0 });
  const answer = await poll(fake, tok, { topics: ['a', 'b'], timeout: 30, since: { b: 'msg_000000000000' } });
  const got = messagesOf(answer);
  t.is(got.length, 101);
  t.deepEqual(got[99]!['payload'], { i: 99 });
  t.is(got[100]!['topic'], 'b');
  t.true(answer.json['has_more']);
  const rest = await poll(fake, tok, { topics: ['a'], timeout: 30, since: { a: got[99]!['message_id'] } });
  t.is(messagesOf(rest).length, 50);
  t.false(rest.json['has_more']);
});

test('the since race: a publish between the storage read and the waiter registration is missed by that poll, caught by the next', async (t) => {
  let sneak: (() => void) | undefined;
  const fake = await fakeFor(t, { betweenSinceReadAndWait: () => sneak?.() });
  const tok = await token(fake);
  const cursor = fake.publish('relay', 'a', { n: 0 });
  let sneaked = '';
  sneak = () => {
    sneak = undefined;
    sneaked = fake.publish('relay', 'a', { n: 1 });
  };
  const missed = await poll(fake, tok, { topics: ['a'], timeout: 1, since: { a: cursor } });
  t.deepEqual(missed.json, { messages: [], has_more: false });
  const caught = await poll(fake, tok, { topics: ['a'], timeout: 30, since: { a: cursor } });
  t.deepEqual(messagesOf(caught).map((m) => m['message_id']), [sneaked]);
});

test('fan-out: every waiter on a topic gets every message; no competing consumers', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  const a = poll(fake, tok, { topics: ['job_setup'], timeout: 30 });
  const b = poll(fake, tok, { topics: ['job_setup', 'job_kill'], timeout: 30 });
  const c = poll(fake, tok, { topics: ['job_kill'], timeout: 30 });
  await fake.whenWaiting('relay', 'job_setup', 2);
  await fake.whenWaiting('relay', 'job_kill', 2);
  const sent = await publish(fake, tok, { topic: 'job_setup', payload: { job_id: '1' } });
  for (const answer of await Promise.all([a, b])) t.deepEqual(messagesOf(answer).map((m) => m['message_id']), [sent.json['message_id']]);
  t.is(fake.waiting('relay', 'job_kill'), 1, 'the poller on other topics still waits');
  const kill = await publish(fake, tok, { topic: 'job_kill', payload: { job_id: '1' } });
  t.deepEqual(messagesOf(await c).map((m) => m['message_id']), [kill.json['message_id']]);
});

test('namespaces: another user with the same topic sees no history (404), receives nothing, and its publishes do not reach the first', async (t) => {
  const fake = await fakeFor(t, TWO_USERS);
  const mine = await token(fake);
  const theirs = await token(fake, 'other', 'other-password');
  const mineWaiting = poll(fake, mine, { topics: ['job_setup'], timeout: 30 });
  const theirsWaiting = poll(fake, theirs, { topics: ['job_setup'], timeout: 1 });
  await fake.whenWaiting('relay', 'job_setup');
  await fake.whenWaiting('other', 'job_setup');
  const sent = await publish(fake, mine, { topic: 'job_setup', payload: {} });
  t.deepEqual(messagesOf(await mineWaiting).map((m) => m['message_id']), [sent.json['message_id']]);
  t.deepEqual((await theirsWaiting).json, { messages: [], has_more: false });
  t.is((await call(fake, '/api/v1/topics/job_setup/messages', { token: theirs })).status, 404);
  const theirCursor = { job_setup: sent.json['message_id'] as string };
  t.deepEqual((await poll(fake, theirs, { topics: ['job_setup'], timeout: 1, since: theirCursor })).json, { messages: [], has_more: false }, 'no replay either');

  const again = poll(fake, mine, { topics: ['job_setup'], timeout: 1 });
  await fake.whenWaiting('relay', 'job_setup');
  await publish(fake, theirs, { topic: 'job_setup', payload: { from: 'other' } });
  t.deepEqual((await again).json, { messages: [], has_more: false });
  // Stats show every user's channels to anyone.
  const stats = async (): Promise<Record<string, unknown>> => (await call(fake, '/messages/poll/stats', { token: theirs })).json;
  const third = poll(fake, mine, { topics: ['secret_topic'], timeout: 1 });
  await fake.whenWaiting('relay', 'secret_topic');
  t.deepEqual((await stats())['topic_subscriber_counts'], { [`${fake.userId('relay')}/secret_topic`]: 1 });
  await third;
});

test('a client that disconnects mid-poll leaves its waiter until the timeout; at most N waiters per user (429)', async (t) => {
  const fake = await fakeFor(t, { maxWaitersPerUser: 2 });
  const tok = await token(fake);
  const abort = new AbortController();
  const gone = poll(fake, tok, { topics: ['a'], timeout: 5 }, abort.signal);
  await fake.whenWaiting('relay', 'a');
  abort.abort();
  await t.throwsAsync(gone, { any: true });
  const held = poll(fake, tok, { topics: ['a'], timeout: 30 });
  await fake.whenWaiting('relay', 'a', 2);
  const over = await poll(fake, tok, { topics: ['b'], timeout: 30 });
  t.deepEqual([over.status, over.json], [429, { detail: 'Too many concurrent poll connections' }]);
  t.is(fake.waiting('relay'), 2, 'the dead waiter still counts');
  await waitUntil('the dead waiter to time out', () => Promise.resolve(fake.waiting('relay') === 1), 20_000);
  fake.publish('relay', 'a', {});
  t.is(messagesOf(await held).length, 1);
});

test('publish rate limit (120/min by default, knob here); auth and validation failures do not count', async (t) => {
  const fake = await fakeFor(t, { rateLimits: { publish: 3, login: null } });
  const tok = await token(fake);
  t.is((await publish(fake, 'bad', { topic: 'a', payload: {} })).status, 401);
  t.is((await publish(fake, tok, { topic: 'a.b', payload: {} })).status, 422);
  for (let i = 0; i < 3; i++) t.is((await publish(fake, tok, { topic: 'a', payload: {} })).status, 201);
  const over = await publish(fake, tok, { topic: 'a', payload: {} });
  t.deepEqual([over.status, over.json], [429, { error: 'Rate limit exceeded: 3 per 1 minute' }]);
  for (let i = 0; i < 7; i++) t.is((await loginCall(fake)).status, 200, 'login limit off');
});

test('history and the capability snapshot: 404 before the first post, newest first by default, cursors page', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  const path = '/api/v1/topics/pulsar_capabilities/messages';
  const missing = await call(fake, path, { token: tok });
  t.is(missing.status, 404);
  const snapshot = (n: number): Record<string, unknown> => ({ schema_version: 1, manager_name: '_default_', published_at: `t${n}` });
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) ids.push((await publish(fake, tok, { topic: 'pulsar_capabilities', payload: snapshot(i) })).json['message_id'] as string);
  const latest = await call(fake, `${path}?limit=1&order=desc`, { token: tok });
  t.is(latest.status, 200);
  t.like(latest.json, { total: 1, limit: 1, order: 'desc', cursor: null, next_cursor: ids[2] });
  const [entry] = messagesOf(latest);
  t.deepEqual(Object.keys(entry!).sort(), ['message_id', 'metadata', 'payload', 'timestamp', 'topic']);
  t.deepEqual(entry!['payload'], snapshot(2));
  const page = await call(fake, `${path}?order=asc&cursor=${ids[0]}`, { token: tok });
  t.deepEqual(messagesOf(page).map((m) => m['message_id']), ids.slice(1));
  t.is(page.json['cursor'], ids[0]);
  t.is((await call(fake, `${path}?limit=x`, { token: tok })).status, 422);
  t.is((await call(fake, `${path}?order=sideways`, { token: tok })).status, 400);
  t.is((await call(fake, path)).status, 401);
});

test('restart loses messages, topics, tokens and waiters; configured users stay with the same id; a fixed jwtSecret keeps access tokens', async (t) => {
  const fake = await fakeFor(t);
  const login = await loginCall(fake);
  const tok = login.json['access_token'] as string;
  const uid = fake.userId('relay');
  const port = fake.port;
  await publish(fake, tok, { topic: 'a', payload: {} });
  const inFlight = poll(fake, tok, { topics: ['b'], timeout: 30 });
  await fake.whenWaiting('relay', 'b');
  // Down a moment, as a real restart is: the client sees its kept-alive connections closed.
  await fake.restart({ downMs: 100 });
  await t.throwsAsync(inFlight, undefined, 'the in-flight poll is cut');
  t.is(fake.port, port);
  t.is(fake.userId('relay'), uid);
  t.deepEqual((await call(fake, '/messages/poll/stats', { token: tok })).json, { detail: 'Invalid or expired token' });
  t.is((await call(fake, '/auth/token/refresh', { body: { refresh_token: login.json['refresh_token'] } })).status, 401);
  const fresh = await token(fake);
  t.is((await call(fake, '/api/v1/topics/a/messages', { token: fresh })).status, 404);
  t.deepEqual(fake.messages('relay', 'a'), []);
  t.is(fake.waiting(), 0);

  const keyed = await fakeFor(t, { jwtSecret: 'fixed-secret-for-tests' });
  const kept = await token(keyed);
  await keyed.restart({ downMs: 100 });
  t.is((await call(keyed, '/messages/poll/stats', { token: kept })).status, 200);
});

test('register: admin only, password of 8 or more, registered users are lost on restart', async (t) => {
  const fake = await fakeFor(t, { admin: { username: 'admin', password: 'admin-password' } });
  const admin = await token(fake, 'admin', 'admin-password');
  const user = await token(fake);
  const body = { username: 'galaxy', password: 'galaxy-pass', permissions: ['read', 'write'] };
  t.is((await call(fake, '/auth/register', { token: user, body })).status, 403);
  t.is((await call(fake, '/auth/register', { token: admin, body: { ...body, password: 'short' } })).status, 422);
  const created = await call(fake, '/auth/register', { token: admin, body });
  t.is(created.status, 201);
  t.like(created.json, { username: 'galaxy', is_active: true, permissions: ['read', 'write'] });
  t.is((await call(fake, '/auth/register', { token: admin, body })).status, 400);
  t.is((await loginCall(fake, 'galaxy', 'galaxy-pass')).status, 200);
  await fake.restart({ downMs: 100 });
  t.is((await loginCall(fake, 'galaxy', 'galaxy-pass')).status, 401);
});

test('fault injection: statuses for the next N requests of a route, a reset, a delay; the request log keeps bearer and keys', async (t) => {
  const fake = await fakeFor(t);
  const tok = await token(fake);
  fake.inject('publish', { status: 503, times: 2 });
  fake.inject('publish', { reset: true });
  fake.inject('login', { status: 429, body: { error: 'Rate limit exceeded: 5 per 1 minute' } });
  fake.inject('poll', { delayMs: 20 });
  const send = (): Promise<Answer> => publish(fake, tok, { topic: 'a', payload: {} }, { 'idempotency-key': 'k'.repeat(32) });
  t.is((await send()).status, 503);
  t.is((await send()).status, 503);
  await t.throwsAsync(send());
  t.is((await send()).status, 201);
  t.is((await loginCall(fake)).status, 429);
  t.is((await loginCall(fake)).status, 200);
  const delayed = await poll(fake, tok, { topics: ['a'], timeout: 30, since: { a: 'msg_000000000000' } });
  t.is(messagesOf(delayed).length, 1);

  const publishes = fake.requests.filter((r) => r.route === 'publish');
  t.deepEqual(publishes.map((r) => r.status), [503, 503, 0, 201]);
  t.true(publishes.every((r) => r.bearer === tok && r.idempotencyKey === 'k'.repeat(32)));
  t.is(publishes[3]!.username, 'relay');
  t.like(publishes[3]!.body, { topic: 'a' });
  t.like(fake.requests.find((r) => r.route === 'poll')!.body, { topics: ['a'], timeout: 30 });
});

test('permissions: a read-only user cannot publish (403); a user without read cannot poll', async (t) => {
  const fake = await fakeFor(t, { users: [{ username: 'ro', password: 'ro-password', permissions: ['read'] }, { username: 'wo', password: 'wo-password', permissions: ['write'] }] });
  t.is((await publish(fake, await token(fake, 'ro', 'ro-password'), { topic: 'a', payload: {} })).status, 403);
  t.is((await poll(fake, await token(fake, 'wo', 'wo-password'), { topics: ['a'], timeout: 1 })).status, 403);
});

test('forged bearers are refused and leave no trace: another key, alg none, claims edited to another user', async (t) => {
  const fake = await fakeFor(t, TWO_USERS);
  const real = await token(fake);
  const [header, claims, signature] = real.split('.') as [string, string, string];
  const decoded = JSON.parse(Buffer.from(claims, 'base64url').toString()) as Record<string, unknown>;
  const edited = Buffer.from(JSON.stringify({ ...decoded, sub: fake.userId('other'), username: 'other' })).toString('base64url');
  const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
  const other = await startRelayFake(TWO_USERS);
  t.teardown(() => other.close());
  const foreign = await token(other);
  const last = signature.at(-1)!;
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  // 43 characters carry 258 bits: the last one's low 2 bits are ignored by a lenient decoder.
  const twin = alphabet[alphabet.indexOf(last) ^ 1]!;
  const sameBytes = `${header}.${claims}.${signature.slice(0, -1)}${twin}`;
  t.deepEqual(Buffer.from(sameBytes.split('.')[2]!, 'base64url'), Buffer.from(signature, 'base64url'));
  for (const forged of [`${header}.${edited}.${signature}`, `${none}.${claims}.`, `${none}.${claims}`, foreign, `${real}x`, sameBytes]) {
    const answer = await publish(fake, forged, { topic: 'job_setup', payload: { evil: true } });
    t.deepEqual([answer.status, answer.json], [401, { detail: 'Invalid or expired token' }], forged);
  }
  t.deepEqual(fake.messages('relay', 'job_setup'), []);
  t.deepEqual(fake.messages('other', 'job_setup'), []);
  t.deepEqual(fake.published, []);
  t.true(fake.requests.filter((r) => r.route === 'publish').every((r) => r.username === null && r.status === 401));
});

test('a chunked body past maxBodyBytes is 413 too (no Content-Length to judge), and nothing is stored', async (t) => {
  const fake = await fakeFor(t, { maxBodyBytes: 4096 });
  const tok = await token(fake);
  const { request } = await import('node:http');
  const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(`${fake.url}/api/v1/messages`, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.write(`{"topic":"a","payload":{"blob":"`);
    for (let i = 0; i < 8; i++) req.write('x'.repeat(1024));
    req.end('"}}');
  });
  t.is(answer.status, 413);
  t.is((JSON.parse(answer.body) as Record<string, unknown>)['error'], 'PAYLOAD_TOO_LARGE');
  t.deepEqual(fake.messages('relay', 'a'), []);
  t.is((await publish(fake, tok, { topic: 'a', payload: { small: true } })).status, 201, 'the fake still serves');
});

test('whenMessage resolves with a retained match at once, or with the first matching publish', async (t) => {
  const fake = await fakeFor(t);
  fake.publish('relay', 'job_status_update', { job_id: '1', status: 'running' });
  t.is((await fake.whenMessage('relay', 'job_status_update')).payload['status'], 'running');
  const complete = fake.whenMessage('relay', 'job_status_update', (p) => p['status'] === 'complete');
  const tok = await token(fake);
  await publish(fake, tok, { topic: 'job_status_update', payload: { job_id: '1', status: 'queued' } });
  const id = (await publish(fake, tok, { topic: 'job_status_update', payload: { job_id: '1', status: 'complete' } })).json['message_id'] as string;
  t.is((await complete).message_id, id);
});
