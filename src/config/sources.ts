/**
 * Where settings come from: server.ini (its [server:main] section and the app options in
 * [app:main]), the app YAML file, job_managers.ini and the environment (PROTOCOL §10.1). Each
 * value is kept as found, with its file and key, for the builders to validate.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError } from '../errors.js';
import { interpolatedValue, parseIni, type IniDocument, type IniSection } from './ini-file.js';
import {
  GENERATED_PEM_NAME,
  IGNORED_SERVER_OPTIONS,
  SERVER_OPTION_NAMES,
  SSL_PEM_GENERATE,
  serverOptionsSchema,
  type ServerOptions,
} from './schema.js';
import { ENVIRONMENT, label, parseOrThrow, type LoadContext, type Setting } from './setting.js';
import type { ServerSection } from './types.js';
import { MAX_CONFIG_BYTES, parseYamlOptions } from './yaml-file.js';

/** App options by name (lower case, as in the files), each with where it came from. */
export type Settings = Map<string, Setting>;

/** One manager's raw options and how to name them in errors. */
export interface ManagerSource {
  readonly name: string;
  readonly file: string;
  /** e.g. `[manager:foo]`, `managers.foo`, `manager`. */
  readonly section: string;
  readonly options: ReadonlyArray<readonly [key: string, value: unknown]>;
  /** The single `manager:` form may carry its own `name`. */
  readonly allowsName: boolean;
}

const OVERRIDE_PREFIXES = ['PULSAR_CONFIG_OVERRIDE_', 'MAGNETAR_CONFIG_OVERRIDE_'] as const; // later wins
const DEFAULT_PREFIXES = ['MAGNETAR_CONFIG_', 'PULSAR_CONFIG_'] as const; // earlier wins
/** Environment names under the prefixes that are not app options. */
const RESERVED_ENV_KEYS: ReadonlySet<string> = new Set(['dir', 'file']);
const APP_SECTIONS = ['app:main', 'application:main'] as const;
export const SERVER_SECTION = 'server:main';
const MANAGER_SECTION_PREFIX = 'manager:';
const DEFAULT_APP_YAML = 'app.yml';

// ------------------------------------------------------------------------------------------------
// Files

async function readConfigText(file: string, ctx: LoadContext, referrer?: Setting): Promise<string> {
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

export function describeIoError(error: unknown): string {
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

// ------------------------------------------------------------------------------------------------
// server.ini

/** The server section from the schema's defaults: what applies when no server.ini says otherwise. */
export function defaultServer(): ServerSection {
  const { host, port } = serverOptionsSchema.parse({});
  return { host, port, sslPem: undefined, sslGenerate: false };
}

/** Reads server.ini: returns its server section and adds its app options (and app YAML's) to `settings`. */
export async function readServerIni(file: string, settings: Settings, ctx: LoadContext): Promise<ServerSection> {
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
  const tls = await tlsOf(server, here, fileLabel, ctx);
  const appSection = appSections[0];
  const appConfig = appSection === undefined ? undefined : readAppSection(doc, appSection, file, fileLabel, settings);

  if (appConfig !== undefined) {
    await readAppYaml(path.resolve(here, String(appConfig.value)), settings, ctx, appConfig);
  } else if (await exists(path.join(here, DEFAULT_APP_YAML))) {
    // As upstream: with no app_config, an app.yml next to server.ini is read.
    await readAppYaml(path.join(here, DEFAULT_APP_YAML), settings, ctx);
  }
  return { host: server.host, port: server.port, ...tls };
}

function readServerSection(
  doc: IniDocument,
  section: IniSection,
  file: string,
  fileLabel: string,
  ctx: LoadContext,
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

/** `ssl_pem`: a PEM file relative to server.ini, or `*` for one generated next to it. */
async function tlsOf(
  server: ServerOptions,
  here: string,
  fileLabel: string,
  ctx: LoadContext,
): Promise<Pick<ServerSection, 'sslPem' | 'sslGenerate'>> {
  if (server.ssl_pem === undefined) return { sslPem: undefined, sslGenerate: false };
  // Generated (or reused) at startup by web/tls.ts.
  if (server.ssl_pem.trim() === SSL_PEM_GENERATE) return { sslPem: path.join(here, GENERATED_PEM_NAME), sslGenerate: true };
  // A configured certificate that cannot be read must stop the server, never fall back to HTTP.
  const sslPem = path.resolve(here, server.ssl_pem);
  await readConfigText(sslPem, ctx, { value: server.ssl_pem, file: fileLabel, key: `[${SERVER_SECTION}] ssl_pem` });
  return { sslPem, sslGenerate: false };
}

/** Adds the [app:main] options to `settings`; returns its `app_config`, if any. */
function readAppSection(doc: IniDocument, section: IniSection, file: string, fileLabel: string, settings: Settings): Setting | undefined {
  const name = `[${section.name}]`;
  let appConfig: Setting | undefined;
  for (const [key, value] of iniValues(doc, section, file, fileLabel)) {
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
  return appConfig;
}

// ------------------------------------------------------------------------------------------------
// App YAML and job_managers.ini

export async function readAppYaml(file: string, settings: Settings, ctx: LoadContext, referrer?: Setting): Promise<void> {
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

/** The `[manager:NAME]` sections of the file `referrer` (`job_managers_config`) names. */
export async function readJobManagersIni(file: string, referrer: Setting, ctx: LoadContext): Promise<ManagerSource[]> {
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

// ------------------------------------------------------------------------------------------------
// Environment (PROTOCOL §10.1)

export function applyEnvironment(settings: Settings, ctx: LoadContext): void {
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
