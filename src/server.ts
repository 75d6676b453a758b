import * as http from 'node:http';
import * as https from 'node:https';
import * as fs from 'node:fs/promises';
import type { AddressInfo, Socket } from 'node:net';
import { FileCache } from './staging/cache.js';
import { DEFAULT_MAX_TRANSFERS, setMaxTransfers } from './staging/transfer-pool.js';
import { defaultSandbox } from './config/build.js';
import { CLUSTER_MANAGER_TYPES, type Config, type ManagerConfig, type SandboxConfig } from './config/types.js';
import { isInside } from './jobs/paths.js';
import { probeSandbox } from './jobs/sandbox.js';
import { jobEnvironment } from './jobs/launch.js';
import { JobService } from './jobs/service.js';
import type { Logger } from './log.js';
import { createBackend } from './managers/index.js';
import { MessageQueueMode, RelayMode } from './mq/index.js';
import { createAuthorizer } from './tools/index.js';
import { createApp } from './web/app.js';
import { errorAnswer } from './web/errors.js';
import { fastStatus } from './web/fast-status.js';
import { hostGuard } from './web/host-check.js';
import { queryOf } from './web/params.js';
import { FairShare, requestCost } from './web/fair-share.js';
import { addressMatcher, clientKeyOf, rateLimits, type RateLimits } from './web/rate-limit.js';
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
export async function startServer(configured: Config, options: StartOptions): Promise<RunningServer> {
  let config = configured;
  const { log } = options;
  // Read (or generate) the certificate first: a TLS problem must stop startup before jobs start.
  const tls = config.server.sslPem === undefined ? undefined : await tlsCredentials(config, log);
  const jobEnv = jobEnvironment(options.env);
  config = await checkSandboxes(config, jobEnv, log);
  const authorizer = await createAuthorizer(config, log);
  const services = new Map<string, JobService>();
  let limits: RateLimits | undefined;
  let mq: MessageQueueMode | undefined;
  let relay: RelayMode | undefined;
  try {
    // One limit for the whole server: every manager's transfers share the worker threads.
    setMaxTransfers(config.app.staging.maxTransfers ?? DEFAULT_MAX_TRANSFERS);
    const backendContext = { log, serverEnv: options.env, configFile: config.configFile ?? 'configuration' };
    for (const manager of config.app.managers) {
      services.set(manager.name, new JobService({ manager, app: config.app, backend: createBackend(manager, backendContext), authorizer, log, jobEnv }));
    }
    if (config.app.persistenceDirectory !== undefined) await fs.mkdir(config.app.persistenceDirectory, { recursive: true, mode: 0o700 });
    // The status feeds subscribe before the services start: the recovery's state changes are published too.
    const mqConfig = config.app.messageQueue;
    if (mqConfig !== undefined && config.app.persistenceDirectory !== undefined) {
      mq = await MessageQueueMode.open(mqConfig, services, config.app.persistenceDirectory, log);
    }
    const relayConfig = config.app.relay;
    if (relayConfig !== undefined && config.app.persistenceDirectory !== undefined) {
      relay = await RelayMode.open(relayConfig, services, { persistenceDirectory: config.app.persistenceDirectory, toolDependencyDir: config.app.toolDependencyDir, log });
    }
    for (const service of services.values()) await service.start();
    await mq?.start();
    await relay?.start();
    const messageQueue = mq;
    const relayMode = relay;
    const health =
      messageQueue === undefined && relayMode === undefined
        ? undefined
        : () => ({ ...(messageQueue === undefined ? {} : { message_queue: messageQueue.health() }), ...(relayMode === undefined ? {} : { relay: relayMode.health() }) });

    const cache =
      config.app.fileCacheDir === undefined
        ? undefined
        : await FileCache.open({ dir: config.app.fileCacheDir, maxBytes: config.app.fileCacheSize, maxEntryBytes: config.app.maxUploadSize, log });
    const started = rateLimits(config.app, queryOf, log);
    limits = started;
    const server = createHttpServer(config, services, log, started, tls, cache, health);
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
          await messageQueue?.stopConsuming();
          await relayMode?.stopConsuming();
          await shutdown(services, log);
        } finally {
          await messageQueue?.close();
          await relayMode?.close();
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
    await mq?.stopConsuming();
    await relay?.stopConsuming();
    await shutdown(services, log).catch(() => undefined); // each failure is logged; the startup error is the one to report
    await mq?.close();
    await relay?.close();
    throw error;
  }
}

/**
 * Decide every manager's sandbox (public mode: on unless the configuration turned it off) and make
 * sure this machine can run each local one. One that cannot stops the server with the reason,
 * unless public mode runs with `allow_unsandboxed_public`, whose jobs then run unsandboxed with a
 * warning at every start. Cluster managers' sandboxes run on the nodes: not checked here.
 */
async function checkSandboxes(config: Config, jobEnv: Readonly<Record<string, string>>, log: Logger): Promise<Config> {
  const publicMode = config.app.toolConfigFiles.length > 0;
  const managers: ManagerConfig[] = [];
  for (const manager of config.app.managers) {
    const configured = manager.sandbox ?? (publicMode ? defaultSandbox() : false);
    // What the administrator points jobs at is theirs to see, read-only: tool dependencies, Galaxy's lib and venv.
    const sandbox =
      configured === false
        ? false
        : { ...configured, roBinds: [...new Set([...configured.roBinds, ...[config.app.toolDependencyDir, manager.galaxyHome, manager.galaxyVirtualEnv].filter(isAbsolutePath)])] };
    const exposed = sandbox === false ? undefined : exposedByBinds(sandbox, manager, config);
    if (exposed !== undefined) throw new Error(`manager ${manager.name}: ${exposed}`);
    if (sandbox === false || CLUSTER_MANAGER_TYPES.includes(manager.type)) {
      if (sandbox !== false) log.info({ manager: manager.name }, 'job sandbox: the job scripts run bubblewrap on the nodes, which must have it');
      managers.push({ ...manager, sandbox });
      continue;
    }
    const reason = await probeSandbox(sandbox, manager.stagingDirectory, jobEnv);
    if (reason === undefined) {
      managers.push({ ...manager, sandbox });
    } else if (publicMode && config.app.allowUnsandboxedPublic) {
      log.warn(`WARNING: manager ${manager.name} runs public tool jobs UNSANDBOXED (allow_unsandboxed_public): ${reason}`);
      managers.push({ ...manager, sandbox: false });
    } else {
      throw new Error(
        `manager ${manager.name}: ${reason}${publicMode ? '; public mode needs the job sandbox (or set allow_unsandboxed_public = true to run without it)' : ' (or set sandbox = false)'}`,
      );
    }
  }
  return { ...config, app: { ...config.app, managers } };
}

/** A read-only bind that would show the server's own files (or other jobs) to the sandbox, said in one line. */
function exposedByBinds(sandbox: SandboxConfig, manager: ManagerConfig, config: Config): string | undefined {
  const own: [string, string | undefined][] = [
    ['the staging directory', manager.stagingDirectory],
    ['the persistence directory', config.app.persistenceDirectory],
    ['the file cache', config.app.fileCacheDir],
    ['the configuration file', config.configFile],
    ['the TLS certificate and key', config.server.sslPem],
  ];
  for (const bind of sandbox.roBinds) {
    for (const [what, where] of own) {
      if (where !== undefined && (isInside(bind, where) || isInside(where, bind))) {
        return `the sandbox's read-only bind ${bind} (sandbox_ro_binds, tool_dependency_dir, galaxy_home or galaxy_virtual_env) would show ${what} (${where}) to jobs`;
      }
    }
  }
  return undefined;
}

function isAbsolutePath(p: string | undefined): p is string {
  return p !== undefined && p.startsWith('/') && !/[\0\n\r]/.test(p);
}

function createHttpServer(
  config: Config,
  services: ReadonlyMap<string, JobService>,
  log: Logger,
  limits: RateLimits,
  tls: TlsCredentials | undefined,
  cache: FileCache | undefined,
  health: (() => object) | undefined,
): http.Server {
  const web = createApp(config.app, services, log, limits, cache, health);
  const status = fastStatus(services, config.app.privateToken, log, config.app.logRequests);
  const bodyIdleMs = config.app.requestBodyIdleTimeout * 1000;
  const requested = new WeakSet<Socket>();
  const guard = hostGuard(config);
  const fair = config.app.fairShare
    ? new FairShare({ onHold: (client) => log.warn({ client }, 'fair share: the server is busy and this client is over its share; its requests wait briefly') })
    : undefined;
  const clientKey = clientKeyOf(config.app.trustedProxies);
  const handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (!status(req, res)) web(req, res);
  };
  const app = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    requested.add(req.socket);
    // Before both the status fast path and express: a foreign Host or a browser Origin is refused.
    const refused = guard(req);
    if (refused !== undefined) {
      const answer = errorAnswer(refused, log, { method: req.method, route: '' });
      res.writeHead(answer.status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(answer.body), connection: 'close' });
      res.end(answer.body);
      return;
    }
    if (bodyIdleMs > 0 && hasBody(req)) dropIdleBody(req, bodyIdleMs);
    if (fair === undefined) handle(req, res);
    else fair.admit(clientKey(req), requestCost(req.url?.length ?? 0, Number(req.headers['content-length']) || 0), () => handle(req, res));
  };
  const headersMs = config.app.headersTimeout * 1000;
  const serverOptions: http.ServerOptions = {
    maxHeaderSize: MAX_HEADER_SIZE,
    // No limit on a whole request (uploads may be large and slow); a body that stalls is dropped
    // by dropIdleBody, a client that does not finish its headers by headersTimeout.
    requestTimeout: 0,
    headersTimeout: headersMs,
    // How often Node looks for connections over headersTimeout (also those that sent nothing).
    connectionsCheckingInterval: headersMs > 0 ? Math.min(5_000, Math.max(250, Math.floor(headersMs / 4))) : 30_000,
    keepAliveTimeout: 30_000,
  };
  const server =
    tls === undefined
      ? http.createServer(serverOptions, app)
      : https.createServer({ ...serverOptions, key: tls.key, cert: tls.cert, ...(headersMs > 0 ? { handshakeTimeout: headersMs } : {}) }, app);
  capConnections(server, config, log);
  if (fair !== undefined) server.once('close', () => fair.close());
  if (headersMs > 0) {
    // Node's headersTimeout spares a connection that has sent nothing at all: close it too when no
    // request has begun on it in that time (once one has, keepAliveTimeout and headersTimeout apply).
    const watch = (socket: Socket): void => {
      const timer = setTimeout(() => {
        if (!requested.has(socket) && !socket.destroyed) socket.destroy();
      }, headersMs);
      timer.unref();
      socket.once('close', () => clearTimeout(timer));
    };
    server.on(tls === undefined ? 'connection' : 'secureConnection', watch);
  }
  return server;
}

function hasBody(req: http.IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0';
}

/**
 * A request body that sends nothing for `ms` is dropped: the socket's inactivity timeout is armed
 * until the body has arrived (Node destroys a socket that times out with nobody listening, and the
 * upload that was streaming from it is discarded). Answers may then take as long as they take.
 */
function dropIdleBody(req: http.IncomingMessage, ms: number): void {
  const socket = req.socket;
  socket.setTimeout(ms);
  const disarm = (): void => {
    if (!socket.destroyed) socket.setTimeout(0);
  };
  req.once('end', disarm);
  req.once('close', disarm);
}

/**
 * `max_connections` (server.maxConnections: Node closes connections beyond it) and
 * `max_connections_per_address`: one address may not hold more, so a single client cannot use up
 * the server's file descriptors. Trusted proxies carry everybody's connections and are exempt.
 */
function capConnections(server: http.Server, config: Config, log: Logger): void {
  const { maxConnections, maxConnectionsPerAddress } = config.app;
  if (maxConnections > 0) server.maxConnections = maxConnections;
  if (maxConnectionsPerAddress === 0) return;
  const exempt = addressMatcher(config.app.trustedProxies);
  const open = new Map<string, number>();
  let lastWarning = 0;
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? 'unknown';
    if (exempt(address)) return;
    const count = (open.get(address) ?? 0) + 1;
    if (count > maxConnectionsPerAddress) {
      socket.destroy();
      const now = Date.now();
      if (now - lastWarning > 10_000) {
        lastWarning = now;
        log.warn({ client: address, limit: maxConnectionsPerAddress }, 'too many connections from one address: refusing new ones');
      }
      return;
    }
    open.set(address, count);
    socket.once('close', () => {
      const left = (open.get(address) ?? 1) - 1;
      if (left <= 0) open.delete(address);
      else open.set(address, left);
    });
  });
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
