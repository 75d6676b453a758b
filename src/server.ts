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
import { rateLimits } from './web/rate-limit.js';
import { tlsCredentials } from './web/tls.js';

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

/** Build every manager's JobService, recover their jobs, then listen. */
export async function startServer(config: Config, options: StartOptions): Promise<RunningServer> {
  const { log } = options;
  // Read (or generate) the certificate first: a TLS problem must stop startup before jobs start.
  const tls = config.server.sslPem === undefined ? undefined : await tlsCredentials(config, log);
  const jobEnv = jobEnvironment(options.env);
  const authorizer = await createAuthorizer(config, log);
  const services = new Map<string, JobService>();
  const backendContext = { log, serverEnv: options.env, configFile: config.configFile ?? 'configuration' };
  for (const manager of config.app.managers) {
    services.set(manager.name, new JobService({ manager, app: config.app, backend: createBackend(manager, backendContext), authorizer, log, jobEnv }));
  }
  if (config.app.persistenceDirectory !== undefined) await fs.mkdir(config.app.persistenceDirectory, { recursive: true, mode: 0o700 });
  for (const service of services.values()) await service.start();

  const limits = rateLimits(config.app, queryOf, log);
  const web = createApp(config.app, services, log, limits);
  const status = fastStatus(services, config.app.privateToken, log, config.app.logRequests, limits.isBlocked);
  const app = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (!status(req, res)) web(req, res);
  };
  const serverOptions: http.ServerOptions = { maxHeaderSize: MAX_HEADER_SIZE, requestTimeout: 0, headersTimeout: 120_000, keepAliveTimeout: 30_000 };
  let server: http.Server;
  let scheme = 'http';
  if (tls !== undefined) {
    server = https.createServer({ ...serverOptions, key: tls.key, cert: tls.cert }, app);
    scheme = 'https';
  } else {
    server = http.createServer(serverOptions, app);
  }
  const port = options.port ?? config.server.port;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, config.server.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    limits.close();
    throw error;
  }
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `${scheme}://${host}:${address.port}/`;
  log.info({ url, managers: [...services.keys()] }, 'magnetar listening');
  return {
    url,
    server,
    services,
    async close() {
      for (const service of services.values()) await service.shutdown();
      limits.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
