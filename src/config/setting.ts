/**
 * A configuration value together with where it came from, and what the loader carries while it
 * reads: shared by the sources (files, environment) and the builders (settings → sections).
 */
import path from 'node:path';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';

/** Where a value came from, for error messages: file label and the key as the admin wrote it. */
export interface Setting {
  readonly value: unknown;
  readonly file: string;
  readonly key: string;
}

export interface LoadContext {
  readonly cwd: string;
  readonly env: Record<string, string | undefined>;
  /** One line each, `<file>: <key> ...`; returned to the caller to log. */
  readonly warnings: string[];
}

/** The "file" of values from the environment, and of what no file said. */
export const ENVIRONMENT = 'environment';

/** How a file is named in messages: relative to the working directory when inside it. */
export function label(file: string, ctx: LoadContext): string {
  const relative = path.relative(ctx.cwd, file);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file;
}

/** Given with a value: an empty YAML value (null) is as if the key were absent. */
export function isSet(setting: Setting | undefined): setting is Setting {
  return setting !== undefined && setting.value !== null;
}

/** `values` through `schema`; the first issue becomes a ConfigError naming the setting's file and key. */
export function parseOrThrow<S extends z.ZodType>(schema: S, values: Record<string, unknown>, where: ReadonlyMap<string, Setting>): z.output<S> {
  const result = schema.safeParse(values);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const key = String(issue?.path[0] ?? '');
  const setting = where.get(key);
  if (setting === undefined) throw new Error(`config schema issue without a source: ${issue?.message ?? '?'}`);
  throw new ConfigError(setting.file, setting.key, issue?.message ?? 'invalid value');
}

/** A YAML integer file mode is accepted (see asFileMode), but decimal vs octal is easy to get wrong. */
export function fileModeWarning(setting: Setting | undefined, ctx: LoadContext): void {
  if (setting !== undefined && typeof setting.value === 'number') {
    const octal = setting.value.toString(8).padStart(4, '0');
    ctx.warnings.push(
      `${setting.file}: ${setting.key}: the YAML integer ${setting.value} is read as file mode ${octal}; write it as a quoted string ('${octal}') to be unambiguous`,
    );
  }
}
