import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { CORE_SCHEMA, load } from 'js-yaml';
import { judgeCommandLine } from '../tools/authorizer.js';
import { TOOL_SCRIPT_NAME, defaultWrapper, matchWrapper } from '../tools/galaxy-shapes.js';
import { loadTool, ToolLoadError } from '../tools/toolbox.js';
import type { ToolDefinition, ValidationResult, Validator } from '../tools/types.js';

export const EXIT_OK = 0;
export const EXIT_MISMATCH = 1;
export const EXIT_USAGE = 2;

/** The job directory fixtures are judged against when they do not name one. */
export const DEFAULT_FIXTURE_JOB_DIRECTORY = '/srv/magnetar/staging/42';
const MAX_FIXTURE_BYTES = 1024 * 1024;

export interface ValidateToolOptions {
  readonly tool: string;
  readonly fixtures: string;
  /** Receives each report line (default: stdout). */
  readonly out?: (line: string) => void;
  /** Receives the one-line reason of a usage/load error (default: stderr). */
  readonly err?: (line: string) => void;
}

type Expect = 'accept' | 'reject';

interface Case {
  /** `command`, `galaxy`, or `configfile NAME`. */
  readonly subject: string;
  /** Where the case is in the fixtures file, e.g. `command[2]`. */
  readonly label: string;
  /** The text as written in the fixtures (`$JOB` not substituted), for display. */
  readonly written: string;
  readonly expect: Expect;
  readonly note: string | undefined;
  readonly validator: Validator;
  /** A `galaxy` case's `tool_script`: the body of `tool_script.sh`. */
  readonly toolScript?: string | undefined;
}

/** Galaxy's job id in the default wrapper of a fixture that gives only a `tool_script`. */
const FIXTURE_GALAXY_JOB_ID = '42';

export class FixtureError extends Error {}

export interface FixtureResult {
  readonly subject: string;
  readonly label: string;
  readonly shown: string;
  readonly expect: Expect;
  readonly note: string | undefined;
  readonly verdict: ValidationResult;
}

/** Read a fixtures file and judge every case of it as a public server would; throws `FixtureError`. */
export async function runFixtures(file: string, tool: ToolDefinition): Promise<FixtureResult[]> {
  const { jobDirectory, cases } = await readFixtures(file, tool);
  const results: FixtureResult[] = [];
  for (const c of cases) {
    results.push({ subject: c.subject, label: c.label, shown: show(c), expect: c.expect, note: c.note, verdict: await judge(c, jobDirectory) });
  }
  return results;
}

/** One report line per result, and whether it came out as expected. */
export function reportLine(r: FixtureResult): { readonly line: string; readonly ok: boolean } {
  const prefix = r.subject === 'command' ? '' : `${r.subject}: `;
  const where = `[${r.label}${r.note === undefined ? '' : `: ${r.note}`}]`;
  if (r.verdict.ok && r.expect === 'accept') return { ok: true, line: `ok   accept  ${prefix}${r.shown}` };
  if (!r.verdict.ok && r.expect === 'reject') return { ok: true, line: `ok   reject  ${prefix}${r.shown}  (${oneLine(r.verdict.reason)})` };
  if (r.verdict.ok) return { ok: false, line: `FAIL expected reject, accepted: ${prefix}${r.shown}  ${where}` };
  return { ok: false, line: `FAIL expected accept, rejected: ${prefix}${r.shown}  (${oneLine(r.verdict.reason)})  ${where}` };
}

/**
 * A `galaxy` case, or a `command` line that is one of Galaxy's wrapper shapes, is judged the way
 * the server judges a submit (`judgeCommandLine`): the wrapper, then the script's preamble and its
 * one tool command. Any other case is the legacy form: the validator alone, as ever.
 */
async function judge(c: Case, jobDirectory: string): Promise<ValidationResult> {
  const text = c.written === '' && c.subject === 'galaxy' ? defaultWrapper(jobDirectory, FIXTURE_GALAXY_JOB_ID) : substituteJob(c.written, jobDirectory);
  if (c.subject !== 'galaxy' && (c.subject !== 'command' || matchWrapper(text, jobDirectory) === undefined)) {
    return c.validator.validate(text, jobDirectory);
  }
  const script = c.toolScript === undefined ? undefined : substituteJob(c.toolScript, jobDirectory);
  const verdict = await judgeCommandLine(c.validator, text, jobDirectory, async () => (script === undefined ? { ok: false, reason: `the fixture gives no tool_script (the body of ${TOOL_SCRIPT_NAME})` } : { ok: true, text: script }));
  return verdict.ok ? { ok: true } : { ok: false, reason: verdict.reason };
}

function show(c: Case): string {
  const line = c.written === '' && c.subject === 'galaxy' ? "Galaxy's default wrapper" : display(c.written);
  return c.toolScript === undefined ? line : `${line} + ${TOOL_SCRIPT_NAME} ${JSON.stringify(c.toolScript)}`;
}

/**
 * `magnetar validate-tool TOOL.xml --fixtures FILE.yml`: run a tool's validators over example
 * command lines and config files and compare each verdict with the expected one. In the fixtures,
 * `$JOB` (not followed by a letter, digit or `_`) stands for the job directory. Resolves with the
 * exit code: 0 every case matched, 1 a case did not, 2 usage or load error.
 */
export async function validateTool(options: ValidateToolOptions): Promise<number> {
  const out = options.out ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const err = options.err ?? ((line: string) => void process.stderr.write(`${line}\n`));
  let tool: ToolDefinition;
  try {
    tool = (await loadTool(options.tool, { toolbox: path.resolve(options.tool) })).definition;
  } catch (error) {
    const message = error instanceof ToolLoadError ? `${error.file}: ${error.message}` : describe(error);
    err(`magnetar validate-tool: ${oneLine(message)}`);
    return EXIT_USAGE;
  }
  let results: FixtureResult[];
  try {
    results = await runFixtures(options.fixtures, tool);
  } catch (error) {
    err(`magnetar validate-tool: ${oneLine(describe(error))}`);
    return EXIT_USAGE;
  }
  let failed = 0;
  for (const r of results) {
    const { line, ok } = reportLine(r);
    if (!ok) failed += 1;
    out(line);
  }
  out(`${tool.id} ${tool.version}: ${results.length} case${results.length === 1 ? '' : 's'}, ${failed === 0 ? 'all as expected' : `${failed} failed`}`);
  return failed === 0 ? EXIT_OK : EXIT_MISMATCH;
}

/** Replace `$JOB` (as a whole word) with the job directory. */
export function substituteJob(text: string, jobDirectory: string): string {
  return text.replace(/\$JOB(?![A-Za-z0-9_])/g, () => jobDirectory);
}

async function readFixtures(file: string, tool: ToolDefinition): Promise<{ jobDirectory: string; cases: Case[] }> {
  let text: string;
  try {
    const st = await fs.stat(file);
    if (!st.isFile()) throw new FixtureError(`${file}: not a regular file`);
    if (st.size > MAX_FIXTURE_BYTES) throw new FixtureError(`${file}: larger than ${MAX_FIXTURE_BYTES} bytes`);
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    if (error instanceof FixtureError) throw error;
    throw new FixtureError(`${file}: cannot read: ${describe(error)}`, { cause: error });
  }
  let doc: unknown;
  try {
    // CORE_SCHEMA: plain data only (no timestamps, binary or custom tags).
    doc = load(text.replace(/^\uFEFF/, ''), { schema: CORE_SCHEMA, filename: file });
  } catch (error) {
    throw new FixtureError(`${file}: invalid YAML: ${describe(error)}`, { cause: error });
  }
  const fail: (key: string, message: string) => never = (key, message) => {
    throw new FixtureError(`${file}: ${key}: ${message}`);
  };
  if (!isMapping(doc)) return fail('(top level)', 'expected a mapping with command, galaxy and/or configfiles');
  checkKeys(doc, ['job_directory', 'command', 'galaxy', 'configfiles'], '(top level)', fail);

  let jobDirectory = DEFAULT_FIXTURE_JOB_DIRECTORY;
  if (doc['job_directory'] !== undefined) {
    const raw = doc['job_directory'];
    const trimmed = typeof raw === 'string' ? raw.replace(/(?<=.)\/+$/, '') : '';
    if (!/^(?:\/[A-Za-z0-9._+,@%=:-]+)+$/.test(trimmed) || trimmed.split('/').some((c) => c === '.' || c === '..')) {
      return fail('job_directory', 'expected an absolute path of safe characters ([A-Za-z0-9._+,@%=:-]) without "." or ".." components');
    }
    jobDirectory = trimmed;
  }

  const cases: Case[] = [];
  const readCases = (list: unknown, key: string, textKey: 'line' | 'content', subject: string, validator: Validator): void => {
    // `galaxy` cases: a wrapper line and/or the body of tool_script.sh (at least one of them).
    const galaxy = subject === 'galaxy';
    const shape = galaxy ? '{ line?, tool_script?, expect, note? }' : `{ ${textKey}, expect, note? }`;
    if (!Array.isArray(list)) fail(key, `expected a list of ${shape}`);
    (list as unknown[]).forEach((entry, i) => {
      const label = `${key}[${i}]`;
      if (!isMapping(entry)) fail(label, `expected a mapping ${shape}`);
      checkKeys(entry, galaxy ? ['line', 'tool_script', 'expect', 'note'] : [textKey, 'expect', 'note'], label, fail);
      const toolScript = entry['tool_script'];
      if (toolScript !== undefined && typeof toolScript !== 'string') fail(label, 'tool_script must be a string (quote it, or use a |- block)');
      const written = galaxy && entry['line'] === undefined ? (toolScript === undefined ? undefined : '') : entry[textKey];
      if (typeof written !== 'string') fail(label, galaxy ? 'give line (the command line) and/or tool_script (the body of tool_script.sh), as strings' : `${textKey} must be a string (quote it)`);
      if (galaxy && entry['line'] !== undefined && written === '') fail(label, "line must not be empty (leave it out for Galaxy's default wrapper)");
      const expect = entry['expect'];
      if (expect !== 'accept' && expect !== 'reject') fail(label, 'expect must be accept or reject');
      const note = entry['note'];
      if (note !== undefined && typeof note !== 'string') fail(label, 'note must be a string');
      cases.push({ subject, label, written, expect, note, validator, toolScript });
    });
  };

  for (const key of ['command', 'galaxy'] as const) {
    if (doc[key] === undefined || doc[key] === null) continue;
    const validator = tool.commandValidator;
    if (validator === undefined) fail(key, `tool "${tool.id}" has no command_validator`);
    readCases(doc[key], key, 'line', key, validator);
  }
  const configfiles = doc['configfiles'];
  if (configfiles !== undefined && configfiles !== null) {
    if (!isMapping(configfiles)) fail('configfiles', 'expected a mapping of config file names to lists of cases');
    for (const [name, list] of Object.entries(configfiles)) {
      const validator = tool.configfileValidators.get(name);
      if (validator === undefined) {
        const known = [...tool.configfileValidators.keys()];
        fail(`configfiles.${name}`, `tool "${tool.id}" has no configfile_validator named "${name}"${known.length === 0 ? '' : ` (it has: ${known.join(', ')})`}`);
      }
      readCases(list, `configfiles.${name}`, 'content', `configfile ${name}`, validator);
    }
  }
  if (cases.length === 0) fail('(top level)', 'no cases: add command, galaxy and/or configfiles entries');
  return { jobDirectory, cases };
}

function checkKeys(
  mapping: Record<string, unknown>,
  allowed: readonly string[],
  where: string,
  fail: (key: string, message: string) => never,
): void {
  for (const key of Object.keys(mapping)) {
    if (!allowed.includes(key)) fail(where, `unknown key "${key}" (expected ${allowed.join(', ')})`);
  }
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Show a case on one line: as written, or JSON-quoted when it holds control characters. */
function display(text: string): string {
  return /[\u0000-\u001f\u007f]/.test(text) ? JSON.stringify(text) : text;
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ');
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
