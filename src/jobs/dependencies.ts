/**
 * Dependency resolution for the job script (PROTOCOL §6.3): Galaxy's "galaxy_packages" resolver
 * over the administrator's `tool_dependency_dir`, and nothing else (no conda, no modules, no tool
 * shed packages). A requirement `{type: package, name, version}` becomes
 *
 *     PACKAGE_BASE='<dir>/<name>/<version>'; export PACKAGE_BASE; . '<dir>/<name>/<version>/env.sh'
 *
 * (or `PATH='<…>/bin':"$PATH"` when the package has a `bin/` but no `env.sh`), as upstream. A
 * requirement without a version uses the `<dir>/<name>/default` symbolic link. Anything that is not
 * installed, not a package, or not a plain name is skipped: the job then runs without it, which is
 * what Galaxy's resolvers do when no resolver matches.
 *
 * The client names the packages (PROTOCOL §14 item 12), so names are plain words and every path is
 * resolved (symbolic links included) and must stay inside the dependency directory: a client can
 * only pick among what the administrator installed there.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { isStrictlyInside } from './paths.js';
import { shellQuote } from './script.js';

const PLAIN_NAME = /^[A-Za-z0-9._+-]+$/;
/** Requirements looked at per job: a description is client input. */
const MAX_REQUIREMENTS = 100;

export interface ResolvedDependency {
  readonly name: string;
  /** The version asked for; undefined = the `default` link was used. */
  readonly requested: string | undefined;
  /** The version found (the target of `default` when no version was asked for). */
  readonly version: string;
  /** The package directory (real path). */
  readonly path: string;
  readonly statement: string;
}

export interface SkippedDependency {
  readonly name: string;
  readonly version: string | undefined;
  readonly reason: string;
}

export interface DependencyResolution {
  readonly resolved: readonly ResolvedDependency[];
  readonly skipped: readonly SkippedDependency[];
}

const NOTHING: DependencyResolution = Object.freeze({ resolved: [], skipped: [] });

/** Shell statements (one per resolved requirement) that bring the job's requirements into scope. */
export async function dependencyStatements(description: unknown, toolDependencyDir: string | undefined): Promise<string[]> {
  return (await resolveDependencies(description, toolDependencyDir)).resolved.map((dep) => dep.statement);
}

/**
 * One line for the job log, e.g. `2 of 3 requirements resolved: samtools 1.9, bwa default→0.7.17;
 * skipped: foo 2 (not installed)`; `undefined` when the client sent no requirements.
 */
export function describeDependencies(resolution: DependencyResolution): string | undefined {
  const { resolved, skipped } = resolution;
  const total = resolved.length + skipped.length;
  if (total === 0) return undefined;
  const found = resolved.map((d) => `${d.name} ${d.requested === undefined ? `default→${d.version}` : d.version}`);
  const missed = skipped.map((d) => `${d.name}${d.version === undefined ? '' : ` ${d.version}`} (${d.reason})`);
  let text = `${resolved.length} of ${total} requirement${total === 1 ? '' : 's'} resolved`;
  if (found.length > 0) text += `: ${found.join(', ')}`;
  if (missed.length > 0) text += `; skipped: ${missed.join(', ')}`;
  return text;
}

/**
 * What `dependencyStatements` does, with the reasons for what it skipped. Asynchronous: it runs on
 * every submit, and a slow (network) `tool_dependency_dir` must not stall other requests.
 */
export async function resolveDependencies(description: unknown, toolDependencyDir: string | undefined): Promise<DependencyResolution> {
  const requirements = requirementsOf(description);
  if (requirements.length === 0) return NOTHING;
  if (toolDependencyDir === undefined) {
    return { resolved: [], skipped: requirements.map((r) => ({ name: shown(r.name), version: optionalShown(r.version), reason: 'dependency resolution is off (no tool_dependency_dir)' })) };
  }
  let base: string;
  try {
    base = await fs.realpath(toolDependencyDir);
  } catch {
    return { resolved: [], skipped: requirements.map((r) => ({ name: shown(r.name), version: optionalShown(r.version), reason: 'tool_dependency_dir does not exist' })) };
  }
  const resolved: ResolvedDependency[] = [];
  const skipped: SkippedDependency[] = [];
  const seen = new Set<string>();
  for (const requirement of requirements.slice(0, MAX_REQUIREMENTS)) {
    const outcome = await resolveOne(requirement, base);
    if ('reason' in outcome) {
      skipped.push(outcome);
      continue;
    }
    // Galaxy lists a requirement once per tool; a repeated one would be sourced twice.
    if (seen.has(outcome.path)) continue;
    seen.add(outcome.path);
    resolved.push(outcome);
  }
  for (const requirement of requirements.slice(MAX_REQUIREMENTS)) {
    skipped.push({ name: shown(requirement.name), version: optionalShown(requirement.version), reason: `more than ${MAX_REQUIREMENTS} requirements` });
  }
  return { resolved, skipped };
}

interface Requirement {
  readonly name: unknown;
  readonly type: unknown;
  readonly version: unknown;
}

/** `{requirements: [...]}`; `installed_tool_dependencies` (tool shed packages) are not resolved. */
function requirementsOf(description: unknown): Requirement[] {
  let value = description;
  if (typeof value === 'string') {
    try {
      value = JSON.parse(value) as unknown;
    } catch {
      return [];
    }
  }
  if (typeof value !== 'object' || value === null) return [];
  const list = (value as { requirements?: unknown }).requirements;
  if (!Array.isArray(list)) return [];
  return list
    .filter((entry): entry is Record<string, unknown> => typeof entry === 'object' && entry !== null && !Array.isArray(entry))
    .map((entry) => ({ name: entry['name'], type: entry['type'] ?? 'package', version: entry['version'] }));
}

async function resolveOne(requirement: Requirement, base: string): Promise<ResolvedDependency | SkippedDependency> {
  const { name, type, version } = requirement;
  const skip = (reason: string): SkippedDependency => ({ name: shown(name), version: optionalShown(version), reason });
  if (type !== 'package') return skip(`type ${shown(type)} is not resolved (only package)`);
  if (!isPlainName(name)) return skip('not a plain package name');
  const noVersion = version === undefined || version === null || version === '';
  if (!noVersion && !isPlainName(version)) return skip('not a plain version');

  let packageDir: string;
  let foundVersion: string;
  if (noVersion) {
    const link = path.join(base, name, 'default');
    try {
      if (!(await fs.lstat(link)).isSymbolicLink()) return skip('no default version (default is not a symbolic link)');
    } catch {
      return skip('not installed (no default version)');
    }
    const real = await realInside(link, base);
    if (real === undefined) return skip('default points outside tool_dependency_dir');
    packageDir = real;
    foundVersion = path.basename(real);
  } else {
    const real = await realInside(path.join(base, name, version), base);
    if (real === undefined) return skip('not installed');
    packageDir = real;
    foundVersion = version;
  }
  if (!(await isDirectory(packageDir))) return skip('not installed');

  const script = await realInside(path.join(packageDir, 'env.sh'), base);
  if (script !== undefined && (await isFile(script))) {
    return {
      name,
      requested: noVersion ? undefined : version,
      version: foundVersion,
      path: packageDir,
      statement: `PACKAGE_BASE=${shellQuote(packageDir)}; export PACKAGE_BASE; . ${shellQuote(script)}`,
    };
  }
  const bin = await realInside(path.join(packageDir, 'bin'), base);
  if (bin !== undefined && (await isDirectory(bin))) {
    return {
      name,
      requested: noVersion ? undefined : version,
      version: foundVersion,
      path: packageDir,
      statement: `PACKAGE_BASE=${shellQuote(packageDir)}; export PACKAGE_BASE; PATH=${shellQuote(bin)}:"$PATH"; export PATH`,
    };
  }
  return skip('installed without env.sh or bin/');
}

function isPlainName(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 255 && PLAIN_NAME.test(value) && value !== '.' && value !== '..';
}

/** The real path of `candidate` when it exists and lies strictly inside `base` (itself a real path). */
async function realInside(candidate: string, base: string): Promise<string | undefined> {
  let real: string;
  try {
    real = await fs.realpath(candidate);
  } catch {
    return undefined;
  }
  return isStrictlyInside(base, real) ? real : undefined;
}

async function isDirectory(p: string): Promise<boolean> {
  return fs.stat(p).then((st) => st.isDirectory(), () => false);
}

async function isFile(p: string): Promise<boolean> {
  return fs.stat(p).then((st) => st.isFile(), () => false);
}

/** A client value fit for a log line. */
function shown(value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value) ?? String(value);
  const clean = text.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > 60 ? `${clean.slice(0, 57)}...` : clean;
}

function optionalShown(value: unknown): string | undefined {
  return value === undefined || value === null || value === '' ? undefined : shown(value);
}
