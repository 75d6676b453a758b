import test, { type ExecutionContext } from 'ava';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultConfig, describeConfig, loadConfig, type Config, type LoadOptions } from '../src/config/index.js';
import * as schema from '../src/config/schema.js';
import { ConfigError } from '../src/errors.js';

// Compiled to dist/test/, fixtures stay in the source tree.
const FIXTURES = fileURLToPath(new URL('../../test/fixtures/config/', import.meta.url));
const REPO = fileURLToPath(new URL('../../', import.meta.url));

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'magnetar-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function writeFiles(dir: string, files: Record<string, string>): Promise<void> {
  for (const [name, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), text);
  }
}

/** Writes `files` into a fresh directory and loads `configFile` from it, with an empty environment. */
async function load(t: ExecutionContext, files: Record<string, string>, configFile?: string, extra: Partial<LoadOptions> = {}) {
  const dir = await tempDir(t);
  await writeFiles(dir, files);
  const opts: LoadOptions = { cwd: dir, env: {}, ...extra };
  if (configFile !== undefined) opts.configFile = configFile;
  return { dir, ...(await loadConfig(opts)) };
}

async function loadError(t: ExecutionContext, files: Record<string, string>, configFile: string, extra: Partial<LoadOptions> = {}): Promise<ConfigError> {
  const dir = await tempDir(t);
  await writeFiles(dir, files);
  const error = await t.throwsAsync(loadConfig({ cwd: dir, env: {}, configFile, ...extra }), { instanceOf: ConfigError });
  if (error === undefined) throw new Error('expected a ConfigError');
  return error as ConfigError;
}

/** Every default, written out: the schema states them, this pins them. */
function expectedDefaults(dir: string): Config {
  const staging = path.join(dir, 'files/staging');
  return {
    configFile: undefined,
    configDir: dir,
    server: { host: '127.0.0.1', port: 8913, sslPem: undefined, sslGenerate: false },
    app: {
      privateToken: undefined,
      persistenceDirectory: path.join(dir, 'files/persisted_data'),
      maxUploadSize: 100 * 1024 ** 3,
      maxJobUploadSize: 1024 ** 4,
      allowUnsafeEnv: true,
      logRequests: true,
      toolConfigFiles: [],
      allowInsecurePublic: false,
      allowUnsandboxedPublic: false,
      allowedSubmitParams: [],
      rateLimitFailedAuth: 20,
      rateLimitSetup: 1000,
      toolDependencyDir: undefined,
      fileCacheDir: undefined,
      fileCacheSize: 10 * 1024 ** 3,
      allowedEnv: [],
      trustedProxies: [],
      requestBodyIdleTimeout: 60,
      headersTimeout: 60,
      maxConnections: 1024,
      maxConnectionsPerAddress: 256,
      fairShare: true,
      allowedHosts: [],
      allowedOrigins: [],
      managers: [
        {
          name: '_default_',
          type: 'queued_python',
          stagingDirectory: staging,
          assignIds: 'galaxy',
          numConcurrentJobs: 1,
          debug: false,
          maximumStreamSize: 1048576,
          jobDirectoryMode: undefined,
          env: {},
          tmpDir: undefined,
          galaxyHome: undefined,
          galaxyVirtualEnv: undefined,
          galaxyConfigFile: undefined,
          galaxyDatasetFilesPath: undefined,
          galaxyDatatypesConfigFile: undefined,
          minPollingInterval: 0.5,
          jobNameTemplate: 'pulsar_$job_id',
          backendOptions: {},
          sandbox: undefined,
          preprocessRetry: { maxRetries: -1, intervalStart: 2, intervalStep: 2, intervalMax: 30 },
          postprocessRetry: { maxRetries: -1, intervalStart: 2, intervalStep: 2, intervalMax: 30 },
        },
      ],
      staging: { allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4, maxTransfers: 16 },
      messageQueue: undefined,
      maxSubmitParamSize: 1024 ** 2,
      maxDependenciesDescriptionSize: 256 * 1024,
      maxSubmitJsonDepth: 64,
      maxDynamicFileSources: 100,
      maxTouchOutputs: 1000,
      maxJobFiles: 100000,
      maxConcurrentUploadsPerJob: 32,
      maxCommandLineSize: 8 * 1024 ** 2,
      maxStatusSize: 16 * 1024 ** 2,
      statusCacheSize: 64 * 1024 ** 2,
      maxLiveJobs: 10_000,
      maxLiveJobsPerAddress: 5_000,
      setupExpiry: 86_400,
      finishedExpiry: 604_800,
    },
  };
}

const INI_WITH_APP = (app: string, server = 'port = 8913\n'): string => `[server:main]\n${server}\n[app:main]\n${app}\n`;

test('no config file: 127.0.0.1:8913, files/ under cwd, one queued_python manager', async (t) => {
  const { dir, config, warnings } = await load(t, {});
  t.is(config.configFile, undefined);
  t.is(config.configDir, dir);
  t.deepEqual(config.server, { host: '127.0.0.1', port: 8913, sslPem: undefined, sslGenerate: false });
  t.is(config.app.managers[0]?.stagingDirectory, path.join(dir, 'files/staging'));
  t.is(config.app.persistenceDirectory, path.join(dir, 'files/persisted_data'));
  t.is(config.app.privateToken, undefined);
  t.is(config.app.managers[0]?.assignIds, 'galaxy');
  t.is(config.app.managers[0]?.maximumStreamSize, 1048576);
  t.is(config.app.maxUploadSize, 100 * 1024 ** 3);
  t.is(config.app.maxJobUploadSize, 1024 ** 4);
  t.true(config.app.allowUnsafeEnv);
  t.true(config.app.logRequests);
  t.is(config.app.managers.length, 1);
  const manager = config.app.managers[0];
  t.is(manager?.name, '_default_');
  t.is(manager?.type, 'queued_python');
  t.is(manager?.numConcurrentJobs, 1);
  t.is(manager?.stagingDirectory, path.join(dir, 'files/staging'));
  t.is(manager?.minPollingInterval, 0.5);
  t.deepEqual(warnings, []);
  t.deepEqual(config, expectedDefaults(dir));
  t.deepEqual(await defaultConfig(dir), config);
});

test('server.ini with [server:main] and [app:main]', async (t) => {
  const { dir, config } = await load(
    t,
    {
      'conf/server.ini': INI_WITH_APP(
        'paste.app_factory = pulsar.web.wsgi:app_factory\nprivate_token = tok\nstaging_directory = /srv/staging\npersistence_directory = __none__\nassign_ids = uuid\nmax_upload_size = 512M\njob_directory_mode = 0750\n',
        'use = egg:Paste#http\nhost = 0.0.0.0\nport = 9001\n',
      ),
    },
    'conf/server.ini',
  );
  t.is(config.configFile, path.join(dir, 'conf/server.ini'));
  t.is(config.configDir, path.join(dir, 'conf'));
  t.deepEqual(config.server, { host: '0.0.0.0', port: 9001, sslPem: undefined, sslGenerate: false });
  t.is(config.app.privateToken, 'tok');
  t.is(config.app.persistenceDirectory, undefined);
  t.is(config.app.maxUploadSize, 512 * 1024 ** 2);
  t.is(config.app.managers[0]?.assignIds, 'uuid', 'app defaults reach managers');
  t.is(config.app.managers[0]?.jobDirectoryMode, 0o750);
  t.is(config.app.managers[0]?.stagingDirectory, '/srv/staging');
});

test('a file without [server:main] listens on localhost:8913', async (t) => {
  const { config } = await load(t, { 'server.ini': '[app:main]\nprivate_token = x\n' }, 'server.ini');
  t.deepEqual(config.server, { host: 'localhost', port: 8913, sslPem: undefined, sslGenerate: false });
});

test('upstream server.ini, app.yml and job_managers.ini load as Pulsar would read them', async (t) => {
  const dir = await tempDir(t);
  await cp(path.join(FIXTURES, 'upstream'), dir, { recursive: true });
  const { config, warnings } = await loadConfig({ cwd: dir, env: {}, configFile: 'server.ini' });
  t.deepEqual(config.server, { host: '0.0.0.0', port: 8914, sslPem: undefined, sslGenerate: false });
  t.is(config.app.privateToken, 's3cret#not-a-comment;really', 'inline # and ; are part of the value, as in configparser');
  t.is(config.app.managers[0]?.assignIds, 'uuid');
  t.true(config.app.managers[0]?.debug);
  t.is(config.app.managers[0]?.jobDirectoryMode, 0o750);
  t.is(config.app.managers[0]?.maximumStreamSize, 4096);
  t.deepEqual(
    config.app.managers.map((m) => [m.name, m.numConcurrentJobs]),
    [
      ['_default_', 1],
      ['example', os.availableParallelism()],
    ],
  );
  t.deepEqual(config.app.managers[1]?.env, { OMP_NUM_THREADS: '4' });
  t.is(config.app.managers[1]?.minPollingInterval, 0.25);
  t.true(config.app.managers[1]?.debug, 'debug is copied from the app');
  t.deepEqual(warnings, ['app.yml: dependency_resolution is not yet supported and is ignored']);
});

test('%(here)s is the directory of the ini file; ssl_pem is relative to it', async (t) => {
  const { dir, config } = await load(
    t,
    {
      'etc/server.ini':
        '[DEFAULT]\nsub = galaxy\n[server:main]\nssl_pem = host.pem\n[app:main]\nstaging_directory = %(here)s/staging\ngalaxy_home = %(here)s/%(sub)s\nprivate_token = 100%%\n',
      'etc/host.pem': 'not really a pem',
    },
    'etc/server.ini',
  );
  const etc = path.join(dir, 'etc');
  t.is(config.server.sslPem, path.join(etc, 'host.pem'));
  t.is(config.app.managers[0]?.stagingDirectory, path.join(etc, 'staging'));
  t.is(config.app.managers[0]?.galaxyHome, path.join(etc, 'galaxy'));
  t.is(config.app.privateToken, '100%');
});

test('app_config YAML values override [app:main] values', async (t) => {
  const { config } = await load(
    t,
    {
      'server.ini': INI_WITH_APP('app_config = conf/app.yml\nprivate_token = from-ini\nassign_ids = uuid\n'),
      'conf/app.yml': 'private_token: from-yaml\n',
    },
    'server.ini',
  );
  t.is(config.app.privateToken, 'from-yaml');
  t.is(config.app.managers[0]?.assignIds, 'uuid', 'keys absent from YAML keep their ini value');
});

test('an app.yml next to server.ini is read when app_config is not given', async (t) => {
  const { config } = await load(t, { 'server.ini': '[server:main]\n', 'app.yml': 'private_token: found\n' }, 'server.ini');
  t.is(config.app.privateToken, 'found');
});

test('a missing app_config file is an error naming the option', async (t) => {
  const error = await loadError(t, { 'server.ini': INI_WITH_APP('app_config = nope.yml\n'), 'nope.yml.sample': 'private_token: changeme\n' }, 'server.ini');
  t.is(error.file, 'server.ini');
  t.is(error.key, '[app:main] app_config');
  t.regex(error.message, /file not found/);
});

test('YAML booleans follow PyYAML (yes/no/on/off in any case)', async (t) => {
  const { config } = await load(t, { 'app.yml': 'debug: yes\nallow_unsafe_env: Off\nlog_requests: NO\n' }, 'app.yml');
  t.true(config.app.managers[0]?.debug);
  t.false(config.app.allowUnsafeEnv);
  t.false(config.app.logRequests);
});

test('ini booleans accept true/false, yes/no, on/off, 1/0', async (t) => {
  const { config } = await load(t, { 'server.ini': INI_WITH_APP('debug = On\nallow_unsafe_env = 0\nlog_requests = False\n') }, 'server.ini');
  t.true(config.app.managers[0]?.debug);
  t.false(config.app.allowUnsafeEnv);
  t.false(config.app.logRequests);
  const error = await loadError(t, { 'server.ini': INI_WITH_APP('debug = maybe\n') }, 'server.ini');
  t.is(error.key, '[app:main] debug');
  t.regex(error.message, /expected true or false/);
});

test('an empty YAML file is {}', async (t) => {
  const { config } = await load(t, { 'server.ini': INI_WITH_APP('app_config = app.yml\n'), 'app.yml': '' }, 'server.ini');
  t.is(config.app.managers.length, 1);
  const comments = await load(t, { 'app.yml': '# nothing here\n---\n' }, 'app.yml');
  t.is(comments.config.app.privateToken, undefined);
});

test('a YAML config file is read as app options and listens on localhost', async (t) => {
  const { dir, config } = await load(t, { 'cfg/app.yaml': 'private_token: t\nstaging_directory: stage\n' }, 'cfg/app.yaml');
  t.deepEqual(config.server, { host: 'localhost', port: 8913, sslPem: undefined, sslGenerate: false });
  t.is(config.configDir, path.join(dir, 'cfg'));
  t.is(config.app.managers[0]?.stagingDirectory, path.join(dir, 'stage'), 'staging_directory is relative to the working directory, as upstream');
});

test('YAML whose top level is not a mapping is refused', async (t) => {
  const error = await loadError(t, { 'app.yml': '- a\n- b\n' }, 'app.yml');
  t.is(error.file, 'app.yml');
  t.regex(error.message, /top level must be a mapping/);
});

test('YAML alias bombs are refused', async (t) => {
  const bomb = [
    'a: &a ["x","x","x","x","x","x","x","x","x","x"]',
    'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]',
    'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]',
    'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]',
    'dependency_resolution: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]',
  ].join('\n');
  const error = await loadError(t, { 'app.yml': bomb }, 'app.yml');
  t.regex(error.message, /alias/);
});

test('job_managers.ini with two managers, * and the max_concurrent_jobs alias', async (t) => {
  const { config } = await load(
    t,
    {
      'server.ini': INI_WITH_APP('job_managers_config = job_managers.ini\n'),
      'job_managers.ini': '[manager:_default_]\ntype = queued_python\nmax_concurrent_jobs = 3\n\n[manager:all]\nnum_concurrent_jobs = *\nstaging_directory = /srv/all\n\n[other]\nx = 1\n',
    },
    'server.ini',
  );
  const [first, second] = config.app.managers;
  t.is(config.app.managers.length, 2);
  t.is(first?.name, '_default_');
  t.is(first?.numConcurrentJobs, 3);
  t.is(second?.name, 'all');
  t.is(second?.type, 'queued_python', 'a missing type defaults to queued_python');
  t.is(second?.numConcurrentJobs, os.availableParallelism());
  t.is(second?.stagingDirectory, '/srv/all');
});

test('num_concurrent_jobs and max_concurrent_jobs together are an error', async (t) => {
  const error = await loadError(
    t,
    { 'app.yml': 'manager:\n  num_concurrent_jobs: 2\n  max_concurrent_jobs: 3\n' },
    'app.yml',
  );
  t.is(error.key, 'manager.max_concurrent_jobs');
});

test('YAML managers: dict, each with its own options', async (t) => {
  const { config, warnings } = await load(
    t,
    {
      'app.yml': [
        'managers:',
        '  _default_:',
        '    type: queued_python',
        "    num_concurrent_jobs: '*'",
        '  fast:',
        '    type: unqueued',
        '    debug: true',
        '    env_PATH: /opt/bin',
        '    tmp_dir: $(mktemp -d)',
        '    job_name_template: pulsar_$job_id',
        'manager:',
        '  type: unqueued',
      ].join('\n'),
    },
    'app.yml',
  );
  t.deepEqual(
    config.app.managers.map((m) => [m.name, m.type]),
    [
      ['_default_', 'queued_python'],
      ['fast', 'unqueued'],
    ],
  );
  t.is(config.app.managers[0]?.numConcurrentJobs, os.availableParallelism());
  t.true(config.app.managers[1]?.debug);
  t.deepEqual(config.app.managers[1]?.env, { PATH: '/opt/bin' });
  t.is(config.app.managers[1]?.tmpDir, '$(mktemp -d)');
  t.deepEqual(warnings, [
    'app.yml: manager is ignored because managers (app.yml) takes precedence',
  ]);
});

test('single manager: takes its name from name, default _default_', async (t) => {
  const named = await load(t, { 'app.yml': 'manager:\n  name: solo\n  type: unqueued\n' }, 'app.yml');
  t.deepEqual(named.config.app.managers.map((m) => [m.name, m.type]), [['solo', 'unqueued']]);
  const unnamed = await load(t, { 'app.yml': 'manager:\n  num_concurrent_jobs: 4\n' }, 'app.yml');
  t.deepEqual(unnamed.config.app.managers.map((m) => [m.name, m.numConcurrentJobs]), [['_default_', 4]]);
});

test('an unknown option names the file and the key', async (t) => {
  const yaml = await loadError(t, { 'app.yml': 'private_tokn: x\n' }, 'app.yml');
  t.is(yaml.file, 'app.yml');
  t.is(yaml.key, 'private_tokn');
  t.regex(yaml.message, /^app\.yml: private_tokn: unknown option/);

  const ini = await loadError(t, { 'server.ini': INI_WITH_APP('private_key = x\n') }, 'server.ini');
  t.is(ini.key, '[app:main] private_key');
  t.regex(ini.message, /unknown option.*private_token/);

  const server = await loadError(t, { 'server.ini': '[server:main]\nprot = 1\n' }, 'server.ini');
  t.is(server.key, '[server:main] prot');

  const manager = await loadError(
    t,
    { 'server.ini': INI_WITH_APP('job_managers_config = jm.ini\n'), 'jm.ini': '[manager:a]\ntype = queued_python\nnative_specification = -q x\n' },
    'server.ini',
  );
  t.is(manager.file, 'jm.ini');
  t.is(manager.key, '[manager:a] native_specification');
  t.regex(manager.message, /unknown manager option/);
});

test('a bad port is refused with the expected form', async (t) => {
  for (const port of ['0', '65536', 'http', '80.5']) {
    const error = await loadError(t, { 'server.ini': `[server:main]\nport = ${port}\n` }, 'server.ini');
    t.is(error.key, '[server:main] port');
    t.regex(error.message, /expected an integer port from 1 to 65535/);
  }
});

test('a bad assign_ids is refused', async (t) => {
  const error = await loadError(t, { 'app.yml': 'assign_ids: random\n' }, 'app.yml');
  t.is(error.key, 'assign_ids');
  t.regex(error.message, /expected galaxy or uuid, got "random"/);
});

test('unsupported and unknown manager types are refused', async (t) => {
  const xsede = await loadError(t, { 'app.yml': 'manager:\n  type: queued_drmaa_xsede\n' }, 'app.yml');
  t.is(xsede.key, 'manager.type');
  t.regex(xsede.message, /queued_drmaa_xsede is not yet supported/);

  const local = await loadError(t, { 'app.yml': 'manager:\n  type: queued_python\n  native_specification: -q x\n' }, 'app.yml');
  t.regex(local.message, /unknown manager option \(an option of DRMAA\/CLI\/condor managers only\)/);

  const typo = await loadError(t, { 'app.yml': 'managers:\n  m:\n    type: queued_pyton\n' }, 'app.yml');
  t.is(typo.key, 'managers.m.type');
  t.regex(typo.message, /expected a manager type/);
});

test('not-yet-supported options load with one warning each', async (t) => {
  const { warnings } = await load(
    t,
    { 'app.yml': 'relay_future_option: 1\namqp_future_option: true\nobject_store_store_by: uuid\nsentry_dsn: x\nprivate_token: t\n' },
    'app.yml',
  );
  t.deepEqual(warnings, [
    'app.yml: relay_future_option is not yet supported and is ignored',
    'app.yml: amqp_future_option is not yet supported and is ignored',
    'app.yml: object_store_store_by is not yet supported and is ignored',
    'app.yml: sentry_dsn is not yet supported and is ignored',
  ]);
});

test('environment: OVERRIDE always wins, plain only fills unset keys; MAGNETAR_ prefix too', async (t) => {
  const files = { 'app.yml': 'private_token: file\nassign_ids: uuid\n' };
  const { config } = await load(t, files, 'app.yml', {
    env: {
      PULSAR_CONFIG_PRIVATE_TOKEN: 'env-default',
      PULSAR_CONFIG_OVERRIDE_ASSIGN_IDS: 'galaxy',
      PULSAR_CONFIG_DEBUG: 'true',
      PULSAR_CONFIG_DIR: '/somewhere',
      MAGNETAR_CONFIG_MAXIMUM_STREAM_SIZE: '77',
      PULSAR_CONFIG_MAXIMUM_STREAM_SIZE: '66',
    },
  });
  t.is(config.app.privateToken, 'file', 'PULSAR_CONFIG_ does not override a file value');
  t.is(config.app.managers[0]?.assignIds, 'galaxy', 'PULSAR_CONFIG_OVERRIDE_ does');
  t.true(config.app.managers[0]?.debug, 'PULSAR_CONFIG_ fills an unset key');
  t.is(config.app.managers[0]?.maximumStreamSize, 77, 'MAGNETAR_CONFIG_ beats PULSAR_CONFIG_');

  const magnetar = await load(t, files, 'app.yml', {
    env: { PULSAR_CONFIG_OVERRIDE_PRIVATE_TOKEN: 'pulsar', MAGNETAR_CONFIG_OVERRIDE_PRIVATE_TOKEN: 'magnetar' },
  });
  t.is(magnetar.config.app.privateToken, 'magnetar');

  const noFile = await load(t, {}, undefined, { env: { PULSAR_CONFIG_PRIVATE_TOKEN: 'tok', GALAXY_HOME: '/opt/galaxy' } });
  t.is(noFile.config.app.privateToken, 'tok');
  t.is(noFile.config.app.managers[0]?.galaxyHome, '/opt/galaxy', 'GALAXY_HOME is the default galaxy_home');

  const bad = await t.throwsAsync(loadConfig({ cwd: os.tmpdir(), env: { PULSAR_CONFIG_OVERRIDE_PORTT: '1' } }), { instanceOf: ConfigError });
  t.is((bad as ConfigError).file, 'environment');
  t.is((bad as ConfigError).key, 'PULSAR_CONFIG_OVERRIDE_PORTT');
});

test('the result is deep-frozen', async (t) => {
  const { config } = await load(t, { 'app.yml': 'managers:\n  a:\n    env_X: "1"\n' }, 'app.yml');
  t.true(Object.isFrozen(config));
  t.true(Object.isFrozen(config.server));
  t.true(Object.isFrozen(config.app));
  t.true(Object.isFrozen(config.app.managers));
  t.true(Object.isFrozen(config.app.managers[0]));
  t.true(Object.isFrozen(config.app.managers[0]?.env));
  t.true(Object.isFrozen((await defaultConfig(os.tmpdir())).app.managers[0]));
  t.throws(() => {
    (config.app as { privateToken: string | undefined }).privateToken = 'changed';
  });
});

test('duplicate manager names are refused', async (t) => {
  const sections = await loadError(
    t,
    { 'server.ini': INI_WITH_APP('job_managers_config = jm.ini\n'), 'jm.ini': '[manager:a]\n[manager:b]\n[manager:a]\n' },
    'server.ini',
  );
  t.is(sections.file, 'jm.ini');
  t.regex(sections.message, /duplicate section/);

  const spaced = await loadError(
    t,
    { 'server.ini': INI_WITH_APP('job_managers_config = jm.ini\n'), 'jm.ini': '[manager:a]\n[manager: a]\n' },
    'server.ini',
  );
  t.regex(spaced.message, /duplicate manager name a/);

  const yaml = await loadError(t, { 'app.yml': 'managers:\n  a: {}\n  a: {}\n' }, 'app.yml');
  t.regex(yaml.message, /duplicated mapping key/);

  const none = await loadError(t, { 'app.yml': 'managers: {}\n' }, 'app.yml');
  t.regex(none.message, /defines no manager/);
});

test('sizes, file modes and env_ names', async (t) => {
  const { config, warnings } = await load(
    t,
    { 'app.yml': 'max_upload_size: 10K\nmax_job_upload_size: 0\njob_directory_mode: 0700\nmanager:\n  env_A_1: x\n  maximum_stream_size: 0\n' },
    'app.yml',
  );
  t.is(config.app.maxUploadSize, 10 * 1024);
  t.is(config.app.maxJobUploadSize, 0);
  t.is(config.app.managers[0]?.jobDirectoryMode, 0o700, 'YAML 1.1 octal');
  t.is(config.app.managers[0]?.maximumStreamSize, 0);
  t.deepEqual(config.app.managers[0]?.env, { A_1: 'x' });
  t.is(warnings.length, 1);
  t.regex(warnings[0] ?? '', /job_directory_mode: the YAML integer 448 is read as file mode 0700/);

  const size = await loadError(t, { 'app.yml': 'max_upload_size: 10 parsecs\n' }, 'app.yml');
  t.regex(size.message, /expected a byte count/);
  const mode = await loadError(t, { 'app.yml': "job_directory_mode: '0789'\n" }, 'app.yml');
  t.regex(mode.message, /expected an octal file mode/);
  const decimal = await loadError(t, { 'app.yml': 'job_directory_mode: 750\n' }, 'app.yml');
  t.regex(decimal.message, /quote it in YAML/);
  const envName = await loadError(t, { 'app.yml': 'manager:\n  env_1BAD: x\n' }, 'app.yml');
  t.is(envName.key, 'manager.env_1BAD');
});

test('describeConfig is one line with address and managers', async (t) => {
  const { config } = await load(t, { 'app.yml': 'private_token: secret-value\nmanagers:\n  a: {num_concurrent_jobs: 2}\n  b: {type: unqueued}\n' }, 'app.yml');
  const line = describeConfig(config);
  t.false(line.includes('\n'));
  t.false(line.includes('secret-value'));
  t.regex(line, /^http:\/\/localhost:8913 /);
  t.regex(line, /managers: a \(queued_python, 2 workers\), b \(unqueued\)$/);
});

test('a non-loopback host without private_token is warned about', async (t) => {
  const { warnings } = await load(t, { 'server.ini': '[server:main]\nhost = 0.0.0.0\n' }, 'server.ini');
  t.is(warnings.length, 1);
  t.regex(warnings[0] ?? '', /^server\.ini: host 0\.0\.0\.0 .* no private_token/);
});

/** Turns `#key = value` lines (one `#`) into live lines; `##` lines stay comments. */
function uncomment(text: string, keep: (line: string) => boolean = () => true): string {
  return text
    .split('\n')
    .map((line) => (/^#[^#]/.test(line) && keep(line) ? line.slice(1) : line))
    .join('\n');
}

test('the sample files load as shipped', async (t) => {
  const dir = await tempDir(t);
  await cp(path.join(REPO, 'server.ini.sample'), path.join(dir, 'server.ini'));
  await cp(path.join(REPO, 'app.yml.sample'), path.join(dir, 'app.yml'));
  await cp(path.join(REPO, 'job_managers.ini.sample'), path.join(dir, 'job_managers.ini'));
  const { config, warnings } = await loadConfig({ cwd: dir, env: {}, configFile: 'server.ini' });
  t.deepEqual(config.server, { host: 'localhost', port: 8913, sslPem: undefined, sslGenerate: false });
  t.deepEqual(warnings, []);
});

test('the sample files load with every example line uncommented', async (t) => {
  const dir = await tempDir(t);
  const read = (name: string): Promise<string> => readFile(path.join(REPO, name), 'utf8');
  await writeFiles(dir, {
    'server.ini': uncomment(await read('server.ini.sample'), (line) => !/^#tool_config_files? =/.test(line)),
    'app.yml': uncomment(await read('app.yml.sample')),
    'job_managers.ini': uncomment(await read('job_managers.ini.sample')),
    'host.pem': 'placeholder',
  });
  const { config, warnings } = await loadConfig({ cwd: dir, env: {}, configFile: 'server.ini' });
  t.is(config.server.sslPem, path.join(dir, 'host.pem'));
  t.is(config.app.privateToken, 'changemeinproduction');
  t.deepEqual(
    config.app.managers.map((m) => [m.name, m.type]),
    [
      ['_default_', 'queued_python'],
      ['example', 'queued_python'],
      ['immediate', 'unqueued'],
      ['drmaa', 'queued_drmaa'],
      ['as_user', 'queued_external_drmaa'],
      ['torque_over_ssh', 'queued_cli'],
      ['slurm', 'queued_cli'],
      ['condor', 'queued_condor'],
    ],
  );
  t.is(config.app.managers.find((m) => m.name === 'torque_over_ssh')?.backendOptions['shell_hostname'], 'headnode.example.org');
  t.is(config.app.fileCacheDir, path.join(dir, 'cache'));
  t.is(config.app.fileCacheSize, 10 * 1024 ** 3);
  t.true(warnings.some((w) => w.includes('managers is ignored because')));
});

test('server.ini.sample documents every option', async (t) => {
  const sample = await readFile(path.join(REPO, 'server.ini.sample'), 'utf8');
  const names = [
    ...schema.SERVER_OPTION_NAMES,
    ...schema.APP_OPTION_NAMES,
    ...schema.MANAGER_OPTION_NAMES,
    ...schema.NOT_YET_SUPPORTED_APP_OPTIONS,
    ...schema.NOT_YET_SUPPORTED_APP_PREFIXES.map((prefix) => `${prefix}*`),
    ...schema.IGNORED_MANAGER_OPTIONS,
    ...schema.UNSUPPORTED_MANAGER_TYPES,
    'max_concurrent_jobs',
    'env_<NAME>',
    'app_config',
  ];
  const missing = names.filter((name) => !sample.includes(name));
  t.deepEqual(missing, []);
});

// ------------------------------------------------------------------------------------------------
// Public tool service mode, TLS and rate-limit options

const TOOLBOX = '<toolbox tool_path="."></toolbox>\n';

test('no tool_config_files: not public, new options have their defaults', async (t) => {
  const { config } = await load(t, { 'server.ini': INI_WITH_APP('private_token = x\n') }, 'server.ini');
  t.deepEqual(config.app.toolConfigFiles, []);
  t.false(config.app.allowInsecurePublic);
  t.deepEqual(config.app.allowedSubmitParams, []);
  t.is(config.app.rateLimitFailedAuth, 20);
  t.is(config.app.rateLimitSetup, 1000);
  t.false(config.server.sslGenerate);
  const defaults = await defaultConfig('/tmp');
  t.deepEqual(defaults.app.toolConfigFiles, []);
  t.is(defaults.app.rateLimitFailedAuth, 20);
});

test('tool_config_files: comma list relative to the config dir, absolute allowed; public mode forces uuid and safe env', async (t) => {
  const dir = await tempDir(t);
  await writeFiles(dir, {
    'etc/tools.xml': TOOLBOX,
    'etc/more/shed.xml': TOOLBOX,
    'abs/other.xml': TOOLBOX,
    'etc/job_managers.ini': '[manager:a]\nassign_ids = galaxy\n[manager:b]\ntype = unqueued\n',
    'etc/server.ini': INI_WITH_APP(
      `tool_config_files = tools.xml, more/shed.xml ,${path.join(dir, 'abs/other.xml')},tools.xml\nassign_ids = galaxy\nallow_unsafe_env = true\njob_managers_config = job_managers.ini\n`,
    ),
  });
  const { config, warnings } = await loadConfig({ cwd: dir, env: {}, configFile: 'etc/server.ini' });
  t.deepEqual(config.app.toolConfigFiles, [path.join(dir, 'etc/tools.xml'), path.join(dir, 'etc/more/shed.xml'), path.join(dir, 'abs/other.xml')]);
  t.deepEqual(config.app.managers.map((m) => m.assignIds), ['uuid', 'uuid']);
  t.false(config.app.allowUnsafeEnv);
  t.true(Object.isFrozen(config.app.toolConfigFiles));
  t.deepEqual(warnings, [
    'etc/server.ini: [app:main] assign_ids = galaxy is overridden: public tool service mode (tool_config_files) always assigns uuid job ids',
    'etc/server.ini: [app:main] allow_unsafe_env = true is overridden: public tool service mode (tool_config_files) never accepts execute, file or raw env entries',
    'etc/job_managers.ini: [manager:a] assign_ids = galaxy is overridden: public tool service mode (tool_config_files) always assigns uuid job ids',
  ]);
  t.regex(describeConfig(config), /public tool service, 3 toolbox files\)/);
});

test('tool_config_file alias, YAML lists and the environment; defaults are overridden silently', async (t) => {
  const alias = await load(t, { 'tools.xml': TOOLBOX, 'server.ini': INI_WITH_APP('tool_config_file = tools.xml\n') }, 'server.ini');
  t.deepEqual(alias.config.app.toolConfigFiles, [path.join(alias.dir, 'tools.xml')]);
  t.is(alias.config.app.managers[0]?.assignIds, 'uuid');
  t.false(alias.config.app.allowUnsafeEnv);
  t.deepEqual(alias.warnings, [], 'nothing said galaxy or allow_unsafe_env: nothing to warn about');

  const yaml = await load(t, { 'a.xml': TOOLBOX, 'b.xml': TOOLBOX, 'app.yml': 'tool_config_files: [a.xml, b.xml]\nmanagers:\n  m: {assign_ids: galaxy}\n' }, 'app.yml');
  t.deepEqual(yaml.config.app.toolConfigFiles, [path.join(yaml.dir, 'a.xml'), path.join(yaml.dir, 'b.xml')]);
  t.is(yaml.config.app.managers[0]?.assignIds, 'uuid');
  t.deepEqual(yaml.warnings, ['app.yml: managers.m.assign_ids = galaxy is overridden: public tool service mode (tool_config_files) always assigns uuid job ids']);

  const env = await load(t, { 'tools.xml': TOOLBOX }, undefined, { env: { PULSAR_CONFIG_TOOL_CONFIG_FILES: 'tools.xml' } });
  t.deepEqual(env.config.app.toolConfigFiles, [path.join(env.dir, 'tools.xml')]);

  const empty = await load(t, { 'server.ini': INI_WITH_APP('tool_config_files =\n') }, 'server.ini');
  t.deepEqual(empty.config.app.toolConfigFiles, [], 'an empty list is not public mode');
  t.is(empty.config.app.managers[0]?.assignIds, 'galaxy');
});

test('an empty YAML value is as if the key were absent: the default, and nothing to warn about', async (t) => {
  const { config, warnings } = await load(
    t,
    { 'tools.xml': TOOLBOX, 'app.yml': 'tool_config_files: tools.xml\nassign_ids:\nallow_unsafe_env:\nrate_limit_setup:\nmanager:\n  type: unqueued\n  num_concurrent_jobs:\n  job_name_template:\n' },
    'app.yml',
  );
  t.is(config.app.rateLimitSetup, 1000);
  t.is(config.app.managers[0]?.numConcurrentJobs, 1);
  t.is(config.app.managers[0]?.jobNameTemplate, 'pulsar_$job_id');
  t.deepEqual(warnings, []);
});

test('tool_config_files: a missing toolbox, a directory, both aliases and bad values are errors naming the key', async (t) => {
  const missing = await loadError(t, { 'server.ini': INI_WITH_APP('tool_config_files = tools.xml, nope.xml\n'), 'tools.xml': TOOLBOX }, 'server.ini');
  t.is(missing.key, '[app:main] tool_config_files');
  t.regex(missing.message, /file not found: .*nope\.xml$/);

  const directory = await loadError(t, { 'app.yml': 'tool_config_file: [sub]\n', 'sub/x': '' }, 'app.yml');
  t.is(directory.key, 'tool_config_file');
  t.regex(directory.message, /not a regular file/);

  const both = await loadError(t, { 'app.yml': 'tool_config_files: a.xml\ntool_config_file: a.xml\n', 'a.xml': TOOLBOX }, 'app.yml');
  t.is(both.key, 'tool_config_file');
  t.regex(both.message, /not both/);

  const notAList = await loadError(t, { 'app.yml': 'tool_config_files: {a: 1}\n' }, 'app.yml');
  t.regex(notAList.message, /comma-separated list/);
});

test('public mode over plain HTTP on a non-loopback host is refused unless allow_insecure_public', async (t) => {
  const files = (server: string, app = ''): Record<string, string> => ({
    'tools.xml': TOOLBOX,
    'server.ini': INI_WITH_APP(`private_token = x\ntool_config_files = tools.xml\n${app}`, server),
    'host.pem': 'checked at startup by web/tls.ts',
  });
  const refused = await loadError(t, files('host = 0.0.0.0\n'), 'server.ini');
  t.is(refused.key, '[server:main] host');
  t.regex(refused.message, /public tool service mode .* plain HTTP on 0\.0\.0\.0/);
  t.regex(refused.message, /allow_insecure_public/);
  t.regex(refused.message, /ssl_pem/);
  const named = await loadError(t, files('host = galaxy-worker.example.org\n'), 'server.ini');
  t.regex(named.message, /allow_insecure_public/);

  const allowed = await load(t, files('host = 0.0.0.0\n', 'allow_insecure_public = true\n'), 'server.ini');
  t.true(allowed.config.app.allowInsecurePublic);
  t.true(allowed.warnings.some((w) => /plain HTTP on 0\.0\.0\.0 \(allow_insecure_public is set\)/.test(w)));

  for (const host of ['localhost', '127.0.0.1', '127.1.2.3', '::1', '[::1]', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1']) {
    const loopback = await load(t, files(`host = ${host}\n`), 'server.ini');
    t.is(loopback.config.app.toolConfigFiles.length, 1, host);
  }
  const tls = await load(t, files('host = 0.0.0.0\nssl_pem = host.pem\n'), 'server.ini');
  t.is(tls.config.server.sslPem, path.join(tls.dir, 'host.pem'));
  const generated = await load(t, files('host = ::\nssl_pem = *\n'), 'server.ini');
  t.true(generated.config.server.sslGenerate);

  // Not public: plain HTTP on 0.0.0.0 stays allowed (with the token warning if no token).
  const notPublic = await load(t, { 'server.ini': INI_WITH_APP('private_token = x\n', 'host = 0.0.0.0\n') }, 'server.ini');
  t.deepEqual(notPublic.warnings, []);
});

test('allowed_submit_params, rate_limit_failed_auth, rate_limit_setup, allow_insecure_public', async (t) => {
  const ini = await load(
    t,
    { 'server.ini': INI_WITH_APP('allowed_submit_params = native_specification, submit_request_memory\nrate_limit_failed_auth = 0\nrate_limit_setup = 5\nallow_insecure_public = yes\n') },
    'server.ini',
  );
  t.deepEqual(ini.config.app.allowedSubmitParams, ['native_specification', 'submit_request_memory']);
  t.is(ini.config.app.rateLimitFailedAuth, 0);
  t.is(ini.config.app.rateLimitSetup, 5);
  t.true(ini.config.app.allowInsecurePublic);

  const yaml = await load(t, { 'app.yml': 'allowed_submit_params:\n  - native_specification\nrate_limit_failed_auth: 3\n' }, 'app.yml');
  t.deepEqual(yaml.config.app.allowedSubmitParams, ['native_specification']);
  t.is(yaml.config.app.rateLimitFailedAuth, 3);

  const badName = await loadError(t, { 'app.yml': 'allowed_submit_params: "native_specification, user; rm"\n' }, 'app.yml');
  t.is(badName.key, 'allowed_submit_params');
  t.regex(badName.message, /parameter names/);
  const badCount = await loadError(t, { 'app.yml': 'rate_limit_setup: -1\n' }, 'app.yml');
  t.regex(badCount.message, /whole number >= 0/);
  const badBool = await loadError(t, { 'app.yml': 'allow_insecure_public: maybe\n' }, 'app.yml');
  t.regex(badBool.message, /true or false/);
});

test('network options: trusted_proxies, timeouts, connection caps, allowed_hosts, allowed_origins', async (t) => {
  const ini = await load(
    t,
    {
      'server.ini': INI_WITH_APP(
        'trusted_proxies = 127.0.0.1, 10.0.0.0/8, fd00::/8\nrequest_body_idle_timeout = 0\nheaders_timeout = 7.5\nmax_connections = 0\nmax_connections_per_address = 9\nallowed_hosts = pulsar.example.org, *.cluster.test\nallowed_origins = https://ui.example.org\n',
      ),
    },
    'server.ini',
  );
  t.deepEqual(ini.config.app.trustedProxies, ['127.0.0.1', '10.0.0.0/8', 'fd00::/8']);
  t.is(ini.config.app.requestBodyIdleTimeout, 0);
  t.is(ini.config.app.headersTimeout, 7.5);
  t.is(ini.config.app.maxConnections, 0);
  t.is(ini.config.app.maxConnectionsPerAddress, 9);
  t.deepEqual(ini.config.app.allowedHosts, ['pulsar.example.org', '*.cluster.test']);
  t.deepEqual(ini.config.app.allowedOrigins, ['https://ui.example.org']);
  const yaml = await load(t, { 'app.yml': 'trusted_proxies: [::1]\nallowed_hosts: ["*"]\n' }, 'app.yml');
  t.deepEqual(yaml.config.app.trustedProxies, ['::1']);
  t.deepEqual(yaml.config.app.allowedHosts, ['*']);
  for (const bad of ['trusted_proxies: [10.0.0.0/33]', 'trusted_proxies: [proxy.example.org]', 'trusted_proxies: [300.1.1.1]']) {
    t.is((await loadError(t, { 'app.yml': `${bad}\n` }, 'app.yml')).key, 'trusted_proxies', bad);
  }
  t.regex((await loadError(t, { 'app.yml': 'headers_timeout: -1\n' }, 'app.yml')).message, /seconds >= 0/);
  t.is((await loadError(t, { 'app.yml': 'allowed_hosts: ["evil.test/x"]\n' }, 'app.yml')).key, 'allowed_hosts');
  t.is((await loadError(t, { 'app.yml': 'allowed_origins: [ui.example.org]\n' }, 'app.yml')).key, 'allowed_origins');
});

test('ssl_pem = * asks for a generated certificate next to server.ini; an explicit pem must exist', async (t) => {
  const { dir, config } = await load(t, { 'etc/server.ini': '[server:main]\nssl_pem = *\n' }, 'etc/server.ini');
  t.deepEqual(config.server, { host: 'localhost', port: 8913, sslPem: path.join(dir, 'etc', 'magnetar-selfsigned.pem'), sslGenerate: true });
  t.regex(describeConfig(config), /^https:\/\/localhost:8913 /);
  const missing = await loadError(t, { 'server.ini': '[server:main]\nssl_pem = host.pem\n' }, 'server.ini');
  t.is(missing.key, '[server:main] ssl_pem');
  t.regex(missing.message, /file not found/);
});

// ------------------------------------------------------------------------------------------------
// tool_dependency_dir (galaxy_packages dependency resolution)

test('tool_dependency_dir: off by default, relative to the working directory, empty means off', async (t) => {
  const none = await load(t, { 'server.ini': INI_WITH_APP('private_token = x\n') }, 'server.ini');
  t.is(none.config.app.toolDependencyDir, undefined);
  t.is((await defaultConfig('/tmp')).app.toolDependencyDir, undefined);
  t.false(none.warnings.some((w) => w.includes('tool_dependency_dir')));

  const ini = await load(t, { 'etc/server.ini': INI_WITH_APP('tool_dependency_dir = deps\n') }, 'etc/server.ini');
  t.is(ini.config.app.toolDependencyDir, path.join(ini.dir, 'deps'), 'relative to cwd, as staging_directory and upstream');
  t.deepEqual(ini.warnings, []);

  const yaml = await load(t, { 'app.yml': 'tool_dependency_dir: /srv/galaxy/deps\n' }, 'app.yml');
  t.is(yaml.config.app.toolDependencyDir, '/srv/galaxy/deps');
  const empty = await load(t, { 'app.yml': "tool_dependency_dir: ''\n" }, 'app.yml');
  t.is(empty.config.app.toolDependencyDir, undefined);

  const env = await load(t, {}, undefined, { env: { PULSAR_CONFIG_TOOL_DEPENDENCY_DIR: '/opt/deps' } });
  t.is(env.config.app.toolDependencyDir, '/opt/deps');
});

test('tool_dependency_dir: a non-string or a NUL is refused naming the key', async (t) => {
  const number = await loadError(t, { 'app.yml': 'tool_dependency_dir: 12\n' }, 'app.yml');
  t.is(number.key, 'tool_dependency_dir');
  t.regex(number.message, /a path/);
  const list = await loadError(t, { 'app.yml': 'tool_dependency_dir: [a, b]\n' }, 'app.yml');
  t.is(list.key, 'tool_dependency_dir');
  const nul = await loadError(t, { 'app.yml': 'tool_dependency_dir: "a\\0b"\n' }, 'app.yml');
  t.regex(nul.message, /NUL/);
  t.false(schema.NOT_YET_SUPPORTED_APP_OPTIONS.has('tool_dependency_dir'));
});

// ------------------------------------------------------------------------------------------------
// Job sandbox

const SANDBOX_DEFAULTS = { bwrap: 'bwrap', network: false, uid: 65534, gid: 65534, cpuTime: 0, memory: 0, processes: 4096, fileSize: 0, roBinds: [] };

test('sandbox: on with its defaults in public mode, undecided otherwise; managers override the app values', async (t) => {
  const open = await load(t, { 'server.ini': INI_WITH_APP('private_token = x\n') }, 'server.ini');
  t.is(open.config.app.managers[0]?.sandbox, undefined, 'private mode without sandbox options: left to the server (off unless public)');
  t.false(open.config.app.allowUnsandboxedPublic);

  const pub = await load(t, { 'tools.xml': TOOLBOX, 'server.ini': INI_WITH_APP('tool_config_files = tools.xml\n') }, 'server.ini');
  t.deepEqual(pub.config.app.managers[0]?.sandbox, SANDBOX_DEFAULTS);
  t.deepEqual(pub.warnings, []);
  t.regex(describeConfig(pub.config), /managers: _default_ \(queued_python, 1 worker, sandboxed\)$/);

  const yaml = await load(
    t,
    {
      'app.yml':
        'sandbox: true\nsandbox_memory: 2G\nsandbox_ro_binds: [/opt/tools, /srv/ref]\nsandbox_uid: 1000\nmanagers:\n' +
        '  a: {}\n  b: {sandbox_network: true, sandbox_cpu_time: 60, sandbox_processes: 0, sandbox_gid: 1001, sandbox_file_size: 1M, sandbox_bwrap: /usr/local/bin/bwrap}\n  c: {sandbox: false}\n',
    },
    'app.yml',
  );
  const [a, b, c] = yaml.config.app.managers;
  t.deepEqual(a?.sandbox, { ...SANDBOX_DEFAULTS, uid: 1000, memory: 2 * 1024 ** 3, roBinds: ['/opt/tools', '/srv/ref'] });
  t.deepEqual(b?.sandbox, {
    ...SANDBOX_DEFAULTS, bwrap: '/usr/local/bin/bwrap', network: true, uid: 1000, gid: 1001, cpuTime: 60, memory: 2 * 1024 ** 3,
    processes: 0, fileSize: 1024 ** 2, roBinds: ['/opt/tools', '/srv/ref'],
  });
  t.false(c?.sandbox);
  t.deepEqual(yaml.warnings, [], 'sandbox = false outside public mode is nothing to warn about');
});

test('sandbox = false in public mode is the administrator\'s explicit choice, said loudly at every start', async (t) => {
  const { config, warnings } = await load(
    t,
    { 'tools.xml': TOOLBOX, 'job_managers.ini': '[manager:m]\nsandbox = false\n[manager:n]\n', 'server.ini': INI_WITH_APP('tool_config_files = tools.xml\njob_managers_config = job_managers.ini\nallow_unsandboxed_public = true\n') },
    'server.ini',
  );
  t.false(config.app.managers[0]?.sandbox);
  t.deepEqual(config.app.managers[1]?.sandbox, SANDBOX_DEFAULTS);
  t.true(config.app.allowUnsandboxedPublic);
  t.is(warnings.length, 1);
  t.regex(warnings[0] ?? '', /^WARNING: job_managers\.ini: \[manager:m\] sandbox = false: manager m runs public tool jobs UNSANDBOXED/);
});

test('sandbox options are checked: never uid 0, absolute bind paths', async (t) => {
  const uid = await loadError(t, { 'server.ini': INI_WITH_APP('sandbox_uid = 0\n') }, 'server.ini');
  t.regex(uid.message, /sandbox_uid.*not root/);
  const gid = await loadError(t, { 'app.yml': 'managers:\n  m: {sandbox_gid: 0}\n' }, 'app.yml');
  t.regex(gid.message, /sandbox_gid/);
  const binds = await loadError(t, { 'server.ini': INI_WITH_APP('sandbox_ro_binds = opt/tools\n') }, 'server.ini');
  t.regex(binds.message, /sandbox_ro_binds.*absolute paths/);
});
