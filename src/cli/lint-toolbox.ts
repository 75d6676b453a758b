import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { ToolFiles } from '../tools/tool-files.js';
import { readToolbox, type LoadedTool } from '../tools/toolbox.js';
import type { XmlElement } from '../tools/types.js';
import { lintValidator } from '../tools/validator.js';
import { reportLine, runFixtures } from './validate-tool.js';

export const EXIT_CLEAN = 0;
export const EXIT_PROBLEMS = 1;
export const EXIT_USAGE = 2;

export interface LintToolboxOptions {
  readonly files: readonly string[];
  /** Receives each finding and the summary (default: stdout). */
  readonly out?: (line: string) => void;
  /** Receives the one-line reason of a usage error (default: stderr). */
  readonly err?: (line: string) => void;
}

interface Finding {
  readonly file: string;
  readonly tool: string | undefined;
  readonly message: string;
}

/**
 * `magnetar lint-toolbox tools.xml [more.xml…]`: everything that would keep a toolbox tool from
 * running safely on a public server — load errors (unknown validator elements, unreadable or
 * missing tool files, duplicate id+version), tools without a command_validator, validator lint
 * warnings, tool wrappers missing from the tool directory, config files without a validator.
 * Resolves with 0 (clean), 1 (findings) or 2 (usage error).
 */
export async function lintToolbox(options: LintToolboxOptions): Promise<number> {
  const out = options.out ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const err = options.err ?? ((line: string) => void process.stderr.write(`${line}\n`));
  if (options.files.length === 0) {
    err('magnetar lint-toolbox: name at least one toolbox file');
    return EXIT_USAGE;
  }
  for (const file of options.files) {
    try {
      const st = await fs.stat(file);
      if (!st.isFile()) throw new Error('not a regular file');
    } catch (error) {
      err(`magnetar lint-toolbox: ${file}: ${error instanceof Error ? error.message : String(error)}`);
      return EXIT_USAGE;
    }
  }
  const { tools, problems } = await readToolbox(options.files);
  const findings: Finding[] = problems.map((p) => ({ file: p.file, tool: p.tool, message: p.message }));
  const toolFiles = new ToolFiles();
  const fixtures = { files: 0, cases: 0 };
  for (const tool of tools) {
    findings.push(...(await lintTool(tool, toolFiles)));
    findings.push(...(await runToolFixtures(tool, fixtures)));
  }
  for (const f of findings) {
    out(`${relative(f.file)}: ${f.tool === undefined ? '' : `${f.tool}: `}${f.message.replace(/\s*\n\s*/g, ' ')}`);
  }
  const count = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;
  if (findings.length === 0) {
    const ran = fixtures.files === 0 ? '' : ` (${count(fixtures.files, 'fixtures file')}, ${count(fixtures.cases, 'case')} as expected)`;
    out(`${count(tools.length, 'tool')} in ${count(options.files.length, 'toolbox file')}: no problems${ran}`);
    return EXIT_CLEAN;
  }
  out(`${count(tools.length, 'tool')} loaded from ${count(options.files.length, 'toolbox file')}: ${count(findings.length, 'problem')}`);
  return EXIT_PROBLEMS;
}

async function lintTool(tool: LoadedTool, toolFiles: ToolFiles): Promise<Finding[]> {
  const { definition, root, validators } = tool;
  const findings: Finding[] = [];
  const add = (message: string): void => void findings.push({ file: definition.toolFile, tool: `${definition.id} ${definition.version}`, message });

  if (validators.command === undefined) {
    add('no <command_validator>: this tool cannot run on a public server');
  } else {
    for (const warning of lintValidator(validators.command, 'command')) add(warning);
  }
  // Warnings name their validator and element (`configfile_validator "x" > regex "…"`).
  for (const element of validators.configfiles.values()) {
    for (const warning of lintValidator(element, 'configfile')) add(warning);
  }

  // Tool wrappers: the job uploads them as tool files, which must exist (byte-identical) here.
  const allValidators = [...(validators.command === undefined ? [] : [validators.command]), ...validators.configfiles.values()];
  const wrappers = new Set(allValidators.flatMap((v) => elementNames(v, 'tool_wrapper')));
  for (const name of [...wrappers].sort()) {
    if ((await toolFiles.expectedDigest(definition, name)) === undefined) {
      add(`missing tool file "${name}" (named by a <tool_wrapper>): no such regular file inside ${definition.toolDirectory}`);
    }
  }

  // Config files: every staged config file needs a configfile_validator of its (staged) name.
  const referenced = new Set(validators.command === undefined ? [] : elementNames(validators.command, 'configfile'));
  for (const name of [...referenced].sort()) {
    if (!validators.configfiles.has(name)) add(`<configfile name="${name}"> in the command_validator has no configfile_validator: jobs staging it are refused`);
  }
  const declared = new Set<string>();
  for (const section of root.children.filter((c) => c.name === 'configfiles')) {
    for (const entry of section.children) {
      if (entry.name !== 'configfile' && entry.name !== 'inputs') continue;
      const filename = entry.attrs['filename'];
      const label = `<${entry.name}${entry.attrs['name'] === undefined ? '' : ` name="${entry.attrs['name']}"`}>`;
      if (filename === undefined || filename === '') {
        add(`${label} has no filename attribute: Galaxy stages it under a random name that no configfile_validator can match`);
        continue;
      }
      declared.add(filename);
      if (!validators.configfiles.has(filename)) add(`${label} is staged as "${filename}" but there is no configfile_validator name="${filename}": jobs are refused`);
    }
  }
  for (const name of validators.configfiles.keys()) {
    if (!declared.has(name)) add(`configfile_validator "${name}" matches no <configfile filename="${name}"> of this tool`);
  }
  return findings;
}

/**
 * A tool's fixtures (`<tool>.fixtures.yml` next to `<tool>.xml`, the `validate-tool` format, Galaxy-
 * shaped cases included), when it has them: every case that does not come out as expected is a problem.
 */
async function runToolFixtures(tool: LoadedTool, totals: { files: number; cases: number }): Promise<Finding[]> {
  const { definition } = tool;
  const file = path.join(path.dirname(definition.toolFile), `${path.basename(definition.toolFile, '.xml')}.fixtures.yml`);
  const st = await fs.stat(file).catch(() => undefined);
  if (st === undefined || !st.isFile() || definition.commandValidator === undefined) return [];
  const finding = (message: string): Finding => ({ file: definition.toolFile, tool: `${definition.id} ${definition.version}`, message: `fixtures ${relative(file)}: ${message}` });
  try {
    const results = await runFixtures(file, definition);
    totals.files += 1;
    totals.cases += results.length;
    return results.map(reportLine).filter((r) => !r.ok).map((r) => finding(r.line));
  } catch (error) {
    return [finding(error instanceof Error ? error.message : String(error))];
  }
}

/** The `name` (attribute, else text) of every `element` below `root`. */
function elementNames(root: XmlElement, element: string): string[] {
  const names: string[] = [];
  const pending: XmlElement[] = [root];
  for (let node = pending.pop(); node !== undefined; node = pending.pop()) {
    for (const child of node.children) {
      if (child.name === element) {
        const name = (child.attrs['name'] ?? child.text).trim();
        if (name !== '') names.push(name);
      }
      pending.push(child);
    }
  }
  return names;
}

function relative(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel !== '' && !rel.startsWith('..') ? rel : file;
}
