import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { ToolDefinition, Validator, XmlElement } from './types.js';
import { compileValidator, ValidatorLoadError } from './validator.js';
import { parseXmlFile, XmlParseError } from './xml.js';

/** Something in a toolbox that could not be loaded; the caller decides whether startup fails. */
export interface ToolboxProblem {
  /** The toolbox file, or the tool XML the problem is about. */
  readonly file: string;
  /**
   * Set for problems about one tool (that tool is left out): its id (a tool-shed tool's guid), or
   * the entry's `file` attribute when the XML gives no usable id. Unset: the toolbox file itself.
   */
  readonly tool?: string;
  readonly message: string;
}

/** A tool XML that cannot be used (the tool is left out of the toolbox). */
export class ToolLoadError extends Error {
  readonly file: string;
  readonly tool: string | undefined;
  constructor(file: string, tool: string | undefined, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ToolLoadError';
    this.file = file;
    this.tool = tool;
  }
}

/** The uncompiled `<validators>` section of a tool XML. */
export interface ValidatorSources {
  readonly command: XmlElement | undefined;
  /** `<configfile_validator name=…>` elements by name. */
  readonly configfiles: ReadonlyMap<string, XmlElement>;
  /** `<env name=…/>`: env entry names a client may send for this tool. */
  readonly env: ReadonlySet<string>;
}

/** A tool as loaded, with the XML it came from (for `lint-toolbox`). */
export interface LoadedTool {
  readonly definition: ToolDefinition;
  readonly root: XmlElement;
  readonly validators: ValidatorSources;
}

/** How a toolbox entry names a tool. */
export interface ToolEntry {
  /** The toolbox file declaring the tool. */
  readonly toolbox: string;
  /** Tool-shed tools: the guid, which is their id. */
  readonly guid?: string;
  /** Tool-shed tools: the `<version>` child of the entry, when given. */
  readonly version?: string;
}

const DEFAULT_VERSION = '1.0.0';

/** The tools a server may run, by id and version. */
export class Toolbox {
  /** Per id, newest version first. */
  readonly #byId = new Map<string, ToolDefinition[]>();
  readonly #all: ToolDefinition[] = [];

  constructor(tools: readonly ToolDefinition[]) {
    for (const tool of tools) {
      const list = this.#byId.get(tool.id) ?? [];
      if (list.some((t) => t.version === tool.version)) continue;
      list.push(tool);
      list.sort((a, b) => compareVersions(b.version, a.version));
      this.#byId.set(tool.id, list);
      this.#all.push(tool);
    }
  }

  /** The tool with this id and exactly this version; without a version (or ''), its newest version. */
  get(id: string, version?: string): ToolDefinition | undefined {
    const list = this.#byId.get(id);
    if (list === undefined) return undefined;
    if (version === undefined || version === '') return list[0];
    return list.find((t) => t.version === version);
  }

  /**
   * Env entry names every version of the tool lists (`<env name=…/>`): the authorizer is asked about
   * env by tool id only, so a name counts only when no version of the tool leaves it out.
   */
  allowedEnv(id: string): ReadonlySet<string> {
    const [first, ...others] = this.#byId.get(id) ?? [];
    if (first === undefined) return new Set();
    return new Set([...first.allowedEnv].filter((name) => others.every((t) => t.allowedEnv.has(name))));
  }

  /** Every tool, in toolbox order. */
  tools(): ToolDefinition[] {
    return [...this.#all];
  }
}

/**
 * Load Galaxy toolbox files (`tool_conf.xml` / `shed_tool_conf.xml` form). A relative `tool_path`
 * is resolved against the toolbox file's directory (not the process's cwd); without `tool_path`
 * the toolbox file's directory is used. Tools that fail to load are left out and reported.
 */
export async function loadToolbox(files: readonly string[]): Promise<{ toolbox: Toolbox; problems: ToolboxProblem[] }> {
  const { tools, problems } = await readToolbox(files);
  return { toolbox: new Toolbox(tools.map((t) => t.definition)), problems };
}

/** `loadToolbox` with the XML of every loaded tool; duplicate id+version pairs are reported and dropped. */
export async function readToolbox(files: readonly string[]): Promise<{ tools: LoadedTool[]; problems: ToolboxProblem[] }> {
  const tools: LoadedTool[] = [];
  const problems: ToolboxProblem[] = [];
  const seen = new Map<string, LoadedTool>();
  for (const file of files) {
    const toolboxFile = path.resolve(file);
    for (const entry of await toolboxEntries(toolboxFile, problems)) {
      let tool: LoadedTool;
      try {
        tool = await loadTool(entry.toolFile, entry.entry);
      } catch (error) {
        problems.push(toProblem(error, entry.toolFile, entry.entry.guid ?? entry.fileAttr));
        continue;
      }
      const { id, version } = tool.definition;
      const key = `${id}\0${version}`;
      const first = seen.get(key);
      if (first !== undefined) {
        problems.push({
          file: tool.definition.toolFile,
          tool: id,
          message: `duplicate tool id "${id}" version "${version}" (first declared by ${first.definition.toolFile} in ${first.definition.toolbox}); this one is ignored`,
        });
        continue;
      }
      seen.set(key, tool);
      tools.push(tool);
    }
  }
  return { tools, problems };
}

interface EntryRef {
  readonly toolFile: string;
  /** The `file` attribute as written. */
  readonly fileAttr: string;
  readonly entry: ToolEntry;
}

async function toolboxEntries(toolboxFile: string, problems: ToolboxProblem[]): Promise<EntryRef[]> {
  let root: XmlElement;
  try {
    root = await parseXmlFile(toolboxFile);
  } catch (error) {
    problems.push({ file: toolboxFile, message: error instanceof XmlParseError ? error.reason : `cannot load: ${describe(error)}` });
    return [];
  }
  if (root.name !== 'toolbox') {
    problems.push({ file: toolboxFile, message: `not a toolbox file: the root element is <${root.name}>, expected <toolbox>` });
    return [];
  }
  const base = path.dirname(toolboxFile);
  const toolPathAttr = root.attrs['tool_path'];
  const toolPath = toolPathAttr === undefined || toolPathAttr.trim() === '' ? base : path.resolve(base, toolPathAttr.trim());
  const refs: EntryRef[] = [];
  const visit = (element: XmlElement, inSection: boolean): void => {
    for (const child of element.children) {
      if (child.name === 'tool') {
        const ref = toolEntry(child, toolboxFile, toolPath, problems);
        if (ref !== undefined) refs.push(ref);
      } else if (child.name === 'section' && !inSection) {
        visit(child, true);
      } else if (child.name === 'label') {
        // panel decoration only
      } else {
        problems.push({
          file: toolboxFile,
          message: `<${child.name}>${inSection ? ' inside a <section>' : ''} is not supported in a toolbox file (list each tool with <tool file="…"/>); ignored`,
        });
      }
    }
  };
  visit(root, false);
  return refs;
}

function toolEntry(element: XmlElement, toolboxFile: string, toolPath: string, problems: ToolboxProblem[]): EntryRef | undefined {
  const file = element.attrs['file']?.trim();
  const guid = element.attrs['guid']?.trim();
  if (file === undefined || file === '') {
    problems.push({ file: toolboxFile, ...(guid ? { tool: guid } : {}), message: '<tool> without a file attribute; skipped' });
    return undefined;
  }
  const toolFile = path.resolve(toolPath, file);
  if (guid === undefined || guid === '') return { toolFile, fileAttr: file, entry: { toolbox: toolboxFile } };
  let version: string | undefined;
  // The other children (tool_shed, repository_name, …) describe the repository; they are not used.
  for (const child of element.children) {
    if (child.name === 'version' && child.text.trim() !== '') version = child.text.trim();
  }
  return { toolFile, fileAttr: file, entry: { toolbox: toolboxFile, guid, ...(version === undefined ? {} : { version }) } };
}

/**
 * Load one tool XML: id (a tool-shed tool's guid, else the root `id`), version (the tool-shed
 * entry's `<version>`, else the root `version`, default 1.0.0), real tool directory, and compiled
 * validators. Throws `ToolLoadError` naming the file and the reason.
 */
export async function loadTool(toolFile: string, entry: ToolEntry): Promise<LoadedTool> {
  const file = path.resolve(toolFile);
  const fail = (tool: string | undefined, message: string, cause?: unknown): never => {
    throw new ToolLoadError(file, tool, message, cause === undefined ? undefined : { cause });
  };
  let root: XmlElement;
  try {
    root = await parseXmlFile(file);
  } catch (error) {
    return fail(entry.guid, error instanceof XmlParseError ? error.reason : `cannot load: ${describe(error)}`, error);
  }
  if (root.name !== 'tool') return fail(entry.guid, `not a Galaxy tool: the root element is <${root.name}>, expected <tool>`);
  let toolDirectory: string;
  try {
    toolDirectory = await fs.realpath(path.dirname(file));
  } catch (error) {
    return fail(entry.guid, `cannot resolve the tool directory: ${describe(error)}`, error);
  }
  let id = entry.guid;
  if (id === undefined) {
    const raw = root.attrs['id']?.trim() ?? '';
    id = raw.includes('@') ? await expandTokens(raw, root, toolDirectory, file) : raw;
    if (id === '') return fail(undefined, 'the tool has no id attribute');
  }
  let version = entry.version;
  if (version === undefined) {
    const raw = root.attrs['version']?.trim() ?? '';
    version = raw === '' ? DEFAULT_VERSION : raw.includes('@') ? await expandTokens(raw, root, toolDirectory, file, id) : raw;
  }
  const validators = findValidators(root, file, id);
  let commandValidator: Validator | undefined;
  const configfileValidators = new Map<string, Validator>();
  try {
    if (validators.command !== undefined) commandValidator = compileValidator(validators.command, 'command');
  } catch (error) {
    return fail(id, validatorError(error, 'command_validator'), error);
  }
  for (const [name, element] of validators.configfiles) {
    try {
      configfileValidators.set(name, compileValidator(element, 'configfile'));
    } catch (error) {
      return fail(id, validatorError(error, `configfile_validator "${name}"`), error);
    }
  }
  const definition: ToolDefinition = Object.freeze({
    id,
    version,
    toolFile: file,
    toolDirectory,
    toolbox: entry.toolbox,
    commandValidator,
    configfileValidators,
    allowedEnv: validators.env,
  });
  return Object.freeze({ definition, root, validators });
}

/**
 * The `<validators>` section of a tool, checked for shape: at most one `<validators>`, at most
 * one `<command_validator>`, `<configfile_validator>`s with unique non-empty names, empty
 * `<env name="NAME"/>` elements naming shell variables, nothing else.
 */
export function findValidators(root: XmlElement, file: string, tool?: string): ValidatorSources {
  const fail = (message: string): never => {
    throw new ToolLoadError(file, tool, message);
  };
  const sections = root.children.filter((c) => c.name === 'validators');
  if (sections.length > 1) fail('more than one <validators> element');
  const section = sections[0];
  let command: XmlElement | undefined;
  const configfiles = new Map<string, XmlElement>();
  const env = new Set<string>();
  if (section === undefined) return { command, configfiles, env };
  const attrs = Object.keys(section.attrs);
  if (attrs.length > 0) fail(`<validators> takes no attributes (found ${attrs.join(', ')})`);
  for (const child of section.children) {
    if (child.name === 'command_validator') {
      if (command !== undefined) fail('more than one <command_validator>');
      command = child;
    } else if (child.name === 'configfile_validator') {
      const name = child.attrs['name'] ?? '';
      if (name === '') fail('<configfile_validator> without a name attribute');
      if (configfiles.has(name)) fail(`duplicate <configfile_validator name="${name}">`);
      configfiles.set(name, child);
    } else if (child.name === 'env') {
      const name = child.attrs['name'] ?? '';
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) fail(`<env name="${name}"> does not name a shell variable`);
      const extra = Object.keys(child.attrs).filter((a) => a !== 'name');
      if (extra.length > 0 || child.children.length > 0 || child.text.trim() !== '') fail(`<env name="${name}"> takes only a name attribute`);
      env.add(name);
    } else {
      fail(`unknown element <${child.name}> in <validators> (expected command_validator, configfile_validator or env)`);
    }
  }
  if (section.text.trim() !== '') fail('<validators> contains text outside its validators');
  return { command, configfiles, env };
}

/**
 * Galaxy tools often spell their version with macro tokens (`version="@TOOL_VERSION@+galaxy0"`);
 * expand tokens defined in the tool's `<macros>` and in macro files it imports (from its directory).
 */
async function expandTokens(value: string, root: XmlElement, toolDirectory: string, file: string, tool?: string): Promise<string> {
  const tokens = new Map<string, string>();
  const collect = (macros: XmlElement): string[] => {
    const imports: string[] = [];
    for (const child of macros.children) {
      if (child.name === 'token' && child.attrs['name'] !== undefined) tokens.set(child.attrs['name'], child.text);
      if (child.name === 'import') imports.push(child.text.trim());
    }
    return imports;
  };
  for (const macros of root.children.filter((c) => c.name === 'macros')) {
    for (const name of collect(macros)) {
      if (name === '' || path.isAbsolute(name) || name.split(/[\\/]/).includes('..')) continue;
      try {
        const imported = await parseXmlFile(path.join(toolDirectory, name));
        if (imported.name === 'macros') collect(imported);
      } catch (error) {
        throw new ToolLoadError(file, tool, `cannot read imported macros "${name}": ${describe(error)}`, { cause: error });
      }
    }
  }
  const expanded = value.replace(/@[A-Za-z0-9_]+@/g, (token) => tokens.get(token) ?? token);
  const left = /@[A-Za-z0-9_]+@/.exec(expanded);
  if (left !== null) throw new ToolLoadError(file, tool, `undefined macro token ${left[0]} in "${value}"`);
  return expanded.trim();
}

/**
 * Compare two tool versions: runs of digits compare numerically, runs of letters as words
 * (`dev` < `a`/`alpha` < `b`/`beta` < `rc`/`c`/`pre` < any other word < any number), so
 * `1.10` > `1.9`, `1.0+galaxy2` > `1.0+galaxy1` > `1.0` > `1.0rc1`.
 */
export function compareVersions(a: string, b: string): number {
  const ta = versionTokens(a);
  const tb = versionTokens(b);
  const n = Math.min(ta.length, tb.length);
  for (let i = 0; i < n; i++) {
    const c = compareTokens(ta[i]!, tb[i]!);
    if (c !== 0) return c;
  }
  if (ta.length !== tb.length) {
    const longer = ta.length > tb.length ? ta : tb;
    const sign = ta.length > tb.length ? 1 : -1;
    const next = longer[n]!;
    return typeof next === 'string' && wordRank(next) < OTHER_WORD ? -sign : sign;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

const OTHER_WORD = 4;
function wordRank(word: string): number {
  if (word === 'dev') return 0;
  if (word === 'a' || word === 'alpha') return 1;
  if (word === 'b' || word === 'beta') return 2;
  if (word === 'rc' || word === 'c' || word === 'pre' || word === 'preview') return 3;
  return OTHER_WORD;
}

type VersionToken = string | { readonly digits: string };

function versionTokens(version: string): VersionToken[] {
  return (version.toLowerCase().match(/\d+|[a-z]+/g) ?? []).map((t) => (/^\d/.test(t) ? { digits: t.replace(/^0+(?=\d)/, '') } : t));
}

function compareTokens(a: VersionToken, b: VersionToken): number {
  if (typeof a !== 'string' && typeof b !== 'string') {
    if (a.digits.length !== b.digits.length) return a.digits.length < b.digits.length ? -1 : 1;
    return a.digits < b.digits ? -1 : a.digits > b.digits ? 1 : 0;
  }
  if (typeof a !== 'string') return 1;
  if (typeof b !== 'string') return -1;
  const ra = wordRank(a);
  const rb = wordRank(b);
  if (ra !== rb) return ra < rb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

function toProblem(error: unknown, file: string, fallbackTool: string): ToolboxProblem {
  if (error instanceof ToolLoadError) return { file: error.file, tool: error.tool ?? fallbackTool, message: error.message };
  if (error instanceof ValidatorLoadError) return { file, tool: fallbackTool, message: error.message };
  return { file, tool: fallbackTool, message: `cannot load: ${describe(error)}` };
}

/** A ValidatorLoadError already names the validator and element; anything else gets `where`. */
function validatorError(error: unknown, where: string): string {
  return error instanceof ValidatorLoadError ? error.message : `${where}: ${describe(error)}`;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
