import type { ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { qs, request } from '../helpers/client.js';
import { FAST_RETRY, heldFault, testEndpoint, type FilesEndpoint } from '../helpers/files-endpoint.js';
import { fileBroker, mqRemoteStaging, MqClient, mqConfig } from '../helpers/mq-client.js';
import { brokerTest } from '../helpers/rabbitmq.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import { SCRIPT_PREAMBLES, WRAPPER_SHAPES, renderShape, type WrapperShape } from '../../src/tools/galaxy-shapes.js';

/*
 * Public mode over the message queue: a real broker, a real public server (the public and sandbox
 * fixture toolboxes, job sandbox on) and a real files endpoint. Galaxy in message-queue mode stages
 * everything with remote_transfer: tool files, config files, tool_script.sh and inputs. What cannot
 * be judged before the files arrive is judged once they arrived, before anything is queued.
 */

const test = brokerTest();
const theBroker = fileBroker(test);

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/', import.meta.url));
const TOOLBOXES = [path.join(FIXTURES, 'public', 'toolbox.xml'), path.join(FIXTURES, 'sandbox', 'toolbox.xml')];
const HELPER = path.join(FIXTURES, 'public', 'tools', 'mag_wrap', 'scripts', 'helper.sh');
const PROBE = path.join(FIXTURES, 'sandbox', 'tools', 'mag_probe', 'probe.sh');
const [IN_JOBDIR] = WRAPPER_SHAPES as [WrapperShape];
const PREAMBLE = SCRIPT_PREAMBLES[SCRIPT_PREAMBLES.length - 1]!;
/** What a refused job's command would create: it must exist nowhere. */
const MARKER = `magnetar-pubmq-marker-${randomBytes(4).toString('hex')}`;

interface Fixture {
  readonly server: TestServer;
  readonly client: MqClient;
  readonly endpoint: FilesEndpoint;
}

async function publicMqServer(t: ExecutionContext): Promise<Fixture> {
  const endpoint = await testEndpoint(t);
  const prefix = `p${randomBytes(4).toString('hex')}`;
  const server = await publicServer(endpoint, prefix);
  t.teardown(async () => server.stop());
  const client = await MqClient.connect(theBroker().url, { keyPrefix: prefix });
  t.teardown(async () => client.close());
  return { server, client, endpoint };
}

/** A public server in message-queue mode (key prefix `prefix`) whose staging admits `endpoint`; `root` to start again on a stopped one's files. */
async function publicServer(endpoint: FilesEndpoint, prefix: string, root?: string): Promise<TestServer> {
  const url = theBroker().url;
  return startTestServer({
    ...(root === undefined ? {} : { root }),
    app: {
      toolConfigFiles: TOOLBOXES,
      allowUnsafeEnv: false,
      messageQueue: mqConfig(url, { keyPrefix: prefix }),
      // Public-mode defaults but for the one endpoint the administrator listed (it names 127.0.0.1).
      staging: { allowedEndpoints: [`http://127.0.0.1:${endpoint.port}/api/jobs/`], copyRoots: [], privateAddresses: false, concurrency: 4 },
    },
    managers: (dir) => [managerConfig(dir, { assignIds: 'uuid', preprocessRetry: FAST_RETRY, postprocessRetry: FAST_RETRY })],
  });
}

/** Galaxy's files for one mag_wrap job, as its message-queue client stages them (every one by remote_transfer). */
interface GalaxyJob {
  readonly id: string;
  readonly dir: string;
  readonly helper?: Buffer | string;
  readonly opts?: string;
  readonly toolCommand?: (dir: string) => string;
  /** The whole command_line (default: Galaxy's wrapper around tool_script.sh). */
  readonly commandLine?: string;
  /** Extra or replacing setup entries. */
  readonly entries?: (fx: Fixture, job: string) => object[];
  readonly toolId?: string;
}

const transfer = (fx: Fixture, id: string, name: string, type: string, galaxyPath: string): object => ({
  name,
  type,
  action: { action_type: 'remote_transfer', path: galaxyPath, source: { path: galaxyPath, object_store_ref: null }, url: fx.endpoint.inputUrl(id, galaxyPath, type) },
});

function wrapToolCommand(dir: string): string {
  return `bash ${dir}/tool_files/scripts/helper.sh --config ${dir}/configs/opts ${dir}/inputs/dataset_1.dat ${dir}/outputs/dataset_2.dat`;
}

/** Serve the job's files and publish its setup message; resolves with the job directory. */
async function launch(fx: Fixture, job: Omit<GalaxyJob, 'dir'>): Promise<string> {
  const { id } = job;
  const dir = path.join(fx.server.staging, id);
  const g = `/galaxy/jobs/${id}`;
  const script = renderShape(PREAMBLE.segments, { jobDirectory: dir, shell: '/bin/bash' }) + (job.toolCommand ?? wrapToolCommand)(dir) + '\n';
  fx.endpoint.files.set(`${g}/tools/scripts/helper.sh`, typeof job.helper === 'string' ? Buffer.from(job.helper) : (job.helper ?? (await fs.readFile(HELPER))));
  fx.endpoint.files.set(`${g}/configs/opts`, Buffer.from(job.opts ?? '--lines=2'));
  fx.endpoint.files.set(`${g}/tool_script.sh`, Buffer.from(script));
  fx.endpoint.files.set(`${g}/inputs/dataset_1.dat`, Buffer.from('1\n2\n3\n'));
  const entries = job.entries?.(fx, id) ?? [
    transfer(fx, id, 'scripts/helper.sh', 'tool', `${g}/tools/scripts/helper.sh`),
    transfer(fx, id, 'opts', 'config', `${g}/configs/opts`),
    transfer(fx, id, 'tool_script.sh', 'jobdir', `${g}/tool_script.sh`),
    transfer(fx, id, 'tool_script.sh', 'config', `${g}/tool_script.sh`),
    transfer(fx, id, 'dataset_1.dat', 'input', `${g}/inputs/dataset_1.dat`),
  ];
  // Galaxy's jobs_directory placeholder, replaced by the server's staging directory (PROTOCOL §2.5 step 3).
  const commandLine = job.commandLine ?? renderShape(IN_JOBDIR.segments, { jobDirectory: `__PULSAR_JOBS_DIRECTORY__/${id}`, shell: '/bin/bash', ecId: id });
  await fx.client.setup(id, commandLine, {
    remote_staging: mqRemoteStaging(fx.endpoint.filesEndpoint(id), entries, ['dataset_2.dat']),
    setup_params: { job_id: id, tool_id: job.toolId ?? 'mag_wrap', tool_version: '2.0', use_metadata: true, preserve_galaxy_python_environment: null },
  });
  return dir;
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

/** Every path below `root` (names relative to it), or [] when it does not exist. */
async function filesBelow(root: string): Promise<string[]> {
  try {
    return (await fs.readdir(root, { recursive: true })).map(String);
  } catch {
    return [];
  }
}

/** The regular files below `dir` (relative names). */
async function regularFilesBelow(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => !e.isDirectory()).map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
}

/** Nothing ran: no job script, no pid, no return code, no marker in the server's tree or in /tmp; the output never went out. */
async function assertNothingRan(t: ExecutionContext, fx: Fixture, dir: string): Promise<void> {
  for (const name of ['command.sh', 'pid', 'return_code']) t.false(await exists(path.join(dir, name)), `${name}: nothing ran`);
  t.deepEqual((await filesBelow(fx.server.root)).filter((f) => f.includes(MARKER) || f.endsWith('.ec')), [], 'no marker, no exit-code file anywhere');
  t.deepEqual((await fs.readdir(os.tmpdir())).filter((f) => f.includes(MARKER)), []);
  t.is(fx.endpoint.posted.size, 0, 'nothing was staged out');
}

/** Every file the server's tree holds outside persistence is inside this job's directory. */
async function assertOnlyInJob(t: ExecutionContext, fx: Fixture, id: string): Promise<void> {
  const outside = (await filesBelow(fx.server.staging)).filter((f) => f !== id && !f.startsWith(`${id}${path.sep}`));
  t.deepEqual(outside, [], 'no file outside the job directory');
}

test.serial('(a) a Galaxy-shaped job whose tool file, config files, tool_script.sh and input are all staged by remote_transfer runs sandboxed; its output is staged out; complete', async (t) => {
  const fx = await publicMqServer(t);
  const id = '5001';
  const dir = await launch(fx, { id });
  const terminal = await fx.client.waitForTerminal(id);
  t.is(terminal.status, 'complete', JSON.stringify(terminal));
  t.is(terminal.returncode, 0);
  t.is(fx.endpoint.posted.get('/galaxy/files/dataset_2.dat')?.toString(), '1\n2\n');
  t.is((await fs.readFile(path.join(dir, `galaxy_${id}.ec`), 'utf8')).trim(), '0', "Galaxy's exit-code file, in the job directory");
  const fetched = fx.endpoint.requests.filter((r) => r.method === 'GET').map((r) => r.fileType).sort();
  t.deepEqual(fetched, ['config', 'config', 'input', 'jobdir', 'tool']);
  const audit = fx.server.logLines.filter((l) => l.includes('"audit":true'));
  t.true(audit.some((l) => l.includes('"step":"setup"') && l.includes('message-queue setup')), 'the setup is authorized as POST /jobs');
  t.true(audit.some((l) => l.includes('"step":"tool file"') && l.includes('scripts/helper.sh (staged)')), 'the staged tool file was hashed');
  t.true(audit.some((l) => l.includes('"step":"config file"') && l.includes('"detail":"opts"')));
  t.true(audit.some((l) => l.includes('"step":"command line"') && l.includes('Galaxy wrapper')));
  t.regex(await fs.readFile(path.join(dir, 'command.sh'), 'utf8'), /bwrap/, 'the command runs in the job sandbox');
  await fx.client.settle(500);
  t.is(fx.client.terminalsOf(id).length, 1);
});

test.serial('a job set up through the message queue is not reachable over HTTP on a public server (its id is Galaxy\'s, guessable): answered as unknown', async (t) => {
  const fx = await publicMqServer(t);
  const id = '5009';
  const dir = await launch(fx, { id });
  t.is((await fx.client.waitForTerminal(id)).status, 'complete');
  const base = fx.server.url;
  const status = await request(base, 'GET', `/jobs/${id}/status?${qs({ job_id: id })}`);
  t.is(status.status, 200);
  t.is(status.json().status, 'lost', 'answered as a job nobody set up');
  t.deepEqual(status.json().stdout ?? '', '');
  const viaExpress = await request(base, 'POST', `/jobs/${id}/status?${qs({ job_id: id })}`);
  t.is(viaExpress.json().status, 'lost');
  t.is((await request(base, 'GET', `/jobs/${id}/files?${qs({ job_id: id, name: 'dataset_2.dat' })}`)).status, 404);
  t.is((await request(base, 'GET', `/jobs/${id}/files/path?${qs({ job_id: id, name: 'x', type: 'input' })}`)).status, 404);
  t.is((await request(base, 'POST', `/jobs/${id}/files?${qs({ job_id: id, name: 'x', type: 'input' })}`, { body: 'x' })).status, 404);
  t.is((await request(base, 'PUT', `/jobs/${id}/cancel?${qs({ job_id: id })}`)).text, 'OK');
  t.is((await request(base, 'DELETE', `/jobs/${id}?${qs({ job_id: id })}`)).text, 'OK');
  t.true(await exists(path.join(dir, 'outputs', 'dataset_2.dat')), 'the clean did nothing');
  await t.throwsAsync(fs.access(path.join(dir, 'inputs', 'x')));
});

test.serial('(b) a staged tool file that differs from the toolbox copy fails the job after stage-in: nothing runs, the file stays in its job directory', async (t) => {
  const fx = await publicMqServer(t);
  const id = '5002';
  const tampered = `#!/bin/sh\ntouch "$PWD/${MARKER}" /tmp/${MARKER} "$4"\n`;
  const dir = await launch(fx, { id, helper: tampered });
  const terminal = await fx.client.waitForTerminal(id);
  t.is(terminal.status, 'failed', JSON.stringify(terminal));
  t.regex(String(terminal['stderr']), /"scripts\/helper\.sh" differs from the toolbox's copy of this tool file/);
  await assertNothingRan(t, fx, dir);
  await assertOnlyInJob(t, fx, id);
  t.true(fx.server.logLines.some((l) => l.includes('"decision":"deny"') && l.includes('"step":"tool file"')));
});

test.serial('(c) a tool command, a config file or a command line its validator refuses fails the job: nothing runs', async (t) => {
  const fx = await publicMqServer(t);
  const cases: { id: string; job: Partial<GalaxyJob>; reason: RegExp; fetches: boolean }[] = [
    // Judged once tool_script.sh arrived.
    { id: '5101', job: { toolCommand: (d) => `${wrapToolCommand(d)}; touch ${d}/working/${MARKER}` }, reason: /command_validator rejected the tool command in (configs\/)?tool_script\.sh/, fetches: true },
    { id: '5102', job: { toolCommand: (d) => `${wrapToolCommand(d)}\ntouch ${d}/working/${MARKER}` }, reason: /tool_script\.sh/, fetches: true },
    // Judged once the config file arrived.
    { id: '5103', job: { opts: `--lines=2; touch ${MARKER}` }, reason: /configfile_validator "opts" rejected the file/, fetches: true },
    // A command line that reads no script is judged before anything is fetched.
    { id: '5104', job: { commandLine: `touch /tmp/${MARKER}` }, reason: /command_validator rejected the command line/, fetches: false },
  ];
  for (const { id, job, reason, fetches } of cases) {
    const before = fx.endpoint.requests.length;
    const dir = await launch(fx, { id, ...job });
    const terminal = await fx.client.waitForTerminal(id);
    t.is(terminal.status, 'failed', `${id}: ${JSON.stringify(terminal)}`);
    t.regex(String(terminal['stderr']), reason, id);
    await assertNothingRan(t, fx, dir);
    t.is(fx.endpoint.requests.length > before, fetches, `${id}: fetched before the refusal?`);
  }
  for (const { id } of cases) t.is(fx.client.terminalsOf(id).length, 1, id);
});

test.serial('(d) an unknown tool id, or a tool without a command_validator, is answered lost and writes nothing: no job directory, no fetch', async (t) => {
  const fx = await publicMqServer(t);
  for (const [id, toolId] of [['5201', 'bash'], ['5202', 'mag_open']] as const) {
    await launch(fx, { id, toolId });
    const terminal = await fx.client.waitForTerminal(id);
    t.is(terminal.status, 'lost', `${toolId}: ${JSON.stringify(terminal)}`);
    t.false(await exists(path.join(fx.server.staging, id)), `${toolId}: no job directory`);
  }
  t.deepEqual(await filesBelow(fx.server.staging), []);
  t.deepEqual(fx.endpoint.requests, [], 'nothing was fetched');
  t.true(fx.server.logLines.some((l) => l.includes('"decision":"deny"') && l.includes('"step":"setup"') && l.includes('5201')));
  t.deepEqual((await fs.readdir(os.tmpdir())).filter((f) => f.includes(MARKER)), []);
});

test.serial('(e) a staging URL outside staging_allowed_endpoints, a tool name the tool does not have, or a type stage-in may not write is refused before anything is fetched', async (t) => {
  const fx = await publicMqServer(t);
  const other = await testEndpoint(t);
  other.files.set('/galaxy/evil/helper.sh', Buffer.from(`#!/bin/sh\ntouch /tmp/${MARKER}\n`));
  const g = (id: string): string => `/galaxy/jobs/${id}`;
  const standard = (fx2: Fixture, id: string): object[] => [
    transfer(fx2, id, 'opts', 'config', `${g(id)}/configs/opts`),
    transfer(fx2, id, 'tool_script.sh', 'jobdir', `${g(id)}/tool_script.sh`),
    transfer(fx2, id, 'dataset_1.dat', 'input', `${g(id)}/inputs/dataset_1.dat`),
  ];
  const cases: { id: string; entries: (fx2: Fixture, id: string) => object[]; reason: RegExp }[] = [
    {
      id: '5301',
      entries: (fx2, id) => [
        ...standard(fx2, id),
        { name: 'scripts/helper.sh', type: 'tool', action: { action_type: 'remote_transfer', path: '/galaxy/evil/helper.sh', url: other.inputUrl(id, '/galaxy/evil/helper.sh', 'tool') } },
      ],
      reason: /is not in staging_allowed_endpoints/,
    },
    { id: '5302', entries: (fx2, id) => [...standard(fx2, id), transfer(fx2, id, 'scripts/other.sh', 'tool', `${g(id)}/tools/scripts/helper.sh`)], reason: /"scripts\/other\.sh" is not a file of tool "mag_wrap"/ },
    { id: '5303', entries: (fx2, id) => [...standard(fx2, id), transfer(fx2, id, 'x', 'output', `${g(id)}/x`)], reason: /may not write files of type "output"/ },
  ];
  for (const { id, entries, reason } of cases) {
    const dir = await launch(fx, { id, entries });
    const terminal = await fx.client.waitForTerminal(id);
    t.is(terminal.status, 'failed', `${id}: ${JSON.stringify(terminal)}`);
    t.regex(String(terminal['stderr']), reason, id);
    await assertNothingRan(t, fx, dir);
    t.deepEqual(await regularFilesBelow(dir), [], `${id}: no file was staged`);
  }
  t.deepEqual(fx.endpoint.requests, [], 'the allowed endpoint saw no request');
  t.deepEqual(other.requests, [], 'the endpoint outside the allow-list saw no request');
});

test.serial('a restart during stage-in resumes the deferred checks: the tool files are judged once they arrived (a good job completes, a tampered one fails)', async (t) => {
  const endpoint = await testEndpoint(t);
  const prefix = `p${randomBytes(4).toString('hex')}`;
  const first = await publicServer(endpoint, prefix);
  let stopped = false;
  t.teardown(async () => (stopped ? undefined : first.stop()));
  const client = await MqClient.connect(theBroker().url, { keyPrefix: prefix });
  t.teardown(async () => client.close());
  const fx: Fixture = { server: first, client, endpoint };
  const jobs = [
    { id: '5401', helper: undefined, status: 'complete' },
    { id: '5402', helper: `#!/bin/sh\ntouch "$PWD/${MARKER}" "$4"\n`, status: 'failed' },
  ];
  const held = [];
  for (const job of jobs) {
    // The input's transfer stops half-way until released: the server stops during stage-in.
    const hold = heldFault(t);
    endpoint.faults.set(`/galaxy/jobs/${job.id}/inputs/dataset_1.dat`, [hold.fault]);
    held.push(hold);
    await launch(fx, { id: job.id, ...(job.helper === undefined ? {} : { helper: job.helper }) });
  }
  await Promise.all(held.map(async (h) => h.reached));
  await first.close();
  stopped = true;
  for (const h of held) h.release();
  const second = await publicServer(endpoint, prefix, first.root);
  t.teardown(async () => second.stop());
  for (const job of jobs) {
    const terminal = await client.waitForTerminal(job.id);
    t.is(terminal.status, job.status, `${job.id}: ${JSON.stringify(terminal)}`);
  }
  t.is(endpoint.posted.get('/galaxy/files/dataset_2.dat')?.toString(), '1\n2\n');
  t.regex(String(client.terminalsOf('5402')[0]?.['stderr']), /differs from the toolbox's copy/);
  const tampered = path.join(second.staging, '5402');
  for (const name of ['command.sh', 'pid', 'return_code']) t.false(await exists(path.join(tampered, name)), `${name}: nothing ran`);
  t.deepEqual((await filesBelow(second.root)).filter((f) => f.includes(MARKER)), []);
  t.true(second.logLines.some((l) => l.includes('preprocessing resumed after restart')));
});

test.serial('the sandbox fixture\'s probe, staged and run over the message queue as Galaxy would, finds nothing of the server\'s', async (t) => {
  const fx = await publicMqServer(t);
  const { server, endpoint, client } = fx;
  const id = '5501';
  const dir = path.join(server.staging, id);
  const listener = net.createServer((socket) => socket.destroy());
  let connections = 0;
  listener.on('connection', () => connections++);
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => listener.close(() => resolve())));
  const config = path.join(server.root, 'server.ini');
  await fs.writeFile(config, 'private_token = not-for-jobs\n');
  const other = path.join(server.staging, 'other', 'inputs', 'secret.txt');
  await fs.mkdir(path.dirname(other), { recursive: true });
  await fs.writeFile(other, "another client's data\n");
  const hostTmp = path.join(os.tmpdir(), `${MARKER}-probe`);
  t.teardown(() => fs.rm(hostTmp, { force: true }));
  const args = [
    `${dir}/outputs/report.txt`, config, server.config.app.persistenceDirectory!, other, server.staging, server.root, hostTmp,
    String(process.pid), String((listener.address() as net.AddressInfo).port),
  ];
  const toolCommand = ['bash', `${dir}/tool_files/probe.sh`, ...args].map((a) => `'${a}'`).join(' ').replace(/^'bash'/, 'bash');
  const g = `/galaxy/jobs/${id}`;
  endpoint.files.set(`${g}/tools/probe.sh`, await fs.readFile(PROBE));
  endpoint.files.set(`${g}/tool_script.sh`, Buffer.from(`${renderShape(PREAMBLE.segments, { jobDirectory: dir, shell: '/bin/bash' })}${toolCommand}\n`));
  const entries = [transfer(fx, id, 'probe.sh', 'tool', `${g}/tools/probe.sh`), transfer(fx, id, 'tool_script.sh', 'jobdir', `${g}/tool_script.sh`)];
  await client.setup(id, renderShape(IN_JOBDIR.segments, { jobDirectory: dir, shell: '/bin/bash', ecId: id }), {
    remote_staging: mqRemoteStaging(endpoint.filesEndpoint(id), entries, ['report.txt']),
    setup_params: { job_id: id, tool_id: 'mag_probe', tool_version: '1.0', use_metadata: true, preserve_galaxy_python_environment: null },
  });
  const terminal = await client.waitForTerminal(id);
  t.is(terminal.status, 'complete', JSON.stringify(terminal));
  const text = endpoint.posted.get('/galaxy/files/report.txt')?.toString() ?? '';
  t.true(text.endsWith('done\n'), text);
  const report = Object.fromEntries(text.trim().split('\n').filter((l) => l !== 'done').map((l) => l.split('=') as [string, string]));
  t.is(Object.keys(report).length, 12, text);
  // Writes may land in the sandbox's own view: what counts is that nothing reaches the host.
  for (const [name, verdict] of Object.entries(report)) if (!name.startsWith('write_')) t.is(verdict, 'refused', name);
  t.false(await exists(path.join(server.root, 'planted-by-job')));
  t.false(await exists(hostTmp));
  t.is(connections, 0);
});
