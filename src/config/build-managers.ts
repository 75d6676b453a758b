/**
 * The managers: which sources define them (PROTOCOL §10.2), then each one's options validated and
 * completed from the app-wide defaults.
 */
import path from 'node:path';
import { ConfigError } from '../errors.js';
import { PUBLIC_MODE, warnIfOverridden } from './public-mode.js';
import {
  DEFAULT_MANAGER_NAME,
  ENV_NAME_RE,
  ENV_OPTION_PREFIX,
  FOREIGN_MANAGER_OPTION_RE,
  IGNORED_MANAGER_OPTIONS,
  Invalid,
  MANAGER_NAME_RE,
  MANAGER_OPTION_NAMES,
  asEnvValue,
  managerOptionsSchema,
  type AppOptions,
  type ManagerOptions,
} from './schema.js';
import { ENVIRONMENT, fileModeWarning, isSet, parseOrThrow, type LoadContext, type Setting } from './setting.js';
import { readJobManagersIni, type ManagerSource } from './sources.js';
import { CLUSTER_MANAGER_TYPES, type ManagerConfig, type SandboxConfig } from './types.js';

/** What a manager takes from the app options when its own section does not say. */
export type ManagerDefaults = Pick<
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
  /** The app-level `sandbox*` options, with where `sandbox` was set (if it was). */
  readonly sandbox: SandboxDefaults;
};

/** The app-level sandbox options: every manager's defaults. */
export interface SandboxDefaults {
  /** `sandbox` as the app options say it; undefined = on in public mode only. */
  readonly enabled: boolean | undefined;
  readonly setting: Setting | undefined;
  readonly config: SandboxConfig;
}

/** A manager's options sorted by what becomes of them. */
interface SortedOptions {
  /** Options of the manager schema, by name, with where each came from. */
  readonly values: Record<string, unknown>;
  readonly where: Map<string, Setting>;
  /** `env_<NAME>` options, in file order. */
  readonly env: Array<[name: string, value: string]>;
  readonly backendOptions: Record<string, string>;
}

export async function buildManagers(
  options: AppOptions,
  settings: ReadonlyMap<string, Setting>,
  configDir: string,
  defaults: ManagerDefaults,
  ctx: LoadContext,
): Promise<ManagerConfig[]> {
  const sources = await managerSources(options, settings, configDir, ctx);
  return sources.map((source) => buildManager(source, defaults, ctx));
}

/** PROTOCOL §10.2: job_managers_config, else managers, else manager, else one default manager. */
async function managerSources(
  options: AppOptions,
  settings: ReadonlyMap<string, Setting>,
  configDir: string,
  ctx: LoadContext,
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
    sources = yamlManagers(options.managers, managersSetting);
  } else if (options.manager !== undefined && managerSetting !== undefined) {
    sources = [yamlManager(options.manager, managerSetting)];
  } else {
    sources = [{ name: DEFAULT_MANAGER_NAME, file: ENVIRONMENT, section: 'default manager', options: [], allowsName: false }];
  }
  checkNames(sources);
  return sources;
}

/** `managers:` — a mapping of manager name to its options. */
function yamlManagers(managers: Readonly<Record<string, unknown>>, setting: Setting): ManagerSource[] {
  const sources = Object.entries(managers).map(([name, value]): ManagerSource => {
    const section = `${setting.key}.${name}`;
    if (value !== null && (typeof value !== 'object' || Array.isArray(value))) {
      throw new ConfigError(setting.file, section, 'expected a mapping of manager options');
    }
    const entries = value === null ? [] : Object.entries(value as Record<string, unknown>);
    return { name: name.trim(), file: setting.file, section, options: entries, allowsName: false };
  });
  if (sources.length === 0) throw new ConfigError(setting.file, setting.key, 'defines no manager');
  return sources;
}

/** `manager:` — one manager's options, its name among them (default `_default_`). */
function yamlManager(manager: Readonly<Record<string, unknown>>, setting: Setting): ManagerSource {
  const named = manager['name'];
  if (named !== undefined && (typeof named !== 'string' || named.trim() === '')) {
    throw new ConfigError(setting.file, `${setting.key}.name`, 'expected a manager name (a non-empty string)');
  }
  const name = typeof named === 'string' ? named.trim() : DEFAULT_MANAGER_NAME;
  return { name, file: setting.file, section: setting.key, options: Object.entries(manager), allowsName: true };
}

function checkNames(sources: readonly ManagerSource[]): void {
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
}

function buildManager(source: ManagerSource, defaults: ManagerDefaults, ctx: LoadContext): ManagerConfig {
  const { values, where, env, backendOptions } = sortOptions(source, ctx);
  if (where.has('num_concurrent_jobs') && where.has('max_concurrent_jobs')) {
    throw new ConfigError(source.file, keyOf(source, 'max_concurrent_jobs'), 'give either num_concurrent_jobs or its alias max_concurrent_jobs, not both');
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
    sandbox: managerSandbox(source, options, where, defaults, ctx),
    preprocessRetry: {
      maxRetries: options.preprocess_action_max_retries,
      intervalStart: options.preprocess_action_interval_start,
      intervalStep: options.preprocess_action_interval_step,
      intervalMax: options.preprocess_action_interval_max,
    },
    postprocessRetry: {
      maxRetries: options.postprocess_action_max_retries,
      intervalStart: options.postprocess_action_interval_start,
      intervalStep: options.postprocess_action_interval_step,
      intervalMax: options.postprocess_action_interval_max,
    },
  };
}

/**
 * A manager's sandbox: its own `sandbox*` options over the app's. On by default in public mode;
 * turning it off there is the administrator's explicit choice, and said loudly at every start.
 */
function managerSandbox(
  source: ManagerSource,
  options: ManagerOptions,
  where: ReadonlyMap<string, Setting>,
  defaults: ManagerDefaults,
  ctx: LoadContext,
): SandboxConfig | false | undefined {
  const app = defaults.sandbox;
  const enabled = options.sandbox ?? app.enabled;
  // Not said anywhere: on in public mode; otherwise left to the server (on if a toolbox is added in code).
  if (enabled === undefined && !defaults.publicMode) return undefined;
  if (enabled === false) {
    if (defaults.publicMode) {
      const setting = where.get('sandbox') ?? app.setting;
      ctx.warnings.push(
        `WARNING: ${setting?.file ?? source.file}: ${setting?.key ?? 'sandbox'} = false: manager ${source.name} runs public tool jobs UNSANDBOXED, ` +
          'as the server\'s user, seeing and reaching all that it can (see SECURITY.md, "Job sandbox")',
      );
    }
    return false;
  }
  return {
    bwrap: options.sandbox_bwrap ?? app.config.bwrap,
    network: options.sandbox_network ?? app.config.network,
    uid: options.sandbox_uid ?? app.config.uid,
    gid: options.sandbox_gid ?? app.config.gid,
    cpuTime: options.sandbox_cpu_time ?? app.config.cpuTime,
    memory: options.sandbox_memory ?? app.config.memory,
    processes: options.sandbox_processes ?? app.config.processes,
    fileSize: options.sandbox_file_size ?? app.config.fileSize,
    roBinds: options.sandbox_ro_binds ?? app.config.roBinds,
  };
}

/** `[manager:foo] key` in ini files, `managers.foo.key` in YAML. */
function keyOf(source: ManagerSource, key: string): string {
  return source.section.startsWith('[') ? `${source.section} ${key}` : `${source.section}.${key}`;
}

/** Splits a manager's options into schema options, `env_` entries and backend options; refuses unknown ones. */
function sortOptions(source: ManagerSource, ctx: LoadContext): SortedOptions {
  const sorted: SortedOptions = { values: {}, where: new Map(), env: [], backendOptions: {} };
  const type = checkedType(source);
  for (const [key, value] of source.options) {
    const setting: Setting = { value, file: source.file, key: keyOf(source, key) };
    if (key.toLowerCase().startsWith(ENV_OPTION_PREFIX)) {
      sorted.env.push(envEntry(key.slice(ENV_OPTION_PREFIX.length), setting, sorted.env));
      continue;
    }
    if (IGNORED_MANAGER_OPTIONS.has(key)) {
      ctx.warnings.push(`${setting.file}: ${setting.key} has no effect yet (server-side stage-out is not supported yet) and is ignored`);
      continue;
    }
    if (key === 'name' && source.allowsName) continue;
    if (!MANAGER_OPTION_NAMES.has(key) && FOREIGN_MANAGER_OPTION_RE.test(key) && isClusterType(type)) {
      // Validated by the backend of this type when the server starts.
      sorted.backendOptions[key] = typeof value === 'string' ? value : JSON.stringify(value);
      continue;
    }
    if (!MANAGER_OPTION_NAMES.has(key)) {
      const hint = FOREIGN_MANAGER_OPTION_RE.test(key) ? ' (an option of DRMAA/CLI/condor managers only)' : '';
      throw new ConfigError(setting.file, setting.key, `unknown manager option${hint}`);
    }
    sorted.values[key] = value;
    sorted.where.set(key, setting);
  }
  return sorted;
}

/**
 * The raw `type`, refused first if unsupported: the type decides what else is meaningful, so
 * anything else said about the options would mislead.
 */
function checkedType(source: ManagerSource): unknown {
  const rawType = source.options.find(([key]) => key === 'type');
  if (rawType === undefined) return undefined;
  const typeCheck = managerOptionsSchema.shape.type.safeParse(rawType[1]);
  if (!typeCheck.success) {
    throw new ConfigError(source.file, keyOf(source, 'type'), typeCheck.error.issues[0]?.message ?? 'invalid manager type');
  }
  return rawType[1];
}

function envEntry(name: string, setting: Setting, seen: ReadonlyArray<readonly [string, string]>): [string, string] {
  if (!ENV_NAME_RE.test(name)) {
    throw new ConfigError(setting.file, setting.key, `environment variable name ${JSON.stringify(name)} must match ${ENV_NAME_RE.source}`);
  }
  if (seen.some(([existing]) => existing === name)) {
    throw new ConfigError(setting.file, setting.key, `environment variable ${name} is set twice`);
  }
  const coerced = asEnvValue(setting.value);
  if (coerced instanceof Invalid) throw new ConfigError(setting.file, setting.key, coerced.expected);
  return [name, coerced];
}

function isClusterType(type: unknown): boolean {
  return typeof type === 'string' && (CLUSTER_MANAGER_TYPES as readonly string[]).includes(type);
}
