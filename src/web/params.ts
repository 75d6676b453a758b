import type { Request } from 'express';
import { z } from 'zod';
import type { AppSection } from '../config/types.js';
import { BadRequest, LimitExceeded } from '../errors.js';
import type { EnvEntry } from '../jobs/script.js';
import type { SetupParams, SubmitRequest } from '../jobs/submit-request.js';

const QUERY = Symbol('magnetar.query');
type WithQuery = Request & { [QUERY]?: Map<string, string> };

/**
 * Query parameters as upstream reads them (webob): form-urlencoded, UTF-8, `+` is a space, and
 * the last value of a repeated key wins. Names that upstream lets shadow its injected objects
 * (`manager`, `file_cache`, `object_store`) mean nothing here and are simply never read.
 */
export function queryOf(req: Request): Map<string, string> {
  const r = req as WithQuery;
  if (r[QUERY] !== undefined) return r[QUERY];
  const url = req.originalUrl;
  const q = url.indexOf('?');
  const map = new Map<string, string>();
  if (q !== -1) for (const [k, v] of new URLSearchParams(url.slice(q + 1))) map.set(k, v);
  r[QUERY] = map;
  return map;
}

export function required(req: Request, name: string): string {
  const value = queryOf(req).get(name);
  if (value === undefined) throw new BadRequest(`missing required parameter "${name}"`);
  return value;
}

export function optional(req: Request, name: string): string | undefined {
  return queryOf(req).get(name);
}

/** The bounds a submit request is held to (PROTOCOL §2.5; 0 = no limit). */
export type SubmitLimits = Pick<
  AppSection,
  'maxSubmitParamSize' | 'maxDependenciesDescriptionSize' | 'maxSubmitJsonDepth' | 'maxDynamicFileSources' | 'maxTouchOutputs' | 'maxCommandLineSize'
>;

function sizeBound(name: string, limits: SubmitLimits): [number, string] {
  if (name === 'dependencies_description') return [limits.maxDependenciesDescriptionSize, 'max_dependencies_description_size'];
  // Both grow with the job's inputs and outputs (remote_staging lists every one): the larger bound.
  if (name === 'command_line' || name === 'remote_staging') return [limits.maxCommandLineSize, 'max_command_line_size'];
  return [limits.maxSubmitParamSize, 'max_submit_param_size'];
}

/** A raw parameter, refused (413) when larger than its bound. */
function boundedParam(req: Request, name: string, limits: SubmitLimits): string | undefined {
  const raw = queryOf(req).get(name);
  if (raw === undefined) return undefined;
  const [limit, option] = sizeBound(name, limits);
  // UTF-8 takes at most 3 bytes per UTF-16 unit: count exactly only when it may matter.
  if (limit > 0 && raw.length * 3 > limit && Buffer.byteLength(raw, 'utf8') > limit) {
    throw new LimitExceeded(`parameter "${name}" is larger than ${option} (${limit} bytes)`);
  }
  return raw;
}

/**
 * Refuse a JSON text whose arrays and objects nest deeper than `maxDepth` (a scan of the text, so
 * a hostile document is refused before it is built). `what` names it in the message.
 */
export function checkJsonDepth(what: string, raw: string, maxDepth: number): void {
  if (maxDepth <= 0) return;
  let depth = 0;
  let inString = false;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) throw new LimitExceeded(`${what} nests deeper than max_submit_json_depth (${maxDepth})`);
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
}

/** JSON.parse, after checking that arrays and objects nest no deeper than `maxDepth`. */
function parseJson(name: string, raw: string, maxDepth: number): unknown {
  checkJsonDepth(`parameter "${name}"`, raw, maxDepth);
  try {
    return JSON.parse(raw);
  } catch (error) {
    throw new BadRequest(`parameter "${name}" is not valid JSON`, { cause: error });
  }
}

/** A parsed value against its schema; null (and absent) is the fallback. */
function checked<T>(name: string, parsed: unknown, schema: z.ZodType<T>, fallback: T): T {
  if (parsed === null || parsed === undefined) return fallback;
  const result = schema.safeParse(parsed);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue === undefined || issue.path.length === 0 ? '' : ` at ${issue.path.join('.')}`;
    throw new BadRequest(`parameter "${name}" has the wrong form${where}: ${issue?.message ?? 'invalid'}`);
  }
  return result.data;
}

/** A parameter's raw JSON text, parsed (within the depth bound); absent or empty → undefined. */
function jsonValue(req: Request, name: string, limits: SubmitLimits): unknown {
  const raw = boundedParam(req, name, limits);
  if (raw === undefined || raw === '') return undefined;
  return parseJson(name, raw, limits.maxSubmitJsonDepth);
}

/**
 * A value that arrived already parsed (inside a message), held to the bound its JSON text would
 * have as an HTTP parameter: the same option refuses it (413 `MAG_ERR_LIMIT`).
 */
export function boundedValue(name: string, value: unknown, limits: SubmitLimits): unknown {
  if (value === undefined || value === null) return value;
  const [limit, option] = sizeBound(name, limits);
  if (limit > 0) {
    const text = typeof value === 'string' && name === 'command_line' ? value : JSON.stringify(value);
    if (text.length * 3 > limit && Buffer.byteLength(text, 'utf8') > limit) {
      throw new LimitExceeded(`parameter "${name}" is larger than ${option} (${limit} bytes)`);
    }
  }
  return value;
}

const scalarString = z.union([z.string(), z.number(), z.boolean()]).transform((v) => String(v));
const pythonBool = z.union([z.boolean(), z.string()]).transform((v) => v === true || (typeof v === 'string' && /^(true|yes|1)$/i.test(v)));

const envEntrySchema = z
  .object({
    name: z.string().optional(),
    value: scalarString.nullable().optional(),
    raw: pythonBool.optional(),
    file: z.string().nullable().optional(),
    execute: z.string().nullable().optional(),
    job_directory_path: z.unknown().optional(),
  })
  .loose();

const setupParamsSchema = z
  .object({
    job_id: scalarString.optional(),
    tool_id: z.string().nullable().optional(),
    tool_version: z.string().nullable().optional(),
    use_metadata: z.unknown().optional(),
    preserve_galaxy_python_environment: pythonBool.nullable().optional(),
  })
  .loose();

const remoteStagingSchema = z.object({ setup: z.array(z.unknown()).optional() }).loose();

const submitExtrasSchema = z
  .object({
    touch_outputs: z.array(z.string()).optional(),
    token_endpoint: z.string().nullable().optional(),
  })
  .strict();

const dynamicSourcesSchema = z.array(z.object({ type: z.string().optional(), path: z.string() }).loose());

/** The submit parameters (PROTOCOL §2.5) as values: parsed JSON, or undefined when not given. */
export interface SubmitValues {
  readonly commandLine: string | undefined;
  readonly params: unknown;
  readonly setupParams: unknown;
  readonly env: unknown;
  readonly remoteStaging: unknown;
  readonly submitExtras: unknown;
  readonly dynamicFileSources: unknown;
  readonly dependenciesDescription: unknown;
}

/** Parse and check every parameter of `POST /jobs/{id}/submit` (PROTOCOL §2.5), within `limits`. */
export function parseSubmit(req: Request, limits: SubmitLimits): SubmitRequest {
  const commandLine = boundedParam(req, 'command_line', limits);
  checkCommandLine(commandLine);
  return submitRequestOf(
    {
      commandLine,
      params: jsonValue(req, 'params', limits),
      setupParams: jsonValue(req, 'setup_params', limits),
      env: jsonValue(req, 'env', limits),
      remoteStaging: jsonValue(req, 'remote_staging', limits),
      submitExtras: jsonValue(req, 'submit_extras', limits),
      dynamicFileSources: jsonValue(req, 'dynamic_file_sources', limits),
      dependenciesDescription: jsonValue(req, 'dependencies_description', limits),
    },
    limits,
  );
}

function checkCommandLine(commandLine: string | undefined): asserts commandLine is string {
  if (commandLine === undefined) throw new BadRequest('missing required parameter "command_line"');
  if (commandLine.trim() === '') throw new BadRequest('parameter "command_line" is empty');
  if (commandLine.includes('\0')) throw new BadRequest('parameter "command_line" contains a NUL byte');
}

/**
 * The submit request from parameter values, checked against the schemas and `limits`: shared by
 * HTTP's submit and the message queue's setup message (which carries the values unencoded).
 */
export function submitRequestOf(values: SubmitValues, limits: SubmitLimits): SubmitRequest {
  const { commandLine } = values;
  checkCommandLine(commandLine);
  const submitParams = checked('params', values.params, z.record(z.string(), z.unknown()), {});
  const setup = checked('setup_params', values.setupParams, setupParamsSchema, {});
  const env = checked('env', values.env, z.array(envEntrySchema), []);
  const remoteStaging = checked('remote_staging', values.remoteStaging, remoteStagingSchema, {});
  const extras = checked('submit_extras', values.submitExtras, submitExtrasSchema, {});
  const dynamic = checked('dynamic_file_sources', values.dynamicFileSources, dynamicSourcesSchema, []);
  const dependenciesDescription: unknown = values.dependenciesDescription ?? null;
  const touchOutputs = [...new Set(extras.touch_outputs ?? [])];
  if (limits.maxTouchOutputs > 0 && touchOutputs.length > limits.maxTouchOutputs) {
    throw new LimitExceeded(`submit_extras.touch_outputs names ${touchOutputs.length} files, more than max_touch_outputs (${limits.maxTouchOutputs})`);
  }
  // A path named twice is realized once.
  const dynamicByPath = new Map<string, { type?: string; path: string }>();
  for (const d of dynamic) {
    if (!dynamicByPath.has(d.path)) dynamicByPath.set(d.path, d.type === undefined ? { path: d.path } : { type: d.type, path: d.path });
  }
  if (limits.maxDynamicFileSources > 0 && dynamicByPath.size > limits.maxDynamicFileSources) {
    throw new LimitExceeded(`dynamic_file_sources names ${dynamicByPath.size} paths, more than max_dynamic_file_sources (${limits.maxDynamicFileSources})`);
  }
  let setupParams: SetupParams | undefined;
  if (Object.keys(setup).length > 0) {
    const sp: { -readonly [K in keyof SetupParams]: SetupParams[K] } = {};
    if (setup.job_id !== undefined) sp.jobId = setup.job_id;
    if (typeof setup.tool_id === 'string') sp.toolId = setup.tool_id;
    if (typeof setup.tool_version === 'string') sp.toolVersion = setup.tool_version;
    if (typeof setup.preserve_galaxy_python_environment === 'boolean') sp.preserveGalaxyPythonEnvironment = setup.preserve_galaxy_python_environment;
    setupParams = sp;
  }
  const envEntries: EnvEntry[] = env.map((e) => {
    const entry: { -readonly [K in keyof EnvEntry]: EnvEntry[K] } = {};
    if (e.name !== undefined) entry.name = e.name;
    if (e.value !== undefined && e.value !== null) entry.value = e.value;
    if (e.raw !== undefined) entry.raw = e.raw;
    if (typeof e.file === 'string') entry.file = e.file;
    if (typeof e.execute === 'string') entry.execute = e.execute;
    return entry;
  });
  return {
    commandLine,
    submitParams,
    setupParams,
    dependenciesDescription,
    env: envEntries,
    remoteStaging,
    touchOutputs,
    dynamicFileSources: [...dynamicByPath.values()],
  };
}
