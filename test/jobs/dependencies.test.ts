import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { dependencyStatements, describeDependencies, resolveDependencies } from '../../src/jobs/dependencies.js';
import { buildJobScript } from '../../src/jobs/script.js';

const run = promisify(execFile);

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-deps-')));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** `<deps>/<name>/<version>/env.sh` that records itself on `$MAGNETAR_DEPS`. */
async function installPackage(deps: string, name: string, version: string, body?: string): Promise<string> {
  const dir = path.join(deps, name, version);
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'env.sh'), body ?? `MAGNETAR_DEPS="\${MAGNETAR_DEPS}${name}-${version}@$PACKAGE_BASE "\nexport MAGNETAR_DEPS\n`);
  return dir;
}

const requirement = (name: unknown, version?: unknown, type: unknown = 'package'): Record<string, unknown> =>
  version === undefined ? { name, type } : { name, type, version };

test('a package with env.sh is sourced, with PACKAGE_BASE as upstream; missing ones are skipped', async (t) => {
  const deps = await tempDir(t);
  const samtools = await installPackage(deps, 'samtools', '1.9');
  const description = {
    requirements: [requirement('samtools', '1.9'), requirement('bwa', '0.7.17'), requirement('samtools', '2.0')],
    installed_tool_dependencies: [],
  };
  t.deepEqual(await dependencyStatements(description, deps), [
    `PACKAGE_BASE='${samtools}'; export PACKAGE_BASE; . '${samtools}/env.sh'`,
  ]);
  const resolution = await resolveDependencies(description, deps);
  t.deepEqual(resolution.skipped.map((s) => [s.name, s.version, s.reason]), [
    ['bwa', '0.7.17', 'not installed'],
    ['samtools', '2.0', 'not installed'],
  ]);
  t.is(describeDependencies(resolution), '1 of 3 requirements resolved: samtools 1.9; skipped: bwa 0.7.17 (not installed), samtools 2.0 (not installed)');
});

test('without a version the default symbolic link is used; a default that is not a link is not', async (t) => {
  const deps = await tempDir(t);
  const real = await installPackage(deps, 'bwa', '0.7.17');
  await fs.symlink('0.7.17', path.join(deps, 'bwa', 'default'));
  await installPackage(deps, 'plain', 'default');
  for (const version of [undefined, null, '']) {
    t.deepEqual(await dependencyStatements({ requirements: [requirement('bwa', version)] }, deps), [
      `PACKAGE_BASE='${real}'; export PACKAGE_BASE; . '${real}/env.sh'`,
    ]);
  }
  const resolution = await resolveDependencies({ requirements: [requirement('bwa'), requirement('plain')] }, deps);
  t.is(resolution.resolved[0]?.version, '0.7.17');
  t.is(resolution.skipped[0]?.reason, 'no default version (default is not a symbolic link)');
  t.is(describeDependencies(resolution), '1 of 2 requirements resolved: bwa default→0.7.17; skipped: plain (no default version (default is not a symbolic link))');
});

test('a package with bin/ but no env.sh goes on the PATH, as upstream', async (t) => {
  const deps = await tempDir(t);
  await fs.mkdir(path.join(deps, 'tool', '1', 'bin'), { recursive: true });
  t.deepEqual(await dependencyStatements({ requirements: [requirement('tool', '1')] }, deps), [
    `PACKAGE_BASE='${deps}/tool/1'; export PACKAGE_BASE; PATH='${deps}/tool/1/bin':"$PATH"; export PATH`,
  ]);
  await fs.mkdir(path.join(deps, 'empty', '1'), { recursive: true });
  t.is((await resolveDependencies({ requirements: [requirement('empty', '1')] }, deps)).skipped[0]?.reason, 'installed without env.sh or bin/');
});

test('no tool_dependency_dir, no description, other types and malformed descriptions resolve nothing', async (t) => {
  const deps = await tempDir(t);
  await installPackage(deps, 'samtools', '1.9');
  const description = { requirements: [requirement('samtools', '1.9')] };
  t.deepEqual(await dependencyStatements(description, undefined), []);
  t.regex(describeDependencies(await resolveDependencies(description, undefined)) ?? '', /dependency resolution is off/);
  t.deepEqual(await dependencyStatements(description, path.join(deps, 'missing')), []);
  for (const nothing of [null, undefined, {}, { requirements: 'x' }, [], 'not json', 42, { requirements: [null, 1, 'samtools'] }]) {
    t.deepEqual(await dependencyStatements(nothing, deps), [], JSON.stringify(nothing));
  }
  t.is(describeDependencies(await resolveDependencies(null, deps)), undefined);
  t.deepEqual(await dependencyStatements({ requirements: [requirement('samtools', '1.9', 'set_environment')] }, deps), []);
  t.deepEqual((await dependencyStatements(JSON.stringify(description), deps)).length, 1, 'a JSON string is read too');
  t.deepEqual((await dependencyStatements({ requirements: [{ name: 'samtools', version: '1.9' }] }, deps)).length, 1, 'type defaults to package');
  t.deepEqual((await dependencyStatements({ requirements: [requirement('samtools', '1.9'), requirement('samtools', '1.9')] }, deps)).length, 1, 'sourced once');
});

test('names and versions that could leave the directory are refused', async (t) => {
  const root = await tempDir(t);
  const deps = path.join(root, 'deps');
  await installPackage(deps, 'ok', '1');
  // Targets outside the dependency directory that a traversal would reach.
  await installPackage(root, 'outside', '1');
  await fs.mkdir(path.join(deps, 'x'), { recursive: true });
  const hostile: Array<[unknown, unknown]> = [
    ['..', 'outside/1'],
    ['../outside', '1'],
    ['ok', '../../outside/1'],
    ['.', 'ok'],
    ['..', undefined],
    ['x', '..'],
    ['/etc', 'x'],
    ['ok/1', undefined],
    ['ok', '1/../1'],
    ["ok'; touch /tmp/x; '", '1'],
    ['ok', '1\n'],
    ['ok\0', '1'],
    [42, '1'],
    ['ok', 1],
    [{ name: 'ok' }, '1'],
    ['', '1'],
  ];
  for (const [name, version] of hostile) {
    const resolution = await resolveDependencies({ requirements: [requirement(name, version)] }, deps);
    t.deepEqual(resolution.resolved, [], JSON.stringify([name, version]));
    t.is(resolution.skipped.length, 1);
  }
  t.is((await dependencyStatements({ requirements: [requirement('ok', '1')] }, deps)).length, 1, 'the sane one still works');
});

test('symbolic links out of the dependency directory are refused (version dir, default, env.sh, bin)', async (t) => {
  const root = await tempDir(t);
  const deps = path.join(root, 'deps');
  const outside = await installPackage(root, 'elsewhere', '1');
  await fs.mkdir(path.join(outside, 'bin'));
  await fs.mkdir(path.join(deps, 'linked'), { recursive: true });
  await fs.symlink(outside, path.join(deps, 'linked', '1'));
  await fs.symlink(outside, path.join(deps, 'linked', 'default'));
  await fs.mkdir(path.join(deps, 'script', '1'), { recursive: true });
  await fs.symlink(path.join(outside, 'env.sh'), path.join(deps, 'script', '1', 'env.sh'));
  await fs.mkdir(path.join(deps, 'bindir', '1'), { recursive: true });
  await fs.symlink(path.join(outside, 'bin'), path.join(deps, 'bindir', '1', 'bin'));
  await fs.symlink(root, path.join(deps, 'up'));
  const resolution = await resolveDependencies(
    { requirements: [requirement('linked', '1'), requirement('linked'), requirement('script', '1'), requirement('bindir', '1'), requirement('up', 'deps')] },
    deps,
  );
  t.deepEqual(resolution.resolved, []);
  t.deepEqual(resolution.skipped.map((s) => s.reason), [
    'not installed',
    'default points outside tool_dependency_dir',
    'installed without env.sh or bin/',
    'installed without env.sh or bin/',
    'not installed',
  ]);
  // A link that stays inside is fine (and the real path is what gets sourced).
  await installPackage(deps, 'inner', '2.0');
  await fs.symlink(path.join(deps, 'inner', '2.0'), path.join(deps, 'inner', '2'));
  t.deepEqual(await dependencyStatements({ requirements: [requirement('inner', '2')] }, deps), [
    `PACKAGE_BASE='${deps}/inner/2.0'; export PACKAGE_BASE; . '${deps}/inner/2.0/env.sh'`,
  ]);
});

test('a dependency directory with a quote in its name is quoted; statements run before the command in the job script', async (t) => {
  const root = await tempDir(t);
  const deps = path.join(root, "it's deps");
  await installPackage(deps, 'a', '1');
  await installPackage(deps, 'b', '2');
  const jobdir = path.join(root, 'job');
  for (const sub of ['working', 'metadata', 'tmp', 'home']) await fs.mkdir(path.join(jobdir, sub), { recursive: true });
  const script = buildJobScript({
    jobId: '1',
    jobDirectory: jobdir,
    commandLine: 'echo "$MAGNETAR_DEPS" > ../metadata/deps',
    envStatements: [],
    tmpDir: undefined,
    galaxyLib: undefined,
    galaxyVirtualEnv: undefined,
    preserveGalaxyPythonEnvironment: false,
    dependencyStatements: await dependencyStatements({ requirements: [requirement('a', '1'), requirement('b', '2')] }, deps),
  });
  await fs.writeFile(path.join(jobdir, 'command.sh'), script, { mode: 0o700 });
  await run('/bin/bash', [path.join(jobdir, 'command.sh')], { cwd: path.join(jobdir, 'working'), env: { PATH: '/usr/bin:/bin' } });
  t.is((await fs.readFile(path.join(jobdir, 'metadata', 'deps'), 'utf8')).trim(), `a-1@${deps}/a/1 b-2@${deps}/b/2`);
});
