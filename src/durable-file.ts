import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

/**
 * Write `content` to `target` so that a crash leaves either the old file or the whole new one: a
 * temp file beside it (`<target>.<hex>.tmp`, created O_EXCL|O_NOFOLLOW, mode 0600), fsynced, then
 * renamed over it (the rename replaces a symlink at `target` instead of following it). The temp
 * file is removed when anything fails. `syncDirectory` also fsyncs the directory, so the rename
 * itself survives a power loss.
 */
export async function writeFileDurably(target: string, content: string | Buffer, options: { readonly syncDirectory?: boolean } = {}): Promise<void> {
  const temp = `${target}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    const handle = await fs.open(temp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
    try {
      await handle.writeFile(content);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, target);
  } catch (error) {
    await fs.rm(temp, { force: true }).catch(() => undefined);
    throw error;
  }
  if (options.syncDirectory === true) {
    const dir = await fs.open(path.dirname(target), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
