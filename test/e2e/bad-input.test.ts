/**
 * Hostile and malformed requests on every route (PROTOCOL §1.4, §4.3–4.6, §14 items 1–7, 22, 29,
 * 31, 36): each must get the right 4xx with a JSON `{error, message}` body, must not create or
 * change anything outside the job directory (the whole test root — staging, persistence and a
 * canary directory next to staging — is snapshotted before and after), and must leave the server
 * healthy.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { qs, request, waitForJob, type Reply } from '../helpers/client.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import type { AppSection } from '../../src/config/types.js';
import { createLogger } from '../../src/log.js';
import { errorAnswer } from '../../src/web/errors.js';

const CANARY_SECRET = 'CANARY-SECRET-DO-NOT-LEAK\n';

interface Fixture {
  readonly server: TestServer;
  readonly base: string;
  /** `<root>/canary`: outside staging; holds `secret.txt` and an empty `dir/`. */
  readonly canary: string;
  readonly secret: string;
  readonly canaryDir: string;
  /** Headers that authenticate the `/healthz` check of a token server. */
  readonly healthHeaders: Record<string, string>;
}

async function fixture(t: ExecutionContext, app: Partial<AppSection> = {}): Promise<Fixture> {
  const server = await startTestServer({ app });
  t.teardown(() => server.stop());
  const canary = path.join(server.root, 'canary');
  const canaryDir = path.join(canary, 'dir');
  await fs.mkdir(canaryDir, { recursive: true });
  const secret = path.join(canary, 'secret.txt');
  await fs.writeFile(secret, CANARY_SECRET);
  const healthHeaders: Record<string, string> = app.privateToken === undefined ? {} : { Authorization: `Bearer ${app.privateToken}` };
  return { server, base: server.url, canary, secret, canaryDir, healthHeaders };
}

const jobDir = (fx: Fixture, id: string): string => path.join(fx.server.staging, id);
const jobRecord = (fx: Fixture, id: string): string => path.join(fx.server.root, 'persisted', '_default_-jobs', `${id}.json`);

// ------------------------------------------------------------------------------ tree snapshots

type Snapshot = Map<string, string>;

/** Every entry below `root` (never following symlinks): kind, and size + content hash for files. */
async function snapshot(root: string): Promise<Snapshot> {
  const out: Snapshot = new Map();
  async function walk(abs: string): Promise<void> {
    let entries: string[];
    try {
      entries = await fs.readdir(abs);
    } catch {
      return;
    }
    for (const name of entries) {
      const full = path.join(abs, name);
      let st;
      try {
        st = await fs.lstat(full);
      } catch {
        continue;
      }
      if (st.isSymbolicLink()) out.set(full, `link:${await fs.readlink(full)}`);
      else if (st.isDirectory()) {
        out.set(full, 'dir');
        await walk(full);
      } else if (st.isFile()) {
        const hash = st.size <= 1 << 20 ? createHash('sha256').update(await fs.readFile(full)).digest('hex') : `mtime:${st.mtimeMs}`;
        out.set(full, `file:${st.size}:${hash}`);
      } else out.set(full, 'other');
    }
  }
  await walk(root);
  return out;
}

function changes(before: Snapshot, after: Snapshot): string[] {
  const out: string[] = [];
  for (const [p, v] of after) {
    const old = before.get(p);
    if (old === undefined) out.push(`created ${p} (${v})`);
    else if (old !== v) out.push(`changed ${p} (${old} -> ${v})`);
  }
  for (const p of before.keys()) if (!after.has(p)) out.push(`removed ${p}`);
  return out;
}

const isUnder = (p: string, dir: string): boolean => p === dir || p.startsWith(dir + '/');

// ------------------------------------------------------------------------------ requests

interface Send {
  readonly body?: Buffer | string;
  readonly headers?: Record<string, string>;
  /** Send the body as these chunks (Transfer-Encoding: chunked). */
  readonly chunks?: readonly Buffer[];
}

/**
 * A raw request that tolerates the server answering (and closing) before the whole body was sent,
 * as it may for a refused upload.
 */
function send(base: string, method: string, target: string, options: Send = {}): Promise<Reply> {
  if (options.chunks === undefined) return request(base, method, target, options.body === undefined ? { headers: options.headers ?? {} } : { body: options.body, headers: options.headers ?? {} });
  const chunks = options.chunks;
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = http.request(
      { host: url.hostname, port: url.port, method, path: target, headers: { ...options.headers, 'Transfer-Encoding': 'chunked' }, agent: false },
      (res) => {
        answered = true;
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          const body = Buffer.concat(parts);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8'), json: () => JSON.parse(body.toString('utf8')) });
        });
        res.on('error', reject);
      },
    );
    req.on('error', (error) => {
      if (!answered) reject(error);
    });
    void (async () => {
      for (const chunk of chunks) {
        if (answered || req.destroyed) return;
        if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })();
  });
}

interface ProbeOptions extends Send {
  /** Expected status (or any of these). */
  readonly status: number | readonly number[];
  /** Absolute paths below which the request may create or change files. */
  readonly allow?: readonly string[];
  readonly label?: string;
}

/**
 * Send one request and check: the status; for errors the JSON `{error, message}` body; that
 * nothing changed in the whole test root outside `allow`; no `.part` file anywhere; `/healthz`.
 */
async function probe(t: ExecutionContext, fx: Fixture, method: string, target: string, options: ProbeOptions): Promise<Reply> {
  const label = options.label ?? `${method} ${target.length > 160 ? `${target.slice(0, 160)}…` : target}`;
  const before = await snapshot(fx.server.root);
  const reply = await send(fx.base, method, target, options);
  const expected = typeof options.status === 'number' ? [options.status] : options.status;
  t.true(expected.includes(reply.status), `${label}: status ${reply.status}, expected ${expected.join('/')}; body ${reply.text.slice(0, 300)}`);
  if (reply.status >= 400) expectErrorBody(t, reply, label);
  const after = await snapshot(fx.server.root);
  const allow = options.allow ?? [];
  const outside = changes(before, after).filter((c) => !allow.some((dir) => isUnder(c.split(' ')[1]!, dir)));
  t.deepEqual(outside, [], `${label}: changed the file tree`);
  const parts = [...after.keys()].filter((p) => p.endsWith('.part'));
  t.deepEqual(parts, [], `${label}: left partial upload files`);
  const health = await request(fx.base, 'GET', '/healthz', { headers: fx.healthHeaders });
  t.is(health.status, 200, `${label}: server unhealthy afterwards`);
  return reply;
}

function expectErrorBody(t: ExecutionContext, reply: Reply, label: string): void {
  let doc: unknown;
  try {
    doc = JSON.parse(reply.text);
  } catch {
    t.fail(`${label}: error body is not JSON: ${reply.text.slice(0, 200)}`);
    return;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    t.fail(`${label}: error body is not an object`);
    return;
  }
  const record = doc as Record<string, unknown>;
  t.deepEqual(Object.keys(record).sort(), ['error', 'message'], `${label}: error body keys`);
  t.is(typeof record['error'], 'string', `${label}: error code`);
  t.is(typeof record['message'], 'string', `${label}: error message`);
  t.true(String(reply.headers['content-type']).startsWith('application/json'), `${label}: content type ${String(reply.headers['content-type'])}`);
}

async function setupJob(t: ExecutionContext, fx: Fixture, id: string): Promise<void> {
  const r = await request(fx.base, 'POST', `/jobs?${qs({ job_id: id, tool_id: 'cat1', tool_version: '1.0' })}`);
  t.is(r.status, 200, `setup ${id}: ${r.text}`);
}

const upload = (id: string, name: string, type: string, extra: Record<string, string> = {}): string =>
  `/jobs/${id}/files?${qs({ job_id: id, name, type, ...extra })}`;

async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

async function submitAndWait(t: ExecutionContext, fx: Fixture, id: string, commandLine = 'echo ran'): Promise<Record<string, unknown>> {
  const r = await request(fx.base, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: commandLine })}`);
  t.is(r.status, 200, `submit ${id}: ${r.text}`);
  return (await waitForJob(fx.base, id)) as Record<string, unknown>;
}

// ------------------------------------------------------------------------------ tests

test('setup without a job_id (or with an empty one) is a 400', async (t) => {
  const fx = await fixture(t);
  await probe(t, fx, 'POST', '/jobs', { status: 400 });
  await probe(t, fx, 'POST', '/jobs?tool_id=cat1&tool_version=1.0', { status: 400 });
  await probe(t, fx, 'POST', '/jobs?job_id=', { status: 400 });
  await probe(t, fx, 'POST', '/managers/_default_/jobs?use_metadata=true', { status: 400 });
});

/** Bad ids: how they appear in a path segment (raw) and as a query value. */
const BAD_IDS: readonly { readonly label: string; readonly segment: string; readonly value: string }[] = [
  { label: '..', segment: '..', value: '..' },
  { label: '.', segment: '.', value: '.' },
  { label: '%2E%2E', segment: '%2E%2E', value: '..' },
  { label: '%2e', segment: '%2e', value: '.' },
  { label: 'a/b', segment: 'a%2Fb', value: 'a/b' },
  { label: '-x', segment: '-x', value: '-x' },
  { label: '200 chars', segment: 'a'.repeat(200), value: 'a'.repeat(200) },
  { label: '1;id', segment: '1;id', value: '1;id' },
  { label: 'NUL', segment: '1%00', value: '1\0' },
  { label: 'space', segment: '1%20x', value: '1 x' },
  { label: '$(id)', segment: '%24(id)', value: '$(id)' },
  { label: '.hidden', segment: '.hidden', value: '.hidden' },
  { label: 'bad percent-encoding', segment: '%ZZ', value: '%ZZ' },
  { label: 'truncated UTF-8', segment: '%E0%A4%A', value: '\u00e0' },
  { label: 'non-ASCII', segment: '%C3%A9', value: '\u00e9' },
];

test('invalid job ids are a 400 on every route and touch nothing', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'keep');
  for (const id of BAD_IDS) {
    const s = id.segment;
    await probe(t, fx, 'POST', `/jobs?${qs({ job_id: id.value })}`, { status: 400, label: `setup job_id=${id.label}` });
    await probe(t, fx, 'POST', `/jobs/${s}/files?${qs({ name: 'x', type: 'input' })}`, { status: 400, body: 'x', label: `upload to ${id.label}` });
    await probe(t, fx, 'POST', `/jobs/${s}/files?${qs({ name: 'x', type: 'jobdir' })}`, { status: 400, body: 'x', label: `jobdir upload to ${id.label}` });
    await probe(t, fx, 'GET', `/jobs/${s}/files/path?${qs({ name: 'x', type: 'input' })}`, { status: 400, label: `files/path of ${id.label}` });
    await probe(t, fx, 'GET', `/jobs/${s}/files?${qs({ name: 'x', type: 'output' })}`, { status: 400, label: `download from ${id.label}` });
    await probe(t, fx, 'POST', `/jobs/${s}/submit?${qs({ command_line: 'touch /tmp/magnetar-should-not-exist' })}`, { status: 400, label: `submit ${id.label}` });
    await probe(t, fx, 'POST', `/jobs/${s}/submit?${qs({ command_line: 'true', setup_params: JSON.stringify({ job_id: id.value }) })}`, {
      status: 400,
      label: `submit with setup_params to ${id.label}`,
    });
    await probe(t, fx, 'GET', `/jobs/${s}/status`, { status: 400, label: `status of ${id.label}` });
    await probe(t, fx, 'PUT', `/jobs/${s}/cancel`, { status: 400, label: `cancel ${id.label}` });
    await probe(t, fx, 'DELETE', `/jobs/${s}`, { status: 400, label: `clean ${id.label}` });
  }
  t.true(await exists(fx.server.staging), 'staging directory still exists');
  t.true(await exists(path.join(jobDir(fx, 'keep'), 'working')), 'an unrelated job is still there');
});

test('DELETE /jobs/%2E%2E and /jobs/. leave the staging directory, its parent and other jobs alone', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'keep');
  for (const target of ['/jobs/%2E%2E', '/jobs/..', '/jobs/%2e%2e?job_id=..', '/jobs/.', '/jobs/%2E', '/managers/_default_/jobs/%2E%2E']) {
    await probe(t, fx, 'DELETE', target, { status: 400 });
    t.true(await exists(fx.server.staging), `${target}: staging directory still exists`);
    t.true(await exists(fx.server.root), `${target}: parent of staging still exists`);
    t.true(await exists(fx.secret), `${target}: canary still exists`);
    t.true(await exists(jobDir(fx, 'keep')), `${target}: other job still exists`);
  }
});

const BAD_NAMES: readonly string[] = ['../x', '/etc/passwd', 'a/../../x', 'a\\b', '\0', 'x\0y', '', '.', '..', './x', 'a//b', 'a/', '../../../../canary/secret.txt'];
const UPLOAD_TYPES = ['input', 'unstructured', 'tool', 'metadata', 'config', 'workdir', 'jobdir'];

test('traversal and malformed upload names are refused for every type', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'n1');
  for (const type of UPLOAD_TYPES) {
    for (const name of BAD_NAMES) {
      await probe(t, fx, 'POST', upload('n1', name, type), { status: [400, 403], body: 'PWNED', label: `upload ${type} ${JSON.stringify(name)}` });
    }
  }
  for (const type of ['input', 'tool', 'config', 'output', 'output_workdir', 'output_metadata']) {
    for (const name of BAD_NAMES) {
      await probe(t, fx, 'GET', `/jobs/n1/files/path?${qs({ name, type })}`, { status: [400, 403], label: `files/path ${type} ${JSON.stringify(name)}` });
    }
  }
  for (const type of ['output', 'output_workdir', 'output_metadata', 'output_jobdir', 'input']) {
    for (const name of BAD_NAMES) {
      const r = await probe(t, fx, 'GET', `/jobs/n1/files?${qs({ name, type })}`, { status: [400, 403, 404], label: `download ${type} ${JSON.stringify(name)}` });
      t.false(r.text.includes('CANARY') || r.text.includes('root:'), `download ${type} ${JSON.stringify(name)} leaked a file`);
    }
  }
  t.is(await fs.readFile(fx.secret, 'utf8'), CANARY_SECRET);
});

test('non-nested types keep only the basename of a nested name (PROTOCOL §4.3)', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'b1');
  const dir = jobDir(fx, 'b1');
  const cases: readonly [string, string, string][] = [
    ['config', 'a/b.txt', path.join(dir, 'configs', 'b.txt')],
    ['workdir', 'sub/dir/w.txt', path.join(dir, 'working', 'w.txt')],
    ['jobdir', 'x/tool_script.sh', path.join(dir, 'tool_script.sh')],
  ];
  for (const [type, name, expected] of cases) {
    const r = await probe(t, fx, 'POST', upload('b1', name, type), { status: 200, body: `${type} body`, allow: [dir] });
    t.is(r.json<{ path: string }>().path, expected, `${type} ${name}`);
    t.is(await fs.readFile(expected, 'utf8'), `${type} body`);
  }
  t.false(await exists(path.join(dir, 'configs', 'a')), 'no configs/a directory');
  t.false(await exists(path.join(dir, 'working', 'sub')), 'no working/sub directory');
  t.false(await exists(path.join(dir, 'x')), 'no <jobdir>/x directory');
  // Nested types keep the structure.
  const nested = await probe(t, fx, 'POST', upload('b1', 'd/e/f.txt', 'input'), { status: 200, body: 'n', allow: [dir] });
  t.is(nested.json<{ path: string }>().path, path.join(dir, 'inputs', 'd', 'e', 'f.txt'));
});

test('unknown, missing and output-only types, and a missing name, are 400', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'u1');
  await probe(t, fx, 'POST', upload('u1', 'x', 'bogus'), { status: 400, body: 'x' });
  await probe(t, fx, 'POST', upload('u1', 'x', 'INPUT'), { status: 400, body: 'x' });
  await probe(t, fx, 'POST', upload('u1', 'x', ''), { status: 400, body: 'x' });
  await probe(t, fx, 'POST', `/jobs/u1/files?${qs({ name: 'x' })}`, { status: 400, body: 'x' });
  await probe(t, fx, 'POST', `/jobs/u1/files?${qs({ type: 'input' })}`, { status: 400, body: 'x' });
  await probe(t, fx, 'POST', '/jobs/u1/files', { status: 400, body: 'x' });
  for (const type of ['output', 'output_workdir', 'output_metadata', 'output_jobdir']) {
    await probe(t, fx, 'POST', upload('u1', 'x', type), { status: 400, body: 'x', label: `upload of type ${type}` });
  }
  await probe(t, fx, 'GET', `/jobs/u1/files/path?${qs({ name: 'x', type: 'bogus' })}`, { status: 400 });
  await probe(t, fx, 'GET', `/jobs/u1/files/path?${qs({ name: 'x' })}`, { status: 400 });
  await probe(t, fx, 'GET', `/jobs/u1/files/path?${qs({ type: 'input' })}`, { status: 400 });
  await probe(t, fx, 'GET', `/jobs/u1/files?${qs({ type: 'output' })}`, { status: 400 });
});

const RESERVED = ['command.sh', 'return_code', 'tool_id', 'launch_config', 'final_status', 'pid'];

test('jobdir uploads may not replace control files, but tool_script.sh is fine', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'r1');
  const dir = jobDir(fx, 'r1');
  for (const name of [...RESERVED, 'preprocessed', 'cancelled', 'working', 'metadata']) {
    await probe(t, fx, 'POST', upload('r1', name, 'jobdir'), { status: 403, body: 'echo PWNED', label: `jobdir ${name}` });
    // A nested name with a reserved basename is the same file.
    await probe(t, fx, 'POST', upload('r1', `sub/${name}`, 'jobdir'), { status: 403, body: 'echo PWNED', label: `jobdir sub/${name}` });
  }
  for (const name of RESERVED) t.false(await exists(path.join(dir, name)), `${name} was not created`);
  const ok = await probe(t, fx, 'POST', upload('r1', 'tool_script.sh', 'jobdir'), { status: 200, body: 'echo tool\n', allow: [dir] });
  t.is(ok.json<{ path: string }>().path, path.join(dir, 'tool_script.sh'));
  t.is(await fs.readFile(path.join(dir, 'tool_script.sh'), 'utf8'), 'echo tool\n');
  // Nor can they be read back through output_jobdir once the job ran.
  const doc = await submitAndWait(t, fx, 'r1', 'sh ../tool_script.sh');
  t.is(doc['status'], 'complete');
  for (const name of ['command.sh', 'return_code', 'launch_config', 'pid']) {
    await probe(t, fx, 'GET', `/jobs/r1/files?${qs({ name, type: 'output_jobdir' })}`, { status: [403, 404], label: `output_jobdir ${name}` });
  }
});

test('uploads need a set-up job: 404 before setup (nothing created), 409 after submit', async (t) => {
  const fx = await fixture(t);
  for (const type of UPLOAD_TYPES) {
    await probe(t, fx, 'POST', upload('ghost', 'd/x', type), { status: 404, body: 'x', label: `upload ${type} to a job never set up` });
  }
  await probe(t, fx, 'GET', `/jobs/ghost/files/path?${qs({ name: 'd/x', type: 'input' })}`, { status: 404 });
  t.false(await exists(jobDir(fx, 'ghost')), 'no directory for a job never set up');

  await setupJob(t, fx, 's1');
  await submitAndWait(t, fx, 's1');
  for (const type of UPLOAD_TYPES) {
    await probe(t, fx, 'POST', upload('s1', `late-${type}`, type), { status: 409, body: 'late', label: `upload ${type} after submit` });
  }
  t.false(await exists(path.join(jobDir(fx, 's1'), 'inputs', 'late-input')));
  // files/path is a read-only question, answered in every state; once uploads are closed it
  // creates nothing (no parent directory for a nested name either).
  const answered = await probe(t, fx, 'GET', `/jobs/s1/files/path?${qs({ name: 'sub/late', type: 'input' })}`, { status: 200 });
  t.is(answered.json().path, path.join(jobDir(fx, 's1'), 'inputs', 'sub', 'late'));
  t.false(await exists(path.join(jobDir(fx, 's1'), 'inputs', 'sub')));
  const tool = await probe(t, fx, 'GET', `/jobs/s1/files/path?${qs({ name: 'x/y.py', type: 'tool' })}`, { status: 200 });
  t.is(tool.json().path, path.join(jobDir(fx, 's1'), 'tool_files', 'x', 'y.py'));

  // Also while the job is still queued or running.
  await setupJob(t, fx, 's2');
  const r = await request(fx.base, 'POST', `/jobs/s2/submit?${qs({ command_line: 'sleep 1' })}`);
  t.is(r.status, 200);
  await probe(t, fx, 'POST', upload('s2', 'late', 'input'), { status: 409, body: 'late', allow: [jobDir(fx, 's2'), jobRecord(fx, 's2')] });
  t.false(await exists(path.join(jobDir(fx, 's2'), 'inputs', 'late')));
  await waitForJob(fx.base, 's2');
});

test('a symlink planted in working/ cannot redirect a workdir (or jobdir) upload outside', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'l1');
  const dir = jobDir(fx, 'l1');
  await fs.symlink(fx.secret, path.join(dir, 'working', 'evil'));
  await fs.symlink(path.join(fx.canary, 'created-through-link'), path.join(dir, 'working', 'dangling'));
  await fs.symlink(fx.canaryDir, path.join(dir, 'working', 'dirlink'));
  await fs.symlink(fx.secret, path.join(dir, 'jobevil'));
  await probe(t, fx, 'POST', upload('l1', 'evil', 'workdir'), { status: 403, body: 'PWNED' });
  await probe(t, fx, 'POST', upload('l1', 'dangling', 'workdir'), { status: 403, body: 'PWNED' });
  await probe(t, fx, 'POST', upload('l1', 'dirlink', 'workdir'), { status: 403, body: 'PWNED' });
  await probe(t, fx, 'POST', upload('l1', 'jobevil', 'jobdir'), { status: 403, body: 'PWNED' });
  t.is(await fs.readFile(fx.secret, 'utf8'), CANARY_SECRET, 'the outside target is untouched');
  t.false(await exists(path.join(fx.canary, 'created-through-link')), 'nothing created through a dangling link');
  t.deepEqual(await fs.readdir(fx.canaryDir), [], 'nothing created in the linked directory');
  t.true((await fs.lstat(path.join(dir, 'working', 'evil'))).isSymbolicLink(), 'the planted link itself is left alone');
});

test('a nested upload whose parent directory is a planted symlink is refused', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'p1');
  const dir = jobDir(fx, 'p1');
  await fs.symlink(fx.canaryDir, path.join(dir, 'inputs', 'sub'));
  await fs.symlink(fx.canaryDir, path.join(dir, 'tool_files', 'sub'));
  await fs.symlink(fx.canaryDir, path.join(dir, 'unstructured'));
  await fs.mkdir(path.join(dir, 'metadata', 'real'));
  await fs.symlink(fx.canaryDir, path.join(dir, 'metadata', 'real', 'deeper'));
  await probe(t, fx, 'POST', upload('p1', 'sub/x', 'input'), { status: 403, body: 'PWNED' });
  await probe(t, fx, 'POST', upload('p1', 'sub/new/x', 'input'), { status: 403, body: 'PWNED' });
  await probe(t, fx, 'POST', upload('p1', 'sub/x', 'tool'), { status: 403, body: 'PWNED' });
  await probe(t, fx, 'POST', upload('p1', 'abc/x', 'unstructured'), { status: 403, body: 'PWNED' });
  await probe(t, fx, 'POST', upload('p1', 'real/deeper/x', 'metadata'), { status: 403, body: 'PWNED' });
  await probe(t, fx, 'GET', `/jobs/p1/files/path?${qs({ name: 'sub/y', type: 'input' })}`, { status: 403 });
  t.deepEqual(await fs.readdir(fx.canaryDir), [], 'nothing written into the outside directory');
});

test('a symlink planted in outputs/ (to /etc/hostname or outside staging) is never served', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'd1');
  const dir = jobDir(fx, 'd1');
  const system = (await exists('/etc/hostname')) ? '/etc/hostname' : '/etc/passwd';
  const systemBytes = await fs.readFile(system, 'utf8');
  await fs.symlink(system, path.join(dir, 'outputs', 'leak'));
  await fs.symlink(fx.secret, path.join(dir, 'outputs', 'leak2'));
  await fs.symlink(fx.canary, path.join(dir, 'outputs', 'dirlink'));
  await fs.symlink(fx.secret, path.join(dir, 'working', 'leak3'));
  await fs.symlink(fx.secret, path.join(dir, 'metadata', 'leak4'));
  await fs.symlink(system, path.join(dir, 'leak5'));
  const attempts: readonly [string, string][] = [
    ['leak', 'output'],
    ['leak2', 'output'],
    ['dirlink/secret.txt', 'output'],
    ['leak3', 'output_workdir'],
    ['leak*', 'output_workdir'],
    ['leak4', 'output_metadata'],
    ['leak5', 'output_jobdir'],
    ['leak', 'garbage-type'],
  ];
  for (const [name, type] of attempts) {
    const r = await probe(t, fx, 'GET', `/jobs/d1/files?${qs({ name, type })}`, { status: [403, 404], label: `download ${type} ${name}` });
    t.false(r.text.includes('CANARY'), `${type} ${name}: leaked the canary`);
    if (systemBytes.trim() !== '') t.false(r.text.includes(systemBytes.trim()), `${type} ${name}: leaked ${system}`);
  }
});

test('an upload over max_upload_size is a 413 and leaves no partial file', async (t) => {
  const fx = await fixture(t, { maxUploadSize: 1024 });
  await setupJob(t, fx, 'o1');
  const dir = jobDir(fx, 'o1');
  const okReply = await probe(t, fx, 'POST', upload('o1', 'exact', 'input'), { status: 200, body: Buffer.alloc(1024, 0x61), allow: [dir] });
  t.is(okReply.json<{ path: string }>().path, path.join(dir, 'inputs', 'exact'));
  await probe(t, fx, 'POST', upload('o1', 'over', 'input'), { status: 413, body: Buffer.alloc(1025, 0x62) });
  await probe(t, fx, 'POST', upload('o1', 'big', 'input'), { status: 413, body: Buffer.alloc(256 * 1024, 0x62) });
  await probe(t, fx, 'POST', upload('o1', 'chunked', 'input'), { status: 413, chunks: Array.from({ length: 8 }, () => Buffer.alloc(512, 0x63)) });
  // An oversized replacement of an existing file leaves the old file as it was.
  await probe(t, fx, 'POST', upload('o1', 'exact', 'input'), { status: 413, body: Buffer.alloc(4096, 0x64) });
  t.is(await fs.readFile(path.join(dir, 'inputs', 'exact'), 'utf8'), 'a'.repeat(1024));
  for (const name of ['over', 'big', 'chunked']) t.false(await exists(path.join(dir, 'inputs', name)), `${name} not created`);
  // A chunked upload under the limit is fine.
  const small = await probe(t, fx, 'POST', upload('o1', 'chunked-ok', 'input'), { status: 200, chunks: [Buffer.from('ab'), Buffer.from('cd')], allow: [dir] });
  t.is(small.status, 200);
  t.is(await fs.readFile(path.join(dir, 'inputs', 'chunked-ok'), 'utf8'), 'abcd');
});

test('uploads into one job over max_job_upload_size are a 413', async (t) => {
  const fx = await fixture(t, { maxJobUploadSize: 3000 });
  await setupJob(t, fx, 'q1');
  await setupJob(t, fx, 'q2');
  const dir = jobDir(fx, 'q1');
  await probe(t, fx, 'POST', upload('q1', 'a', 'input'), { status: 200, body: Buffer.alloc(2000, 0x61), allow: [dir] });
  await probe(t, fx, 'POST', upload('q1', 'b', 'input'), { status: 413, body: Buffer.alloc(2000, 0x62) });
  t.false(await exists(path.join(dir, 'inputs', 'b')));
  await probe(t, fx, 'POST', upload('q1', 'c', 'tool'), { status: 200, body: Buffer.alloc(1000, 0x63), allow: [dir] });
  await probe(t, fx, 'POST', upload('q1', 'd', 'config'), { status: 413, body: Buffer.alloc(1, 0x64) });
  t.false(await exists(path.join(dir, 'configs', 'd')));
  // The cap is per job.
  await probe(t, fx, 'POST', upload('q2', 'a', 'input'), { status: 200, body: Buffer.alloc(2000, 0x61), allow: [jobDir(fx, 'q2')] });
});

test('a repeated parameter: the last value wins', async (t) => {
  const fx = await fixture(t);
  const setup = await probe(t, fx, 'POST', '/jobs?job_id=first&job_id=second', { status: 200, allow: [jobDir(fx, 'second'), jobRecord(fx, 'second')] });
  t.is(setup.json<{ job_id: string }>().job_id, 'second');
  t.false(await exists(jobDir(fx, 'first')));
  const dir = jobDir(fx, 'second');
  const r = await probe(t, fx, 'POST', '/jobs/second/files?name=a&type=input&name=b', { status: 200, body: 'B', allow: [dir] });
  t.is(r.json<{ path: string }>().path, path.join(dir, 'inputs', 'b'));
  t.false(await exists(path.join(dir, 'inputs', 'a')));
  const r2 = await probe(t, fx, 'POST', '/jobs/second/files?name=c&type=bogus&type=input', { status: 200, body: 'C', allow: [dir] });
  t.is(r2.json<{ path: string }>().path, path.join(dir, 'inputs', 'c'));
  await probe(t, fx, 'POST', '/jobs/second/files?name=d&type=input&type=bogus', { status: 400, body: 'D' });
  // The path parameter wins over a job_id query parameter.
  const r3 = await probe(t, fx, 'GET', '/jobs/second/files/path?job_id=other&name=e&type=input', { status: 200, allow: [dir] });
  t.is(r3.json<{ path: string }>().path, path.join(dir, 'inputs', 'e'));
});

test('submit with malformed parameters is a 400 and leaves the job as it was', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'm1');
  const dir = jobDir(fx, 'm1');
  const bad: readonly Record<string, string>[] = [
    { command_line: 'true', env: '{' },
    { command_line: 'true', env: '{}' },
    { command_line: 'true', env: JSON.stringify([{ name: 'A;B', value: '1' }]) },
    { command_line: 'true', env: JSON.stringify([{ name: '1A', value: '1' }]) },
    { command_line: 'true', env: JSON.stringify([{ name: 'A B', value: '1' }]) },
    { command_line: 'true', env: JSON.stringify([{ value: 'no name' }]) },
    { command_line: 'true', params: '[1' },
    { command_line: 'true', params: '"a string"' },
    { command_line: 'true', remote_staging: 'nope' },
    { command_line: 'true', remote_staging: '{"setup": 5}' },
    { command_line: 'true', submit_extras: '{' },
    { command_line: 'true', submit_extras: JSON.stringify({ touch_outputs: [], job_id: 'other' }) },
    { command_line: 'true', submit_extras: JSON.stringify({ setup: true }) },
    { command_line: 'true', submit_extras: JSON.stringify({ touch_outputs: 'x' }) },
    { command_line: 'true', setup_params: '{' },
    { command_line: 'true', dynamic_file_sources: '{' },
    { command_line: 'true', dynamic_file_sources: '[{"type": "galaxy"}]' },
    { command_line: 'true', dependencies_description: '{' },
    { command_line: '' },
    { command_line: '   ' },
    { command_line: 'true\0false' },
    { env: '[]' },
    {},
  ];
  for (const params of bad) {
    await probe(t, fx, 'POST', `/jobs/m1/submit?${qs({ job_id: 'm1', ...params })}`, { status: 400, label: `submit ${JSON.stringify(params)}` });
    t.false(await exists(path.join(dir, 'command.sh')), `${JSON.stringify(params)}: no job script written`);
  }
  const status = await request(fx.base, 'GET', '/jobs/m1/status?job_id=m1');
  t.is(status.json<{ status: string }>().status, 'preprocessing', 'the job is still waiting for a submit');
  // The job can still be submitted properly.
  const doc = await submitAndWait(t, fx, 'm1', 'echo fine');
  t.is(doc['status'], 'complete');
  t.is(doc['returncode'], 0);
  t.is(doc['job_stdout'], 'fine\n');
});

test('status, cancel and clean of an unknown (valid) id answer 200 and create nothing', async (t) => {
  const fx = await fixture(t);
  const status = await probe(t, fx, 'GET', '/jobs/nosuchjob/status?job_id=nosuchjob', { status: 200 });
  const doc = status.json<Record<string, unknown>>();
  t.is(doc['status'], 'lost');
  t.is(doc['complete'], 'true');
  t.is(doc['returncode'], null);
  t.deepEqual(doc['working_directory_contents'], []);
  t.deepEqual(doc['job_directory_contents'], []);
  // Any method matches the status route (upstream).
  t.is((await probe(t, fx, 'POST', '/jobs/nosuchjob/status', { status: 200 })).json<{ status: string }>().status, 'lost');
  t.is((await probe(t, fx, 'PUT', '/jobs/nosuchjob/cancel?job_id=nosuchjob', { status: 200 })).text, 'OK');
  t.is((await probe(t, fx, 'DELETE', '/jobs/nosuchjob?job_id=nosuchjob', { status: 200 })).text, 'OK');
  t.false(await exists(jobDir(fx, 'nosuchjob')));
  // Downloads from it are a 404 JSON error.
  await probe(t, fx, 'GET', `/jobs/nosuchjob/files?${qs({ name: 'x.dat', type: 'output' })}`, { status: 404 });
});

test('unknown routes and wrong methods are a 404 JSON error', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'w1');
  const attempts: readonly [string, string][] = [
    ['GET', '/'],
    ['GET', '/nope'],
    ['GET', '/jobs'],
    ['PUT', '/jobs?job_id=w2'],
    ['DELETE', '/jobs'],
    ['PUT', '/jobs/w1/files?name=x&type=input'],
    ['DELETE', '/jobs/w1/files?name=x&type=output'],
    ['POST', '/jobs/w1/files/path?name=x&type=input'],
    ['GET', '/jobs/w1/submit?command_line=true'],
    ['PUT', '/jobs/w1/submit?command_line=true'],
    ['GET', '/jobs/w1/cancel'],
    ['POST', '/jobs/w1/cancel'],
    ['POST', '/jobs/w1'],
    ['GET', '/jobs/w1'],
    ['POST', '/healthz'],
    ['DELETE', '/healthz'],
    ['GET', '/jobs/w1/status/extra'],
    ['GET', '/jobs/w1/files/path/extra?name=x&type=input'],
    ['GET', '/managers'],
    ['GET', '/managers/_default_'],
    ['GET', '/../../etc/passwd'],
    ['GET', '/%2e%2e/%2e%2e/etc/passwd'],
  ];
  for (const [method, target] of attempts) {
    const r = await probe(t, fx, method, target, { status: 404, label: `${method} ${target}` });
    t.false(r.text.includes('root:'), `${method} ${target} leaked a file`);
  }
  t.false(await exists(jobDir(fx, 'w2')), 'PUT /jobs did not set anything up');
});

test('an unknown manager is a 404', async (t) => {
  const fx = await fixture(t);
  await probe(t, fx, 'POST', '/managers/nope/jobs?job_id=1', { status: 404 });
  await probe(t, fx, 'GET', '/managers/nope/healthz', { status: 404 });
  await probe(t, fx, 'GET', '/managers/nope/jobs/1/status', { status: 404 });
  await probe(t, fx, 'POST', `/managers/nope/jobs/1/files?${qs({ name: 'x', type: 'input' })}`, { status: 404, body: 'x' });
  await probe(t, fx, 'POST', `/managers/nope/jobs/1/submit?${qs({ command_line: 'true' })}`, { status: 404 });
  await probe(t, fx, 'DELETE', '/managers/nope/jobs/1', { status: 404 });
  await probe(t, fx, 'POST', '/managers/%2E%2E/jobs?job_id=1', { status: 404 });
  t.false(await exists(jobDir(fx, '1')));
  // The configured manager answers under its prefix.
  const ok = await probe(t, fx, 'GET', '/managers/_default_/healthz', { status: 200 });
  t.is(typeof ok.json<{ version: string }>().version, 'string');
});

test('an undecodable path parameter is a 400 MAG_ERR_BAD_REQUEST (an error of the HTTP layer)', async (t) => {
  const fx = await fixture(t);
  for (const target of ['/jobs/%ZZ/status', `/jobs/%E0%A4%A/files?${qs({ name: 'x', type: 'input' })}`, '/managers/%ZZ/jobs/1/status']) {
    const r = await probe(t, fx, 'GET', target, { status: 400 });
    t.is(r.json<{ error: string }>().error, 'MAG_ERR_BAD_REQUEST', target);
  }
});

test('errors of the HTTP layer take their code from the catalog: 413 is MAG_ERR_UPLOAD_TOO_LARGE, any other 4xx MAG_ERR_BAD_REQUEST', (t) => {
  const logged: string[] = [];
  const log = createLogger({ destination: new Writable({ write: (chunk: Buffer, _enc, cb) => { logged.push(chunk.toString()); cb(); } }) });
  const at = { method: 'POST', route: '/jobs/j1/files' };
  const httpError = (status: number, message: string, expose: boolean): Error => Object.assign(new Error(message), { status, expose });
  const answer = (error: unknown): [number, unknown] => {
    const { status, body } = errorAnswer(error, log, at);
    return [status, JSON.parse(body)];
  };
  t.deepEqual(answer(httpError(413, 'request entity too large', true)), [413, { error: 'MAG_ERR_UPLOAD_TOO_LARGE', message: 'request entity too large' }]);
  t.deepEqual(answer(httpError(413, 'detail', false)), [413, { error: 'MAG_ERR_UPLOAD_TOO_LARGE', message: 'request entity too large' }]);
  t.deepEqual(answer(httpError(400, 'Failed to decode param', true)), [400, { error: 'MAG_ERR_BAD_REQUEST', message: 'Failed to decode param' }]);
  t.deepEqual(answer(httpError(415, 'a detail not for clients', false)), [400, { error: 'MAG_ERR_BAD_REQUEST', message: 'bad request' }]);
  t.deepEqual(logged, [], 'client errors are answers, not server errors');
  t.deepEqual(answer(httpError(503, 'upstream', true)), [500, { error: 'MAG_ERR_INTERNAL', message: 'internal server error' }]);
  t.is(logged.length, 1);
});

test('private_token: refused without or with a wrong token, Bearer accepted, never logged', async (t) => {
  const token = 's3cr3t-token';
  const fx = await fixture(t, { privateToken: token, logRequests: true });
  const healthz = async (target: string, headers: Record<string, string> = {}): Promise<Reply> => send(fx.base, 'GET', target, { headers });
  const refused = [
    await healthz('/healthz'),
    await healthz('/healthz?private_token='),
    await healthz('/healthz?private_token=s3cr3t-tokeX'),
    await healthz(`/healthz?private_token=${token}x`),
    await healthz(`/healthz?private_token=${token.slice(0, -1)}`),
    await healthz('/healthz', { Authorization: 'Bearer wrong' }),
    await healthz('/healthz', { Authorization: `Basic ${Buffer.from(`x:${token}`).toString('base64')}` }),
    await healthz('/healthz', { Authorization: token }),
  ];
  for (const [i, r] of refused.entries()) {
    t.is(r.status, 401, `refused #${i}: ${r.text}`);
    expectErrorBody(t, r, `refused #${i}`);
    t.false(r.text.includes(token), `refused #${i}: the token is echoed`);
  }
  t.is((await healthz(`/healthz?private_token=${token}`)).status, 200);
  t.is((await healthz('/healthz', { Authorization: `Bearer ${token}` })).status, 200);
  t.is((await healthz('/healthz', { Authorization: `bearer ${token}` })).status, 200);

  // Refused requests change nothing.
  const noToken = 'fake';
  await probe(t, fx, 'POST', '/jobs?job_id=t1', { status: 401, label: 'setup without token' });
  await probe(t, fx, 'POST', `/jobs?job_id=t1&private_token=${noToken}`, { status: 401, label: 'setup with a wrong token' });
  await probe(t, fx, 'GET', '/jobs/t1/status?job_id=t1', { status: 401, label: 'status without token' });
  await probe(t, fx, 'DELETE', '/jobs/t1', { status: 401, label: 'clean without token' });
  // Unknown routes are a 404 with or without a token (route matching comes first).
  await probe(t, fx, 'GET', '/nope', { status: 404 });
  t.false(await exists(jobDir(fx, 't1')));

  // A whole job with the header only, and one with the query parameter only.
  const bearer = { Authorization: `Bearer ${token}` };
  t.is((await send(fx.base, 'POST', '/jobs?job_id=t1', { headers: bearer })).status, 200);
  t.is((await send(fx.base, 'POST', upload('t1', 'in.txt', 'input'), { body: 'hi', headers: bearer })).status, 200);
  t.is((await send(fx.base, 'POST', `/jobs/t1/submit?${qs({ command_line: 'cat ../inputs/in.txt' })}`, { headers: bearer })).status, 200);
  const tq = `private_token=${token}`;
  t.is((await request(fx.base, 'POST', `/jobs?job_id=t2&${tq}`)).status, 200);
  t.is((await request(fx.base, 'POST', `${upload('t2', 'in.txt', 'input')}&${tq}`, { body: 'hi' })).status, 200);
  t.is((await request(fx.base, 'POST', `/jobs/t2/submit?${qs({ command_line: 'echo x', private_token: token })}`)).status, 200);
  const doc = (await waitForJob(fx.base, 't1', '', `&${tq}`)) as Record<string, unknown>;
  t.is(doc['job_stdout'], 'hi');
  await waitForJob(fx.base, 't2', '', `&${tq}`);
  t.is((await request(fx.base, 'GET', `/jobs/t2/files?${qs({ name: 'nope', type: 'output', private_token: token })}`)).status, 404);
  t.is((await request(fx.base, 'DELETE', `/jobs/t1?${tq}`)).status, 200);
  t.is((await send(fx.base, 'DELETE', '/jobs/t2', { headers: bearer })).status, 200);

  const log = fx.server.logLines.join('\n');
  t.true(fx.server.logLines.some((l) => l.includes('/healthz')), 'requests are logged at all');
  t.false(log.includes(token), 'the private token appears in the server log');
  t.false(log.includes(Buffer.from(`x:${token}`).toString('base64')), 'the Authorization header appears in the server log');
});

test('the log never holds the token or a launch payload however spelled, and long request lines are cut', async (t) => {
  const token = 'tok-LOGSECRET-42';
  const fx = await fixture(t, { privateToken: token, logRequests: true });
  const auth = { Authorization: `Bearer ${token}` };
  // The token in spellings the query parser decodes to private_token.
  t.is((await request(fx.base, 'GET', `/healthz?private%5Ftoken=${token}`)).status, 200);
  t.is((await request(fx.base, 'GET', `/healthz?%70rivate_token=${token}&x=1`)).status, 200);
  t.is((await request(fx.base, 'GET', `/healthz?private_token=${token}&private_token=${token}`)).status, 200);
  // A wrong token (perhaps a near miss of the right one) is not logged either: no query of an unauthenticated request is.
  t.is((await request(fx.base, 'GET', `/healthz?private_token=${token}X`)).status, 401);
  t.is((await request(fx.base, 'GET', `/healthz?PRIVATE_TOKEN=${token}`)).status, 401);
  // Submits spelled the ways express still routes them (case, trailing slash, manager prefix).
  const env = JSON.stringify([{ name: 'API_KEY', value: 'ENVSECRET-value' }]);
  for (const [i, route] of ['/jobs/l1/SUBMIT', '/jobs/l2/submit/', '/managers/_default_/jobs/l3/Submit/', '/jobs/l4/%73ubmit'].entries()) {
    await send(fx.base, 'POST', `/jobs?job_id=l${i + 1}`, { headers: auth });
    const r = await send(fx.base, 'POST', `${route}?${qs({ command_line: `echo CMDSECRET-${i}`, env })}`, { headers: auth });
    t.true([200, 404].includes(r.status), `${route}: ${r.status} ${r.text}`);
    const r2 = await request(fx.base, 'POST', `${route}?${qs({ command_line: `echo CMDSECRET-${i}`, env, private_token: token })}`);
    t.true([200, 404, 409].includes(r2.status), `${route} (token in the query): ${r2.status} ${r2.text}`);
  }
  // An unauthenticated 8 MiB request line.
  const before = fx.server.logLines.join('\n').length;
  const huge = await request(fx.base, 'GET', `/healthz?junk=${'j'.repeat(8 * 1024 * 1024)}`);
  t.is(huge.status, 401);
  const hugeAuthorized = await send(fx.base, 'GET', `/healthz?junk=${'k'.repeat(8 * 1024 * 1024)}`, { headers: auth });
  t.is(hugeAuthorized.status, 200);
  const grown = fx.server.logLines.join('\n').length - before;
  t.true(grown < 16 * 1024, `the log grew by ${grown} characters for two 8 MiB request lines`);

  const log = fx.server.logLines.join('\n');
  t.true(fx.server.logLines.some((l) => l.includes('/healthz')), 'requests are logged at all');
  t.false(log.includes('LOGSECRET'), 'the token appears in the log');
  t.false(log.includes('CMDSECRET'), 'a command line appears in the log');
  t.false(log.includes('ENVSECRET'), 'an env value appears in the log');
  t.true(log.includes('x=1'), 'other parameters are still logged');
});

test('a 5 MB query string on submit (a huge command line) is accepted', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'big1');
  const filler = 'x'.repeat(5 * 1024 * 1024);
  const commandLine = `echo big; : ${filler}`;
  const target = `/jobs/big1/submit?${qs({ job_id: 'big1', command_line: commandLine })}`;
  t.true(target.length > 5 * 1024 * 1024);
  const r = await request(fx.base, 'POST', target);
  t.is(r.status, 200, r.text.slice(0, 300));
  t.is(r.text, 'OK');
  const doc = (await waitForJob(fx.base, 'big1')) as Record<string, unknown>;
  t.is(doc['status'], 'complete');
  t.is(doc['returncode'], 0);
  t.is(doc['job_stdout'], 'big\n');
  t.is((await request(fx.base, 'GET', '/healthz')).status, 200);
});

test('a download of a missing output is a 404 JSON error', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'x1');
  const dir = jobDir(fx, 'x1');
  const doc = await submitAndWait(t, fx, 'x1', 'echo out > ../outputs/present.dat; mkdir ../outputs/adir');
  t.is(doc['status'], 'complete');
  for (const [name, type] of [
    ['dataset_1.datx', 'output'],
    ['present.dat/x', 'output'],
    ['missing/deep/file', 'output'],
    ['nope', 'output_workdir'],
    ['nope*', 'output_workdir'],
    ['nope', 'output_metadata'],
    ['nope', 'output_jobdir'],
  ] as const) {
    await probe(t, fx, 'GET', `/jobs/x1/files?${qs({ job_id: 'x1', name, type })}`, { status: 404, label: `download ${type} ${name}`, allow: [dir] });
  }
  // A directory is not a file either.
  await probe(t, fx, 'GET', `/jobs/x1/files?${qs({ name: 'adir', type: 'output' })}`, { status: [403, 404], allow: [dir] });
  const ok = await request(fx.base, 'GET', `/jobs/x1/files?${qs({ name: 'present.dat', type: 'output' })}`);
  t.is(ok.status, 200);
  t.is(ok.text, 'out\n');
  // After clean, every download is a 404.
  t.is((await request(fx.base, 'DELETE', '/jobs/x1')).text, 'OK');
  await probe(t, fx, 'GET', `/jobs/x1/files?${qs({ name: 'present.dat', type: 'output' })}`, { status: 404 });
});

test('a cache_token upload is refused while the file cache is not configured', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'c1');
  for (const token of ['7faafa82e48acde0307e693b754b3a2c0e5189ec0877a8598d2443082dcd6111', '../../../../etc/passwd', '']) {
    const r = await probe(t, fx, 'POST', upload('c1', 'x', 'input', { cache_token: token }), { status: 404, label: `cache_token ${JSON.stringify(token)}` });
    t.regex(r.json<{ message: string }>().message, /not configured/);
  }
  t.false(await exists(path.join(jobDir(fx, 'c1'), 'inputs', 'x')));
  for (const [method, target] of [['PUT', '/cache?path=/x'], ['POST', '/cache?path=/x'], ['GET', '/cache/status?path=/x'], ['GET', '/objects/1/exists'], ['GET', '/object_store_usage_percent']] as const) {
    await probe(t, fx, method, target, method === 'POST' ? { status: 404, body: 'data' } : { status: 404 });
  }
});


/** A fake job directory outside staging: the six sub-directories, each holding `secret.txt`. */
async function fakeJobDirectory(fx: Fixture): Promise<string> {
  const fake = path.join(fx.canary, 'fake');
  for (const sub of ['inputs', 'working', 'outputs', 'configs', 'tool_files', 'metadata']) {
    await fs.mkdir(path.join(fake, sub), { recursive: true });
    await fs.writeFile(path.join(fake, sub, 'secret.txt'), CANARY_SECRET);
  }
  return fake;
}

test('a job sub-directory replaced by a symlink to outside lets no upload or download through', async (t) => {
  const fx = await fixture(t);
  const fake = await fakeJobDirectory(fx);
  await setupJob(t, fx, 'e1');
  const dir = jobDir(fx, 'e1');
  for (const sub of ['outputs', 'working', 'metadata', 'inputs', 'configs', 'tool_files']) {
    await fs.rm(path.join(dir, sub), { recursive: true });
    await fs.symlink(path.join(fake, sub), path.join(dir, sub));
  }
  for (const type of ['output', 'output_workdir', 'output_metadata']) {
    const r = await probe(t, fx, 'GET', `/jobs/e1/files?${qs({ name: 'secret.txt', type })}`, { status: [403, 404], label: `download ${type} through a symlinked directory` });
    t.false(r.text.includes('CANARY'), `${type}: served a file from outside the job directory`);
  }
  for (const [type, name] of [['input', 'x'], ['input', 'd/x'], ['workdir', 'x'], ['metadata', 'x'], ['config', 'x'], ['tool', 'x']] as const) {
    await probe(t, fx, 'POST', upload('e1', name, type), { status: [403, 404], body: 'PWNED', label: `upload ${type} ${name} through a symlinked directory` });
  }
  await probe(t, fx, 'GET', `/jobs/e1/files/path?${qs({ name: 'y', type: 'input' })}`, { status: [403, 404] });
});

test('a job directory replaced by a symlink to outside staging lets no upload or download through', async (t) => {
  const fx = await fixture(t);
  const fake = await fakeJobDirectory(fx);
  await setupJob(t, fx, 'e2');
  await fs.rm(jobDir(fx, 'e2'), { recursive: true });
  await fs.symlink(fake, jobDir(fx, 'e2'));
  for (const type of ['output', 'output_workdir', 'output_metadata']) {
    const r = await probe(t, fx, 'GET', `/jobs/e2/files?${qs({ name: 'secret.txt', type })}`, { status: [403, 404], label: `download ${type} through a symlinked job directory` });
    t.false(r.text.includes('CANARY'), `${type}: served a file from outside staging`);
  }
  for (const [type, name] of [['input', 'x'], ['workdir', 'x'], ['jobdir', 'tool_script.sh'], ['tool', 'a/b']] as const) {
    await probe(t, fx, 'POST', upload('e2', name, type), { status: [403, 404], body: 'PWNED', label: `upload ${type} ${name} through a symlinked job directory` });
  }
});

const shq = (p: string): string => `'${p.replaceAll("'", `'\\''`)}'`;

test('realized dynamic_file_sources never read a file outside working/ (PROTOCOL §14 item 6)', async (t) => {
  const fx = await fixture(t);
  await fs.writeFile(path.join(fx.canaryDir, 'galaxy.json'), CANARY_SECRET);
  await setupJob(t, fx, 'g1');
  // Symlinks to outside, as the final component and as a parent directory, plus plain traversal.
  const sources = [
    { type: 'galaxy', path: 'galaxy.json' },
    { type: 'galaxy', path: 'sub/galaxy.json' },
    { type: 'galaxy', path: '../../../canary/secret.txt' },
    { type: 'galaxy', path: fx.secret },
    { type: 'legacy_galaxy', path: '../metadata/../../../canary/secret.txt' },
    { type: 'galaxy', path: 'real.json' },
  ];
  const cmd = `ln -s ${shq(fx.secret)} galaxy.json && ln -s ${shq(fx.canaryDir)} sub && printf '[]' > real.json`;
  const r = await request(fx.base, 'POST', `/jobs/g1/submit?${qs({ command_line: cmd, dynamic_file_sources: JSON.stringify(sources) })}`);
  t.is(r.status, 200, r.text);
  const doc = (await waitForJob(fx.base, 'g1')) as Record<string, unknown>;
  t.is(doc['returncode'], 0, String(doc['stderr']));
  t.false(JSON.stringify(doc).includes('CANARY'), `status leaked a file through dynamic_file_sources: ${JSON.stringify(doc['realized_dynamic_file_sources'])}`);
  t.deepEqual(doc['realized_dynamic_file_sources'], [{ type: 'galaxy', path: 'real.json', contents: '[]' }]);
});

test('status streams and downloads never read through a metadata/ directory swapped for a symlink', async (t) => {
  const fx = await fixture(t);
  const meta = path.join(fx.canary, 'meta');
  await fs.mkdir(meta);
  for (const name of ['tool_stdout', 'tool_stderr', 'job_stdout', 'job_stderr']) await fs.writeFile(path.join(meta, name), CANARY_SECRET);
  await setupJob(t, fx, 'g2');
  const cmd = `mv ../metadata ../metadata.real && ln -s ${shq(meta)} ../metadata`;
  const r = await request(fx.base, 'POST', `/jobs/g2/submit?${qs({ command_line: cmd })}`);
  t.is(r.status, 200, r.text);
  const doc = (await waitForJob(fx.base, 'g2')) as Record<string, unknown>;
  for (const key of ['stdout', 'stderr', 'job_stdout', 'job_stderr']) {
    t.false(String(doc[key]).includes('CANARY'), `status ${key} read a file outside the job directory`);
  }
  const down = await request(fx.base, 'GET', `/jobs/g2/files?${qs({ name: 'tool_stdout', type: 'output_metadata' })}`);
  t.false(down.text.includes('CANARY'), `output_metadata download through the swapped directory answered ${down.status}`);
});

test('an upload cut off mid-body leaves neither the file nor a partial file', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'a1');
  const dir = jobDir(fx, 'a1');
  const before = await snapshot(fx.server.root);
  const url = new URL(fx.base);
  await new Promise<void>((resolve, reject) => {
    const socket = net.connect(Number(url.port), url.hostname, () => {
      socket.write(`POST ${upload('a1', 'cut', 'input')} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n`);
      socket.write(Buffer.alloc(50_000, 0x61), () => {
        setTimeout(() => {
          socket.destroy();
          resolve();
        }, 100);
      });
    });
    socket.on('error', reject);
  });
  // The server notices the hang-up asynchronously.
  const deadline = Date.now() + 5000;
  let after = await snapshot(fx.server.root);
  while ([...after.keys()].some((p) => p.endsWith('.part')) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    after = await snapshot(fx.server.root);
  }
  t.deepEqual(changes(before, after), [], 'the aborted upload left something behind');
  t.false(await exists(path.join(dir, 'inputs', 'cut')));
  t.is((await request(fx.base, 'GET', '/healthz')).status, 200);
  // The same upload, complete, works.
  const ok = await request(fx.base, 'POST', upload('a1', 'cut', 'input'), { body: 'whole' });
  t.is(ok.status, 200, ok.text);
});

test('upload bodies are stored raw whatever their Content-Type claims', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'ct1');
  const dir = jobDir(fx, 'ct1');
  const bodies: readonly [string, string][] = [
    ['application/x-www-form-urlencoded', 'a=1&b=2&name=../../x'],
    ['application/json', '{"path": "/etc/passwd"}'],
    ['multipart/form-data; boundary=xx', '--xx\r\nContent-Disposition: form-data; name="f"; filename="../../x"\r\n\r\nhi\r\n--xx--\r\n'],
    ['text/plain; charset=latin1', 'caf\u00e9'],
  ];
  for (const [i, [type, body]] of bodies.entries()) {
    const r = await probe(t, fx, 'POST', upload('ct1', `f${i}`, 'input'), { status: 200, body, headers: { 'Content-Type': type }, allow: [dir] });
    t.is(r.json<{ path: string }>().path, path.join(dir, 'inputs', `f${i}`));
    t.deepEqual(await fs.readFile(path.join(dir, 'inputs', `f${i}`)), Buffer.from(body), `${type}: stored bytes`);
  }
});

test('setting up an id again: 409 while its job runs, a fresh directory once it finished', async (t) => {
  const fx = await fixture(t);
  await setupJob(t, fx, 'rs1');
  await request(fx.base, 'POST', upload('rs1', 'old.txt', 'input'), { body: 'old' });
  const r = await request(fx.base, 'POST', `/jobs/rs1/submit?${qs({ command_line: 'sleep 1; echo done > ../outputs/out.dat' })}`);
  t.is(r.status, 200);
  await probe(t, fx, 'POST', '/jobs?job_id=rs1', { status: 409, allow: [jobDir(fx, 'rs1'), jobRecord(fx, 'rs1')] });
  t.true(await exists(path.join(jobDir(fx, 'rs1'), 'inputs', 'old.txt')), 'the running job keeps its files');
  const doc = (await waitForJob(fx.base, 'rs1')) as Record<string, unknown>;
  t.is(doc['status'], 'complete');
  await setupJob(t, fx, 'rs1');
  // PROTOCOL §14 item 29: a reused id never serves the previous job's files.
  t.false(await exists(path.join(jobDir(fx, 'rs1'), 'inputs', 'old.txt')));
  const down = await request(fx.base, 'GET', `/jobs/rs1/files?${qs({ name: 'out.dat', type: 'output' })}`);
  t.is(down.status, 404);
  const status = await request(fx.base, 'GET', '/jobs/rs1/status');
  t.is(status.json<{ status: string }>().status, 'preprocessing');
});
