import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { request, qs, type Reply } from '../helpers/client.js';
import { makeRoot, startTestServer, type TestServer } from '../helpers/server.js';
import { defaultConfig } from '../../src/config/index.js';

const TOKEN = 'the-right-token';

async function tokenServer(t: ExecutionContext, limit: number): Promise<TestServer> {
  const server = await startTestServer({ app: { privateToken: TOKEN, rateLimitFailedAuth: limit } });
  t.teardown(() => server.stop());
  return server;
}

const healthz = (server: TestServer, token: string, headers: Record<string, string> = {}): Promise<Reply> =>
  request(server.url, 'GET', `/healthz?${qs({ private_token: token })}`, { headers });

function assertLimited(t: ExecutionContext, reply: Reply, what: string): void {
  t.is(reply.status, 429, `${what}: ${reply.text}`);
  t.deepEqual(Object.keys(reply.json()).sort(), ['error', 'message']);
  t.is(reply.json().error, 'MAG_ERR_RATE_LIMITED');
  t.regex(reply.headers['content-type'] ?? '', /^application\/json/);
  t.regex(String(reply.headers['retry-after']), /^\d+$/);
}

// Serial: it moves the clock (Date.now) forward, which concurrent tests in this file must not see.
test.serial('a 401 beyond the limit blocks the address for requests without the right token until the minute is over; the right token is never refused', async (t) => {
  const server = await tokenServer(t, 3);
  for (let i = 0; i < 3; i++) {
    t.is((await healthz(server, `wrong-${i}`)).status, 401);
    t.is((await healthz(server, TOKEN)).status, 200);
  }
  assertLimited(t, await healthz(server, 'wrong-again'), 'a fourth wrong token');
  assertLimited(t, await request(server.url, 'GET', '/healthz'), 'no token at all');
  assertLimited(t, await request(server.url, 'GET', `/jobs/j1/status?${qs({ job_id: 'j1', private_token: 'wrong' })}`), 'status with a wrong token');
  // A shared address (a proxy, a NAT) must not let failed guesses lock the right token out.
  t.is((await healthz(server, TOKEN)).status, 200, 'the right token from a blocked address');
  t.is((await request(server.url, 'GET', `/jobs/j1/status?${qs({ job_id: 'j1', private_token: TOKEN })}`)).status, 200, 'status (fast path) with the right token');
  t.is((await request(server.url, 'POST', `/jobs?${qs({ job_id: 'j2', private_token: TOKEN })}`)).status, 200, 'setup with the right token');
  t.is((await request(server.url, 'GET', '/healthz', { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200, 'bearer token');
  // X-Forwarded-For is not trusted (no trusted_proxies): naming another address does not escape the block.
  assertLimited(t, await healthz(server, 'wrong', { 'x-forwarded-for': '203.0.113.7' }), 'X-Forwarded-For');
  assertLimited(t, await healthz(server, 'wrong', { forwarded: 'for=203.0.113.8' }), 'Forwarded');
  t.is(server.logLines.filter((l) => l.includes('too many failed authentications')).length, 1, 'the block is logged once');

  // Refusals do not extend the block: once the minute is over a wrong token is a 401 again.
  const realNow = Date.now;
  Date.now = () => realNow() + 61_000;
  t.teardown(() => {
    Date.now = realNow;
  });
  t.is((await healthz(server, 'wrong')).status, 401, 'a fresh window counts from zero');
  t.is((await healthz(server, TOKEN)).status, 200);
  Date.now = realNow;
});

test('requests with the right token are never counted nor refused, even many at once', async (t) => {
  const server = await tokenServer(t, 2);
  const replies = await Promise.all(Array.from({ length: 30 }, () => healthz(server, TOKEN)));
  t.deepEqual([...new Set(replies.map((r) => r.status))], [200]);
  t.is((await healthz(server, 'wrong')).status, 401);
  t.is((await healthz(server, 'wrong')).status, 401);
  t.is((await healthz(server, TOKEN)).status, 200);
  t.is((await healthz(server, 'wrong')).status, 429);
  const mixed = await Promise.all(Array.from({ length: 30 }, (_, i) => healthz(server, i % 2 === 0 ? TOKEN : 'wrong')));
  t.deepEqual(mixed.map((r) => r.status), Array.from({ length: 30 }, (_, i) => (i % 2 === 0 ? 200 : 429)));
});

test('trusted_proxies: behind a listed proxy each X-Forwarded-For client has its own count; spoofed entries to its left are ignored', async (t) => {
  const server = await startTestServer({ app: { privateToken: TOKEN, rateLimitFailedAuth: 2, trustedProxies: ['127.0.0.0/8', '::1'] } });
  t.teardown(() => server.stop());
  const via = (client: string): Record<string, string> => ({ 'x-forwarded-for': client });
  t.is((await healthz(server, 'wrong', via('203.0.113.7'))).status, 401);
  t.is((await healthz(server, 'wrong', via('203.0.113.7'))).status, 401);
  assertLimited(t, await healthz(server, 'wrong', via('203.0.113.7')), 'the guessing client');
  // A client cannot escape by writing another address in front of the one the proxy appends.
  assertLimited(t, await healthz(server, 'wrong', via('198.51.100.1, 203.0.113.7')), 'spoofed left-most entry');
  // A chain of trusted proxies is walked through to the client.
  assertLimited(t, await healthz(server, 'wrong', via('203.0.113.7, 127.0.0.5')), 'through a second trusted proxy');
  // Another client behind the same proxy is not affected, and neither is the right token.
  t.is((await healthz(server, 'wrong', via('203.0.113.9'))).status, 401, 'another client');
  t.is((await healthz(server, TOKEN, via('203.0.113.7'))).status, 200, 'the right token');
  // A request from the proxy itself without the header is keyed by the proxy's address.
  t.is((await healthz(server, 'wrong')).status, 401);
});

test('without trusted_proxies, X-Forwarded-For is never believed', async (t) => {
  const server = await tokenServer(t, 1);
  t.is((await healthz(server, 'wrong', { 'x-forwarded-for': '203.0.113.1' })).status, 401);
  assertLimited(t, await healthz(server, 'wrong', { 'x-forwarded-for': '203.0.113.2' }), 'a different forwarded address');
});

test('only 401 answers count: a wrong token on an unknown route (404) does not', async (t) => {
  const server = await tokenServer(t, 1);
  for (let i = 0; i < 5; i++) t.is((await request(server.url, 'GET', `/no/such/route?${qs({ private_token: 'wrong' })}`)).status, 404);
  t.is((await healthz(server, TOKEN)).status, 200);
  t.is((await healthz(server, 'wrong')).status, 401);
  t.is((await healthz(server, TOKEN)).status, 200);
  t.is((await healthz(server, 'wrong')).status, 429);
  t.is((await healthz(server, TOKEN)).status, 200);
});

test('rate_limit_failed_auth = 0 disables the limit', async (t) => {
  const server = await tokenServer(t, 0);
  for (let i = 0; i < 30; i++) t.is((await healthz(server, 'wrong')).status, 401);
  t.is((await healthz(server, TOKEN)).status, 200);
});

test('POST /jobs is limited per address in public mode (plain and per-manager routes share the count)', async (t) => {
  const root = await makeRoot();
  const toolbox = path.join(root, 'toolbox.xml');
  await fs.writeFile(toolbox, '<toolbox tool_path="."></toolbox>\n');
  const server = await startTestServer({
    root,
    app: { toolConfigFiles: [toolbox], allowUnsafeEnv: false, rateLimitSetup: 3 },
  });
  t.teardown(() => server.stop());
  const setup = (prefix: string, id: string): Promise<Reply> => request(server.url, 'POST', `${prefix}/jobs?${qs({ job_id: id, tool_id: 'no_such_tool' })}`);
  for (const [prefix, id] of [['', 'a'], ['/managers/_default_', 'b'], ['', 'c']] as const) {
    t.not((await setup(prefix, id)).status, 429, `setup ${id}`);
  }
  assertLimited(t, await setup('', 'd'), 'a fourth setup');
  assertLimited(t, await setup('/managers/_default_', 'e'), 'a fifth setup through the manager route');
  // Other routes are not affected.
  t.is((await request(server.url, 'GET', '/healthz')).status, 200);
});

test('POST /jobs is not limited outside public mode', async (t) => {
  const server = await startTestServer({ app: { rateLimitSetup: 2 } });
  t.teardown(() => server.stop());
  for (let i = 0; i < 6; i++) {
    t.is((await request(server.url, 'POST', `/jobs?${qs({ job_id: `j${i}` })}`)).status, 200);
  }
});

test('the default setup limit lets a busy Galaxy through: 1,000 setups a minute from one address with the token, then 429 with Retry-After', async (t) => {
  const root = await makeRoot();
  const toolbox = path.join(root, 'toolbox.xml');
  await fs.writeFile(toolbox, '<toolbox tool_path="."></toolbox>\n');
  // The test helper turns the limits off; this test puts the shipped default back.
  const server = await startTestServer({ root, app: { toolConfigFiles: [toolbox], allowUnsafeEnv: false, privateToken: TOKEN, rateLimitSetup: (await defaultConfig(root)).app.rateLimitSetup } });
  t.teardown(() => server.stop());
  t.is(server.config.app.rateLimitSetup, 1000, 'the default');
  const setup = (i: number): Promise<Reply> => request(server.url, 'POST', `/jobs?${qs({ job_id: `g${i}`, tool_id: 'no_such_tool', private_token: TOKEN })}`);
  const statuses = new Map<number, number>();
  for (let batch = 0; batch < 1000; batch += 50) {
    const replies = await Promise.all(Array.from({ length: 50 }, async (_, i) => setup(batch + i)));
    for (const reply of replies) statuses.set(reply.status, (statuses.get(reply.status) ?? 0) + 1);
  }
  t.deepEqual([...statuses], [[403, 1000]], 'every setup reached the authorizer (unknown tool: 403), none was rate limited');
  assertLimited(t, await setup(1000), 'the 1,001st setup in the minute');
});
