/**
 * YAML the way Pulsar (PyYAML, YAML 1.1) reads `app.yml`, so an admin's existing file means the
 * same thing here:
 * - booleans: `yes/no/on/off/true/false` in lower, Title or UPPER case (`debug: yes` is true);
 * - integers: `0750` is octal (488), `0x1F`, `0b101`, `1_000`, `1:30` (sexagesimal = 90);
 * - floats need a dot (`1e3` is the string "1e3", as in PyYAML); `~`, `null`, empty = null;
 * - timestamps, `<<` merge keys and `!!binary`/`!!set`/`!!omap` are not resolved (no option needs
 *   them; a `<<` key is then reported as an unknown option rather than silently merged).
 * An empty file is `{}`; the top level must be a mapping; duplicate keys are an error.
 *
 * Alias bombs: js-yaml 4 resolves an alias to the same object (no copy), so parsing is cheap, but
 * everything that later walks the tree (validation, freezing) pays for the expanded size. We walk
 * the loaded tree once, counting expanded nodes, and refuse a document that expands to more than
 * {@link MAX_EXPANDED_NODES} (which also catches recursive aliases). Files over
 * {@link MAX_CONFIG_BYTES} are refused before parsing.
 */
import { FAILSAFE_SCHEMA, Type, YAMLException, load } from 'js-yaml';
import { ConfigError } from '../errors.js';

export const MAX_CONFIG_BYTES = 1024 * 1024;
export const MAX_EXPANDED_NODES = 10_000;

const TRUE_WORDS = new Set(['yes', 'Yes', 'YES', 'true', 'True', 'TRUE', 'on', 'On', 'ON']);
const FALSE_WORDS = new Set(['no', 'No', 'NO', 'false', 'False', 'FALSE', 'off', 'Off', 'OFF']);
const NULL_RE = /^(?:~|null|Null|NULL|)$/;
const INT_RE = /^(?:[-+]?0b[01_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$/;
const FLOAT_RE = /^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/;

function sexagesimal(digits: string): number {
  return digits.split(':').reduce((total, part) => total * 60 + Number(part), 0);
}

function constructInt(data: string): number {
  let text = data.replaceAll('_', '');
  let sign = 1;
  if (text.startsWith('-') || text.startsWith('+')) {
    if (text.startsWith('-')) sign = -1;
    text = text.slice(1);
  }
  if (text === '0') return 0;
  if (text.startsWith('0b')) return sign * parseInt(text.slice(2), 2);
  if (text.startsWith('0x')) return sign * parseInt(text.slice(2), 16);
  if (text.startsWith('0')) return sign * parseInt(text, 8);
  if (text.includes(':')) return sign * sexagesimal(text);
  return sign * parseInt(text, 10);
}

function constructFloat(data: string): number {
  const text = data.replaceAll('_', '').toLowerCase();
  if (text.endsWith('.nan')) return Number.NaN;
  const sign = text.startsWith('-') ? -1 : 1;
  const unsigned = text.replace(/^[-+]/, '');
  if (unsigned === '.inf') return sign * Number.POSITIVE_INFINITY;
  if (unsigned.includes(':')) {
    const [whole = '', fraction = ''] = unsigned.split('.');
    return sign * (sexagesimal(whole) + Number(`0.${fraction || '0'}`));
  }
  return sign * Number(unsigned);
}

const isString = (data: unknown): data is string => typeof data === 'string';

const nullType = new Type('tag:yaml.org,2002:null', {
  kind: 'scalar',
  resolve: (data: unknown) => data === null || (isString(data) && NULL_RE.test(data)),
  construct: () => null,
  predicate: (object: unknown) => object === null,
});

const boolType = new Type('tag:yaml.org,2002:bool', {
  kind: 'scalar',
  resolve: (data: unknown) => isString(data) && (TRUE_WORDS.has(data) || FALSE_WORDS.has(data)),
  construct: (data: string) => TRUE_WORDS.has(data),
  predicate: (object: unknown) => typeof object === 'boolean',
});

const intType = new Type('tag:yaml.org,2002:int', {
  kind: 'scalar',
  resolve: (data: unknown) => isString(data) && INT_RE.test(data),
  construct: constructInt,
  predicate: (object: unknown) => typeof object === 'number' && Number.isInteger(object),
});

const floatType = new Type('tag:yaml.org,2002:float', {
  kind: 'scalar',
  resolve: (data: unknown) => isString(data) && FLOAT_RE.test(data),
  construct: constructFloat,
  predicate: (object: unknown) => typeof object === 'number',
});

/** YAML 1.1 scalars as PyYAML's SafeLoader resolves them (see the module comment). */
export const PYYAML_SCHEMA = FAILSAFE_SCHEMA.extend({ implicit: [nullType, boolType, intType, floatType] });

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function assertExpansionBounded(root: unknown, file: string): void {
  let visited = 0;
  const pending: unknown[] = [root];
  while (pending.length > 0) {
    const node = pending.pop();
    visited += 1;
    if (visited > MAX_EXPANDED_NODES) {
      throw new ConfigError(
        file,
        undefined,
        `document expands to more than ${MAX_EXPANDED_NODES} values once aliases are followed (an alias bomb or a recursive alias?)`,
      );
    }
    if (Array.isArray(node)) pending.push(...(node as unknown[]));
    else if (isMapping(node)) pending.push(...Object.values(node));
  }
}

/**
 * Parse a YAML app-options document. `file` names the file in errors. Returns the top-level
 * mapping (a fresh object with a null prototype, so keys like `__proto__` are plain data).
 */
export function parseYamlOptions(text: string, file: string): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = load(text.replace(/^\uFEFF/, ''), { schema: PYYAML_SCHEMA, filename: file });
  } catch (error) {
    if (error instanceof YAMLException) {
      const line = error.mark === undefined ? '' : ` (line ${error.mark.line + 1}, column ${error.mark.column + 1})`;
      throw new ConfigError(file, undefined, `invalid YAML: ${error.reason}${line}`, { cause: error });
    }
    throw error;
  }
  if (doc === undefined || doc === null) return Object.create(null) as Record<string, unknown>;
  if (!isMapping(doc)) {
    throw new ConfigError(file, undefined, 'the top level must be a mapping of option names to values');
  }
  assertExpansionBounded(doc, file);
  return Object.assign(Object.create(null) as Record<string, unknown>, doc);
}
