/**
 * Validator engine benchmark: validations per second on realistic command lines, and the worst
 * time to judge a 1 MB hostile command line. Prints nothing; the caller reports the object.
 */
import type { Validator, XmlElement } from '../src/tools/types.js';
import { compileValidator } from '../src/tools/validator.js';

const JOB_DIRECTORY = '/var/lib/magnetar/staging/4242';
const RATE_TARGET = 100_000;
const HOSTILE_TARGET_MS = 50;

function el(name: string, attrs: Record<string, string> = {}, children: XmlElement[] = []): XmlElement {
  return { name, attrs, children, text: '' };
}
const literal = (value: string, attrs: Record<string, string> = {}): XmlElement => el('literal', { value, ...attrs });
const command = (...children: XmlElement[]): Validator => compileValidator(el('command_validator', {}, children), 'command');

interface Case {
  readonly name: string;
  readonly validator: Validator;
  readonly line: string;
}

function realistic(): Case[] {
  const jd = JOB_DIRECTORY;
  const bwa = command(
    literal('bwa'),
    literal('mem'),
    el('parameter', { name: '-t' }, [el('integer')]),
    el('parameter', { name: '-M', min: '0' }),
    el('parameter', { name: '-R', min: '0' }, [el('regex', { value: '@?[A-Za-z0-9:_.-]+', single_quote: 'true' })]),
    el('input'),
    el('input'),
    el('input', { min: '0' }),
    literal('>'),
    el('output'),
  );
  const cat = command(literal('cat'), el('input', { max: '20' }), literal('>'), el('output'));
  const tophat = command(
    literal('tophat2'),
    el('parameter', { name: '--mate-std-dev', min: '0' }, [el('float')]),
    el('parameter', { name: '--mate-inner-dist', min: '0' }, [el('integer')]),
    el('parameter', { name: '--library-type', min: '0' }, [el('regex', { value: 'fr-(unstranded|firststrand|secondstrand)' })]),
    el('parameter', { name: '-o' }, [el('output', { from_work_dir: 'tophat_out' })]),
    el('input'),
    el('input', { min: '0' }),
  );
  const wrapper = command(literal('python'), el('tool_wrapper', { name: 'tool1_wrapper.py' }), el('parameter', { name: '--config' }, [el('configfile', { name: 'config1' })]));
  return [
    { name: 'bwa', validator: bwa, line: `bwa mem -t 8 -M -R '@RG:ID:1_SM:x' ${jd}/inputs/ref.fa ${jd}/inputs/reads_1.fq.gz ${jd}/inputs/reads_2.fq.gz > ${jd}/outputs/aln.sam` },
    { name: 'cat', validator: cat, line: `cat ${jd}/inputs/dataset_1.dat ${jd}/inputs/dataset_2.dat ${jd}/inputs/dataset_3.dat > ${jd}/outputs/out.txt` },
    { name: 'tophat2', validator: tophat, line: `tophat2 --mate-std-dev=20.5 --mate-inner-dist 200 --library-type fr-firststrand -o ${jd}/working/tophat_out ${jd}/inputs/genome ${jd}/inputs/reads.fq` },
    { name: 'wrapper', validator: wrapper, line: `python ${jd}/tool_files/tool1_wrapper.py --config ${jd}/configs/config1` },
  ];
}

function rate(c: Case, millis: number): number {
  const check = c.validator.validate(c.line, JOB_DIRECTORY);
  if (!check.ok) throw new Error(`bench line for ${c.name} does not validate: ${check.reason}`);
  let count = 0;
  const started = performance.now();
  let elapsed = 0;
  while (elapsed < millis) {
    for (let i = 0; i < 1000; i++) c.validator.validate(c.line, JOB_DIRECTORY);
    count += 1000;
    elapsed = performance.now() - started;
  }
  return Math.round((count / elapsed) * 1000);
}

/** Worst of several runs (the first one includes building the DFA states it needs). */
function hostileMillis(pattern: string, line: string, runs: number): number {
  const validator = command(literal('tophat2'), el('regex', { value: pattern }));
  let worst = 0;
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    if (validator.validate(line, JOB_DIRECTORY).ok) throw new Error(`hostile line accepted by ${pattern}`);
    worst = Math.max(worst, performance.now() - started);
  }
  return Math.round(worst * 10) / 10;
}

export async function validatorBench(): Promise<object> {
  const cases = realistic();
  for (const c of cases) rate(c, 100); // warm-up
  const perCase: Record<string, number> = {};
  for (const c of cases) perCase[c.name] = rate(c, 500);
  const slowest = Math.min(...Object.values(perCase));

  // Fresh text each time so no engine caches a flattened string between patterns.
  const hostile: Record<string, number> = {};
  for (const pattern of ['(a|aa)+', '(a+)+b', '(a*)*', '[a-z]*x', '(a|b)*a(a|b){12}']) {
    hostile[pattern] = hostileMillis(pattern, `tophat2 ${'a'.repeat(1_000_000)}!`, 5);
  }
  const worstHostile = Math.max(...Object.values(hostile));
  await Promise.resolve();
  return {
    validations_per_s: perCase,
    hostile_1mb_ms: hostile,
    targets: [
      { target: `validations/s >= ${RATE_TARGET} (slowest realistic line)`, value: slowest, pass: slowest >= RATE_TARGET },
      { target: `1 MB hostile line <= ${HOSTILE_TARGET_MS} ms (worst)`, value: worstHostile, pass: worstHostile <= HOSTILE_TARGET_MS },
    ],
  };
}
