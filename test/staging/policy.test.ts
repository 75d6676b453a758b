import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { StagingConfig } from '../../src/config/types.js';
import { JobRefused } from '../../src/errors.js';
import { StagingPolicy, isPrivateAddress, loggableUrl } from '../../src/staging/policy.js';
import { HttpStatusError, PermanentError, isTransient, withRetries } from '../../src/staging/retry.js';

const OPEN: StagingConfig = { allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4 };

test('only http and https, without credentials', (t) => {
  const policy = new StagingPolicy(OPEN, false);
  t.is(policy.checkUrl('http://galaxy.example.org/api/jobs/1/files?job_key=k&path=%2Fa').hostname, 'galaxy.example.org');
  t.truthy(policy.checkUrl('https://galaxy.example.org/x'));
  for (const url of ['file:///etc/passwd', 'ftp://h/x', 'gopher://h/x', 'data:text/plain,hi', 'javascript:alert(1)']) {
    t.throws(() => policy.checkUrl(url), { instanceOf: JobRefused, message: /only http and https/ }, url);
  }
  t.throws(() => policy.checkUrl('http://user:pw@h/x'), { message: /credentials/ });
  t.throws(() => policy.checkUrl('not a url'), { message: /not a valid URL/ });
  t.throws(() => policy.checkUrl(42), { message: /without a url/ });
  t.throws(() => policy.checkUrl(`http://h/${'a'.repeat(20_000)}`), { message: /too long/ });
});

test('the allow-list matches scheme, host, port and path prefix on a segment boundary', (t) => {
  const policy = new StagingPolicy({ ...OPEN, allowedEndpoints: ['https://galaxy.example.org/api/jobs/', 'http://10.1.2.3:8080/files'] }, false);
  t.truthy(policy.checkUrl('https://galaxy.example.org/api/jobs/7/files?path=x'));
  t.truthy(policy.checkUrl('https://GALAXY.example.org:443/api/jobs/7/files'));
  t.truthy(policy.checkUrl('http://10.1.2.3:8080/files'));
  t.truthy(policy.checkUrl('http://10.1.2.3:8080/files/sub'));
  for (const url of [
    'http://galaxy.example.org/api/jobs/7/files', // scheme
    'https://galaxy.example.org:8443/api/jobs/7', // port
    'https://evil.example.org/api/jobs/7', // host
    'https://galaxy.example.org.evil.org/api/jobs/7',
    'https://galaxy.example.org/api/other', // path
    'https://galaxy.example.org/api/jobs/../../admin', // normalised by the URL parser, then outside
    'https://galaxy.example.org/api/jobs/%2e%2e/%2e%2e/admin',
    'http://10.1.2.3:8080/filesX',
  ]) {
    t.throws(() => policy.checkUrl(url), { message: /not in staging_allowed_endpoints/ }, url);
  }
});

test('public mode: no list means no transfers and no copies', async (t) => {
  const policy = new StagingPolicy({ ...OPEN, privateAddresses: false }, true);
  t.false(policy.transfersAllowed);
  t.throws(() => policy.checkUrl('https://galaxy.example.org/x'), { message: /lists no files endpoint/ });
  await t.throwsAsync(policy.checkCopySource('/etc/hostname'), { message: /no staging_copy_roots/ });
});

test('private addresses: classified, refused when off unless the endpoint names that address', (t) => {
  for (const a of ['127.0.0.1', '10.0.0.1', '172.16.5.4', '192.168.1.1', '169.254.169.254', '0.0.0.0', '::1', '::', 'fd00::1', 'fe80::1', '::ffff:127.0.0.1', '100.64.0.1']) {
    t.true(isPrivateAddress(a), a);
  }
  for (const a of ['8.8.8.8', '2001:4860:4860::8888', '172.32.0.1']) t.false(isPrivateAddress(a), a);
  const closed = new StagingPolicy({ ...OPEN, privateAddresses: false }, false);
  t.throws(() => closed.checkUrl('http://127.0.0.1:8080/x'), { message: /loopback or private/ });
  t.throws(() => closed.checkUrl('http://[::1]:8080/x'), { message: /loopback or private/ });
  t.throws(() => closed.checkUrl('http://[::ffff:127.0.0.1]:8080/x'), { message: /loopback or private/ });
  t.throws(() => closed.checkUrl('http://[::ffff:a00:1]:8080/x'), { message: /loopback or private/ });
  t.throws(() => closed.checkUrl('http://[64:ff9b::a00:1]/x'), { message: /loopback or private/ });
  t.throws(() => closed.checkUrl('http://2130706433/x'), { message: /loopback or private/ });
  t.throws(() => closed.checkUrl('http://0x7f.1/x'), { message: /loopback or private/ });
  t.throws(() => closed.checkUrl('http://169.254.169.254/latest/meta-data'), { message: /loopback or private/ });
  t.throws(() => closed.checkAddress(new URL('http://galaxy.example.org/x'), '10.0.0.5'), { message: /loopback or private/ });
  t.notThrows(() => closed.checkAddress(new URL('http://galaxy.example.org/x'), '93.184.216.34'));
  const listed = new StagingPolicy({ ...OPEN, privateAddresses: false, allowedEndpoints: ['http://127.0.0.1:9000/api/'] }, true);
  t.truthy(listed.checkUrl('http://127.0.0.1:9000/api/jobs/1/files'));
  t.throws(() => listed.checkUrl('http://127.0.0.1:9001/api/jobs/1/files'), { message: /not in staging_allowed_endpoints/ });
});

test('remote_copy sources: absolute, resolved, inside the roots', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-policy-'));
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  await fs.mkdir(path.join(root, 'data'));
  await fs.writeFile(path.join(root, 'data', 'ok'), 'x');
  await fs.writeFile(path.join(root, 'secret'), 'x');
  await fs.symlink(path.join(root, 'secret'), path.join(root, 'data', 'link'));
  const policy = new StagingPolicy({ ...OPEN, copyRoots: [path.join(root, 'data')] }, false);
  t.is(await policy.checkCopySource(path.join(root, 'data', 'ok')), path.join(await fs.realpath(root), 'data', 'ok'));
  await t.throwsAsync(policy.checkCopySource(path.join(root, 'secret')), { message: /outside staging_copy_roots/ });
  await t.throwsAsync(policy.checkCopySource(path.join(root, 'data', 'link')), { message: /outside staging_copy_roots/ });
  await t.throwsAsync(policy.checkCopySource(path.join(root, 'data', '..', 'secret')), { message: /outside staging_copy_roots/ });
  await t.throwsAsync(policy.checkCopySource('relative/path'), { message: /absolute/ });
  await t.throwsAsync(policy.checkCopySource(path.join(root, 'data', 'missing')), { message: /ENOENT/ });
  // No roots outside public mode: anywhere.
  t.truthy(await new StagingPolicy(OPEN, false).checkCopySource(path.join(root, 'secret')));
});

test('logged URLs carry no query, fragment or credentials', (t) => {
  t.is(loggableUrl('https://u:p@h.example.org:8443/api/jobs/1/files?job_key=SECRET&path=x#f'), 'https://h.example.org:8443/api/jobs/1/files');
  t.is(loggableUrl('::'), '(unparsable URL)');
});

test('retries: only transient errors, as many as the policy says, -1 none, intervals capped', async (t) => {
  t.true(isTransient(new HttpStatusError(500, 'x')));
  t.true(isTransient(new HttpStatusError(429, 'x')));
  t.true(isTransient(new HttpStatusError(408, 'x')));
  t.true(isTransient(new HttpStatusError(425, 'x')));
  t.false(isTransient(new HttpStatusError(403, 'x')));
  t.false(isTransient(new HttpStatusError(404, 'x')));
  t.false(isTransient(new PermanentError('x')));
  t.false(isTransient(new JobRefused('x')));
  t.true(isTransient(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })));
  // A certificate that failed its checks does not heal between retries.
  for (const code of ['DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_HAS_EXPIRED', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'ERR_TLS_CERT_ALTNAME_INVALID']) {
    t.false(isTransient(Object.assign(new Error(code), { code })), code);
  }

  const signal = new AbortController().signal;
  const run = async (maxRetries: number, failures: number, error: Error = new HttpStatusError(503, 'busy')) => {
    let calls = 0;
    const waits: number[] = [];
    const result = await withRetries(
      { maxRetries, intervalStart: 0.001, intervalStep: 0.001, intervalMax: 0.002 },
      signal,
      async () => {
        calls++;
        if (calls <= failures) throw error;
        return 'done';
      },
      (_e, wait) => waits.push(wait),
    ).catch((e: unknown) => e);
    return { result, calls, waits };
  };
  t.like(await run(-1, 1), { calls: 1 });
  t.like(await run(2, 2), { result: 'done', calls: 3 });
  t.like(await run(2, 3), { calls: 3 });
  t.like(await run(0, 5), { result: 'done', calls: 6 });
  t.deepEqual((await run(0, 4)).waits, [0.001, 0.002, 0.002, 0.002]);
  t.like(await run(5, 1, new HttpStatusError(403, 'no')), { calls: 1 });
});
