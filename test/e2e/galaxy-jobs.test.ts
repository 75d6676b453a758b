import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request, qs, waitForJob, type Reply } from '../helpers/client.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import yaml from 'js-yaml';
import { GALAXY_SHELLS, INTEGRITY_BLOCK, SCRIPT_PREAMBLES, WRAPPER_SHAPES, defaultWrapper, matchWrapper, renderShape, type WrapperShape } from '../../src/tools/galaxy-shapes.js';

/*
 * Galaxy-shaped jobs over real HTTP against a public server (the sample toolbox): every shape of
 * ../shared/GALAXY-JOBS.md runs and gives the right output; tampering is refused and leaves nothing.
 */

const TOOLBOX_DIR = fileURLToPath(new URL('../../../toolbox/', import.meta.url));
const FILTER_ID = 'toolshed.example.org/repos/magnetar/filter_score/filter_score/1.2.0';
const SCORES = 'name\tscore\na\t1\nb\t2.5\n# a comment\nc\t0.5\nd\t7\n';
/** Galaxy's own job id: the server assigns uuids, Galaxy names its exit-code file with its id. */
const GALAXY_ID = '4242';

interface Fixture {
  readonly server: TestServer;
  /** Files an attack would create outside any job directory. */
  readonly canary: string;
  readonly outsideEc: string;
}

async function galaxyServer(t: ExecutionContext): Promise<Fixture> {
  const server = await startTestServer({
    app: { toolConfigFiles: [path.join(TOOLBOX_DIR, 'tools.xml')], allowUnsafeEnv: false },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid' })],
  });
  t.teardown(() => server.stop());
  return { server, canary: path.join(server.root, 'CANARY'), outsideEc: path.join(server.root, `galaxy_${GALAXY_ID}.ec`) };
}

interface Job {
  readonly id: string;
  readonly dir: string;
  readonly galaxyId: string;
}

async function setup(fx: Fixture, toolId: string): Promise<Job> {
  const r = await request(fx.server.url, 'POST', `/jobs?${qs({ job_id: GALAXY_ID, tool_id: toolId })}`);
  if (r.status !== 200) throw new Error(`setup: ${r.status} ${r.text}`);
  const config = r.json();
  return { id: config.job_id as string, dir: config.job_directory as string, galaxyId: GALAXY_ID };
}

async function upload(t: ExecutionContext, fx: Fixture, job: Job, name: string, type: string, body: string | Buffer): Promise<void> {
  const r = await request(fx.server.url, 'POST', `/jobs/${job.id}/files?${qs({ job_id: job.id, name, type })}`, { body });
  t.is(r.status, 200, `${type} ${name}: ${r.text}`);
}

async function submit(fx: Fixture, job: Job, commandLine: string): Promise<Reply> {
  return request(fx.server.url, 'POST', `/jobs/${job.id}/submit?${qs({ job_id: job.id, command_line: commandLine })}`);
}

async function output(fx: Fixture, job: Job, name: string): Promise<string> {
  const r = await request(fx.server.url, 'GET', `/jobs/${job.id}/files?${qs({ job_id: job.id, name })}`);
  if (r.status !== 200) throw new Error(`download ${name}: ${r.status} ${r.text}`);
  return r.text;
}

const wrapperFor = (shape: WrapperShape, job: Job, shell = '/bin/bash', toolCommand?: string): string =>
  renderShape(shape.segments, { jobDirectory: job.dir, shell, ecId: job.galaxyId, ...(toolCommand === undefined ? {} : { toolCommand }) });
const [IN_JOBDIR, IN_WORKING, SHELL_NONE] = WRAPPER_SHAPES as [WrapperShape, WrapperShape, WrapperShape];

/** Upload the script the way a real client does for its shape (24.x: jobdir and config; older: workdir). */
async function uploadScript(t: ExecutionContext, fx: Fixture, job: Job, shape: WrapperShape, script: string): Promise<void> {
  if (shape.script === 'working/tool_script.sh') {
    await upload(t, fx, job, 'tool_script.sh', 'workdir', script);
    return;
  }
  await upload(t, fx, job, 'tool_script.sh', 'jobdir', script);
  await upload(t, fx, job, 'tool_script.sh', 'config', script);
}

async function catJob(t: ExecutionContext, fx: Fixture): Promise<{ job: Job; command: string }> {
  const job = await setup(fx, 'cat1');
  await upload(t, fx, job, 'dataset_1.dat', 'input', 'alpha\n');
  await upload(t, fx, job, 'dataset_2.dat', 'input', 'beta\n');
  return { job, command: `cat '${job.dir}/inputs/dataset_1.dat' '${job.dir}/inputs/dataset_2.dat' > '${job.dir}/outputs/dataset_3.dat'` };
}

async function assertRan(t: ExecutionContext, fx: Fixture, job: Job, label: string): Promise<void> {
  const doc = await waitForJob(fx.server.url, job.id);
  t.is(doc.status, 'complete', `${label}: ${doc.stderr}`);
  t.is(doc.returncode, 0, `${label}: ${doc.stderr}`);
  t.is((await fs.readFile(path.join(job.dir, `galaxy_${job.galaxyId}.ec`), 'utf8')).trim(), '0', `${label}: Galaxy's exit-code file, in the job directory`);
}

for (const shape of [IN_JOBDIR, IN_WORKING]) {
  for (const preamble of SCRIPT_PREAMBLES) {
    test(`cat1 runs with Galaxy's wrapper "${shape.name}" and tool_script.sh "${preamble.name}"`, async (t) => {
      const fx = await galaxyServer(t);
      const { job, command } = await catJob(t, fx);
      await uploadScript(t, fx, job, shape, renderShape(preamble.segments, { jobDirectory: job.dir, shell: '/bin/bash' }) + command);
      const reply = await submit(fx, job, wrapperFor(shape, job));
      t.is(reply.text, 'OK', reply.text);
      await assertRan(t, fx, job, preamble.name);
      t.is(await output(fx, job, 'dataset_3.dat'), 'alpha\nbeta\n');
      t.true(fx.server.logLines.some((l) => l.includes('"step":"command line"') && l.includes(`Galaxy wrapper: ${shape.name}`)), 'the shape is audited');
    });
  }
}

for (const shell of GALAXY_SHELLS.slice(1)) {
  test(`head1 runs with an administrator's shell ${shell} (shebang and wrapper agree), strict_shell on`, async (t) => {
    const fx = await galaxyServer(t);
    const job = await setup(fx, 'head1');
    await upload(t, fx, job, 'dataset_1.dat', 'input', '1\n2\n3\n4\n5\n');
    await uploadScript(t, fx, job, IN_JOBDIR, `#!${shell}\n${INTEGRITY_BLOCK}set -e\nhead --lines=2 '${job.dir}/inputs/dataset_1.dat' > '${job.dir}/outputs/dataset_2.dat'\n`);
    t.is((await submit(fx, job, wrapperFor(IN_JOBDIR, job, shell))).text, 'OK');
    await assertRan(t, fx, job, shell);
    t.is(await output(fx, job, 'dataset_2.dat'), '1\n2\n');
  });
}

test('filter_score runs with shell: none (the tool command inline before Galaxy\'s tail), its config file and tool file checked', async (t) => {
  const fx = await galaxyServer(t);
  const job = await setup(fx, FILTER_ID);
  await upload(t, fx, job, 'scripts/filter.sh', 'tool', await fs.readFile(path.join(TOOLBOX_DIR, 'filter_score', 'scripts', 'filter.sh')));
  await upload(t, fx, job, 'filter_config', 'config', 'column=2\nheader_lines=1');
  await upload(t, fx, job, 'dataset_1.dat', 'input', SCORES);
  const command = `bash '${job.dir}/tool_files/scripts/filter.sh' --config '${job.dir}/configs/filter_config' --min-score 1.5 '${job.dir}/inputs/dataset_1.dat' '${job.dir}/outputs/dataset_2.dat'`;
  t.is((await submit(fx, job, wrapperFor(SHELL_NONE, job, undefined, command))).text, 'OK');
  await assertRan(t, fx, job, 'shell: none');
  t.is(await output(fx, job, 'dataset_2.dat'), 'name\tscore\nb\t2.5\nd\t7\n');
});

test('the legacy form (the tool command sent directly, as magnetar check does) keeps working', async (t) => {
  const fx = await galaxyServer(t);
  const { job, command } = await catJob(t, fx);
  t.is((await submit(fx, job, command)).text, 'OK');
  const doc = await waitForJob(fx.server.url, job.id);
  t.is(doc.status, 'complete', doc.stderr);
  t.is(await output(fx, job, 'dataset_3.dat'), 'alpha\nbeta\n');
});

/** The refusal: 403 with the reason, the job failed with it, nothing ran, nothing written outside. */
async function assertRefused(t: ExecutionContext, fx: Fixture, job: Job, reply: Reply, reason: RegExp): Promise<void> {
  t.is(reply.status, 403, reply.text);
  t.is(reply.json().error, 'MAG_ERR_TOOL_DENIED');
  t.regex(reply.json().message, reason);
  const doc = await waitForJob(fx.server.url, job.id);
  t.is(doc.status, 'failed');
  t.regex(doc.stderr, reason);
  for (const name of ['command.sh', 'pid', 'return_code', `galaxy_${job.galaxyId}.ec`]) {
    await t.throwsAsync(fs.access(path.join(job.dir, name)), undefined, `${name} must not exist: nothing ran`);
  }
  await t.throwsAsync(fs.access(path.join(job.dir, 'outputs', 'dataset_3.dat')), undefined, 'no output');
  await t.throwsAsync(fs.access(fx.canary), undefined, 'nothing written outside the job');
  await t.throwsAsync(fs.access(fx.outsideEc), undefined, 'no exit-code file outside the job');
  t.deepEqual((await fs.readdir(fx.server.root)).sort(), ['persisted', 'staging'], 'nothing else in the server root');
}

interface Attack {
  readonly label: string;
  /** The script to upload (undefined: the honest one) and the command line, for a cat1 job. */
  readonly script?: (job: Job, command: string, fx: Fixture) => string;
  readonly line?: (job: Job, command: string, fx: Fixture) => string;
  readonly reason: RegExp;
}

const honestScript = (_job: Job, command: string): string => `#!/bin/bash\n${INTEGRITY_BLOCK}${command}`;

const ATTACKS: readonly Attack[] = [
  { label: 'an extra line in tool_script.sh', script: (_j, c, fx) => `#!/bin/bash\n${c}\ntouch ${fx.canary}`, reason: /tool_script\.sh: has more than one line/ },
  { label: 'a chained ; in tool_script.sh', script: (_j, c, fx) => `#!/bin/bash\n${c}; touch ${fx.canary}`, reason: /command_validator rejected the tool command in tool_script\.sh/ },
  { label: 'a chained && in tool_script.sh', script: (_j, c, fx) => `#!/bin/bash\nset -e\n${c} && touch ${fx.canary}`, reason: /command_validator rejected the tool command in tool_script\.sh/ },
  { label: 'an edited integrity block', script: (_j, c, fx) => `#!/bin/bash\n${INTEGRITY_BLOCK.replace('exit 42', `touch ${fx.canary}`)}${c}`, reason: /integrity block that is not Galaxy's/ },
  { label: 'a statement before the shebang', script: (_j, c, fx) => `touch ${fx.canary}\n#!/bin/bash\n${c}`, reason: /shebang/ },
  { label: 'a redirection outside the job in tool_script.sh', script: (_j, c, fx) => `#!/bin/bash\n${c} 2> ${fx.canary}`, reason: /command_validator rejected the tool command/ },
  { label: "Galaxy's dependency lines", script: (_j, c) => `#!/bin/bash\n. /galaxy/deps/coreutils/8.25/env.sh; ${c}`, reason: /dependency resolution lines are not accepted on a public server; set dependency_resolution: none/ },
  { label: 'a statement before the wrapper line', line: (j, _c, fx) => `touch ${fx.canary}; ${wrapperFor(IN_JOBDIR, j)}`, reason: /not one of Galaxy's wrapper shapes|command_validator rejected/ },
  { label: 'a statement after the wrapper line', line: (j, _c, fx) => `${wrapperFor(IN_JOBDIR, j)}; touch ${fx.canary}`, reason: /not one of Galaxy's wrapper shapes for this job/ },
  { label: 'a newline after the wrapper line', line: (j, _c, fx) => `${wrapperFor(IN_JOBDIR, j)}\ntouch ${fx.canary}`, reason: /not one of Galaxy's wrapper shapes for this job/ },
  { label: 'another script path', line: (j) => wrapperFor(IN_JOBDIR, j).replace(`${j.dir}/tool_script.sh`, `${j.dir}/inputs/evil.sh`), reason: /not one of Galaxy's wrapper shapes for this job/ },
  { label: 'an exit-code file outside the job', line: (j, _c, fx) => wrapperFor(IN_JOBDIR, j).replace(`${j.dir}/galaxy_${GALAXY_ID}.ec`, fx.outsideEc), reason: /not one of Galaxy's wrapper shapes for this job/ },
  { label: 'a redirection outside the job in the wrapper', line: (j, _c, fx) => wrapperFor(IN_JOBDIR, j).replace("'../metadata/tool_stderr'", `'${fx.canary}'`), reason: /not one of Galaxy's wrapper shapes for this job/ },
  { label: 'an interpreter Galaxy does not use', line: (j) => wrapperFor(IN_JOBDIR, j).replace('/bin/bash ', '/usr/bin/python3 '), reason: /not one of Galaxy's wrapper shapes for this job/ },
  { label: 'a shebang other than the wrapper\'s interpreter', script: (_j, c) => `#!/bin/sh\n${c}`, reason: /does not start with Galaxy's shebang line \(#!\/bin\/bash/ },
  {
    label: 'shell: none with a statement before the tail',
    line: (j, c, fx) => wrapperFor(SHELL_NONE, j, undefined, `${c}; touch ${fx.canary}`),
    reason: /command_validator rejected the tool command before Galaxy's tail \(shell: none\)/,
  },
  {
    label: 'a docker wrapper',
    line: (j) => `docker run --rm -v ${j.dir}:${j.dir} -w ${j.dir}/working busybox:latest ${wrapperFor(IN_JOBDIR, j)}`,
    reason: /container wrappers \(docker run, singularity exec\) are not accepted.*docker_enabled/,
  },
  {
    label: 'a singularity wrapper',
    line: (j) => `singularity -s exec -B ${j.dir}:${j.dir} docker://busybox:latest ${wrapperFor(IN_JOBDIR, j)}`,
    reason: /container wrappers .* are not accepted/,
  },
  {
    label: "Galaxy's remote metadata commands",
    line: (j) => wrapperFor(IN_JOBDIR, j).replace('; sh -c', `; cd '${j.dir}'; [ "$GALAXY_VIRTUAL_ENV" = "None" ] && GALAXY_VIRTUAL_ENV="$_GALAXY_VIRTUAL_ENV"; _galaxy_setup_environment True; python metadata/set.py; sh -c`),
    reason: /remote metadata commands are not accepted on a public server; set remote_metadata: false/,
  },
];

for (const attack of ATTACKS) {
  test(`Galaxy-shaped job with ${attack.label} is refused and leaves nothing behind`, async (t) => {
    const fx = await galaxyServer(t);
    const { job, command } = await catJob(t, fx);
    await upload(t, fx, job, 'evil.sh', 'input', `touch ${fx.canary}\n`);
    const script = (attack.script ?? honestScript)(job, command, fx);
    await upload(t, fx, job, 'tool_script.sh', 'jobdir', script);
    const line = (attack.line ?? ((j: Job) => wrapperFor(IN_JOBDIR, j)))(job, command, fx);
    await assertRefused(t, fx, job, await submit(fx, job, line), attack.reason);
  });
}

test('the script must be this job\'s, uploaded before submit: another job\'s script, a missing one and a bad config copy are refused', async (t) => {
  const fx = await galaxyServer(t);
  const other = await catJob(t, fx);
  await upload(t, fx, other.job, 'tool_script.sh', 'jobdir', honestScript(other.job, other.command));
  const { job, command } = await catJob(t, fx);
  await assertRefused(t, fx, job, await submit(fx, job, wrapperFor(IN_JOBDIR, other.job)), /not one of Galaxy's wrapper shapes for this job/);

  const missing = await catJob(t, fx);
  await upload(t, fx, missing.job, 'tool_script.sh', 'workdir', honestScript(missing.job, missing.command));
  await assertRefused(t, fx, missing.job, await submit(fx, missing.job, wrapperFor(IN_JOBDIR, missing.job)), /tool_script\.sh: no such file/);

  const config = await catJob(t, fx);
  await upload(t, fx, config.job, 'tool_script.sh', 'jobdir', honestScript(config.job, config.command));
  await upload(t, fx, config.job, 'tool_script.sh', 'config', `#!/bin/bash\n${config.command}\ntouch ${fx.canary}`);
  await assertRefused(t, fx, config.job, await submit(fx, config.job, wrapperFor(IN_JOBDIR, config.job)), /configs\/tool_script\.sh: has more than one line/);
  t.truthy(command);
});

test('uploads close at submit: a tool_script.sh sent after the job was authorized is refused and never runs', async (t) => {
  const fx = await galaxyServer(t);
  const { job, command } = await catJob(t, fx);
  await upload(t, fx, job, 'tool_script.sh', 'jobdir', honestScript(job, command));
  t.is((await submit(fx, job, wrapperFor(IN_JOBDIR, job))).text, 'OK');
  const late = await request(fx.server.url, 'POST', `/jobs/${job.id}/files?${qs({ job_id: job.id, name: 'tool_script.sh', type: 'jobdir' })}`, {
    body: `#!/bin/bash\n${command}\ntouch ${fx.canary}`,
  });
  t.is(late.status, 409, late.text);
  t.is(late.json().error, 'MAG_ERR_UPLOAD_CLOSED');
  await assertRan(t, fx, job, 'late upload');
  t.is(await output(fx, job, 'dataset_3.dat'), 'alpha\nbeta\n');
  await t.throwsAsync(fs.access(fx.canary));
  t.is(await fs.readFile(path.join(job.dir, 'tool_script.sh'), 'utf8'), honestScript(job, command), 'the validated script is the one that ran');
});

interface GalaxyFixture { readonly line?: string; readonly tool_script?: string; readonly expect: 'accept' | 'reject' }
interface Fixtures { readonly galaxy?: readonly GalaxyFixture[]; readonly configfiles?: Readonly<Record<string, readonly { content: string; expect: string }[]>> }

for (const sample of [{ dir: 'cat1', toolId: 'cat1' }, { dir: 'head1', toolId: 'head1' }, { dir: 'filter_score', toolId: FILTER_ID }]) {
  test(`every accepted Galaxy-shaped fixture of the sample tool ${sample.dir} runs on a real public server`, async (t) => {
    const fixtures = yaml.load(await fs.readFile(path.join(TOOLBOX_DIR, sample.dir, `${sample.dir}.fixtures.yml`), 'utf8')) as Fixtures;
    const accepted = (fixtures.galaxy ?? []).filter((c) => c.expect === 'accept');
    t.true(accepted.length > 0);
    const fx = await galaxyServer(t);
    for (const fixture of accepted) {
      const job = await setup(fx, sample.toolId);
      const sub = (text: string): string => text.replace(/\$JOB(?![A-Za-z0-9_])/g, job.dir);
      const line = fixture.line === undefined ? defaultWrapper(job.dir, '42') : sub(fixture.line);
      const script = fixture.tool_script === undefined ? undefined : sub(fixture.tool_script);
      const all = `${line}\n${script ?? ''}`;
      for (const m of all.matchAll(/\/inputs\/([^' ]+)/g)) await upload(t, fx, job, m[1]!, 'input', 'a\t1\nb\t2\nc\t3\n'.repeat(5));
      for (const m of all.matchAll(/\/tool_files\/([^' ]+)/g)) await upload(t, fx, job, m[1]!, 'tool', await fs.readFile(path.join(TOOLBOX_DIR, sample.dir, m[1]!)));
      for (const m of all.matchAll(/\/configs\/([^' ]+)/g)) {
        await upload(t, fx, job, m[1]!, 'config', fixtures.configfiles![m[1]!]!.find((c) => c.expect === 'accept')!.content);
      }
      const wrapper = matchWrapper(line, job.dir);
      t.truthy(wrapper, line);
      if (wrapper?.kind === 'script') await uploadScript(t, fx, job, wrapper.shape, script!);
      const reply = await submit(fx, job, line);
      t.is(reply.text, 'OK', `${line}: ${reply.text}`);
      const doc = await waitForJob(fx.server.url, job.id);
      t.is(doc.status, 'complete', `${line}: ${doc.stderr}`);
      t.is(doc.returncode, 0, `${line}: ${doc.stderr}`);
      t.true(doc.outputs_directory_contents.length > 0, 'the tool wrote its output');
    }
  });
}
