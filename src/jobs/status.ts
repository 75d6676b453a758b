import type { JobDirectory } from './directory.js';
import { JOB_STREAMS, TOOL_STREAMS } from './layout.js';
import type { JobRecord } from './store.js';
import { PULSAR_COMPAT_VERSION } from '../version.js';

export type SystemProperties = Readonly<Record<string, string>>;

/** The short document for a job that is not finished (PROTOCOL §2.6). */
export function shortStatus(jobId: string, status: string): string {
  return JSON.stringify({ complete: 'false', status, job_id: jobId });
}

/**
 * The full status document of a finished job (PROTOCOL §2.6). `record` is undefined for a job
 * the server does not know, which is reported `lost`.
 */
export async function fullStatus(
  jobId: string,
  status: string,
  record: JobRecord | undefined,
  dir: JobDirectory,
  systemProperties: SystemProperties,
  maximumStreamSize: number,
): Promise<string> {
  const exists = record !== undefined && (await dir.exists());
  const read = async (rel: string): Promise<string> => (exists ? (await dir.readSmall(rel, maximumStreamSize)) ?? '' : '');
  const [toolStdout, toolStderr, jobStdout, jobStderr, working, metadata, outputs, top] = await Promise.all([
    read(`metadata/${TOOL_STREAMS.stdout}`).then(async (s) => (s !== '' ? s : read(TOOL_STREAMS.stdout))),
    read(`metadata/${TOOL_STREAMS.stderr}`).then(async (s) => (s !== '' ? s : read(TOOL_STREAMS.stderr))),
    read(`metadata/${JOB_STREAMS.stdout}`),
    read(`metadata/${JOB_STREAMS.stderr}`),
    exists ? dir.contents('working') : [],
    exists ? dir.contents('metadata') : [],
    exists ? dir.contents('outputs') : [],
    exists ? dir.topLevelNames() : [],
  ]);
  const realized: object[] = [];
  for (const source of record?.launch?.request.dynamicFileSources ?? []) {
    if (!exists) break;
    const contents = await dir.readWorkingFile(source.path, maximumStreamSize);
    if (contents !== undefined) realized.push({ ...source, contents });
  }
  const failure = record?.failureReason;
  return JSON.stringify({
    job_id: jobId,
    complete: 'true',
    status,
    returncode: record?.returnCode ?? null,
    stdout: toolStdout,
    stderr: failure === undefined ? toolStderr : `${toolStderr}${toolStderr === '' || toolStderr.endsWith('\n') ? '' : '\n'}${failure}`,
    job_stdout: jobStdout,
    job_stderr: jobStderr,
    working_directory: dir.working,
    metadata_directory: dir.metadata,
    job_directory: dir.root,
    working_directory_contents: working,
    metadata_directory_contents: metadata,
    outputs_directory_contents: outputs,
    job_directory_contents: top,
    system_properties: systemProperties,
    pulsar_version: PULSAR_COMPAT_VERSION,
    realized_dynamic_file_sources: realized,
  });
}
