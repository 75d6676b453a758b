import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { BackendError } from '../../src/errors.js';
import { remoteCommandLine, type CommandResult } from '../../src/managers/cli/command.js';
import { localShell, type ShellPlugin } from '../../src/managers/cli/shell.js';
import { CommandRunner, Slots } from '../../src/managers/process-runner.js';

const exec = promisify(execFile);
const PATH = process.env['PATH'] ?? '/usr/bin:/bin';

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-runner-')));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('LocalShell runner: no shell in between, stdin from a file, a working directory, timeouts and missing programs reported', async (t) => {
  const dir = await tempDir(t);
  const runner = new CommandRunner(localShell(), { timeoutMs: 500, env: { PATH }, parallel: 2 });
  const canary = path.join(dir, 'canary');
  const literal = await runner.run({ argv: ['printf', '%s', `; touch ${canary}`] });
  t.is(literal.code, 0);
  t.is(literal.stdout, `; touch ${canary}`);
  await t.throwsAsync(fs.access(canary));

  const input = path.join(dir, 'script.sh');
  await fs.writeFile(input, '#BSUB -J x\necho hi\n');
  t.is((await runner.run({ argv: ['cat'], stdinFile: input })).stdout, '#BSUB -J x\necho hi\n');
  const unreadable = await runner.run({ argv: ['cat'], stdinFile: path.join(dir, 'missing') });
  t.is(unreadable.code, null);
  t.regex(unreadable.error ?? '', /cannot read/);
  t.is((await runner.run({ argv: ['pwd'], cwd: dir })).stdout, `${dir}\n`);
  t.is((await runner.run({ argv: ['env'] }, { PATH, ONLY: 'this' })).stdout.split('\n').filter((l) => l !== '').sort().join(','), `ONLY=this,PATH=${PATH}`);

  const slow = await runner.run({ argv: ['sleep', '5'] });
  t.is(slow.code, null);
  t.regex(slow.error ?? '', /timed out after 1 s/);
  const missing = await runner.run({ argv: ['magnetar-no-such-program'] });
  t.is(missing.code, null);
  t.regex(missing.error ?? '', /magnetar-no-such-program: command not found; is it installed/);
  const failing = await runner.run({ argv: ['sh', '-c', 'echo oops >&2; exit 7'] });
  t.deepEqual([failing.code, failing.stderr], [7, 'oops\n']);
  const signalled = await runner.run({ argv: ['sh', '-c', 'kill -9 $$'] });
  t.deepEqual([signalled.code, signalled.error], [null, 'killed by SIGKILL']);
});

test('a remote shell\'s command line runs in the command\'s directory', async (t) => {
  const dir = await tempDir(t);
  const odd = path.join(dir, "it's here");
  await fs.mkdir(odd);
  const { stdout } = await exec('sh', ['-c', remoteCommandLine({ argv: ['pwd'], cwd: odd })]);
  t.is(stdout, `${odd}\n`);
});

test('a timeout stops everything the command started (its process group), not only the command', async (t) => {
  const dir = await tempDir(t);
  const runner = new CommandRunner(localShell(), { timeoutMs: 300, env: { PATH } });
  const pidFile = path.join(dir, 'grandchild');
  // The shell ignores SIGTERM (SIGKILL follows after the grace period); its background child
  // would outlive it unless the whole process group is signalled.
  const result = await runner.run({ argv: ['sh', '-c', `sleep 30 & echo $! > '${pidFile}'; trap '' TERM; wait`] });
  t.is(result.code, null);
  t.regex(result.error ?? '', /timed out/);
  const pid = Number(await fs.readFile(pidFile, 'utf8'));
  const deadline = Date.now() + 5000;
  while (alive(pid) && Date.now() < deadline) await sleep(20);
  t.false(alive(pid), 'the background process of a timed-out command does not survive');
});

test('a command that leaves a process holding its output open still finishes (at its timeout), with its exit status', async (t) => {
  const dir = await tempDir(t);
  const runner = new CommandRunner(localShell(), { timeoutMs: 400, env: { PATH } });
  const pidFile = path.join(dir, 'daemon');
  const started = Date.now();
  const result = await runner.run({ argv: ['sh', '-c', `setsid sleep 30 & echo $! > '${pidFile}'; echo done; exit 3`] });
  t.teardown(async () => {
    const pid = Number(await fs.readFile(pidFile, 'utf8').catch(() => '0'));
    if (pid > 1 && alive(pid)) process.kill(pid, 'SIGKILL');
  });
  t.true(Date.now() - started < 5000);
  t.is(result.code, 3);
  t.is(result.stdout, 'done\n');
});

test('output beyond the bound is an error, not a memory problem', async (t) => {
  const runner = new CommandRunner(localShell(), { timeoutMs: 20_000, env: { PATH } });
  const result = await runner.run({ argv: ['sh', '-c', 'yes 0123456789abcdef | head -c 70000000'] });
  t.is(result.code, null);
  t.is(result.error, 'printed more output than magnetar reads');
});

test('Slots: a released slot goes to the longest waiter, never to a caller that arrives in between', async (t) => {
  const slots = new Slots(1);
  const order: string[] = [];
  await slots.acquire();
  const waiter = slots.acquire().then(() => order.push('waiter'));
  // The release and a new caller in the same tick: the old "free, then wake" code let both in.
  slots.release();
  const latecomer = slots.acquire().then(() => order.push('latecomer'));
  await sleep(10);
  t.deepEqual(order, ['waiter'], 'the latecomer waits for the waiter to release');
  slots.release();
  await Promise.all([waiter, latecomer]);
  t.deepEqual(order, ['waiter', 'latecomer']);
});

test('Slots: however acquire and release interleave, no more than the cap hold a slot', async (t) => {
  const cap = 3;
  const slots = new Slots(cap);
  let held = 0;
  let most = 0;
  const holders: Promise<void>[] = [];
  const hold = async (ticks: number): Promise<void> => {
    await slots.acquire();
    held++;
    most = Math.max(most, held);
    for (let i = 0; i < ticks; i++) await Promise.resolve();
    held--;
    slots.release();
    // Arrive right after a release, before the woken waiter has run.
    if (holders.length < 400) holders.push(hold(ticks % 3));
  };
  for (let i = 0; i < 50; i++) holders.push(hold(i % 5));
  while (holders.length < 400) await sleep(1);
  await Promise.all(holders);
  t.true(most <= cap, `at most ${cap} at once, saw ${most}`);
  t.is(most, cap, 'and the cap is used');
});

test('many concurrent run() calls never run more processes at once than the cap', async (t) => {
  const dir = await tempDir(t);
  const cap = 2;
  const runner = new CommandRunner(localShell(), { timeoutMs: 20_000, env: { PATH }, parallel: cap });
  // Each process counts the processes of this test running with it (a marker file each).
  const script = `touch '${dir}'/run.$$; ls '${dir}' | grep -c '^run\\.' >> '${dir}/counts'; sleep 0.05; rm '${dir}'/run.$$`;
  const runs: Promise<CommandResult>[] = [];
  const more = (): void => {
    runs.push(runner.run({ argv: ['sh', '-c', script] }));
  };
  for (let i = 0; i < 12; i++) runs.push(runner.run({ argv: ['sh', '-c', script] }).finally(more));
  while (runs.length < 24) await sleep(5);
  const results = await Promise.all(runs);
  t.true(results.every((r) => r.code === 0));
  const counts = (await fs.readFile(path.join(dir, 'counts'), 'utf8')).trim().split('\n').map(Number);
  t.is(counts.length, 24);
  t.true(Math.max(...counts) <= cap, `at most ${cap} at once, saw ${Math.max(...counts)}`);
});

test('failure(): could not run → MAG_ERR_BACKEND_UNREACHABLE naming the shell; ran and said no → the caller\'s code and words', async (t) => {
  const runner = new CommandRunner(localShell(), { timeoutMs: 5000, env: { PATH } });
  const notFound = { argv: ['magnetar-no-such-program'] } as const;
  const unreachable = runner.failure(notFound, await runner.run(notFound), 'MAG_ERR_BACKEND_SUBMIT', 'X did not accept the job');
  t.true(unreachable instanceof BackendError);
  t.is(unreachable.code, 'MAG_ERR_BACKEND_UNREACHABLE');
  t.regex(unreachable.message, /^LocalShell could not run magnetar-no-such-program: .*command not found/);

  const no = { argv: ['sh', '-c', 'echo "queue full" >&2; exit 1'] } as const;
  const refused = runner.failure(no, await runner.run(no), 'MAG_ERR_BACKEND_SUBMIT', 'X did not accept the job');
  t.is(refused.code, 'MAG_ERR_BACKEND_SUBMIT');
  t.is(refused.message, 'X did not accept the job: queue full (exit status 1)');

  // ssh's own failure (exit 255) is the transport's, whatever the command was.
  const ssh: ShellPlugin = { ...localShell(), name: 'SecureShell', remote: true, target: 'galaxy@submit:22', transportFailed: (r) => r.code === 255 };
  const viaSsh = new CommandRunner(ssh, { timeoutMs: 5000, env: { PATH } });
  const hostKey = { argv: ['sh', '-c', 'echo "Host key verification failed." >&2; exit 255'] } as const;
  const transport = viaSsh.failure(hostKey, await viaSsh.run(hostKey), 'MAG_ERR_BACKEND_COMMAND', 'squeue failed');
  t.is(transport.code, 'MAG_ERR_BACKEND_UNREACHABLE');
  t.regex(transport.message, /^SecureShell could not run sh on galaxy@submit:22: Host key verification failed/);
});
