import * as path from 'node:path';

/**
 * The one "is this inside that" check and the one client-name check. Everything that turns a
 * name into a path (the job directory, tool files, dependency packages, validators) uses these.
 * (`drmaa/external.ts` keeps a copy on purpose: it runs under sudo as another user and imports
 * nothing from the server.)
 */

/** Is `child` equal to or below `parent`? Both absolute and normalised; separator-aware. */
export function isInside(parent: string, child: string): boolean {
  const relative = path.relative(parent, child);
  return relative === '' || (relative !== '..' && !relative.startsWith(`..${path.sep}`) && !path.isAbsolute(relative));
}

/** Is `child` strictly below `parent` (never `parent` itself)? */
export function isStrictlyInside(parent: string, child: string): boolean {
  return child !== parent && isInside(parent, child);
}

/**
 * Why `name` is not a safe relative name, or undefined when it is. `escapes` tells an attempt to
 * leave the base (absolute, `..`, empty or `.` components) from a merely malformed name.
 */
export function relativeNameProblem(name: string): { readonly reason: string; readonly escapes: boolean } | undefined {
  const malformed = (reason: string) => ({ reason, escapes: false });
  if (name.length === 0) return malformed('the name is empty');
  if (name.length > 4096) return malformed('the name is too long');
  if (name.includes('\0')) return malformed('the name contains a NUL byte');
  if (name.includes('\\')) return malformed('the name contains a backslash');
  if (name.startsWith('/')) return { reason: 'absolute names are not allowed', escapes: true };
  for (const part of name.split('/')) {
    if (part === '' || part === '.' || part === '..') return { reason: `"${name}" has an empty, "." or ".." component`, escapes: true };
    if (Buffer.byteLength(part) > 255) return malformed('a name component is too long');
  }
  return undefined;
}

/** A relative name of `/`-separated plain components (no empty, `.` or `..` ones, no NUL or backslash). */
export function isSafeRelativeName(name: string): boolean {
  return relativeNameProblem(name) === undefined;
}

/** `base` joined with a safe relative `name`, or undefined when the name is not safe. */
export function resolveInside(base: string, name: string): string | undefined {
  if (!isSafeRelativeName(name)) return undefined;
  const joined = path.join(base, name);
  return isStrictlyInside(base, joined) ? joined : undefined;
}
