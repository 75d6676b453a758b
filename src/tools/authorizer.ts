import { createHash } from 'node:crypto';
import { constants as fsc, type Stats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { JobRefused } from '../errors.js';
import { PINNED_AFTER_CLIENT_ENV, SERVER_SET_ENV, envStatements, type EnvEntry } from '../jobs/script.js';
import type { Logger } from '../log.js';
import { GALAXY_SHELLS, TOOL_SCRIPT_NAME, describeWrapperShapes, isPlainJobDirectory, looksLikeWrapper, matchToolScript, matchWrapper, unvouchedFeature, type ScriptLocation } from './galaxy-shapes.js';
import { shellSecondOpinion } from './shell-check.js';
import type { ToolDefinition, Validator } from './types.js';

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
  /**
   * Public mode: the administrator lists where server-side staging may reach (an endpoint
   * allow-list or copy roots), and how many setup entries write anything but an `input`. Config
   * and tool files are judged where they lie, so a submit that stages them is authorized only
   * once they arrived (`arrived`: the entries stage-in wrote, with their paths; only message-queue
   * submits defer so, see `authorizeStageIn`); without `arrived`, only inputs may be staged.
   */
  readonly staging?: { readonly configured: boolean; readonly nonInputs: number; readonly arrived?: readonly StagedFile[] };
  readonly hasDependencies: boolean;
}

/** A `remote_staging.setup` entry as the authorizer sees it: what it writes (`path` once it was written). */
export interface StagedFile {
  readonly name: string;
  readonly type: string;
  readonly path?: string;
}

type Deny = (step: string, reason: string) => never;

/** How a setup reached the service: `POST /jobs`, `setup_params` in an HTTP submit, or a message-queue setup message. */
export type SetupRoute = 'setup' | 'setup_params' | 'message_queue';

/**
 * What stage-in may write on a public server: the types a client may upload, each judged as its
 * upload would be (tool files hashed, config files and `tool_script.sh` by their validators,
 * inputs and the rest are data the command line names), but only once it arrived.
 */
const PUBLIC_STAGED_TYPES: ReadonlySet<string> = new Set(['input', 'unstructured', 'config', 'tool', 'jobdir', 'workdir', 'metadata']);
/**
 * File types that land where the tool's command runs or starts (its working directory, the job
 * directory): on a public server only Galaxy's `tool_script.sh` may go there. Any other name could
 * be read by an approved program as its own startup file (`.Rprofile`, `.Renviron`, `.condarc`,
 * `pyvenv.cfg`, …) and run code no validator saw.
 */
const SCRIPT_ONLY_TYPES: ReadonlySet<string> = new Set(['workdir', 'jobdir']);

/** Why a public server refuses a `workdir`/`jobdir` file of this name, or undefined. */
function scriptOnlyRefusal(name: string, type: string): string | undefined {
  if (!SCRIPT_ONLY_TYPES.has(type) || name === TOOL_SCRIPT_NAME) return undefined;
  return `a ${type} file may only be ${TOOL_SCRIPT_NAME} on this server, not ${JSON.stringify(name.slice(0, 80))} (a file where the tool runs could be read as its startup file)`;
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
   * `route` says how the setup came (default `setup`, HTTP's `POST /jobs`).
   */
  authorizeSetup(jobId: string, toolId: string | undefined, toolVersion: string | undefined, route?: SetupRoute): { toolId: string | undefined; toolVersion: string | undefined };
  authorizeUpload(jobId: string, toolId: string | undefined, toolVersion: string | undefined, name: string, type: string): Promise<UploadDecision>;
  /** Rendered env statements for the job script, or a refusal. */
  authorizeEnv(jobId: string, toolId: string | undefined, entries: readonly EnvEntry[]): string[];
  /** Command line, config files (read from `configsDirectory`), submit params, staging. */
  authorizeSubmit(facts: SubmitFacts, configsDirectory: string): Promise<void>;
  /**
   * A submit whose stage-in writes more than inputs (a message-queue submit), before anything is
   * fetched: everything that does not depend on the files still to arrive (the tool, submit
   * params, staging allowed, each entry's type, tool file names, a command line that reads no
   * script). `authorizeSubmit` with `staging.arrived` judges the rest once they arrived.
   */
  authorizeStageIn(facts: SubmitFacts, entries: readonly StagedFile[]): Promise<void>;
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

  async authorizeStageIn(): Promise<void> {
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
/** A `tool_script.sh` is one tool command after a short preamble: the default `max_command_line_size`. */
export const MAX_TOOL_SCRIPT_BYTES = 8 * 1024 * 1024;

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

  authorizeSetup(jobId: string, toolId: string | undefined, toolVersion: string | undefined, route: SetupRoute = 'setup') {
    // Over HTTP a public server assigns the job id (a uuid) at POST /jobs; a message-queue client
    // never learns an assigned id, so its setup message keeps Galaxy's (the broker's ACLs decide
    // who may publish it) and is otherwise authorized exactly as POST /jobs.
    if (route === 'setup_params') this.#deny(jobId, toolId, 'setup', 'setup inside submit (setup_params) is not available on a public server; call POST /jobs first');
    const tool = this.#tool(jobId, toolId, toolVersion, 'setup');
    this.#allow(jobId, tool.id, 'setup', `version ${tool.version}${route === 'message_queue' ? ', message-queue setup' : ''}`);
    return { toolId: tool.id, toolVersion: tool.version };
  }

  async authorizeUpload(jobId: string, toolId: string | undefined, toolVersion: string | undefined, name: string, type: string): Promise<UploadDecision> {
    const refusal = scriptOnlyRefusal(name, type);
    if (refusal !== undefined) this.#deny(jobId, toolId, 'upload', `tool "${toolId}": ${refusal}`);
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

  /** The refusal function of a submit's steps (every reason names the tool). */
  #denier(jobId: string, toolId: string): Deny {
    return (step, reason) => this.#deny(jobId, toolId, step, `tool "${toolId}": ${reason}`);
  }

  /** Server-side staging at all: only where the administrator listed endpoints or copy roots. */
  #authorizeStagingAllowed(facts: SubmitFacts, deny: Deny): void {
    if (facts.remoteStagingSetup > 0 && facts.staging?.configured !== true) {
      deny('remote_staging', 'server-side staging actions (remote_staging.setup) are not allowed on this server');
    }
  }

  #authorizeSubmitParams(facts: SubmitFacts, deny: Deny): void {
    for (const key of Object.keys(facts.submitParams)) {
      if (!this.#allowedSubmitParams.has(key)) deny('submit params', `submit parameter "${key}" is not allowed on this server (allowed_submit_params)`);
    }
  }

  async authorizeStageIn(facts: SubmitFacts, entries: readonly StagedFile[]): Promise<void> {
    const { jobId } = facts;
    const tool = this.#tool(jobId, facts.toolId, facts.toolVersion, 'remote_staging');
    const deny: Deny = this.#denier(jobId, tool.id);
    this.#authorizeStagingAllowed(facts, deny);
    this.#authorizeSubmitParams(facts, deny);
    for (const entry of entries) {
      if (!PUBLIC_STAGED_TYPES.has(entry.type)) deny('remote_staging', `server-side staging may not write files of type "${entry.type.slice(0, 40)}" on this server`);
      const refusal = scriptOnlyRefusal(entry.name, entry.type);
      if (refusal !== undefined) deny('remote_staging', refusal);
      // The bytes are hashed once they arrived; a name that is no file of the tool is refused now.
      if (entry.type === 'tool' && (await this.#files.expectedDigest(tool, entry.name)) === undefined) {
        deny('tool file', `"${entry.name}" is not a file of tool "${tool.id}"`);
      }
    }
    // A command line that reads no script (the legacy form, shell: none, or no shape at all) is
    // judged now; one that runs tool_script.sh is judged with the script, once it arrived.
    const wrapper = matchWrapper(facts.commandLine, facts.jobDirectory);
    if (wrapper === undefined || wrapper.kind === 'inline') await this.#authorizeCommandLine(tool, facts, deny);
    this.#allow(jobId, tool.id, 'remote_staging', `${entries.length} entries; config files, tool files and the command line judged once they arrived`);
  }

  async authorizeSubmit(facts: SubmitFacts, configsDirectory: string): Promise<void> {
    const { jobId } = facts;
    const tool = this.#tool(jobId, facts.toolId, facts.toolVersion, 'submit');
    const deny: Deny = this.#denier(jobId, tool.id);
    this.#authorizeStagingAllowed(facts, deny);
    if (facts.remoteStagingSetup > 0) {
      const arrived = facts.staging?.arrived;
      if (arrived === undefined && (facts.staging?.nonInputs ?? 0) > 0) deny('remote_staging', 'server-side staging (remote_staging.setup) may only write inputs on this server');
      for (const file of arrived ?? []) {
        if (file.type === 'tool' && file.path !== undefined) await this.#authorizeStagedToolFile(jobId, tool, file.name, file.path, deny);
      }
      this.#allow(jobId, tool.id, 'remote_staging', String(facts.remoteStagingSetup));
    }
    this.#authorizeSubmitParams(facts, deny);
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
      const full = path.join(configsDirectory, name);
      if (validator === undefined && name === TOOL_SCRIPT_NAME) {
        // Galaxy sends its tool script as a config file too (pulsar.py: config_files.append(tool_script)).
        // That copy never runs, but it is held to the script's own rule: a preamble and one accepted command.
        await this.#authorizeToolScript(tool, facts.jobDirectory, full, 'config file', deny);
        this.#allow(jobId, tool.id, 'config file', name);
        continue;
      }
      if (validator === undefined) deny('config file', `config file "${name}" has no configfile_validator`);
      const st = await fs.lstat(full).catch((error: unknown) => deny('config file', `config file "${name}" cannot be read (${errorCode(error)})`));
      if (!st.isFile()) deny('config file', `config file "${name}" is not a regular file`);
      if (st.size > MAX_CONFIG_FILE_BYTES) deny('config file', `config file "${name}" is larger than ${MAX_CONFIG_FILE_BYTES} bytes`);
      const content = await fs.readFile(full, 'utf8').catch((error: unknown) => deny('config file', `config file "${name}" cannot be read (${errorCode(error)})`));
      const verdict = validator.validate(content, facts.jobDirectory);
      if (!verdict.ok) deny('config file', `configfile_validator "${name}" rejected the file: ${verdict.reason}`);
      this.#allow(jobId, tool.id, 'config file', name);
    }
    const detail = await this.#authorizeCommandLine(tool, facts, deny);
    if (facts.hasDependencies) this.#log.info({ jobId, toolId: tool.id, step: 'dependencies' }, 'dependencies_description ignored on a public server');
    this.#allow(jobId, tool.id, 'command line', detail);
  }

  /**
   * A tool file stage-in wrote: byte-identical to the toolbox copy of that name, as an upload must
   * be. Read once, as a regular file opened without following a link.
   */
  async #authorizeStagedToolFile(jobId: string, tool: ToolDefinition, name: string, file: string, deny: Deny): Promise<void> {
    const expected = await this.#files.expectedDigest(tool, name);
    if (expected === undefined) deny('tool file', `"${name}" is not a file of tool "${tool.id}"`);
    const actual = await sha256OfJobFile(file).catch((error: unknown) => deny('tool file', `tool file "${name}" cannot be read (${errorCode(error)})`));
    if (actual !== expected) deny('tool file', `"${name}" differs from the toolbox's copy of this tool file`);
    this.#allow(jobId, tool.id, 'tool file', `${name} (staged)`);
  }

  /** The command line (see `judgeCommandLine`); resolves with its shape, for the audit log. */
  async #authorizeCommandLine(tool: ToolDefinition, facts: SubmitFacts, deny: (step: string, reason: string) => never): Promise<string> {
    const { jobDirectory } = facts;
    const verdict = await judgeCommandLine(tool.commandValidator!, facts.commandLine, jobDirectory, async (location) => readToolScript(jobDirectory, path.join(jobDirectory, location)));
    if (!verdict.ok) deny(verdict.step, verdict.reason);
    return verdict.detail;
  }

  /** Judge a copy of `tool_script.sh` that does not run (read once, never through a link). */
  async #authorizeToolScript(
    tool: ToolDefinition,
    jobDirectory: string,
    file: string,
    step: string,
    deny: (step: string, reason: string) => never,
  ): Promise<void> {
    const where = path.relative(jobDirectory, file);
    const read = await readToolScript(jobDirectory, file);
    if (!read.ok) deny(step, `${where}: ${read.reason}`);
    const verdict = judgeToolScript(tool.commandValidator!, read.text, undefined, jobDirectory, where);
    if (!verdict.ok) deny(step, verdict.reason);
  }
}

export type CommandVerdict =
  | { readonly ok: true; readonly detail: string }
  | { readonly ok: false; readonly step: string; readonly reason: string };

/**
 * A public server's decision on a command line, shared with `magnetar validate-tool`: one of
 * Galaxy's wrapper shapes for this job (GALAXY-JOBS.md) whose tool command — in `tool_script.sh`
 * (read through `readScript`), or inline for `shell: none` — the tool's validator accepts; or, the
 * legacy form, a tool command the validator accepts sent as the whole command line.
 */
export async function judgeCommandLine(
  validator: Validator,
  commandLine: string,
  jobDirectory: string,
  readScript: (location: ScriptLocation) => Promise<ReadResult>,
): Promise<CommandVerdict> {
  const refuse = (reason: string, step = 'command line'): CommandVerdict => ({ ok: false, step, reason });
  const wrapper = matchWrapper(commandLine, jobDirectory);
  if (wrapper === undefined) {
    const verdict = validator.validate(commandLine, jobDirectory);
    if (!verdict.ok) {
      const feature = unvouchedFeature(commandLine);
      if (feature !== undefined) return refuse(feature);
      if (looksLikeWrapper(commandLine) && !isPlainJobDirectory(jobDirectory)) {
        return refuse("Galaxy's wrapper shapes need a job directory Galaxy can write unquoted: the server's staging_directory has a character outside [A-Za-z0-9._+,@%=:/-]");
      }
      if (looksLikeWrapper(commandLine)) {
        return refuse(`the command line is not one of Galaxy's wrapper shapes for this job (${describeWrapperShapes()}), and command_validator rejected it as a tool command: ${verdict.reason}`);
      }
      return refuse(`command_validator rejected the command line: ${verdict.reason}`);
    }
    const second = shellSecondOpinion(commandLine);
    if (second !== undefined) return refuse(`the command line was accepted by its validator but ${second}`);
    return { ok: true, detail: 'tool command sent directly' };
  }
  if (wrapper.kind === 'inline') {
    const problem = judgeToolCommand(validator, wrapper.toolCommand, jobDirectory, "the tool command before Galaxy's tail (shell: none)");
    if (problem === undefined) return { ok: true, detail: `Galaxy wrapper: ${wrapper.shape.name}` };
    // What precedes the tail runs a script: a wrapper with another script path or interpreter, not `shell: none`.
    if (unvouchedFeature(wrapper.toolCommand) === undefined && runsScript(wrapper.toolCommand)) {
      return refuse(`the command line is not one of Galaxy's wrapper shapes for this job (${describeWrapperShapes()}): ${problem}`);
    }
    return refuse(problem);
  }
  const read = await readScript(wrapper.script);
  if (!read.ok) return refuse(`${wrapper.script}: ${read.reason}`, 'tool script');
  const script = judgeToolScript(validator, read.text, wrapper.shell, jobDirectory, wrapper.script);
  if (!script.ok) return refuse(script.reason, 'tool script');
  return { ok: true, detail: `Galaxy wrapper: ${wrapper.shape.name}, ${wrapper.shell}; ${script.preamble}` };
}

/** A `tool_script.sh`: Galaxy's preamble for `shell` (any when undefined), then one accepted tool command. */
export function judgeToolScript(
  validator: Validator,
  text: string,
  shell: string | undefined,
  jobDirectory: string,
  where: string,
): { readonly ok: true; readonly preamble: string } | { readonly ok: false; readonly reason: string } {
  const script = matchToolScript(text, shell);
  if (!script.ok) return { ok: false, reason: `${where}: ${unvouchedFeature(text) ?? script.reason}` };
  const problem = judgeToolCommand(validator, script.toolCommand, jobDirectory, `the tool command in ${where}`);
  return problem === undefined ? { ok: true, preamble: script.preamble.name } : { ok: false, reason: problem };
}

/** Whether a command runs a script the way Galaxy's wrapper runs tool_script.sh. */
function runsScript(command: string): boolean {
  return command.includes(TOOL_SCRIPT_NAME) || GALAXY_SHELLS.some((shell) => command.startsWith(`${shell} `));
}

/** Why a tool command found in a Galaxy shape is refused, or undefined when it may run. */
function judgeToolCommand(validator: Validator, command: string, jobDirectory: string, what: string): string | undefined {
  const verdict = validator.validate(command, jobDirectory);
  if (!verdict.ok) return unvouchedFeature(command) ?? `command_validator rejected ${what}: ${verdict.reason}`;
  const second = shellSecondOpinion(command);
  if (second !== undefined) return `${what} was accepted by its validator but ${second}`;
  // bash reads a script as it runs it: a tool that wrote over tool_script.sh would choose what runs next.
  if (command.includes(TOOL_SCRIPT_NAME)) return `${what} names ${TOOL_SCRIPT_NAME}, the script that runs it`;
  return undefined;
}

export type ReadResult = { readonly ok: true; readonly text: string } | { readonly ok: false; readonly reason: string };

/**
 * Read a tool script of the job: a regular file (lstat, then opened with O_NOFOLLOW and checked to
 * be that same file), directly in the job directory or in a real `working/` directory, at most
 * `MAX_TOOL_SCRIPT_BYTES`, valid UTF-8 — the bytes judged are the bytes bash will read.
 */
async function readToolScript(jobDirectory: string, file: string): Promise<ReadResult> {
  const parent = path.dirname(file);
  if (parent !== jobDirectory) {
    const dir = await fs.lstat(parent).catch(() => undefined);
    if (dir === undefined || !dir.isDirectory()) return { ok: false, reason: `${path.relative(jobDirectory, parent)} is not a directory of the job` };
  }
  let st: Stats;
  try {
    st = await fs.lstat(file);
  } catch (error) {
    const code = errorCode(error);
    return { ok: false, reason: code === 'ENOENT' ? 'no such file: Galaxy uploads it before submit (type=jobdir or workdir, name tool_script.sh)' : `cannot be read (${code})` };
  }
  if (st.isSymbolicLink()) return { ok: false, reason: 'is a symbolic link' };
  if (!st.isFile()) return { ok: false, reason: 'is not a regular file' };
  if (st.size > MAX_TOOL_SCRIPT_BYTES) return { ok: false, reason: `is larger than ${MAX_TOOL_SCRIPT_BYTES} bytes` };
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (error) {
    return { ok: false, reason: `cannot be read (${errorCode(error)})` };
  }
  try {
    const opened = await handle.stat();
    if (!opened.isFile() || opened.ino !== st.ino || opened.dev !== st.dev) return { ok: false, reason: 'changed while it was read' };
    // One byte more than allowed: a file that grew past the bound is refused, never cut short.
    const buffer = Buffer.alloc(Math.min(MAX_TOOL_SCRIPT_BYTES, opened.size) + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length === buffer.length) return { ok: false, reason: length > MAX_TOOL_SCRIPT_BYTES ? `is larger than ${MAX_TOOL_SCRIPT_BYTES} bytes` : 'changed while it was read' };
    }
    const bytes = buffer.subarray(0, length);
    if (bytes.includes(0)) return { ok: false, reason: 'contains a NUL byte' };
    try {
      return { ok: true, text: new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes) };
    } catch {
      return { ok: false, reason: 'is not valid UTF-8' };
    }
  } catch (error) {
    return { ok: false, reason: `cannot be read (${errorCode(error)})` };
  } finally {
    await handle.close();
  }
}

/** SHA-256 (hex) of a file stage-in wrote: a regular file, opened without following a link. */
async function sha256OfJobFile(file: string): Promise<string> {
  const handle = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  try {
    if (!(await handle.stat()).isFile()) throw Object.assign(new Error('not a regular file'), { code: 'not a regular file' });
    const hash = createHash('sha256');
    for await (const chunk of handle.createReadStream({ autoClose: false })) hash.update(chunk as Buffer);
    return hash.digest('hex');
  } finally {
    await handle.close();
  }
}

/** The errno code of a file-system error (never its message, which names server paths). */
function errorCode(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : 'unknown error';
}
