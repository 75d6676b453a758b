import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { checkTemplate, isInside, parseArguments, RefusedError } from '../../src/drmaa/external.js';
import { BackendError, ConfigError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import type { BackendContext } from '../../src/managers/context.js';
import { createDrmaaBackend } from '../../src/managers/drmaa.js';
import { localShell } from '../../src/managers/cli/shell.js';
import { checkJobUser, createExternalDrmaaBackend } from '../../src/managers/external-drmaa.js';
import { CommandRunner } from '../../src/managers/process-runner.js';
import { managerConfig } from '../helpers/server.js';

const log = createLogger({ destination: new Writable({ write: (_c, _e, cb) => cb() }) });
// Startup checks only that the library file exists; nothing is loaded until a job is submitted.
const ctx = (env: Record<string, string | undefined> = {}): BackendContext => ({
  log,
  serverEnv: { PATH: process.env['PATH'], DRMAA_LIBRARY_PATH: process.execPath, ...env },
  configFile: 'job_managers.ini',
});

test('queued_drmaa options: native_specification only; unknown options and a missing library stop the server', (t) => {
  const root = os.tmpdir();
  const ok = createDrmaaBackend(managerConfig(root, { name: 'sge', type: 'queued_drmaa', backendOptions: { native_specification: '-q all.q' } }), ctx());
  t.is(ok.maxConcurrent, Number.POSITIVE_INFINITY);
  t.deepEqual(ok.scriptHeader({} as never), []);
  ok.close();
  const unknown = t.throws(() => createDrmaaBackend(managerConfig(root, { name: 'sge', type: 'queued_drmaa', backendOptions: { submit_queue: 'x' } }), ctx()), { instanceOf: ConfigError });
  t.regex(unknown.message, /job_managers\.ini: manager sge submit_queue: unknown option for a queued_drmaa manager/);
  const newline = t.throws(() => createDrmaaBackend(managerConfig(root, { type: 'queued_drmaa', backendOptions: { native_specification: '-q a\n-o b' } }), ctx()), { instanceOf: ConfigError });
  t.regex(newline.message, /native_specification: must be one line/);
  t.throws(() => createDrmaaBackend(managerConfig(root, { type: 'queued_drmaa' }), ctx({ DRMAA_LIBRARY_PATH: undefined })), { message: /needs DRMAA_LIBRARY_PATH/ });
  t.throws(() => createDrmaaBackend(managerConfig(root, { type: 'queued_drmaa' }), ctx({ DRMAA_LIBRARY_PATH: '/no/such/libdrmaa.so' })), { message: /not an existing absolute path/ });
});

test('queued_external_drmaa options: production, helper scripts (default: scripts/), checked at startup', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-ext-options-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const notExecutable = path.join(root, 'launch.sh');
  await fs.writeFile(notExecutable, '#!/bin/sh\n', { mode: 0o644 });
  const make = (backendOptions: Record<string, string>, env?: Record<string, string | undefined>) =>
    createExternalDrmaaBackend(managerConfig(root, { name: 'ext', type: 'queued_external_drmaa', backendOptions }), ctx(env));
  const sudoMissing = (await fs.access('/usr/bin/sudo').then(() => false, () => true)) && (await fs.access('/bin/sudo').then(() => false, () => true));
  if (!sudoMissing) {
    const ok = make({ production: 'false' });
    t.is(ok.constructor.name, 'ExternalDrmaaBackend');
    ok.close();
  }
  t.throws(() => make({ production: 'maybe' }), { message: /manager ext production: must be true or false/ });
  t.throws(() => make({ drmaa_launch_script: 'relative.sh' }), { message: /drmaa_launch_script: must be an absolute path/ });
  t.throws(() => make({ drmaa_launch_script: notExecutable }), { message: /drmaa_launch_script: .* is not an executable file/ });
  t.throws(() => make({ user_map: 'x' }), { message: /manager ext user_map: unknown option/ });
  t.throws(() => make({}, { PATH: root }), { message: /needs sudo/ });
});

test('submit_params.user: a plain name of an existing regular account', async (t) => {
  const lookup = new CommandRunner(localShell(), { timeoutMs: 10_000, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' } });
  await t.throwsAsync(checkJobUser(undefined, lookup), { instanceOf: BackendError, message: /needs submit_params.user/ });
  await t.throwsAsync(checkJobUser('root', lookup), { instanceOf: BackendError, message: /root or a system account/ });
  await t.throwsAsync(checkJobUser('nobody', lookup), { instanceOf: BackendError, message: /root or a system account/ });
  await t.throwsAsync(checkJobUser('Root', lookup), { instanceOf: BackendError, message: /must be a user name/ });
  await t.throwsAsync(checkJobUser("a'b", lookup), { instanceOf: BackendError, message: /must be a user name/ });
  await t.throwsAsync(checkJobUser('a'.repeat(33), lookup), { instanceOf: BackendError, message: /must be a user name/ });
  await t.throwsAsync(checkJobUser('nosuchuser_mg', lookup), { instanceOf: BackendError, message: /there is no user/ });
  const noGetent = new CommandRunner(localShell(), { timeoutMs: 10_000, env: { PATH: '/nonexistent' } });
  const unreachable = await t.throwsAsync(checkJobUser('someone', noGetent), { instanceOf: BackendError, message: /could not run getent: .*command not found/ });
  t.is(unreachable.code, 'MAG_ERR_BACKEND_UNREACHABLE', 'no account database is not "no such user"');
});

test('helper argument and template checks', (t) => {
  t.deepEqual([...parseArguments(['--job_id', '1'], ['job_id'])], [['job_id', '1']]);
  t.throws(() => parseArguments(['--job_id'], ['job_id']), { instanceOf: RefusedError });
  t.throws(() => parseArguments(['--job_id', '1', '--job_id', '2'], ['job_id']), { message: /twice/ });
  t.throws(() => parseArguments(['-job_id', '1'], ['job_id']), { message: /unknown argument/ });
  t.true(isInside('/srv/staging', '/srv/staging/j1'));
  t.false(isInside('/srv/staging', '/srv/staging2/j1'), 'separator-aware');
  t.false(isInside('/srv/staging', '/srv/staging'));
  t.false(isInside('/srv/staging', '/srv'));
  const job = '/srv/staging/j1';
  const good = {
    remoteCommand: '/bin/bash',
    args: [`${job}/command.sh`],
    jobName: 'pulsar_j1',
    outputPath: `:${job}/metadata/job_stdout`,
    errorPath: `:${job}/metadata/job_stderr`,
    workingDirectory: `${job}/working`,
  };
  t.notThrows(() => checkTemplate(good, job));
  t.throws(() => checkTemplate({ ...good, workingDirectory: `${job}/../j2/working` }, job), { message: /outside/ });
  t.throws(() => checkTemplate({ ...good, nativeSpecification: '-q a\n-o b' }, job), { message: /control characters/ });
  t.throws(() => checkTemplate({ ...good, jobName: 'a b' }, job), { message: /job name/ });
});
