/**
 * Quoting-aware validators and Galaxy's benign expansions (issue 9 items 2 and 3). Every line a
 * validator accepts here is also run through a real bash, to prove bash takes it the way the
 * validator assumed: quoted values come back byte-identical, and nothing runs.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { shellSecondOpinion } from '../../src/tools/shell-check.js';
import type { Validator, XmlElement } from '../../src/tools/types.js';
import { compileValidator, lintValidator, ValidatorLoadError } from '../../src/tools/validator.js';

const JD = '/tmp/magnetar-quoting-test/1';

function el(name: string, attrs: Record<string, string> = {}, children: XmlElement[] = []): XmlElement {
  return { name, attrs, children, text: '' };
}
const literal = (value: string, attrs: Record<string, string> = {}): XmlElement => el('literal', { value, ...attrs });
const regex = (value: string, attrs: Record<string, string> = {}): XmlElement => el('regex', { value, ...attrs });
const SQ = { single_quote: 'true' };
const DQ = { double_quote: 'true' };
const root = (children: XmlElement[], attrs: Record<string, string> = {}): XmlElement => el('command_validator', attrs, children);
const command = (children: XmlElement[], attrs: Record<string, string> = {}): Validator => compileValidator(root(children, attrs), 'command');

/** A scratch directory for bash runs; the canary must never appear in it. */
function sandbox(t: ExecutionContext): { dir: string; canary: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'magnetar-quoting-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return { dir, canary: path.join(dir, 'CANARY') };
}

/** Run `lines` (one command each) as one bash script in `dir`, with only `env` and PATH set; its stdout. */
function bash(dir: string, lines: readonly string[], env: Record<string, string> = {}): string {
  const script = path.join(dir, 'script.sh');
  fs.writeFileSync(script, `${lines.join('\n')}\n`);
  return execFileSync('bash', [script], { cwd: dir, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', ...env }, encoding: 'utf8' });
}

function accepts(t: ExecutionContext, v: Validator, ...lines: string[]): void {
  for (const line of lines) {
    const result = v.validate(line, JD);
    t.true(result.ok, `should accept ${JSON.stringify(line)}: ${result.ok ? '' : result.reason}`);
    t.is(shellSecondOpinion(line), undefined, `the second opinion should accept ${JSON.stringify(line)}`);
  }
}
function rejects(t: ExecutionContext, v: Validator, ...lines: string[]): void {
  for (const line of lines) t.false(v.validate(line, JD).ok, `should reject ${JSON.stringify(line)}`);
}
function loadError(t: ExecutionContext, children: XmlElement[], pattern: RegExp): void {
  const error = t.throws(() => command(children), { instanceOf: ValidatorLoadError });
  t.regex(error?.message ?? '', pattern);
}

// Values bash must take literally inside single quotes: everything but `'`.
const SINGLE_LITERAL = [
  'a; b', ', ', ';', 'My title', '$(touch CANARY)', '`touch CANARY`', '${IFS}', '$HOME', '"', '\\', 'a\\', '\\n', '*', '?', '[a]', '#x', '~',
  '!!', '&& touch CANARY', '| touch CANARY', '> CANARY', '$GALAXY_SLOTS', '${GALAXY_SLOTS:-$(touch CANARY)}', 'tab\there', 'caf\u00e9', '{a,b}', '',
];
// Values bash must take literally inside double quotes: everything but `"`, `$`, backquote, backslash.
const DOUBLE_LITERAL = ['My title', 'a; b', ', ', "it's", "'", '*', '?', '[a]', '#x', '~', '!!', '&& touch CANARY', '| touch CANARY', '> CANARY', '(x)', '{a,b}', 'caf\u00e9', 'tab\there', ''];

test('single quotes: any character but \', NUL and newline, and bash echoes it back byte-identical', (t) => {
  const { dir, canary } = sandbox(t);
  const v = command([literal('printf'), literal('%s\\n', SQ), regex('.*', SQ)]);
  const lines = SINGLE_LITERAL.map((value) => `printf '%s\\n' '${value}'`);
  accepts(t, v, ...lines);
  t.is(bash(dir, lines), SINGLE_LITERAL.map((value) => `${value}\n`).join(''));
  t.false(fs.existsSync(canary), 'nothing ran');
  // Every way out of the quotes, at the opening and the closing quote.
  rejects(t, v,
    "printf '%s\\n' 'a'b'", "printf '%s\\n' 'a'; touch CANARY; ''", "printf '%s\\n' 'a'\\''b'", "printf '%s\\n' ''$(touch CANARY)''",
    "printf '%s\\n' 'a'`touch CANARY`''", "printf '%s\\n' 'a\nb'", "printf '%s\\n' 'a'\n", "printf '%s\\n' 'a\u0000b'", "printf '%s\\n' 'a\rb'",
    "printf '%s\\n' 'a", "printf '%s\\n' a'", "printf '%s\\n' \"a\"", "printf '%s\\n' 'a' 'b'", "printf '%s\\n' $'a'", "printf '%s\\n' 'a'$'b'",
    `printf '%s\\n' '${JD}'`,
  );
});

test('double quotes: any character but ", $, backquote, backslash, NUL and newline, and bash echoes it back byte-identical', (t) => {
  const { dir, canary } = sandbox(t);
  const v = command([literal('printf'), literal('%s\\n', SQ), regex('.*', DQ)]);
  const lines = DOUBLE_LITERAL.map((value) => `printf '%s\\n' "${value}"`);
  accepts(t, v, ...lines);
  t.is(bash(dir, lines), DOUBLE_LITERAL.map((value) => `${value}\n`).join(''));
  t.false(fs.existsSync(canary), 'nothing ran');
  rejects(t, v,
    'printf \'%s\\n\' "a"b"', 'printf \'%s\\n\' "a"; touch CANARY; ""', 'printf \'%s\\n\' "$(touch CANARY)"', 'printf \'%s\\n\' "`touch CANARY`"',
    'printf \'%s\\n\' "${IFS}"', 'printf \'%s\\n\' "$HOME"', 'printf \'%s\\n\' "$GALAXY_SLOTS"', 'printf \'%s\\n\' "a\\"', 'printf \'%s\\n\' "a\\"; touch CANARY; "',
    'printf \'%s\\n\' "a\\$(id)"', 'printf \'%s\\n\' "a\nb"', 'printf \'%s\\n\' "a\u0000b"', 'printf \'%s\\n\' "a', 'printf \'%s\\n\' \'a\'',
    'printf \'%s\\n\' $"a"', 'printf \'%s\\n\' "a" "b"',
  );
});

test('a quoted value in a parameter or a group holds ", " and ";"; unquoted elements keep the narrow set', (t) => {
  const { dir } = sandbox(t);
  const v = command([
    literal('printf'), literal('[%s]', SQ),
    el('parameter', { name: '--sep' }, [regex("[^']*", SQ)]),
    el('group', { double_quote: 'true', separate_by: ' ' }, [literal('--title'), regex('[^"]+')]),
    regex('[a-z,;]+', { min: '0' }),
  ]);
  const lines = ["printf '[%s]' --sep ', ' \"--title My title; ok\"", "printf '[%s]' --sep=';' \"--title it's\" abc"];
  accepts(t, v, ...lines);
  t.is(bash(dir, lines), '[--sep][, ][--title My title; ok][--sep=;][--title it\'s][abc]');
  rejects(t, v, "printf '[%s]' --sep ', ' \"--title x\" a;b", "printf '[%s]' --sep ', ' \"--title x\" a,b c", "printf '[%s]' --sep , \"--title x\"");
  // Paths stay one narrow token even inside quotes; integers and floats are unchanged.
  const paths = command([literal('cat'), el('input', SQ), literal('>'), el('output', DQ), el('integer', SQ)]);
  accepts(t, paths, `cat '${JD}/inputs/a.dat' > "${JD}/outputs/o" '4'`);
  rejects(t, paths, `cat '${JD}/inputs/a b' > "${JD}/outputs/o" '4'`, `cat '${JD}/inputs/a;b' > "${JD}/outputs/o" '4'`, `cat '${JD}/inputs/../x' > "${JD}/outputs/o" '4'`,
    `cat '${JD}/inputs/a' > "${JD}/outputs/o p" '4'`, `cat '${JD}/inputs/a' > "${JD}/outputs/o" '4 5'`);
});

test('nested quotes follow bash: quotes that close the enclosing ones leave the content unquoted (narrow)', (t) => {
  const { dir, canary } = sandbox(t);
  // single inside single: ''x'' — the content is outside any quotes.
  const reopened = command([literal('printf'), literal('%s', SQ), el('group', SQ, [regex('.*', SQ)])]);
  accepts(t, reopened, "printf '%s' ''abc''");
  rejects(t, reopened, "printf '%s' ''a b''", "printf '%s' ''$(touch CANARY)''", "printf '%s' '';touch CANARY;''");
  // double inside double, the same.
  const redoubled = command([literal('printf'), literal('%s', SQ), el('group', DQ, [regex('.*', DQ)])]);
  rejects(t, redoubled, 'printf \'%s\' ""a b""', 'printf \'%s\' ""$(touch CANARY)""');
  // Both flags on one element: "'…'" — the single quotes are literal inside double quotes.
  const both = command([literal('printf'), literal('%s\\n', SQ), regex('.*', { ...SQ, ...DQ })]);
  accepts(t, both, "printf '%s\\n' \"'a b; c'\"");
  rejects(t, both, "printf '%s\\n' \"'$(touch CANARY)'\"", "printf '%s\\n' \"'`touch CANARY`'\"", "printf '%s\\n' \"'a\"'\"");
  // A single-quoted element inside a double-quoted group: its quotes are literal, its content is double-quoted.
  const mixed = command([literal('printf'), literal('%s\\n', SQ), el('group', DQ, [literal('x='), regex('.*', SQ)])]);
  accepts(t, mixed, "printf '%s\\n' \"x='a b'\"");
  rejects(t, mixed, "printf '%s\\n' \"x='$(touch CANARY)'\"");
  t.is(bash(dir, ["printf '%s' ''abc''", "printf '%s\\n' \"'a b; c'\"", "printf '%s\\n' \"x='a b'\""]), "abc'a b; c'\nx='a b'\n");
  t.false(fs.existsSync(canary));
});

test('a literal that leaves a quote open (or ends in a backslash) makes the state unknown: quoted elements keep the narrow set, lint says why', (t) => {
  const open = [literal('printf'), literal('%s', SQ), el('group', {}, [literal("--title='"), regex('.*'), literal("'")])];
  const v = command(open);
  accepts(t, v, "printf '%s' --title='abc'");
  rejects(t, v, "printf '%s' --title='a b'", "printf '%s' --title='$(id)'");
  t.true(lintValidator(root(open), 'command').some((w) => /literal "--title='".*quoting state is unknown/.test(w)));
  // The trap it closes: a literal ' before a single-quoted regex would leave the regex unquoted.
  const trap = command([literal('printf'), literal("'"), regex('.*', SQ), literal("'")]);
  rejects(t, trap, "printf ' ';touch CANARY;' '", "printf ' 'a b' '");
  accepts(t, trap, "printf ' 'ab' '");
  const backslash = command([literal('printf'), el('group', {}, [literal('\\'), regex('.*', SQ)])]);
  rejects(t, backslash, "printf \\'a b'", "printf \\';touch CANARY;'");
  // Once unknown, a literal's `$` must still be benign wherever the quotes are.
  // ' '$HOME'' leaves $HOME unquoted: the second literal is balanced on its own, not after the first.
  loadError(t, [literal("'"), literal("'$HOME'")], /spells a shell expansion/);
  t.notThrows(() => command([literal("'"), literal('$GALAXY_SLOTS'), literal("'")]));
});

test('config files keep the narrow set inside quotes: their language is the tool\'s, and literals are taken as written', (t) => {
  const v = compileValidator(el('configfile_validator', { name: 'c', separate_by: '*whitespace*' }, [el('parameter', { name: 'title' }, [regex('.*', SQ)]), literal('x <- df$col')]), 'configfile');
  t.true(v.validate("title='My title'\nx <- df$col", JD).ok);
  for (const bad of ["title='a;b'\nx <- df$col", "title='a\\'\nx <- df$col", "title='$(id)'\nx <- df$col"]) t.false(v.validate(bad, JD).ok, bad);
});

test('matching inside quotes stays linear: a 1 MB quoted value is judged promptly', (t) => {
  const v = command([literal('printf'), regex('(a|aa|[^x])*', SQ)]);
  const started = performance.now();
  t.true(v.validate(`printf '${'a '.repeat(500_000)}'`, JD).ok);
  t.false(v.validate(`printf '${'a '.repeat(500_000)}''`, JD).ok);
  t.log(`${(performance.now() - started).toFixed(1)} ms for 2 MB`);
});

test('random lines over shell metacharacters: whatever the validator accepts, the second opinion accepts and bash prints literally', (t) => {
  const { dir, canary } = sandbox(t);
  const v = command([literal('printf'), literal('<%s>\\n', SQ), regex('.*', DQ), regex('.*', SQ), literal('${GALAXY_SLOTS:-1}')]);
  const plain = [' ', ';', 'a', ',', '*', '?', '[x]', '#', '!', '|', '&', '>', '(', ')', '{', '}', '~', '\t', '\u00e9'];
  const hostile = ["'", '"', '$', '`', '\\', '$(touch CANARY)', '`touch CANARY`', '${IFS}', '$GALAXY_SLOTS', "'\\''", '\n', '\u0000'];
  // xorshift32, seeded: the same lines on every run.
  let seed = 0x9e3779b9;
  const random = (n: number): number => {
    seed = (seed ^ (seed << 13)) >>> 0;
    seed = (seed ^ (seed >>> 17)) >>> 0;
    seed = (seed ^ (seed << 5)) >>> 0;
    return seed % n;
  };
  const token = (): string => (random(4) === 0 ? hostile[random(hostile.length)] : plain[random(plain.length)]) ?? '';
  const word = (): string => Array.from({ length: random(6) }, token).join('');
  const accepted: string[] = [];
  const expected: string[] = [];
  let rejected = 0;
  for (let i = 0; i < 4000; i++) {
    const [d, s] = [word(), word()];
    // Mostly well-formed quotes around random content; sometimes random text at the boundaries too.
    const line = random(4) === 0 ? `printf '<%s>\\n' ${word()}"${d}"${word()} '${s}'${word()} \${GALAXY_SLOTS:-1}` : `printf '<%s>\\n' "${d}" '${s}' \${GALAXY_SLOTS:-1}`;
    if (!v.validate(line, JD).ok) {
      rejected++;
      continue;
    }
    t.is(shellSecondOpinion(line), undefined, line);
    accepted.push(line);
    // What the validator says the line is: "D" then 'S' (D holds no ", S no ').
    const dStart = line.indexOf('"');
    const dEnd = line.indexOf('"', dStart + 1);
    const sStart = line.indexOf("'", dEnd + 1);
    const sEnd = line.indexOf("'", sStart + 1);
    expected.push(`<${line.slice(dStart + 1, dEnd)}>\n<${line.slice(sStart + 1, sEnd)}>\n<7>\n`);
  }
  t.log(`${accepted.length} accepted, ${rejected} rejected`);
  t.true(accepted.length > 200 && rejected > 200);
  t.is(bash(dir, accepted, { GALAXY_SLOTS: '7' }), expected.join(''));
  t.false(fs.existsSync(canary), 'nothing ran');
});

// ---------------------------------------------------------------- Galaxy's benign expansions

test('a literal may spell $GALAXY_SLOTS, ${GALAXY_SLOTS:-N}, $GALAXY_MEMORY_MB, ${GALAXY_MEMORY_MB:-N} and $GALAXY_MEMORY_MB_PER_SLOT, unquoted or in double quotes', (t) => {
  const { dir } = sandbox(t);
  const v = command([
    literal('printf'), literal('%s|', SQ),
    literal('$GALAXY_SLOTS'), literal('${GALAXY_SLOTS:-1}', DQ), literal('-m=$GALAXY_MEMORY_MB'), literal('${GALAXY_MEMORY_MB:-4096}'),
    literal('"$GALAXY_MEMORY_MB_PER_SLOT"'), literal('$GALAXY_SLOTS', SQ),
  ]);
  const line = "printf '%s|' $GALAXY_SLOTS \"${GALAXY_SLOTS:-1}\" -m=$GALAXY_MEMORY_MB ${GALAXY_MEMORY_MB:-4096} \"$GALAXY_MEMORY_MB_PER_SLOT\" '$GALAXY_SLOTS'";
  accepts(t, v, line);
  t.is(bash(dir, [line], { GALAXY_SLOTS: '4', GALAXY_MEMORY_MB: '8192', GALAXY_MEMORY_MB_PER_SLOT: '2048' }), '4|4|-m=8192|8192|2048|$GALAXY_SLOTS|');
  t.is(bash(dir, [line]), '1|-m=|4096||$GALAXY_SLOTS|', 'unset: the defaults apply, the rest is empty');
  t.deepEqual(lintValidator(root([literal('tool'), literal('-p'), literal('${GALAXY_SLOTS:-1}'), literal('"$GALAXY_MEMORY_MB"')]), 'command'), []);
});

test('benign lookalikes are refused by the validator and by the second opinion', (t) => {
  const v = command([literal('tool'), literal('--threads'), literal('${GALAXY_SLOTS:-1}'), literal('-m'), literal('$GALAXY_MEMORY_MB'), literal('-x', { min: '0' })]);
  accepts(t, v, 'tool --threads ${GALAXY_SLOTS:-1} -m $GALAXY_MEMORY_MB', 'tool --threads ${GALAXY_SLOTS:-1} -m $GALAXY_MEMORY_MB -x');
  const hostile = [
    '${GALAXY_SLOTS:-$(id)}', '${GALAXY_SLOTS:-`id`}', '${GALAXY_SLOTS:-1;id}', '${GALAXY_SLOTS:=1}', '${GALAXY_SLOTS}', '${GALAXY_SLOTS:-1}x', '$GALAXY_SLOTS',
    '${IFS}', '$IFS', '${GALAXY_SLOTS_X:-1}', '${HOME:-1}', '$(id)', '`id`',
  ];
  for (const h of hostile) rejects(t, v, `tool --threads ${h} -m $GALAXY_MEMORY_MB`);
  for (const h of ['$GALAXY_MEMORY_MB_X', '$GALAXY_MEMORY_MBX', '$GALAXY_MEMORY_MB_PER_SLOTS', '$GALAXY_MEMORY_MB$(id)', '$GALAXY_MEMORY_MB`id`', '${GALAXY_MEMORY_MB}', '$GALAXY_MEMORY_MB;id', '"$GALAXY_MEMORY_MB"']) {
    rejects(t, v, `tool --threads \${GALAXY_SLOTS:-1} -m ${h}`);
  }
  for (const h of ['${GALAXY_SLOTS:-$(id)}', '${GALAXY_SLOTS:-`id`}', '${GALAXY_SLOTS:-1;id}', '${GALAXY_SLOTS:=1}', '$GALAXY_SLOTS_X', '$GALAXY_SLOTSX', '${IFS}', '$IFS', '"$HOME"', '$GALAXY_SLOTS$(id)', '$GALAXY_MEMORY_MB_PER_SLOTS', '"$GALAXY_SLOTS\u00e9"', "$'\\x41'", '$"x"']) {
    t.not(shellSecondOpinion(`tool ${h}`), undefined, h);
  }
  // Harmless to bash (it prints "4x"): only the validator's literals decide whether it may appear.
  t.is(shellSecondOpinion('tool ${GALAXY_SLOTS:-1}x'), undefined);
});

test('nothing after an unbraced benign name may extend it', (t) => {
  const glued = command([el('group', {}, [literal('-t$GALAXY_SLOTS'), regex('[a-z0-9._]*')])]);
  accepts(t, glued, '-t$GALAXY_SLOTS', '-t$GALAXY_SLOTS.x');
  rejects(t, glued, '-t$GALAXY_SLOTSx', '-t$GALAXY_SLOTS_', '-t$GALAXY_SLOTS0', '-t$GALAXY_SLOTSx.y');
  const memory = command([el('group', { separate_by: '' }, [literal('$GALAXY_MEMORY_MB'), literal('_PER_SLOT', { min: '0' })])]);
  rejects(t, memory, '$GALAXY_MEMORY_MB_PER_SLOT');
  accepts(t, memory, '$GALAXY_MEMORY_MB');
  const inQuotes = command([literal('x'), el('group', DQ, [literal('$GALAXY_SLOTS'), regex('.*')])]);
  accepts(t, inQuotes, 'x "$GALAXY_SLOTS"', 'x "$GALAXY_SLOTS-1"', 'x "$GALAXY_SLOTS cores"');
  rejects(t, inQuotes, 'x "$GALAXY_SLOTSX"', 'x "$GALAXY_SLOTS_X"', 'x "$GALAXY_SLOTS\u00e9"');
  // A braced form is self-delimiting.
  accepts(t, command([el('group', {}, [literal('${GALAXY_SLOTS:-1}'), regex('[a-z]*')])]), '${GALAXY_SLOTS:-1}x');
});

test('any other expansion in a literal is a load error; inside single quotes a $ is only text', (t) => {
  for (const value of ['$HOME', '${HOME}', '$', 'a$', '$1', '$?', '$$', '$(id)', '`id`', '$((1+1))', "$'x'", '$"x"', '${GALAXY_SLOTS}', '${GALAXY_SLOTS:-$(id)}',
    '${GALAXY_SLOTS:-1x}', '${GALAXY_SLOTS:=1}', '$GALAXY_SLOTS_X', '$GALAXY_SLOTSX', '${GALAXY_MEMORY_MB_PER_SLOT:-1}', '"$HOME"', '"`id`"', "'x'$HOME"]) {
    loadError(t, [literal(value)], /spells a (shell expansion|command substitution)/);
  }
  loadError(t, [el('parameter', { name: '--$X' }, [])], /parameter "--\$X" name: spells a shell expansion/);
  loadError(t, [el('group', { separate_by: '$IFS' }, [literal('a')])], /separate_by: spells a shell expansion/);
  loadError(t, [el('tool_wrapper', { name: '$X.sh' })], /spells a shell expansion/);
  loadError(t, [literal('$HOME', DQ)], /spells a shell expansion/);
  // Taken literally: single quotes, escapes.
  const v = command([literal('printf'), literal('%s|', SQ), literal('$HOME `id`', SQ), literal("'$(id)'"), literal('\\$HOME'), literal('"\\$HOME \\`id\\`"')]);
  const line = "printf '%s|' '$HOME `id`' '$(id)' \\$HOME \"\\$HOME \\`id\\`\"";
  accepts(t, v, line);
  const { dir } = sandbox(t);
  t.is(bash(dir, [line], { HOME: '/nowhere' }), '$HOME `id`|$(id)|$HOME|$HOME `id`|');
});
