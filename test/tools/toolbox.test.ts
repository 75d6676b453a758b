import test from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { ToolFiles } from '../../src/tools/tool-files.js';
import { isSafeRelativeName } from '../../src/jobs/paths.js';
import { compareVersions, loadTool, loadToolbox, readToolbox } from '../../src/tools/toolbox.js';
import type { ToolDefinition } from '../../src/tools/types.js';
import { MAX_XML_BYTES, XmlParseError, parseXml, parseXmlFile } from '../../src/tools/xml.js';

async function tempDir(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-toolbox-')));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function write(file: string, text: string | Buffer): Promise<string> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, text);
  return file;
}

/** A tool XML whose command validator accepts exactly `prog` (plus optional configfile validators). */
function toolXml(attrs: string, prog = 'true', extra = ''): string {
  return `<tool ${attrs}>
  <command>${prog}</command>
  <validators>
    <command_validator><literal value="${prog}"/></command_validator>
    ${extra}
  </validators>
</tool>
`;
}

const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

// ---------------------------------------------------------------------------------------------
// XML

test('parseXml keeps children and text in document order, CDATA as text, comments dropped', async (t) => {
  const root = await parseXml('<?xml version="1.0"?>\n<a x="1" y="&lt;2&gt;">pre<!-- c --><b/>mid<![CDATA[<raw>]]><c z="3">in</c>post</a>', 'inline');
  t.is(root.name, 'a');
  t.deepEqual({ ...root.attrs }, { x: '1', y: '<2>' });
  t.deepEqual(root.children.map((c) => c.name), ['b', 'c']);
  t.is(root.text, 'premid<raw>post');
  t.is(root.children[1]?.text, 'in');
  t.is(root.children[1]?.attrs['z'], '3');
});

test('parseXml keeps whitespace-only text and does not confuse elements with xml2js bookkeeping', async (t) => {
  const root = await parseXml('<v><literal> </literal><_ a="no">x</_><__text__>y</__text__><cdata/><toString/></v>', 'inline');
  t.deepEqual(root.children.map((c) => c.name), ['literal', '_', '__text__', 'cdata', 'toString']);
  t.is(root.children[0]?.text, ' ');
  t.is(root.children[2]?.text, 'y');
  t.is(root.text, '');
  t.is(root.attrs['toString'], undefined, 'attrs have no prototype');
});

test('parseXml refuses DOCTYPE and ENTITY declarations (XXE, entity bombs)', async (t) => {
  const xxe = '<?xml version="1.0"?>\n<!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<tool id="&x;"/>';
  const e1 = await t.throwsAsync(parseXml(xxe, 'xxe.xml'), { instanceOf: XmlParseError });
  t.regex(e1.message, /xxe\.xml: DOCTYPE declarations are not allowed/);
  const lol = '<!doctype lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><lolz>&lol2;</lolz>';
  await t.throwsAsync(parseXml(lol, 'lol.xml'), { message: /DOCTYPE/ });
  await t.throwsAsync(parseXml('<a><!ENTITY x "y"></a>', 'e.xml'), { message: /ENTITY/ });
  await t.throwsAsync(parseXml('<a>&undefined;</a>', 'u.xml'), { message: /not well-formed/ });
});

test('parseXml refuses malformed XML and parseXmlFile refuses oversized or missing files', async (t) => {
  await t.throwsAsync(parseXml('<a><b></a>', 'bad.xml'), { message: /bad\.xml: not well-formed XML/ });
  await t.throwsAsync(parseXml('', 'empty.xml'), { message: /no root element/ });
  const dir = await tempDir(t);
  const big = await write(path.join(dir, 'big.xml'), `<a>${'x'.repeat(MAX_XML_BYTES)}</a>`);
  await t.throwsAsync(parseXmlFile(big), { message: /larger than/ });
  await t.throwsAsync(parseXmlFile(path.join(dir, 'missing.xml')), { message: /missing\.xml: cannot read/ });
  await t.throwsAsync(parseXmlFile(dir), { message: /not a regular file/ });
  const deep = `${'<a>'.repeat(300)}${'</a>'.repeat(300)}`;
  await t.throwsAsync(parseXml(deep, 'deep.xml'), { message: /nested deeper/ });
});

// ---------------------------------------------------------------------------------------------
// Toolbox

/** A toolbox in `<dir>/config/tools.xml` with `tool_path="../tools"`; returns the toolbox file. */
async function sampleToolbox(dir: string): Promise<string> {
  await write(path.join(dir, 'tools/simple/simple.xml'), toolXml('id="simple" version="0.1"', 'simple'));
  await write(path.join(dir, 'tools/noversion/noversion.xml'), toolXml('id="noversion"', 'noversion'));
  await write(path.join(dir, 'tools/shed/shed.xml'), toolXml('id="ignored_inner_id" version="9.9"', 'shed'));
  await write(path.join(dir, 'tools/shed2/shed2.xml'), toolXml('id="inner" version="2.5"', 'shed2'));
  return write(
    path.join(dir, 'config/tools.xml'),
    `<?xml version="1.0"?>
<toolbox tool_path="../tools" monitor="true">
  <label id="top" text="Top"/>
  <tool file="simple/simple.xml"/>
  <section id="s" name="Section">
    <label id="l" text="Label"/>
    <tool file="noversion/noversion.xml"/>
    <tool file="shed/shed.xml" guid="toolshed.example.org/repos/o/r/shed/1.0">
      <tool_shed>toolshed.example.org</tool_shed>
      <repository_name>r</repository_name>
      <repository_owner>o</repository_owner>
      <installed_changeset_revision>abc</installed_changeset_revision>
      <id>toolshed.example.org/repos/o/r/shed/1.0</id>
      <version>1.0</version>
    </tool>
    <tool file="shed2/shed2.xml" guid="toolshed.example.org/repos/o/r/shed2/2.5"/>
  </section>
</toolbox>
`,
  );
}

test('tool_path is relative to the toolbox file, not the cwd; simple and tool-shed ids; sections', async (t) => {
  const dir = await tempDir(t);
  const toolboxFile = await sampleToolbox(dir);
  t.not(process.cwd(), path.dirname(toolboxFile));
  t.false(await fs.access(path.resolve(process.cwd(), '../tools/simple/simple.xml')).then(() => true, () => false));
  const { toolbox, problems } = await loadToolbox([path.relative(process.cwd(), toolboxFile)]);
  t.deepEqual(problems, []);
  t.deepEqual(
    toolbox.tools().map((tool) => [tool.id, tool.version]),
    [
      ['simple', '0.1'],
      ['noversion', '1.0.0'],
      ['toolshed.example.org/repos/o/r/shed/1.0', '1.0'],
      ['toolshed.example.org/repos/o/r/shed2/2.5', '2.5'],
    ],
  );
  const simple = toolbox.get('simple');
  t.truthy(simple);
  t.is(simple?.toolFile, path.join(dir, 'tools/simple/simple.xml'));
  t.is(simple?.toolDirectory, path.join(dir, 'tools/simple'));
  t.is(simple?.toolbox, toolboxFile);
  t.deepEqual(simple?.commandValidator?.validate('simple', '/jobs/1'), { ok: true });
  t.false(simple?.commandValidator?.validate('simple; id', '/jobs/1').ok);
  t.is(toolbox.get('ignored_inner_id'), undefined, 'a tool-shed tool is known by its guid only');
  t.is(toolbox.get('shed'), undefined);
});

test('an absolute tool_path and a toolbox without tool_path (the toolbox directory) both work', async (t) => {
  const dir = await tempDir(t);
  await write(path.join(dir, 'abs/t/t.xml'), toolXml('id="abs" version="1"'));
  await write(path.join(dir, 'conf/here/h.xml'), toolXml('id="here" version="1"'));
  const a = await write(path.join(dir, 'conf/a.xml'), `<toolbox tool_path="${path.join(dir, 'abs')}"><tool file="t/t.xml"/></toolbox>`);
  const b = await write(path.join(dir, 'conf/b.xml'), '<toolbox><tool file="here/h.xml"/></toolbox>');
  const { toolbox, problems } = await loadToolbox([a, b]);
  t.deepEqual(problems, []);
  t.truthy(toolbox.get('abs'));
  t.truthy(toolbox.get('here'));
});

test('several versions of one id: no version means the highest, an unknown version nothing', async (t) => {
  const dir = await tempDir(t);
  for (const v of ['1.9', '1.10', '1.2+galaxy1', '1.10rc1']) {
    await write(path.join(dir, `v${v}/tool.xml`), toolXml(`id="multi" version="${v}"`));
  }
  const file = await write(
    path.join(dir, 'tools.xml'),
    `<toolbox tool_path="."><tool file="v1.9/tool.xml"/><tool file="v1.10rc1/tool.xml"/><tool file="v1.10/tool.xml"/><tool file="v1.2+galaxy1/tool.xml"/></toolbox>`,
  );
  const { toolbox, problems } = await loadToolbox([file]);
  t.deepEqual(problems, []);
  t.is(toolbox.get('multi')?.version, '1.10');
  t.is(toolbox.get('multi', '')?.version, '1.10');
  t.is(toolbox.get('multi', '1.9')?.version, '1.9');
  t.is(toolbox.get('multi', '1.2+galaxy1')?.toolDirectory, path.join(dir, 'v1.2+galaxy1'));
  t.is(toolbox.get('multi', '2.0'), undefined);
  t.is(toolbox.get('other'), undefined);
  t.is(toolbox.tools().length, 4);
});

test('compareVersions orders numerically with pre-releases below releases', (t) => {
  const sorted = ['1.10', '1.9', '1.0', '1.0rc1', '1.0+galaxy1', '1.0.dev0', '2', '1.0+galaxy10', '0.9.9', '1.0b2', '1.0a1'];
  sorted.sort(compareVersions);
  t.deepEqual(sorted, ['0.9.9', '1.0.dev0', '1.0a1', '1.0b2', '1.0rc1', '1.0', '1.0+galaxy1', '1.0+galaxy10', '1.9', '1.10', '2']);
  t.is(compareVersions('1.0', '1.0'), 0);
  t.true(compareVersions('10.0.0', '9.99.99') > 0);
});

test('a broken tool is reported with its file and reason and left out; the others load', async (t) => {
  const dir = await tempDir(t);
  await write(path.join(dir, 'good/good.xml'), toolXml('id="good"'));
  await write(path.join(dir, 'unknown/unknown.xml'), toolXml('id="unknown"', 'x', '').replace('<literal value="x"/>', '<literal value="x"/><shell_magic/>'));
  await write(path.join(dir, 'malformed/malformed.xml'), '<tool id="malformed"><validators></tool>');
  await write(path.join(dir, 'noid/noid.xml'), toolXml('version="1"'));
  await write(path.join(dir, 'notatool/notatool.xml'), '<macros/>');
  await write(
    path.join(dir, 'dupcfg/dupcfg.xml'),
    toolXml('id="dupcfg"', 'x', '<configfile_validator name="c"><literal value="a"/></configfile_validator><configfile_validator name="c"><literal value="b"/></configfile_validator>'),
  );
  await write(path.join(dir, 'twocmd/twocmd.xml'), toolXml('id="twocmd"', 'x', '<command_validator><literal value="y"/></command_validator>'));
  await write(path.join(dir, 'strange/strange.xml'), toolXml('id="strange"', 'x', '<env_validator/>'));
  await write(path.join(dir, 'doctype/doctype.xml'), `<!DOCTYPE tool [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n${toolXml('id="doctype"')}`);
  await write(path.join(dir, 'dup/dup.xml'), toolXml('id="good"'));
  const names = ['good', 'unknown', 'malformed', 'noid', 'notatool', 'dupcfg', 'twocmd', 'strange', 'doctype', 'missing', 'dup'];
  const file = await write(path.join(dir, 'tools.xml'), `<toolbox tool_path=".">${names.map((n) => `<tool file="${n}/${n}.xml"/>`).join('')}</toolbox>`);
  const { toolbox, problems } = await loadToolbox([file]);
  t.deepEqual(toolbox.tools().map((tool) => tool.id), ['good']);
  const byFile = new Map(problems.map((p) => [path.relative(dir, p.file), p]));
  t.is(problems.length, names.length - 1);
  t.is(byFile.get('unknown/unknown.xml')?.tool, 'unknown');
  t.regex(byFile.get('unknown/unknown.xml')?.message ?? '', /command_validator.*unknown element <shell_magic>/);
  t.regex(byFile.get('malformed/malformed.xml')?.message ?? '', /not well-formed/);
  t.is(byFile.get('malformed/malformed.xml')?.tool, 'malformed/malformed.xml', 'no id: the entry file names the tool');
  t.regex(byFile.get('noid/noid.xml')?.message ?? '', /no id attribute/);
  t.regex(byFile.get('notatool/notatool.xml')?.message ?? '', /root element is <macros>/);
  t.regex(byFile.get('dupcfg/dupcfg.xml')?.message ?? '', /duplicate <configfile_validator name="c">/);
  t.regex(byFile.get('twocmd/twocmd.xml')?.message ?? '', /more than one <command_validator>/);
  t.regex(byFile.get('strange/strange.xml')?.message ?? '', /unknown element <env_validator>/);
  t.regex(byFile.get('doctype/doctype.xml')?.message ?? '', /DOCTYPE declarations are not allowed/);
  t.regex(byFile.get('missing/missing.xml')?.message ?? '', /cannot read/);
  t.regex(byFile.get('dup/dup.xml')?.message ?? '', /duplicate tool id "good" version "1\.0\.0"/);
  for (const p of problems) t.truthy(p.tool, `${p.file}: a tool problem names the tool`);
});

test('toolbox-level problems name no tool (the server refuses to start on them)', async (t) => {
  const dir = await tempDir(t);
  const doctype = await write(path.join(dir, 'doctype.xml'), '<!DOCTYPE toolbox><toolbox/>');
  const wrongRoot = await write(path.join(dir, 'wrong.xml'), '<tools/>');
  const noFile = await write(path.join(dir, 'nofile.xml'), '<toolbox><tool/><tool_dir dir="x"/><section><section/></section></toolbox>');
  const { toolbox, problems } = await loadToolbox([doctype, wrongRoot, noFile, path.join(dir, 'absent.xml')]);
  t.is(toolbox.tools().length, 0);
  t.deepEqual(problems.map((p) => [path.basename(p.file), p.tool]), [
    ['doctype.xml', undefined],
    ['wrong.xml', undefined],
    ['nofile.xml', undefined],
    ['nofile.xml', undefined],
    ['nofile.xml', undefined],
    ['absent.xml', undefined],
  ]);
  t.regex(problems[0]?.message ?? '', /DOCTYPE/);
  t.regex(problems[1]?.message ?? '', /expected <toolbox>/);
  t.regex(problems[2]?.message ?? '', /without a file attribute/);
  t.regex(problems[3]?.message ?? '', /<tool_dir> is not supported/);
  t.regex(problems[4]?.message ?? '', /<section> inside a <section> is not supported/);
  t.regex(problems[5]?.message ?? '', /cannot read/);
});

test('a tool without command_validator loads (it cannot run); configfile validators are compiled by name', async (t) => {
  const dir = await tempDir(t);
  const file = await write(
    path.join(dir, 't/t.xml'),
    '<tool id="t" version="2"><validators><configfile_validator name="opts"><literal value="x"/></configfile_validator></validators></tool>',
  );
  await write(path.join(dir, 'n/n.xml'), '<tool id="n"><command>echo</command></tool>');
  const { toolbox, problems } = await loadToolbox([await write(path.join(dir, 'tb.xml'), '<toolbox><tool file="t/t.xml"/><tool file="n/n.xml"/></toolbox>')]);
  t.deepEqual(problems, []);
  const tool = toolbox.get('t');
  t.is(tool?.toolFile, file);
  t.is(tool?.commandValidator, undefined);
  t.deepEqual([...(tool?.configfileValidators.keys() ?? [])], ['opts']);
  t.deepEqual(tool?.configfileValidators.get('opts')?.validate('x', '/j/1'), { ok: true });
  t.false(tool?.configfileValidators.get('opts')?.validate('y', '/j/1').ok);
  t.is(toolbox.get('n')?.commandValidator, undefined);
});

test('a version spelled with macro tokens is expanded from the tool macros and imported macro files', async (t) => {
  const dir = await tempDir(t);
  await write(path.join(dir, 'm/macros.xml'), '<macros><token name="@TOOL_VERSION@">2.31.1</token></macros>');
  const file = await write(
    path.join(dir, 'm/tool.xml'),
    `<tool id="bt" version="@TOOL_VERSION@+galaxy@VERSION_SUFFIX@"><macros><import>macros.xml</import><token name="@VERSION_SUFFIX@">2</token></macros>
    <validators><command_validator><literal value="bt"/></command_validator></validators></tool>`,
  );
  const loaded = await loadTool(file, { toolbox: path.join(dir, 'tb.xml') });
  t.is(loaded.definition.version, '2.31.1+galaxy2');
  const bad = await write(path.join(dir, 'm/bad.xml'), '<tool id="bad" version="@NOPE@"/>');
  await t.throwsAsync(loadTool(bad, { toolbox: 'tb' }), { message: /undefined macro token @NOPE@/ });
});

test('readToolbox exposes the validator XML of each tool (for lint)', async (t) => {
  const dir = await tempDir(t);
  await write(path.join(dir, 'x/x.xml'), toolXml('id="x"', 'x', '<configfile_validator name="c"><literal value="a"/></configfile_validator>'));
  const { tools } = await readToolbox([await write(path.join(dir, 'tb.xml'), '<toolbox><tool file="x/x.xml"/></toolbox>')]);
  t.is(tools[0]?.validators.command?.name, 'command_validator');
  t.is(tools[0]?.validators.configfiles.get('c')?.children[0]?.attrs['value'], 'a');
});

// ---------------------------------------------------------------------------------------------
// Tool files

async function toolWithFiles(dir: string): Promise<ToolDefinition> {
  const toolFile = await write(path.join(dir, 'tool/tool.xml'), toolXml('id="files"'));
  await write(path.join(dir, 'tool/wrapper.py'), 'print("hi")\n');
  await write(path.join(dir, 'tool/scripts/helper.sh'), 'echo helper\n');
  await write(path.join(dir, 'secret.txt'), 'outside\n');
  await fs.symlink(path.join(dir, 'secret.txt'), path.join(dir, 'tool/escape.txt'));
  await fs.symlink('/etc', path.join(dir, 'tool/etc'));
  await fs.symlink('scripts/helper.sh', path.join(dir, 'tool/inside-link.sh'));
  await fs.mkdir(path.join(dir, 'tool/empty-dir'));
  return (await loadTool(toolFile, { toolbox: path.join(dir, 'tb.xml') })).definition;
}

test('ToolFiles: digests of top-level and nested tool files', async (t) => {
  const dir = await tempDir(t);
  const tool = await toolWithFiles(dir);
  const files = new ToolFiles();
  t.is(await files.expectedDigest(tool, 'wrapper.py'), sha256('print("hi")\n'));
  t.is(await files.expectedDigest(tool, 'scripts/helper.sh'), sha256('echo helper\n'));
  t.is(await files.expectedDigest(tool, 'tool.xml'), sha256(await fs.readFile(tool.toolFile)));
  t.is(await files.expectedDigest(tool, 'inside-link.sh'), sha256('echo helper\n'), 'a symlink staying inside is its target');
});

test('ToolFiles: unsafe names, symlink escapes, directories and missing files are not tool files', async (t) => {
  const dir = await tempDir(t);
  const tool = await toolWithFiles(dir);
  const files = new ToolFiles();
  for (const name of [
    '../secret.txt',
    'scripts/../../secret.txt',
    'scripts/../wrapper.py',
    path.join(dir, 'tool/wrapper.py'),
    '/etc/passwd',
    'scripts\\helper.sh',
    'wrapper.py\0',
    '',
    '.',
    './wrapper.py',
    'scripts//helper.sh',
    'escape.txt',
    'etc/passwd',
    'empty-dir',
    'scripts',
    'missing.py',
  ]) {
    t.is(await files.expectedDigest(tool, name), undefined, JSON.stringify(name));
  }
  t.false(isSafeRelativeName('a/../b'));
  t.true(isSafeRelativeName('a/b..c/d'));
});

test('ToolFiles: a changed tool file gets a fresh digest (cache keyed by size and mtime)', async (t) => {
  const dir = await tempDir(t);
  const tool = await toolWithFiles(dir);
  const files = new ToolFiles();
  const file = path.join(tool.toolDirectory, 'wrapper.py');
  t.is(await files.expectedDigest(tool, 'wrapper.py'), sha256('print("hi")\n'));
  await fs.writeFile(file, 'print("changed, longer")\n');
  t.is(await files.expectedDigest(tool, 'wrapper.py'), sha256('print("changed, longer")\n'));
  // Same size, explicit new mtime.
  await fs.writeFile(file, 'print("CHANGED, LONGER")\n');
  const later = new Date(Date.now() + 5000);
  await fs.utimes(file, later, later);
  t.is(await files.expectedDigest(tool, 'wrapper.py'), sha256('print("CHANGED, LONGER")\n'));
});

test('the sample toolbox loads cleanly', async (t) => {
  const sample = new URL('../../../toolbox/tools.xml', import.meta.url).pathname;
  const { toolbox, problems } = await loadToolbox([sample]);
  t.deepEqual(problems, []);
  const ids = toolbox.tools().map((tool) => tool.id);
  t.true(ids.includes('cat1'));
  t.true(ids.includes('head1'));
  t.true(ids.includes('toolshed.example.org/repos/magnetar/filter_score/filter_score/1.2.0'));
  for (const tool of toolbox.tools()) t.truthy(tool.commandValidator, tool.id);
  const shed = toolbox.get('toolshed.example.org/repos/magnetar/filter_score/filter_score/1.2.0');
  t.is(shed?.version, '1.2.0');
  t.truthy(shed && (await new ToolFiles().expectedDigest(shed, 'scripts/filter.sh')));
});

test('<env name="X"/> in <validators> lists env entry names a tool\'s jobs may carry; a name counts only if every version lists it', async (t) => {
  const dir = await tempDir(t);
  const validators = (env: string): string => `<validators><command_validator><literal value="t"/></command_validator>${env}</validators>`;
  await write(path.join(dir, 'a/v1.xml'), `<tool id="t" version="1">${validators('<env name="MODE"/><env name="LEVEL"/>')}</tool>`);
  await write(path.join(dir, 'a/v2.xml'), `<tool id="t" version="2">${validators('<env name="MODE"/>')}</tool>`);
  await write(path.join(dir, 'b/bad.xml'), `<tool id="bad">${validators('<env name="A B"/>')}</tool>`);
  await write(path.join(dir, 'c/worse.xml'), `<tool id="worse">${validators('<env name="A" value="x"/>')}</tool>`);
  const { toolbox, problems } = await loadToolbox([
    await write(path.join(dir, 'tb.xml'), '<toolbox><tool file="a/v1.xml"/><tool file="a/v2.xml"/><tool file="b/bad.xml"/><tool file="c/worse.xml"/></toolbox>'),
  ]);
  t.deepEqual([...(toolbox.get('t', '1')?.allowedEnv ?? [])], ['MODE', 'LEVEL']);
  t.deepEqual([...(toolbox.get('t', '2')?.allowedEnv ?? [])], ['MODE']);
  t.deepEqual([...toolbox.allowedEnv('t')], ['MODE']);
  t.deepEqual([...toolbox.allowedEnv('nope')], []);
  t.regex(problems.find((p) => p.tool === 'bad')?.message ?? '', /<env name="A B"> does not name a shell variable/);
  t.regex(problems.find((p) => p.tool === 'worse')?.message ?? '', /takes only a name attribute/);
});
