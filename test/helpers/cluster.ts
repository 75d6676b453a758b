import test, { type TestFn } from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export type ClusterKind = 'slurm' | 'sge' | 'sshd';

/** Environment for Grid Engine clients and libdrmaa (as set up by scripts/ci/start-sge.sh). */
export const SGE_ENV: Readonly<Record<string, string>> = {
  SGE_ROOT: '/var/lib/gridengine',
  SGE_CELL: 'default',
  DRMAA_LIBRARY_PATH: '/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0',
};

async function probe(kind: ClusterKind): Promise<string | undefined> {
  try {
    if (kind === 'slurm') {
      const { stdout } = await run('sinfo', ['-h', '-o', '%T'], { timeout: 10_000 });
      if (!/idle|mix|alloc/.test(stdout)) return `Slurm answers but no node is usable (sinfo: ${stdout.trim() || 'empty'})`;
    } else if (kind === 'sge') {
      await run('qstat', ['-f'], { timeout: 10_000, env: { ...process.env, ...SGE_ENV } });
    } else {
      await run('ssh', ['-V'], { timeout: 10_000 });
      if (process.env['MAGNETAR_TEST_SSH_KEY'] === undefined) return 'MAGNETAR_TEST_SSH_KEY is not set (scripts/ci/start-sshd.sh sets up a key and an sshd on 127.0.0.1)';
    }
    return undefined;
  } catch (error) {
    return `${kind} is not reachable here: ${(error as Error).message.split('\n')[0]}`;
  }
}

/**
 * `test` when the cluster is up. Otherwise: in CI (CI=true) every test registered through it
 * fails with the reason (a missing cluster must not pass silently); elsewhere they are skipped and
 * the reason is printed once.
 */
export async function clusterTest(kind: ClusterKind): Promise<TestFn> {
  const reason = await probe(kind);
  if (reason === undefined) return test;
  if (process.env['CI'] === 'true') {
    const failing = ((title: string) => test(title, (t) => t.fail(`${kind} is required in CI: ${reason}`))) as unknown as TestFn;
    return Object.assign(failing, { serial: failing }) as TestFn;
  }
  console.log(`# skipping ${kind} tests: ${reason}`);
  return test.skip as unknown as TestFn;
}
