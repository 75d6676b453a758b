/**
 * Reads the configuration once at startup: server.ini (or an app YAML file directly), the app YAML
 * it names, job_managers.ini, then environment overrides. Every value is validated, every path made
 * absolute, and the result deep-frozen. A bad file fails fast with a ConfigError naming the file,
 * the key and the expected form. Options that are accepted but have no effect yet come back as
 * `warnings` (one line each) for the caller to log.
 */
import { constants as fsConstants } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import { BlockList, isIP } from 'node:net';
import path from 'node:path';
import { CLUSTER_MANAGER_TYPES } from './types.js';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';
import { interpolatedValue, parseIni, type IniDocument, type IniSection } from './ini-file.js';
import {
  APP_OPTION_HINTS,
  APP_OPTION_NAMES,
  DEFAULT_HOST_WITHOUT_FILE,
  DEFAULT_MANAGER_NAME,
  ENV_NAME_RE,
  ENV_OPTION_PREFIX,
  FOREIGN_MANAGER_OPTION_RE,
  GENERATED_PEM_NAME,
  IGNORED_MANAGER_OPTIONS,
  IGNORED_SERVER_OPTIONS,
  Invalid,
  MANAGER_NAME_RE,
  MANAGER_OPTION_NAMES,
  NOT_YET_SUPPORTED_APP_OPTIONS,
  NOT_YET_SUPPORTED_APP_PREFIXES,
  PERSISTENCE_DISABLED,
  SERVER_OPTION_NAMES,
  SSL_PEM_GENERATE,
  appOptionsSchema,
  asEnvValue,
  managerOptionsSchema,
  serverOptionsSchema,
  type AppOptions,
  type ServerOptions,
} from './schema.js';
import type { AppSection, Config, ManagerConfig, ServerSection } from './types.js';
import { MAX_CONFIG_BYTES, parseYamlOptions } from './yaml-file.js';

export interface LoadOptions {
  /** server.ini-style file, or an app options file ending in `.yml`/`.yaml`. Relative to `cwd`. */
  configFile?: string | undefined;
  /** Process working directory: base of `staging_directory` & co. Default `process.cwd()`. */
  cwd?: string | undefined;
  /** Source of `PULSAR_CONFIG_*` / `MAGNETAR_CONFIG_*` overrides and `GALAXY_HOME`. Default `process.env`. */
  env?: Record<string, string | undefined> | undefined;
}

export interface LoadResult {
  config: Config;
  /** One line each, `<file>: <key> ...`, for options accepted but not acted on. */
  warnings: string[];
}

/** Where a value came from, for error messages: file label and the key as the admin wrote it. */
interface Setting {
  readonly value: unknown;
  readonly file: string;
  readonly key: string;
}

interface Context {
  readonly cwd: string;
  readonly env: Record<string, string | undefined>;
  readonly warnings: string[];
}

const ENVIRONMENT = 'environment';
const OVERRIDE_PREFIXES = ['PULSAR_CONFIG_OVERRIDE_', 'MAGNETAR_CONFIG_OVERRIDE_'] as const; // later wins
const DEFAULT_PREFIXES = ['MAGNETAR_CONFIG_', 'PULSAR_CONFIG_'] as const; // earlier wins
/** Environment names under the prefixes that are not app options. */
const RESERVED_ENV_KEYS: ReadonlySet<string> = new Set(['dir', 'file']);
const APP_SECTIONS = ['app:main', 'application:main'] as const;
const SERVER_SECTION = 'server:main';
const MANAGER_SECTION_PREFIX = 'manager:';
const DEFAULT_APP_YAML = 'app.yml';

export async function loadConfig(opts: LoadOptions = {}): Promise<LoadResult> {
  const cwd = path.resolve(opts.cwd ?? process.cwd());
  const ctx: Context = { cwd, env: opts.env ?? process.env, warnings: [] };
  const settings = new Map<string, Setting>();
  let configFile: string | undefined;
  let configDir = cwd;
  let server: ServerSection = { ...plainServer(serverOptionsSchema.parse({})), host: DEFAULT_HOST_WITHOUT_FILE };

  if (opts.configFile !== undefined) {
    configFile = path.resolve(cwd, opts.configFile);
    configDir = path.dirname(configFile);
    if (/\.ya?ml$/i.test(configFile)) {
      server = plainServer(serverOptionsSchema.parse({}));
      await readAppYaml(configFile, settings, ctx);
    } else {
      server = await readServerIni(configFile, settings, ctx);
    }
  }
  applyEnvironment(settings, ctx);
  const app = await buildApp(settings, configDir, ctx);
  const serverFile = configFile === undefined ? ENVIRONMENT : label(configFile, ctx);

  if (app.toolConfigFiles.length > 0 && server.sslPem === undefined && !isLoopback(server.host)) {
    // The private token and every launch parameter travel in the URL (PROTOCOL §14 item 20).
    if (!app.allowInsecurePublic) {
      throw new ConfigError(
        serverFile,
        `[${SERVER_SECTION}] host`,
        `public tool service mode (tool_config_files) over plain HTTP on ${server.host}, which is reachable from other machines, would send the private token and every job in clear text; set ssl_pem (a PEM file, or * to generate a self-signed certificate), listen on a loopback host, or set allow_insecure_public = true if a TLS-terminating proxy is in front`,
      );
    }
    ctx.warnings.push(`${serverFile}: public tool service mode over plain HTTP on ${server.host} (allow_insecure_public is set): make sure a TLS-terminating proxy is in front`);
  }
  if (!isLoopback(server.host) && app.privateToken === undefined) {
    ctx.warnings.push(
      `${serverFile}: host ${server.host} is reachable from other machines and no private_token is set: anyone who can connect can run jobs`,
    );
  }
  const config: Config = { configFile, configDir, server, app };
  return { config: deepFreeze(config), warnings: ctx.warnings };
}

/**
 * The configuration with no file and no environment (127.0.0.1:8913, one queued_python manager):
 * the loader's own answer, so the defaults stay stated once, in the schema.
 */
export async function defaultConfig(cwd: string): Promise<Config> {
  return (await loadConfig({ cwd, env: {} })).config;
}

/** One line for the startup log, e.g. `https://0.0.0.0:8913 (config /etc/magnetar/server.ini; private_token set); managers: _default_ (queued_python, 4 workers)`. */
export function describeConfig(config: Config): string {
  const { host, port, sslPem } = config.server;
  const url = `${sslPem === undefined ? 'http' : 'https'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const source = config.configFile === undefined ? 'no config file' : `config ${config.configFile}`;
  const auth = config.app.privateToken === undefined ? 'no private_token' : 'private_token set';
  const toolboxes = config.app.toolConfigFiles.length;
  const mode = toolboxes === 0 ? '' : `; public tool service, ${toolboxes} toolbox file${toolboxes === 1 ? '' : 's'}`;
  const managers = config.app.managers
    .map((m) =>
      m.type === 'queued_python'
        ? `${m.name} (${m.type}, ${m.numConcurrentJobs} worker${m.numConcurrentJobs === 1 ? '' : 's'})`
        : `${m.name} (${m.type})`,
    )
    .join(', ');
  return `${url} (${source}; ${auth}${mode}); managers: ${managers}`;
}

// ------------------------------------------------------------------------------------------------
// Files

/** How a file is named in messages: relative to the working directory when inside it. */
function label(file: string, ctx: Context): string {
  const relative = path.relative(ctx.cwd, file);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file;
}

async function readConfigText(file: string, ctx: Context, referrer?: Setting): Promise<string> {
  const fail = (message: string, cause?: unknown): ConfigError =>
    referrer === undefined
      ? new ConfigError(label(file, ctx), undefined, message, { cause })
      : new ConfigError(referrer.file, referrer.key, `${message}: ${file}`, { cause });
  let size: number;
  try {
    const info = await stat(file);
    if (!info.isFile()) throw fail('not a regular file');
    size = info.size;
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    throw fail(describeIoError(error), error);
  }
  if (size > MAX_CONFIG_BYTES) throw fail(`file is larger than ${MAX_CONFIG_BYTES} bytes`);
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    throw fail(describeIoError(error), error);
  }
}

function describeIoError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return 'file not found';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  return `cannot read file (${code ?? String(error)})`;
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

function iniValues(
  doc: IniDocument,
  section: IniSection,
  file: string,
  fileLabel: string,
): Array<[key: string, value: string]> {
  const extra = { here: path.dirname(file), __file__: file };
  return [...section.entries.keys()].map((key) => [key, interpolatedValue(doc, section, key, extra, fileLabel)]);
}

async function readServerIni(file: string, settings: Map<string, Setting>, ctx: Context): Promise<ServerSection> {
  const fileLabel = label(file, ctx);
  const doc = parseIni(await readConfigText(file, ctx), fileLabel);
  const here = path.dirname(file);
  const appSections = APP_SECTIONS.map((name) => doc.sections.get(name)).filter((s) => s !== undefined);
  const serverSection = doc.sections.get(SERVER_SECTION);
  if (appSections.length > 1) {
    throw new ConfigError(fileLabel, '[application:main]', 'use either [app:main] or [application:main], not both');
  }
  if (serverSection === undefined && appSections.length === 0) {
    throw new ConfigError(fileLabel, undefined, 'has neither a [server:main] nor an [app:main] section (is this a server.ini?)');
  }

  const server = serverSection === undefined ? serverOptionsSchema.parse({}) : readServerSection(doc, serverSection, file, fileLabel, ctx);
  let sslPem: string | undefined;
  let sslGenerate = false;
  if (server.ssl_pem !== undefined) {
    const where: Setting = { value: server.ssl_pem, file: fileLabel, key: `[${SERVER_SECTION}] ssl_pem` };
    if (server.ssl_pem.trim() === SSL_PEM_GENERATE) {
      // Generated (or reused) at startup by web/tls.ts.
      sslPem = path.join(here, GENERATED_PEM_NAME);
      sslGenerate = true;
    } else {
      // A configured certificate that cannot be read must stop the server, never fall back to HTTP.
      sslPem = path.resolve(here, server.ssl_pem);
      await readConfigText(sslPem, ctx, where);
    }
  }

  let appConfig: Setting | undefined;
  const appSection = appSections[0];
  if (appSection !== undefined) {
    const name = `[${appSection.name}]`;
    for (const [key, value] of iniValues(doc, appSection, file, fileLabel)) {
      if (key === 'paste.app_factory') continue;
      if (key === 'use') {
        if (value.trim().startsWith('config:')) {
          throw new ConfigError(fileLabel, `${name} use`, 'loading the app from another file (use = config:...) is not supported; copy its options here');
        }
        continue;
      }
      const setting: Setting = { value, file: fileLabel, key: `${name} ${key}` };
      if (key === 'app_config') appConfig = setting;
      else settings.set(key, setting);
    }
  }

  if (appConfig !== undefined) {
    await readAppYaml(path.resolve(here, String(appConfig.value)), settings, ctx, appConfig);
  } else if (await exists(path.join(here, DEFAULT_APP_YAML))) {
    // As upstream: with no app_config, an app.yml next to server.ini is read.
    await readAppYaml(path.join(here, DEFAULT_APP_YAML), settings, ctx);
  }

  return { host: server.host, port: server.port, sslPem, sslGenerate };
}

/** The server section when no server.ini says anything about TLS. */
function plainServer(options: ServerOptions): ServerSection {
  return { host: options.host, port: options.port, sslPem: undefined, sslGenerate: false };
}

function readServerSection(
  doc: IniDocument,
  section: IniSection,
  file: string,
  fileLabel: string,
  ctx: Context,
): ServerOptions {
  const values: Record<string, unknown> = {};
  const where = new Map<string, Setting>();
  for (const [key, value] of iniValues(doc, section, file, fileLabel)) {
    const setting: Setting = { value, file: fileLabel, key: `[${SERVER_SECTION}] ${key}` };
    if (key === 'use') continue;
    if (IGNORED_SERVER_OPTIONS.has(key)) {
      ctx.warnings.push(`${setting.file}: ${setting.key} is a Paste http server option and is ignored`);
      continue;
    }
    if (!SERVER_OPTION_NAMES.has(key)) {
      throw new ConfigError(setting.file, setting.key, `unknown option (known: ${[...SERVER_OPTION_NAMES].join(', ')}, use)`);
    }
    values[key] = value;
    where.set(key, setting);
  }
  return parseOrThrow(serverOptionsSchema, values, where);
}

async function readAppYaml(file: string, settings: Map<string, Setting>, ctx: Context, referrer?: Setting): Promise<void> {
  const fileLabel = label(file, ctx);
  const options = parseYamlOptions(await readConfigText(file, ctx, referrer), fileLabel);
  for (const [key, value] of Object.entries(options)) {
    if (key === 'app_config') {
      throw new ConfigError(fileLabel, key, 'app_config is only read from [app:main] in server.ini');
    }
    // YAML values override [app:main] values.
    settings.set(key, { value, file: fileLabel, key });
  }
}

// ------------------------------------------------------------------------------------------------
// Environment (PROTOCOL §10.1)

function applyEnvironment(settings: Map<string, Setting>, ctx: Context): void {
  const names = Object.keys(ctx.env).sort();
  const keyFor = (name: string, prefix: string): string | undefined => {
    if (!name.startsWith(prefix)) return undefined;
    const key = name.slice(prefix.length).toLowerCase();
    return key === '' ? undefined : key;
  };
  const isOverride = (name: string): boolean => OVERRIDE_PREFIXES.some((prefix) => name.startsWith(prefix));

  for (const prefix of DEFAULT_PREFIXES) {
    for (const name of names) {
      const value = ctx.env[name];
      const key = keyFor(name, prefix);
      if (value === undefined || key === undefined || isOverride(name) || RESERVED_ENV_KEYS.has(key)) continue;
      if (!settings.has(key)) settings.set(key, { value, file: ENVIRONMENT, key: name });
    }
  }
  for (const prefix of OVERRIDE_PREFIXES) {
    for (const name of names) {
      const value = ctx.env[name];
      const key = keyFor(name, prefix);
      if (value === undefined || key === undefined) continue;
      settings.set(key, { value, file: ENVIRONMENT, key: name });
    }
  }
}

// ------------------------------------------------------------------------------------------------
// App options and managers

function isNotYetSupported(key: string): boolean {
  return NOT_YET_SUPPORTED_APP_OPTIONS.has(key) || NOT_YET_SUPPORTED_APP_PREFIXES.some((p) => key.startsWith(p));
}

function parseOrThrow<S extends z.ZodType>(schema: S, values: Record<string, unknown>, where: ReadonlyMap<string, Setting>): z.output<S> {
  const result = schema.safeParse(values);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const key = String(issue?.path[0] ?? '');
  const setting = where.get(key);
  if (setting === undefined) throw new Error(`config schema issue without a source: ${issue?.message ?? '?'}`);
  throw new ConfigError(setting.file, setting.key, issue?.message ?? 'invalid value');
}

/** Given with a value: an empty YAML value (null) is as if the key were absent. */
function isSet(setting: Setting | undefined): setting is Setting {
  return setting !== undefined && setting.value !== null;
}

function fileModeWarning(setting: Setting | undefined, ctx: Context): void {
  if (setting !== undefined && typeof setting.value === 'number') {
    const octal = setting.value.toString(8).padStart(4, '0');
    ctx.warnings.push(
      `${setting.file}: ${setting.key}: the YAML integer ${setting.value} is read as file mode ${octal}; write it as a quoted string ('${octal}') to be unambiguous`,
    );
  }
}

/** What a manager takes from the app options when its own section does not say. */
type ManagerDefaults = Pick<
  ManagerConfig,
  | 'stagingDirectory'
  | 'assignIds'
  | 'jobDirectoryMode'
  | 'maximumStreamSize'
  | 'debug'
  | 'galaxyHome'
  | 'galaxyVirtualEnv'
  | 'galaxyConfigFile'
  | 'galaxyDatasetFilesPath'
  | 'galaxyDatatypesConfigFile'
> & {
  /** Public tool service mode: overrides what PUBLIC_MODE lists. */
  readonly publicMode: boolean;
};

async function buildApp(settings: ReadonlyMap<string, Setting>, configDir: string, ctx: Context): Promise<AppSection> {
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
  const options = parseOrThrow(appOptionsSchema, values, settings);
  fileModeWarning(settings.get('job_directory_mode'), ctx);
  const toolConfigFiles = await toolboxFiles(options, settings, configDir);
  const publicMode = toolConfigFiles.length > 0;
  if (publicMode) {
    warnIfOverridden('assign_ids', options.assign_ids, settings.get('assign_ids'), ctx);
    warnIfOverridden('allow_unsafe_env', options.allow_unsafe_env, settings.get('allow_unsafe_env'), ctx);
  }

  const fromCwd = (p: string | undefined): string | undefined => (p === undefined ? undefined : path.resolve(ctx.cwd, p));
  const fromEnv = (name: string): string | undefined => {
    const value = ctx.env[name];
    return value === undefined || value === '' ? undefined : value;
  };
  const stagingDirectory = path.resolve(ctx.cwd, options.staging_directory);
  const persistence = options.persistence_directory;
  const defaults: ManagerDefaults = {
    stagingDirectory,
    assignIds: options.assign_ids,
    jobDirectoryMode: options.job_directory_mode,
    maximumStreamSize: options.maximum_stream_size,
    debug: options.debug,
    galaxyHome: fromCwd(options.galaxy_home ?? fromEnv('GALAXY_HOME')),
    galaxyVirtualEnv: fromCwd(options.galaxy_virtual_env ?? fromEnv('GALAXY_VIRTUAL_ENV')),
    galaxyConfigFile: fromCwd(options.galaxy_config_file),
    galaxyDatasetFilesPath: fromCwd(options.galaxy_dataset_files_path),
    galaxyDatatypesConfigFile: fromCwd(options.galaxy_datatypes_config_file),
    publicMode,
  };

  const sources = await managerSources(options, settings, configDir, ctx);
  const managers = sources.map((source) => buildManager(source, defaults, ctx));

  return {
    privateToken: options.private_token,
    persistenceDirectory: persistence === PERSISTENCE_DISABLED ? undefined : path.resolve(ctx.cwd, persistence),
    maxUploadSize: options.max_upload_size,
    maxJobUploadSize: options.max_job_upload_size,
    allowUnsafeEnv: publicMode ? PUBLIC_MODE.allow_unsafe_env.forced : options.allow_unsafe_env,
    logRequests: options.log_requests,
    toolConfigFiles,
    allowInsecurePublic: options.allow_insecure_public,
    allowedSubmitParams: options.allowed_submit_params,
    rateLimitFailedAuth: options.rate_limit_failed_auth,
    rateLimitSetup: options.rate_limit_setup,
    // Relative to the working directory, as staging_directory (and upstream's default "dependencies").
    toolDependencyDir: fromCwd(options.tool_dependency_dir),
    managers,
  };
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

/** What public tool service mode (tool_config_files) decides, whatever the files say, and why. */
const PUBLIC_MODE = {
  assign_ids: { forced: 'uuid', because: 'always assigns uuid job ids' },
  allow_unsafe_env: { forced: false, because: 'never accepts execute, file or raw env entries' },
} as const;

/** Says (once per setting: app-wide or a manager's own) that public mode overrides what it asked for. */
function warnIfOverridden(option: keyof typeof PUBLIC_MODE, asked: unknown, setting: Setting | undefined, ctx: Context): void {
  const { forced, because } = PUBLIC_MODE[option];
  if (isSet(setting) && asked !== forced) {
    ctx.warnings.push(`${setting.file}: ${setting.key} = ${String(asked)} is overridden: public tool service mode (tool_config_files) ${because}`);
  }
}

/** One manager's raw options and how to name them in errors. */
interface ManagerSource {
  readonly name: string;
  readonly file: string;
  /** e.g. `[manager:foo]`, `managers.foo`, `manager`. */
  readonly section: string;
  readonly options: ReadonlyArray<readonly [key: string, value: unknown]>;
  /** The single `manager:` form may carry its own `name`. */
  readonly allowsName: boolean;
}

/** PROTOCOL §10.2: job_managers_config, else managers, else manager, else one default manager. */
async function managerSources(
  options: AppOptions,
  settings: ReadonlyMap<string, Setting>,
  configDir: string,
  ctx: Context,
): Promise<ManagerSource[]> {
  const jobManagersConfig = settings.get('job_managers_config');
  const managersSetting = settings.get('managers');
  const managerSetting = settings.get('manager');
  const ignoring = (setting: Setting | undefined, because: Setting): void => {
    if (isSet(setting)) {
      ctx.warnings.push(`${setting.file}: ${setting.key} is ignored because ${because.key} (${because.file}) takes precedence`);
    }
  };

  let sources: ManagerSource[];
  if (options.job_managers_config !== undefined && jobManagersConfig !== undefined) {
    ignoring(managersSetting, jobManagersConfig);
    ignoring(managerSetting, jobManagersConfig);
    sources = await readJobManagersIni(path.resolve(configDir, options.job_managers_config), jobManagersConfig, ctx);
  } else if (options.managers !== undefined && managersSetting !== undefined) {
    ignoring(managerSetting, managersSetting);
    sources = Object.entries(options.managers).map(([name, value]) => {
      const section = `${managersSetting.key}.${name}`;
      if (value !== null && (typeof value !== 'object' || Array.isArray(value))) {
        throw new ConfigError(managersSetting.file, section, 'expected a mapping of manager options');
      }
      const entries = value === null ? [] : Object.entries(value as Record<string, unknown>);
      return { name: name.trim(), file: managersSetting.file, section, options: entries, allowsName: false };
    });
    if (sources.length === 0) throw new ConfigError(managersSetting.file, managersSetting.key, 'defines no manager');
  } else if (options.manager !== undefined && managerSetting !== undefined) {
    const entries = Object.entries(options.manager);
    const named = options.manager['name'];
    if (named !== undefined && (typeof named !== 'string' || named.trim() === '')) {
      throw new ConfigError(managerSetting.file, `${managerSetting.key}.name`, 'expected a manager name (a non-empty string)');
    }
    const name = typeof named === 'string' ? named.trim() : DEFAULT_MANAGER_NAME;
    sources = [{ name, file: managerSetting.file, section: managerSetting.key, options: entries, allowsName: true }];
  } else {
    sources = [{ name: DEFAULT_MANAGER_NAME, file: ENVIRONMENT, section: 'default manager', options: [], allowsName: false }];
  }

  const seen = new Set<string>();
  for (const source of sources) {
    if (!MANAGER_NAME_RE.test(source.name)) {
      throw new ConfigError(source.file, source.section, `manager name ${JSON.stringify(source.name)} must use only letters, digits, "_", "-" and "."`);
    }
    if (seen.has(source.name)) {
      throw new ConfigError(source.file, source.section, `duplicate manager name ${source.name}`);
    }
    seen.add(source.name);
  }
  return sources;
}

async function readJobManagersIni(file: string, referrer: Setting, ctx: Context): Promise<ManagerSource[]> {
  const fileLabel = label(file, ctx);
  const doc = parseIni(await readConfigText(file, ctx, referrer), fileLabel);
  const sources: ManagerSource[] = [];
  for (const section of doc.sections.values()) {
    // Other sections are ignored, as upstream.
    if (!section.name.startsWith(MANAGER_SECTION_PREFIX)) continue;
    sources.push({
      name: section.name.slice(MANAGER_SECTION_PREFIX.length).trim(),
      file: fileLabel,
      section: `[${section.name}]`,
      options: iniValues(doc, section, file, fileLabel),
      allowsName: false,
    });
  }
  if (sources.length === 0) {
    throw new ConfigError(fileLabel, undefined, 'defines no [manager:NAME] section');
  }
  return sources;
}

function buildManager(source: ManagerSource, defaults: ManagerDefaults, ctx: Context): ManagerConfig {
  const keyOf = (key: string): string =>
    source.section.startsWith('[') ? `${source.section} ${key}` : `${source.section}.${key}`;
  const where = new Map<string, Setting>();
  const values: Record<string, unknown> = {};
  const env: Array<[string, string]> = [];
  const backendOptions: Record<string, string> = {};

  // The type decides what else is meaningful: report an unsupported type before anything else.
  const rawType = source.options.find(([key]) => key === 'type');
  if (rawType !== undefined) {
    const typeCheck = managerOptionsSchema.shape.type.safeParse(rawType[1]);
    if (!typeCheck.success) {
      throw new ConfigError(source.file, keyOf('type'), typeCheck.error.issues[0]?.message ?? 'invalid manager type');
    }
  }

  for (const [key, value] of source.options) {
    const setting: Setting = { value, file: source.file, key: keyOf(key) };
    if (key.toLowerCase().startsWith(ENV_OPTION_PREFIX)) {
      const name = key.slice(ENV_OPTION_PREFIX.length);
      if (!ENV_NAME_RE.test(name)) {
        throw new ConfigError(setting.file, setting.key, `environment variable name ${JSON.stringify(name)} must match ${ENV_NAME_RE.source}`);
      }
      if (env.some(([existing]) => existing === name)) {
        throw new ConfigError(setting.file, setting.key, `environment variable ${name} is set twice`);
      }
      const coerced = asEnvValue(value);
      if (coerced instanceof Invalid) throw new ConfigError(setting.file, setting.key, coerced.expected);
      env.push([name, coerced]);
      continue;
    }
    if (IGNORED_MANAGER_OPTIONS.has(key)) {
      ctx.warnings.push(`${setting.file}: ${setting.key} has no effect for the supported manager types and is ignored`);
      continue;
    }
    if (key === 'name' && source.allowsName) continue;
    if (!MANAGER_OPTION_NAMES.has(key) && FOREIGN_MANAGER_OPTION_RE.test(key) && isClusterType(rawType?.[1])) {
      // Validated by the backend of this type when the server starts.
      backendOptions[key] = typeof value === 'string' ? value : JSON.stringify(value);
      continue;
    }
    if (!MANAGER_OPTION_NAMES.has(key)) {
      const hint = FOREIGN_MANAGER_OPTION_RE.test(key)
        ? ' (an option of DRMAA/CLI/condor managers only)'
        : '';
      throw new ConfigError(setting.file, setting.key, `unknown manager option${hint}`);
    }
    values[key] = value;
    where.set(key, setting);
  }
  if (where.has('num_concurrent_jobs') && where.has('max_concurrent_jobs')) {
    throw new ConfigError(source.file, keyOf('max_concurrent_jobs'), 'give either num_concurrent_jobs or its alias max_concurrent_jobs, not both');
  }
  const options = parseOrThrow(managerOptionsSchema, values, where);
  fileModeWarning(where.get('job_directory_mode'), ctx);
  if (defaults.publicMode) warnIfOverridden('assign_ids', options.assign_ids, where.get('assign_ids'), ctx);

  const concurrencySetting = [where.get('num_concurrent_jobs'), where.get('max_concurrent_jobs')].find(isSet);
  if (options.type === 'unqueued' && concurrencySetting !== undefined) {
    ctx.warnings.push(`${source.file}: ${concurrencySetting.key} has no effect for an unqueued manager`);
  }
  const fromCwd = (p: string | undefined): string | undefined => (p === undefined ? undefined : path.resolve(ctx.cwd, p));

  return {
    name: source.name,
    type: options.type,
    stagingDirectory: fromCwd(options.staging_directory) ?? defaults.stagingDirectory,
    assignIds: defaults.publicMode ? PUBLIC_MODE.assign_ids.forced : options.assign_ids ?? defaults.assignIds,
    numConcurrentJobs: options.max_concurrent_jobs ?? options.num_concurrent_jobs,
    debug: options.debug ?? defaults.debug,
    maximumStreamSize: options.maximum_stream_size ?? defaults.maximumStreamSize,
    jobDirectoryMode: options.job_directory_mode ?? defaults.jobDirectoryMode,
    env: Object.fromEntries(env),
    tmpDir: options.tmp_dir,
    galaxyHome: fromCwd(options.galaxy_home) ?? defaults.galaxyHome,
    galaxyVirtualEnv: fromCwd(options.galaxy_virtual_env) ?? defaults.galaxyVirtualEnv,
    galaxyConfigFile: fromCwd(options.galaxy_config_file) ?? defaults.galaxyConfigFile,
    galaxyDatasetFilesPath: fromCwd(options.galaxy_dataset_files_path) ?? defaults.galaxyDatasetFilesPath,
    galaxyDatatypesConfigFile: fromCwd(options.galaxy_datatypes_config_file) ?? defaults.galaxyDatatypesConfigFile,
    minPollingInterval: options.min_polling_interval,
    jobNameTemplate: options.job_name_template,
    backendOptions,
  };
}

function isClusterType(type: unknown): boolean {
  return typeof type === 'string' && (CLUSTER_MANAGER_TYPES as readonly string[]).includes(type);
}

// ------------------------------------------------------------------------------------------------

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** localhost, 127.0.0.0/8 or ::1 (in any spelling, also IPv4-mapped). */
function isLoopback(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const family = isIP(host);
  return family !== 0 && LOOPBACK.check(host, family === 6 ? 'ipv6' : 'ipv4');
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
