/**
 * Server-side stage-out (PROTOCOL §8.4): when a job whose submit carried
 * `remote_staging.action_mapper` completes, run the client's results collection (§3.2 step 5) over
 * the job directory and act on the files whose mapped action is server-side: `remote_transfer`
 * (a streamed multipart POST, field `file`, to the files endpoint) and `remote_copy` (a copy to a
 * server-local path, through a temp file and a rename). Every other action is the client's.
 *
 * Which files were pushed is written (atomically) to a small file in the job directory after
 * each one, so a restart in the middle pushes only what had not arrived (the file in flight at
 * the crash is pushed again, whole).
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { RetryConfig } from '../config/types.js';
import { BadRequest } from '../errors.js';
import type { JobDirectory } from '../jobs/directory.js';
import type { Logger } from '../log.js';
import { CONTROL_FILES, RESERVED_JOBDIR_NAMES } from '../jobs/layout.js';
import { writeFileDurably } from '../durable-file.js';
import { isInside } from '../jobs/paths.js';
import { fnmatchMatcher, mapAction, parseActionMapper, parseCollectorDescriptions, pythonMatcher, transferUrl, MAX_RULES, type Matcher } from './action-mapper.js';
import { loggableUrl, type StagingPolicy } from './policy.js';
import { HttpStatusError, PermanentError, withRetries } from './retry.js';
import { runInWorker, withTransferSlot } from './transfer-pool.js';

export type OutputType = 'output' | 'output_workdir' | 'output_metadata' | 'output_jobdir';

export type StageOutAction = { readonly kind: 'remote_transfer'; readonly url: URL } | { readonly kind: 'remote_copy'; readonly dest: string };

export interface StageOutEntry {
  /** The file's name in the job directory (relative to the directory of its type). */
  readonly name: string;
  readonly type: OutputType;
  readonly galaxyPath: string;
  readonly action: StageOutAction;
}

export interface StageOutPlan {
  readonly entries: readonly StageOutEntry[];
  /** Files that cannot be pushed at all (a missing output, a refused action), with the reason. */
  readonly failures: readonly string[];
}

export interface StageOutContext {
  readonly dir: JobDirectory;
  readonly policy: StagingPolicy;
  readonly retry: RetryConfig;
  readonly signal: AbortSignal;
  readonly log: Logger;
  readonly concurrency: number;
  /** The job's client: transfers wait for a server-wide slot round-robin by client (transfer-pool.ts). */
  readonly client?: string | undefined;
}

/** The job-directory file that lists the files already pushed (hidden from directory listings). */
export const DONE_FILE = CONTROL_FILES.stageOutDone;
const COPY_SUFFIX = '.stage-out.part';
const SERVER_SIDE_UNSUPPORTED: ReadonlySet<string> = new Set(['remote_rsync_transfer', 'remote_scp_transfer', 'remote_object_store_copy', 'remote_transfer_tus']);
const COMMAND_VERSION = 'COMMAND_VERSION';

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function short(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function optionalPath(value: unknown, what: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || !value.startsWith('/') || value.length > 4096 || value.includes('\0')) throw new BadRequest(`client_outputs.${what} must be an absolute path`);
  return value;
}

function pathList(value: unknown, what: string): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || value.length > 10_000) throw new BadRequest(`client_outputs.${what} must be a list`);
  return value.map((v) => {
    const p = optionalPath(v, what);
    if (p === undefined) throw new BadRequest(`client_outputs.${what} entries must be paths`);
    return p;
  });
}

function entryKey(e: StageOutEntry): string {
  return `${e.type}\u0000${e.name}\u0000${e.galaxyPath}`;
}

/**
 * The files to push, from the job's `remote_staging` and what the job left in its directory;
 * undefined when the submit carried no action mapper (nothing is staged out). Refused patterns
 * (a regex the linear engine cannot run) throw: the job fails with the reason.
 */
export async function planStageOut(
  remoteStaging: Readonly<Record<string, unknown>>,
  dir: JobDirectory,
  policy: StagingPolicy,
  log: Logger,
  dynamicFileSources: readonly { readonly type?: string | undefined; readonly path: string }[] = [],
): Promise<StageOutPlan | undefined> {
  if (remoteStaging['action_mapper'] === undefined || remoteStaging['action_mapper'] === null) return undefined;
  const mapper = parseActionMapper(remoteStaging['action_mapper']);
  const co = isRecord(remoteStaging['client_outputs']) ? remoteStaging['client_outputs'] : {};
  const workingDirectory = optionalPath(co['working_directory'], 'working_directory');
  const metadataDirectory = optionalPath(co['metadata_directory'], 'metadata_directory');
  const jobDirectory = optionalPath(co['job_directory'], 'job_directory');
  const outputFiles = pathList(co['output_files'], 'output_files');
  const versionFile = optionalPath(co['version_file'], 'version_file');
  const rawWorkDirOutputs = co['work_dir_outputs'] ?? [];
  if (!Array.isArray(rawWorkDirOutputs) || rawWorkDirOutputs.length > 10_000) throw new BadRequest('client_outputs.work_dir_outputs must be a list');
  const rawDynamic = co['dynamic_outputs'] ?? [];
  if (!Array.isArray(rawDynamic) || rawDynamic.length > MAX_RULES) throw new BadRequest(`client_outputs.dynamic_outputs must be a list of at most ${MAX_RULES} patterns`);
  const dynamic: Matcher[] = rawDynamic.map((p, i) => pythonMatcher(p, `client_outputs.dynamic_outputs[${i}]`));
  const collectors = parseCollectorDescriptions(co['dataset_collector_descriptions']);
  for (const reason of collectors.ignored) log.warn(`stage-out: ${reason}; that description matches nothing (as upstream)`);
  const references = await realizedReferences(dir, dynamicFileSources, log);
  // As upstream's ClientOutputs.dynamic_match: the collector descriptions, then the patterns.
  const dynamicMatch = (name: string): boolean =>
    collectors.matchers.some((m) => m(name)) || dynamic.some((m) => m(name)) || references.filenames.has(name) || references.extraFiles.some((prefix) => name.startsWith(prefix));

  const [working, outputs, metadata, topNames] = await Promise.all([dir.contents('working'), dir.contents('outputs'), dir.contents('metadata'), dir.topLevelNames()]);
  const outputSet = new Set(outputs);
  // Files below each top-level directory of outputs/ (extra files: `<name>_files/...`).
  const outputsBelow = new Map<string, string[]>();
  for (const o of outputs) {
    const slash = o.indexOf('/');
    if (slash < 0) continue;
    const top = o.slice(0, slash);
    const list = outputsBelow.get(top);
    if (list === undefined) outputsBelow.set(top, [o]);
    else list.push(o);
  }
  const workingSet = new Set(working);
  const entries: StageOutEntry[] = [];
  const failures: string[] = [];
  const remaining = [...outputFiles];
  const collected = new Set<string>();

  const add = async (type: OutputType, galaxyPath: string, name: string, missing = false): Promise<void> => {
    const actionType = mapAction(mapper, galaxyPath, type);
    if (actionType !== 'remote_transfer' && actionType !== 'remote_copy') {
      if (SERVER_SIDE_UNSUPPORTED.has(actionType)) failures.push(`${type} "${short(name)}": file action "${actionType}" is not supported by this server`);
      return;
    }
    if (missing) {
      failures.push(`${type} "${short(name)}" was not produced by the job`);
      return;
    }
    try {
      if (actionType === 'remote_transfer') {
        if (mapper.filesEndpoint === undefined) throw new BadRequest('remote_transfer without a files_endpoint in the action mapper');
        entries.push({ name, type, galaxyPath, action: { kind: 'remote_transfer', url: policy.checkUrl(transferUrl(mapper.filesEndpoint, galaxyPath, type)) } });
      } else {
        entries.push({ name, type, galaxyPath, action: { kind: 'remote_copy', dest: await policy.checkCopyDestination(galaxyPath) } });
      }
    } catch (error) {
      failures.push(`${type} "${short(name)}" (${actionType}): ${error instanceof Error ? error.message : String(error)}`);
    }
  };

  // 1. Explicit working-directory outputs (from_work_dir); a glob picks the first match.
  for (const pair of rawWorkDirOutputs) {
    if (!Array.isArray(pair) || pair.length !== 2) throw new BadRequest('client_outputs.work_dir_outputs entries must be [source, output] pairs');
    const source = optionalPath(pair[0], 'work_dir_outputs');
    const outputFile = optionalPath(pair[1], 'work_dir_outputs');
    if (source === undefined || outputFile === undefined) throw new BadRequest('client_outputs.work_dir_outputs entries must be paths');
    let name = workingDirectory === undefined ? path.basename(source) : path.posix.relative(workingDirectory, source);
    if (!workingSet.has(name)) {
      const glob = fnmatchMatcher(name, 'work_dir_outputs glob');
      name = working.find((w) => glob(w)) ?? name;
    }
    // Failures here are tolerated (as upstream): a file that is not there is not pushed.
    if (workingSet.has(name)) {
      await add('output_workdir', outputFile, name);
      collected.add(name);
    }
    const at = remaining.indexOf(outputFile);
    if (at >= 0) remaining.splice(at, 1);
  }
  // 2. Declared outputs, and their extra files (`<basename minus .dat>_files/...`).
  for (const outputFile of remaining) {
    const name = path.basename(outputFile);
    await add('output', outputFile, name, !outputSet.has(name));
    const extrasDir = `${name.endsWith('.dat') ? name.slice(0, -4) : name}_files`;
    for (const extra of outputsBelow.get(extrasDir) ?? []) await add('output', path.join(path.dirname(outputFile), extra), extra);
  }
  // 3. The version file.
  if (versionFile !== undefined && outputSet.has(COMMAND_VERSION)) await add('output', versionFile, COMMAND_VERSION);
  // 4-6. Dynamic outputs in the working, metadata and job directories (public mode: declared outputs only).
  if (policy.publicMode) {
    if (dynamic.length > 0 || collectors.matchers.length > 0) log.info('stage-out: dynamic outputs are not pushed by a public server (declared outputs only)');
    return { entries, failures };
  }
  // The listings are bounded (depth and count, JobDirectory.contents) and never descend through a
  // symlinked directory; a matched symlink to a file outside its directory is left out here (and
  // would be refused when opened anyway).
  if (workingDirectory !== undefined) {
    for (const name of await dynamicMatches(working, dynamicMatch, dir.working, log)) {
      if (!collected.has(name)) await add('output_workdir', path.join(workingDirectory, name), name);
    }
  }
  if (metadataDirectory !== undefined) {
    for (const name of await dynamicMatches(metadata, dynamicMatch, dir.metadata, log)) await add('output_metadata', path.join(metadataDirectory, name), name);
  }
  if (jobDirectory !== undefined) {
    // The server's own files there (command.sh, return_code, …) are never served: not pushed either.
    const clientNames = topNames.filter((name) => !RESERVED_JOBDIR_NAMES.has(name));
    for (const name of await dynamicMatches(clientNames, dynamicMatch, undefined, log)) {
      const st = await fs.lstat(path.join(dir.root, name)).catch(() => undefined);
      if (st?.isFile() === true) await add('output_jobdir', path.join(jobDirectory, name), name);
    }
  }
  return { entries, failures };
}

/** Names matched between two turns of the event loop (client patterns over a long listing). */
const MATCHES_PER_TURN = 64;

/**
 * The names of a listing that `matches` accepts, letting other work in every MATCHES_PER_TURN
 * names; with a `base`, a name that is a symlink resolving outside `base` is left out (logged).
 */
async function dynamicMatches(names: readonly string[], matches: Matcher, base: string | undefined, log: Logger): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < names.length; i++) {
    if (i > 0 && i % MATCHES_PER_TURN === 0) await yieldToEventLoop();
    const name = names[i]!;
    if (!matches(name)) continue;
    if (base !== undefined && !(await staysInside(base, name))) {
      log.warn({ name: short(name) }, 'stage-out: a matched symlink leads out of its directory (not pushed)');
      continue;
    }
    out.push(name);
  }
  return out;
}

/** Is `base/name` a regular file, or a symlink whose target lies inside `base`'s real path? */
async function staysInside(base: string, name: string): Promise<boolean> {
  const target = path.join(base, name);
  try {
    if (!(await fs.lstat(target)).isSymbolicLink()) return true;
    const [real, realBase] = await Promise.all([fs.realpath(target), fs.realpath(base)]);
    return isInside(realBase, real) && real !== realBase;
  } catch {
    return false;
  }
}

/** Largest realized dynamic file source (galaxy.json) read for references. */
const MAX_SOURCE_BYTES = 4 * 1024 * 1024;
const MAX_SOURCES = 16;

/**
 * The `filename` and `extra_files` values of the job's realized dynamic file sources (a
 * `galaxy.json` the tool wrote; type `galaxy`: one JSON document, `legacy_galaxy`: one a line),
 * as upstream collects them: those files are pushed like dynamic outputs.
 */
async function realizedReferences(
  dir: JobDirectory,
  sources: readonly { readonly type?: string | undefined; readonly path: string }[],
  log: Logger,
): Promise<{ filenames: Set<string>; extraFiles: string[] }> {
  const filenames = new Set<string>();
  const extraFiles: string[] = [];
  const record = (value: unknown, depth: number): void => {
    if (depth > 32) return;
    if (Array.isArray(value)) {
      for (const v of value) record(v, depth + 1);
    } else if (isRecord(value)) {
      for (const [k, v] of Object.entries(value)) {
        if (k === 'filename' && typeof v === 'string') filenames.add(v);
        if (k === 'extra_files' && typeof v === 'string' && v !== '') extraFiles.push(v);
        if (typeof v === 'object' && v !== null) record(v, depth + 1);
      }
    }
  };
  const parse = (text: string): void => {
    try {
      record(JSON.parse(text), 0);
    } catch {
      log.warn('stage-out: a dynamic file source is not valid JSON (ignored, as upstream)');
    }
  };
  for (const source of sources.slice(0, MAX_SOURCES)) {
    const text = await dir.readWorkingFile(source.path, MAX_SOURCE_BYTES).catch(() => undefined);
    if (text === undefined) continue;
    if (source.type === 'legacy_galaxy') {
      for (const line of text.split('\n')) if (line.trim() !== '') parse(line);
    } else {
      parse(text);
    }
  }
  return { filenames, extraFiles };
}

function rate(bytes: number, ms: number): string {
  const perSecond = ms > 0 ? (bytes * 1000) / ms : bytes;
  return `${(perSecond / (1024 * 1024)).toFixed(1)} MiB/s`;
}

/** A file name as a multipart `filename` parameter (no quotes, no line breaks). */
function safeFilename(name: string): string {
  return path.basename(name).replace(/["\r\n\\]/g, '_').slice(0, 200) || 'file';
}

/** errno codes of a local copy that may pass: busy or interrupted devices, NFS hiccups, fd exhaustion. */
const TRANSIENT_COPY_CODES: ReadonlySet<string> = new Set(['EAGAIN', 'EWOULDBLOCK', 'EBUSY', 'EIO', 'EINTR', 'ETIMEDOUT', 'ESTALE', 'EMFILE', 'ENFILE']);

/** Is a `remote_copy` failure worth a retry? (ENOENT, EACCES, ENOSPC, a refused destination are not.) */
export function isTransientCopyError(error: unknown): boolean {
  const code = error instanceof Error ? (error as NodeJS.ErrnoException).code : undefined;
  return typeof code === 'string' && TRANSIENT_COPY_CODES.has(code);
}

async function copyOut(entry: StageOutEntry, dest: string, ctx: StageOutContext): Promise<number> {
  const { handle, size } = await ctx.dir.openDownload(entry.name, entry.type);
  try {
    await fs.mkdir(path.dirname(dest), { recursive: true });
    // The parent may have been made (or replaced) through a link: check where it really is.
    const realParent = await fs.realpath(path.dirname(dest));
    await ctx.policy.checkCopyDestination(path.join(realParent, path.basename(dest)));
    const partial = path.join(realParent, `.${path.basename(dest)}.${randomBytes(6).toString('hex')}${COPY_SUFFIX}`);
    try {
      const out = await fs.open(partial, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o644);
      try {
        await pipeline(handle.createReadStream({ autoClose: false, highWaterMark: 1 << 20 }), out.createWriteStream({ highWaterMark: 1 << 20 }), { signal: ctx.signal });
      } finally {
        await out.close().catch(() => undefined);
      }
      await fs.rename(partial, path.join(realParent, path.basename(dest)));
    } catch (error) {
      await fs.rm(partial, { force: true });
      throw error;
    }
  } finally {
    // Closed whatever failed (making the parents, the destination check, the copy).
    await handle.close().catch(() => undefined);
  }
  return size;
}

async function runOne(entry: StageOutEntry, ctx: StageOutContext): Promise<void> {
  const began = Date.now();
  const action = entry.action;
  let attempts = 0;
  let bytes = 0;
  if (action.kind === 'remote_copy') {
    await withRetries(
      ctx.retry,
      ctx.signal,
      async () => {
        attempts++;
        try {
          bytes = await copyOut(entry, action.dest, ctx);
        } catch (error) {
          // Only a transient I/O error is worth another try (a missing file, a refusal is not).
          if (isTransientCopyError(error)) throw error;
          throw new PermanentError(error instanceof Error ? error.message : String(error), { cause: error });
        }
      },
      (error, wait) => {
        ctx.log.warn({ name: entry.name, err: error instanceof Error ? error.message : String(error), retryInSeconds: wait }, 'stage-out copy failed; retrying');
      },
    );
    const ms = Date.now() - began;
    ctx.log.info({ name: entry.name, type: entry.type, bytes, ms, rate: rate(bytes, ms), attempts }, 'staged out (remote_copy)');
    return;
  }
  await withRetries(
    ctx.retry,
    ctx.signal,
    async () => {
      attempts++;
      // The file is opened once a transfer slot is free (a waiting push holds no descriptor).
      await withTransferSlot(ctx.client ?? '', ctx.signal, async () => {
        const { handle, size } = await ctx.dir.openDownload(entry.name, entry.type);
        bytes = size;
        try {
          // The worker reads the file through this handle's descriptor; it is closed only after the worker is done with it.
          await runInWorker({ kind: 'post', url: action.url.href, fd: handle.fd, size, filename: safeFilename(entry.name), idleTimeoutMs: undefined }, ctx.policy, ctx.signal);
        } finally {
          await handle.close().catch(() => undefined);
        }
      });
    },
    (error, wait) => {
      ctx.log.warn({ name: entry.name, url: loggableUrl(action.url), err: error instanceof Error ? error.message : String(error), retryInSeconds: wait }, 'stage-out transfer failed; retrying');
    },
  );
  const ms = Date.now() - began;
  ctx.log.info({ name: entry.name, type: entry.type, url: loggableUrl(action.url), bytes, ms, rate: rate(bytes, ms), attempts }, 'staged out (remote_transfer)');
}

async function readDone(dir: JobDirectory): Promise<Set<string>> {
  try {
    const parsed: unknown = JSON.parse(await fs.readFile(path.join(dir.root, DONE_FILE), 'utf8'));
    return new Set(Array.isArray(parsed) ? parsed.filter((k): k is string => typeof k === 'string') : []);
  } catch {
    return new Set();
  }
}

async function writeDone(dir: JobDirectory, done: ReadonlySet<string>): Promise<void> {
  await writeFileDurably(path.join(dir.root, DONE_FILE), JSON.stringify([...done]));
}

/**
 * Push every entry not pushed yet (at most `ctx.concurrency` at once) and return what did not
 * arrive: the plan's failures, then each entry that failed (an `output_workdir` failure and an
 * HTTP 403 are tolerated, as upstream). An abort of `ctx.signal` is thrown.
 */
export async function runStageOut(plan: StageOutPlan, ctx: StageOutContext): Promise<string[]> {
  const failures = [...plan.failures];
  const done = await readDone(ctx.dir);
  const todo = plan.entries.filter((e) => !done.has(entryKey(e)));
  if (todo.length < plan.entries.length) ctx.log.info({ skipped: plan.entries.length - todo.length }, 'stage-out resumed: files pushed before the restart are not pushed again');
  let writing: Promise<void> = Promise.resolve();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (!ctx.signal.aborted) {
      const entry = todo[next++];
      if (entry === undefined) return;
      try {
        await runOne(entry, ctx);
      } catch (error) {
        if (ctx.signal.aborted) return;
        const why = error instanceof Error ? error.message : String(error);
        if (error instanceof HttpStatusError && error.status === 403) {
          ctx.log.warn({ name: entry.name, type: entry.type }, 'stage-out: the files endpoint answered 403 (tolerated, as upstream)');
        } else if (entry.type === 'output_workdir') {
          ctx.log.warn({ name: entry.name, reason: why }, 'stage-out of a working-directory output failed (tolerated, as upstream)');
          continue;
        } else {
          const status = error instanceof HttpStatusError ? ` (HTTP status ${error.status})` : '';
          failures.push(`${entry.type} "${short(entry.name)}" (${entry.action.kind})${status}: ${why}`);
          continue;
        }
      }
      done.add(entryKey(entry));
      writing = writing.then(async () => writeDone(ctx.dir, done)).catch((error: unknown) => {
        ctx.log.warn({ err: error instanceof Error ? error.message : String(error) }, 'stage-out progress not recorded (a restart would push again)');
      });
    }
  };
  await Promise.allSettled(Array.from({ length: Math.max(1, Math.min(ctx.concurrency, todo.length)) }, worker));
  await writing;
  ctx.signal.throwIfAborted();
  return failures;
}
