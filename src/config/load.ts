/**
 * Reads the configuration once at startup: server.ini (or an app YAML file directly), the app YAML
 * it names, job_managers.ini, then environment overrides. Every value is validated, every path made
 * absolute, and the result deep-frozen. A bad file fails fast with a ConfigError naming the file,
 * the key and the expected form. Options that are accepted but have no effect yet come back as
 * `warnings` (one line each) for the caller to log.
 *
 * `sources.ts` gathers the settings, `build.ts` turns them into sections; here they are put
 * together and checked against each other.
 */
import { BlockList, isIP } from 'node:net';
import path from 'node:path';
import { ConfigError } from '../errors.js';
import { buildApp } from './build.js';
import { DEFAULT_HOST_WITHOUT_FILE } from './schema.js';
import { ENVIRONMENT, label, type LoadContext } from './setting.js';
import { SERVER_SECTION, applyEnvironment, defaultServer, readAppYaml, readServerIni, type Settings } from './sources.js';
import type { AppSection, Config, ServerSection } from './types.js';

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

export async function loadConfig(opts: LoadOptions = {}): Promise<LoadResult> {
  const cwd = path.resolve(opts.cwd ?? process.cwd());
  const ctx: LoadContext = { cwd, env: opts.env ?? process.env, warnings: [] };
  const configFile = opts.configFile === undefined ? undefined : path.resolve(cwd, opts.configFile);
  const configDir = configFile === undefined ? cwd : path.dirname(configFile);
  const settings: Settings = new Map();
  const server = await readFiles(configFile, settings, ctx);
  applyEnvironment(settings, ctx);
  const app = await buildApp(settings, configDir, ctx);
  checkExposure(server, app, configFile === undefined ? ENVIRONMENT : label(configFile, ctx), ctx);
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

/** Reads the configuration file, if any, into `settings`; returns the server section. */
async function readFiles(configFile: string | undefined, settings: Settings, ctx: LoadContext): Promise<ServerSection> {
  if (configFile === undefined) return { ...defaultServer(), host: DEFAULT_HOST_WITHOUT_FILE };
  if (/\.ya?ml$/i.test(configFile)) {
    await readAppYaml(configFile, settings, ctx);
    return defaultServer();
  }
  return readServerIni(configFile, settings, ctx);
}

/** Who can reach the server, against what it offers: refused or warned about. */
function checkExposure(server: ServerSection, app: AppSection, serverFile: string, ctx: LoadContext): void {
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
}

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
