import * as fs from 'node:fs/promises';
import { constants as fsc } from 'node:fs';

/**
 * The job directory's layout (PROTOCOL §4.1, §4.6): the one place its file names are spelled.
 * Backends get absolute paths through `LaunchSpec`; nothing else writes these names.
 */

/** The directories setup creates. */
export const SETUP_DIRECTORIES = ['inputs', 'working', 'outputs', 'configs', 'tool_files', 'metadata'] as const;

/** Files and directories the server (or a backend) writes in `<jobdir>` itself. */
export const CONTROL_FILES = {
  script: 'command.sh',
  pid: 'pid',
  returnCode: 'return_code',
  tmp: 'tmp',
  home: 'home',
  condorSubmit: 'job.condor.submit',
  condorLog: 'job_condor.log',
  drmaaTemplate: 'jt.json',
  /** The files stage-out pushed already (staging/stage-out.ts), kept across a restart. */
  stageOutDone: '.upload-stage-out.done',
} as const;

/** Where the job script sends its own stdout/stderr, below `metadata/`. */
export const JOB_STREAMS = { stdout: 'job_stdout', stderr: 'job_stderr' } as const;

/** The tool's stdout/stderr as Galaxy's command writes them (metadata/ first, then jobdir). */
export const TOOL_STREAMS = { stdout: 'tool_stdout', stderr: 'tool_stderr' } as const;

/**
 * Names in `<jobdir>` that belong to the server or to upstream's bookkeeping: a `jobdir` upload
 * may never replace them and an `output_jobdir` download never serves them.
 */
export const RESERVED_JOBDIR_NAMES: ReadonlySet<string> = new Set([
  ...Object.values(CONTROL_FILES),
  ...Object.values(JOB_STREAMS),
  ...SETUP_DIRECTORIES,
  // upstream Pulsar's own bookkeeping files and re-run snapshots
  'tool_id', 'tool_version', 'launch_config', 'preprocessed', 'preprocessing_failed', 'stderr',
  'running', 'final_status', 'postprocessed', 'cancelled', 'submitted', 'command_line', 'external_id',
  'status.lock', '.state.lock', 'unstructured', 'working.orig', 'outputs.orig', 'configs.orig',
]);

/** The integer a job script wrote to `return_code`, or undefined when there is none (yet). */
export function parseReturnCode(text: string): number | undefined {
  const trimmed = text.trim();
  if (!/^-?\d{1,10}$/.test(trimmed)) return undefined;
  const value = Number(trimmed);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** Read `return_code` at an absolute path, never through a symlink; undefined when absent or unreadable. */
export async function readReturnCode(file: string): Promise<number | undefined> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    if (!(await handle.stat()).isFile()) return undefined;
    const buffer = Buffer.alloc(64);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    return parseReturnCode(buffer.subarray(0, bytesRead).toString('utf8'));
  } catch {
    return undefined;
  } finally {
    await handle.close();
  }
}
