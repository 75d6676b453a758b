import type { JobDirectory } from './directory.js';
import { JOB_STREAMS, TOOL_STREAMS } from './layout.js';
import type { JobRecord } from './store.js';
import { PULSAR_COMPAT_VERSION } from '../version.js';

export type SystemProperties = Readonly<Record<string, string>>;

/** The short document for a job that is not finished (PROTOCOL §2.6). */
export function shortStatus(jobId: string, status: string): string {
  return JSON.stringify({ complete: 'false', status, job_id: jobId });
}

/** What a status document may realize from files, and how much of each (0 = no limit). */
export interface StatusLimits {
  /** Bytes of each stream or dynamic file source (`maximum_stream_size`; cut silently, as upstream). */
  readonly maximumStreamSize: number;
  /** Bytes of all streams and dynamic file sources of one document together (`max_status_size`). */
  readonly maxStatusSize: number;
}

/**
 * Reads files into one status document within `max_status_size`: each read takes what is left.
 * A file cut by that budget (rather than by `maximum_stream_size`) ends with a marker saying so.
 */
class StatusBudget {
  #left: number;
  truncated = false;
  constructor(readonly limits: StatusLimits) {
    this.#left = limits.maxStatusSize > 0 ? limits.maxStatusSize : Infinity;
  }

  get exhausted(): boolean {
    return this.#left <= 0;
  }

  get marker(): string {
    return `\n[magnetar: truncated here: the status document reached max_status_size (${this.limits.maxStatusSize} bytes)]`;
  }

  /** `read(limit)` reads at most `limit` bytes (0 = all). Resolves with the text and whether the budget cut it. */
  async take(read: (limit: number) => Promise<string | undefined>): Promise<{ text: string | undefined; cut: boolean }> {
    const streamCap = this.limits.maximumStreamSize > 0 ? this.limits.maximumStreamSize : Infinity;
    const cap = Math.min(streamCap, this.#left);
    if (cap === Infinity) return { text: await read(0), cut: false };
    if (cap >= streamCap) {
      const text = await read(cap);
      if (text !== undefined) this.#left -= Buffer.byteLength(text, 'utf8');
      return { text, cut: false };
    }
    // The budget, not the stream limit, bounds this read: one byte more tells whether it cut.
    const text = await read(cap + 1);
    if (text === undefined) return { text, cut: false };
    const bytes = Buffer.from(text, 'utf8');
    if (bytes.length <= cap) {
      this.#left -= bytes.length;
      return { text, cut: false };
    }
    this.#left = 0;
    this.truncated = true;
    return { text: bytes.subarray(0, cap).toString('utf8'), cut: true };
  }

  async stream(read: (limit: number) => Promise<string | undefined>): Promise<string> {
    const { text, cut } = await this.take(read);
    return cut ? `${text ?? ''}${this.marker}` : (text ?? '');
  }
}

/**
 * The full status document of a finished job (PROTOCOL §2.6). `record` is undefined for a job
 * the server does not know, which is reported `lost`. Streams are read first, then dynamic file
 * sources, all within `limits.maxStatusSize`; what does not fit is cut (marked) or left out, and
 * the document then says so in `status_truncated`.
 */
export async function fullStatus(
  jobId: string,
  status: string,
  record: JobRecord | undefined,
  dir: JobDirectory,
  systemProperties: SystemProperties,
  limits: StatusLimits,
): Promise<string> {
  const exists = record !== undefined && (await dir.exists());
  const budget = new StatusBudget(limits);
  const read = async (rel: string): Promise<string> => (exists ? budget.stream(async (limit) => dir.readSmall(rel, limit)) : '');
  const toolStdout = await read(`metadata/${TOOL_STREAMS.stdout}`).then(async (s) => (s !== '' ? s : read(TOOL_STREAMS.stdout)));
  const toolStderr = await read(`metadata/${TOOL_STREAMS.stderr}`).then(async (s) => (s !== '' ? s : read(TOOL_STREAMS.stderr)));
  const jobStdout = await read(`metadata/${JOB_STREAMS.stdout}`);
  const jobStderr = await read(`metadata/${JOB_STREAMS.stderr}`);
  const [working, metadata, outputs, top] = await Promise.all([
    exists ? dir.contents('working') : [],
    exists ? dir.contents('metadata') : [],
    exists ? dir.contents('outputs') : [],
    exists ? dir.topLevelNames() : [],
  ]);
  const realized: object[] = [];
  let omitted = 0;
  const seen = new Set<string>();
  for (const source of record?.launch?.request.dynamicFileSources ?? []) {
    if (!exists) break;
    // Records written before sources were deduplicated at submit may name a path twice.
    if (seen.has(source.path)) continue;
    seen.add(source.path);
    if (budget.exhausted) {
      omitted++;
      continue;
    }
    const { text, cut } = await budget.take(async (limit) => dir.readWorkingFile(source.path, limit));
    if (text !== undefined) realized.push(cut ? { ...source, contents: text, truncated: true } : { ...source, contents: text });
  }
  const failure = record?.failureReason;
  const doc: Record<string, unknown> = {
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
  };
  if (budget.truncated || omitted > 0) {
    doc['status_truncated'] =
      `this document reached max_status_size (${limits.maxStatusSize} bytes): output cut where marked` +
      (omitted > 0 ? `; ${omitted} dynamic file source(s) left out` : '');
  }
  return JSON.stringify(doc);
}
