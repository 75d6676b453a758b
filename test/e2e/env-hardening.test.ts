/**
 * Env hardening over real HTTP (issue 8, item 1): env entries by allow-list in public mode, a
 * HOME and TMPDIR of each job's own, and the Python variables that load code pinned on every server.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request, qs, waitForJob, type Reply } from '../helpers/client.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/env/', import.meta.url));
const TOOLBOX = path.join(FIXTURES, 'toolbox.xml');
const PROBE = path.join(FIXTURES, 'tools', 'mag_env', 'scripts', 'probe.py');

/** `pythonX.Y` of the python3 jobs find on the PATH, or undefined when there is none. */
const PYTHON_LIB = ((): string | undefined => {
  try {
    return execFileSync('python3', ['-c', 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")'], { encoding: 'utf8' }).trim();
  } catch {
    return undefined;
  }
})();
const withPython = PYTHON_LIB === undefined ? test.skip : test;
if (PYTHON_LIB === undefined) test('python3 is not installed: the real .pth attack is not run here', (t) => t.pass());

/** What the server process's own HOME holds before the tests (the jobs must leave it as it was). */
const SERVER_HOME = os.homedir();
const SERVER_USER_SITE = PYTHON_LIB === undefined ? undefined : path.join(SERVER_HOME, '.local', 'lib', PYTHON_LIB, 'site-packages', 'planted.pth');

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(() => true, () => false);
}

async function publicServer(t: ExecutionContext, allowedEnv: readonly string[] = ['GREETING']): Promise<TestServer> {
  const server = await startTestServer({
    app: { toolConfigFiles: [TOOLBOX], allowUnsafeEnv: false, allowedEnv },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid' })],
  });
  t.teardown(() => server.stop());
  return server;
}

async function setupProbe(server: TestServer): Promise<any> {
  const r = await request(server.url, 'POST', `/jobs?${qs({ job_id: '1', tool_id: 'mag_env' })}`);
  if (r.status !== 200) throw new Error(`setup: ${r.status} ${r.text}`);
  return r.json();
}

async function upload(server: TestServer, id: string, name: string, type: string, body: string | Buffer): Promise<Reply> {
  const r = await request(server.url, 'POST', `/jobs/${id}/files?${qs({ job_id: id, name, type })}`, { body });
  if (r.status !== 200) throw new Error(`upload ${name}: ${r.status} ${r.text}`);
  return r;
}

/** Set up a probe job, upload its script, submit it with `env`; the reply and the job's config. */
async function submitProbe(server: TestServer, entries: readonly object[] | ((config: any) => readonly object[]), before?: (config: any) => Promise<void>): Promise<{ config: any; reply: Reply }> {
  const config = await setupProbe(server);
  const env = typeof entries === 'function' ? entries(config) : entries;
  const script = (await upload(server, config.job_id, 'scripts/probe.py', 'tool', await fs.readFile(PROBE))).json().path;
  await before?.(config);
  const output = path.join(config.outputs_directory, 'report.txt');
  const reply = await request(server.url, 'POST', `/jobs/${config.job_id}/submit?${qs({ job_id: config.job_id, command_line: `python3 ${script} ${output}`, env: JSON.stringify(env) })}`);
  return { config, reply };
}

async function report(server: TestServer, config: any): Promise<Record<string, string>> {
  const doc = await waitForJob(server.url, config.job_id);
  if (doc.status !== 'complete') throw new Error(`job ${config.job_id} ${doc.status}: ${doc.stderr}`);
  const text = await fs.readFile(path.join(config.outputs_directory, 'report.txt'), 'utf8');
  return Object.fromEntries(text.trim().split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
}

/** A `.pth` under `<jobdir>/inputs/ub` that, if Python ever imports it, writes `canary`. */
async function plantPth(server: TestServer, config: any, canary: string): Promise<void> {
  const pth = `import os; open(${JSON.stringify(canary)}, 'w').write('client code ran')\n`;
  await upload(server, config.job_id, `ub/lib/${PYTHON_LIB}/site-packages/x.pth`, 'input', pth);
}

/** Every file under `root` except the staging directory (where jobs may write). */
async function filesOutsideStaging(server: TestServer): Promise<string[]> {
  const entries = await fs.readdir(server.root, { recursive: true });
  return entries.filter((e) => e !== 'staging' && !e.startsWith(`staging${path.sep}`) && e !== 'persisted' && !e.startsWith(`persisted${path.sep}`)).sort();
}

async function assertRefused(t: ExecutionContext, server: TestServer, config: any, reply: Reply, name: string): Promise<void> {
  t.is(reply.status, 403, reply.text);
  t.is(reply.json().error, 'MAG_ERR_TOOL_DENIED');
  t.regex(reply.json().message, new RegExp(`env variable ${name} is not allowed on this server \\(allowed_env`));
  const doc = await waitForJob(server.url, config.job_id);
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, new RegExp(`env variable ${name}`));
  for (const control of ['command.sh', 'pid', 'return_code']) {
    t.false(await exists(path.join(config.job_directory, control)), `${control}: nothing ran`);
  }
  t.false(await exists(path.join(config.job_directory, 'home')), 'no job home was made: the job never started');
  t.deepEqual(await fs.readdir(config.outputs_directory), [], 'no output');
}

withPython('public mode: PYTHONUSERBASE pointing at an uploaded .pth is refused (403, job failed) and no client code runs', async (t) => {
  const server = await publicServer(t);
  const canary = path.join(server.root, 'CANARY');
  const before = await filesOutsideStaging(server);
  const userBase = (c: any): object[] => [{ name: 'PYTHONUSERBASE', value: path.join(c.inputs_directory, 'ub') }];
  const { config, reply } = await submitProbe(server, userBase, async (c) => {
    await plantPth(server, c, canary);
  });
  await assertRefused(t, server, config, reply, 'PYTHONUSERBASE');
  t.false(await exists(canary), 'the planted .pth never ran');
  t.deepEqual(await filesOutsideStaging(server), before, 'no file appeared outside the job directories');
});

withPython('public mode: any name outside allowed_env is refused, whichever interpreter reads it; nothing is written outside the job', async (t) => {
  const server = await publicServer(t);
  const outside = path.join(server.root, 'outside');
  const before = await filesOutsideStaging(server);
  for (const name of ['PYTHONPYCACHEPREFIX', 'PYTHONSTARTUP', 'OPENSSL_CONF', 'JDK_JAVA_OPTIONS', 'R_LIBS_USER', 'GEM_HOME', 'GIT_CONFIG_GLOBAL', 'HOME', 'TMPDIR', 'SOME_NEW_VARIABLE']) {
    const { config, reply } = await submitProbe(server, [{ name: 'GREETING', value: 'hi' }, { name, value: outside }]);
    await assertRefused(t, server, config, reply, name);
  }
  t.false(await exists(outside));
  t.deepEqual(await filesOutsideStaging(server), before);
});

withPython('public mode: a name in allowed_env (or the tool\'s <env>) reaches the tool literally; HOME and TMPDIR are the job\'s own', async (t) => {
  const server = await publicServer(t);
  const canary = path.join(server.root, 'CANARY');
  const greeting = `$(touch ${canary}) \`touch ${canary}\` $HOME 'quoted'`;
  const { config, reply } = await submitProbe(server, [{ name: 'GREETING', value: greeting }, { name: 'TOOL_MODE', value: 'fast' }]);
  t.is(reply.text, 'OK', reply.text);
  const seen = await report(server, config);
  t.is(seen['GREETING'], greeting);
  t.is(seen['TOOL_MODE'], 'fast');
  t.is(seen['HOME'], path.join(config.job_directory, 'home'));
  t.is(seen['TMPDIR'], path.join(config.job_directory, 'tmp'));
  t.is(seen['user_site'], 'False', 'PYTHONNOUSERSITE=1: no user site is read');
  t.false(await exists(canary));
});

withPython('HOME does not persist: what one job leaves in ~ (a file, a user-site .pth) is seen by no later job and never reaches the server\'s HOME', async (t) => {
  const server = await publicServer(t);
  const serverHome = process.env['HOME'];
  const homeMarkerBefore = await exists(path.join(SERVER_HOME, 'marker'));
  t.false(await exists(SERVER_USER_SITE!), 'precondition: no planted.pth in the server user\'s site');
  const first = await submitProbe(server, []);
  t.is(first.reply.text, 'OK', first.reply.text);
  const one = await report(server, first.config);
  t.is(one['marker'], 'False');
  t.true(await exists(path.join(first.config.job_directory, 'home', 'marker')), 'the first job wrote its own home');
  t.true(await exists(path.join(first.config.job_directory, 'home', '.local', 'lib', PYTHON_LIB!, 'site-packages', 'planted.pth')));
  const second = await submitProbe(server, []);
  t.is(second.reply.text, 'OK', second.reply.text);
  const two = await report(server, second.config);
  t.is(two['marker'], 'False', 'the second job does not see the first job\'s marker');
  t.is(two['pth_ran'], 'no', 'the first job\'s .pth never ran in the second');
  t.not(two['HOME'], one['HOME']);
  t.is(process.env['HOME'], serverHome, 'the server\'s own HOME is untouched');
  t.is(await exists(path.join(SERVER_HOME, 'marker')), homeMarkerBefore);
  t.false(await exists(SERVER_USER_SITE!), 'nothing planted in the server user\'s site');
});

withPython('private mode: the client is trusted with env, but PYTHONUSERBASE and PYTHONPYCACHEPREFIX are pinned: the .pth never runs, nothing is cached outside', async (t) => {
  const server = await startTestServer();
  t.teardown(() => server.stop());
  const canary = path.join(server.root, 'CANARY');
  const cache = path.join(server.root, 'pycache');
  const r = await request(server.url, 'POST', `/jobs?${qs({ job_id: 'pth' })}`);
  const config = r.json();
  await plantPth(server, config, canary);
  const userBase = path.join(config.inputs_directory, 'ub');
  // The control: without the pins, this python3 runs the planted .pth and caches outside the job.
  const control = path.join(server.root, 'control');
  await fs.mkdir(path.join(control, 'ub', 'lib', PYTHON_LIB!, 'site-packages'), { recursive: true });
  await fs.writeFile(path.join(control, 'ub', 'lib', PYTHON_LIB!, 'site-packages', 'x.pth'), `import os; open(${JSON.stringify(path.join(control, 'ran'))}, 'w')\n`);
  // (Jobs start with PATH, TMPDIR and LC_CTYPE only: no PYTHONDONTWRITEBYTECODE from the test's environment.)
  const { PYTHONDONTWRITEBYTECODE: _dont, ...testEnv } = process.env;
  execFileSync('python3', ['-c', 'import json'], { env: { ...testEnv, PYTHONUSERBASE: path.join(control, 'ub'), PYTHONPYCACHEPREFIX: path.join(control, 'pycache') } });
  t.true(await exists(path.join(control, 'ran')), 'control: an unpinned python3 runs the .pth');
  t.true(await exists(path.join(control, 'pycache')), 'control: an unpinned python3 writes under PYTHONPYCACHEPREFIX');
  const env = JSON.stringify([{ name: 'PYTHONUSERBASE', value: userBase }, { name: 'PYTHONPYCACHEPREFIX', value: cache }, { name: 'PYTHONSTARTUP', value: path.join(userBase, 'x.py') }]);
  const command = 'python3 -c "import json, site; print(site.ENABLE_USER_SITE)" > ../outputs/site.txt';
  const reply = await request(server.url, 'POST', `/jobs/pth/submit?${qs({ job_id: 'pth', command_line: command, env })}`);
  t.is(reply.text, 'OK', reply.text);
  const doc = await waitForJob(server.url, 'pth');
  t.is(doc.status, 'complete', doc.stderr);
  t.is((await fs.readFile(path.join(config.outputs_directory, 'site.txt'), 'utf8')).trim(), 'False');
  t.false(await exists(canary), 'the .pth under PYTHONUSERBASE never ran');
  t.false(await exists(cache), 'no bytecode written outside the job');
});

test('private mode: a job\'s HOME and TMPDIR/TMP/TEMP are inside its job directory, never the server\'s', async (t) => {
  const server = await startTestServer({ managers: (root) => [managerConfig(root)] });
  t.teardown(() => server.stop());
  const r = await request(server.url, 'POST', `/jobs?${qs({ job_id: 'where' })}`);
  const config = r.json();
  const command = 'printf "%s\\n" "$HOME" "$TMPDIR" "$TMP" "$TEMP" > ../outputs/where.txt; touch "$HOME/marker" "$TMPDIR/scratch"';
  const reply = await request(server.url, 'POST', `/jobs/where/submit?${qs({ job_id: 'where', command_line: command })}`);
  t.is(reply.text, 'OK', reply.text);
  const doc = await waitForJob(server.url, 'where');
  t.is(doc.status, 'complete', doc.stderr);
  const [home, tmpdir, tmp, temp] = (await fs.readFile(path.join(config.outputs_directory, 'where.txt'), 'utf8')).trim().split('\n');
  t.is(home, path.join(config.job_directory, 'home'));
  t.is(tmpdir, path.join(config.job_directory, 'tmp'));
  t.is(tmp, tmpdir);
  t.is(temp, tmpdir);
  t.true(await exists(path.join(config.job_directory, 'home', 'marker')));
  t.true(await exists(path.join(config.job_directory, 'tmp', 'scratch')));

  // Galaxy's own entries (home_target job_home, tmp_dir): raw values naming the job's directories.
  await request(server.url, 'POST', `/jobs?${qs({ job_id: 'galaxy' })}`);
  const env = JSON.stringify([{ name: 'HOME', value: '$_GALAXY_JOB_HOME_DIR', raw: true }, { name: 'TMPDIR', value: '$_GALAXY_JOB_TMP_DIR', raw: true }]);
  const galaxy = await request(server.url, 'POST', `/jobs/galaxy/submit?${qs({ job_id: 'galaxy', command_line: 'printf "%s\\n" "$HOME" "$TMPDIR" > ../outputs/where.txt', env })}`);
  t.is(galaxy.text, 'OK', galaxy.text);
  t.is((await waitForJob(server.url, 'galaxy')).status, 'complete');
  const jobdir = path.join(server.staging, 'galaxy');
  t.deepEqual((await fs.readFile(path.join(jobdir, 'outputs', 'where.txt'), 'utf8')).trim().split('\n'), [path.join(jobdir, 'home'), path.join(jobdir, 'tmp')]);
});

test('public mode: allowed_env cannot hand out HOME or TMPDIR; the server warns at startup and refuses entries naming them', async (t) => {
  const server = await publicServer(t, ['HOME', 'TMPDIR', 'GREETING']);
  t.true(server.logLines.some((l) => l.includes('allowed_env lists variables the job script sets itself') && l.includes('"HOME"') && l.includes('"TMPDIR"')));
  const config = await setupProbe(server);
  const reply = await request(server.url, 'POST', `/jobs/${config.job_id}/submit?${qs({ job_id: config.job_id, command_line: 'true', env: JSON.stringify([{ name: 'HOME', value: '/tmp' }]) })}`);
  t.is(reply.status, 403);
  t.regex(reply.json().message, /env variable HOME is set by the server for every job/);
  t.is((await waitForJob(server.url, config.job_id)).status, 'failed');
  t.false(await exists(path.join(config.job_directory, 'command.sh')));
  t.true(server.logLines.some((l) => l.includes('"decision":"deny"') && l.includes('"step":"env"')), 'the refusal is audited');
});
