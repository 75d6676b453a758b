import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { DrmaaCallError, DrmaaClient, DrmaaHelperError } from '../../src/drmaa/client.js';
import { BackendError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { DrmaaJobs } from '../../src/managers/drmaa.js';

// A stand-in for helper.ts speaking the same protocol, so that crashes can be made on purpose.
const FAKE_HELPER = `
import { createInterface } from 'node:readline';
createInterface({ input: process.stdin }).on('line', (line) => {
  const req = JSON.parse(line);
  const answer = (result) => process.stdout.write(JSON.stringify({ id: req.id, ok: true, result }) + '\\n');
  const fail = (code, message) => process.stdout.write(JSON.stringify({ id: req.id, ok: false, error: { code, message } }) + '\\n');
  if (req.op === 'init') {
    process.stdout.write('noise a C library printed\\n');
    answer({ contact: req.contact ?? 'session=fake.' + process.pid, drmSystem: 'Fake 1.0', reattached: req.contact !== null });
  } else if (req.op === 'submit') {
    if (req.template.nativeSpecification === 'crash') process.kill(process.pid, 'SIGSEGV');
    else if (req.template.nativeSpecification === 'deny') fail('DENIED_BY_DRM', 'drmaa_run_job: DENIED_BY_DRM: unknown resource "x"');
    else answer({ jobId: String(process.pid) });
  } else if (req.op === 'poll') {
    answer({ jobs: Object.fromEntries(req.jobIds.map((id) => [id, { ps: 0x20 }])) });
  } else if (req.op === 'control') {
    fail('INVALID_JOB', 'drmaa_control: INVALID_JOB: There are no jobs registered');
  }
});
`;

async function fixture(t: { teardown: (fn: () => unknown) => void }) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-drmaa-client-'));
  const helperPath = path.join(dir, 'fake-helper.mjs');
  await fs.writeFile(helperPath, FAKE_HELPER);
  const lines: string[] = [];
  const log = createLogger({ destination: new Writable({ write: (chunk: Buffer, _e, cb) => { lines.push(chunk.toString()); cb(); } }) });
  const contactFile = path.join(dir, 'staging', '.magnetar-drmaa-test.contact');
  const client = new DrmaaClient({ manager: 'test', contactFile, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }, log, helperPath });
  t.teardown(async () => {
    client.close();
    await fs.rm(dir, { recursive: true, force: true });
  });
  return { client, contactFile, lines };
}

const template = (nativeSpecification?: string) => ({
  remoteCommand: '/bin/bash',
  args: ['/s/j/command.sh'],
  ...(nativeSpecification === undefined ? {} : { nativeSpecification }),
});

test('a helper that crashes mid-call fails that call with the reason; the next call gets a new helper in the same session', async (t) => {
  const { client, contactFile, lines } = await fixture(t);
  const first = await client.submit(template());
  t.is(client.drmSystem, 'Fake 1.0');
  t.is(String(client.pid), first);
  const contact = (await fs.readFile(contactFile, 'utf8')).trim();
  t.is(contact, `session=fake.${first}`);

  const crash = await t.throwsAsync(client.submit(template('crash')), { instanceOf: DrmaaHelperError });
  t.regex(crash.message, /^the DRMAA helper process was killed by SIGSEGV while submitting the job; it is restarted/);
  t.is(client.pid, undefined);

  const second = await client.submit(template());
  t.not(second, first);
  // The new helper was given the old contact, and re-attached to it.
  t.is((await fs.readFile(contactFile, 'utf8')).trim(), contact);
  t.true(lines.some((l) => l.includes('DRMAA session re-attached')));
  t.true(lines.some((l) => l.includes('noise a C library printed')), 'stray output is logged, not parsed');
});

test('DRMAA errors keep their code; the backend turns a refusal into the DRM\'s reason', async (t) => {
  const { client } = await fixture(t);
  const error = await t.throwsAsync(client.control('1', 'TERMINATE'), { instanceOf: DrmaaCallError });
  t.is(error.drmaaCode, 'INVALID_JOB');
  t.is(error.code, 'MAG_ERR_BACKEND_COMMAND');
  const jobs = new DrmaaJobs({ client, intervalMs: 50, log: createLogger({ destination: new Writable({ write: (_c, _e, cb) => cb() }) }) });
  await t.notThrowsAsync(jobs.terminate('1'), 'terminating a job the DRM forgot is not an error');
  const denied = await t.throwsAsync(jobs.submit(template('deny')), { instanceOf: BackendError, message: 'Fake 1.0 refused the job: DENIED_BY_DRM: unknown resource "x"' });
  t.is(denied.code, 'MAG_ERR_BACKEND_SUBMIT');
  const crashed = await t.throwsAsync(jobs.submit(template('crash')), { instanceOf: BackendError, message: /killed by SIGSEGV while submitting the job/ });
  t.is(crashed.code, 'MAG_ERR_BACKEND_UNREACHABLE');
  const id = await jobs.submit(template());
  t.is(await jobs.status(id), 'running');
  await jobs.waitForStart(id);
  t.deepEqual(await client.poll([]), {});
});

test('after close no call reaches a helper', async (t) => {
  const { client } = await fixture(t);
  await client.submit(template());
  client.close();
  await t.throwsAsync(client.poll(['1']), { instanceOf: DrmaaHelperError, message: /shut down/ });
});
