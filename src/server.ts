import * as http from 'node:http';
import * as https from 'node:https';
import * as fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Config } from './config/types.js';
import { jobEnvironment } from './jobs/launch.js';
import { JobService } from './jobs/service.js';
import type { Logger } from './log.js';
import { createBackend } from './managers/index.js';
import { createAuthorizer } from './tools/index.js';
import { createApp } from './web/app.js';
import { fastStatus } from './web/fast-status.js';
import { queryOf } from './web/params.js';
import { rateLimits, type RateLimits } from './web/rate-limit.js';
import { tlsCredentials, type TlsCredentials } from './web/tls.js';

/** Galaxy sends the whole submit payload in the query string (PROTOCOL §1.1). */
const MAX_HEADER_SIZE = 16 * 1024 * 1024;

export interface RunningServer {
  readonly url: string;
  readonly server: http.Server;
  readonly services: ReadonlyMap<string, JobService>;
  close(): Promise<void>;
}

export interface StartOptions {
  readonly log: Logger;
  /** The server's own environment; jobs get HOME, PATH and TMPDIR from it. */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Override the configured port (tests use 0). */
  readonly port?: number;
}

/**
 * Build every manager's JobService, recover their jobs, then listen. If any step fails, every
 * service built so far is shut down (its backend's processes — the launcher, DRMAA helpers — end)
 * before the error is thrown.
 */
export async function startServer(config: Config, options: StartOptions): Promise<RunningServer> {
  const { log } = options;
  // Read (or generate) the certificate first: a TLS problem must stop startup before jobs start.
  const tls = config.server.sslPem === undefined ? undefined : await tlsCredentials(config, log);
  const jobEnv = jobEnvironment(options.env);
  const authorizer = await createAuthorizer(config, log);
  const services = new Map<string, JobService>();
  let limits: RateLimits | undefined;
  try {
    const backendContext = { log, serverEnv: options.env, configFile: config.configFile ?? 'configuration' };
    for (const manager of config.app.managers) {
      services.set(manager.name, new JobService({ manager, app: config.app, backend: createBackend(manager, backendContext), authorizer, log, jobEnv }));
    }
    if (config.app.persistenceDirectory !== undefined) await fs.mkdir(config.app.persistenceDirectory, { recursive: true, mode: 0o700 });
    for (const service of services.values()) await service.start();

    const started = rateLimits(config.app, queryOf, log);
    limits = started;
    const server = createHttpServer(config, services, log, started, tls);
    await listen(server, options.port ?? config.server.port, config.server.host);
    const address = server.address() as AddressInfo;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    const url = `${tls === undefined ? 'http' : 'https'}://${host}:${address.port}/`;
    log.info({ url, managers: [...services.keys()] }, 'magnetar listening');
    return {
      url,
      server,
      services,
      async close() {
        try {
          await shutdown(services, log);
        } finally {
          started.close();
          await new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
          });
        }
      },
    };
  } catch (error) {
    limits?.close();
    await shutdown(services, log).catch(() => undefined); // each failure is logged; the startup error is the one to report
    throw error;
  }
}

function createHttpServer(
  config: Config,
  services: ReadonlyMap<string, JobService>,
  log: Logger,
  limits: RateLimits,
  tls: TlsCredentials | undefined,
): http.Server {
  const web = createApp(config.app, services, log, limits);
  const status = fastStatus(services, config.app.privateToken, log, config.app.logRequests);
  const app = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (!status(req, res)) web(req, res);
  };
  const serverOptions: http.ServerOptions = { maxHeaderSize: MAX_HEADER_SIZE, requestTimeout: 0, headersTimeout: 120_000, keepAliveTimeout: 30_000 };
  return tls === undefined ? http.createServer(serverOptions, app) : https.createServer({ ...serverOptions, key: tls.key, cert: tls.cert }, app);
}

function listen(server: http.Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Shut every service down, each whatever became of the others; rejects with the first failure. */
async function shutdown(services: ReadonlyMap<string, JobService>, log: Logger): Promise<void> {
  const results = await Promise.allSettled([...services].map(async ([name, service]) => {
    try {
      await service.shutdown();
    } catch (error) {
      log.error({ manager: name, err: error }, 'shutting the manager down failed');
      throw error;
    }
  }));
  const failed = results.find((result) => result.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
}
