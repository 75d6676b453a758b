/** The job lifecycle (PROTOCOL §5.2) as an explicit state machine. */
export type JobState =
  | 'setup' // set up, accepting uploads, not yet submitted (reported as "preprocessing")
  | 'queued'
  | 'running'
  | 'postprocessing'
  | 'complete'
  | 'failed'
  | 'cancelled'
  | 'lost';

export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(['complete', 'failed', 'cancelled', 'lost']);

const TRANSITIONS: Readonly<Record<JobState, readonly JobState[]>> = {
  setup: ['queued', 'failed', 'cancelled'],
  queued: ['running', 'failed', 'cancelled'],
  running: ['postprocessing', 'failed', 'cancelled', 'lost'],
  postprocessing: ['complete', 'failed'],
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
