import test from 'ava';
import * as fs from 'node:fs/promises';
import { check, type CheckOptions } from '../../src/cli/check.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

interface Run {
  readonly code: number;
  readonly lines: string[];
  readonly errors: string[];
}

async function runCheck(options: Omit<CheckOptions, 'out' | 'err' | 'jobId' | 'timeout'> & { jobId?: string; timeout?: string }): Promise<Run> {
  const lines: string[] = [];
  const errors: string[] = [];
  const code = await check({ jobId: '', timeout: '60', ...options, out: (l) => lines.push(l), err: (l) => errors.push(l) });
  return { code, lines, errors };
}

const report = (run: Run): string => [...run.lines, ...run.errors].join('\n');

async function server(t: { teardown(fn: () => Promise<void>): void }, privateAddresses: boolean, allowedEndpoints: string[] = []): Promise<TestServer> {
  const s = await startTestServer({ app: { staging: { allowedEndpoints, copyRoots: [], privateAddresses, concurrency: 4 } } });
  t.teardown(async () => s.stop());
  return s;
}

test('check --remote-transfer: the server pulls every input from the check\'s files endpoint, the outputs are verified', async (t) => {
  const s = await server(t, true);
  const run = await runCheck({ url: s.url, remoteTransfer: true });
  t.is(run.code, 0, report(run));
  t.is(run.lines[run.lines.length - 1], 'check passed');
  t.deepEqual(run.errors, []);
  // 11 files from disk pulled by remote_transfer, the in-memory config as a message; no upload.
  t.true(run.lines.some((l) => /^ok {2}stage-in plan \(11 remote_transfer from http:\/\/127\.0\.0\.1:\d+, 1 message\)$/.test(l)), report(run));
  t.false(run.lines.some((l) => l.startsWith('ok  upload ')), report(run));
  t.true(run.lines.some((l) => /^ok {2}files endpoint \((1[1-9]|[2-9]\d) GETs answered, 1\.\d+ MiB; 0 outputs pushed/.test(l)), report(run));
  // The big index file came back byte-identical (sha256 compared) through the staged-in copy.
  t.true(run.lines.some((l) => l.startsWith('ok  download output dataset_3.dat (1.')), report(run));
  t.deepEqual(await fs.readdir(s.staging), []);
  // The job key is never logged by the server.
  t.false(s.logLines.join('\n').includes('job_key='));
});

test('check --remote-transfer against a server that refuses loopback transfers: exit 1, one line naming the option', async (t) => {
  const s = await server(t, false);
  const run = await runCheck({ url: s.url, remoteTransfer: true });
  t.is(run.code, 1, report(run));
  t.true(run.lines.some((l) => l.startsWith('FAIL submit: ')), report(run));
  t.is(run.errors.length, 1, report(run));
  t.regex(run.errors[0] ?? '', /^magnetar check: the server refused remote staging from http:\/\/127\.0\.0\.1:\d+, a loopback or private address: set staging_private_addresses = true, or list http:\/\/127\.0\.0\.1:\d+\/api\/jobs\/ in staging_allowed_endpoints$/);
  // The refused job was removed again, and nothing was fetched.
  t.deepEqual(await fs.readdir(s.staging), []);
});

test('check --remote-transfer against an allow-list that does not name the endpoint: the option to set', async (t) => {
  const s = await server(t, true, ['https://galaxy.example.org/api/jobs/']);
  const run = await runCheck({ url: s.url, remoteTransfer: true });
  t.is(run.code, 1, report(run));
  t.regex(run.errors[0] ?? '', /^magnetar check: the server refused remote staging from http:\/\/127\.0\.0\.1:\d+: list http:\/\/127\.0\.0\.1:\d+\/api\/jobs\/ in its staging_allowed_endpoints$/, report(run));
});

test('check --remote-transfer with an advertised address the server cannot reach: the job fails in stage-in, the line says so', async (t) => {
  const s = await startTestServer({
    app: { staging: { allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4 } },
  });
  t.teardown(async () => s.stop());
  // 127.0.0.1 is where the endpoint listens; 127.0.0.3 is where the server is told to go (nothing there).
  const run = await runCheck({ url: s.url, remoteTransfer: true, filesHost: '127.0.0.1', filesAdvertise: '127.0.0.3' });
  t.is(run.code, 1, report(run));
  t.true(run.lines.some((l) => l.startsWith('FAIL verify status: the job ended failed')), report(run));
  t.regex(run.errors[0] ?? '', /^magnetar check: the server could not fetch the inputs from http:\/\/127\.0\.0\.3:\d+: the server must reach this machine/, report(run));
});

test('check --remote-transfer usage errors: with --cache, files options without it, a bad host or port', async (t) => {
  const url = 'http://127.0.0.1:1/';
  for (const [options, pattern] of [
    [{ remoteTransfer: true, cache: true }, /--cache and --remote-transfer exclude each other/],
    [{ filesHost: '127.0.0.1' }, /need --remote-transfer/],
    [{ remoteTransfer: true, filesHost: 'http://x/' }, /--files-host "http:\/\/x\/" is not a host name/],
    [{ remoteTransfer: true, filesPort: '70000' }, /--files-port must be a port number/],
  ] as const) {
    const run = await runCheck({ url, ...options });
    t.is(run.code, 2);
    t.regex(run.errors[0] ?? '', pattern);
  }
});
