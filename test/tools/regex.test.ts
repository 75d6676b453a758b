import test from 'ava';
import { Automaton, AutomatonTooLarge } from '../../src/tools/automaton.js';
import { alt, CharSet, notFollowedBy, parseRegex, RegexSyntaxError, repeat, seq, set, text, type Pattern } from '../../src/tools/regex.js';

function matcher(source: string, maxDfaStates?: number): (s: string) => boolean {
  const automaton = Automaton.compile(parseRegex(source), maxDfaStates === undefined ? {} : { maxDfaStates });
  return (s) => automaton.match(s).ok;
}

/** A small deterministic PRNG, so failures reproduce. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 0x100000000;
  };
}

function strings(alphabet: string, count: number, maxLength: number, seed: number): string[] {
  const next = random(seed);
  const out = [''];
  for (let i = 0; i < count; i++) {
    let s = '';
    const length = Math.floor(next() * (maxLength + 1));
    for (let j = 0; j < length; j++) s += alphabet[Math.floor(next() * alphabet.length)] ?? '';
    out.push(s);
  }
  return out;
}

// Patterns whose meaning is the same in our dialect, Python and JS (on ASCII without line breaks).
const DIFFERENTIAL: string[] = [
  'a',
  'ab|c',
  'a*',
  'a+b?',
  '(a|b)*abb',
  '(?:ab)+|ba',
  '[a-c]+',
  '[^a]b*',
  '[a-]x',
  '[-a]x',
  '\\d+\\.\\d*',
  '\\w+\\W?',
  '\\s*a\\S',
  'a{2}',
  'a{2,}',
  'a{1,3}b',
  'a{0,2}',
  '(a|aa)+',
  '(a+)+b',
  '(a*)*',
  '(a|b)*a(a|b){4}',
  '.+',
  'a.c',
  '^ab$',
  '\\.\\-\\/\\\\',
  '[\\d\\s]+',
  '\\x61\\u0062',
  '((a|b)(c|d))*',
  '(|a)b',
  'a||b',
];
const ALPHABET = 'abcd 1.-/\\\t]x';

test('the parser and automaton agree with JS RegExp on the common dialect', (t) => {
  const inputs = strings(ALPHABET, 600, 10, 42).concat(strings('ab', 600, 14, 7));
  for (const source of DIFFERENTIAL) {
    const reference = new RegExp(`^(?:${source})$`);
    const ours = matcher(source);
    const tiny = matcher(source, 2); // DFA cap almost at once: exercises the NFA simulation path
    for (const s of inputs) {
      const expected = reference.test(s);
      if (ours(s) !== expected || tiny(s) !== expected) {
        t.fail(`${source} on ${JSON.stringify(s)}: expected ${expected}`);
        return;
      }
    }
  }
  t.pass();
});

test('Python-compatible details: {,n}, a leading ] in a class, \\b in a class, escaped $', (t) => {
  t.true(matcher('a{,2}')(''));
  t.true(matcher('a{,2}')('aa'));
  t.false(matcher('a{,2}')('aaa'));
  t.true(matcher('[^]a]')('b'));
  t.false(matcher('[^]a]')(']'));
  t.true(matcher('[\\b]')('\b'));
  t.true(matcher('a\\$')('a$'));
  t.true(matcher('a\\\\$')('a\\'));
  t.true(matcher('$')(''));
  t.false(matcher('.')('\n'));
  t.true(matcher('.')('\r'));
});

test('every unsupported construct throws RegexSyntaxError naming it', (t) => {
  const cases: [string, RegExp][] = [
    ['(?=a)', /^lookahead at offset 0$/],
    ['(?<=a)', /lookbehind/],
    ['(?>a)', /atomic group/],
    ['(?#x)', /comment group/],
    ['(?(1)a|b)', /conditional group/],
    ['\\k<n>', /named backreference/],
    ['\\P{L}', /unicode property escape/],
    ['\\Z', /anchor \\Z/],
    ['\\0', /octal escape/],
    ['\\x4', /bad \\x escape/],
    ['[a', /missing '\]'/],
    ['[\\d-z]', /bad character range/],
    ['a{1,1001}', /above 1000/],
    ['a{', /not a quantifier/],
    ['[😀]', /Basic Multilingual Plane/],
  ];
  for (const [source, pattern] of cases) {
    const error = t.throws(() => parseRegex(source), { instanceOf: RegexSyntaxError }, source);
    t.regex(error?.message ?? '', pattern, source);
  }
  t.throws(() => parseRegex('('.repeat(200) + ')'.repeat(200)), { instanceOf: RegexSyntaxError, message: /nested too deeply/ });
});

test('CharSet: union, negate, intersect, minus, has', (t) => {
  const az = CharSet.of([0x61, 0x7a]);
  const digits = CharSet.of([0x30, 0x39]);
  const both = az.union(digits);
  t.deepEqual(both.ranges, [0x30, 0x39, 0x61, 0x7a]);
  t.deepEqual(CharSet.of([1, 3], [4, 6], [5, 9]).ranges, [1, 9]);
  t.deepEqual(both.negate().negate().ranges, both.ranges);
  t.deepEqual(both.intersect(CharSet.of([0x35, 0x62])).ranges, [0x35, 0x39, 0x61, 0x62]);
  t.deepEqual(az.minus(CharSet.chars('m')).ranges, [0x61, 0x6c, 0x6e, 0x7a]);
  t.true(both.has(0x30) && both.has(0x7a) && !both.has(0x40));
  t.true(CharSet.ANY.negate().isEmpty);
});

test('the NFA size is capped', (t) => {
  t.throws(() => Automaton.compile(parseRegex('(a{1000}){1000}')), { instanceOf: AutomatonTooLarge });
  t.throws(() => Automaton.compile(parseRegex('[ab]{1000}'), { maxNfaStates: 500 }), { instanceOf: AutomatonTooLarge });
});

test('an exponential DFA stays bounded and the match stays correct', (t) => {
  // (a|b)*a(a|b){n} needs 2^(n+1) DFA states.
  const source = '(a|b)*a(a|b){14}';
  const automaton = Automaton.compile(parseRegex(source), { maxDfaStates: 256 });
  const reference = new RegExp(`^(?:${source})$`);
  for (const s of strings('ab', 300, 40, 3)) t.is(automaton.match(s).ok, reference.test(s), s);
  t.true(automaton.dfaStates <= 256);
});

test('failures report the index and the labels alive there', (t) => {
  const pattern: Pattern = seq({ type: 'label', label: 7, body: text('ab') }, { type: 'label', label: 3, body: text('cd') });
  const automaton = Automaton.compile(pattern);
  t.deepEqual(automaton.match('abcd'), { ok: true });
  t.deepEqual(automaton.match('abx'), { ok: false, index: 2, expected: [3], endExpected: false });
  t.deepEqual(automaton.match('a'), { ok: false, index: 1, expected: [7], endExpected: false });
  t.deepEqual(automaton.match('abcdx'), { ok: false, index: 4, expected: [], endExpected: true });
});

test('guards (one-character negative lookahead) agree with JS RegExp, through the DFA and the plain simulation', (t) => {
  const abc = repeat(set(CharSet.chars('abc')), 0, Infinity);
  const cases: [Pattern, RegExp][] = [
    [seq(abc, text('a'), notFollowedBy(CharSet.chars('b')), abc), /^[abc]*a(?!b)[abc]*$/],
    [seq(text('c'), repeat(seq(text('a'), notFollowedBy(CharSet.chars('a'))), 0, Infinity), abc), /^c(?:a(?!a))*[abc]*$/],
    [seq(abc, notFollowedBy(CharSet.chars('c')), repeat(alt(notFollowedBy(CharSet.chars('b')), text('a')), 0, Infinity), notFollowedBy(CharSet.chars('a'))), /^[abc]*(?!c)(?:(?!b)|a)*(?!a)$/],
    [seq(text('ab'), notFollowedBy(CharSet.chars('abc'))), /^ab(?![abc])$/],
  ];
  for (const [pattern, reference] of cases) {
    for (const limits of [{}, { maxDfaStates: 1 }]) {
      const automaton = Automaton.compile(pattern, limits);
      for (const s of strings('abc', 400, 12, 5)) t.is(automaton.match(s).ok, reference.test(s), `${reference.source} ${JSON.stringify(s)}`);
    }
  }
  const failure = Automaton.compile(seq({ type: 'label', label: 1, body: seq(text('ab'), notFollowedBy(CharSet.chars('c'))) }, { type: 'label', label: 2, body: repeat(set(CharSet.chars('cd')), 0, Infinity) }));
  t.true(failure.match('ab').ok);
  t.true(failure.match('abdc').ok);
  t.like(failure.match('abc'), { ok: false, index: 2 });
});

test('hostile 1 MB inputs are linear', (t) => {
  const hostile = `${'a'.repeat(1_000_000)}!`;
  for (const source of ['(a|aa)+', '(a+)+b', '(a*)*b', '(a|a)*']) {
    const started = performance.now();
    t.false(matcher(source)(hostile));
    t.log(`${source}: ${(performance.now() - started).toFixed(1)} ms`);
  }
  t.true(matcher('(a|aa)+')('a'.repeat(1_000_000)));
});
