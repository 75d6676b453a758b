import { createHash } from 'node:crypto';
import type { Stats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { isSafeRelativeName, isStrictlyInside } from '../jobs/paths.js';
import type { ToolDefinition } from './types.js';

interface CachedDigest {
  readonly size: number;
  readonly mtimeMs: number;
  readonly ino: number;
  readonly digest: string;
}

/**
 * Which bytes a tool file uploaded for a job must have: those of the file with that name in the
 * tool's directory. Digests are cached per real path and invalidated when size, mtime or inode
 * change (an admin updating a tool in place is picked up).
 */
export class ToolFiles {
  readonly #cache = new Map<string, CachedDigest>();

  /**
   * SHA-256 (hex) of `<toolDirectory>/<name>`, or undefined when `name` is not a regular file of
   * this tool: unsafe names (absolute, `..`, `.` or empty segments, backslash, NUL), missing
   * files, directories, and anything whose real path leaves the tool directory (symlinks).
   */
  async expectedDigest(tool: ToolDefinition, name: string): Promise<string | undefined> {
    if (!isSafeRelativeName(name)) return undefined;
    const base = tool.toolDirectory;
    let real: string;
    try {
      real = await fs.realpath(path.join(base, name));
    } catch {
      return undefined;
    }
    if (!isStrictlyInside(base, real)) return undefined;
    let st: Stats;
    try {
      st = await fs.stat(real);
    } catch {
      return undefined;
    }
    if (!st.isFile()) return undefined;
    const cached = this.#cache.get(real);
    if (cached !== undefined && cached.size === st.size && cached.mtimeMs === st.mtimeMs && cached.ino === st.ino) return cached.digest;
    let digest: string;
    try {
      digest = await sha256File(real);
    } catch {
      return undefined;
    }
    this.#cache.set(real, { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, digest });
    return digest;
  }
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  // O_NOFOLLOW: the real path was just resolved; a symlink swapped in since then is refused.
  const handle = await fs.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const buffer = Buffer.alloc(64 * 1024);
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
    }
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}
