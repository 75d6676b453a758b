import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { SandboxConfig } from '../config/types.js';
import { CONTROL_FILES, SETUP_DIRECTORIES } from './layout.js';
import { shellQuote } from './script.js';

/**
 * The job sandbox: the client's command runs under bubblewrap, the job script's bookkeeping (pid,
 * return code, instrument files) outside it. Inside, the command sees the system directories
 * read-only, a few files of /etc, its own job directory read-write at its real path, a private
 * /tmp, /proc of its own PID namespace and nothing else of the server's. It has new user, PID,
 * IPC, UTS, cgroup and (unless `sandbox_network`) network namespaces, and when the script runs as
 * root it runs as `sandbox_uid`/`sandbox_gid`, with rlimits from the configuration.
 *
 * The command's text reaches bwrap on fd 3 (a here-string: no 128 KiB argument limit, no file on
 * the host) and bwrap copies it to a read-only `SANDBOXED_COMMAND` that bash runs inside, so what
 * runs is the validated text.
 */

/** System directories mounted read-only where they exist (a symlink `/bin -> usr/bin` is followed). */
const SYSTEM_DIRECTORIES = ['/usr', '/bin', '/sbin', '/lib', '/lib64', '/lib32', '/libx32'] as const;

/**
 * What of /etc programs need: users and groups (no passwords: not `shadow`), name resolution, the
 * dynamic linker's cache, TLS roots (not `ssl/private`; Debian's and Red Hat's places), Debian's
 * alternatives (`/usr/bin/awk` links there) and the time zone. Anything else an administrator
 * keeps under /etc stays invisible. Each entry is one mount per job: keep the list short.
 */
const ETC_ENTRIES = [
  'passwd', 'group', 'hosts', 'host.conf', 'nsswitch.conf', 'resolv.conf', 'gai.conf', 'services', 'ld.so.cache',
  'ssl/certs', 'ssl/openssl.cnf', 'ca-certificates', 'pki/tls/certs', 'pki/ca-trust', 'alternatives', 'localtime',
] as const;

/** Where the command's text appears inside the sandbox (a read-only copy, nothing on the host). */
export const SANDBOXED_COMMAND = '/magnetar/command.sh';

/** Entries of one directory whose owner is changed at once. */
const HAND_OVER_BATCH = 64;

/** Directories setup creates, plus `tmp` and `home`: handed to the sandbox uid with what they hold. */
const HANDED_OVER = [...SETUP_DIRECTORIES, CONTROL_FILES.tmp, CONTROL_FILES.home] as const;

/** The bwrap arguments (after the binary) that run the script read from fd 3 sandboxed for the job in `jobDirectory`. */
export function bwrapArguments(sandbox: SandboxConfig, jobDirectory: string): string[] {
  const args = ['--unshare-all', '--unshare-user', '--disable-userns', '--die-with-parent'];
  if (sandbox.network) args.push('--share-net');
  for (const dir of SYSTEM_DIRECTORIES) args.push('--ro-bind-try', dir, dir);
  for (const entry of ETC_ENTRIES) args.push('--ro-bind-try', `/etc/${entry}`, `/etc/${entry}`);
  args.push('--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--tmpfs', '/var/tmp');
  for (const bind of sandbox.roBinds) args.push('--ro-bind-try', bind, bind);
  args.push('--bind', jobDirectory, jobDirectory);
  // The job script reads itself as it runs and the server trusts `pid`: the command may not change them.
  for (const file of [CONTROL_FILES.script, CONTROL_FILES.pid]) {
    const at = path.join(jobDirectory, file);
    args.push('--ro-bind-try', at, at);
  }
  args.push('--ro-bind-data', '3', SANDBOXED_COMMAND);
  // The sandbox's root (and the directories down to the job's) read-only: /tmp, /var/tmp and the
  // job directory are mounts of their own and stay writable.
  args.push('--remount-ro', '/');
  args.push('--chdir', path.join(jobDirectory, 'working'));
  args.push('--', '/bin/bash', SANDBOXED_COMMAND);
  return args;
}

/** `setpriv` arguments that drop root for the sandbox's uid and gid (no supplementary groups). */
export function dropRootArguments(sandbox: SandboxConfig): string[] {
  return [`--reuid=${sandbox.uid}`, `--regid=${sandbox.gid}`, '--clear-groups', '--'];
}

/** `ulimit` statements for the configured limits (bash counts -v and -f in KiB); 0 = not limited. */
export function limitStatements(sandbox: SandboxConfig): string[] {
  const kib = (bytes: number): number => Math.max(1, Math.floor(bytes / 1024));
  const limits: string[] = [];
  if (sandbox.cpuTime > 0) limits.push(`ulimit -t ${sandbox.cpuTime}`);
  if (sandbox.memory > 0) limits.push(`ulimit -v ${kib(sandbox.memory)}`);
  if (sandbox.processes > 0) limits.push(`ulimit -u ${sandbox.processes}`);
  if (sandbox.fileSize > 0) limits.push(`ulimit -f ${kib(sandbox.fileSize)}`);
  return limits.length === 0 ? [] : [`${limits.join(' && ')} || exit 1`];
}

/**
 * The job script's lines that run `innerScript` (the command and the statements that belong to it)
 * in the sandbox; its exit status is the command's. In a subshell, so the limits bind only the
 * command. As root, the job's directories are handed to the sandbox uid first (unless the server
 * did: `handOver`): `command.sh` and `pid` in the job directory itself stay root's (and are
 * mounted read-only inside anyway). Nothing of the job runs meanwhile, and other jobs cannot see
 * this directory, so the `chown` races nobody.
 */
export function sandboxedRun(sandbox: SandboxConfig, jobDirectory: string, innerScript: string): string[] {
  const q = shellQuote;
  const owner = `${sandbox.uid}:${sandbox.gid}`;
  const bwrap = [q(sandbox.bwrap), ...bwrapArguments(sandbox, jobDirectory).map(q)].join(' ');
  return [
    `_magnetar_command=${q(innerScript)}`,
    '(',
    // Descriptors the server or the launcher left open (bwrap passes them all in) end here.
    '    for _magnetar_fd in /proc/$BASHPID/fd/*; do',
    '        _magnetar_fd=${_magnetar_fd##*/}',
    '        case $_magnetar_fd in 0|1|2|255) ;; *) { exec {_magnetar_fd}>&-; } 2>/dev/null ;; esac',
    '    done',
    `    command -v ${q(sandbox.bwrap)} >/dev/null || { echo "magnetar: bubblewrap (${sandbox.bwrap.replace(/[^A-Za-z0-9/._-]/g, '?')}) is not installed on $HOSTNAME: the job cannot run in its sandbox" >&2; exit 127; }`,
    `    _magnetar_bwrap=(${bwrap})`,
    '    if [ "$EUID" -eq 0 ]; then',
    // Still root's: the server did not hand the directories over (a cluster node running as root).
    `        if [ -O ${q(jobDirectory)} ]; then`,
    `            chown -hR -- ${owner} ${HANDED_OVER.map((d) => q(path.join(jobDirectory, d))).join(' ')} && chown -- ${owner} ${q(jobDirectory)} || exit 1`,
    '        fi',
    ...limitStatements(sandbox).map((l) => `        ${l}`),
    `        exec setpriv ${dropRootArguments(sandbox).join(' ')} "\${_magnetar_bwrap[@]}" 3<<<"$_magnetar_command"`,
    '    fi',
    ...limitStatements(sandbox).map((l) => `    ${l}`),
    '    exec "${_magnetar_bwrap[@]}" 3<<<"$_magnetar_command"',
    ')',
  ];
}

/**
 * Hand the job's directories (and what they hold) to the sandbox uid, and the job directory
 * itself (not what else is in it: `command.sh` and `pid` stay the server's), as the job script's
 * `chown` would, but without starting a process: local jobs of a server running as root, at
 * submit, once the uploads are closed and before anything of the job runs. Links are changed
 * themselves, never followed. The script then sees the directory is no longer root's and skips
 * its own `chown`.
 */
export async function handOver(jobDirectory: string, sandbox: SandboxConfig): Promise<void> {
  const { uid, gid } = sandbox;
  // An upload refused at submit may still be removing its temp file: what is gone is no matter.
  const gone = (e: NodeJS.ErrnoException): void => {
    if (e.code !== 'ENOENT') throw e;
  };
  // Entries of one directory are changed a batch at a time (a job may hold max_job_files of them).
  const walk = async (dir: string): Promise<void> => {
    await fs.lchown(dir, uid, gid);
    const entries = await fs.readdir(dir, { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => (gone(e), []));
    for (let i = 0; i < entries.length; i += HAND_OVER_BATCH) {
      await settleAll(
        entries.slice(i, i + HAND_OVER_BATCH).map(async (entry) => {
          const at = path.join(dir, entry.name);
          await (entry.isDirectory() ? walk(at) : fs.lchown(at, uid, gid)).catch(gone);
        }),
      );
    }
  };
  await settleAll(
    HANDED_OVER.map(async (name) => {
      const at = path.join(jobDirectory, name);
      await fs.mkdir(at).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
      await walk(at);
    }),
  );
  await fs.lchown(jobDirectory, uid, gid);
}

/** Wait for every one of `work` (none is left running), then throw the first failure, if any. */
async function settleAll(work: readonly Promise<unknown>[]): Promise<void> {
  const failed = (await Promise.allSettled(work)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
}

/**
 * Can this machine run the sandbox as configured for jobs under `stagingDirectory`? Runs `exit 0`
 * in it exactly as a job script would, in a scratch job directory there (so that a staging
 * directory the sandbox uid cannot reach is found now, not by the first job). Resolves with
 * undefined, or a one-line reason.
 */
export async function probeSandbox(sandbox: SandboxConfig, stagingDirectory: string, env: Readonly<Record<string, string>>): Promise<string | undefined> {
  await fs.mkdir(stagingDirectory, { recursive: true });
  const dir = await fs.mkdtemp(path.join(stagingDirectory, '.magnetar-sandbox-probe-'));
  try {
    await Promise.all(HANDED_OVER.map((d) => fs.mkdir(path.join(dir, d))));
    const script = [...sandboxedRun(sandbox, dir, 'exit 0'), 'exit $?', ''].join('\n');
    const { code, stderr, error } = await run('/bin/bash', ['-c', script], env);
    if (error !== undefined) return `/bin/bash could not be run (${error})`;
    if (code === 0) return undefined;
    const said = stderr.trim().split('\n').pop()?.slice(0, 200) ?? '';
    if (code === 127) return `${sandbox.bwrap} was not found: install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)`;
    const reach =
      process.getuid?.() === 0 && /Permission denied/.test(said)
        ? ` (uid ${sandbox.uid} must be able to search every directory above ${stagingDirectory}, and to read the read-only binds)`
        : '';
    return `bubblewrap cannot create the job sandbox on this machine: exit ${String(code)}${said === '' ? '' : `, ${said}`}${reach}`;
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

function run(command: string, args: readonly string[], env: Readonly<Record<string, string>>): Promise<{ code: number | null; stderr: string; error?: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      if (stderr.length < 4096) stderr += chunk;
    });
    child.on('error', (e: NodeJS.ErrnoException) => resolve({ code: null, stderr, error: e.code ?? e.message }));
    child.on('close', (code) => resolve({ code, stderr }));
  });
}
