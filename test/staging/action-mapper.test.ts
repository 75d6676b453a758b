import test from 'ava';
import { JobRefused } from '../../src/errors.js';
import { fnmatchMatcher, mapAction, parseActionMapper, pythonMatcher, transferUrl } from '../../src/staging/action-mapper.js';

test('python regex: re.match semantics (anchored at the start only; a final $ anchors the end)', (t) => {
  const m = pythonMatcher('primary_.*|galaxy.json|metadata_.*|dataset_\\d+\\.dat|__instrument_.*|dataset_\\d+_files.+|outputs_populated/.*|tool_stdout|tool_stderr', 'p');
  t.true(m('primary_1_out_visible_txt'));
  t.true(m('galaxy.json'));
  t.true(m('galaxy.jsonx')); // re.match does not anchor the end
  t.true(m('dataset_12.dat'));
  t.true(m('dataset_12_files/sub/x'));
  t.false(m('xprimary_1'));
  t.false(m('dataset_.dat'));
  const anchored = pythonMatcher('out_\\d+$', 'p');
  t.true(anchored('out_12'));
  t.false(anchored('out_12x'));
  t.true(pythonMatcher('^a', 'p')('abc'));
});

test('python regex: named groups match as plain groups; backreferences and unsupported syntax are refused', (t) => {
  const m = pythonMatcher('(?P<designation>[^_]+)_(?P<ext>[a-z]+)\\.out', 'p');
  t.true(m('sample1_txt.out'));
  t.false(m('_txt.out'));
  t.throws(() => pythonMatcher('(?P<a>x)(?P=a)', 'p'), { instanceOf: JobRefused, message: /backreferences/ });
  t.throws(() => pythonMatcher('a(?=b)', 'p'), { instanceOf: JobRefused });
  t.throws(() => pythonMatcher('a|b$', 'p'), { instanceOf: JobRefused, message: /top-level/ });
  t.true(pythonMatcher('(?:a|b)$', 'p')('b'));
  // Lazy quantifiers match the same texts as greedy ones.
  t.true(pythonMatcher('a*?b$', 'p')('aab'));
  t.false(pythonMatcher('a+?b$', 'p')('b'));
  t.true(pythonMatcher('x{2,3}?y', 'p')('xxy'));
  t.true(pythonMatcher('(?:ab)??c', 'p')('c'));
  t.throws(() => pythonMatcher('(?i)a', 'p'), { instanceOf: JobRefused, message: /inline flags/ });
  t.throws(() => pythonMatcher('x'.repeat(2000), 'p'), { instanceOf: JobRefused });
});

test('a hostile regex runs in linear time', (t) => {
  const m = pythonMatcher('(a+)+$', 'p');
  const text = `${'a'.repeat(100_000)}!`;
  // A backtracking engine would never finish this; the automaton answers at once.
  t.false(m(text));
  t.true(m('a'.repeat(100_000)));
  t.false(pythonMatcher('(x+x+)+y', 'p')('x'.repeat(50_000)));
});

test('fnmatch: * and ? cross /, classes, negation, a lone [ is literal', (t) => {
  t.true(fnmatchMatcher('/data/*.dat', 'g')('/data/sub/x.dat'));
  t.false(fnmatchMatcher('/data/*.dat', 'g')('/other/x.dat'));
  t.true(fnmatchMatcher('/d/file?[0-9]', 'g')('/d/fileA7'));
  t.false(fnmatchMatcher('/d/[!a]*', 'g')('/d/abc'));
  t.true(fnmatchMatcher('/d/[', 'g')('/d/['));
  t.false(fnmatchMatcher(`${'*a'.repeat(200)}b`, 'g')('a'.repeat(10_000)));
});

test('mapper: first matching rule wins, path types filter, default for default types, none for unstructured', (t) => {
  const mapper = parseActionMapper({
    default_action: 'transfer',
    files_endpoint: 'http://g/api/jobs/1/files?job_key=k',
    paths: [
      { path: '/galaxy/files/', action: 'remote_copy', path_types: 'output' },
      { path: '/galaxy/', action: 'remote_transfer' },
      { path: '/work/*.txt', match_type: 'glob', action: 'none' },
      { path: '/re/\\d+', match_type: 'regex', action: 'remote_transfer', path_types: '*any*' },
      { match_type: 'path_type_only', path_types: 'output_metadata', action: 'remote_transfer' },
    ],
  });
  t.is(mapAction(mapper, '/galaxy/files/dataset_1.dat', 'output'), 'remote_copy');
  t.is(mapAction(mapper, '/galaxy/files/dataset_1.dat', 'input'), 'remote_transfer');
  t.is(mapAction(mapper, '/galaxy//files/../files/x', 'output'), 'remote_copy'); // normalized like abspath
  t.is(mapAction(mapper, '/work/a/b.txt', 'output_workdir'), 'none');
  t.is(mapAction(mapper, '/re/12/x', 'unstructured'), 'remote_transfer');
  t.is(mapAction(mapper, '/m/meta', 'output_metadata'), 'remote_transfer');
  t.is(mapAction(mapper, '/elsewhere', 'output'), 'transfer');
  t.is(mapAction(mapper, '/elsewhere', 'unstructured'), 'none');
  t.is(mapper.filesEndpoint, 'http://g/api/jobs/1/files?job_key=k');
});

test('mapper: malformed or unsupported configuration is refused', (t) => {
  t.throws(() => parseActionMapper('x'));
  t.throws(() => parseActionMapper({ paths: [{ path: '/a', match_type: 'weird' }] }), { message: /unknown match_type/ });
  t.throws(() => parseActionMapper({ paths: Array.from({ length: 300 }, () => ({ path: '/a' })) }), { message: /more than/ });
  t.throws(() => parseActionMapper({ paths: [{ path: '(a)\\1', match_type: 'regex' }] }));
});

test('transfer URL as the client builds it', (t) => {
  t.is(transferUrl('http://g/api/jobs/1/files?job_key=k', '/g/x y.dat', 'output'), 'http://g/api/jobs/1/files?job_key=k&path=%2Fg%2Fx+y.dat&file_type=output');
  t.is(transferUrl('http://g/files', '/a', 'output_workdir'), 'http://g/files?path=%2Fa&file_type=output_workdir');
});
