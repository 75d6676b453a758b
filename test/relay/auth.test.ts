/**
 * Relay auth through a credentials file: single-use rotating refresh tokens, the file rewritten
 * (0600) after every rotation, renewal before expiry, and a replayed token (which revokes the
 * chain): a clear error, no loop of requests, recovery once the file holds a fresh token.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { request } from '../helpers/client.js';
import type { RelayFake } from '../helpers/relay-fake.js';
import { makeRoot, startTestServer } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';
import { Galaxy, PASSWORD, relayConfig, relayFake, relayServer, settle, USER, within } from './helpers.js';

interface Login {
  access_token: string;
  refresh_token: string;
}

async function login(fake: RelayFake): Promise<Login> {
  const res = await fetch(`${fake.url}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ username: USER, password: PASSWORD, grant_type: 'password' }).toString(),
  });
  if (res.status !== 200) throw new Error(`login: ${res.status}`);
  return (await res.json()) as Login;
}

async function refresh(fake: RelayFake, token: string): Promise<number> {
  const res = await fetch(`${fake.url}/auth/token/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: token }) });
  await res.arrayBuffer();
  return res.status;
}

/** A credentials file holding a fresh refresh token, as an admin writes it. */
async function credentialsFile(t: ExecutionContext, fake: RelayFake): Promise<{ file: string; token: string }> {
  const dir = await makeRoot();
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'relay-credentials.json');
  const { refresh_token: token } = await login(fake);
  await fs.writeFile(file, JSON.stringify({ relay_url: fake.url, refresh_token: token, issued_at: new Date().toISOString() }), { mode: 0o600 });
  return { file, token };
}

const refreshes = (fake: RelayFake): number => fake.requests.filter((r) => r.route === 'refresh').length;

test.serial('credentials file: the rotated token is written (0600) before use; short tokens are renewed at half their lifetime, never replayed', async (t) => {
  const fake = await relayFake(t, { accessTokenSeconds: 4 });
  const { file, token } = await credentialsFile(t, fake);
  const server = await relayServer(t, fake, { username: undefined, password: undefined, credentialsFile: file, longPollTimeout: 1 });
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  const written = JSON.parse(await fs.readFile(file, 'utf8')) as { relay_url: string; refresh_token: string; issued_at: string };
  t.not(written.refresh_token, token);
  t.is(written.relay_url, fake.url);
  t.is((await fs.stat(file)).mode & 0o777, 0o600);
  galaxy.setup('4001', 'true');
  t.is((await within('complete', galaxy.whenTerminal('4001')))['status'], 'complete');
  // Tokens of 4 s: renewed every ~2 s, each with the latest refresh token (a replay would be 401).
  await waitUntil('two renewals', async () => refreshes(fake) >= 3, 20_000);
  const calls = fake.requests.filter((r) => r.route === 'refresh');
  t.true(calls.every((r) => r.status === 200), JSON.stringify(calls.map((r) => r.status)));
  t.false(fake.requests.some((r) => r.route !== 'refresh' && r.status === 401), 'no request went out with an expired token');
  t.is(fake.requests.filter((r) => r.route === 'login').length, 1, 'only the test logged in');
  const h = ((await request(server.url, 'GET', '/healthz')).json() as { relay: { auth: string; state: string } }).relay;
  t.is(h.auth, 'credentials_file');
  t.is(h.state, 'connected');
  // The tokens never reach the log.
  const logged = server.logLines.join('\n');
  const current = (JSON.parse(await fs.readFile(file, 'utf8')) as { refresh_token: string }).refresh_token;
  t.false(logged.includes(token) || logged.includes(current) || logged.includes(current.split('.')[1] ?? '#'));
});

test.serial('a replayed refresh token revokes the chain: a clear error, one refresh and no loop; a fresh token in the file is picked up', async (t) => {
  const fake = await relayFake(t);
  const { file, token } = await credentialsFile(t, fake);
  const server = await relayServer(t, fake, { username: undefined, password: undefined, credentialsFile: file, longPollTimeout: 1 });
  const galaxy = new Galaxy(fake);
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  // Someone replays the token magnetar already rotated: the relay revokes the whole chain.
  t.is(await refresh(fake, token), 401);
  const before = refreshes(fake);
  // Magnetar's access token expires (at the relay): its next poll is 401, its refresh refused.
  fake.advanceClock(700);
  await waitUntil('the refused refresh', async () => server.logLines.some((l) => l.includes('refused the refresh token')), 20_000);
  await settle(4000);
  t.is(refreshes(fake) - before, 1, 'one refresh, then no loop');
  const polls = fake.requests.filter((r) => r.route === 'poll').length;
  await settle(3000);
  t.is(fake.requests.filter((r) => r.route === 'poll').length, polls, 'no polls without a token');
  const h = ((await request(server.url, 'GET', '/healthz')).json() as { relay: { state: string; authError?: string } }).relay;
  t.is(h.state, 'disconnected');
  t.regex(h.authError ?? '', /refresh token .* (replayed|revoked)/);
  t.is(server.logLines.filter((l) => l.includes('refused magnetar’s credentials')).length, 1, 'logged once');
  // The admin writes a fresh token: magnetar picks it up and carries on.
  const fresh = await login(fake);
  await fs.writeFile(file, JSON.stringify({ relay_url: fake.url, refresh_token: fresh.refresh_token, issued_at: new Date().toISOString() }), { mode: 0o600 });
  galaxy.setup('4002', 'true');
  t.is((await within('complete after the fix', galaxy.whenTerminal('4002'), 90_000))['status'], 'complete');
});

test.serial('a refresh token already spent at startup: the server refuses to start, after one refresh', async (t) => {
  const fake = await relayFake(t);
  const { file, token } = await credentialsFile(t, fake);
  t.is(await refresh(fake, token), 200);
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  const error = await t.throwsAsync(startTestServer({ root, app: { relay: relayConfig(fake, { username: undefined, password: undefined, credentialsFile: file }) } }));
  t.regex(error?.message ?? '', /refused the refresh token of message_queue_credentials_file/);
  t.false((error?.message ?? '').includes(token));
  t.is(refreshes(fake), 2);
});

test.serial('wrong password at startup: the server refuses to start with the reason', async (t) => {
  const fake = await relayFake(t);
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  const error = await t.throwsAsync(startTestServer({ root, app: { relay: relayConfig(fake, { password: 'not-the-password' }) } }));
  t.regex(error?.message ?? '', /login .* refused .*401/);
  t.false((error?.message ?? '').includes('not-the-password'));
});

test.serial('a credentials file readable by others is used but warned about (0600 expected); its token is not logged', async (t) => {
  const fake = await relayFake(t);
  const { file, token } = await credentialsFile(t, fake);
  await fs.chmod(file, 0o644);
  const server = await relayServer(t, fake, { username: undefined, password: undefined, credentialsFile: file });
  await within('the first poll', fake.whenWaiting(USER, 'job_setup'));
  t.true(server.logLines.some((l) => l.includes('readable by others')));
  // Rewritten at the rotation: 0600 from then on.
  t.is((await fs.stat(file)).mode & 0o777, 0o600);
  t.false(server.logLines.join('\n').includes(token));
});

test.serial('one refresher per credentials file: a second server on the same file refuses to start, sending nothing; a lock left by a dead process is taken over', async (t) => {
  const fake = await relayFake(t);
  const { file } = await credentialsFile(t, fake);
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  await fs.writeFile(`${file}.lock`, `${dead.stdout}\n`);
  const first = await relayServer(t, fake, { username: undefined, password: undefined, credentialsFile: file });
  t.true(first.logLines.some((l) => l.includes('taking over the lock')));
  t.is((await fs.readFile(`${file}.lock`, 'utf8')).trim(), String(process.pid));
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  const error = await t.throwsAsync(startTestServer({ root, app: { relay: relayConfig(fake, { username: undefined, password: undefined, credentialsFile: file }) } }));
  t.regex(error?.message ?? '', /is in use by process \d+/);
  t.is(refreshes(fake), 1, 'only the first server refreshed');
  // The first one is unaffected, and its lock goes when it stops.
  t.true(await fs.access(`${file}.lock`).then(() => true, () => false));
  await first.stop();
  t.false(await fs.access(`${file}.lock`).then(() => true, () => false));
});
