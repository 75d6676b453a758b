import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import type { AppSection, Config, ManagerConfig } from '../../src/config/types.js';
import { createLogger } from '../../src/log.js';
import { startServer, type RunningServer } from '../../src/server.js';

export interface TestServer extends RunningServer {
  readonly root: string;
  readonly staging: string;
  readonly config: Config;
  /** Everything the server logged, one JSON line each. */
  readonly logLines: string[];
  /** Stop the server and delete its files. */
  stop(): Promise<void>;
}

export function managerConfig(root: string, overrides: Partial<ManagerConfig> = {}): ManagerConfig {
  return {
    name: '_default_',
    type: 'queued_python',
    stagingDirectory: path.join(root, 'staging'),
    assignIds: 'galaxy',
    numConcurrentJobs: 2,
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
    ...overrides,
  };
}

export function testConfig(root: string, app: Partial<AppSection> = {}, managers?: ManagerConfig[]): Config {
  return {
    configFile: undefined,
    configDir: root,
    server: { host: '127.0.0.1', port: 0, sslPem: undefined, sslGenerate: false },
    app: {
      privateToken: undefined,
      stagingDirectory: path.join(root, 'staging'),
      persistenceDirectory: path.join(root, 'persisted'),
      assignIds: 'galaxy',
      maximumStreamSize: 1048576,
      jobDirectoryMode: undefined,
      debug: false,
      maxUploadSize: 0,
      maxJobUploadSize: 0,
      allowUnsafeEnv: true,
      logRequests: false,
      toolConfigFiles: [],
      allowInsecurePublic: false,
      allowedSubmitParams: [],
      // Tests hammer the server (and check wrong tokens): no limits unless a test sets them.
      rateLimitFailedAuth: 0,
      rateLimitSetup: 0,
      toolDependencyDir: undefined,
      managers: managers ?? [managerConfig(root)],
      ...app,
    },
  };
}

export async function makeRoot(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-test-'));
}

/** A real server on 127.0.0.1:0 in this process, with its own temp directory. */
export async function startTestServer(
  options: { app?: Partial<AppSection>; managers?: (root: string) => ManagerConfig[]; root?: string } = {},
): Promise<TestServer> {
  const root = options.root ?? (await makeRoot());
  const config = testConfig(root, options.app ?? {}, options.managers?.(root));
  const logLines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logLines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
      if (process.env['MAGNETAR_TEST_LOG'] === '1') process.stderr.write(chunk);
      cb();
    },
  });
  const log = createLogger({ level: 'info', destination: sink });
  const running = await startServer(config, { log, env: process.env, port: 0 });
  return {
    ...running,
    root,
    staging: path.join(root, 'staging'),
    config,
    logLines,
    async stop() {
      await running.close();
      await fs.rm(root, { recursive: true, force: true });
    },
  };
}
