/**
 * Server-side stage-in (PROTOCOL §8.2): the `remote_staging.setup` entries of a submit, each
 * `{name, type, action}`, parsed and checked as a whole first (a refused URL, path or action
 * refuses the job before anything is fetched), then run with a bounded number in parallel.
 */
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import type { RetryConfig } from '../config/types.js';
import { BadRequest, JobRefused, PathDenied } from '../errors.js';
import type { JobDirectory, FileType } from '../jobs/directory.js';
import type { Logger } from '../log.js';
import { downloadInWorker, partialPathFor } from './http-get.js';
import { loggableUrl, type StagingPolicy } from './policy.js';
import { HttpStatusError } from './retry.js';

/** Types a setup entry may write (PROTOCOL §4.2: the types of files that flow to the server). */
const STAGE_IN_TYPES: ReadonlySet<string> = new Set(['input', 'unstructured', 'config', 'tool', 'jobdir', 'workdir', 'metadata']);

/** Upstream action types magnetar does not perform (yet). */
const UNSUPPORTED_ACTIONS: ReadonlySet<string> = new Set([
  'remote_rsync_transfer', 'remote_scp_transfer', 'remote_object_store_copy', 'remote_transfer_tus', 'transfer', 'copy',
]);

export type StageInAction =
  | { readonly kind: 'remote_transfer'; readonly url: URL }
  | { readonly kind: 'remote_copy'; readonly source: string }
  | { readonly kind: 'message'; readonly contents: string }
  | { readonly kind: 'nothing' };

export interface StageInEntry {
  readonly name: string;
  readonly type: FileType;
  readonly action: StageInAction;
}

export interface StageInContext {
  readonly dir: JobDirectory;
  readonly policy: StagingPolicy;
  readonly retry: RetryConfig;
  readonly signal: AbortSignal;
  readonly log: Logger;
  /** Largest file, in bytes (0 = no limit). */
  readonly maxBytes: number;
  /** Most entries (0 = no limit). */
  readonly maxEntries: number;
  /** The job's client: transfers wait for a server-wide slot round-robin by client (transfer-pool.ts). */
  readonly client?: string | undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function short(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** The action of one entry (legacy form: `path` without `source`). Throws a refusal. */
async function parseAction(raw: unknown, policy: StagingPolicy): Promise<StageInAction> {
  if (!isRecord(raw)) throw new BadRequest('remote_staging.setup entry without an action');
  const actionType = raw['action_type'];
  if (typeof actionType !== 'string') throw new BadRequest('remote_staging.setup action without an action_type');
  switch (actionType) {
    case 'none':
    case 'rewrite':
      return { kind: 'nothing' };
    case 'remote_transfer':
      return { kind: 'remote_transfer', url: policy.checkUrl(raw['url']) };
    case 'remote_copy': {
      const source = isRecord(raw['source']) ? raw['source']['path'] : raw['path'];
      return { kind: 'remote_copy', source: await policy.checkCopySource(source) };
    }
    case 'message': {
      const contents = raw['contents'];
      if (typeof contents !== 'string') throw new BadRequest('message action without string contents');
      return { kind: 'message', contents };
    }
    default:
      if (UNSUPPORTED_ACTIONS.has(actionType)) {
        throw new JobRefused(`file action "${actionType}" is not supported by this server for server-side staging (supported: remote_transfer, remote_copy, message, none, rewrite)`);
      }
      throw new BadRequest(`unknown file action "${short(actionType)}" in remote_staging.setup`);
  }
}

/**
 * Check every entry: its name and type (the path it would write must lie in the job directory),
 * its action and what the action would reach. Later entries for the same path replace earlier ones.
 */
export async function parseSetup(setup: readonly unknown[], dir: JobDirectory, policy: StagingPolicy, maxEntries: number): Promise<StageInEntry[]> {
  if (maxEntries > 0 && setup.length > maxEntries) throw new BadRequest(`remote_staging.setup has more than ${maxEntries} entries (max_job_files)`);
  const byPath = new Map<string, StageInEntry>();
  for (const raw of setup) {
    if (!isRecord(raw)) throw new BadRequest('remote_staging.setup entries must be objects');
    const { name, type } = raw;
    if (typeof name !== 'string' || typeof type !== 'string') throw new BadRequest('remote_staging.setup entry without a name and type');
    if (!STAGE_IN_TYPES.has(type)) throw new BadRequest(`remote_staging.setup entry of type "${short(type)}" refused: stage-in writes ${[...STAGE_IN_TYPES].join(', ')}`);
    const fileType = type as FileType;
    // Throws PathDenied for names that would leave their directory (absolute, "..").
    const target = dir.computedPath(name, fileType);
    const action = await parseAction(raw['action'], policy);
    byPath.delete(target);
    byPath.set(target, { name, type: fileType, action });
  }
  return [...byPath.values()];
}

/** Write `source` (a stream factory) to `dest` through its partial file, then rename. */
async function writeThroughPartial(dest: string, write: (handle: fs.FileHandle) => Promise<void>): Promise<void> {
  const partial = partialPathFor(dest);
  const handle = await fs.open(partial, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_NOFOLLOW, 0o644);
  try {
    await write(handle);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await fs.rm(partial, { force: true });
    throw error;
  }
  await handle.close().catch(() => undefined);
  await fs.rename(partial, dest);
}

function rate(bytes: number, ms: number): string {
  const perSecond = ms > 0 ? (bytes * 1000) / ms : bytes;
  return `${(perSecond / (1024 * 1024)).toFixed(1)} MiB/s`;
}

async function runOne(entry: StageInEntry, ctx: StageInContext): Promise<void> {
  if (entry.action.kind === 'nothing') return;
  const dest = await ctx.dir.pathFor(entry.name, entry.type, true);
  const existing = await fs.lstat(dest).catch(() => undefined);
  if (existing !== undefined && !existing.isFile()) throw new PathDenied(`"${entry.name}" exists in the job directory and is not a regular file`);
  const action = entry.action;
  const began = Date.now();
  switch (action.kind) {
    case 'remote_transfer': {
      const result = await downloadInWorker(action.url.href, dest, {
        policy: ctx.policy,
        retry: ctx.retry,
        signal: ctx.signal,
        log: ctx.log,
        maxBytes: ctx.maxBytes,
        client: ctx.client,
      });
      ctx.log.info(
        { name: entry.name, type: entry.type, url: loggableUrl(action.url), bytes: result.bytes, ms: result.ms, rate: rate(result.bytes, result.ms), resumedFrom: result.resumedFrom, attempts: result.attempts },
        'staged in (remote_transfer)',
      );
      return;
    }
    case 'remote_copy': {
      const source = await fs.open(action.source, fsc.O_RDONLY | fsc.O_NOFOLLOW);
      let bytes: number;
      const partial = partialPathFor(dest);
      try {
        const st = await source.stat();
        if (!st.isFile()) throw new JobRefused('remote_copy source is not a regular file');
        if (ctx.maxBytes > 0 && st.size > ctx.maxBytes) throw new JobRefused(`remote_copy source is larger than the ${ctx.maxBytes} bytes allowed (max_upload_size)`);
        bytes = st.size;
        const out = await fs.open(partial, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_NOFOLLOW, 0o644);
        // Each stream owns its handle and closes it.
        await pipeline(source.createReadStream({ highWaterMark: 1 << 20 }), out.createWriteStream({ highWaterMark: 1 << 20 }), { signal: ctx.signal });
      } catch (error) {
        await source.close().catch(() => undefined);
        await fs.rm(partial, { force: true });
        throw error;
      }
      await fs.rename(partial, dest);
      const ms = Date.now() - began;
      ctx.log.info({ name: entry.name, type: entry.type, bytes, ms, rate: rate(bytes, ms) }, 'staged in (remote_copy)');
      return;
    }
    case 'message':
      await writeThroughPartial(dest, async (handle) => {
        await handle.writeFile(action.contents);
      });
      ctx.log.info({ name: entry.name, type: entry.type, bytes: Buffer.byteLength(action.contents) }, 'staged in (message)');
      return;
  }
}

/** What a failed entry tells the client (in the job's stderr): the file, the action and why. */
function failureOf(entry: StageInEntry, error: unknown): Error {
  const why = error instanceof Error ? error.message : String(error);
  const status = error instanceof HttpStatusError ? ` (HTTP status ${error.status})` : '';
  return new Error(`stage-in of ${entry.type} "${short(entry.name)}" (${entry.action.kind}) failed${status}: ${why}`, { cause: error });
}

/**
 * Run the entries, at most `concurrency` at once. The first failure stops the others (they are
 * aborted and awaited) and is thrown; so is an abort of `ctx.signal` (cancel, shutdown).
 */
export async function runStageIn(entries: readonly StageInEntry[], ctx: StageInContext, concurrency: number): Promise<void> {
  const local = new AbortController();
  const signal = AbortSignal.any([ctx.signal, local.signal]);
  const inner = { ...ctx, signal };
  let next = 0;
  let firstError: unknown;
  const worker = async (): Promise<void> => {
    while (firstError === undefined && !signal.aborted) {
      const entry = entries[next++];
      if (entry === undefined) return;
      try {
        await runOne(entry, inner);
      } catch (error) {
        if (firstError === undefined) firstError = ctx.signal.aborted ? error : failureOf(entry, error);
        local.abort();
        return;
      }
    }
  };
  await Promise.allSettled(Array.from({ length: Math.max(1, Math.min(concurrency, entries.length)) }, worker));
  if (firstError !== undefined) throw firstError;
  ctx.signal.throwIfAborted();
}
