import test from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { BadRequest, JobRefused, PathDenied } from '../../src/errors.js';
import { JobDirectory } from '../../src/jobs/directory.js';
import { NAMED_COLLECTOR_PATTERNS, parseCollectorDescriptions } from '../../src/staging/action-mapper.js';
import { DONE_FILE, isTransientCopyError } from '../../src/staging/stage-out.js';
import { makeRoot } from '../helpers/server.js';

function matcher(description: object): (name: string) => boolean {
  const { matchers, ignored } = parseCollectorDescriptions([description]);
  if (matchers.length !== 1 || ignored.length !== 0) throw new Error(`expected one matcher, got ${matchers.length} (${ignored.join('; ')})`);
  return matchers[0]!;
}

test('collector: Galaxy\'s named patterns, verbatim', (t) => {
  t.is(NAMED_COLLECTOR_PATTERNS['__designation_and_ext__'], '(?P<designation>.*)\\.(?P<ext>[^\\._]+)?');
  t.is(NAMED_COLLECTOR_PATTERNS['__name_and_ext__'], '(?P<name>.*)\\.(?P<ext>[^\\.]+)?');
  t.is(NAMED_COLLECTOR_PATTERNS['__default__'], 'primary_DATASET_ID_(?P<designation>[^_]+)_(?P<visible>[^_]+)_(?P<ext>[^_]+)(_(?P<dbkey>[^_]+))?');
  const des = matcher({ pattern: '__designation_and_ext__' });
  t.true(des('sample1.fastq'));
  t.true(des('noext.')); // the extension group is optional
  t.false(des('noext'));
  const name = matcher({ pattern: '__name__' });
  t.true(name('anything'));
});

test('collector: __default__ (also when no pattern is given) stands for any dataset id, as Galaxy without a dataset', (t) => {
  for (const m of [matcher({ pattern: '__default__' }), matcher({})]) {
    t.true(m('primary_12_out_visible_txt'));
    t.true(m('primary_12_out_visible_txt_hg19'));
    t.false(m('primary_x_out_visible_txt'));
    t.false(m('primary_DATASET_ID_out_visible_txt'));
  }
  // The already-expanded form Galaxy's to_dict() sends behaves the same.
  t.true(matcher({ pattern: NAMED_COLLECTOR_PATTERNS['__default__']! })('primary_7_a_hidden_bed'));
});

test('collector: directory, recurse and match_relative_path (Pulsar\'s path below the directory, Galaxy\'s basename when recursing)', (t) => {
  // Pulsar's dynamic_match: the path below the directory, whatever recurse says.
  const flat = matcher({ pattern: '(?P<designation>[a-z]+)\\.txt$', directory: 'out/' });
  t.true(flat('out/a.txt'));
  t.false(flat('a.txt'));
  t.false(flat('outx/a.txt'));
  t.false(flat('out/sub/a.txt'));
  const everything = matcher({ pattern: '.*\\.txt$', directory: './out' });
  t.true(everything('out/sub/a.txt'));
  // Galaxy's walk with recurse and without match_relative_path matches a nested file by its name.
  const recursing = matcher({ pattern: '(?P<designation>[a-z]+)\\.txt$', directory: 'out', recurse: 'True' });
  t.true(recursing('out/sub/deeper/a.txt'));
  const relative = matcher({ pattern: '(?P<designation>[a-z]+)\\.txt$', directory: 'out', recurse: true, match_relative_path: 'yes' });
  t.false(relative('out/sub/a.txt'));
  t.true(matcher({ pattern: 'sub/[a-z]+\\.txt$', directory: 'out', recurse: true, match_relative_path: true })('out/sub/a.txt'));
  // No directory: the whole name relative to the listed directory.
  const top = matcher({ pattern: 'res/.*' });
  t.true(top('res/x'));
  t.false(top('x/res/y'));
  // A directory "." is the working directory itself.
  t.true(matcher({ pattern: 'a', directory: '.' })('a'));
});

test('collector: a directory outside the working directory matches nothing; tool_provided_metadata descriptions add no pattern', (t) => {
  const r = parseCollectorDescriptions([
    { pattern: '.*', directory: '../x' },
    { pattern: '.*', directory: '/etc' },
    { pattern: '.*', directory: 'a/../../b' },
    { discover_via: 'tool_provided_metadata' },
    { from_provided_metadata: 'true' },
  ]);
  t.is(r.matchers.length, 0);
  t.is(r.ignored.length, 3);
  t.regex(r.ignored[0]!, /outside the working directory/);
});

test('collector: bounded and checked — too many, not objects, bad booleans, unsupported regex', (t) => {
  t.throws(() => parseCollectorDescriptions(Array.from({ length: 257 }, () => ({ pattern: 'a' }))), { instanceOf: BadRequest, message: /at most 256/ });
  t.throws(() => parseCollectorDescriptions({ pattern: 'a' }), { instanceOf: BadRequest });
  t.throws(() => parseCollectorDescriptions(['a']), { instanceOf: BadRequest });
  t.throws(() => parseCollectorDescriptions([{ pattern: 'a', recurse: 'maybe' }]), { instanceOf: BadRequest, message: /recurse/ });
  t.throws(() => parseCollectorDescriptions([{ pattern: 3 }]), { instanceOf: BadRequest });
  t.throws(() => parseCollectorDescriptions([{ discover_via: 'magic' }]), { instanceOf: BadRequest });
  t.throws(() => parseCollectorDescriptions([{ pattern: '(?P<a>x)(?P=a)' }]), { instanceOf: JobRefused, message: /backreferences/ });
  t.throws(() => parseCollectorDescriptions([{ pattern: 'x'.repeat(2000) }]), { instanceOf: JobRefused });
  t.deepEqual(parseCollectorDescriptions(null), { matchers: [], ignored: [] });
});

test('collector: a hostile pattern is matched in linear time', (t) => {
  const m = matcher({ pattern: '(a+)+$', directory: 'd', recurse: true });
  // A backtracking engine would never finish these; the automaton answers at once.
  t.false(m(`d/${'a'.repeat(100_000)}!`));
  t.false(m(`d/${'a'.repeat(50_000)}/${'a'.repeat(50_000)}!`));
  t.true(m(`d/x/${'a'.repeat(100_000)}`));
});

test('remote_copy retries: only transient I/O errors (EIO, EAGAIN, EBUSY…), never ENOENT/EACCES/ENOSPC or a refusal', async (t) => {
  const missing = await fs.open('/nonexistent-magnetar-dir/x').catch((e: unknown) => e);
  t.false(isTransientCopyError(missing));
  for (const code of ['EIO', 'EAGAIN', 'EBUSY', 'ESTALE', 'EMFILE']) t.true(isTransientCopyError(Object.assign(new Error(code), { code })), code);
  for (const code of ['ENOENT', 'EACCES', 'EPERM', 'ENOSPC', 'EROFS', 'ENOTDIR', 'EEXIST']) t.false(isTransientCopyError(Object.assign(new Error(code), { code })), code);
  t.false(isTransientCopyError(new JobRefused('remote_copy destination is outside staging_copy_roots')));
  t.false(isTransientCopyError('EIO'));
});

test('the stage-out progress file is a reserved job-directory name: no jobdir upload, no output_jobdir download', async (t) => {
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  const dir = new JobDirectory(root, 'j1');
  await dir.create();
  t.is(DONE_FILE, '.upload-stage-out.done');
  await t.throwsAsync(dir.pathFor(DONE_FILE, 'jobdir', true), { instanceOf: PathDenied, message: /reserved/ });
  await fs.writeFile(path.join(dir.root, DONE_FILE), '[]');
  await t.throwsAsync(dir.openDownload(DONE_FILE, 'output_jobdir'), { instanceOf: PathDenied });
  t.false((await dir.topLevelNames()).includes(DONE_FILE));
});
