/** The job lifecycle (PROTOCOL §5.2) as an explicit state machine. */
export const JOB_STATES = [
  'setup', // set up, accepting uploads, not yet submitted (reported as "preprocessing")
  'preprocessing', // submitted: uploads closed; authorization, server-side staging, launch preparation
  'queued',
  'running',
  'postprocessing', // the command ended; server-side staging of results
  'complete',
  'failed',
  'cancelled',
  'lost',
] as const;

export type JobState = (typeof JOB_STATES)[number];

export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(['complete', 'failed', 'cancelled', 'lost']);

/**
 * Every change of a job's state follows this table (checked in `JobService`'s one `transition`);
 * terminal states are sinks. `queued → postprocessing` is a job that ended before anyone saw it
 * run (a fast cluster job, or one that ended while the server was down). `lost` is a job whose
 * recovery after a restart failed.
 */
const TRANSITIONS: Readonly<Record<JobState, readonly JobState[]>> = {
  setup: ['preprocessing', 'failed', 'cancelled', 'lost'],
  preprocessing: ['queued', 'failed', 'cancelled', 'lost'],
  queued: ['running', 'postprocessing', 'failed', 'cancelled', 'lost'],
  running: ['postprocessing', 'failed', 'cancelled', 'lost'],
  postprocessing: ['complete', 'failed', 'lost'],
  complete: [],
  failed: [],
  cancelled: [],
  lost: [],
};

export function isTerminal(state: JobState): boolean {
  return TERMINAL_STATES.has(state);
}

export function canTransition(from: JobState, to: JobState): boolean {
  return TRANSITIONS[from].includes(to);
}

/** The status string the wire protocol reports for a state. */
export function wireStatus(state: JobState): string {
  return state === 'setup' ? 'preprocessing' : state;
}
