/** The typed, frozen configuration the rest of the server receives. Built by `config/load.ts`. */

export type AssignIds = 'galaxy' | 'uuid';
export type ManagerType = 'queued_python' | 'unqueued' | 'queued_drmaa' | 'queued_external_drmaa' | 'queued_cli' | 'queued_condor';

/** Manager types whose jobs a cluster scheduler runs (their backend reads `backendOptions`). */
export const CLUSTER_MANAGER_TYPES: readonly ManagerType[] = ['queued_drmaa', 'queued_external_drmaa', 'queued_cli', 'queued_condor'];

export interface ManagerConfig {
  readonly name: string;
  readonly type: ManagerType;
  /** Absolute. */
  readonly stagingDirectory: string;
  readonly assignIds: AssignIds;
  /** queued_python worker count (`num_concurrent_jobs` or `max_concurrent_jobs`; `*` = CPU count). */
  readonly numConcurrentJobs: number;
  readonly debug: boolean;
  /** Bytes of stdout/stderr returned in the status document; 0 = unlimited. */
  readonly maximumStreamSize: number;
  /** Mode for job directories, e.g. 0o750; undefined = umask. */
  readonly jobDirectoryMode: number | undefined;
  /** `env_<NAME>` options: extra environment for every job. */
  readonly env: Readonly<Record<string, string>>;
  /** `tmp_dir`: undefined = per-job `<jobdir>/tmp`. */
  readonly tmpDir: string | undefined;
  readonly galaxyHome: string | undefined;
  readonly galaxyVirtualEnv: string | undefined;
  readonly galaxyConfigFile: string | undefined;
  readonly galaxyDatasetFilesPath: string | undefined;
  readonly galaxyDatatypesConfigFile: string | undefined;
  readonly minPollingInterval: number;
  /** `job_name_template` for scheduler job names (`$job_id` is replaced). */
  readonly jobNameTemplate: string;
  /**
   * Type-specific options of cluster managers (`native_specification`, `job_plugin`, `shell_*`,
   * `job_*`, `submit_*`, `production`, helper script paths…), as strings; each backend validates
   * its own at startup.
   */
  readonly backendOptions: Readonly<Record<string, string>>;
  /**
   * The job sandbox (`sandbox` and `sandbox_*` options); false = jobs run unsandboxed (said so).
   * undefined = not configured: the server uses the default sandbox in public mode, none otherwise.
   */
  readonly sandbox?: SandboxConfig | false | undefined;
  /** `preprocess_action_*`: retries of server-side stage-in transfers (undefined: upstream's defaults). */
  readonly preprocessRetry?: RetryConfig | undefined;
  /** `postprocess_action_*`: retries of server-side stage-out transfers (undefined: upstream's defaults). */
  readonly postprocessRetry?: RetryConfig | undefined;
}

/** Upstream's retry policy (PROTOCOL §6.1): maxRetries -1 = no retry, 0 = forever; intervals in seconds. */
export interface RetryConfig {
  readonly maxRetries: number;
  readonly intervalStart: number;
  readonly intervalStep: number;
  readonly intervalMax: number;
}

/** Server-side staging (`staging_*` options, `staging/`). */
export interface StagingConfig {
  /** Files endpoints (URL prefixes) remote transfers may reach; [] = any outside public mode, none in it. */
  readonly allowedEndpoints: readonly string[];
  /** Absolute directories remote_copy sources must be inside; [] = anywhere outside public mode, nowhere in it. */
  readonly copyRoots: readonly string[];
  /** Loopback, private and link-local addresses may be connected to. */
  readonly privateAddresses: boolean;
  /** Transfers one job runs at once. */
  readonly concurrency: number;
  /**
   * HTTP transfers (stage-in and stage-out) running at once in the whole server, each in a worker
   * thread; more wait round-robin by client. Unset: DEFAULT_MAX_TRANSFERS (staging/transfer-pool.ts).
   */
  readonly maxTransfers?: number | undefined;
}

/**
 * How a job's command runs under bubblewrap (`jobs/sandbox.ts`). Limits are rlimits of the
 * sandboxed command; 0 = no limit.
 */
export interface SandboxConfig {
  /** The bwrap binary (a name found on the job's PATH, or an absolute path on the nodes). */
  readonly bwrap: string;
  /** `sandbox_network`: share the host's network (default: a private namespace with loopback only). */
  readonly network: boolean;
  /** Uid and gid the command runs as when the job script runs as root (never 0). */
  readonly uid: number;
  readonly gid: number;
  /** Seconds of CPU time (RLIMIT_CPU). */
  readonly cpuTime: number;
  /** Bytes of address space (RLIMIT_AS). */
  readonly memory: number;
  /** Processes of the sandbox uid (RLIMIT_NPROC). */
  readonly processes: number;
  /** Bytes of the largest file the command may write (RLIMIT_FSIZE). */
  readonly fileSize: number;
  /** Absolute host paths mounted read-only at the same place (interpreters outside /usr, reference data). */
  readonly roBinds: readonly string[];
}

export interface ServerSection {
  readonly host: string;
  readonly port: number;
  /** Absolute path of a PEM holding key and certificate; undefined = plain HTTP. */
  readonly sslPem: string | undefined;
  /**
   * `ssl_pem = *`: `sslPem` is where magnetar keeps a self-signed certificate it generates on the
   * first start (and reuses afterwards).
   */
  readonly sslGenerate: boolean;
}

/**
 * Server-wide settings. The app-level `staging_directory`, `assign_ids`, `maximum_stream_size`,
 * `job_directory_mode` and `debug` are only the managers' defaults: read them on `ManagerConfig`.
 */
export interface AppSection {
  readonly privateToken: string | undefined;
  /** Absolute, or undefined when `__none__` (no restart recovery). */
  readonly persistenceDirectory: string | undefined;
  /** Largest single upload in bytes (0 = no limit). */
  readonly maxUploadSize: number;
  /** Largest total of uploads into one job in bytes (0 = no limit). */
  readonly maxJobUploadSize: number;
  /** Accept `execute`, `file` and `raw` env entries from clients. */
  readonly allowUnsafeEnv: boolean;
  /** Keep request logs (one line per request). */
  readonly logRequests: boolean;
  /**
   * Absolute paths of the toolbox XML files (`tool_config_files`). Non-empty = public tool
   * service mode: only what the tools' validators allow may run.
   */
  readonly toolConfigFiles: readonly string[];
  /**
   * `allow_unsandboxed_public`: public mode starts even where bubblewrap cannot run, its jobs
   * unsandboxed (a warning at every start).
   */
  readonly allowUnsandboxedPublic: boolean;
  /** Public mode over plain HTTP on a non-loopback host (e.g. behind a TLS-terminating proxy). */
  readonly allowInsecurePublic: boolean;
  /** Submit parameter names a client may send in public mode (e.g. `native_specification`). */
  readonly allowedSubmitParams: readonly string[];
  /** Requests answered 401 per client IP per minute before it is refused with 429; 0 = no limit. */
  readonly rateLimitFailedAuth: number;
  /** `POST /jobs` per client IP per minute in public mode; 0 = no limit. */
  readonly rateLimitSetup: number;
  /**
   * `tool_dependency_dir`: absolute base directory of Galaxy "galaxy_packages"
   * (`<dir>/<name>/<version>/env.sh`) that a job's `dependencies_description` may name.
   * Undefined (the default, unlike upstream's `dependencies`) = dependency resolution is off:
   * requirements are ignored and nothing is sourced.
   */
  readonly toolDependencyDir: string | undefined;
  /** Absolute directory of the file cache (`file_cache_dir`); undefined = no cache (the /cache routes answer 404). */
  readonly fileCacheDir: string | undefined;
  /** Most bytes the file cache holds; least recently used entries go first (0 = no bound). */
  readonly fileCacheSize: number;
  readonly managers: readonly ManagerConfig[];
  /**
   * `allowed_env`: names of env entries a client may send in public mode (plain name/value
   * entries only, values taken literally); any other name refuses the job. Default: none.
   */
  readonly allowedEnv: readonly string[];
  /** Largest submit parameter (raw, as sent) in bytes; 0 = no limit. */
  readonly maxSubmitParamSize: number;
  /** Largest `dependencies_description` in bytes; 0 = no limit. */
  readonly maxDependenciesDescriptionSize: number;
  /** Deepest nesting of arrays and objects in a JSON submit parameter; 0 = no limit. */
  readonly maxSubmitJsonDepth: number;
  /** Most `dynamic_file_sources` (after dropping repeated paths) per job; 0 = no limit. */
  readonly maxDynamicFileSources: number;
  /** Most `submit_extras.touch_outputs` per job; 0 = no limit. */
  readonly maxTouchOutputs: number;
  /** Files and directories uploads may create in one job (each name component counts); 0 = no limit. */
  readonly maxJobFiles: number;
  /** Uploads streaming into one job at once; 0 = no limit. */
  readonly maxConcurrentUploadsPerJob: number;
  /** Largest `command_line` in bytes; 0 = no limit. */
  readonly maxCommandLineSize: number;
  /** Bytes of stdout/stderr and dynamic file sources realized in one status document together; 0 = no limit. */
  readonly maxStatusSize: number;
  /** Bytes of finished jobs' status documents each manager keeps ready; 0 = keep none. */
  readonly statusCacheSize: number;
  /** Unfinished jobs (set up to postprocessing) each manager holds before it refuses setups; 0 = no limit. */
  readonly maxLiveJobs: number;
  /** Of those, the most one client address (behind trusted_proxies: X-Forwarded-For client) may hold; 0 = no limit. */
  readonly maxLiveJobsPerAddress: number;
  /** Seconds a job may stay set up without being submitted before it is cleaned; 0 = never. */
  readonly setupExpiry: number;
  /** Seconds a finished job is kept before it is cleaned; 0 = never. */
  readonly finishedExpiry: number;
  /**
   * `trusted_proxies`: addresses or CIDR blocks of reverse proxies. A request whose connection
   * comes from one of them is keyed (rate limits) by the X-Forwarded-For client; [] = never.
   */
  readonly trustedProxies: readonly string[];
  /** Seconds a request body may send nothing before the connection is dropped; 0 = never. */
  readonly requestBodyIdleTimeout: number;
  /** Seconds a client has to send a request's headers; 0 = no limit. */
  readonly headersTimeout: number;
  /** Open connections at once (0 = no cap). */
  readonly maxConnections: number;
  /** Open connections at once from one address (0 = no cap); trusted proxies are exempt. */
  readonly maxConnectionsPerAddress: number;
  /**
   * `fair_share`: while the event loop is busy and several addresses are active, requests from an
   * address using more than its share are held back briefly (at most ~200 ms; never refused).
   */
  readonly fairShare: boolean;
  /**
   * `allowed_hosts`: Host names answered besides IP addresses, localhost and the bind host (and,
   * bound beyond loopback, this machine's host name); `*.example.org` covers sub-domains, `*` any.
   */
  readonly allowedHosts: readonly string[];
  /** `allowed_origins`: browser `Origin` values accepted (`*`: any); other requests with an Origin are refused. */
  readonly allowedOrigins: readonly string[];
  /** Server-side staging policy and limits. */
  readonly staging: StagingConfig;
  /** Message-queue mode (`message_queue_url = amqp(s)://…`, PROTOCOL §11); undefined = HTTP only. */
  readonly messageQueue: MessageQueueConfig | undefined;
  /** Relay mode (`message_queue_url = http(s)://…`, RELAY.md); undefined = no relay. */
  readonly relay?: RelayConfig;
}

/** `amqp_connect_ssl_*`: TLS towards the broker (amqps). Paths absolute. */
export interface AmqpTlsConfig {
  readonly caCerts: string | undefined;
  readonly certFile: string | undefined;
  readonly keyFile: string | undefined;
  readonly certReqs: 'cert_none' | 'cert_optional' | 'cert_required';
}

/** `amqp_publish_retry*` (upstream's kombu retry policy; intervals in seconds). */
export interface PublishRetryConfig {
  readonly maxRetries: number;
  readonly intervalStart: number;
  readonly intervalStep: number;
  readonly intervalMax: number;
}

/** The AMQP front door's settings (`message_queue_*`, `amqp_*`, `status_outbox_drain_interval`). */
export interface MessageQueueConfig {
  /** The broker URL with its credentials: never log it (see mq/amqp.ts redactUrl). */
  readonly url: string;
  readonly consume: boolean;
  readonly publish: boolean;
  /** `amqp_key_prefix`; undefined = `pulsar_` / `pulsar_<manager>_` (PROTOCOL §11.1). */
  readonly keyPrefix: string | undefined;
  readonly durable: boolean;
  readonly acknowledge: boolean;
  /** Seconds before an unacknowledged status update is published again (with force_noack). */
  readonly ackRepublishTime: number;
  /** Seconds; 0 = none. */
  readonly heartbeat: number;
  readonly prefetch: number;
  readonly maxMessageSize: number;
  /** Seconds a publish waits for the broker's confirm. */
  readonly publishTimeout: number;
  /** undefined = `amqp_publish_retry` off: a failed publish waits for the outbox's next drain. */
  readonly publishRetry: PublishRetryConfig | undefined;
  readonly reconnectMaxDelay: number;
  readonly tls: AmqpTlsConfig;
  /** Seconds between outbox drains (`status_outbox_drain_interval`). */
  readonly outboxDrainInterval: number;
}

/** Relay mode's settings (`message_queue_url = http(s)://…`, `message_queue_*`, `relay_*`). */
export interface RelayConfig {
  /** The relay's origin (`http(s)://host[:port]`, no trailing slash). */
  readonly url: string;
  /** Password login; undefined when a credentials file is used. Never log the password. */
  readonly username: string | undefined;
  readonly password: string | undefined;
  /** `message_queue_credentials_file` (absolute): `{relay_url, refresh_token, issued_at}`, rewritten after every rotation. */
  readonly credentialsFile: string | undefined;
  /** `relay_topic_prefix` ('' = none). */
  readonly topicPrefix: string;
  /** `relay_long_poll_timeout`: whole seconds, 1–60. */
  readonly longPollTimeout: number;
  /** `message_queue_publish_capabilities`: post `pulsar_capabilities` once at start. */
  readonly publishCapabilities: boolean;
  readonly consume: boolean;
  readonly publish: boolean;
  /** Seconds between outbox drains (`status_outbox_drain_interval`). */
  readonly outboxDrainInterval: number;
}

export interface Config {
  /** Absolute path of the file the configuration came from, if any. */
  readonly configFile: string | undefined;
  /** Directory relative paths in the configuration are resolved against. */
  readonly configDir: string;
  readonly server: ServerSection;
  readonly app: AppSection;
}
