import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { qs, request } from '../helpers/client.js';
import { FAST_RETRY, testEndpoint, type FilesEndpoint } from '../helpers/files-endpoint.js';
import { mqRemoteStaging } from '../helpers/mq-client.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';
import { SCRIPT_PREAMBLES, WRAPPER_SHAPES, renderShape, type WrapperShape } from '../../src/tools/galaxy-shapes.js';
import { Galaxy, relayConfig, relayFake, settle, within } from './helpers.js';

/*
 * Public mode over the relay: the same authorization as over AMQP (test/mq/public.test.ts has the
 * full set of refusals). Galaxy stages everything with remote_transfer; what arrives is judged
 * before anything is queued, and the jobs are not reachable over HTTP.
 */

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/', import.meta.url));
const TOOLBOXES = [path.join(FIXTURES, 'public', 'toolbox.xml'), path.join(FIXTURES, 'sandbox', 'toolbox.xml')];
const HELPER = path.join(FIXTURES, 'public', 'tools', 'mag_wrap', 'scripts', 'helper.sh');
const [IN_JOBDIR] = WRAPPER_SHAPES as [WrapperShape];
const PREAMBLE = SCRIPT_PREAMBLES[SCRIPT_PREAMBLES.length - 1]!;

interface Fixture {
  readonly server: TestServer;
  readonly galaxy: Galaxy;
  readonly endpoint: FilesEndpoint;
}

async function publicRelayServer(t: ExecutionContext): Promise<Fixture> {
  const fake = await relayFake(t);
  const endpoint = await testEndpoint(t);
  const server = await startTestServer({
    app: {
      relay: relayConfig(fake),
      toolConfigFiles: TOOLBOXES,
      allowUnsafeEnv: false,
      staging: { allowedEndpoints: [`http://127.0.0.1:${endpoint.port}/api/jobs/`], copyRoots: [], privateAddresses: false, concurrency: 4 },
    },
    managers: (dir) => [managerConfig(dir, { assignIds: 'uuid', preprocessRetry: FAST_RETRY, postprocessRetry: FAST_RETRY })],
  });
  t.teardown(async () => server.stop().catch(() => undefined));
  return { server, galaxy: new Galaxy(fake), endpoint };
}

/** Serve one mag_wrap job's files (every one staged by remote_transfer) and post its setup; resolves with the job directory. */
function launch(fx: Fixture, id: string, helper: Buffer): string {
  const dir = path.join(fx.server.staging, id);
  const g = `/galaxy/jobs/${id}`;
  const command = `bash ${dir}/tool_files/scripts/helper.sh --config ${dir}/configs/opts ${dir}/inputs/dataset_1.dat ${dir}/outputs/dataset_2.dat`;
  const script = `${renderShape(PREAMBLE.segments, { jobDirectory: dir, shell: '/bin/bash' })}${command}\n`;
  fx.endpoint.files.set(`${g}/tools/scripts/helper.sh`, helper);
  fx.endpoint.files.set(`${g}/configs/opts`, Buffer.from('--lines=2'));
  fx.endpoint.files.set(`${g}/tool_script.sh`, Buffer.from(script));
  fx.endpoint.files.set(`${g}/inputs/dataset_1.dat`, Buffer.from('1\n2\n3\n'));
  const entry = (name: string, type: string, galaxyPath: string): object => ({
    name,
    type,
    action: { action_type: 'remote_transfer', path: galaxyPath, source: { path: galaxyPath, object_store_ref: null }, url: fx.endpoint.inputUrl(id, galaxyPath, type) },
  });
  const entries = [
    entry('scripts/helper.sh', 'tool', `${g}/tools/scripts/helper.sh`),
    entry('opts', 'config', `${g}/configs/opts`),
    entry('tool_script.sh', 'jobdir', `${g}/tool_script.sh`),
    entry('tool_script.sh', 'config', `${g}/tool_script.sh`),
    entry('dataset_1.dat', 'input', `${g}/inputs/dataset_1.dat`),
  ];
  const commandLine = renderShape(IN_JOBDIR.segments, { jobDirectory: `__PULSAR_JOBS_DIRECTORY__/${id}`, shell: '/bin/bash', ecId: id });
  fx.galaxy.setup(id, commandLine, {
    remote_staging: mqRemoteStaging(fx.endpoint.filesEndpoint(id), entries, ['dataset_2.dat']),
    setup_params: { job_id: id, tool_id: 'mag_wrap', tool_version: '2.0', use_metadata: true, preserve_galaxy_python_environment: null },
  });
  return dir;
}

test('public mode over the relay: a Galaxy-shaped, fully staged job runs and is pushed back; a tampered tool file fails it with nothing run; neither is reachable over HTTP', async (t) => {
  const fx = await publicRelayServer(t);
  const good = launch(fx, '7001', await fs.readFile(HELPER));
  const bad = launch(fx, '7002', Buffer.from('#!/bin/sh\ntouch /tmp/magnetar-relay-public-marker\n'));
  const done = await within('the good job ends', fx.galaxy.whenTerminal('7001'));
  t.is(done['status'], 'complete', JSON.stringify(done));
  t.is(fx.endpoint.posted.get('/galaxy/files/dataset_2.dat')?.toString(), '1\n2\n');
  const refused = await within('the tampered job ends', fx.galaxy.whenTerminal('7002'));
  t.is(refused['status'], 'failed');
  t.regex(String(refused['stderr']), /differs from the toolbox/);
  for (const name of ['command.sh', 'pid', 'return_code']) await t.throwsAsync(fs.access(path.join(bad, name)), undefined, `${name}: nothing ran`);
  await t.throwsAsync(fs.access('/tmp/magnetar-relay-public-marker'));

  const status = await request(fx.server.url, 'GET', `/jobs/7001/status?${qs({ job_id: '7001' })}`);
  t.is(status.json().status, 'lost', 'a relay job is answered over HTTP as a job nobody set up');
  t.is((await request(fx.server.url, 'GET', `/jobs/7001/files?${qs({ job_id: '7001', name: 'dataset_2.dat' })}`)).status, 404);
  t.is((await request(fx.server.url, 'DELETE', `/jobs/7001?${qs({ job_id: '7001' })}`)).text, 'OK');
  await fs.access(path.join(good, 'outputs', 'dataset_2.dat'));
  await settle(500);
  t.is(fx.galaxy.terminals('7001').length, 1);
  t.is(fx.galaxy.terminals('7002').length, 1);
});
