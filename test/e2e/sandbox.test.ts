/**
 * The job sandbox over real HTTP (issue 9, item 6): a tool wrapper that goes looking for the
 * server's secrets, other jobs, the host's /tmp, the server process and a loopback service finds
 * none of them, leaves no trace, and the server runs on; legit jobs, cancel and restart recovery
 * keep working with the sandbox on; public mode runs sandboxed by default.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultSandbox, type ManagerConfig } from '../../src/config/index.js';
import { cliManager, scancelOnTeardown } from '../helpers/cli-e2e.js';
import { request, qs, statusOf, waitForJob } from '../helpers/client.js';
import { SGE_ENV, clusterTest } from '../helpers/cluster.js';
import { spawnServer, serverRoot } from '../helpers/process.js';
import { makeRoot, managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import { waitUntil } from '../helpers/wait.js';

// Before any test is declared (ava): are the local Slurm and Grid Engine up?
const slurmTest = await clusterTest('slurm');
const sgeTest = await clusterTest('sge');

const PROBE = fileURLToPath(new URL('../../../test/fixtures/sandbox/tools/mag_probe/probe.sh', import.meta.url));
/** A public toolbox whose one tool (mag_probe) runs that wrapper, approved by its validator. */
const PROBE_TOOLBOX = fileURLToPath(new URL('../../../test/fixtures/sandbox/toolbox.xml', import.meta.url));
const TOOLBOX_DIR = fileURLToPath(new URL('../../../toolbox/', import.meta.url));
/** The token in the configuration file an administrator keeps next to the server. */
const TOKEN = 'sandbox-test-token-0123456789abcdef';

const HARMLESS = ['read_config', 'list_persistence', 'read_persistence_record', 'read_other_input', 'list_staging', 'write_staging_parent', 'write_host_tmp', 'read_shadow', 'read_server_environ', 'signal_server', 'connect_loopback', 'uid_0'];
const ALL = [...HARMLESS, 'write_own_script', 'write_own_pid', 'kill_server'];
const WRITES_JUDGED_ON_HOST = ['write_staging_parent', 'write_host_tmp'];

async function sandboxedServer(t: ExecutionContext, sandbox: boolean): Promise<TestServer> {
  const server = await startTestServer({
    managers: (root) => [managerConfig(root, { sandbox: sandbox ? defaultSandbox() : false })],
  });
  t.teardown(() => server.stop());
  // What an administrator keeps next to the server: its configuration with the token, readable by all.
  await fs.writeFile(path.join(server.root, 'server.ini'), `[app:main]\nprivate_token = ${TOKEN}\n`, { mode: 0o644 });
  return server;
}

const auth = qs;

async function setup(server: TestServer, id: string, toolId?: string): Promise<any> {
  const r = await request(server.url, 'POST', `/jobs?${auth({ job_id: id, ...(toolId === undefined ? {} : { tool_id: toolId }) })}`);
  if (r.status !== 200) throw new Error(`setup ${id}: ${r.status} ${r.text}`);
  return r.json();
}

async function upload(server: TestServer, id: string, name: string, type: string, body: string | Buffer): Promise<string> {
  const r = await request(server.url, 'POST', `/jobs/${id}/files?${auth({ job_id: id, name, type })}`, { body });
  if (r.status !== 200) throw new Error(`upload ${name}: ${r.status} ${r.text}`);
  return r.json().path as string;
}

async function submit(server: TestServer, id: string, commandLine: string): Promise<void> {
  const r = await request(server.url, 'POST', `/jobs/${id}/submit?${auth({ job_id: id, command_line: commandLine })}`);
  if (r.status !== 200) throw new Error(`submit ${id}: ${r.status} ${r.text}`);
}

function listen(): Promise<{ server: net.Server; port: number; connections: () => number }> {
  let count = 0;
  const server = net.createServer((socket) => {
    count += 1;
    socket.destroy();
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as net.AddressInfo).port, connections: () => count }));
  });
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(() => true, () => false);
}

/** Every file below `dir` (names relative to it), without following links. */
async function tree(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

/** Runs the probe as a job (next to another client's job) and returns its report. */
async function runProbe(t: ExecutionContext, server: TestServer, mode: 'all' | 'harmless', toolId?: string): Promise<{ report: Record<string, string>; listener: Awaited<ReturnType<typeof listen>>; hostTmp: string }> {
  const listener = await listen();
  t.teardown(() => listener.server.close());
  const other = await setup(server, `other-${mode}`, toolId);
  const otherInput = await upload(server, other.job_id, 'secret.txt', 'input', 'the other client\'s data\n');
  const job = await setup(server, `probe-${mode}`, toolId);
  const script = await upload(server, job.job_id, 'probe.sh', 'tool', await fs.readFile(PROBE));
  const hostTmp = path.join(os.tmpdir(), `magnetar-sandbox-canary-${randomBytes(8).toString('hex')}`);
  t.teardown(() => fs.rm(hostTmp, { force: true }));
  const report = path.join(job.outputs_directory as string, 'report.txt');
  const args = [
    report, path.join(server.root, 'server.ini'), server.config.app.persistenceDirectory!, otherInput, server.staging, server.root,
    hostTmp, String(process.pid), String(listener.port), mode,
  ];
  await submit(server, job.job_id, `bash ${[script, ...args].map((a) => `'${a}'`).join(' ')}`);
  const doc = await waitForJob(server.url, job.job_id);
  t.is(doc.status, 'complete', JSON.stringify(doc));
  const text = await fs.readFile(report, 'utf8');
  t.true(text.endsWith('done\n'), text);
  const lines = text.trim().split('\n').filter((l) => l !== 'done');
  return { report: Object.fromEntries(lines.map((l) => l.split('=') as [string, string])), listener, hostTmp };
}

/**
 * Run the probe with every attempt (`all`) and check each one failed and left no trace: nothing
 * outside the two jobs' directories is new, the host's /tmp has no canary, the listener saw no
 * connection, the job script and pid file are what the server wrote, and the server still answers.
 */
async function probeEverythingRefused(t: ExecutionContext, server: TestServer, toolId?: string): Promise<void> {
  const before = await tree(server.root);
  const { report, listener, hostTmp } = await runProbe(t, server, 'all', toolId);
  t.deepEqual(Object.keys(report).sort(), [...ALL].sort());
  // A write may land in the sandbox's own view (its private /tmp, the path down to its job
  // directory): what counts is that nothing reaches the host, checked below.
  for (const name of ALL.filter((n) => !WRITES_JUDGED_ON_HOST.includes(n))) t.is(report[name], 'refused', name);
  const after = await tree(server.root);
  const outsideJobs = (names: string[]): string[] => names.filter((n) => !n.startsWith(`staging${path.sep}probe-all`) && !n.startsWith(`staging${path.sep}other-all`) && !n.startsWith('persisted'));
  t.deepEqual(outsideJobs(after), outsideJobs(before));
  t.false(await exists(path.join(server.root, 'planted-by-job')));
  t.false(await exists(hostTmp));
  t.is(listener.connections(), 0);
  const jobDir = path.join(server.staging, 'probe-all');
  t.true((await fs.readFile(path.join(jobDir, 'command.sh'), 'utf8')).startsWith('#!/bin/bash\n'));
  t.regex(await fs.readFile(path.join(jobDir, 'pid'), 'utf8'), /^\d+\n$/);
  t.is(await statusOf(server.url, 'probe-all'), 'complete');
}

test('every probe of a wrapper that goes looking fails inside the sandbox, and leaves no trace', async (t) => {
  await probeEverythingRefused(t, await sandboxedServer(t, true));
});

test('public mode: a toolbox tool whose validator approves a wrapper that goes looking is stopped by the default sandbox', async (t) => {
  const server = await startTestServer({ app: { toolConfigFiles: [PROBE_TOOLBOX], allowUnsafeEnv: false } });
  t.teardown(() => server.stop());
  await fs.writeFile(path.join(server.root, 'server.ini'), `[app:main]\nprivate_token = ${TOKEN}\n`, { mode: 0o644 });
  await probeEverythingRefused(t, server, 'mag_probe');
});

test('control: the same probe run unsandboxed finds what the sandbox hides (the probes are real)', async (t) => {
  const server = await sandboxedServer(t, false);
  const { report, listener, hostTmp } = await runProbe(t, server, 'harmless');
  for (const name of ['read_config', 'list_persistence', 'read_other_input', 'list_staging', 'write_staging_parent', 'write_host_tmp', 'signal_server', 'connect_loopback']) {
    t.is(report[name], 'succeeded', name);
  }
  t.true(await exists(hostTmp));
  await waitUntil('the listener to see the connection', async () => listener.connections() > 0, 10_000);
});

test('a legit job produces its output in the sandbox, sees its own HOME and TMPDIR, and runs unprivileged', async (t) => {
  const server = await sandboxedServer(t, true);
  const job = await setup(server, 'legit');
  await upload(server, job.job_id, 'in.txt', 'input', 'line one\nline two\n');
  const out = path.join(job.outputs_directory as string, 'out.txt');
  await submit(server, job.job_id, `cat ../inputs/in.txt > '${out}' && echo "home=$HOME tmp=$TMPDIR uid=$(id -u)" >> '${out}' && echo scratch > "$TMPDIR/x" && echo hi > /tmp/y && ls / > '${out}.root' && ls -l /proc/self/fd/ > '${out}.fds'`);
  const doc = await waitForJob(server.url, 'legit');
  t.is(doc.status, 'complete', doc.stderr);
  t.is(doc.returncode, 0, doc.stderr);
  const text = await fs.readFile(out, 'utf8');
  const jobDir = path.join(server.staging, 'legit');
  t.true(text.startsWith('line one\nline two\n'));
  t.true(text.includes(`home=${jobDir}/home tmp=${jobDir}/tmp`), text);
  if (process.getuid?.() === 0) t.true(text.includes(`uid=${defaultSandbox().uid}`), text);
  t.is(await fs.readFile(path.join(jobDir, 'tmp', 'x'), 'utf8'), 'scratch\n');
  const root = (await fs.readFile(`${out}.root`, 'utf8')).trim().split('\n');
  t.false(root.includes('root') || root.includes('home') || root.includes('work') || root.includes('srv'), root.join(' '));
  // No descriptor the server process inherited or opened reaches the command: only its streams
  // (and the directory ls lists).
  const fds = (await fs.readFile(`${out}.fds`, 'utf8')).split('\n').flatMap((l) => (/ (\d+) -> (.*)$/.exec(l) ?? []).slice(1, 3).join(' ') || []);
  t.deepEqual(fds.filter((f) => !/^3 \/proc\/\d+\/fd$/.test(f)), ['0 /dev/null', `1 ${out}.fds`, `2 ${path.join(jobDir, 'metadata', 'job_stderr')}`], fds.join(', '));
});

test('what the administrator points jobs at (tool_dependency_dir, galaxy_home) is visible read-only in the sandbox', async (t) => {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const deps = path.join(root, 'deps');
  await fs.mkdir(path.join(deps, 'tool', '1.0'), { recursive: true });
  await fs.writeFile(path.join(deps, 'tool', '1.0', 'env.sh'), 'TOOL_READY=yes\n');
  const server = await startTestServer({
    root,
    app: { toolDependencyDir: deps },
    managers: (dir) => [managerConfig(dir, { sandbox: defaultSandbox() })],
  });
  t.teardown(() => server.stop());
  const job = await setup(server, 'deps');
  const out = path.join(job.outputs_directory as string, 'out.txt');
  await submit(server, job.job_id, `cat '${deps}/tool/1.0/env.sh' > '${out}'; (echo x >> '${deps}/tool/1.0/env.sh') 2>/dev/null || echo read-only >> '${out}'`);
  t.is((await waitForJob(server.url, 'deps')).returncode, 0);
  t.is(await fs.readFile(out, 'utf8'), 'TOOL_READY=yes\nread-only\n');
});

test('a failing command keeps its exit code through the sandbox, and the limits bind', async (t) => {
  const server = await startTestServer({
    managers: (root) => [managerConfig(root, { sandbox: { ...defaultSandbox(), fileSize: 4096 } })],
  });
  t.teardown(() => server.stop());
  const job = await setup(server, 'exit');
  await submit(server, job.job_id, 'exit 3');
  t.is((await waitForJob(server.url, 'exit')).returncode, 3);
  const big = await setup(server, 'big');
  await submit(server, big.job_id, `head -c 100000 /dev/zero > '${big.outputs_directory}/big'; ulimit -f > '${big.outputs_directory}/limit'`);
  await waitForJob(server.url, 'big');
  t.is(await fs.readFile(path.join(big.outputs_directory as string, 'limit'), 'utf8'), '4\n');
  t.true((await fs.stat(path.join(big.outputs_directory as string, 'big'))).size <= 4096);
});

/** Pids of processes whose command line contains `marker`. */
async function processesWith(marker: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.split('\0').includes(marker)) found.push(Number(entry));
  }
  return found;
}

test('cancel of a sandboxed running job kills everything it started', async (t) => {
  const server = await sandboxedServer(t, true);
  const marker = String(40_000 + Math.floor(Math.random() * 20_000));
  const job = await setup(server, 'long');
  // A child that leaves the process group and ignores SIGTERM: only the sandbox's end takes it.
  await submit(server, job.job_id, `setsid bash -c 'trap "" TERM; sleep ${marker}' & sleep ${marker}; wait`);
  await waitUntil('both sleeps to run', async () => (await processesWith(marker)).length === 2, 20_000);
  t.is((await request(server.url, 'PUT', `/jobs/long/cancel?${auth({ job_id: 'long' })}`)).text, 'OK');
  await waitUntil('no process of the job to be left', async () => (await processesWith(marker)).length === 0, 20_000);
  t.is(await statusOf(server.url, 'long'), 'cancelled');
});

test('restart recovery: a sandboxed job running while the server is killed completes after the restart', async (t) => {
  const { root, ini } = await serverRoot(t, '[manager:_default_]\ntype = queued_python\nsandbox = true\n');
  let server = await spawnServer(ini);
  t.teardown(() => server.kill('SIGKILL'));
  const setupReply = await request(server.url, 'POST', `/jobs?${qs({ job_id: 'r1' })}`);
  t.is(setupReply.status, 200, setupReply.text);
  const outputs = setupReply.json().outputs_directory as string;
  await request(server.url, 'POST', `/jobs/r1/files?${qs({ job_id: 'r1', name: 'in.txt', type: 'input' })}`, { body: 'kept\n' });
  const stamp = path.join(root, 'staging', 'r1', 'working', 'go');
  await request(server.url, 'POST', `/jobs/r1/submit?${qs({ job_id: 'r1', command_line: `while [ ! -e '${stamp}' ]; do sleep 0.1; done; cat ../inputs/in.txt > '${outputs}/out.txt'` })}`);
  await waitUntil('the job to run', async () => (await statusOf(server.url, 'r1')) === 'running', 20_000);
  t.true((await fs.readFile(path.join(root, 'staging', 'r1', 'command.sh'), 'utf8')).includes("'--unshare-all'"), 'the job runs sandboxed');
  await server.kill('SIGKILL');
  await fs.writeFile(stamp, '');
  server = await spawnServer(ini);
  const doc = await waitForJob(server.url, 'r1', '', '', 30_000);
  t.is(doc.status, 'complete', JSON.stringify(doc));
  t.is(doc.returncode, 0);
  t.is(await fs.readFile(path.join(outputs, 'out.txt'), 'utf8'), 'kept\n');
});

test('public mode runs jobs sandboxed by default, and a sample tool job passes', async (t) => {
  const server = await startTestServer({
    app: { toolConfigFiles: [path.join(TOOLBOX_DIR, 'tools.xml')], allowUnsafeEnv: false },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid' })],
  });
  t.teardown(() => server.stop());
  const setupReply = await request(server.url, 'POST', `/jobs?${qs({ job_id: '1', tool_id: 'cat1' })}`);
  t.is(setupReply.status, 200, setupReply.text);
  const job = setupReply.json();
  await request(server.url, 'POST', `/jobs/${job.job_id}/files?${qs({ job_id: job.job_id, name: 'in.txt', type: 'input' })}`, { body: 'a\nb\n' });
  const line = `cat '${job.job_directory}/inputs/in.txt' > '${job.job_directory}/outputs/out.txt'`;
  const submitReply = await request(server.url, 'POST', `/jobs/${job.job_id}/submit?${qs({ job_id: job.job_id, command_line: line })}`);
  t.is(submitReply.status, 200, submitReply.text);
  const doc = await waitForJob(server.url, job.job_id);
  t.is(doc.status, 'complete', doc.stderr);
  t.is(await fs.readFile(path.join(job.job_directory as string, 'outputs', 'out.txt'), 'utf8'), 'a\nb\n');
  const script = await fs.readFile(path.join(job.job_directory as string, 'command.sh'), 'utf8');
  t.true(script.includes("'--unshare-all'"), 'the job script runs the command under bwrap');
});

test('a sandbox this machine cannot run stops the server with a one-line reason', async (t) => {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const error = await t.throwsAsync(startTestServer({
    root,
    managers: (dir) => [managerConfig(dir, { sandbox: { ...defaultSandbox(), bwrap: '/nonexistent/bwrap' } })],
  }));
  t.regex(error?.message ?? '', /^manager _default_: \/nonexistent\/bwrap was not found: install bubblewrap/);
  t.false((error?.message ?? '').includes('\n'));
  // A read-only bind that would show the server's own files is refused, whatever else is allowed.
  const exposing = await t.throwsAsync(startTestServer({
    root,
    app: { allowUnsandboxedPublic: true },
    managers: (dir) => [managerConfig(dir, { sandbox: { ...defaultSandbox(), roBinds: [dir] } })],
  }));
  t.regex(exposing?.message ?? '', /^manager _default_: the sandbox's read-only bind .* would show the staging directory/);
  // Public mode with allow_unsandboxed_public starts, unsandboxed, and says so.
  const server = await startTestServer({
    app: { toolConfigFiles: [path.join(TOOLBOX_DIR, 'tools.xml')], allowUnsafeEnv: false, allowUnsandboxedPublic: true },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid', sandbox: { ...defaultSandbox(), bwrap: '/nonexistent/bwrap' } })],
  });
  t.teardown(() => server.stop());
  t.true(server.logLines.some((l) => l.includes('UNSANDBOXED')));
});

// ------------------------------------------------------------------------------------------------
// Cluster managers: the job script wraps the command in bwrap on the node (here the local
// single-node Slurm and Grid Engine of scripts/ci/; skipped where they do not run, failed in CI).
// The job script runs as root there: it hands the job directory to the sandbox uid itself.

const RUN = `sbx${Date.now().toString(36)}${process.pid}`;

async function clusterJob(t: ExecutionContext, managers: (root: string) => ManagerConfig[], id: string): Promise<void> {
  const server = await startTestServer({ managers });
  t.teardown(() => server.stop());
  await fs.writeFile(path.join(server.root, 'server.ini'), `[app:main]\nprivate_token = ${TOKEN}\n`, { mode: 0o644 });
  const job = await setup(server, id);
  await upload(server, id, 'in.txt', 'input', 'from the node\n');
  const out = path.join(job.outputs_directory as string, 'out.txt');
  await submit(server, id, `cat ../inputs/in.txt > '${out}'; id -u >> '${out}'; cat '${path.join(server.root, 'server.ini')}' >> '${out}' 2>/dev/null; ls / >> '${out}'`);
  const doc = await waitForJob(server.url, id, '', '', 120_000);
  t.is(doc.status, 'complete', JSON.stringify(doc));
  const text = await fs.readFile(out, 'utf8');
  t.true(text.startsWith('from the node\n'), text);
  t.false(text.includes(TOKEN), 'the configuration is not visible on the node');
  if (process.getuid?.() === 0) t.true(text.includes(`\n${defaultSandbox().uid}\n`), text);
  t.true((await fs.readFile(path.join(job.job_directory as string, 'command.sh'), 'utf8')).includes("'--unshare-all'"));
}

slurmTest('Slurm (queued_cli): the job runs sandboxed on the node, unprivileged, and produces its output', async (t) => {
  const id = `${RUN}-slurm`;
  scancelOnTeardown(t, id);
  await clusterJob(t, (root) => [{ ...cliManager(root, '_default_', { job_plugin: 'Slurm' }), sandbox: defaultSandbox() }], id);
});

sgeTest('Grid Engine (queued_drmaa): the job runs sandboxed on the node, unprivileged, and produces its output', async (t) => {
  for (const [key, value] of Object.entries(SGE_ENV)) process.env[key] ??= value;
  await clusterJob(t, (root) => [managerConfig(root, { type: 'queued_drmaa', backendOptions: {}, minPollingInterval: 0.2, sandbox: defaultSandbox() })], `${RUN}-sge`);
});
