import type { Request } from 'express';
import { z } from 'zod';
import { BadRequest } from '../errors.js';
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

function jsonParam<T>(req: Request, name: string, schema: z.ZodType<T>, fallback: T): T {
  const raw = queryOf(req).get(name);
  if (raw === undefined || raw === '') return fallback;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (error) {
    throw new BadRequest(`parameter "${name}" is not valid JSON`, { cause: error });
  }
  if (parsed === null) return fallback;
  const result = schema.safeParse(parsed);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue === undefined || issue.path.length === 0 ? '' : ` at ${issue.path.join('.')}`;
    throw new BadRequest(`parameter "${name}" has the wrong form${where}: ${issue?.message ?? 'invalid'}`);
  }
  return result.data;
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

/** Parse and check every parameter of `POST /jobs/{id}/submit` (PROTOCOL §2.5). */
export function parseSubmit(req: Request): SubmitRequest {
  const commandLine = required(req, 'command_line');
  if (commandLine.trim() === '') throw new BadRequest('parameter "command_line" is empty');
  if (commandLine.includes('\0')) throw new BadRequest('parameter "command_line" contains a NUL byte');
  const submitParams = jsonParam(req, 'params', z.record(z.string(), z.unknown()), {});
  const setup = jsonParam(req, 'setup_params', setupParamsSchema, {});
  const env = jsonParam(req, 'env', z.array(envEntrySchema), []);
  const remoteStaging = jsonParam(req, 'remote_staging', remoteStagingSchema, {});
  const extras = jsonParam(req, 'submit_extras', submitExtrasSchema, {});
  const dynamic = jsonParam(req, 'dynamic_file_sources', dynamicSourcesSchema, []);
  let dependenciesDescription: unknown = null;
  const depRaw = optional(req, 'dependencies_description');
  if (depRaw !== undefined && depRaw !== '') {
    try {
      dependenciesDescription = JSON.parse(depRaw);
    } catch (error) {
      throw new BadRequest('parameter "dependencies_description" is not valid JSON', { cause: error });
    }
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
    touchOutputs: extras.touch_outputs ?? [],
    dynamicFileSources: dynamic.map((d) => (d.type === undefined ? { path: d.path } : { type: d.type, path: d.path })),
  };
}
