import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { JobRefused } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { ToolboxAuthorizer, judgeCommandLine, MAX_TOOL_SCRIPT_BYTES, type ReadResult } from '../../src/tools/authorizer.js';
import {
  GALAXY_SHELLS, INTEGRITY_BLOCK, SCRIPT_PREAMBLES, WRAPPER_SHAPES, defaultWrapper, isPlainJobDirectory, matchToolScript, matchWrapper,
  renderShape, unvouchedFeature, type ScriptLocation,
} from '../../src/tools/galaxy-shapes.js';
import { loadTool } from '../../src/tools/toolbox.js';
import type { ToolDefinition, Validator } from '../../src/tools/types.js';

const TOOLBOX_DIR = fileURLToPath(new URL('../../../toolbox/', import.meta.url));
const JOB = '/srv/staging/42';
const CAT = `cat '${JOB}/inputs/dataset_1.dat' > '${JOB}/outputs/dataset_2.dat'`;
const TAIL = ` > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > ${JOB}/galaxy_42.ec; sh -c "exit $return_code"`;

// GALAXY-JOBS.md, byte for byte (Galaxy 24.1's build_command, job 42 in /srv/staging/42).
const DOC_COMMAND_LINE = `/bin/bash /srv/staging/42/working/tool_script.sh > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > /srv/staging/42/galaxy_42.ec; sh -c "exit $return_code"`;
const DOC_TOOL = `python '/srv/staging/42/tool_files/cat_wrapper.py' '/srv/staging/42/inputs/dataset_1.dat' '/srv/staging/42/outputs/dataset_2.dat'`;
const DOC_SCRIPT_DEFAULT = `#!/bin/bash

# The following block can be used by the job system
# to ensure this script is runnable before actually attempting
# to run it.
if [ -n "$ABC_TEST_JOB_SCRIPT_INTEGRITY_XYZ" ]; then
    exit 42
fi
${DOC_TOOL}`;
const DOC_SCRIPT_NO_INTEGRITY = `#!/bin/bash\n${DOC_TOOL}`;
const DOC_SCRIPT_STRICT = `#!/bin/bash\nset -e\n${DOC_TOOL}`;
const DOC_SHELL_NONE = `${DOC_TOOL} > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > /srv/staging/42/galaxy_42.ec; sh -c "exit $return_code"`;

async function cat1(): Promise<ToolDefinition> {
  const file = path.join(TOOLBOX_DIR, 'cat1', 'cat1.xml');
  return (await loadTool(file, { toolbox: file })).definition;
}

test('GALAXY-JOBS.md: every documented shape is recognised, byte for byte, and yields the tool command', (t) => {
  const wrapper = matchWrapper(DOC_COMMAND_LINE, JOB);
  t.like(wrapper, { kind: 'script', script: 'working/tool_script.sh', shell: '/bin/bash', ecId: '42' });
  for (const [label, script, preamble] of [
    ['defaults', DOC_SCRIPT_DEFAULT, SCRIPT_PREAMBLES[0]],
    ['check_job_script_integrity: false', DOC_SCRIPT_NO_INTEGRITY, SCRIPT_PREAMBLES[1]],
    ['strict_shell: true', DOC_SCRIPT_STRICT, SCRIPT_PREAMBLES[2]],
  ] as const) {
    const match = matchToolScript(script, '/bin/bash');
    t.deepEqual(match, { ok: true, preamble, toolCommand: DOC_TOOL }, label);
  }
  t.like(matchWrapper(DOC_SHELL_NONE, JOB), { kind: 'inline', toolCommand: DOC_TOOL, ecId: '42' });
  // Local dependency resolution: the script has the right form, the tool command does not.
  const deps = matchToolScript(`#!/bin/bash\n. /galaxy/deps/samtools/1.9/env.sh; ${DOC_TOOL}`, '/bin/bash');
  t.true(deps.ok);
  t.regex(unvouchedFeature(deps.ok ? deps.toolCommand : '') ?? '', /dependency_resolution: none/);
});

for (const shape of WRAPPER_SHAPES) {
  for (const shell of GALAXY_SHELLS) {
    test(`wrapper shape "${shape.name}" with ${shell}: recognised for this job, with Galaxy's own job id`, (t) => {
      for (const ecId of ['42', '1', 'a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5', 'job_7-x']) {
        const line = renderShape(shape.segments, { jobDirectory: JOB, shell, ecId, toolCommand: CAT });
        const match = matchWrapper(line, JOB);
        if (shape.script === undefined) {
          t.deepEqual(match, { kind: 'inline', shape, toolCommand: CAT, ecId }, line);
        } else {
          t.deepEqual(match, { kind: 'script', shape, script: shape.script, shell, ecId }, line);
        }
        t.is(matchWrapper(line, '/srv/staging/43'), undefined, 'another job directory');
        t.is(matchWrapper(line, `${JOB}/x`), undefined, 'a directory inside the job');
      }
    });
  }
}

for (const preamble of SCRIPT_PREAMBLES) {
  for (const shell of GALAXY_SHELLS) {
    test(`tool_script.sh preamble "${preamble.name}" with ${shell}: exactly one tool command follows`, (t) => {
      const head = renderShape(preamble.segments, { jobDirectory: JOB, shell });
      t.true(head.startsWith(`#!${shell}\n`));
      t.deepEqual(matchToolScript(head + CAT, shell), { ok: true, preamble, toolCommand: CAT });
      t.deepEqual(matchToolScript(`${head}${CAT}\n`, shell), { ok: true, preamble, toolCommand: CAT }, 'one final newline');
      t.deepEqual(matchToolScript(head + CAT, undefined), { ok: true, preamble, toolCommand: CAT }, 'any shell for a copy that does not run');
      for (const tampered of [`${head}${CAT}\nid`, `${head}${CAT}\n\n`, `${head}id\n${CAT}`, `${head}${CAT}\r\nid`, `${head}`, `${head}\n${CAT}`]) {
        // Never the tool command alone: either no match, or a "command" the validator will judge (`set -e`).
        const match = matchToolScript(tampered, shell);
        t.false(match.ok && match.toolCommand.includes(CAT), JSON.stringify(tampered));
      }
      const other = GALAXY_SHELLS.find((s) => s !== shell)!;
      t.regex((matchToolScript(head + CAT, other) as { reason: string }).reason, /shebang/, 'the shebang names the wrapper\'s interpreter');
    });
  }
}

test('the table keeps its matching unambiguous: the job id slot is followed by text that cannot continue an id', (t) => {
  for (const shape of WRAPPER_SHAPES) {
    const segments = shape.segments;
    segments.forEach((segment, i) => {
      if (!('slot' in segment) || segment.slot !== 'ecId') return;
      const next = segments[i + 1];
      t.true(next !== undefined && 'text' in next && !/^[A-Za-z0-9_-]/.test(next.text), shape.name);
    });
    t.true(segments.filter((s) => 'slot' in s && s.slot === 'tool').length <= 1, shape.name);
  }
  t.is(INTEGRITY_BLOCK.split('\n').length, 8);
  t.is(defaultWrapper(JOB, '42'), `/bin/bash ${JOB}/tool_script.sh${TAIL}`);
});

test('wrapper tampering is refused: statements before or after, other scripts, exit-code files and redirections outside the job', async (t) => {
  const validator = (await cat1()).commandValidator!;
  const script: ReadResult = { ok: true, text: `#!/bin/bash\n${CAT}` };
  const good = `/bin/bash ${JOB}/tool_script.sh${TAIL}`;
  t.like(await judgeCommandLine(validator, good, JOB, async () => script), { ok: true });
  const tampered = [
    `touch /tmp/x; ${good}`,
    `${good}; touch /tmp/x`,
    `${good} && touch /tmp/x`,
    `${good}\ntouch /tmp/x`,
    `${good} `,
    ` ${good}`,
    good.replace(`${JOB}/tool_script.sh`, `${JOB}/inputs/tool_script.sh`),
    good.replace(`${JOB}/tool_script.sh`, `${JOB}/working/other.sh`),
    good.replace(`${JOB}/tool_script.sh`, `${JOB}/../41/tool_script.sh`),
    good.replace(`${JOB}/tool_script.sh`, '/tmp/tool_script.sh'),
    good.replace(`${JOB}/tool_script.sh`, `${JOB}/tool_script.sh ${JOB}/inputs/x`),
    good.replace(`> ${JOB}/galaxy_42.ec`, '> /tmp/galaxy_42.ec'),
    good.replace(`> ${JOB}/galaxy_42.ec`, `> ${JOB}/working/galaxy_42.ec`),
    good.replace('galaxy_42.ec', 'galaxy_../../x.ec'),
    good.replace('galaxy_42.ec', 'galaxy_42/x.ec'),
    good.replace('galaxy_42.ec', 'galaxy_.ec'),
    good.replace('galaxy_42.ec', `galaxy_${'1'.repeat(129)}.ec`),
    good.replace('galaxy_42.ec', 'galaxy_$(id).ec'),
    good.replace("'../metadata/tool_stdout'", "'/tmp/tool_stdout'"),
    good.replace("2> '../metadata/tool_stderr'", "2> '../metadata/tool_stderr' 2> /tmp/e"),
    good.replace("'../metadata/tool_stderr'", "'../../../tmp/e'"),
    good.replace('sh -c "exit $return_code"', 'sh -c "exit $return_code; id"'),
    good.replace('/bin/bash ', '/bin/zsh '),
    good.replace('/bin/bash ', 'python '),
    good.replace('/bin/bash ', '/bin/bash  '),
    good.replace('/bin/bash ', '/bin/bash -x '),
    good.replace('; return_code', ';return_code'),
    `${CAT}${TAIL.replace(`${JOB}/galaxy_42.ec`, '/tmp/galaxy_42.ec')}`,
    TAIL.slice(1),
  ];
  for (const line of tampered) {
    t.not(matchWrapper(line, JOB)?.kind, 'script', line);
    t.like(await judgeCommandLine(validator, line, JOB, async () => script), { ok: false }, line);
  }
  // The shell: none shape takes everything before the tail as the tool command, for the validator to judge.
  t.like(matchWrapper(`touch /tmp/x; ${CAT}${TAIL}`, JOB), { kind: 'inline', toolCommand: `touch /tmp/x; ${CAT}` });
});

test('a job directory that would need quoting never matches a shape (Galaxy writes it unquoted)', async (t) => {
  t.true(isPlainJobDirectory(JOB));
  for (const dir of ['/srv/stag ing/42', '/srv/$x/42', "/srv/'/42", '/srv/*/42', 'relative/42', '/srv/a;b/42']) {
    t.false(isPlainJobDirectory(dir), dir);
    t.is(matchWrapper(`/bin/bash ${dir}/tool_script.sh${TAIL.replaceAll(JOB, dir)}`, dir), undefined, dir);
  }
  const validator: Validator = { validate: () => ({ ok: false, reason: 'no' }) };
  const verdict = await judgeCommandLine(validator, `/bin/bash /srv/stag ing/42/tool_script.sh${TAIL}`, '/srv/stag ing/42', async () => ({ ok: false, reason: 'unused' }));
  t.regex((verdict as { reason: string }).reason, /staging_directory has a character/);
});

test('script tampering: an edited integrity block, an extra line, a chained statement are refused with a reason', (t) => {
  const integrity = (block: string): string => `#!/bin/bash\n${block}${CAT}`;
  t.true(matchToolScript(integrity(INTEGRITY_BLOCK), '/bin/bash').ok);
  for (const edited of [INTEGRITY_BLOCK.replace('exit 42', 'exit 0'), INTEGRITY_BLOCK.replace('fi\n', 'fi\nid\n'), INTEGRITY_BLOCK.replace('    exit', '\texit')]) {
    const match = matchToolScript(integrity(edited), '/bin/bash');
    t.false(match.ok);
    t.regex((match as { reason: string }).reason, /integrity block/);
  }
  const extra = matchToolScript(`#!/bin/bash\n${CAT}\ntouch /tmp/x`, '/bin/bash');
  t.regex((extra as { reason: string }).reason, /more than one line/);
  const twice = matchToolScript(`#!/bin/bash\nset -e\nset -e\n${CAT}`, '/bin/bash');
  t.false(twice.ok);
  t.regex((matchToolScript(`#!/bin/sh\n${CAT}`, '/bin/bash') as { reason: string }).reason, /#!\/bin\/bash/);
  t.regex((matchToolScript(`${CAT}`, '/bin/bash') as { reason: string }).reason, /shebang/);
  // A chained `;` keeps the form (one line) and is the validator's to refuse.
  t.like(matchToolScript(`#!/bin/bash\n${CAT}; id`, '/bin/bash'), { ok: true, toolCommand: `${CAT}; id` });
});

test('what Galaxy adds that a public server cannot vouch for is named in the refusal', (t) => {
  t.regex(unvouchedFeature(`. /galaxy/deps/samtools/1.9/env.sh; ${CAT}`)!, /dependency_resolution: none/);
  t.regex(unvouchedFeature(`source /deps/x; ${CAT}`)!, /dependency_resolution: none/);
  t.regex(unvouchedFeature(`[ "$(basename "$CONDA_DEFAULT_ENV")" = x ] || . /c/bin/activate /c/envs/x; ${CAT}`)!, /dependency_resolution/);
  t.regex(unvouchedFeature(`${DOC_COMMAND_LINE}; cd '${JOB}'; [ "$GALAXY_VIRTUAL_ENV" = "None" ] && GALAXY_VIRTUAL_ENV="$_GALAXY_VIRTUAL_ENV"; _galaxy_setup_environment True; python metadata/set.py`)!, /remote_metadata/);
  t.regex(unvouchedFeature(`docker run --rm -v ${JOB}:${JOB} busybox /bin/bash ${JOB}/tool_script.sh`)!, /container/);
  t.regex(unvouchedFeature(`singularity -s exec -B ${JOB} /img.sif /bin/bash ${JOB}/tool_script.sh`)!, /container/);
  t.is(unvouchedFeature(CAT), undefined);
});

test('judgeCommandLine: the validator judges the tool command of every shape; the legacy form is unchanged', async (t) => {
  const tool = await cat1();
  const validator = tool.commandValidator!;
  const scripts = new Map<ScriptLocation, string>();
  const read = async (location: ScriptLocation): Promise<ReadResult> => {
    const text = scripts.get(location);
    return text === undefined ? { ok: false, reason: 'no such file' } : { ok: true, text };
  };
  t.like(await judgeCommandLine(validator, CAT, JOB, read), { ok: true, detail: 'tool command sent directly' });
  t.regex(((await judgeCommandLine(validator, `${CAT}; id`, JOB, read)) as { reason: string }).reason, /^command_validator rejected the command line: /);
  const line = `/bin/bash ${JOB}/working/tool_script.sh${TAIL}`;
  t.like(await judgeCommandLine(validator, line, JOB, read), { ok: false, step: 'tool script' });
  scripts.set('working/tool_script.sh', `#!/bin/bash\n${INTEGRITY_BLOCK}${CAT}`);
  t.like(await judgeCommandLine(validator, line, JOB, read), { ok: true });
  scripts.set('working/tool_script.sh', `#!/bin/bash\n${CAT}; id`);
  const chained = await judgeCommandLine(validator, line, JOB, read);
  t.false(chained.ok);
  t.regex((chained as { reason: string }).reason, /command_validator rejected the tool command in working\/tool_script.sh/);
  scripts.set('working/tool_script.sh', `#!/bin/bash\n. /galaxy/deps/x/env.sh; ${CAT}`);
  t.regex(((await judgeCommandLine(validator, line, JOB, read)) as { reason: string }).reason, /dependency_resolution: none/);
  t.like(await judgeCommandLine(validator, `${CAT}${TAIL}`, JOB, read), { ok: true, detail: 'Galaxy wrapper: shell: none (the tool command inline)' });
  const inlineChained = await judgeCommandLine(validator, `${CAT}; id${TAIL}`, JOB, read);
  t.false(inlineChained.ok);
  const otherJob = await judgeCommandLine(validator, line.replaceAll(JOB, '/srv/staging/41'), JOB, read);
  t.regex((otherJob as { reason: string }).reason, /not one of Galaxy's wrapper shapes for this job/);
  const docker = await judgeCommandLine(validator, `docker run --rm busybox ${line}`, JOB, read);
  t.regex((docker as { reason: string }).reason, /docker_enabled/);
});

test('a tool command that names tool_script.sh is refused: a tool could write over the script bash is reading', async (t) => {
  const tool = await cat1();
  const scripts = new Map<ScriptLocation, string>([['tool_script.sh', `#!/bin/bash\ncat '${JOB}/inputs/tool_script.sh' > '${JOB}/outputs/o'`]]);
  const verdict = await judgeCommandLine(tool.commandValidator!, `/bin/bash ${JOB}/tool_script.sh${TAIL}`, JOB, async (l) => ({ ok: true, text: scripts.get(l)! }));
  t.regex((verdict as { reason: string }).reason, /names tool_script.sh/);
});

test('the server reads tool_script.sh once, as a bounded regular UTF-8 file in the job, never through a link', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-galaxy-shapes-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const job = path.join(root, 'j1');
  await fs.mkdir(path.join(job, 'working'), { recursive: true });
  await fs.mkdir(path.join(job, 'configs'));
  const tool = await cat1();
  const log = createLogger({ destination: new Writable({ write: (_chunk, _enc, cb) => cb() }) });
  const authorizer = new ToolboxAuthorizer({ get: () => tool, allowedEnv: () => new Set() }, { expectedDigest: async () => undefined }, [], [], log);
  const cat = `cat '${job}/inputs/a' > '${job}/outputs/b'`;
  const tail = ` > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > ${job}/galaxy_7.ec; sh -c "exit $return_code"`;
  const facts = (commandLine: string) => ({ jobId: 'j1', toolId: 'cat1', toolVersion: undefined, jobDirectory: job, commandLine, submitParams: {}, remoteStagingSetup: 0, hasDependencies: false });
  const submit = async (commandLine: string) => authorizer.authorizeSubmit(facts(commandLine), path.join(job, 'configs'));
  const line = `/bin/bash ${job}/tool_script.sh${tail}`;
  const script = path.join(job, 'tool_script.sh');

  t.regex((await t.throwsAsync(submit(line), { instanceOf: JobRefused }))!.message, /tool_script.sh: no such file/);
  await fs.writeFile(script, `#!/bin/bash\n${cat}\n`);
  await t.notThrowsAsync(submit(line));
  await fs.writeFile(path.join(root, 'elsewhere.sh'), `#!/bin/bash\n${cat}\n`);
  await fs.rm(script);
  await fs.symlink(path.join(root, 'elsewhere.sh'), script);
  t.regex((await t.throwsAsync(submit(line), { instanceOf: JobRefused }))!.message, /symbolic link/);
  await fs.rm(script);
  await fs.mkdir(script);
  t.regex((await t.throwsAsync(submit(line), { instanceOf: JobRefused }))!.message, /not a regular file/);
  await fs.rmdir(script);
  await fs.writeFile(script, Buffer.concat([Buffer.from(`#!/bin/bash\ncat '${job}/inputs/a`), Buffer.from([0xff, 0xfe]), Buffer.from(`' > '${job}/outputs/b'`)]));
  t.regex((await t.throwsAsync(submit(line), { instanceOf: JobRefused }))!.message, /not valid UTF-8/);
  await fs.writeFile(script, `#!/bin/bash\n${cat}\0`);
  t.regex((await t.throwsAsync(submit(line), { instanceOf: JobRefused }))!.message, /NUL/);
  await fs.writeFile(script, `#!/bin/bash\n${cat}`);
  await fs.truncate(script, MAX_TOOL_SCRIPT_BYTES + 1);
  t.regex((await t.throwsAsync(submit(line), { instanceOf: JobRefused }))!.message, /larger than/);
  await fs.rm(script);

  // working/ must be the job's own directory, not a link to one elsewhere.
  const inWorking = `/bin/bash ${job}/working/tool_script.sh${tail}`;
  await fs.writeFile(path.join(job, 'working', 'tool_script.sh'), `#!/bin/bash\n${cat}`);
  await t.notThrowsAsync(submit(inWorking));
  await fs.rename(path.join(job, 'working'), path.join(root, 'working-elsewhere'));
  await fs.symlink(path.join(root, 'working-elsewhere'), path.join(job, 'working'));
  t.regex((await t.throwsAsync(submit(inWorking), { instanceOf: JobRefused }))!.message, /working is not a directory of the job/);
  t.false((await t.throwsAsync(submit(inWorking)))!.message.includes(root), 'no server path in the reason');
});

test('configs/tool_script.sh (Galaxy sends its script as a config file too) is held to the script rule', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-galaxy-shapes-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const job = path.join(root, 'j1');
  await fs.mkdir(path.join(job, 'configs'), { recursive: true });
  const tool = await cat1();
  const log = createLogger({ destination: new Writable({ write: (_chunk, _enc, cb) => cb() }) });
  const authorizer = new ToolboxAuthorizer({ get: () => tool, allowedEnv: () => new Set() }, { expectedDigest: async () => undefined }, [], [], log);
  const cat = `cat '${job}/inputs/a' > '${job}/outputs/b'`;
  const facts = { jobId: 'j1', toolId: 'cat1', toolVersion: undefined, jobDirectory: job, commandLine: cat, submitParams: {}, remoteStagingSetup: 0, hasDependencies: false };
  await fs.writeFile(path.join(job, 'configs', 'tool_script.sh'), `#!/bin/bash\n${INTEGRITY_BLOCK}${cat}`);
  await t.notThrowsAsync(authorizer.authorizeSubmit(facts, path.join(job, 'configs')));
  await fs.writeFile(path.join(job, 'configs', 'tool_script.sh'), `#!/bin/bash\n${cat}\nid`);
  t.regex((await t.throwsAsync(authorizer.authorizeSubmit(facts, path.join(job, 'configs')), { instanceOf: JobRefused }))!.message, /configs\/tool_script.sh: .*more than one line/);
  await fs.writeFile(path.join(job, 'configs', 'other.sh'), 'x');
  await fs.rm(path.join(job, 'configs', 'tool_script.sh'));
  t.regex((await t.throwsAsync(authorizer.authorizeSubmit(facts, path.join(job, 'configs')), { instanceOf: JobRefused }))!.message, /"other.sh" has no configfile_validator/);
});

async function runCli(fn: (out: (l: string) => void, err: (l: string) => void) => Promise<number>): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await fn((l) => out.push(l), (l) => err.push(l));
  return { code, out, err };
}

test('validate-tool: galaxy cases give the wrapper and/or the body of tool_script.sh and are judged as the server judges a submit', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-galaxy-cli-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const fixtures = path.join(dir, 'cat1.yml');
  await fs.writeFile(fixtures, `galaxy:
  - tool_script: |-
      #!/bin/bash
      set -e
      cat '$JOB/inputs/a.dat' > '$JOB/outputs/b.dat'
    expect: accept
  - line: "/usr/bin/env bash $JOB/working/tool_script.sh > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > $JOB/galaxy_9.ec; sh -c \\"exit $return_code\\""
    tool_script: "#!/usr/bin/env bash\\ncat '$JOB/inputs/a.dat' > '$JOB/outputs/b.dat'"
    expect: accept
  - line: "cat '$JOB/inputs/a.dat' > '$JOB/outputs/b.dat' > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > $JOB/galaxy_9.ec; sh -c \\"exit $return_code\\""
    expect: accept
    note: shell none
  - line: "/bin/bash $JOB/tool_script.sh > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > $JOB/galaxy_9.ec; sh -c \\"exit $return_code\\""
    expect: reject
    note: no script given
  - tool_script: "#!/bin/bash\\ncat '$JOB/inputs/a.dat' > '$JOB/outputs/b.dat'\\nid"
    expect: accept
    note: wrongly expected
`);
  const { validateTool } = await import('../../src/cli/validate-tool.js');
  const r = await runCli((out, err) => validateTool({ tool: path.join(TOOLBOX_DIR, 'cat1', 'cat1.xml'), fixtures, out, err }));
  t.is(r.code, 1, r.out.join('\n'));
  t.regex(r.out[0]!, /^ok {3}accept {2}galaxy: Galaxy's default wrapper \+ tool_script\.sh "#!\/bin\/bash\\nset -e\\ncat /);
  t.regex(r.out[1]!, /^ok {3}accept {2}galaxy: \/usr\/bin\/env bash /);
  t.regex(r.out[2]!, /^ok {3}accept {2}galaxy: cat /);
  t.regex(r.out[3]!, /^ok {3}reject {2}.*\(tool_script\.sh: the fixture gives no tool_script/);
  t.regex(r.out[4]!, /^FAIL expected accept, rejected: galaxy: .*has more than one line.*\[galaxy\[4\]: wrongly expected\]$/);
  t.regex(r.out[5]!, /5 cases, 1 failed/);

  for (const [text, reason] of [
    ['galaxy:\n  - expect: accept\n', /galaxy\[0\]: give line .* and\/or tool_script/],
    ['galaxy:\n  - tool_script: 3\n    expect: accept\n', /tool_script must be a string/],
    ['galaxy:\n  - line: ""\n    tool_script: x\n    expect: accept\n', /line must not be empty/],
    ['galaxy:\n  - line: x\n    script: x\n    expect: accept\n', /unknown key "script"/],
    ['command:\n  - line: x\n    tool_script: x\n    expect: accept\n', /unknown key "tool_script"/],
  ] as const) {
    await fs.writeFile(fixtures, text);
    const bad = await runCli((out, err) => validateTool({ tool: path.join(TOOLBOX_DIR, 'cat1', 'cat1.xml'), fixtures, out, err }));
    t.is(bad.code, 2, text);
    t.regex(bad.err.join('\n'), reason);
  }
});

test('lint-toolbox runs each tool\'s fixtures (Galaxy-shaped cases included): a case that does not hold is a problem', async (t) => {
  const { lintToolbox } = await import('../../src/cli/lint-toolbox.js');
  const clean = await runCli((out, err) => lintToolbox({ files: [path.join(TOOLBOX_DIR, 'tools.xml')], out, err }));
  t.is(clean.code, 0, clean.out.join('\n'));
  t.regex(clean.out.at(-1)!, /^3 tools in 1 toolbox file: no problems \(3 fixtures files, \d+ cases as expected\)$/);

  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-galaxy-lint-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.mkdir(path.join(dir, 'cat1'));
  await fs.copyFile(path.join(TOOLBOX_DIR, 'cat1', 'cat1.xml'), path.join(dir, 'cat1', 'cat1.xml'));
  await fs.writeFile(path.join(dir, 'cat1', 'cat1.fixtures.yml'), `galaxy:
  - tool_script: "#!/bin/bash\\n. /deps/env.sh; cat '$JOB/inputs/a.dat' > '$JOB/outputs/b.dat'"
    expect: accept
    note: dependency lines
`);
  await fs.writeFile(path.join(dir, 'tools.xml'), '<toolbox><tool file="cat1/cat1.xml"/></toolbox>');
  const r = await runCli((out, err) => lintToolbox({ files: [path.join(dir, 'tools.xml')], out, err }));
  t.is(r.code, 1, r.out.join('\n'));
  t.regex(r.out[0]!, /cat1 1\.0\.0: fixtures .*cat1\.fixtures\.yml: FAIL expected accept, rejected: galaxy: .*dependency_resolution: none.*\[galaxy\[0\]: dependency lines\]/);
  await fs.writeFile(path.join(dir, 'cat1', 'cat1.fixtures.yml'), 'galaxy: [\n');
  const broken = await runCli((out, err) => lintToolbox({ files: [path.join(dir, 'tools.xml')], out, err }));
  t.is(broken.code, 1);
  t.regex(broken.out[0]!, /fixtures .*invalid YAML/);
});
