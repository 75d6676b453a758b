import { loadConfig, describeConfig } from '../config/index.js';
import { MagnetarError } from '../errors.js';
import { createLogger } from '../log.js';
import { startServer } from '../server.js';

export interface ServeOptions {
  readonly config?: string;
  readonly port?: number;
}

/** `magnetar serve`: run until SIGINT/SIGTERM. Jobs keep running across a stop and are re-attached. */
export async function serve(options: ServeOptions): Promise<number> {
  const log = createLogger({ level: process.env['MAGNETAR_LOG_LEVEL'] ?? 'info' });
  let loaded;
  try {
    loaded = await loadConfig(options.config === undefined ? { cwd: process.cwd(), env: process.env } : { configFile: options.config, cwd: process.cwd(), env: process.env });
  } catch (error) {
    if (error instanceof MagnetarError) {
      process.stderr.write(`magnetar: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  for (const warning of loaded.warnings) log.warn(warning);
  log.info(describeConfig(loaded.config));
  let running;
  try {
    running = await startServer(loaded.config, options.port === undefined ? { log, env: process.env } : { log, env: process.env, port: options.port });
  } catch (error) {
    process.stderr.write(`magnetar: ${error instanceof Error ? error.message : String(error)}\n`);
    return 2;
  }
  return new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      log.info({ signal }, 'stopping (running jobs continue and are re-attached on the next start)');
      const exit = (code: number): void => {
        resolve(code);
        // Whatever still watches running jobs (the launcher's pipes, re-attach polls) must not keep
        // the process alive: the jobs run on and are re-attached on the next start.
        setTimeout(() => process.exit(code), 1000).unref();
      };
      running.close().then(
        () => exit(0),
        (error: unknown) => {
          log.error({ err: error }, 'stopping failed');
          exit(1);
        },
      );
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
