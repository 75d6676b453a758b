/**
 * From settings to the app section: every app option validated against the schema (which supplies
 * the defaults), paths made absolute, toolbox files checked, and the managers built.
 */
import { constants as fsConstants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError } from '../errors.js';
import { buildManagers, type ManagerDefaults } from './build-managers.js';
import { PUBLIC_MODE, warnIfOverridden } from './public-mode.js';
import {
  APP_OPTION_HINTS,
  APP_OPTION_NAMES,
  NOT_YET_SUPPORTED_APP_OPTIONS,
  NOT_YET_SUPPORTED_APP_PREFIXES,
  PERSISTENCE_DISABLED,
  appOptionsSchema,
  type AppOptions,
} from './schema.js';
import { isRelayUrl, relayConfig } from './relay.js';
import { ENVIRONMENT, fileModeWarning, parseOrThrow, type LoadContext, type Setting } from './setting.js';
import { describeIoError } from './sources.js';
import type { AppSection, MessageQueueConfig, SandboxConfig } from './types.js';

export async function buildApp(settings: ReadonlyMap<string, Setting>, configDir: string, ctx: LoadContext): Promise<AppSection> {
  const options = appOptions(settings, ctx);
  fileModeWarning(settings.get('job_directory_mode'), ctx);
  const toolConfigFiles = await toolboxFiles(options, settings, configDir);
  const publicMode = toolConfigFiles.length > 0;
  if (publicMode) {
    warnIfOverridden('assign_ids', options.assign_ids, settings.get('assign_ids'), ctx);
    warnIfOverridden('allow_unsafe_env', options.allow_unsafe_env, settings.get('allow_unsafe_env'), ctx);
  }
  const managers = await buildManagers(options, settings, configDir, managerDefaults(options, settings, publicMode, ctx), ctx);
  const persistence = options.persistence_directory;
  const mq = messageQueue(options, settings, configDir, ctx);
  const relay = options.message_queue_url !== undefined && isRelayUrl(options.message_queue_url) ? relayConfig(options, settings, configDir, ctx) : undefined;
  if (mq !== undefined || relay !== undefined) {
    const where = settings.get('message_queue_url');
    const fail = (message: string): ConfigError => new ConfigError(where?.file ?? ENVIRONMENT, where?.key ?? 'message_queue_url', message);
    if (persistence === PERSISTENCE_DISABLED) throw fail('message-queue mode keeps its status outbox (and ack stores) under persistence_directory, which is __none__');
  }

  return {
    privateToken: options.private_token,
    persistenceDirectory: persistence === PERSISTENCE_DISABLED ? undefined : path.resolve(ctx.cwd, persistence),
    maxUploadSize: options.max_upload_size,
    maxJobUploadSize: options.max_job_upload_size,
    allowUnsafeEnv: publicMode ? PUBLIC_MODE.allow_unsafe_env.forced : options.allow_unsafe_env,
    logRequests: options.log_requests,
    toolConfigFiles,
    allowUnsandboxedPublic: options.allow_unsandboxed_public,
    allowInsecurePublic: options.allow_insecure_public,
    allowedSubmitParams: options.allowed_submit_params,
    rateLimitFailedAuth: options.rate_limit_failed_auth,
    rateLimitSetup: options.rate_limit_setup,
    // Relative to the working directory, as staging_directory (and upstream's default "dependencies").
    toolDependencyDir: fromCwd(options.tool_dependency_dir, ctx),
    fileCacheDir: fromCwd(options.file_cache_dir, ctx),
    fileCacheSize: options.file_cache_size,
    managers,
    allowedEnv: options.allowed_env,
    maxSubmitParamSize: options.max_submit_param_size,
    maxDependenciesDescriptionSize: options.max_dependencies_description_size,
    maxSubmitJsonDepth: options.max_submit_json_depth,
    maxDynamicFileSources: options.max_dynamic_file_sources,
    maxTouchOutputs: options.max_touch_outputs,
    maxJobFiles: options.max_job_files,
    maxConcurrentUploadsPerJob: options.max_concurrent_uploads_per_job,
    maxCommandLineSize: options.max_command_line_size,
    maxStatusSize: options.max_status_size,
    statusCacheSize: options.status_cache_size,
    maxLiveJobs: options.max_live_jobs,
    maxLiveJobsPerAddress: options.max_live_jobs_per_address,
    setupExpiry: options.setup_expiry,
    finishedExpiry: options.finished_expiry,
    trustedProxies: options.trusted_proxies,
    requestBodyIdleTimeout: options.request_body_idle_timeout,
    headersTimeout: options.headers_timeout,
    maxConnections: options.max_connections,
    maxConnectionsPerAddress: options.max_connections_per_address,
    fairShare: options.fair_share,
    allowedHosts: options.allowed_hosts,
    allowedOrigins: options.allowed_origins,
    staging: {
      allowedEndpoints: options.staging_allowed_endpoints,
      copyRoots: options.staging_copy_roots.map((root) => path.resolve(root)),
      privateAddresses: options.staging_private_addresses ?? !publicMode,
      concurrency: options.staging_concurrency,
      maxTransfers: options.staging_max_transfers,
    },
    messageQueue: mq,
    ...(relay === undefined ? {} : { relay }),
  };
}

/**
 * `message_queue_url`: amqp(s) → the AMQP front door's settings; http(s) is relay mode
 * (config/relay.ts), undefined here. The URL holds credentials: messages name the key, never the value.
 */
function messageQueue(options: AppOptions, settings: ReadonlyMap<string, Setting>, configDir: string, ctx: LoadContext): MessageQueueConfig | undefined {
  const url = options.message_queue_url;
  const setting = settings.get('message_queue_url');
  if (url === undefined) return undefined;
  const fail = (message: string): ConfigError => new ConfigError(setting?.file ?? ENVIRONMENT, setting?.key ?? 'message_queue_url', message);
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(url.trim())?.[1]?.toLowerCase();
  if (scheme === 'http' || scheme === 'https') return undefined;
  if (scheme !== 'amqp' && scheme !== 'amqps') throw fail('expected an amqp:// or amqps:// URL (the value is not shown: it may hold a password)');
  let parsed: URL;
  try {
    parsed = new URL(url.trim());
  } catch {
    throw fail(`not a valid ${scheme}:// URL (the value is not shown: it may hold a password)`);
  }
  if (parsed.hostname === '') throw fail(`the ${scheme}:// URL names no host`);
  const fromConfig = (p: string | undefined): string | undefined => (p === undefined ? undefined : path.resolve(configDir, p));
  const retry = options.amqp_publish_retry;
  return {
    url: url.trim(),
    consume: options.message_queue_consume,
    publish: options.message_queue_publish,
    keyPrefix: options.amqp_key_prefix,
    durable: options.amqp_durable,
    acknowledge: options.amqp_acknowledge,
    ackRepublishTime: options.amqp_ack_republish_time,
    heartbeat: options.amqp_heartbeat,
    prefetch: options.amqp_prefetch,
    maxMessageSize: options.amqp_max_message_size,
    publishTimeout: options.amqp_publish_timeout,
    publishRetry: retry
      ? {
          maxRetries: options.amqp_publish_retry_max_retries,
          intervalStart: options.amqp_publish_retry_interval_start,
          intervalStep: options.amqp_publish_retry_interval_step,
          intervalMax: options.amqp_publish_retry_interval_max,
        }
      : undefined,
    reconnectMaxDelay: options.amqp_reconnect_max_delay,
    tls: {
      caCerts: fromConfig(options.amqp_connect_ssl_ca_certs),
      certFile: fromConfig(options.amqp_connect_ssl_certfile),
      keyFile: fromConfig(options.amqp_connect_ssl_keyfile),
      certReqs: options.amqp_connect_ssl_cert_reqs,
    },
    outboxDrainInterval: options.status_outbox_drain_interval,
  };
}

/** The app options, validated; not-yet-supported ones are dropped with a warning, unknown ones refused. */
function appOptions(settings: ReadonlyMap<string, Setting>, ctx: LoadContext): AppOptions {
  const values: Record<string, unknown> = {};
  for (const [key, setting] of settings) {
    if (key === 'app_config') {
      throw new ConfigError(setting.file, setting.key, 'app_config is only read from [app:main] in server.ini');
    }
    if (isNotYetSupported(key)) {
      ctx.warnings.push(`${setting.file}: ${setting.key} is not yet supported and is ignored`);
      continue;
    }
    if (!APP_OPTION_NAMES.has(key)) {
      const hint = APP_OPTION_HINTS.get(key);
      throw new ConfigError(setting.file, setting.key, `unknown option${hint === undefined ? '' : ` (${hint})`}`);
    }
    values[key] = setting.value;
  }
  return parseOrThrow(appOptionsSchema, values, settings);
}

function isNotYetSupported(key: string): boolean {
  if (APP_OPTION_NAMES.has(key)) return false;
  return NOT_YET_SUPPORTED_APP_OPTIONS.has(key) || NOT_YET_SUPPORTED_APP_PREFIXES.some((p) => key.startsWith(p));
}

function managerDefaults(options: AppOptions, settings: ReadonlyMap<string, Setting>, publicMode: boolean, ctx: LoadContext): ManagerDefaults {
  const fromEnv = (name: string): string | undefined => {
    const value = ctx.env[name];
    return value === undefined || value === '' ? undefined : value;
  };
  return {
    stagingDirectory: path.resolve(ctx.cwd, options.staging_directory),
    assignIds: options.assign_ids,
    jobDirectoryMode: options.job_directory_mode,
    maximumStreamSize: options.maximum_stream_size,
    debug: options.debug,
    galaxyHome: fromCwd(options.galaxy_home ?? fromEnv('GALAXY_HOME'), ctx),
    galaxyVirtualEnv: fromCwd(options.galaxy_virtual_env ?? fromEnv('GALAXY_VIRTUAL_ENV'), ctx),
    galaxyConfigFile: fromCwd(options.galaxy_config_file, ctx),
    galaxyDatasetFilesPath: fromCwd(options.galaxy_dataset_files_path, ctx),
    galaxyDatatypesConfigFile: fromCwd(options.galaxy_datatypes_config_file, ctx),
    publicMode,
    sandbox: { enabled: options.sandbox, setting: settings.get('sandbox'), config: sandboxConfig(options) },
  };
}

function sandboxConfig(options: AppOptions): SandboxConfig {
  return {
    bwrap: options.sandbox_bwrap,
    network: options.sandbox_network,
    uid: options.sandbox_uid,
    gid: options.sandbox_gid,
    cpuTime: options.sandbox_cpu_time,
    memory: options.sandbox_memory,
    processes: options.sandbox_processes,
    fileSize: options.sandbox_file_size,
    roBinds: options.sandbox_ro_binds,
  };
}

/** The sandbox with every option at its default (for a manager that left it to public mode). */
export function defaultSandbox(): SandboxConfig {
  return sandboxConfig(appOptionsSchema.parse({}));
}

function fromCwd(p: string | undefined, ctx: LoadContext): string | undefined {
  return p === undefined ? undefined : path.resolve(ctx.cwd, p);
}

/**
 * `tool_config_files` (or its alias `tool_config_file`): toolbox XML files, relative to the config
 * directory. Each must be a readable file now, so that a typo stops the server instead of leaving
 * it without the tools the admin meant to offer. Their contents are the toolbox loader's business.
 */
async function toolboxFiles(options: AppOptions, settings: ReadonlyMap<string, Setting>, configDir: string): Promise<readonly string[]> {
  const plural = settings.get('tool_config_files');
  const singular = settings.get('tool_config_file');
  if (options.tool_config_files !== undefined && options.tool_config_file !== undefined && singular !== undefined) {
    throw new ConfigError(singular.file, singular.key, 'give either tool_config_files or its alias tool_config_file, not both');
  }
  const listed = options.tool_config_files ?? options.tool_config_file ?? [];
  const setting = options.tool_config_files !== undefined ? plural : singular;
  const files: string[] = [];
  for (const entry of listed) {
    const file = path.resolve(configDir, entry);
    const fail = (message: string, cause?: unknown): ConfigError =>
      new ConfigError(setting?.file ?? ENVIRONMENT, setting?.key ?? 'tool_config_files', `${message}: ${file}`, { cause });
    try {
      if (!(await stat(file)).isFile()) throw fail('not a regular file');
      await access(file, fsConstants.R_OK);
    } catch (error) {
      if (error instanceof ConfigError) throw error;
      throw fail(describeIoError(error), error);
    }
    if (!files.includes(file)) files.push(file);
  }
  return files;
}
