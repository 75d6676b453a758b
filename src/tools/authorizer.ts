import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { JobRefused } from '../errors.js';
import { PINNED_AFTER_CLIENT_ENV, SERVER_SET_ENV, envStatements, type EnvEntry } from '../jobs/script.js';
import type { Logger } from '../log.js';
import { shellSecondOpinion } from './shell-check.js';
import type { ToolDefinition } from './types.js';

/** What the job service asks the authorizer about a submit (PROTOCOL §2.5, parsed). */
export interface SubmitFacts {
  readonly jobId: string;
  readonly toolId: string | undefined;
  readonly toolVersion: string | undefined;
  /** The job directory as the client sees it (what paths in the command line start with). */
  readonly jobDirectory: string;
  readonly commandLine: string;
  readonly submitParams: Readonly<Record<string, unknown>>;
  readonly remoteStagingSetup: number;
  readonly hasDependencies: boolean;
}

export interface UploadDecision {
  /** When set, the upload must hash (SHA-256, hex) to exactly this. */
  readonly expectedSha256?: string;
}

/**
 * The one place that says whether something may happen (ARCHITECTURE: tools/authorizer).
 * Chosen once at startup: `AllowAnyAuthorizer` without a toolbox, `ToolboxAuthorizer` with one.
 * Every method throws `JobRefused` with a message naming the tool and the rule, or returns.
 */
export interface Authorizer {
  readonly publicMode: boolean;
  /** May a client's `dependencies_description` make the job source tool dependency packages? */
  readonly resolvesDependencies: boolean;
  /**
   * Setup: returns the tool id and version the job is for (the version resolved in a toolbox).
   * `viaSubmit` marks a setup requested inside submit (`setup_params`).
   */
  authorizeSetup(jobId: string, toolId: string | undefined, toolVersion: string | undefined, viaSubmit?: boolean): { toolId: string | undefined; toolVersion: string | undefined };
  authorizeUpload(jobId: string, toolId: string | undefined, toolVersion: string | undefined, name: string, type: string): Promise<UploadDecision>;
  /** Rendered env statements for the job script, or a refusal. */
  authorizeEnv(jobId: string, toolId: string | undefined, entries: readonly EnvEntry[]): string[];
  /** Command line, config files (read from `configsDirectory`), submit params, staging. */
  authorizeSubmit(facts: SubmitFacts, configsDirectory: string): Promise<void>;
}

/** No toolbox: the token holder may run anything (Pulsar's trust model). */
export class AllowAnyAuthorizer implements Authorizer {
  readonly publicMode = false;
  readonly resolvesDependencies = true;
  readonly #allowUnsafeEnv: boolean;

  constructor(allowUnsafeEnv: boolean) {
    this.#allowUnsafeEnv = allowUnsafeEnv;
  }

  authorizeSetup(_jobId: string, toolId: string | undefined, toolVersion: string | undefined) {
    return { toolId, toolVersion };
  }

  async authorizeUpload(): Promise<UploadDecision> {
    return {};
  }

  authorizeEnv(_jobId: string, _toolId: string | undefined, entries: readonly EnvEntry[]): string[] {
    return envStatements(entries, this.#allowUnsafeEnv);
  }

  async authorizeSubmit(): Promise<void> {
    // everything is allowed
  }
}

/** The lookups the toolbox authorizer needs (implemented by tools/toolbox.ts and tools/tool-files.ts). */
export interface ToolLookup {
  get(id: string, version?: string): ToolDefinition | undefined;
  /** Env entry names that every version of the tool allows. */
  allowedEnv(id: string): ReadonlySet<string>;
}
export interface ToolFileDigests {
  expectedDigest(tool: ToolDefinition, name: string): Promise<string | undefined>;
}

/**
 * Whether a name is one the job script sets itself or uses for its own bookkeeping: never a
 * client's to set, even when an administrator lists it (`allowed_env` or a tool's `<env>`).
 */
export function isServerSetEnv(name: string): boolean {
  return SERVER_SET_ENV.has(name) || name.startsWith('_GALAXY') || name.startsWith('_magnetar') || name.startsWith('BASH_FUNC');
}
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_CONFIG_FILE_BYTES = 1024 * 1024;

/** A toolbox decides: only its tools, their files, and what their validators accept may run. */
export class ToolboxAuthorizer implements Authorizer {
  readonly publicMode = true;
  /** Client-named packages never run on a public server (PROTOCOL §14 item 12). */
  readonly resolvesDependencies = false;
  readonly #tools: ToolLookup;
  readonly #files: ToolFileDigests;
  readonly #allowedSubmitParams: ReadonlySet<string>;
  readonly #allowedEnv: ReadonlySet<string>;
  readonly #log: Logger;

  /** `allowedEnv`: the `allowed_env` option, env entry names any tool's job may carry. */
  constructor(tools: ToolLookup, files: ToolFileDigests, allowedSubmitParams: readonly string[], allowedEnv: readonly string[], log: Logger) {
    this.#tools = tools;
    this.#files = files;
    this.#allowedSubmitParams = new Set(allowedSubmitParams);
    this.#allowedEnv = new Set(allowedEnv);
    this.#log = log.child({ audit: true });
  }

  #deny(jobId: string, toolId: string | undefined, step: string, reason: string): never {
    this.#log.warn({ jobId, toolId, step, decision: 'deny', reason }, 'authorization');
    throw new JobRefused(reason);
  }

  #allow(jobId: string, toolId: string | undefined, step: string, detail?: string): void {
    this.#log.info({ jobId, toolId, step, decision: 'allow', ...(detail === undefined ? {} : { detail }) }, 'authorization');
  }

  #tool(jobId: string, toolId: string | undefined, toolVersion: string | undefined, step: string): ToolDefinition {
    if (toolId === undefined || toolId === '') this.#deny(jobId, toolId, step, 'this server runs only the tools of its toolbox: tool_id is required');
    const tool = this.#tools.get(toolId, toolVersion === '' ? undefined : toolVersion);
    if (tool === undefined) {
      this.#deny(jobId, toolId, step, `tool "${toolId}"${toolVersion ? ` version "${toolVersion}"` : ''} is not in this server's toolbox`);
    }
    if (tool.commandValidator === undefined) {
      this.#deny(jobId, toolId, step, `tool "${toolId}" has no command_validator, so it cannot run on this server`);
    }
    return tool;
  }

  authorizeSetup(jobId: string, toolId: string | undefined, toolVersion: string | undefined, viaSubmit = false) {
    if (viaSubmit) this.#deny(jobId, toolId, 'setup', 'setup inside submit (setup_params) is not available on a public server; call POST /jobs first');
    const tool = this.#tool(jobId, toolId, toolVersion, 'setup');
    this.#allow(jobId, tool.id, 'setup', `version ${tool.version}`);
    return { toolId: tool.id, toolVersion: tool.version };
  }

  async authorizeUpload(jobId: string, toolId: string | undefined, toolVersion: string | undefined, name: string, type: string): Promise<UploadDecision> {
    if (type !== 'tool') return {};
    const tool = this.#tool(jobId, toolId, toolVersion, 'tool file');
    const digest = await this.#files.expectedDigest(tool, name);
    if (digest === undefined) this.#deny(jobId, tool.id, 'tool file', `"${name}" is not a file of tool "${tool.id}"`);
    return { expectedSha256: digest };
  }

  /**
   * Env entries by allow-list (interpreters honour far more variables than any deny-list names):
   * a plain name/value entry whose name the administrator listed in `allowed_env` or in the tool's
   * `<validators><env name=…/>` (in every version of the tool), its value taken literally. HOME and the temporary directories are
   * set again after the entries, whatever they said.
   */
  authorizeEnv(jobId: string, toolId: string | undefined, entries: readonly EnvEntry[]): string[] {
    const perTool = toolId === undefined ? undefined : this.#tools.allowedEnv(toolId);
    for (const entry of entries) {
      if (entry.execute !== undefined || entry.file !== undefined || entry.raw === true) {
        this.#deny(jobId, toolId, 'env', `tool "${toolId}": env entries of kind execute, file or raw are not allowed on this server`);
      }
      const name = entry.name ?? '';
      if (!ENV_NAME.test(name)) this.#deny(jobId, toolId, 'env', `tool "${toolId}": env name ${JSON.stringify(name)} is not a shell variable name`);
      if (!this.#allowedEnv.has(name) && perTool?.has(name) !== true) {
        this.#deny(jobId, toolId, 'env', `tool "${toolId}": env variable ${name} is not allowed on this server (allowed_env, or an <env name="${name}"/> in the tool's <validators>)`);
      }
      if (isServerSetEnv(name)) {
        this.#deny(jobId, toolId, 'env', `tool "${toolId}": env variable ${name} is set by the server for every job and cannot be set by a client`);
      }
    }
    if (entries.length > 0) this.#allow(jobId, toolId, 'env', entries.map((e) => e.name).join(','));
    return [...envStatements(entries, false, true), ...PINNED_AFTER_CLIENT_ENV];
  }

  async authorizeSubmit(facts: SubmitFacts, configsDirectory: string): Promise<void> {
    const { jobId } = facts;
    const tool = this.#tool(jobId, facts.toolId, facts.toolVersion, 'submit');
    const deny: (step: string, reason: string) => never = (step, reason) => this.#deny(jobId, tool.id, step, `tool "${tool.id}": ${reason}`);
    if (facts.remoteStagingSetup > 0) deny('remote_staging', 'server-side staging actions (remote_staging.setup) are not allowed on this server');
    for (const key of Object.keys(facts.submitParams)) {
      if (!this.#allowedSubmitParams.has(key)) deny('submit params', `submit parameter "${key}" is not allowed on this server (allowed_submit_params)`);
    }
    // Config files: each must have its validator and satisfy it (PROTOCOL §14 item 17). What
    // cannot be read cannot be validated: the job is refused (never run unchecked).
    let names: string[];
    try {
      names = await fs.readdir(configsDirectory);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') deny('config file', `the config files cannot be listed (${errorCode(error)})`);
      names = [];
    }
    for (const name of names.sort()) {
      const validator = tool.configfileValidators.get(name);
      if (validator === undefined) deny('config file', `config file "${name}" has no configfile_validator`);
      const full = path.join(configsDirectory, name);
      const st = await fs.lstat(full).catch((error: unknown) => deny('config file', `config file "${name}" cannot be read (${errorCode(error)})`));
      if (!st.isFile()) deny('config file', `config file "${name}" is not a regular file`);
      if (st.size > MAX_CONFIG_FILE_BYTES) deny('config file', `config file "${name}" is larger than ${MAX_CONFIG_FILE_BYTES} bytes`);
      const content = await fs.readFile(full, 'utf8').catch((error: unknown) => deny('config file', `config file "${name}" cannot be read (${errorCode(error)})`));
      const verdict = validator.validate(content, facts.jobDirectory);
      if (!verdict.ok) deny('config file', `configfile_validator "${name}" rejected the file: ${verdict.reason}`);
      this.#allow(jobId, tool.id, 'config file', name);
    }
    const verdict = tool.commandValidator!.validate(facts.commandLine, facts.jobDirectory);
    if (!verdict.ok) deny('command line', `command_validator rejected the command line: ${verdict.reason}`);
    const second = shellSecondOpinion(facts.commandLine);
    if (second !== undefined) deny('command line', `the command line was accepted by its validator but ${second}`);
    if (facts.hasDependencies) this.#log.info({ jobId, toolId: tool.id, step: 'dependencies' }, 'dependencies_description ignored on a public server');
    this.#allow(jobId, tool.id, 'command line');
  }
}

/** The errno code of a file-system error (never its message, which names server paths). */
function errorCode(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : 'unknown error';
}
