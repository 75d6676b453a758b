import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request, qs, waitForJob, type Reply } from '../helpers/client.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/public/', import.meta.url));
const TOOLBOX = path.join(FIXTURES, 'toolbox.xml');
const HELPER = path.join(FIXTURES, 'tools', 'mag_wrap', 'scripts', 'helper.sh');

interface Fixture {
  readonly server: TestServer;
  readonly canary: string;
  readonly secret: string;
  readonly listener: { connections: number; port: number };
}

async function publicServer(t: ExecutionContext): Promise<Fixture> {
  const server = await startTestServer({
    app: { toolConfigFiles: [TOOLBOX], allowUnsafeEnv: false, logRequests: true, allowedEnv: ['GREETING'] },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid' })],
  });
  t.teardown(() => server.stop());
  const canary = path.join(server.root, 'CANARY');
  const secret = path.join(server.root, 'secret.txt');
  await fs.writeFile(secret, 'TOP-SECRET\n');
  const listener = { connections: 0, port: 0 };
  const tcp = net.createServer((socket) => {
    listener.connections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  listener.port = (tcp.address() as net.AddressInfo).port;
  t.teardown(() => new Promise<void>((resolve) => tcp.close(() => resolve())));
  return { server, canary, secret, listener };
}

async function setupJob(fx: Fixture, tool: string, version?: string): Promise<any> {
  const r = await request(fx.server.url, 'POST', `/jobs?${qs({ job_id: '77', tool_id: tool, ...(version ? { tool_version: version } : {}) })}`);
  if (r.status !== 200) throw new Error(`setup ${tool}: ${r.status} ${r.text}`);
  return r.json();
}

async function upload(fx: Fixture, id: string, name: string, type: string, body: string | Buffer): Promise<Reply> {
  return request(fx.server.url, 'POST', `/jobs/${id}/files?${qs({ job_id: id, name, type })}`, { body });
}

async function submit(fx: Fixture, id: string, commandLine: string, extra: Record<string, string> = {}): Promise<Reply> {
  return request(fx.server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: commandLine, ...extra })}`);
}

/** The refusal left no trace: no canary, no job script, no process, no secret in any output. */
async function assertNoTrace(t: ExecutionContext, fx: Fixture, config: any): Promise<void> {
  await t.throwsAsync(fs.access(fx.canary), undefined, 'canary file must not exist');
  for (const name of ['command.sh', 'pid', 'return_code']) {
    await t.throwsAsync(fs.access(path.join(config.job_directory, name)), undefined, `${name} must not exist: nothing ran`);
  }
  t.is(fx.listener.connections, 0, 'nothing connected to the loopback listener');
}

async function assertRefusedSubmit(t: ExecutionContext, fx: Fixture, config: any, reply: Reply, pattern: RegExp): Promise<void> {
  t.is(reply.status, 403, reply.text);
  t.is(reply.json().error, 'MAG_ERR_TOOL_DENIED');
  t.regex(reply.json().message, pattern);
  const doc = await waitForJob(fx.server.url, config.job_id);
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, pattern);
  await assertNoTrace(t, fx, config);
}

test('legitimate jobs of every secured tool run: a UUID job id, tool files checked, validators satisfied', async (t) => {
  const fx = await publicServer(t);
  const cat = await setupJob(fx, 'mag_cat');
  t.regex(cat.job_id, /^[0-9a-f]{32}$/, 'public servers assign UUIDs');
  t.not(cat.job_id, '77');
  t.is(cat.tool_version, '1.0');
  const a = (await upload(fx, cat.job_id, 'a.dat', 'input', 'alpha\n')).json().path;
  const b = (await upload(fx, cat.job_id, 'sub/b.dat', 'input', 'beta\n')).json().path;
  const out = path.join(cat.outputs_directory, 'out.dat');
  t.is((await submit(fx, cat.job_id, `cat ${a} ${b} > ${out}`)).text, 'OK');
  const catDoc = await waitForJob(fx.server.url, cat.job_id);
  t.is(catDoc.status, 'complete', catDoc.stderr);
  t.is((await request(fx.server.url, 'GET', `/jobs/${cat.job_id}/files?${qs({ job_id: cat.job_id, name: 'out.dat' })}`)).text, 'alpha\nbeta\n');

  const wrap = await setupJob(fx, 'mag_wrap', '2.0');
  const helper = await upload(fx, wrap.job_id, 'scripts/helper.sh', 'tool', await fs.readFile(HELPER));
  t.is(helper.status, 200, helper.text);
  const opts = (await upload(fx, wrap.job_id, 'opts', 'config', '--lines=2')).json().path;
  const input = (await upload(fx, wrap.job_id, 'in.txt', 'input', '1\n2\n3\n')).json().path;
  const output = path.join(wrap.outputs_directory, 'first.txt');
  const env = JSON.stringify([{ name: 'GREETING', value: '$(touch ' + fx.canary + ')', raw: false }]);
  const reply = await submit(fx, wrap.job_id, `bash ${helper.json().path} --config ${opts} ${input} ${output}`, { env });
  t.is(reply.text, 'OK', reply.text);
  const wrapDoc = await waitForJob(fx.server.url, wrap.job_id);
  t.is(wrapDoc.status, 'complete', wrapDoc.stderr);
  t.is((await request(fx.server.url, 'GET', `/jobs/${wrap.job_id}/files?${qs({ job_id: wrap.job_id, name: 'first.txt' })}`)).text, '1\n2\n');
  await t.throwsAsync(fs.access(fx.canary), undefined, 'env values are literal on a public server');
  t.true(fx.server.logLines.some((l) => l.includes('"decision":"allow"') && l.includes('"step":"command line"')), 'decisions are audited');
});

test('setup: unknown tools, missing tool ids, unknown versions and tools without a command_validator are refused before anything is written', async (t) => {
  const fx = await publicServer(t);
  for (const query of [{ tool_id: 'bash' }, {}, { tool_id: 'mag_cat', tool_version: '9.9' }, { tool_id: 'mag_open' }]) {
    const r = await request(fx.server.url, 'POST', `/jobs?${qs({ job_id: '5', ...query })}`);
    t.is(r.status, 403, JSON.stringify(query));
    t.is(r.json().error, 'MAG_ERR_TOOL_DENIED');
  }
  t.deepEqual(await fs.readdir(fx.server.staging), [], 'no job directory was created');
  t.true(fx.server.logLines.some((l) => l.includes('"decision":"deny"') && l.includes('"step":"setup"')));
});

const INJECTIONS: readonly [string, (a: string, out: string, fx: Fixture) => string][] = [
  ['a second command after ;', (a, out, fx) => `cat ${a} > ${out}; touch ${fx.canary}`],
  ['&& chaining', (a, out, fx) => `cat ${a} > ${out} && touch ${fx.canary}`],
  ['a pipe', (a, out, fx) => `cat ${a} | tee ${fx.canary} > ${out}`],
  ['command substitution', (a, out, fx) => `cat ${a} $(touch ${fx.canary}) > ${out}`],
  ['backticks', (a, out, fx) => `cat ${a} \`touch ${fx.canary}\` > ${out}`],
  ['a newline', (a, out, fx) => `cat ${a} > ${out}\ntouch ${fx.canary}`],
  ['a file outside the job', (_a, out, fx) => `cat ${fx.secret} > ${out}`],
  ['.. out of inputs/', (a, out, fx) => `cat ${a}/../../../../${path.basename(fx.server.root)}/secret.txt > ${out}`],
  ['a redirect outside outputs/', (a, _out, fx) => `cat ${a} > ${fx.canary}`],
  ['a loopback connection', (a, _out, fx) => `cat ${a} > /dev/tcp/127.0.0.1/${fx.listener.port}`],
  ['a glob', (a, out) => `cat ${path.dirname(a)}/* > ${out}`],
  ['a variable expansion', (a, out) => `cat ${a} $HOME > ${out}`],
  ['background execution', (a, out, fx) => `cat ${a} > ${out} & touch ${fx.canary}`],
  ['a quoted break-out', (a, out, fx) => `cat '${a}'; touch ${fx.canary}; echo ' > ${out}`],
];

for (const [label, make] of INJECTIONS) {
  test(`command line with ${label} is refused at submit and leaves no trace`, async (t) => {
    const fx = await publicServer(t);
    const config = await setupJob(fx, 'mag_cat');
    const a = (await upload(fx, config.job_id, 'a.dat', 'input', 'x')).json().path;
    const out = path.join(config.outputs_directory, 'o.dat');
    await assertRefusedSubmit(t, fx, config, await submit(fx, config.job_id, make(a, out, fx)), /command_validator rejected/);
    await t.throwsAsync(fs.access(out));
  });
}

test('tool files must be byte-identical to the toolbox copy and belong to the tool', async (t) => {
  const fx = await publicServer(t);
  const config = await setupJob(fx, 'mag_wrap');
  const tampered = await upload(fx, config.job_id, 'scripts/helper.sh', 'tool', `#!/bin/sh\ntouch ${fx.canary}\n`);
  t.is(tampered.status, 403);
  t.regex(tampered.json().message, /differs from the toolbox/);
  const foreign = await upload(fx, config.job_id, 'evil.sh', 'tool', 'x');
  t.is(foreign.status, 403);
  const escape = await upload(fx, config.job_id, '../../mag_cat/cat.xml', 'tool', 'x');
  t.true(escape.status === 403 || escape.status === 400);
  const entries = await fs.readdir(config.tools_directory, { recursive: true, withFileTypes: true });
  t.deepEqual(entries.filter((e) => !e.isDirectory()).map((e) => e.name), [], 'no file stored in tool_files (not even a partial one)');
});

test('working- and job-directory files other than tool_script.sh are refused (a startup file such as .Rprofile would run unvalidated code)', async (t) => {
  const fx = await publicServer(t);
  const config = await setupJob(fx, 'mag_cat');
  for (const [name, type] of [['.Rprofile', 'workdir'], ['.Renviron', 'workdir'], ['sub/.condarc', 'workdir'], ['pyvenv.cfg', 'jobdir'], ['evil.sh', 'jobdir']] as const) {
    const r = await upload(fx, config.job_id, name, type, `system("touch ${fx.canary}")\n`);
    t.is(r.status, 403, `${type} ${name}: ${r.text}`);
    t.regex(r.json().message, /may only be tool_script\.sh/);
  }
  const working = await fs.readdir(config.working_directory, { recursive: true });
  t.deepEqual(working, [], 'nothing stored in the working directory (not even a partial file)');
  await t.throwsAsync(fs.access(path.join(config.job_directory, 'pyvenv.cfg')));
  await t.throwsAsync(fs.access(path.join(config.job_directory, 'evil.sh')));
  // Galaxy's own script is still taken, in both places it sends it.
  t.is((await upload(fx, config.job_id, 'tool_script.sh', 'workdir', '#!/bin/bash\ntrue\n')).status, 200);
  t.is((await upload(fx, config.job_id, 'tool_script.sh', 'jobdir', '#!/bin/bash\ntrue\n')).status, 200);
  await t.throwsAsync(fs.access(fx.canary));
});

test('config files are judged by their configfile_validator; a config file without one is refused', async (t) => {
  const fx = await publicServer(t);
  const helper = await fs.readFile(HELPER);
  for (const [name, content, pattern] of [
    ['opts', `--lines=2; touch ${fx.canary}`, /configfile_validator "opts" rejected/],
    ['other', '--lines=2', /"other" has no configfile_validator/],
  ] as const) {
    const config = await setupJob(fx, 'mag_wrap');
    const h = (await upload(fx, config.job_id, 'scripts/helper.sh', 'tool', helper)).json().path;
    const opts = (await upload(fx, config.job_id, name, 'config', content)).json().path;
    const input = (await upload(fx, config.job_id, 'in.txt', 'input', '1\n')).json().path;
    const reply = await submit(fx, config.job_id, `bash ${h} --config ${path.join(config.configs_directory, 'opts')} ${input} ${path.join(config.outputs_directory, 'o')}`);
    void opts;
    await assertRefusedSubmit(t, fx, config, reply, pattern);
  }
});

test('env entries: execute, file, raw and dangerous names are refused', async (t) => {
  const fx = await publicServer(t);
  for (const entry of [
    { execute: `touch ${'CANARY'}` },
    { file: '/etc/profile' },
    { name: 'X', value: 'y', raw: true },
    { name: 'LD_PRELOAD', value: '/tmp/evil.so' },
    { name: 'BASH_ENV', value: '/tmp/evil.sh' },
    { name: 'PATH', value: '/tmp' },
  ]) {
    const config = await setupJob(fx, 'mag_cat');
    const a = (await upload(fx, config.job_id, 'a.dat', 'input', 'x')).json().path;
    const reply = await submit(fx, config.job_id, `cat ${a} > ${path.join(config.outputs_directory, 'o')}`, { env: JSON.stringify([entry]) });
    await assertRefusedSubmit(t, fx, config, reply, /env/);
  }
});

test('submit params, server-side staging and setup inside submit are refused', async (t) => {
  const fx = await publicServer(t);
  const cases: [Record<string, string>, RegExp][] = [
    [{ params: JSON.stringify({ native_specification: '--mem=1T' }) }, /submit parameter "native_specification"/],
    [{ remote_staging: JSON.stringify({ setup: [{ name: 's', type: 'input', action: { action_type: 'remote_copy', source: { path: '/etc/passwd' } } }] }) }, /server-side staging/],
  ];
  for (const [extra, pattern] of cases) {
    const config = await setupJob(fx, 'mag_cat');
    const a = (await upload(fx, config.job_id, 'a.dat', 'input', 'x')).json().path;
    const reply = await submit(fx, config.job_id, `cat ${a} > ${path.join(config.outputs_directory, 'o')}`, extra);
    await assertRefusedSubmit(t, fx, config, reply, pattern);
    t.deepEqual(await fs.readdir(config.inputs_directory), ['a.dat'], 'nothing was staged from the server');
  }
  const viaSubmit = await submit(fx, 'abc', 'cat x', { setup_params: JSON.stringify({ job_id: 'abc', tool_id: 'mag_cat' }) });
  t.is(viaSubmit.status, 403);
  await t.throwsAsync(fs.access(path.join(fx.server.staging, 'abc')));
});

test('control files, cache tokens and dynamic file sources cannot reach outside', async (t) => {
  const fx = await publicServer(t);
  const config = await setupJob(fx, 'mag_cat');
  for (const name of ['command.sh', 'return_code', 'tool_id']) {
    t.is((await upload(fx, config.job_id, name, 'jobdir', `touch ${fx.canary}`)).status, 403, name);
  }
  const cached = await request(fx.server.url, 'POST', `/jobs/${config.job_id}/files?${qs({ job_id: config.job_id, name: 'c', type: 'input', cache_token: '../../../etc/passwd' })}`);
  t.is(cached.status, 404);
  const a = (await upload(fx, config.job_id, 'a.dat', 'input', 'x')).json().path;
  const sources = JSON.stringify([{ type: 'galaxy', path: `../../../../../../..${fx.secret}` }, { type: 'galaxy', path: fx.secret }]);
  t.is((await submit(fx, config.job_id, `cat ${a} > ${path.join(config.outputs_directory, 'o')}`, { dynamic_file_sources: sources })).text, 'OK');
  const doc = await waitForJob(fx.server.url, config.job_id);
  t.is(doc.status, 'complete');
  t.deepEqual(doc.realized_dynamic_file_sources, []);
  t.false(JSON.stringify(doc).includes('TOP-SECRET'));
  await t.throwsAsync(fs.access(fx.canary));
});
