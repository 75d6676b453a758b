import test from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BIN } from '../helpers/process.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SAMPLES = path.join(ROOT, 'toolbox');
const SAMPLE_TOOLS = ['cat1', 'head1', 'filter_score'];

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run the real `magnetar` CLI from a directory that is not the repository (paths must not depend on the cwd). */
async function magnetar(args: readonly string[], cwd = os.tmpdir()): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [BIN, ...args], { cwd, timeout: 60_000 }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== 'number') {
        reject(error);
        return;
      }
      resolve({ code: error === null ? 0 : (error.code as number), stdout, stderr });
    });
  });
}

async function tempDir(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-cli-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function write(file: string, text: string): Promise<string> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, text);
  return file;
}

for (const tool of SAMPLE_TOOLS) {
  test(`validate-tool: every fixture of the sample tool ${tool} holds`, async (t) => {
    const dir = path.join(SAMPLES, tool);
    const r = await magnetar(['validate-tool', path.join(dir, `${tool}.xml`), '--fixtures', path.join(dir, `${tool}.fixtures.yml`)]);
    t.is(r.code, 0, r.stdout + r.stderr);
    t.notRegex(r.stdout, /^FAIL/m);
    t.regex(r.stdout, /^ok {3}accept {2}/m);
    t.regex(r.stdout, /^ok {3}reject {2}/m);
    t.regex(r.stdout, /all as expected/);
    t.is(r.stderr, '');
  });
}

test('validate-tool: a fixture with a wrong expectation fails (exit 1) and is named', async (t) => {
  const dir = await tempDir(t);
  const fixtures = await write(
    path.join(dir, 'wrong.yml'),
    `command:
  - line: "cat '$JOB/inputs/a.dat' > '$JOB/outputs/b.dat'"
    expect: accept
  - line: "cat '$JOB/inputs/a.dat' > '$JOB/outputs/b.dat'; rm -rf ~"
    expect: accept
    note: an attack wrongly expected to pass
  - line: "cat '$JOB/inputs/a.dat' > '$JOB/outputs/b.dat'"
    expect: reject
`,
  );
  const r = await magnetar(['validate-tool', path.join(SAMPLES, 'cat1/cat1.xml'), '--fixtures', fixtures]);
  t.is(r.code, 1, r.stdout + r.stderr);
  t.regex(r.stdout, /^ok {3}accept {2}cat '\$JOB\/inputs\/a\.dat' > '\$JOB\/outputs\/b\.dat'$/m);
  t.regex(r.stdout, /^FAIL expected accept, rejected: cat .*; rm -rf ~ {2}\(.+\) {2}\[command\[1\]: an attack wrongly expected to pass\]$/m);
  t.regex(r.stdout, /^FAIL expected reject, accepted: cat '\$JOB\/inputs\/a\.dat' > '\$JOB\/outputs\/b\.dat' {2}\[command\[2\]\]$/m);
  t.regex(r.stdout, /3 cases, 2 failed/);
});

test('validate-tool: job_directory and configfile cases', async (t) => {
  const dir = await tempDir(t);
  const fixtures = await write(
    path.join(dir, 'jd.yml'),
    `job_directory: /data/jobs/7/
command:
  - line: "cat '/data/jobs/7/inputs/a.dat' > '$JOB/outputs/b.dat'"
    expect: accept
  - line: "cat '/srv/magnetar/staging/42/inputs/a.dat' > '$JOB/outputs/b.dat'"
    expect: reject
    note: another job's directory
`,
  );
  const r = await magnetar(['validate-tool', path.join(SAMPLES, 'cat1/cat1.xml'), '--fixtures', fixtures]);
  t.is(r.code, 0, r.stdout + r.stderr);
});

test('validate-tool: usage and load errors exit 2 with a one-line reason', async (t) => {
  const dir = await tempDir(t);
  const cat1 = path.join(SAMPLES, 'cat1/cat1.xml');
  const cases: [string[], RegExp][] = [
    [['validate-tool', cat1], /--fixtures/],
    [['validate-tool', path.join(dir, 'nope.xml'), '--fixtures', path.join(dir, 'x.yml')], /nope\.xml: cannot read/],
    [['validate-tool', cat1, '--fixtures', path.join(dir, 'missing.yml')], /missing\.yml: cannot read/],
    [['validate-tool', cat1, '--fixtures', await write(path.join(dir, 'typo.yml'), 'comand: []\n')], /unknown key "comand"/],
    [['validate-tool', cat1, '--fixtures', await write(path.join(dir, 'expect.yml'), 'command:\n  - line: cat\n    expect: maybe\n')], /command\[0\]: expect must be accept or reject/],
    [['validate-tool', cat1, '--fixtures', await write(path.join(dir, 'cfg.yml'), 'configfiles:\n  nope:\n    - content: x\n      expect: accept\n')], /no configfile_validator named "nope"/],
    [['validate-tool', cat1, '--fixtures', await write(path.join(dir, 'empty.yml'), '{}\n')], /no cases/],
    [['validate-tool', cat1, '--fixtures', await write(path.join(dir, 'bad.yml'), 'command: [\n')], /invalid YAML/],
    [['validate-tool', cat1, '--fixtures', await write(path.join(dir, 'tag.yml'), 'command: !!js/function "function(){}"\n')], /invalid YAML/],
  ];
  for (const [args, reason] of cases) {
    const r = await magnetar(args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    t.regex(r.stderr, reason);
  }
  const unsecured = await write(path.join(dir, 'u/u.xml'), '<tool id="u"><command>rm -rf /</command></tool>');
  const r = await magnetar(['validate-tool', unsecured, '--fixtures', await write(path.join(dir, 'u.yml'), 'command:\n  - line: ls\n    expect: reject\n')]);
  t.is(r.code, 2);
  t.regex(r.stderr, /has no command_validator/);
  t.is(r.stderr.trim().split('\n').length, 1);
});

test('lint-toolbox: the sample toolbox is clean', async (t) => {
  const r = await magnetar(['lint-toolbox', path.join(SAMPLES, 'tools.xml')]);
  t.is(r.code, 0, r.stdout + r.stderr);
  t.regex(r.stdout, /3 tools in 1 toolbox file: no problems/);
});

test('lint-toolbox: an unsecured tool, a lax regex, a missing wrapper, a broken tool and unvalidated config files are problems', async (t) => {
  const dir = await tempDir(t);
  await write(path.join(dir, 'tools/open/open.xml'), '<tool id="open" version="1"><command>$cmd</command></tool>');
  await write(
    path.join(dir, 'tools/wrap/wrap.xml'),
    `<tool id="wrap" version="1">
  <command>python '$__tool_directory__/wrap.py' --config '$cfg'</command>
  <configfiles>
    <configfile name="cfg" filename="wrap.cfg">x=1</configfile>
    <configfile name="random">y=2</configfile>
  </configfiles>
  <validators>
    <command_validator>
      <literal value="python"/>
      <tool_wrapper name="wrap.py" single_quote="true"/>
      <parameter name="--config"><configfile name="wrap.cfg" single_quote="true"/></parameter>
    </command_validator>
  </validators>
</tool>`,
  );
  await write(path.join(dir, 'tools/rx/rx.xml'), '<tool id="rx"><validators><command_validator><literal value="echo"/><regex value=".*"/></command_validator></validators></tool>');
  await write(path.join(dir, 'tools/broken/broken.xml'), '<tool id="broken"><validators><command_validator><eval/></command_validator></validators></tool>');
  const toolbox = await write(
    path.join(dir, 'conf/tools.xml'),
    '<toolbox tool_path="../tools"><tool file="open/open.xml"/><tool file="wrap/wrap.xml"/><tool file="rx/rx.xml"/><tool file="broken/broken.xml"/><tool file="gone/gone.xml"/><tool file="open/open.xml"/></toolbox>',
  );
  const r = await magnetar(['lint-toolbox', toolbox]);
  t.is(r.code, 1, r.stdout + r.stderr);
  t.regex(r.stdout, /open\.xml: open 1: no <command_validator>/);
  t.regex(r.stdout, /wrap\.xml: wrap 1: missing tool file "wrap\.py"/);
  t.regex(r.stdout, /<configfile name="wrap\.cfg"> in the command_validator has no configfile_validator/);
  t.regex(r.stdout, /<configfile name="cfg"> is staged as "wrap\.cfg" but there is no configfile_validator/);
  t.regex(r.stdout, /<configfile name="random"> has no filename attribute/);
  t.regex(r.stdout, /broken\.xml: broken: command_validator.*unknown element <eval>/);
  t.regex(r.stdout, /gone\.xml: gone\/gone\.xml: cannot read/);
  t.regex(r.stdout, /duplicate tool id "open" version "1"/);
  t.regex(r.stdout, /rx\.xml: rx 1\.0\.0: command_validator > regex "\.\*": its language includes characters the shell policy forbids/);
  t.regex(r.stdout, /3 tools loaded from 1 toolbox file: 9 problems/);
});

test('lint-toolbox: usage errors exit 2', async (t) => {
  const none = await magnetar(['lint-toolbox']);
  t.is(none.code, 2);
  const missing = await magnetar(['lint-toolbox', path.join(os.tmpdir(), 'no-such-toolbox-magnetar.xml')]);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /no-such-toolbox-magnetar\.xml/);
});
