import { constants as fsc, type Stats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { BadFileName, BadRequest, FileNotFound, JobRefused, PathDenied } from '../errors.js';
import { CONTROL_FILES, JOB_STREAMS, RESERVED_JOBDIR_NAMES, SETUP_DIRECTORIES } from './layout.js';
import { globMatches, hasGlobChars, parseGlob } from './glob.js';
import { isInside, relativeNameProblem } from './paths.js';

/** File types of PROTOCOL §4.2. */
export const FILE_TYPES = [
  'input', 'unstructured', 'config', 'tool', 'jobdir', 'workdir', 'metadata',
  'output', 'output_workdir', 'output_metadata', 'output_jobdir',
] as const;
export type FileType = (typeof FILE_TYPES)[number];

interface TypeRule { readonly base: string; readonly nested: boolean }
const RULES: Readonly<Record<FileType, TypeRule>> = {
  input: { base: 'inputs', nested: true },
  unstructured: { base: 'unstructured', nested: true },
  config: { base: 'configs', nested: false },
  tool: { base: 'tool_files', nested: true },
  jobdir: { base: '', nested: false },
  workdir: { base: 'working', nested: false },
  metadata: { base: 'metadata', nested: true },
  output: { base: 'outputs', nested: true },
  output_workdir: { base: 'working', nested: true },
  output_metadata: { base: 'metadata', nested: true },
  output_jobdir: { base: '', nested: false },
};

/** Types a client may upload into (the output types only ever flow back to the client). */
const UPLOAD_TYPES: ReadonlySet<FileType> = new Set(['input', 'unstructured', 'config', 'tool', 'jobdir', 'workdir', 'metadata']);

export function isFileType(value: string): value is FileType {
  return (FILE_TYPES as readonly string[]).includes(value);
}

/** Split a client-supplied relative name into safe components, or throw. */
function nameComponents(name: string): string[] {
  const problem = relativeNameProblem(name);
  if (problem === undefined) return name.split('/');
  // An attempt to leave the directory is refused as such (403); a malformed name is a bad request.
  if (problem.escapes) throw new PathDenied(`file name refused: ${problem.reason}`);
  throw new BadFileName(`file name refused: ${problem.reason}`);
}

/** Uploads stream into `<jobdir>/.upload-<random>.part` until they are published. */
const UPLOAD_TEMP_PREFIX = '.upload-';

async function realPathOfFd(fd: number): Promise<string> {
  return fs.readlink(`/proc/self/fd/${fd}`);
}

export interface ByteBudget {
  /** Called for every chunk before it is written; throws (PayloadTooLarge) to refuse the upload. */
  readonly take: (bytes: number) => void;
}

/** An upload streamed to its temp file, not yet visible under its name. */
export interface StagedUpload {
  readonly path: string;
  readonly bytes: number;
  /** Rename the temp file over the real name; resolves with the size of the file it replaced (0 if none). */
  publish(): Promise<number>;
  /** Remove the temp file. */
  discard(): Promise<void>;
}

export interface OpenedDownload {
  readonly handle: fs.FileHandle;
  readonly size: number;
}

/**
 * A job's directory: the only place that turns a client-supplied name into a server path.
 * Every name is validated, parents are created without following symlinks, and every opened file
 * is checked (through /proc/self/fd) to really lie inside the directory it was meant for.
 */
export class JobDirectory {
  readonly root: string;
  readonly #staging: string;
  readonly #jobId: string;
  readonly #mode: number | undefined;
  #realRoot: Promise<string> | undefined;

  /** `realStaging`, when known, is `realpath(stagingDirectory)` (saves resolving it per request). */
  constructor(stagingDirectory: string, jobId: string, mode?: number, realStaging?: string) {
    this.root = path.join(stagingDirectory, jobId);
    this.#staging = stagingDirectory;
    this.#jobId = jobId;
    this.#mode = mode;
    if (realStaging !== undefined) this.#realRoot = Promise.resolve(path.join(realStaging, jobId));
  }

  /**
   * Where the job directory really is: the staging directory resolved (an administrator may
   * point it through a symlink) joined with the id — never the job directory resolved, so a job
   * directory or sub-directory replaced by a symlink can never widen what counts as inside.
   */
  async #trustedRoot(): Promise<string> {
    this.#realRoot ??= fs.realpath(this.#staging).then((s) => path.join(s, this.#jobId));
    return this.#realRoot;
  }

  get working(): string { return path.join(this.root, 'working'); }
  get metadata(): string { return path.join(this.root, 'metadata'); }
  get outputs(): string { return path.join(this.root, 'outputs'); }
  get configs(): string { return path.join(this.root, 'configs'); }
  get toolFiles(): string { return path.join(this.root, 'tool_files'); }
  get inputs(): string { return path.join(this.root, 'inputs'); }
  get unstructured(): string { return path.join(this.root, 'unstructured'); }
  /** A control file's absolute path (`layout.ts` names them). */
  control(name: keyof typeof CONTROL_FILES): string { return path.join(this.root, CONTROL_FILES[name]); }
  get scriptPath(): string { return this.control('script'); }
  get returnCodePath(): string { return this.control('returnCode'); }
  get jobStdoutPath(): string { return path.join(this.metadata, JOB_STREAMS.stdout); }
  get jobStderrPath(): string { return path.join(this.metadata, JOB_STREAMS.stderr); }

  async exists(): Promise<boolean> {
    try {
      return (await fs.lstat(this.root)).isDirectory();
    } catch {
      return false;
    }
  }

  /** Create the job directory and its six sub-directories; an existing directory is removed first. */
  async create(): Promise<void> {
    await this.remove();
    const mode = this.#mode;
    await fs.mkdir(this.root, mode === undefined ? {} : { mode });
    await Promise.all(SETUP_DIRECTORIES.map((d) => fs.mkdir(path.join(this.root, d), mode === undefined ? {} : { mode })));
    if (mode !== undefined) {
      // mkdir's mode is filtered by the umask; the administrator asked for exactly this mode.
      await Promise.all([this.root, ...SETUP_DIRECTORIES.map((d) => path.join(this.root, d))].map((p) => fs.chmod(p, mode)));
    }
  }

  async remove(): Promise<void> {
    await fs.rm(this.root, { recursive: true, force: true, maxRetries: 3 });
  }

  /** Base directory and relative components a (name, type) pair designates, after validation. */
  #locate(name: string, type: FileType): { base: string; parts: string[] } {
    const rule = RULES[type];
    let parts = nameComponents(name);
    if (!rule.nested) parts = [parts[parts.length - 1]!];
    const base = rule.base === '' ? this.root : path.join(this.root, rule.base);
    if (rule.base === '' && RESERVED_JOBDIR_NAMES.has(parts[0]!)) {
      throw new PathDenied(`"${parts[0]}" is a reserved name in the job directory`);
    }
    return { base, parts };
  }

  /**
   * Make sure every parent directory of `parts` exists below `base` as a real directory (never a
   * symlink) and return the absolute parent path.
   */
  async #ensureParents(base: string, parts: readonly string[], create: boolean): Promise<string> {
    await this.#assertRealDirectory(this.root);
    let current = base;
    if (create) await fs.mkdir(current, { recursive: false }).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw e; });
    await this.#assertRealDirectory(current);
    for (const part of parts.slice(0, -1)) {
      current = path.join(current, part);
      if (create) {
        try {
          await fs.mkdir(current, this.#mode === undefined ? {} : { mode: this.#mode });
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
      }
      await this.#assertRealDirectory(current);
    }
    return current;
  }

  async #assertRealDirectory(p: string): Promise<void> {
    let st: Stats;
    try {
      st = await fs.lstat(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new FileNotFound('no such job directory or sub-directory', { cause: e });
      throw e;
    }
    if (st.isSymbolicLink()) throw new PathDenied('a directory on this path is a symbolic link');
    if (!st.isDirectory()) throw new PathDenied('a path component is not a directory');
  }

  /** `GET files/path` and the upload response: where the file of this name and type lives. */
  /** The path for (name, type), computed from the name alone: nothing on disk is read or made. */
  computedPath(name: string, type: FileType): string {
    const { base, parts } = this.#locate(name, type);
    return path.join(base, ...parts);
  }

  async pathFor(name: string, type: FileType, createParents: boolean): Promise<string> {
    const { base, parts } = this.#locate(name, type);
    if (type.startsWith('output')) {
      // Output paths are answered without creating anything (PROTOCOL §4.4).
      return path.join(base, ...parts);
    }
    const parent = await this.#ensureParents(base, parts, createParents);
    return path.join(parent, parts[parts.length - 1]!);
  }

  /**
   * Stream `body` into a temp file next to the file for (name, type), created with
   * O_EXCL|O_NOFOLLOW and verified to be inside the job directory. Nothing is visible under the
   * real name until the caller publishes it (an atomic rename): the job service does that under
   * the job's lock, so an upload can never change a file that a submit has started to authorize.
   */
  async stageUpload(name: string, type: FileType, body: Readable, budget: ByteBudget, expectedSha256?: string): Promise<StagedUpload> {
    if (!UPLOAD_TYPES.has(type)) throw new BadRequest(`files of type "${type}" cannot be uploaded`);
    const { base, parts } = this.#locate(name, type);
    await this.#assertRealDirectory(this.root);
    // The temp file lives in the job directory itself, never in the destination directory, and
    // the destination's parents are made only when the upload is published (under the job's
    // lock): a submit that reads `configs/` while an upload streams sees only published files.
    const tmpName = `${UPLOAD_TEMP_PREFIX}${randomBytes(8).toString('hex')}.part`;
    const tmpPath = path.join(this.root, tmpName);
    const handle = await fs.open(tmpPath, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o644);
    let bytes = 0;
    let streaming = false;
    const hash = expectedSha256 === undefined ? undefined : createHash('sha256');
    try {
      const real = await realPathOfFd(handle.fd);
      if (real !== path.join(await this.#trustedRoot(), tmpName)) throw new PathDenied('upload target escapes the job directory');
      const counter = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          try {
            budget.take(chunk.length);
          } catch (error) {
            cb(error as Error);
            return;
          }
          bytes += chunk.length;
          hash?.update(chunk);
          cb(null, chunk);
        },
      });
      // The stream owns the handle from here and closes it (a FileHandle with a live stream on it
      // cannot be closed by hand: close() would wait for the stream forever).
      const sink = handle.createWriteStream({ highWaterMark: 1 << 20 });
      streaming = true;
      await pipeline(body, counter, sink);
      if (!sink.closed) await once(sink, 'close');
      if (hash !== undefined && hash.digest('hex') !== expectedSha256) {
        throw new JobRefused(`"${name}" differs from the toolbox's copy of this tool file`);
      }
    } catch (e) {
      if (!streaming) await handle.close().catch(() => undefined);
      await fs.rm(tmpPath, { force: true });
      throw e;
    }
    return {
      path: path.join(base, ...parts),
      bytes,
      publish: async () => {
        const parent = await this.#ensureParents(base, parts, RULES[type].nested);
        const finalPath = path.join(parent, parts[parts.length - 1]!);
        const replaced = await this.#refuseNonRegularTarget(finalPath);
        await fs.rename(tmpPath, finalPath);
        return replaced;
      },
      discard: async () => {
        await fs.rm(tmpPath, { force: true });
      },
    };
  }

  /** Create an empty file (or keep an existing one) for `touch_outputs`. */
  async touchOutput(name: string): Promise<void> {
    const { base, parts } = this.#locate(name, 'output');
    const parent = await this.#ensureParents(base, parts, true);
    const target = path.join(parent, parts[parts.length - 1]!);
    const handle = await fs.open(target, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_APPEND | fsc.O_NOFOLLOW, 0o644);
    await handle.close();
  }

  /** Refuse a target that exists as anything but a regular file; resolves with its size (0: none). */
  async #refuseNonRegularTarget(p: string): Promise<number> {
    let st: Stats;
    try {
      st = await fs.lstat(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      return 0;
    }
    if (!st.isFile()) throw new PathDenied('upload target exists and is not a regular file');
    return st.size;
  }

  /** Open an output for download (PROTOCOL §4.4); symlinks are followed only if they stay inside. */
  async openDownload(name: string, type: string): Promise<OpenedDownload> {
    const effective: FileType = type === 'output_workdir' || type === 'output_metadata' || type === 'output_jobdir' ? type : 'output';
    let { base, parts } = this.#locate(name, effective);
    if (effective === 'output_workdir' && hasGlobChars(name)) {
      parts = await this.#expandGlob(base, parts);
    }
    const target = path.join(base, ...parts);
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(target, fsc.O_RDONLY | fsc.O_NONBLOCK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new FileNotFound(`no ${effective} file named "${name}"`, { cause: e });
      if (code === 'ELOOP' || code === 'EACCES') throw new PathDenied(`file "${name}" cannot be read`, { cause: e });
      throw e;
    }
    try {
      const [real, root, st] = await Promise.all([realPathOfFd(handle.fd), this.#trustedRoot(), handle.stat()]);
      const realBase = path.join(root, RULES[effective].base);
      if (!isInside(realBase, real) || real === realBase) throw new PathDenied(`file "${name}" resolves outside its directory`);
      if (!st.isFile()) throw new FileNotFound(`"${name}" is not a regular file`);
      return { handle, size: st.size };
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  async #expandGlob(base: string, parts: string[]): Promise<string[]> {
    const pattern = parts.join('/');
    // Parsed (and refused when malformed or over-long) before anything is listed.
    const glob = parseGlob(pattern);
    const depth = parts.length;
    const candidates = (await listFiles(base, depth)).filter((c) => c.split('/').length === depth).sort();
    for (let i = 0; i < candidates.length; i++) {
      // Matching is linear-ish per name, but a directory may hold many names: let others in.
      if (i > 0 && i % 64 === 0) await yieldToEventLoop();
      if (globMatches(glob, candidates[i]!)) return candidates[i]!.split('/');
    }
    throw new FileNotFound(`no working-directory file matches "${pattern}"`);
  }

  /** Read at most `limit` bytes (0 = all) of a file inside the job directory, never through a symlink. */
  async readSmall(relative: string, limit: number): Promise<string | undefined> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(path.join(this.root, relative), fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    } catch {
      return undefined;
    }
    try {
      const [st, real, root] = await Promise.all([handle.stat(), realPathOfFd(handle.fd), this.#trustedRoot()]);
      // Exactly the file asked for: no directory on the way may have been a symlink.
      if (!st.isFile() || real !== path.join(root, relative)) return undefined;
      const size = limit > 0 ? Math.min(st.size, limit) : st.size;
      const buf = Buffer.alloc(size);
      let off = 0;
      while (off < size) {
        const { bytesRead } = await handle.read(buf, off, size - off, off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      return buf.subarray(0, off).toString('utf8');
    } finally {
      await handle.close();
    }
  }

  /**
   * A dynamic file source (`galaxy.json`) below `working/`, if it exists there as a regular file
   * and does not resolve outside `working/` (PROTOCOL §14 item 6).
   */
  async readWorkingFile(name: string, limit: number): Promise<string | undefined> {
    let parts: string[];
    try {
      parts = nameComponents(name);
    } catch {
      return undefined;
    }
    return this.readSmall(path.join('working', ...parts), limit);
  }

  /** Recursive list of regular files (symlinks to files included) below `sub`, `/`-joined. */
  async contents(sub: 'working' | 'metadata' | 'outputs'): Promise<string[]> {
    try {
      await this.#assertRealDirectory(this.root);
      await this.#assertRealDirectory(path.join(this.root, sub));
    } catch {
      return [];
    }
    return listFiles(path.join(this.root, sub), 64);
  }

  /** Names (files and directories) directly in the job directory. */
  async topLevelNames(): Promise<string[]> {
    try {
      return (await fs.readdir(this.root)).filter((n) => !n.startsWith(UPLOAD_TEMP_PREFIX));
    } catch {
      return [];
    }
  }
}

const MAX_LISTED = 100_000;

async function listFiles(dir: string, maxDepth: number): Promise<string[]> {
  const out: string[] = [];
  async function walk(abs: string, rel: string, depth: number): Promise<void> {
    let entries;
    try {
      entries = await fs.readdir(abs, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      if (out.length >= MAX_LISTED) return;
      const childRel = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isFile()) out.push(childRel);
      else if (entry.isDirectory()) {
        if (depth < maxDepth) await walk(path.join(abs, entry.name), childRel, depth + 1);
      } else if (entry.isSymbolicLink()) {
        try {
          if ((await fs.stat(path.join(abs, entry.name))).isFile()) out.push(childRel);
        } catch {
          // dangling link: not listed
        }
      }
    }
  }
  await walk(dir, '', 1);
  return out;
}
