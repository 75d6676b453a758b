/**
 * The messages of message-queue mode (PROTOCOL §11.2, §11.3), parsed and checked once here: a
 * body is bounded in size and nesting before it is parsed, and a setup message becomes the same
 * `SubmitRequest` as HTTP's submit (web/params.ts `submitRequestOf`, the same schemas and limits).
 * Anything that does not fit throws a `MagnetarError` (BadRequest, LimitExceeded): the front door
 * rejects the message, it never reaches the job service.
 */
import { z } from 'zod';
import { BadRequest, LimitExceeded } from '../errors.js';
import type { SubmitRequest } from '../jobs/submit-request.js';
import { boundedValue, checkJsonDepth, submitRequestOf, type SubmitLimits } from '../web/params.js';

/** The suffix of an ack queue (`setup` → `setup_ack`). */
export const ACK_QUEUE_SUFFIX = '_ack';

/** What a client asked of the ack protocol: the uuid to echo back (on `<queue>_ack`). */
export interface AckRequest {
  readonly uuid: string;
}

export type InboundMessage =
  | { readonly kind: 'setup'; readonly jobId: string; readonly request: SubmitRequest; readonly ack: AckRequest | undefined }
  | { readonly kind: 'status'; readonly jobId: string; readonly ack: AckRequest | undefined }
  | { readonly kind: 'kill'; readonly jobId: string; readonly ack: AckRequest | undefined }
  | { readonly kind: 'ack'; readonly uuid: string };

/** Bounds on a message: its size in bytes (0 = none) and the submit limits of HTTP's submit. */
export interface MessageLimits extends SubmitLimits {
  readonly maxMessageSize: number;
}

/** An ack uuid is a file name in the ack stores: a short token, nothing else. */
const ACK_UUID_RE = /^[A-Za-z0-9-]{1,64}$/;
const MAX_JOB_ID_LENGTH = 255;

/** Galaxy's job ids: strings, or integers from older clients. */
const jobIdSchema = z
  .union([z.string().min(1).max(MAX_JOB_ID_LENGTH), z.number().int().nonnegative()])
  .transform((v) => String(v));

const ackKeys = {
  acknowledge_uuid: z.string().regex(ACK_UUID_RE, 'expected a short token of letters, digits and dashes').optional(),
  acknowledge_queue: z.string().max(255).optional(),
  acknowledge_submit_queue: z.string().max(255).optional(),
  force_noack: z.unknown().optional(),
};

const setupMessageSchema = z
  .object({
    job_id: jobIdSchema,
    command_line: z.string(),
    submit_params: z.unknown().optional(),
    setup_params: z.unknown().optional(),
    dependencies_description: z.unknown().optional(),
    env: z.unknown().optional(),
    remote_staging: z.unknown().optional(),
    dynamic_file_sources: z.unknown().optional(),
    // Sent by the client; ignored, as over HTTP (PROTOCOL §14 item 33).
    token_endpoint: z.unknown().optional(),
    ...ackKeys,
  })
  .loose();

const jobMessageSchema = z.object({ job_id: jobIdSchema, ...ackKeys }).loose();
const statusRequestSchema = z.object({ request: z.literal('status'), job_id: jobIdSchema, ...ackKeys }).loose();
const ackResponseSchema = z.object({ acknowledge_uuid_response: z.string().regex(ACK_UUID_RE) }).loose();

/**
 * A message body as a JSON object: refused when larger than `maxMessageSize`, not UTF-8, nested
 * deeper than `max_submit_json_depth`, not JSON, or not an object.
 */
export function parseBody(content: Buffer, limits: MessageLimits): Record<string, unknown> {
  if (limits.maxMessageSize > 0 && content.length > limits.maxMessageSize) {
    throw new LimitExceeded(`the message is larger than amqp_max_message_size (${limits.maxMessageSize} bytes)`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(content);
  } catch (error) {
    throw new BadRequest('the message is not UTF-8 text', { cause: error });
  }
  checkJsonDepth('the message', text, limits.maxSubmitJsonDepth);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new BadRequest('the message is not JSON', { cause: error });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new BadRequest('the message is not a JSON object');
  return parsed as Record<string, unknown>;
}

function shaped<T>(what: string, schema: z.ZodType<T>, body: unknown): T {
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const where = issue === undefined || issue.path.length === 0 ? '' : ` at ${issue.path.join('.')}`;
  throw new BadRequest(`${what} has the wrong form${where}: ${issue?.message ?? 'invalid'}`);
}

function ackOf(body: { acknowledge_uuid?: string | undefined }): AckRequest | undefined {
  return body.acknowledge_uuid === undefined ? undefined : { uuid: body.acknowledge_uuid };
}

/**
 * A message of the `setup` queue: a launch (PROTOCOL §11.2), or a status request
 * (`{"request": "status", "job_id"}`, which Pulsar's client sends to this queue).
 */
export function parseSetupQueueMessage(content: Buffer, limits: MessageLimits): InboundMessage {
  const body = parseBody(content, limits);
  if ('request' in body) {
    const request = shaped('the status request', statusRequestSchema, body);
    return { kind: 'status', jobId: request.job_id, ack: ackOf(request) };
  }
  const jobId = jobIdSchema.safeParse(body['job_id']);
  try {
    return parseSetup(body, limits);
  } catch (error) {
    if (jobId.success && error instanceof Error) (error as Error & { [SETUP_JOB_ID]?: string })[SETUP_JOB_ID] = jobId.data;
    throw error;
  }
}

const SETUP_JOB_ID = Symbol('magnetar.setupJobId');

/** The job id of a setup message that was refused, when it had a well-formed one. */
export function jobIdOfRefusedSetup(error: unknown): string | undefined {
  return error instanceof Error ? (error as Error & { [SETUP_JOB_ID]?: string })[SETUP_JOB_ID] : undefined;
}

function parseSetup(body: Record<string, unknown>, limits: MessageLimits): InboundMessage {
  const setup = shaped('the setup message', setupMessageSchema, body);
  const value = (name: string, v: unknown): unknown => boundedValue(name, v, limits);
  const commandLine = value('command_line', setup.command_line) as string;
  const request = submitRequestOf(
    {
      commandLine,
      params: value('params', setup.submit_params),
      setupParams: value('setup_params', setup.setup_params),
      env: value('env', setup.env),
      remoteStaging: value('remote_staging', setup.remote_staging),
      // No submit_extras on this path (PROTOCOL §11.2): no touch_outputs.
      submitExtras: undefined,
      dynamicFileSources: value('dynamic_file_sources', setup.dynamic_file_sources),
      dependenciesDescription: value('dependencies_description', setup.dependencies_description),
    },
    limits,
  );
  return { kind: 'setup', jobId: setup.job_id, request, ack: ackOf(setup) };
}

/** A message of the `kill` queue: `{"job_id"}`. */
export function parseKillMessage(content: Buffer, limits: MessageLimits): InboundMessage {
  const body = shaped('the kill message', jobMessageSchema, parseBody(content, limits));
  return { kind: 'kill', jobId: body.job_id, ack: ackOf(body) };
}

/** A message of the `status` queue: `{"job_id"}` (upstream's server reads status requests here). */
export function parseStatusMessage(content: Buffer, limits: MessageLimits): InboundMessage {
  const body = shaped('the status request', jobMessageSchema, parseBody(content, limits));
  return { kind: 'status', jobId: body.job_id, ack: ackOf(body) };
}

/** A message of an ack queue: `{"acknowledge_uuid_response"}`. */
export function parseAckMessage(content: Buffer, limits: MessageLimits): InboundMessage {
  const body = shaped('the acknowledgement', ackResponseSchema, parseBody(content, limits));
  return { kind: 'ack', uuid: body.acknowledge_uuid_response };
}

/** The parser of each consumed queue. */
export const PARSERS: Readonly<Record<'setup' | 'kill' | 'status' | 'status_update_ack', (content: Buffer, limits: MessageLimits) => InboundMessage>> = {
  setup: parseSetupQueueMessage,
  kill: parseKillMessage,
  status: parseStatusMessage,
  status_update_ack: parseAckMessage,
};

/** The ack-protocol uuid of an outbox entry: its id (32 hex characters) in UUID form, stable across republishes. */
export function ackUuidOf(entryId: string): string {
  const hex = entryId.toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(hex)) return hex;
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

