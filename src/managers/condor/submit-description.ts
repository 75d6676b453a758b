import type { ManagerConfig } from '../../config/types.js';
import { BackendError, ConfigError } from '../../errors.js';

/**
 * The submit description of a `queued_condor` job (`job.condor.submit`): `key = value` lines.
 * First `universe = vanilla`, `getenv = true`, `notification = NEVER`, then the client's submit
 * parameters (only the names the administrator allow-listed reach a backend), then the manager's
 * `submit_<key>` options, each replacing an earlier line with the same key (HTCondor keys ignore
 * case); then the lines magnetar owns: `executable`, `output`, `error`, `log` and `queue`. Keys
 * and values are checked so that nothing can add a line (PROTOCOL §14 item 11): a bad manager
 * option stops the server (ConfigError), a bad client parameter fails the job.
 */

const SUBMIT_OPTION_PREFIX = 'submit_';

const DEFAULT_SUBMIT_LINES: ReadonlyArray<readonly [string, string]> = [
  ['universe', 'vanilla'],
  ['getenv', 'true'],
  ['notification', 'NEVER'],
];

/** A submit command name; `+Attr` / `MY.Attr` set job ClassAd attributes. */
const SUBMIT_KEY_RE = /^\+?[A-Za-z_][A-Za-z0-9_.+-]*$/;
/** Submit commands magnetar writes itself, and `log_xml`, which would make the log unreadable here. */
const RESERVED_SUBMIT_KEYS: ReadonlySet<string> = new Set(['executable', 'output', 'error', 'log', 'log_xml', 'queue']);
/** The job ClassAd attributes behind them, reachable as `+Cmd` or `MY.Cmd`. */
const RESERVED_ATTRIBUTES: ReadonlySet<string> = new Set(['cmd', 'out', 'err', 'userlog', 'ulogusexml']);

/** Why a submit key is refused, or undefined when it is acceptable. */
function submitKeyProblem(key: string): string | undefined {
  if (!SUBMIT_KEY_RE.test(key)) return 'is not an HTCondor submit command name';
  const lower = key.toLowerCase();
  if (RESERVED_SUBMIT_KEYS.has(lower)) return 'is set by magnetar';
  const attribute = lower.startsWith('+') ? lower.slice(1) : lower.startsWith('my.') ? lower.slice(3) : undefined;
  if (attribute !== undefined && RESERVED_ATTRIBUTES.has(attribute)) return 'is set by magnetar';
  return undefined;
}

/** Why a submit value is refused, or undefined when it is acceptable. */
function submitValueProblem(value: string): string | undefined {
  if (/[\n\r\0]/.test(value)) return 'contains a line break or NUL';
  // A trailing backslash continues the line: it would swallow the next one.
  if (/\\\s*$/.test(value)) return 'ends with a backslash (line continuation)';
  return undefined;
}

function submitValueText(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  return undefined;
}

export interface SubmitDescriptionSpec {
  readonly scriptPath: string;
  readonly stdoutPath: string;
  readonly stderrPath: string;
  readonly userLogPath: string;
  /** The client's (already allow-listed) submit parameters. */
  readonly clientParams: Readonly<Record<string, unknown>>;
  /** The manager's `submit_<key>` options, prefix removed, already validated. */
  readonly managerParams: ReadonlyArray<readonly [string, string]>;
}

/** A client parameter or a job path the description cannot carry: the job fails with why. */
function refused(message: string): BackendError {
  return new BackendError('MAG_ERR_BACKEND_SUBMIT', message);
}

/**
 * The text of `job.condor.submit`. Throws a BackendError (its message is the job's failure
 * reason) when a client parameter is not acceptable.
 */
export function buildSubmitDescription(spec: SubmitDescriptionSpec): string {
  const lines = new Map<string, [key: string, value: string]>();
  const set = (key: string, value: string): void => {
    const lower = key.toLowerCase();
    const existing = lines.get(lower);
    if (existing === undefined) lines.set(lower, [key, value]);
    else {
      existing[0] = key;
      existing[1] = value;
    }
  };
  for (const [key, value] of DEFAULT_SUBMIT_LINES) set(key, value);
  for (const [key, raw] of Object.entries(spec.clientParams)) {
    const keyProblem = submitKeyProblem(key);
    if (keyProblem !== undefined) throw refused(`submit parameter ${JSON.stringify(key)} ${keyProblem}`);
    const value = submitValueText(raw);
    if (value === undefined) throw refused(`submit parameter ${key} must be a string, a number or a boolean`);
    const valueProblem = submitValueProblem(value);
    if (valueProblem !== undefined) throw refused(`submit parameter ${key} ${valueProblem}`);
    set(key, value);
  }
  for (const [key, value] of spec.managerParams) set(key, value);
  const owned = [
    ['executable', spec.scriptPath],
    ['output', spec.stdoutPath],
    ['error', spec.stderrPath],
    ['log', spec.userLogPath],
  ] as const;
  for (const [name, file] of owned) {
    if (submitValueProblem(file) !== undefined) throw refused(`the job's ${name} path cannot be written into a submit description`);
  }
  const text = [...lines.values(), ...owned].map(([key, value]) => `${key} = ${value}`);
  text.push('queue', '');
  return text.join('\n');
}

/** The manager's `submit_<key>` options; anything else is not an option of this manager type. */
export function condorSubmitOptions(manager: ManagerConfig, configFile: string): Array<[string, string]> {
  const params: Array<[string, string]> = [];
  for (const [option, value] of Object.entries(manager.backendOptions)) {
    const key = `manager ${manager.name} ${option}`;
    if (!option.toLowerCase().startsWith(SUBMIT_OPTION_PREFIX)) {
      throw new ConfigError(configFile, key, 'unknown option for a queued_condor manager (it takes submit_<name> options, e.g. submit_request_memory)');
    }
    const condorKey = option.slice(SUBMIT_OPTION_PREFIX.length);
    const keyProblem = submitKeyProblem(condorKey);
    if (keyProblem !== undefined) throw new ConfigError(configFile, key, `${JSON.stringify(condorKey)} ${keyProblem}`);
    const valueProblem = submitValueProblem(value);
    if (valueProblem !== undefined) throw new ConfigError(configFile, key, `the value ${valueProblem}`);
    params.push([condorKey, value]);
  }
  return params;
}

/** The cluster id in condor_submit's answer (`1 job(s) submitted to cluster 8135.`). */
export function parseClusterId(output: string): string | undefined {
  const match = /submitted to cluster (\d+)\./.exec(output);
  return match?.[1] === undefined ? undefined : String(Number.parseInt(match[1], 10));
}
