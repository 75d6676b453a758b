import * as path from 'node:path';
import type { ManagerConfig } from '../../config/types.js';
import { ConfigError } from '../../errors.js';
import type { BackendContext } from '../context.js';
import { gridEnginePlugin } from './grid-engine.js';
import { JobParamError, parseBoolean, type JobPlugin, type JobPluginName } from './job-plugin.js';
import { lsfPlugin } from './lsf.js';
import { localShell, remoteShell, secureShell, type ShellPlugin } from './shell.js';
import { slurmPlugin } from './slurm.js';
import { pbsPlugin } from './torque.js';

/** `job_plugin` values: upstream class names and module names, case-insensitive. */
const JOB_PLUGINS: Readonly<Record<string, JobPluginName>> = {
  torque: 'Torque',
  slurmtorque: 'SlurmTorque',
  slurm_torque: 'SlurmTorque',
  slurm: 'Slurm',
  openpbs: 'OpenPBS',
  pbs: 'OpenPBS',
  lsf: 'LSF',
  gridengine: 'GridEngine',
  grid_engine: 'GridEngine',
  sge: 'GridEngine',
};

type ShellName = ShellPlugin['name'];

/** `shell_plugin` values, case-insensitive. */
const SHELL_PLUGINS: Readonly<Record<string, ShellName>> = {
  localshell: 'LocalShell',
  local_shell: 'LocalShell',
  local: 'LocalShell',
  remoteshell: 'RemoteShell',
  remote_shell: 'RemoteShell',
  rsh: 'RemoteShell',
  secureshell: 'SecureShell',
  secure_shell: 'SecureShell',
  ssh: 'SecureShell',
};

/** Which `shell_*` options each shell plugin reads. */
const SHELL_OPTIONS: Readonly<Record<ShellName, readonly string[]>> = {
  LocalShell: ['timeout'],
  RemoteShell: ['timeout', 'hostname', 'username', 'rsh'],
  SecureShell: ['timeout', 'hostname', 'username', 'rsh', 'port', 'private_key', 'strict_host_key_checking', 'connect_timeout', 'known_hosts_file'],
};
const ALL_SHELL_OPTIONS = new Set(Object.values(SHELL_OPTIONS).flat());

export const DEFAULT_COMMAND_TIMEOUT_S = 60;
export const DEFAULT_CONNECT_TIMEOUT_S = 60;

export interface CliOptions {
  readonly jobPlugin: JobPlugin;
  readonly shell: ShellPlugin;
  /** Per scheduler command (`shell_timeout`, seconds → ms). */
  readonly commandTimeoutMs: number;
}

const HOST_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$/;
const USER_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;
const PROGRAM_RE = /^[A-Za-z0-9_./+][A-Za-z0-9_./+-]{0,1023}$/;

/**
 * Reads a queued_cli manager's `backendOptions` (PROTOCOL §6.2 CLI): `job_plugin`, `job_*`
 * directives, `shell_plugin`, `shell_*`. Anything else, or a value that does not fit, is a
 * ConfigError naming the option.
 */
export function parseCliOptions(manager: ManagerConfig, ctx: BackendContext): CliOptions {
  const keyOf = (option: string): string => `manager ${manager.name} ${option}`;
  const fail: (option: string, message: string) => never = (option, message) => {
    throw new ConfigError(ctx.configFile, keyOf(option), message);
  };

  const jobParams: [string, string][] = [];
  const shellParams = new Map<string, string>();
  const unknown: string[] = [];
  let jobPluginValue: string | undefined;
  let shellPluginValue: string | undefined;
  for (const [key, value] of Object.entries(manager.backendOptions)) {
    if (key === 'job_plugin') jobPluginValue = value;
    else if (key === 'shell_plugin') shellPluginValue = value;
    else if (key.startsWith('job_') && key.length > 4) jobParams.push([key.slice(4), value]);
    else if (key.startsWith('shell_') && key.length > 6) shellParams.set(key.slice(6).toLowerCase(), value);
    else unknown.push(key);
  }
  for (const name of shellParams.keys()) if (!ALL_SHELL_OPTIONS.has(name)) unknown.push(`shell_${name}`);
  if (unknown.length > 0) {
    fail(
      unknown[0]!,
      `unknown option${unknown.length > 1 ? 's' : ''} for a queued_cli manager: ${unknown.join(', ')} ` +
        '(expected job_plugin, job_<scheduler parameter>, shell_plugin, shell_hostname, shell_username, shell_port, ' +
        'shell_private_key, shell_rsh, shell_strict_host_key_checking, shell_connect_timeout, shell_known_hosts_file, shell_timeout)',
    );
  }

  if (jobPluginValue === undefined) fail('job_plugin', 'a queued_cli manager needs job_plugin (Slurm, GridEngine, Torque, SlurmTorque, OpenPBS or LSF)');
  const jobPluginName = JOB_PLUGINS[jobPluginValue.trim().toLowerCase()];
  if (jobPluginName === undefined) {
    fail('job_plugin', `unknown job plugin ${JSON.stringify(jobPluginValue)} (expected Slurm, GridEngine, Torque, SlurmTorque, OpenPBS or LSF)`);
  }

  const shellWord = (shellPluginValue ?? 'LocalShell').trim().toLowerCase();
  const shellName = SHELL_PLUGINS[shellWord];
  if (shellName === undefined) {
    const hint = /globus|paramiko/.test(shellWord) ? ' (GlobusSecureShell and ParamikoShell are not supported; use SecureShell)' : '';
    fail('shell_plugin', `unknown shell plugin ${JSON.stringify(shellPluginValue)}${hint} (expected LocalShell, RemoteShell or SecureShell)`);
  }
  for (const name of shellParams.keys()) {
    if (!SHELL_OPTIONS[shellName].includes(name)) {
      fail(`shell_${name}`, `is not an option of the ${shellName} shell plugin (it reads: ${SHELL_OPTIONS[shellName].map((o) => `shell_${o}`).join(', ')})`);
    }
  }

  let jobPlugin: JobPlugin;
  try {
    jobPlugin = createJobPlugin(jobPluginName, jobParams);
  } catch (error) {
    if (error instanceof JobParamError) fail(`job_${error.param}`, `${jobPluginName} plugin: job_${error.param} ${error.message}`);
    throw error;
  }

  const text = (name: string, re: RegExp, expected: string): string | undefined => {
    const value = shellParams.get(name)?.trim();
    if (value === undefined || value === '') return undefined;
    if (!re.test(value)) fail(`shell_${name}`, `must be ${expected}`);
    return value;
  };
  const seconds = (name: string, fallback: number, integer: boolean): number => {
    const value = shellParams.get(name)?.trim();
    if (value === undefined || value === '') return fallback;
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0 || n > 86_400 || (integer && !Number.isInteger(n))) {
      fail(`shell_${name}`, `must be a ${integer ? 'whole ' : ''}number of seconds greater than 0`);
    }
    return n;
  };
  const absolutePath = (name: string): string | undefined => {
    const value = shellParams.get(name)?.trim();
    if (value === undefined || value === '') return undefined;
    if (!path.isAbsolute(value) || /[\x00-\x1f\x7f]/.test(value)) fail(`shell_${name}`, 'must be an absolute path');
    return path.normalize(value);
  };

  const commandTimeoutMs = Math.round(seconds('timeout', DEFAULT_COMMAND_TIMEOUT_S, false) * 1000);
  const hostname = text('hostname', HOST_RE, 'a host name or address') ?? 'localhost';
  const username = text('username', USER_RE, 'a user name (letters, digits, . _ -)');
  let shell: ShellPlugin;
  switch (shellName) {
    case 'LocalShell':
      shell = localShell();
      break;
    case 'RemoteShell':
      shell = remoteShell({ rsh: text('rsh', PROGRAM_RE, 'a program name or path') ?? 'rsh', hostname, username });
      break;
    case 'SecureShell': {
      const strictValue = shellParams.get('strict_host_key_checking');
      const strict = strictValue === undefined ? true : parseBoolean(strictValue);
      if (strict === undefined) fail('shell_strict_host_key_checking', 'must be true or false');
      const portText = text('port', /^\d{1,5}$/, 'a port number from 1 to 65535');
      const port = portText === undefined ? undefined : Number(portText);
      if (port !== undefined && (port < 1 || port > 65535)) fail('shell_port', 'must be a port number from 1 to 65535');
      shell = secureShell({
        ssh: text('rsh', PROGRAM_RE, 'a program name or path') ?? 'ssh',
        hostname,
        username,
        port,
        privateKey: absolutePath('private_key'),
        strictHostKeyChecking: strict,
        connectTimeout: seconds('connect_timeout', DEFAULT_CONNECT_TIMEOUT_S, true),
        knownHostsFile: absolutePath('known_hosts_file'),
      });
      break;
    }
  }
  return { jobPlugin, shell, commandTimeoutMs };
}

export function createJobPlugin(name: JobPluginName, params: readonly (readonly [string, string])[]): JobPlugin {
  switch (name) {
    case 'Slurm':
      return slurmPlugin(params);
    case 'Torque':
    case 'SlurmTorque':
    case 'OpenPBS':
      return pbsPlugin(name, params);
    case 'LSF':
      return lsfPlugin(params);
    case 'GridEngine':
      return gridEnginePlugin(params);
  }
}
