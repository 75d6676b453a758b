import test from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { PINNED_AFTER_CLIENT_ENV, buildJobScript, envStatements, quoteEnvValue, shellQuote } from '../../src/jobs/script.js';

const run = promisify(execFile);

async function tempDir(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-script-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Run `VAR=<rendered>; echo` in bash and return what the variable holds. */
async function evaluate(statement: string, name: string, env: Record<string, string> = {}): Promise<string> {
  const { stdout } = await run('/bin/bash', ['-c', `${statement}\nprintf '%s' "$${name}"`], { env: { PATH: '/usr/bin:/bin', ...env } });
  return stdout;
}

test('shellQuote makes any string one literal word', async (t) => {
  for (const value of ["it's", '$(id)', '`id`', 'a b\nc', '\\', '"', "'; touch x; '"]) {
    const { stdout } = await run('/bin/bash', ['-c', `printf '%s' ${shellQuote(value)}`]);
    t.is(stdout, value);
  }
});

test('env values keep $NAME references but never run command substitutions', async (t) => {
  const dir = await tempDir(t);
  const canary = path.join(dir, 'canary');
  const hostile = [`$(touch ${canary})`, `\`touch ${canary}\``, `$((1+1))`, `\${X:-$(touch ${canary})}`, `"; touch ${canary}; "`, `\\`, `a\\$(touch ${canary})`];
  for (const value of hostile) {
    const [statement] = envStatements([{ name: 'V', value }], false);
    t.is(await evaluate(statement!, 'V'), value, `literal: ${value}`);
  }
  await t.throwsAsync(fs.access(canary), undefined, 'no command ran');
  const [withRef] = envStatements([{ name: 'P', value: '/opt/bin:$PATH:${HOME}' }], false);
  t.is(await evaluate(withRef!, 'P', { HOME: '/h' }), '/opt/bin:/usr/bin:/bin:/h');
  t.is(quoteEnvValue('a"b'), '"a\\"b"');
});

test('env entry names must be shell identifiers; unsafe kinds only when allowed', (t) => {
  for (const name of ['A;B', '1A', 'A B', '', 'A=B', '$(id)']) {
    t.throws(() => envStatements([{ name, value: 'x' }], true), { code: 'MAG_ERR_BAD_REQUEST' }, name);
  }
  t.throws(() => envStatements([{ execute: 'id' }], false), { code: 'MAG_ERR_TOOL_DENIED' });
  t.throws(() => envStatements([{ file: '/etc/profile' }], false), { code: 'MAG_ERR_TOOL_DENIED' });
  t.throws(() => envStatements([{ name: 'A', value: '$(id)', raw: true }], false), { code: 'MAG_ERR_TOOL_DENIED' });
  t.deepEqual(envStatements([{ execute: 'module load x' }, { file: '/etc/x y' }, { name: 'R', value: 'v', raw: true }], true), [
    'module load x',
    ". '/etc/x y'",
    'R=v; export R',
  ]);
});

test('the job script runs the command in working/, records its return code and survives `exit`', async (t) => {
  const dir = await tempDir(t);
  const jobdir = path.join(dir, "job dir with 'quote");
  for (const sub of ['working', 'metadata']) await fs.mkdir(path.join(jobdir, sub), { recursive: true });
  const script = buildJobScript({
    jobId: '1',
    jobDirectory: jobdir,
    commandLine: 'pwd > ../metadata/where; echo "$GALAXY_SLOTS $GREETING" > ../metadata/env; test -d "$_GALAXY_JOB_TMP_DIR" && test -d "$_GALAXY_JOB_HOME_DIR" && exit 7',
    envStatements: envStatements([{ name: 'GREETING', value: 'hello world' }], false),
    tmpDir: undefined,
    galaxyLib: undefined,
    galaxyVirtualEnv: undefined,
    preserveGalaxyPythonEnvironment: false,
  });
  const file = path.join(jobdir, 'command.sh');
  await fs.writeFile(file, script, { mode: 0o700 });
  const code = await new Promise<number | null>((resolve) => {
    const child = execFile('/bin/bash', [file], { cwd: path.join(jobdir, 'working'), env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' } });
    child.on('exit', (c) => resolve(c));
  });
  t.is(code, 7);
  t.is((await fs.readFile(path.join(jobdir, 'return_code'), 'utf8')).trim(), '7');
  t.is((await fs.readFile(path.join(jobdir, 'metadata', 'where'), 'utf8')).trim(), path.join(jobdir, 'working'));
  t.is((await fs.readFile(path.join(jobdir, 'metadata', 'env'), 'utf8')).trim(), '1 hello world');
  t.is((await fs.readFile(path.join(jobdir, 'metadata', '__instrument_core_galaxy_slots'), 'utf8')).trim(), '1');
});

test('GALAXY_SLOTS follows the scheduler environment', async (t) => {
  const dir = await tempDir(t);
  for (const sub of ['working', 'metadata']) await fs.mkdir(path.join(dir, sub));
  const script = buildJobScript({
    jobId: '1', jobDirectory: dir, commandLine: 'echo "$GALAXY_SLOTS" > ../metadata/slots', envStatements: [],
    tmpDir: undefined, galaxyLib: undefined, galaxyVirtualEnv: undefined, preserveGalaxyPythonEnvironment: false,
  });
  const file = path.join(dir, 'command.sh');
  await fs.writeFile(file, script);
  for (const [env, expected] of [[{ NSLOTS: '4' }, '4'], [{ SLURM_CPUS_ON_NODE: '3' }, '3'], [{ SLURM_NTASKS: '2', SLURM_CPUS_PER_TASK: '3' }, '6'], [{}, '1']] as const) {
    await run('/bin/bash', [file], { cwd: path.join(dir, 'working'), env: { PATH: '/usr/bin:/bin', ...env } });
    t.is((await fs.readFile(path.join(dir, 'metadata', 'slots'), 'utf8')).trim(), expected, JSON.stringify(env));
  }
});

test('GALAXY_HOME puts Galaxy\'s lib on PYTHONPATH only for jobs that preserve the Galaxy Python environment', async (t) => {
  const dir = await tempDir(t);
  for (const sub of ['working', 'metadata']) await fs.mkdir(path.join(dir, sub));
  const file = path.join(dir, 'command.sh');
  for (const preserve of [true, false]) {
    await fs.writeFile(file, buildJobScript({
      jobId: '1', jobDirectory: dir, commandLine: 'echo "${PYTHONPATH:-unset}" > ../metadata/pythonpath', envStatements: [],
      tmpDir: undefined, galaxyLib: '/srv/galaxy/lib', galaxyVirtualEnv: undefined, preserveGalaxyPythonEnvironment: preserve,
    }));
    await run('/bin/bash', [file], { cwd: path.join(dir, 'working'), env: { PATH: '/usr/bin:/bin', PYTHONPATH: '/x' } });
    const value = (await fs.readFile(path.join(dir, 'metadata', 'pythonpath'), 'utf8')).trim();
    t.is(value, preserve ? '/srv/galaxy/lib:/x' : '/x', `preserve=${preserve}`);
  }
});

/** Run a job script built from `env` (rendered statements) and return what the command printed. */
async function runJobScript(t: { teardown(fn: () => unknown): void }, envStatementsText: readonly string[], commandLine: string, inherited: Record<string, string> = {}, tmpDir?: string): Promise<{ dir: string; out: string }> {
  const dir = await tempDir(t);
  for (const sub of ['working', 'metadata']) await fs.mkdir(path.join(dir, sub));
  const file = path.join(dir, 'command.sh');
  await fs.writeFile(file, buildJobScript({
    jobId: '1', jobDirectory: dir, commandLine: `{ ${commandLine}; } > ../metadata/out`, envStatements: envStatementsText,
    tmpDir, galaxyLib: undefined, galaxyVirtualEnv: undefined, preserveGalaxyPythonEnvironment: false,
  }));
  await run('/bin/bash', [file], { cwd: path.join(dir, 'working'), env: { PATH: '/usr/bin:/bin', ...inherited } });
  return { dir, out: await fs.readFile(path.join(dir, 'metadata', 'out'), 'utf8') };
}

const SHOW = 'printf "%s\\n" "$HOME" "$TMPDIR" "$TMP" "$TEMP" "${PYTHONNOUSERSITE-unset}" "${PYTHONUSERBASE-unset}" "${PYTHONSTARTUP-unset}" "${PYTHONPYCACHEPREFIX-unset}"';

test('a job\'s HOME and TMPDIR/TMP/TEMP are its own, whatever the server\'s environment says', async (t) => {
  const inherited = { HOME: '/server/home', TMPDIR: '/server/tmp', TMP: '/server/tmp', TEMP: '/server/tmp', PYTHONUSERBASE: '/server/ub', PYTHONSTARTUP: '/s.py' };
  const { dir, out } = await runJobScript(t, [], SHOW, inherited);
  t.deepEqual(out.trim().split('\n'), [path.join(dir, 'home'), path.join(dir, 'tmp'), path.join(dir, 'tmp'), path.join(dir, 'tmp'), '1', 'unset', 'unset', 'unset']);
  t.true((await fs.stat(path.join(dir, 'home'))).isDirectory());
});

test('the tmp_dir statement may still name the scheduler\'s TMPDIR', async (t) => {
  const { out } = await runJobScript(t, [], 'printf "%s\\n" "$TMPDIR" "$_GALAXY_JOB_TMP_DIR"', { TMPDIR: '/node/scratch' }, '"$TMPDIR"');
  t.deepEqual(out.trim().split('\n'), ['/node/scratch', '/node/scratch']);
});

test('env entries may choose HOME and TMPDIR (Galaxy\'s raw entries); interpreter variables that load code are pinned after them', async (t) => {
  const env = envStatements([
    { name: 'HOME', value: '$_GALAXY_JOB_HOME_DIR/sub', raw: true },
    { name: 'TMPDIR', value: '/scratch' },
    { name: 'PYTHONUSERBASE', value: '/evil' },
    { name: 'PYTHONSTARTUP', value: '/evil.py' },
    { name: 'PYTHONPYCACHEPREFIX', value: '/evil' },
    { name: 'PYTHONNOUSERSITE', value: '' },
    { name: 'PYTHONPATH', value: '/tool/lib' },
  ], true);
  const { dir, out } = await runJobScript(t, env, `${SHOW}; printf '%s\\n' "$PYTHONPATH"`);
  t.deepEqual(out.trim().split('\n'), [path.join(dir, 'home', 'sub'), '/scratch', '/scratch', '/scratch', '1', 'unset', 'unset', 'unset', '/tool/lib']);
});

test('a public server\'s pins after the client entries put HOME and the temporary directories back', async (t) => {
  const env = [...envStatements([{ name: 'HOME', value: '/elsewhere' }, { name: 'TMPDIR', value: '/elsewhere' }, { name: 'TEMP', value: '/elsewhere' }], false, true), ...PINNED_AFTER_CLIENT_ENV];
  const { dir, out } = await runJobScript(t, env, SHOW);
  t.deepEqual(out.trim().split('\n').slice(0, 4), [path.join(dir, 'home'), path.join(dir, 'tmp'), path.join(dir, 'tmp'), path.join(dir, 'tmp')]);
});
