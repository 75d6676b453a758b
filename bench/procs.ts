/**
 * Find and kill the processes of a bench's jobs through /proc. Job scripts run in their own process
 * groups and outlive the server by design, so the bench must find them itself to (a) report the
 * ones a cancel + clean left behind and (b) never leave `sleep 600`s on the machine.
 *
 * Synchronous on purpose: it also runs from the SIGINT handler, and /proc holds only a few hundred
 * entries, so a scan costs a few milliseconds outside any measured window.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface JobProcess {
  readonly pid: number;
  /** Process group id. */
  readonly pgid: number;
  /** The job id: the first path component under the staging directory. */
  readonly jobId: string | undefined;
  readonly cmdline: string;
}

function readOr(file: string, fallback: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

function linkOr(file: string, fallback: string): string {
  try {
    return fs.readlinkSync(file);
  } catch {
    return fallback;
  }
}

/** Process group of `pid`, from /proc/<pid>/stat (field 5; the command name may contain spaces). */
function pgidOf(pid: number | 'self'): number | undefined {
  const stat = readOr(`/proc/${pid}/stat`, '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const pgid = Number(fields[2]);
  return Number.isSafeInteger(pgid) ? pgid : undefined;
}

/** `/<staging>/<id>/…` → `<id>` for the first staging path found in `text`. */
function jobIdIn(text: string, roots: readonly string[]): string | undefined {
  for (const root of roots) {
    const at = text.indexOf(`${root}/`);
    if (at >= 0) return text.slice(at + root.length + 1).split(/[/\0 ]/)[0] || undefined;
  }
  return undefined;
}

/**
 * Processes whose command line names a path under `staging` (the job scripts: `/bin/bash
 * <staging>/<id>/command.sh`) or whose working directory is under it (what the scripts start, e.g.
 * `sleep`, and the launcher's per-job watcher subshells). The bench process is never included.
 */
export function findJobProcesses(staging: string): JobProcess[] {
  const roots = [...new Set([staging, realpathOr(staging)])];
  const found: JobProcess[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const cmdline = readOr(`/proc/${pid}/cmdline`, '');
    // A deleted directory reads back as "<path> (deleted)", which still starts with the root.
    const cwd = linkOr(`/proc/${pid}/cwd`, '');
    const underCwd = roots.some((r) => cwd === r || cwd.startsWith(`${r}/`));
    if (!underCwd && !roots.some((r) => cmdline.includes(`${r}/`))) continue;
    const pgid = pgidOf(pid);
    if (pgid === undefined) continue; // gone meanwhile
    found.push({ pid, pgid, jobId: jobIdIn(underCwd ? cwd : cmdline, roots), cmdline: cmdline.replaceAll('\0', ' ').trim() });
  }
  return found;
}

function realpathOr(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/**
 * SIGKILL every job process under `staging`, by PID. A job script leads its own process group, so
 * that whole group is killed too (it catches children that changed directory). Never a group that
 * is not led by a found process: the launcher's watcher subshells share the server's group, which
 * is the bench's own.
 */
export function killJobProcesses(staging: string): number {
  const own = pgidOf('self');
  const found = findJobProcesses(staging);
  for (const p of found) {
    try {
      if (p.pgid === p.pid && p.pgid !== own) process.kill(-p.pgid, 'SIGKILL');
      else process.kill(p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  return found.length;
}

/** Poll until no job process is left under `staging` or `ms` passed; returns what is left. */
export async function waitForNoJobProcesses(staging: string, ms: number): Promise<JobProcess[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = findJobProcesses(staging);
    if (left.length === 0 || Date.now() >= deadline) return left;
    await sleep(100);
  }
}
