import test from 'ava';
import { shellSecondOpinion } from '../../src/tools/authorizer.js';

test('shell-quote second opinion: expansions, substitutions, globs, backquotes and comments are refused; plain words and operators pass', (t) => {
  for (const line of ["cat '/j/inputs/a' > '/j/outputs/b'", 'sort -k 2 /j/inputs/a | head -n 5 > /j/outputs/o', 'tool --x=1 2>&1']) {
    t.is(shellSecondOpinion(line), undefined, line);
  }
  for (const line of ['cat $HOME', 'cat "$(id)"', 'cat ${X}', 'cat `id`', 'cat /j/inputs/* > o', 'cat a # > o', 'cat a?']) {
    t.not(shellSecondOpinion(line), undefined, line);
  }
});
