/**
 * Network-facing hardening (issue 8): hostile download globs, and the server staying responsive
 * to other clients while it is being attacked.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { qs, request, setupJob, type Reply } from '../helpers/client.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import type { AppSection } from '../../src/config/types.js';

async function server(t: ExecutionContext, app: Partial<AppSection> = {}): Promise<TestServer> {
  const s = await startTestServer({ app });
  t.teardown(() => s.stop());
  return s;
}

const download = (s: TestServer, id: string, name: string): Promise<Reply> =>
  request(s.url, 'GET', `/jobs/${id}/files?${qs({ job_id: id, name, type: 'output_workdir' })}`);

/** Time `work` while another client polls status; resolves with the slowest status answer (ms). */
async function whilePolling<T>(s: TestServer, id: string, work: () => Promise<T>): Promise<{ result: T; polls: number; slowest: number }> {
  let done = false;
  let polls = 0;
  let slowest = 0;
  const poller = (async () => {
    while (!done) {
      const start = Date.now();
      const r = await request(s.url, 'GET', `/jobs/${id}/status?${qs({ job_id: id })}`);
      if (r.status !== 200) throw new Error(`status answered ${r.status}`);
      slowest = Math.max(slowest, Date.now() - start);
      polls++;
    }
  })();
  try {
    const result = await work();
    return { result, polls, slowest };
  } finally {
    done = true;
    await poller;
  }
}

test('hostile output_workdir globs answer promptly (400/404) while another client is served', async (t) => {
  const s = await server(t);
  await setupJob(s.url, 'g1');
  await setupJob(s.url, 'other');
  const working = path.join(s.staging, 'g1', 'working');
  await fs.writeFile(path.join(working, 'a'.repeat(200)), 'long\n');
  await fs.writeFile(path.join(working, 'x'.repeat(60)), 'xs\n');
  await fs.writeFile(path.join(working, 'report.txt'), 'report\n');
  await fs.mkdir(path.join(working, 'sub'));
  await fs.writeFile(path.join(working, 'sub', 'deep.txt'), 'deep\n');

  const hostile: readonly [string, number][] = [
    ['*a*a*a*a*a*a*a*b', 404],
    [`${'*a'.repeat(100)}*b`, 404],
    [`${'?*'.repeat(120)}b`, 404],
    ['[a]*(a+)+*(a+)+*(a+)+x*b', 404],
    ['[(x+)+]*[(x+)+]*[(x+)+]*[(x+)+]*y', 404],
    ['[x-]*[x]*[x]*[x]*[x]*[x]*[x]*[x]*[x]*y', 404],
    ['[a', 400],
    ['x*[', 400],
    ['[z-a]*', 400],
    [Array.from({ length: 6 }, () => `*${'a'.repeat(200)}`).join('/'), 400], // over 1,024 characters
  ];
  const { result, polls, slowest } = await whilePolling(s, 'other', async () => {
    const replies: Reply[] = [];
    for (const [name] of hostile) {
      const start = Date.now();
      replies.push(await download(s, 'g1', name));
      t.true(Date.now() - start < 2000, `${name.slice(0, 40)} answered within 2 s`);
    }
    return replies;
  });
  hostile.forEach(([name, status], i) => {
    t.is(result[i]!.status, status, `${name.slice(0, 40)}: ${result[i]!.text}`);
    t.true(['MAG_ERR_BAD_REQUEST', 'MAG_ERR_FILE_NOT_FOUND'].includes(result[i]!.json().error));
  });
  t.true(polls > 0, 'the other client was served meanwhile');
  t.true(slowest < 2000, `slowest concurrent status answer: ${slowest} ms`);
});

test('glob semantics: *, ? and classes match within one component, first match in sorted order', async (t) => {
  const s = await server(t);
  await setupJob(s.url, 'g2');
  const working = path.join(s.staging, 'g2', 'working');
  await fs.mkdir(path.join(working, 'sub'));
  const files: readonly [string, string][] = [['b.txt', 'b'], ['a.txt', 'a'], ['sub/deep.txt', 'deep'], ['c]x', 'bracket'], ['d-1', 'dash']];
  for (const [name, text] of files) {
    await fs.writeFile(path.join(working, name), text);
  }
  const ok = async (name: string, text: string): Promise<void> => {
    const r = await download(s, 'g2', name);
    t.is(r.status, 200, `${name}: ${r.text}`);
    t.is(r.text, text, name);
  };
  await ok('*.txt', 'a');
  await ok('?.txt', 'a');
  await ok('[b]*', 'b');
  await ok('[!a].txt', 'b');
  await ok('[a-b].txt', 'a');
  await ok('c[]]x', 'bracket');
  await ok('d[-]1', 'dash');
  await ok('sub/*', 'deep');
  await ok('*/deep.txt', 'deep');
  await ok('s*b/d??p.t*t', 'deep');
  // `*` and `?` never cross `/`.
  t.is((await download(s, 'g2', '*deep.txt')).status, 404);
  t.is((await download(s, 'g2', 'sub?deep.txt')).status, 404);
  t.true([400, 404].includes((await download(s, 'g2', 'sub[/]deep.txt')).status));
  // Regular-expression syntax is plain text in a glob.
  t.is((await download(s, 'g2', '.*')).status, 404);
  t.is((await download(s, 'g2', 'a.tx(t)?')).status, 404);
});
