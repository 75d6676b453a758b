/**
 * What each option accepts, its default, and the catalogs of options that are known but not (yet)
 * acted on. Values arrive as strings (server.ini, job_managers.ini, environment) or typed (YAML);
 * one zod schema per option set coerces both, so `debug = yes` and `debug: yes` mean the same.
 */
import { isIP } from 'node:net';
import os from 'node:os';
import { z } from 'zod';
import type { AssignIds, ManagerType } from './types.js';

const KiB = 1024;
const MiB = KiB ** 2;
const GiB = KiB ** 3;
const TiB = KiB ** 4;

/**
 * Host with no configuration file at all (`npm start` in a checkout): never exposed by accident.
 * With a file, the schema's default below (Paste's and Pulsar's) applies.
 */
export const DEFAULT_HOST_WITHOUT_FILE = '127.0.0.1';
export const DEFAULT_MANAGER_NAME = '_default_';

/** `ssl_pem` value asking magnetar to generate (once) and keep a self-signed certificate. */
export const SSL_PEM_GENERATE = '*';
/** Where a generated certificate is kept: next to the configuration file. */
export const GENERATED_PEM_NAME = 'magnetar-selfsigned.pem';

/** `persistence_directory` value that turns persistence (and restart recovery) off. */
export const PERSISTENCE_DISABLED = '__none__';

// ------------------------------------------------------------------------------------------------
// Catalogs

export const SUPPORTED_MANAGER_TYPES: readonly ManagerType[] = ['queued_python', 'unqueued', 'queued_drmaa', 'queued_external_drmaa', 'queued_cli', 'queued_condor'];

/** Upstream manager types that magnetar does not run yet: refused by name, not as typos. */
export const UNSUPPORTED_MANAGER_TYPES: readonly string[] = ['queued_drmaa_xsede', 'coexecution', 'queued_pbs'];

/** Upstream app options accepted so existing files load; they have no effect yet (one warning each). */
export const NOT_YET_SUPPORTED_APP_OPTIONS: ReadonlySet<string> = new Set([
  'dependency_resolvers_config_file',
  'dependency_resolution',
  'job_metrics_config_file',
  'object_store_config_file',
  'object_store_config',
  'sentry_dsn',
  'sentry_event_level',
  'ensure_cleanup',
  'config_dir',
  'user_auth',
]);

/** Options under these prefixes that the schema does not name are accepted with a warning (upstream may add more). */
export const NOT_YET_SUPPORTED_APP_PREFIXES: readonly string[] = ['amqp_', 'object_store_', 'relay_', 'conda_'];

/** `amqp_connect_ssl_cert_reqs` values (Python's ssl module names, as upstream's kombu takes them). */
export type CertReqs = 'cert_none' | 'cert_optional' | 'cert_required';

/** Hints for likely mistakes, appended to the "unknown option" error. */
export const APP_OPTION_HINTS: ReadonlyMap<string, string> = new Map([
  ['private_key', 'the option is spelled private_token (LWR documentation used "private_key" in prose)'],
  ['host', 'host belongs in [server:main] of server.ini'],
  ['port', 'port belongs in [server:main] of server.ini'],
  ['ssl_pem', 'ssl_pem belongs in [server:main] of server.ini'],
  ['type', 'manager options go under manager:, managers: or in job_managers.ini'],
  ['num_concurrent_jobs', 'manager options go under manager:, managers: or in job_managers.ini'],
  ['max_concurrent_jobs', 'manager options go under manager:, managers: or in job_managers.ini'],
  ['shelf_filename', 'LWR-era option; use persistence_directory'],
]);

/** Server keys of Paste's http server that make no sense for magnetar: accepted with a warning. */
export const IGNORED_SERVER_OPTIONS: ReadonlySet<string> = new Set([
  'use_threadpool',
  'threadpool_workers',
  'threadpool_kill_thread_limit',
  'threadpool_spawn_if_under',
  'threadpool_max_zombie_threads_before_die',
  'threadpool_hung_check_period',
  'threadpool_hung_thread_limit',
  'threadpool_max_requests',
  'request_queue_size',
  'socket_timeout',
  'protocol_version',
  'daemon_threads',
]);

/** Manager options accepted for compatibility that do nothing yet. */
export const IGNORED_MANAGER_OPTIONS: ReadonlySet<string> = new Set<string>([]);

export const ENV_OPTION_PREFIX = 'env_';
export const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Manager names appear in URLs and (later) queue names. */
export const MANAGER_NAME_RE = /^(?!\.{1,2}$)[A-Za-z0-9_.-]+$/;

// ------------------------------------------------------------------------------------------------
// Value coercions. Each returns the value or an `Invalid` saying what form was expected.

export class Invalid {
  constructor(readonly expected: string) {}
}

type Coerce<T> = (value: unknown) => T | Invalid;

function shown(value: unknown): string {
  const text = typeof value === 'string' ? JSON.stringify(value) : String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function invalid(expected: string, value: unknown): Invalid {
  return new Invalid(`expected ${expected}, got ${shown(value)}`);
}

/** A zod schema for one option: null/absent → undefined, otherwise `coerce` or an issue. */
export function option<T>(coerce: Coerce<T>) {
  return z
    .unknown()
    .transform((value, ctx): T | undefined => {
      if (value === undefined || value === null) return undefined;
      const out = coerce(value);
      if (out instanceof Invalid) {
        ctx.addIssue({ code: 'custom', message: out.expected });
        return z.NEVER;
      }
      return out;
    })
    .optional();
}

/** `option` with a default: null/absent, or a value `coerce` reads as unset (like `''`), → `fallback`. */
export function optionOr<T>(coerce: Coerce<T | undefined>, fallback: T) {
  return option(coerce).transform((value): T => value ?? fallback);
}

const TRUE_STRINGS = new Set(['true', 'yes', 'on', '1']);
const FALSE_STRINGS = new Set(['false', 'no', 'off', '0']);

export const asBoolean: Coerce<boolean> = (value) => {
  if (typeof value === 'boolean') return value;
  if (typeof value === 'string') {
    const word = value.trim().toLowerCase();
    if (TRUE_STRINGS.has(word)) return true;
    if (FALSE_STRINGS.has(word)) return false;
  }
  return invalid('true or false (also yes/no, on/off, 1/0)', value);
};

/** A string; `''` means unset. Numbers are refused so `private_token: 0123` (octal 83!) cannot slip by. */
export const asOptionalText: Coerce<string | undefined> = (value) => {
  if (typeof value !== 'string') return invalid('a string (quote it in YAML)', value);
  return value === '' ? undefined : value;
};

/** A host name or address to listen on; `[::1]` is accepted and unbracketed. */
export const asHost: Coerce<string> = (value) => {
  const expected = 'a host name or IP address like localhost, 0.0.0.0 or ::1';
  if (typeof value !== 'string') return invalid(expected, value);
  const host = value.trim().replace(/^\[(.*)\]$/, '$1');
  return /^[A-Za-z0-9._:%-]+$/.test(host) ? host : invalid(expected, value);
};

/** A path, or `''` for "not set". */
export const asOptionalPath: Coerce<string | undefined> = (value) => {
  if (typeof value !== 'string') return invalid('a path (or empty for none)', value);
  if (value.trim() === '') return undefined;
  if (value.includes('\0')) return invalid('a path without NUL characters', value);
  return value;
};

export const asPath: Coerce<string> = (value) => {
  if (typeof value !== 'string' || value.trim() === '') return invalid('a non-empty path', value);
  if (value.includes('\0')) return invalid('a path without NUL characters', value);
  return value;
};

function integerFrom(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : undefined;
  if (typeof value === 'string' && /^\s*\+?\d+\s*$/.test(value)) {
    const parsed = Number(value.trim());
    return Number.isSafeInteger(parsed) ? parsed : undefined;
  }
  return undefined;
}

export function asInteger(min: number, max: number, expected: string): Coerce<number> {
  return (value) => {
    const parsed = integerFrom(value);
    return parsed !== undefined && parsed >= min && parsed <= max ? parsed : invalid(expected, value);
  };
}

export const asPort = asInteger(1, 65535, 'an integer port from 1 to 65535');
export const asCount = asInteger(0, Number.MAX_SAFE_INTEGER, 'a whole number >= 0');

const SIZE_UNITS: Readonly<Record<string, number>> = { '': 1, k: KiB, m: KiB ** 2, g: GiB, t: TiB };

/** Bytes: `1048576`, or with a binary suffix `512K`, `10M`, `100G`, `1T`. */
export const asByteSize: Coerce<number> = (value) => {
  const expected = 'a byte count like 1048576, 512K, 10M, 100G or 1T (0 = no limit)';
  const plain = integerFrom(value);
  if (plain !== undefined) return plain;
  if (typeof value !== 'string') return invalid(expected, value);
  const match = /^\s*(\d+)\s*([kmgt])\s*$/i.exec(value);
  const unit = SIZE_UNITS[(match?.[2] ?? '').toLowerCase()];
  if (match === null || unit === undefined) return invalid(expected, value);
  const bytes = Number(match[1]) * unit;
  return Number.isSafeInteger(bytes) ? bytes : invalid(expected, value);
};

/**
 * `0750`, `750` or `0o750` as a string. A YAML integer is taken as the mode number itself, which is
 * right for YAML 1.1 octal `0750` (= 488). Unquoted `750` is decimal 750 (> 0o777) and refused; the
 * loader warns about every YAML integer so a decimal `500` (= 0o764) is noticed too.
 */
export const asFileMode: Coerce<number> = (value) => {
  const expected = "an octal file mode like '0750'";
  if (typeof value === 'number') {
    return Number.isInteger(value) && value >= 0 && value <= 0o777
      ? value
      : invalid(`${expected} (quote it in YAML: unquoted 750 is the decimal number 750)`, value);
  }
  if (typeof value !== 'string') return invalid(expected, value);
  const match = /^\s*(?:0o?)?([0-7]{1,4})\s*$/i.exec(value);
  if (match === null) return invalid(expected, value);
  return parseInt(match[1] ?? '', 8);
};

/**
 * A comma-separated list (ini, environment) or a YAML list of non-empty strings; blanks around the
 * commas are dropped. `''` is the empty list.
 */
export function asList(expectedItem: string, item: RegExp): Coerce<readonly string[]> {
  const expected = `a comma-separated list (or a YAML list) of ${expectedItem}`;
  return (value) => {
    let items: unknown[];
    if (typeof value === 'string') items = value.split(',').map((part) => part.trim()).filter((part) => part !== '');
    else if (Array.isArray(value)) items = value.map((part: unknown) => (typeof part === 'string' ? part.trim() : part));
    else return invalid(expected, value);
    for (const entry of items) {
      if (typeof entry !== 'string' || !item.test(entry)) return invalid(expected, entry);
    }
    return items as string[];
  };
}

export const asPathList = asList('paths', /^[^\0]+$/);
/** Absolute paths without newlines (they go into the job script, quoted). */
export const asAbsolutePathList = asList('absolute paths', /^\/[^\0\n\r]*$/);
/** The sandbox's uid or gid: never 0 (root), which would give the command back what the sandbox takes. */
export const asSandboxId = asInteger(1, 2 ** 32 - 2, 'a uid or gid from 1 to 4294967294 (not root)');
/** Submit parameter names as Galaxy's destination params spell them (`native_specification`). */
export const asParamNameList = asList('parameter names like native_specification', /^[A-Za-z_][A-Za-z0-9_]*$/);
export const asEnvNameList = asList('environment variable names like OMP_NUM_THREADS', /^[A-Za-z_][A-Za-z0-9_]*$/);

export const asAssignIds: Coerce<AssignIds> = (value) =>
  value === 'galaxy' || value === 'uuid' ? value : invalid('galaxy or uuid', value);

/** `*` means one worker per CPU (`os.availableParallelism()`). */
export const asConcurrency: Coerce<number> = (value) => {
  if (value === '*' || (typeof value === 'string' && value.trim() === '*')) return os.availableParallelism();
  const parsed = integerFrom(value);
  return parsed !== undefined && parsed >= 1 ? parsed : invalid('a whole number >= 1, or * for one per CPU', value);
};

export const asPositiveNumber: Coerce<number> = (value) => {
  const expected = 'a number of seconds > 0';
  let parsed: number | undefined;
  if (typeof value === 'number') parsed = value;
  else if (typeof value === 'string' && /^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*$/.test(value)) parsed = Number(value);
  return parsed !== undefined && Number.isFinite(parsed) && parsed > 0 ? parsed : invalid(expected, value);
};

/** Seconds, fractions allowed; 0 = never (a timeout: off). */
export const asSeconds: Coerce<number> = (value) => {
  const expected = 'a number of seconds >= 0 (0 = never)';
  let parsed: number | undefined;
  if (typeof value === 'number') parsed = value;
  else if (typeof value === 'string' && /^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*$/.test(value)) parsed = Number(value);
  return parsed !== undefined && Number.isFinite(parsed) && parsed >= 0 ? parsed : invalid(expected, value);
};

export const asMapping: Coerce<Readonly<Record<string, unknown>>> = (value) =>
  typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : invalid('a mapping (YAML dictionary)', value);

export const asManagerType: Coerce<ManagerType> = (value) => {
  if (typeof value === 'string' && (SUPPORTED_MANAGER_TYPES as readonly string[]).includes(value)) return value as ManagerType;
  if (typeof value === 'string' && UNSUPPORTED_MANAGER_TYPES.includes(value)) {
    return new Invalid(`manager type ${value} is not yet supported by magnetar (supported: ${SUPPORTED_MANAGER_TYPES.join(', ')})`);
  }
  return invalid(`a manager type: ${SUPPORTED_MANAGER_TYPES.join(' or ')}`, value);
};

/** `tmp_dir`: unset or true → per-job `<jobdir>/tmp`; any other string is shell, used verbatim. */
export const asTmpDir: Coerce<string | undefined> = (value) => {
  if (value === true) return undefined;
  if (typeof value === 'string') {
    const word = value.trim().toLowerCase();
    if (word === '' || word === 'true') return undefined;
    if (word !== 'false') return value;
  }
  return invalid('true (per-job tmp directory) or a directory / shell expression', value);
};

/** IP addresses or CIDR blocks (`10.0.0.0/8`, `::1`, `fd00::/8`), comma-separated or a YAML list. */
export const asAddressList: Coerce<readonly string[]> = (value) => {
  const list = asList('IP addresses or CIDR blocks like 10.0.0.0/8', /^[0-9A-Fa-f:.]+(?:\/\d{1,3})?$/)(value);
  if (list instanceof Invalid) return list;
  for (const entry of list) {
    const [address = '', prefix] = entry.split('/');
    const family = isIP(address);
    const bits = family === 4 ? 32 : 128;
    if (family === 0 || (prefix !== undefined && Number(prefix) > bits)) return invalid('IP addresses or CIDR blocks like 10.0.0.0/8', entry);
  }
  return list;
};

/** A retry count as upstream reads it: -1 = never retry, 0 = retry forever, N = N retries. */
export const asRetryCount: Coerce<number> = (value) => {
  const expected = 'a whole number >= -1 (-1 = no retry, 0 = retry forever)';
  if (value === -1 || (typeof value === 'string' && value.trim() === '-1')) return -1;
  const parsed = integerFrom(value);
  return parsed !== undefined ? parsed : invalid(expected, value);
};

/**
 * Files endpoints server-side staging may fetch from: `http(s)://host[:port][/path/prefix]`
 * (no query, no user name, no fragment).
 */
export const asEndpointList = asList('URLs like https://galaxy.example.org/api/jobs/', /^https?:\/\/[^\s/?#@]+(?:\/[^\s?#]*)?$/i);

/** `cert_required` (also `CERT_REQUIRED`, `required`, `2`), `cert_optional`, `cert_none`. */
/** Relay topic names are `[A-Za-z0-9_-]{1,255}`: the prefix may only hold those characters. */
export const asRelayTopicPrefix: Coerce<string> = (value) =>
  typeof value === 'string' && /^[A-Za-z0-9_-]{0,200}$/.test(value.trim()) ? value.trim() : invalid('letters, digits, _ and - (at most 200; relay topic names allow nothing else)', value);

export const asCertReqs: Coerce<CertReqs> = (value) => {
  const word = typeof value === 'number' ? String(value) : typeof value === 'string' ? value.trim().toLowerCase().replace(/^(?:ssl\.)?cert_/, '') : '';
  if (word === 'required' || word === '2') return 'cert_required';
  if (word === 'optional' || word === '1') return 'cert_optional';
  if (word === 'none' || word === '0') return 'cert_none';
  return invalid('cert_required, cert_optional or cert_none', value);
};

export const asEnvValue: Coerce<string> = (value) => {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return invalid('a string or number (quote booleans in YAML)', value);
};

// ------------------------------------------------------------------------------------------------
// Option sets

export const serverOptionsSchema = z
  .object({
    // Paste's and Pulsar's default; with no file at all, DEFAULT_HOST_WITHOUT_FILE.
    host: optionOr(asHost, 'localhost'),
    port: optionOr(asPort, 8913),
    ssl_pem: option(asOptionalText),
  })
  .strict();

export const appOptionsSchema = z
  .object({
    private_token: option(asOptionalText),
    // Both relative to the process working directory, as upstream.
    staging_directory: optionOr(asPath, 'files/staging'),
    persistence_directory: optionOr(asPath, 'files/persisted_data'),
    // staging_directory, these four and galaxy_* only matter as the managers' defaults.
    assign_ids: optionOr(asAssignIds, 'galaxy'),
    job_directory_mode: option(asFileMode),
    maximum_stream_size: optionOr(asCount, 1024 * 1024),
    debug: optionOr(asBoolean, false),
    max_upload_size: optionOr(asByteSize, 100 * GiB),
    max_job_upload_size: optionOr(asByteSize, 1 * TiB),
    allow_unsafe_env: optionOr(asBoolean, true),
    log_requests: optionOr(asBoolean, true),
    // Aliases of each other, so neither has a default: none given = no toolbox.
    tool_config_files: option(asPathList),
    tool_config_file: option(asPathList),
    allow_insecure_public: optionOr(asBoolean, false),
    // The job sandbox (jobs/sandbox.ts): defaults of every manager. sandbox unset = on in public mode only.
    sandbox: option(asBoolean),
    sandbox_bwrap: optionOr(asPath, 'bwrap'),
    sandbox_network: optionOr(asBoolean, false),
    sandbox_uid: optionOr(asSandboxId, 65534),
    sandbox_gid: optionOr(asSandboxId, 65534),
    sandbox_cpu_time: optionOr(asCount, 0),
    sandbox_memory: optionOr(asByteSize, 0),
    sandbox_processes: optionOr(asCount, 4096),
    sandbox_file_size: optionOr(asByteSize, 0),
    sandbox_ro_binds: optionOr(asAbsolutePathList, []),
    allow_unsandboxed_public: optionOr(asBoolean, false),
    allowed_submit_params: optionOr(asParamNameList, []),
    rate_limit_failed_auth: optionOr(asCount, 20),
    // A busy Galaxy sets jobs up from one address, and its client does not retry a 429.
    rate_limit_setup: optionOr(asCount, 1000),
    tool_dependency_dir: option(asOptionalPath),
    // The file cache (/cache routes, cache_token uploads): off unless a directory is given.
    file_cache_dir: option(asOptionalPath),
    file_cache_size: optionOr(asByteSize, 10 * GiB),
    galaxy_home: option(asOptionalText),
    galaxy_virtual_env: option(asOptionalText),
    galaxy_config_file: option(asOptionalText),
    galaxy_dataset_files_path: option(asOptionalText),
    galaxy_datatypes_config_file: option(asOptionalText),
    job_managers_config: option(asPath),
    managers: option(asMapping),
    manager: option(asMapping),
    allowed_env: optionOr(asEnvNameList, []),
    // Bounds on what one client request may cost (0 = no limit).
    max_submit_param_size: optionOr(asByteSize, MiB),
    max_dependencies_description_size: optionOr(asByteSize, 256 * KiB),
    max_submit_json_depth: optionOr(asCount, 64),
    max_dynamic_file_sources: optionOr(asCount, 100),
    max_touch_outputs: optionOr(asCount, 1000),
    max_job_files: optionOr(asCount, 100_000),
    max_concurrent_uploads_per_job: optionOr(asCount, 32),
    // Galaxy's command lines for tools over large collections run to megabytes.
    max_command_line_size: optionOr(asByteSize, 8 * MiB),
    max_status_size: optionOr(asByteSize, 16 * MiB),
    status_cache_size: optionOr(asByteSize, 64 * MiB),
    max_live_jobs: optionOr(asCount, 10_000),
    max_live_jobs_per_address: optionOr(asCount, 5_000),
    setup_expiry: optionOr(asSeconds, 24 * 3600),
    finished_expiry: optionOr(asSeconds, 7 * 24 * 3600),
    // Proxies whose X-Forwarded-For names the client for the rate limits; none by default.
    trusted_proxies: optionOr(asAddressList, []),
    // A request body that sends nothing for this long is dropped (and its upload discarded).
    request_body_idle_timeout: optionOr(asSeconds, 60),
    // Time a client has to send a request's headers (a Galaxy submit carries its payload there).
    headers_timeout: optionOr(asSeconds, 60),
    // Open connections at once, in all and from one address (0 = no cap).
    max_connections: optionOr(asCount, 1024),
    max_connections_per_address: optionOr(asCount, 256),
    // While the event loop is busy, requests from an address over its share wait a little (web/fair-share.ts).
    fair_share: optionOr(asBoolean, true),
    // Host names (beyond localhost, IP addresses and the bind host) and browser origins answered.
    allowed_hosts: optionOr(asList('host names like pulsar.example.org, *.example.org or *', /^(?:\*|(?:\*\.)?[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?)$/), []),
    allowed_origins: optionOr(asList('origins like https://galaxy.example.org, or *', /^(?:\*|null|https?:\/\/[^\s/]+)$/), []),
    // Server-side staging (staging/): where a job's remote_transfer URLs and remote_copy sources may point.
    // Empty lists: anywhere outside public mode (upstream's behaviour), nowhere in public mode.
    staging_allowed_endpoints: optionOr(asEndpointList, []),
    staging_copy_roots: optionOr(asAbsolutePathList, []),
    // Unset: allowed outside public mode, refused in public mode (unless the endpoint is listed by address).
    staging_private_addresses: option(asBoolean),
    staging_concurrency: optionOr(asInteger(1, 1024, 'a whole number from 1 to 1024'), 4),
    // Server-wide: HTTP transfers running at once (each holds a worker thread); the rest wait round-robin by client.
    staging_max_transfers: optionOr(asInteger(1, 256, 'a whole number from 1 to 256'), 16),
    // Message-queue mode (mq/, PROTOCOL §11). The URL carries credentials: never echoed in messages.
    message_queue_url: option(asOptionalText),
    message_queue_consume: optionOr(asBoolean, true),
    message_queue_publish: optionOr(asBoolean, true),
    amqp_key_prefix: option(asOptionalText),
    // Upstream's kombu drain wait; an event-driven client has none (accepted, no effect).
    amqp_consumer_timeout: option(asSeconds),
    // Seconds a status update may wait for the broker's confirm before it counts as not published.
    amqp_publish_timeout: optionOr(asPositiveNumber, 30),
    amqp_acknowledge: optionOr(asBoolean, false),
    amqp_ack_republish_time: optionOr(asPositiveNumber, 30),
    // Upstream's code declares durable queues (its docs say otherwise): durable it is.
    amqp_durable: optionOr(asBoolean, true),
    amqp_connect_ssl_ca_certs: option(asOptionalPath),
    amqp_connect_ssl_keyfile: option(asOptionalPath),
    amqp_connect_ssl_certfile: option(asOptionalPath),
    amqp_connect_ssl_cert_reqs: optionOr(asCertReqs, 'cert_required'),
    amqp_publish_retry: optionOr(asBoolean, false),
    amqp_publish_retry_max_retries: optionOr(asCount, 5),
    amqp_publish_retry_interval_start: optionOr(asSeconds, 1),
    amqp_publish_retry_interval_step: optionOr(asSeconds, 2),
    amqp_publish_retry_interval_max: optionOr(asSeconds, 30),
    // Upstream fixes 580 s; firewalls drop connections idle for less. 0 = no heartbeat.
    amqp_heartbeat: optionOr(asCount, 60),
    // Messages one consumer holds unacknowledged at once (each may be a large setup).
    amqp_prefetch: optionOr(asInteger(1, 10_000, 'a whole number from 1 to 10000'), 8),
    // Largest message accepted from the broker; larger ones are rejected (dead-lettered where a DLX is set).
    amqp_max_message_size: optionOr(asByteSize, 32 * MiB),
    // Most seconds between reconnection attempts (the wait doubles from 1 s up to this).
    amqp_reconnect_max_delay: optionOr(asPositiveNumber, 30),
    status_outbox_drain_interval: optionOr(asPositiveNumber, 5),
    // Relay mode (message_queue_url = http(s)://…, mq/relay.ts; RELAY.md). Secrets: never echoed.
    message_queue_username: option(asOptionalText),
    message_queue_password: option(asOptionalText),
    message_queue_credentials_file: option(asOptionalPath),
    message_queue_publish_capabilities: optionOr(asBoolean, true),
    relay_topic_prefix: optionOr(asRelayTopicPrefix, ''),
    // The relay refuses anything but whole seconds from 1 to 60 (422 on every poll).
    relay_long_poll_timeout: optionOr(asInteger(1, 60, 'whole seconds from 1 to 60'), 30),
  })
  .strict();

export const managerOptionsSchema = z
  .object({
    type: optionOr(asManagerType, 'queued_python'),
    num_concurrent_jobs: optionOr(asConcurrency, 1),
    // An alias of num_concurrent_jobs: giving both is an error, so this one, when set, wins.
    max_concurrent_jobs: option(asConcurrency),
    // Unset: the app's value.
    staging_directory: option(asPath),
    assign_ids: option(asAssignIds),
    job_directory_mode: option(asFileMode),
    maximum_stream_size: option(asCount),
    debug: option(asBoolean),
    tmp_dir: option(asTmpDir),
    galaxy_home: option(asOptionalText),
    galaxy_virtual_env: option(asOptionalText),
    galaxy_config_file: option(asOptionalText),
    galaxy_dataset_files_path: option(asOptionalText),
    galaxy_datatypes_config_file: option(asOptionalText),
    min_polling_interval: optionOr(asPositiveNumber, 0.5),
    /** For scheduler job names; `$job_id` is replaced. */
    job_name_template: optionOr(asOptionalText, 'pulsar_$job_id'),
    // Server-side stage-in retries (upstream's names and defaults, PROTOCOL §6.1). Intervals in seconds.
    preprocess_action_max_retries: optionOr(asRetryCount, -1),
    preprocess_action_interval_start: optionOr(asSeconds, 2),
    preprocess_action_interval_step: optionOr(asSeconds, 2),
    preprocess_action_interval_max: optionOr(asSeconds, 30),
    // Server-side stage-out retries (same names and defaults as upstream).
    postprocess_action_max_retries: optionOr(asRetryCount, -1),
    postprocess_action_interval_start: optionOr(asSeconds, 2),
    postprocess_action_interval_step: optionOr(asSeconds, 2),
    postprocess_action_interval_max: optionOr(asSeconds, 30),
    // Unset: the app's value (sandbox unset there too: on in public mode only).
    sandbox: option(asBoolean),
    sandbox_bwrap: option(asPath),
    sandbox_network: option(asBoolean),
    sandbox_uid: option(asSandboxId),
    sandbox_gid: option(asSandboxId),
    sandbox_cpu_time: option(asCount),
    sandbox_memory: option(asByteSize),
    sandbox_processes: option(asCount),
    sandbox_file_size: option(asByteSize),
    sandbox_ro_binds: option(asAbsolutePathList),
  })
  .strict();

/** Options of upstream manager types magnetar does not run: say so instead of "unknown". */
export const FOREIGN_MANAGER_OPTION_RE =
  /^(?:native_specification|submit_.+|job_plugin|shell_.+|job_.+|production|chown_working_directory_script|drmaa_kill_script|drmaa_launch_script|monitor|gateway_.+|user_map|remote_.+)$/;

export const SERVER_OPTION_NAMES: ReadonlySet<string> = new Set(Object.keys(serverOptionsSchema.shape));
export const APP_OPTION_NAMES: ReadonlySet<string> = new Set(Object.keys(appOptionsSchema.shape));
export const MANAGER_OPTION_NAMES: ReadonlySet<string> = new Set(Object.keys(managerOptionsSchema.shape));

export type ServerOptions = z.output<typeof serverOptionsSchema>;
export type AppOptions = z.output<typeof appOptionsSchema>;
export type ManagerOptions = z.output<typeof managerOptionsSchema>;
