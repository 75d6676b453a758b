/** DRMAA 1.0 constants (drmaa.h), shared by the helper process and the server side. */

/** Error codes, indexed by their numeric value. */
export const DRMAA_ERRNO_NAMES = [
  'SUCCESS',
  'INTERNAL_ERROR',
  'DRM_COMMUNICATION_FAILURE',
  'AUTH_FAILURE',
  'INVALID_ARGUMENT',
  'NO_ACTIVE_SESSION',
  'NO_MEMORY',
  'INVALID_CONTACT_STRING',
  'DEFAULT_CONTACT_STRING_ERROR',
  'NO_DEFAULT_CONTACT_STRING_SELECTED',
  'DRMS_INIT_FAILED',
  'ALREADY_ACTIVE_SESSION',
  'DRMS_EXIT_ERROR',
  'INVALID_ATTRIBUTE_FORMAT',
  'INVALID_ATTRIBUTE_VALUE',
  'CONFLICTING_ATTRIBUTE_VALUES',
  'TRY_LATER',
  'DENIED_BY_DRM',
  'INVALID_JOB',
  'RESUME_INCONSISTENT_STATE',
  'SUSPEND_INCONSISTENT_STATE',
  'HOLD_INCONSISTENT_STATE',
  'RELEASE_INCONSISTENT_STATE',
  'EXIT_TIMEOUT',
  'NO_RUSAGE',
  'NO_MORE_ELEMENTS',
] as const;

export type DrmaaErrorName = (typeof DRMAA_ERRNO_NAMES)[number];

export function errnoName(code: number): DrmaaErrorName | `ERRNO_${number}` {
  return DRMAA_ERRNO_NAMES[code] ?? `ERRNO_${code}`;
}

export const DRMAA_ERRNO = Object.freeze(
  Object.fromEntries(DRMAA_ERRNO_NAMES.map((name, i) => [name, i])) as Record<DrmaaErrorName, number>,
);

/** Job program states (`drmaa_job_ps`). */
export const JOB_PS = Object.freeze({
  UNDETERMINED: 0x00,
  QUEUED_ACTIVE: 0x10,
  SYSTEM_ON_HOLD: 0x11,
  USER_ON_HOLD: 0x12,
  USER_SYSTEM_ON_HOLD: 0x13,
  RUNNING: 0x20,
  SYSTEM_SUSPENDED: 0x21,
  USER_SUSPENDED: 0x22,
  USER_SYSTEM_SUSPENDED: 0x23,
  DONE: 0x30,
  FAILED: 0x40,
} as const);

export type JobPsName = keyof typeof JOB_PS;

const PS_NAMES = new Map<number, JobPsName>(Object.entries(JOB_PS).map(([name, value]) => [value, name as JobPsName]));

export function jobPsName(value: number): JobPsName | undefined {
  return PS_NAMES.get(value);
}

/** `drmaa_control` actions. */
export const CONTROL_ACTION = Object.freeze({ SUSPEND: 0, RESUME: 1, HOLD: 2, RELEASE: 3, TERMINATE: 4 } as const);
export type ControlAction = keyof typeof CONTROL_ACTION;

export const TIMEOUT_WAIT_FOREVER = -1;
export const TIMEOUT_NO_WAIT = 0;

/** Buffer sizes from drmaa.h. */
export const ERROR_STRING_BUFFER = 1024;
export const JOBNAME_BUFFER = 1024;
export const ATTR_BUFFER = 1024;
export const SIGNAL_BUFFER = 32;
export const CONTACT_BUFFER = 1024;
