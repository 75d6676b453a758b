/**
 * The job sandbox's part of the job script (issue 9, item 6), without a server: the bwrap arguments,
 * the script as a scheduler would get it (a cluster manager's directives first), and real runs of
 * generated scripts: a 200 KiB command with every quote reaches bash inside byte for byte, a node
 * without bwrap fails the job with a clear message, and the limits bind.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { defaultSandbox, type SandboxConfig } from '../../src/config/index.js';
import { SETUP_DIRECTORIES } from '../../src/jobs/layout.js';
import { SANDBOXED_COMMAND, bwrapArguments, limitStatements } from '../../src/jobs/sandbox.js';
import { buildJobScript, type ScriptSpec } from '../../src/jobs/script.js';

const run = promisify(execFile);

async function jobDir(t: ExecutionContext): Promise<string> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-sandbox-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  await fs.chmod(root, 0o711);
  const dir = path.join(root, 'job');
  await fs.mkdir(dir);
  for (const d of SETUP_DIRECTORIES) await fs.mkdir(path.join(dir, d));
  return dir;
}

function spec(dir: string, commandLine: string, sandbox: SandboxConfig, header: readonly string[] = []): ScriptSpec {
  return {
    header,
    jobId: 'j1',
    jobDirectory: dir,
    commandLine,
    envStatements: [],
    tmpDir: undefined,
    galaxyLib: undefined,
    galaxyVirtualEnv: undefined,
    preserveGalaxyPythonEnvironment: false,
    sandbox,
  };
}

/** Write and run the job script as a local backend would (bash, in its own directory). */
async function runScript(dir: string, script: string): Promise<{ code: number; stderr: string }> {
  await fs.writeFile(path.join(dir, 'command.sh'), script, { mode: 0o755 });
  try {
    const { stderr } = await run('/bin/bash', [path.join(dir, 'command.sh')], { cwd: dir, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }, maxBuffer: 1 << 24 });
    return { code: 0, stderr };
  } catch (error) {
    const e = error as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
}

test('bwrap arguments: every namespace, no network unless allowed, the system read-only, the job directory read-write, no /etc as a whole', (t) => {
  const args = bwrapArguments(defaultSandbox(), '/srv/staging/j1');
  const joined = args.join(' ');
  for (const flag of ['--unshare-all', '--unshare-user', '--disable-userns', '--die-with-parent']) t.true(args.includes(flag), flag);
  t.false(args.includes('--share-net'));
  t.true(bwrapArguments({ ...defaultSandbox(), network: true }, '/srv/staging/j1').includes('--share-net'));
  t.true(joined.includes('--ro-bind-try /usr /usr'));
  t.true(joined.includes('--ro-bind-try /etc/passwd /etc/passwd'));
  t.false(joined.includes('/etc/shadow'));
  t.false(args.includes('/etc'), 'never /etc as a whole');
  t.false(joined.includes('/etc/ssl '), 'not /etc/ssl/private');
  t.true(joined.includes('--bind /srv/staging/j1 /srv/staging/j1'));
  t.false(joined.includes('/srv/staging '), 'not the staging directory');
  t.true(joined.includes('--ro-bind-try /srv/staging/j1/command.sh /srv/staging/j1/command.sh'));
  t.true(joined.includes('--ro-bind-try /srv/staging/j1/pid /srv/staging/j1/pid'));
  t.true(joined.includes('--tmpfs /tmp'));
  t.true(joined.endsWith(`--chdir /srv/staging/j1/working -- /bin/bash ${SANDBOXED_COMMAND}`));
  t.true(bwrapArguments({ ...defaultSandbox(), roBinds: ['/opt/tools'] }, '/j').join(' ').includes('--ro-bind-try /opt/tools /opt/tools'));
});

test('limits become ulimit statements (bash counts -v and -f in KiB); 0 means none', (t) => {
  t.deepEqual(limitStatements({ ...defaultSandbox(), processes: 0 }), []);
  t.deepEqual(limitStatements({ ...defaultSandbox(), cpuTime: 60, memory: 2 * 1024 ** 3, processes: 100, fileSize: 1024 ** 2 }), [
    'ulimit -t 60 && ulimit -v 2097152 && ulimit -u 100 && ulimit -f 1024 || exit 1',
  ]);
});

test('the cluster form: directives stay right after the shebang, the script parses, bookkeeping stays outside the sandbox', async (t) => {
  const dir = '/shared/staging/j1';
  const script = buildJobScript(spec(dir, "echo 'hi'", { ...defaultSandbox(), bwrap: '/opt/bwrap/bin/bwrap', memory: 1024 ** 3 }, ['#SBATCH --job-name=pulsar_j1', '#SBATCH --mem=1024']));
  const lines = script.split('\n');
  t.deepEqual(lines.slice(0, 3), ['#!/bin/bash', '#SBATCH --job-name=pulsar_j1', '#SBATCH --mem=1024']);
  await run('/bin/bash', ['-n', '-c', script]);
  const pid = lines.findIndex((l) => l.startsWith('echo $$ >'));
  const sandboxed = lines.findIndex((l) => l.startsWith('_magnetar_command='));
  const returnCode = lines.findIndex((l) => l.startsWith(`echo "$return_code" > '${dir}/return_code'`));
  t.true(pid > 0 && pid < sandboxed && sandboxed < returnCode, 'pid before, return code after the sandbox');
  t.true(script.includes("command -v '/opt/bwrap/bin/bwrap' >/dev/null || {"), 'a node without bwrap fails the job with a message');
  t.true(script.includes('ulimit -v 1048576'));
  t.true(script.includes('exec setpriv --reuid=65534 --regid=65534 --clear-groups -- "${_magnetar_bwrap[@]}"'));
  t.true(script.includes(`then rm -f -- '${dir}/return_code'; fi`), 'nothing the job left is followed');
  t.false(script.includes("'echo '\\''hi'\\''\n'"), 'the command is not run by the outer shell');
});

test('a 200 KiB command with every kind of quote reaches bash inside the sandbox byte for byte, and its exit code comes back', async (t) => {
  const dir = await jobDir(t);
  const payload = `it's "quoted" $HOME \`x\` \\ ${'y'.repeat(200 * 1024)}`;
  const command = `: ${JSON.stringify(payload).replaceAll('$', '\\$').replaceAll('`', '\\`')}\ncp ${SANDBOXED_COMMAND} ../outputs/copy\nexit 7`;
  const { code, stderr } = await runScript(dir, buildJobScript(spec(dir, command, defaultSandbox())));
  t.is(code, 7, stderr);
  t.is(await fs.readFile(path.join(dir, 'return_code'), 'utf8'), '7\n');
  const copy = await fs.readFile(path.join(dir, 'outputs', 'copy'), 'utf8');
  t.true(copy.endsWith(`${command}\n`), 'the text bash ran ends with the command, unchanged');
});

test('a node without bubblewrap: the job fails with exit 127 and says why; nothing runs unsandboxed', async (t) => {
  const dir = await jobDir(t);
  const { code, stderr } = await runScript(dir, buildJobScript(spec(dir, 'touch ../outputs/ran', { ...defaultSandbox(), bwrap: '/nonexistent/bwrap' })));
  t.is(code, 127);
  t.regex(stderr, /magnetar: bubblewrap \(\/nonexistent\/bwrap\) is not installed on .*: the job cannot run in its sandbox/);
  await t.throwsAsync(fs.access(path.join(dir, 'outputs', 'ran')));
});

test('limits bind the command: CPU seconds and processes', async (t) => {
  const dir = await jobDir(t);
  const cpu = await runScript(dir, buildJobScript(spec(dir, 'ulimit -t > ../outputs/t; ulimit -u > ../outputs/u; ulimit -v > ../outputs/v', { ...defaultSandbox(), cpuTime: 5, processes: 77, memory: 1024 ** 3 })));
  t.is(cpu.code, 0, cpu.stderr);
  t.is(await fs.readFile(path.join(dir, 'outputs', 't'), 'utf8'), '5\n');
  t.is(await fs.readFile(path.join(dir, 'outputs', 'u'), 'utf8'), '77\n');
  t.is(await fs.readFile(path.join(dir, 'outputs', 'v'), 'utf8'), '1048576\n');
});

test('links the job leaves where the script writes after it are never followed: no file appears outside the job', async (t) => {
  const dir = await jobDir(t);
  const outside = path.join(path.dirname(dir), 'outside');
  await fs.mkdir(outside, { mode: 0o777 });
  const command = `cd .. && mv metadata metadata.real && ln -s '${outside}' metadata && ln -s '${outside}/rc' return_code; exit 5`;
  const { code, stderr } = await runScript(dir, buildJobScript(spec(dir, command, defaultSandbox())));
  t.is(code, 5, stderr);
  t.true((await fs.lstat(path.join(dir, 'metadata'))).isSymbolicLink(), 'the job did plant its link');
  t.deepEqual(await fs.readdir(outside), [], 'nothing written through the links');
  t.is(await fs.readFile(path.join(dir, 'return_code'), 'utf8'), '5\n');
  t.false((await fs.lstat(path.join(dir, 'return_code'))).isSymbolicLink());
});

// A server that is not root: the job script runs bwrap itself, as the server's user.
const asRoot = process.getuid?.() === 0 ? test : test.skip;
asRoot('a job script run by an unprivileged user sandboxes its command without setpriv, under that uid', async (t) => {
  const dir = await jobDir(t);
  const uid = 65534;
  await fs.chown(dir, uid, uid);
  for (const d of SETUP_DIRECTORIES) await fs.chown(path.join(dir, d), uid, uid);
  const command = `id -u > ../outputs/uid; (echo planted >> '${dir}/command.sh') 2>/dev/null || echo refused > ../outputs/script; ls / > ../outputs/root`;
  await fs.writeFile(path.join(dir, 'command.sh'), buildJobScript(spec(dir, command, defaultSandbox())), { mode: 0o755 });
  await fs.chown(path.join(dir, 'command.sh'), uid, uid);
  const script = await fs.readFile(path.join(dir, 'command.sh'), 'utf8');
  try {
    await run('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', '/bin/bash', path.join(dir, 'command.sh')], { cwd: '/', env: { PATH: '/usr/bin:/bin' } });
  } catch (error) {
    t.fail(`the job failed: ${(error as { stderr: string }).stderr}`);
    return;
  }
  t.is(await fs.readFile(path.join(dir, 'outputs', 'uid'), 'utf8'), `${uid}\n`);
  t.is(await fs.readFile(path.join(dir, 'outputs', 'script'), 'utf8'), 'refused\n', 'its own job script is read-only to it even under the same uid');
  t.is(await fs.readFile(path.join(dir, 'command.sh'), 'utf8'), script);
  t.false((await fs.readFile(path.join(dir, 'outputs', 'root'), 'utf8')).split('\n').includes('root'));
  t.is(await fs.readFile(path.join(dir, 'return_code'), 'utf8'), '0\n');
});
