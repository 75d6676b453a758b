/**
 * A reader for Paste-style `.ini` files that gives the values Python's `configparser` (which Pulsar
 * uses through PasteDeploy) would give for the same text.
 *
 * Why not the `ini` package: it ends a value at an inline `;` or `#`, strips quotes, turns `true`
 * and `null` into non-strings and nests dotted section names. With it, `private_token = abc#123`
 * would silently become the much weaker token `abc`. Here, as in `configparser`:
 * - only whole lines starting with `#` or `;` are comments; a value keeps every character;
 * - `key = value` and `key: value` (the first `=` or `:` ends the key); keys are case-insensitive;
 * - an indented line continues the previous value (joined with newlines);
 * - a duplicate section or a duplicate key in one section is an error (strict mode);
 * - `%(name)s` interpolation (with `%%` for a literal `%`) is applied only when a value is asked
 *   for, so logging sections full of `%(asctime)s` never need to make sense to us.
 */
import { ConfigError } from '../errors.js';

export interface IniEntry {
  /** As written (keys other than `env_*` are lower-cased, like `configparser`'s `optionxform`). */
  readonly key: string;
  /** Raw, not yet interpolated. */
  readonly value: string;
  readonly line: number;
}

export interface IniSection {
  readonly name: string;
  readonly line: number;
  readonly entries: ReadonlyMap<string, IniEntry>;
}

export interface IniDocument {
  /** `[DEFAULT]`: visible to interpolation in every section, as in `configparser`. */
  readonly defaults: ReadonlyMap<string, IniEntry>;
  /** In file order. */
  readonly sections: ReadonlyMap<string, IniSection>;
}

const DEFAULT_SECTION = 'DEFAULT';
const MAX_INTERPOLATION_DEPTH = 10;
const SECTION_RE = /^\[(.+)\]/;
const OPTION_RE = /^(.*?)\s*[=:]\s*(.*)$/;

/**
 * `configparser` lower-cases every key. For `env_<NAME>` we keep the case of NAME, because an
 * environment variable `path` is not `PATH` (upstream Pulsar lower-cases it; a known trap).
 */
export function normalizeIniKey(raw: string): string {
  const lower = raw.toLowerCase();
  return lower.startsWith('env_') ? `env_${raw.slice(4)}` : lower;
}

export function parseIni(text: string, file: string): IniDocument {
  const sections = new Map<string, { name: string; line: number; entries: Map<string, IniEntry> }>();
  const defaults = new Map<string, IniEntry>();
  let current: Map<string, IniEntry> | undefined;
  let currentName = '';
  let open: { key: string; line: number; lines: string[]; indent: number } | undefined;

  const close = (): void => {
    if (open === undefined || current === undefined) return;
    current.set(open.key, { key: open.key, value: open.lines.join('\n').trimEnd(), line: open.line });
    open = undefined;
  };

  const lines = text.replace(/^\uFEFF/, '').split(/\r\n|\r|\n/);
  for (let index = 0; index < lines.length; index += 1) {
    const raw = lines[index] ?? '';
    const lineNo = index + 1;
    const stripped = raw.trim();
    if (stripped.startsWith('#') || stripped.startsWith(';')) continue;
    if (stripped === '') {
      // configparser keeps blank lines inside a value if a continuation line follows.
      if (open !== undefined) open.lines.push('');
      continue;
    }
    const indent = raw.length - raw.trimStart().length;
    if (open !== undefined && indent > open.indent) {
      open.lines.push(stripped);
      continue;
    }
    close();
    const header = SECTION_RE.exec(stripped);
    if (header !== null) {
      const name = header[1] ?? '';
      if (name === DEFAULT_SECTION) {
        current = defaults;
      } else {
        if (sections.has(name)) {
          throw new ConfigError(file, `[${name}]`, `duplicate section (line ${lineNo})`);
        }
        const section = { name, line: lineNo, entries: new Map<string, IniEntry>() };
        sections.set(name, section);
        current = section.entries;
      }
      currentName = name;
      continue;
    }
    if (current === undefined) {
      throw new ConfigError(file, undefined, `line ${lineNo}: expected a [section] header before any option`);
    }
    const option = OPTION_RE.exec(stripped);
    const rawKey = option?.[1]?.trimEnd() ?? '';
    if (option === null || rawKey === '') {
      throw new ConfigError(file, `[${currentName}]`, `line ${lineNo}: expected "key = value", got ${JSON.stringify(stripped)}`);
    }
    const key = normalizeIniKey(rawKey);
    if (current.has(key)) {
      throw new ConfigError(file, `[${currentName}] ${key}`, `duplicate key (line ${lineNo})`);
    }
    open = { key, line: lineNo, lines: [(option[2] ?? '').trim()], indent };
  }
  close();
  return { defaults, sections };
}

/**
 * The value of `key` in `section` with `%(name)s` references expanded against the section's own
 * keys, then `[DEFAULT]`, then `extra` (Paste supplies `here` and `__file__` this way).
 */
export function interpolatedValue(
  doc: IniDocument,
  section: IniSection,
  key: string,
  extra: Readonly<Record<string, string>>,
  file: string,
): string {
  const entry = section.entries.get(key);
  if (entry === undefined) throw new Error(`no key ${key} in [${section.name}]`);
  const where = `[${section.name}] ${key}`;
  const lookup = (name: string): string | undefined =>
    section.entries.get(name)?.value ?? doc.defaults.get(name)?.value;

  const expand = (value: string, depth: number): string => {
    if (depth > MAX_INTERPOLATION_DEPTH) {
      throw new ConfigError(file, where, `interpolation nested deeper than ${MAX_INTERPOLATION_DEPTH} levels (a %(name)s loop?)`);
    }
    let out = '';
    let rest = value;
    for (;;) {
      const at = rest.indexOf('%');
      if (at < 0) return out + rest;
      out += rest.slice(0, at);
      rest = rest.slice(at);
      if (rest.startsWith('%%')) {
        out += '%';
        rest = rest.slice(2);
        continue;
      }
      const ref = /^%\(([^)]+)\)s/.exec(rest);
      if (ref === null) {
        throw new ConfigError(file, where, `"%" must be followed by "%" or "(name)s", found ${JSON.stringify(rest.slice(0, 20))}`);
      }
      rest = rest.slice(ref[0].length);
      const name = normalizeIniKey(ref[1] ?? '');
      const fromFile = lookup(name);
      if (fromFile !== undefined) {
        out += expand(fromFile, depth + 1);
        continue;
      }
      const fromExtra = extra[name];
      if (fromExtra === undefined) {
        throw new ConfigError(file, where, `%(${name})s refers to an option that is not defined (known: here, __file__, keys of this section and [DEFAULT])`);
      }
      // Paths like `here` are literal even if they happen to contain "%".
      out += fromExtra;
    }
  };
  return expand(entry.value, 1);
}
