import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { defaultConfig, type AppSection, type Config, type ManagerConfig } from '../../src/config/index.js';
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

/**
 * The loader's configuration with no file and an empty environment. Its paths point under a
 * placeholder directory: every path a test server uses is overridden below.
 */
const DEFAULTS = await defaultConfig(os.tmpdir());
const DEFAULT_MANAGER = onlyManager(DEFAULTS);

function onlyManager(config: Config): ManagerConfig {
  const [manager, ...others] = config.app.managers;
  if (manager === undefined || others.length > 0) throw new Error('the default configuration should have exactly one manager');
  return manager;
}

export function managerConfig(root: string, overrides: Partial<ManagerConfig> = {}): ManagerConfig {
  return {
    ...DEFAULT_MANAGER,
    stagingDirectory: path.join(root, 'staging'),
    numConcurrentJobs: 2,
    ...overrides,
  };
}

export function testConfig(root: string, app: Partial<AppSection> = {}, managers?: ManagerConfig[]): Config {
  return {
    ...DEFAULTS,
    configDir: root,
    server: { ...DEFAULTS.server, port: 0 },
    app: {
      ...DEFAULTS.app,
      persistenceDirectory: path.join(root, 'persisted'),
      maxUploadSize: 0,
      maxJobUploadSize: 0,
      logRequests: false,
      // Tests hammer the server (and check wrong tokens): no limits unless a test sets them.
      rateLimitFailedAuth: 0,
      rateLimitSetup: 0,
      managers: managers ?? [managerConfig(root)],
      ...app,
    },
  };
}

export async function makeRoot(): Promise<string> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-test-'));
  // A job sandbox's uid (the server is root here) must be able to reach the job directories below.
  await fs.chmod(root, 0o711);
  return root;
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
