import { z } from 'zod';

/**
 * The JSON-lines protocol between the server (`client.ts`) and the DRMAA helper process
 * (`helper.ts`): one request per line on the helper's stdin, one response per line on its stdout,
 * matched by `id`. The helper answers requests one at a time, in order.
 */

export const templateSchema = z.strictObject({
  remoteCommand: z.string().min(1),
  args: z.array(z.string()),
  jobName: z.string().optional(),
  outputPath: z.string().optional(),
  errorPath: z.string().optional(),
  workingDirectory: z.string().optional(),
  nativeSpecification: z.string().optional(),
  env: z.array(z.string()).optional(),
  joinFiles: z.boolean().optional(),
});

export type TemplateMessage = z.infer<typeof templateSchema>;

export const requestSchema = z.discriminatedUnion('op', [
  /** Start the session; `contact` re-attaches to an earlier one (falls back to a new session). */
  z.strictObject({ id: z.number().int(), op: z.literal('init'), contact: z.string().nullable() }),
  z.strictObject({ id: z.number().int(), op: z.literal('submit'), template: templateSchema }),
  /** job_ps for every id; jobs found DONE or FAILED are reaped (drmaa_wait NO_WAIT) at once. */
  z.strictObject({ id: z.number().int(), op: z.literal('poll'), jobIds: z.array(z.string()) }),
  z.strictObject({ id: z.number().int(), op: z.literal('control'), jobId: z.string(), action: z.enum(['SUSPEND', 'RESUME', 'HOLD', 'RELEASE', 'TERMINATE']) }),
]);

export type HelperRequest = z.infer<typeof requestSchema>;
/** A request before the client numbers it. */
export type HelperCall = HelperRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

const errorSchema = z.strictObject({ code: z.string(), message: z.string() });
export type HelperError = z.infer<typeof errorSchema>;

const exitSchema = z.strictObject({
  exited: z.boolean(),
  exitStatus: z.number().int().nullable(),
  signaled: z.boolean(),
  termSignal: z.string().nullable(),
  aborted: z.boolean(),
  rusage: z.record(z.string(), z.string()),
});
export type ExitMessage = z.infer<typeof exitSchema>;

/** What one poll found out about one job. */
export const pollEntrySchema = z.union([
  z.strictObject({
    /** Raw DRMAA program state. */
    ps: z.number().int(),
    /** Set when the job ended and was reaped. */
    exit: exitSchema.optional(),
    /** Set when the job ended but could not be reaped (another session's job, or not yet final). */
    reapError: errorSchema.optional(),
  }),
  z.strictObject({ error: errorSchema }),
]);
export type PollEntry = z.infer<typeof pollEntrySchema>;

export const initResultSchema = z.strictObject({
  contact: z.string(),
  drmSystem: z.string(),
  reattached: z.boolean(),
  /** Why the earlier session could not be re-attached, when it could not. */
  reattachError: z.string().optional(),
});
export type InitResult = z.infer<typeof initResultSchema>;

export const submitResultSchema = z.strictObject({ jobId: z.string().min(1) });
export const pollResultSchema = z.strictObject({ jobs: z.record(z.string(), pollEntrySchema) });
export const controlResultSchema = z.strictObject({});

export const responseSchema = z.union([
  z.strictObject({ id: z.number().int(), ok: z.literal(true), result: z.unknown() }),
  z.strictObject({ id: z.number().int(), ok: z.literal(false), error: errorSchema }),
]);
export type HelperResponse = z.infer<typeof responseSchema>;
