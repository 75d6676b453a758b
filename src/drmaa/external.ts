import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { templateSchema, type TemplateMessage } from './protocol.js';

/**
 * The checks of the `queued_external_drmaa` helper scripts (`scripts/drmaa-launch.sh`,
 * `scripts/drmaa-kill.sh`), which run as the job's real user through sudo. They refuse anything
 * that is not exactly what the server would ask for: a job template confined to one job directory
 * directly under the staging root, and a plain job id.
 *
 * This module runs under sudo as another user and imports nothing from the server on purpose
 * (only the DRMAA protocol schema): what it needs of the server's rules it keeps as its own
 * copies, each saying so (`TEMPLATE_FILE_NAME`, `isInside`).
 */

/** OS user names the server accepts from clients (and the helpers from the server). */
export const USER_NAME_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
/** DRM job ids (Grid Engine: digits, array tasks "N.M"). */
export const DRM_JOB_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Magnetar job ids (the name of a job directory). */
const JOB_DIRECTORY_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const JOB_NAME_RE = /^[A-Za-z0-9._-]{1,200}$/;
const TEMPLATE_MAX_BYTES = 64 * 1024;
/** Own copy of `CONTROL_FILES.drmaaTemplate` (`jobs/layout.ts`): the name the server writes the template under. */
const TEMPLATE_FILE_NAME = 'jt.json';

export class RefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RefusedError';
  }
}

/** `--name value` pairs, each name known and given once; nothing else. */
export function parseArguments(argv: readonly string[], known: readonly string[]): Map<string, string> {
  const values = new Map<string, string>();
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i]!;
    const value = argv[i + 1];
    if (!name.startsWith('--') || !known.includes(name.slice(2))) throw new RefusedError(`unknown argument ${JSON.stringify(name)}`);
    if (value === undefined) throw new RefusedError(`${name} needs a value`);
    if (values.has(name.slice(2))) throw new RefusedError(`${name} is given twice`);
    values.set(name.slice(2), value);
  }
  return values;
}

/**
 * `child` is strictly inside `parent` (both absolute and normalised): separator-aware. Own copy of
 * `isStrictlyInside` (`jobs/paths.ts`), stricter still: a first component starting with `..`
 * (`..x`) is refused too, as nothing the server writes is named so.
 */
export function isInside(parent: string, child: string): boolean {
  const relative = path.relative(parent, child);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative);
}

/** The staging root, resolved: absolute, an existing directory, not `/`. */
export async function resolveStagingRoot(given: string | undefined): Promise<string> {
  if (given === undefined || !path.isAbsolute(given)) throw new RefusedError('--staging_root must be an absolute path');
  const real = await fs.realpath(given).catch(() => undefined);
  if (real === undefined || !(await fs.stat(real)).isDirectory()) throw new RefusedError('--staging_root is not an existing directory');
  if (real === path.parse(real).root) throw new RefusedError('--staging_root must not be the file system root');
  return real;
}

/**
 * Read and check a job template written by the server: `<root>/<job id>/jt.json`, a regular file
 * (no symlink anywhere on its path), whose paths all stay inside that job directory.
 */
export async function readJobTemplate(file: string, stagingRoot: string): Promise<TemplateMessage> {
  if (!path.isAbsolute(file) || path.normalize(file) !== file) throw new RefusedError('--job_attributes must be a normalised absolute path');
  const real = await fs.realpath(file).catch(() => undefined);
  if (real !== file) throw new RefusedError('--job_attributes must exist and must not pass through a symbolic link');
  const jobDirectory = path.dirname(real);
  if (path.basename(real) !== TEMPLATE_FILE_NAME || path.dirname(jobDirectory) !== stagingRoot || !JOB_DIRECTORY_NAME_RE.test(path.basename(jobDirectory))) {
    throw new RefusedError(`--job_attributes must be <staging root>/<job id>/${TEMPLATE_FILE_NAME}`);
  }
  const stat = await fs.lstat(real);
  if (!stat.isFile() || stat.size > TEMPLATE_MAX_BYTES) throw new RefusedError('--job_attributes is not a regular file of at most 64 KiB');
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(real, 'utf8'));
  } catch {
    throw new RefusedError('the job template is not JSON');
  }
  const parsed = templateSchema.safeParse(raw);
  if (!parsed.success) throw new RefusedError(`the job template is malformed: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
  checkTemplate(parsed.data, jobDirectory);
  return parsed.data;
}

/** Everything a template names stays in its job directory; the command is the job script run by bash. */
export function checkTemplate(template: TemplateMessage, jobDirectory: string): void {
  const inside = (what: string, p: string | undefined): void => {
    if (p === undefined) throw new RefusedError(`the job template has no ${what}`);
    if (!path.isAbsolute(p) || path.normalize(p) !== p || !isInside(jobDirectory, p)) throw new RefusedError(`the job template's ${what} is outside the job directory`);
  };
  if (template.remoteCommand !== '/bin/bash') throw new RefusedError('the job template must run /bin/bash');
  if (template.args.length !== 1) throw new RefusedError('the job template must pass exactly the job script to bash');
  inside('job script', template.args[0]);
  inside('working directory', template.workingDirectory);
  for (const [what, value] of [['output path', template.outputPath], ['error path', template.errorPath]] as const) {
    if (value === undefined || !value.startsWith(':')) throw new RefusedError(`the job template's ${what} must be ":<path>"`);
    inside(what, value.slice(1));
  }
  if (template.jobName === undefined || !JOB_NAME_RE.test(template.jobName)) throw new RefusedError('the job template has no valid job name');
  if (template.env !== undefined || template.joinFiles !== undefined) throw new RefusedError('the job template may not set env or join_files');
  if (template.nativeSpecification !== undefined && /[\x00-\x1f\x7f]/.test(template.nativeSpecification)) {
    throw new RefusedError('the native specification contains control characters');
  }
}

export function checkDrmJobId(id: string | undefined): string {
  if (id === undefined || !DRM_JOB_ID_RE.test(id)) throw new RefusedError('--job_id must be a DRM job id (letters, digits, . _ -)');
  return id;
}
