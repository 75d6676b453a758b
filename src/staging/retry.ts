/**
 * Upstream's retry policy for staging actions (PROTOCOL §6.1, kombu's `retry_over_time`):
 * `maxRetries` -1 = no retry, 0 = retry forever, N = N retries; waits start at `intervalStart`
 * seconds and grow by `intervalStep` up to `intervalMax`. Only transient errors are retried.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { RetryConfig } from '../config/types.js';
import { MagnetarError } from '../errors.js';

export const DEFAULT_RETRY: RetryConfig = { maxRetries: -1, intervalStart: 2, intervalStep: 2, intervalMax: 30 };

/** HTTP statuses worth another try: timeouts, throttling and server errors. */
export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 425 || status === 429 || (status >= 500 && status <= 599);
}

/** An HTTP answer that ends a transfer, with its status (kept for the job's stderr). */
export class HttpStatusError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = 'HttpStatusError';
  }
}

/** A refusal or malformed answer that no retry can change. */
export class PermanentError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PermanentError';
  }
}

/**
 * Certificate checks that failed (OpenSSL's verify results as node reports them, and node's own
 * host-name check): an untrusted, expired or misnamed certificate does not heal between retries.
 */
const CERTIFICATE_CODES: ReadonlySet<string> = new Set([
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE', 'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY', 'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID', 'CERT_HAS_EXPIRED', 'ERROR_IN_CERT_NOT_BEFORE_FIELD', 'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'CERT_CHAIN_TOO_LONG', 'CERT_REVOKED',
  'INVALID_CA', 'PATH_LENGTH_EXCEEDED', 'INVALID_PURPOSE', 'CERT_UNTRUSTED', 'CERT_REJECTED',
  'HOSTNAME_MISMATCH', 'ERR_TLS_CERT_ALTNAME_INVALID',
]);

export function isTransient(error: unknown): boolean {
  if (error instanceof HttpStatusError) return isTransientStatus(error.status);
  const code = error instanceof Error ? (error as NodeJS.ErrnoException).code : undefined;
  if (typeof code === 'string' && CERTIFICATE_CODES.has(code)) return false;
  if (error instanceof PermanentError || error instanceof MagnetarError) return false;
  if (error instanceof Error && error.name === 'AbortError') return false;
  // Connection errors (ECONNREFUSED, ECONNRESET, ETIMEDOUT, "aborted", premature end) and the like.
  return true;
}

/**
 * Run `attempt` until it succeeds, a non-transient error is thrown, the retries are used up or
 * `signal` aborts. `onRetry` hears of each error that will be retried.
 */
export async function withRetries<T>(
  policy: RetryConfig,
  signal: AbortSignal,
  attempt: (n: number) => Promise<T>,
  onRetry: (error: unknown, waitSeconds: number) => void,
): Promise<T> {
  let interval = policy.intervalStart;
  for (let n = 0; ; n++) {
    try {
      return await attempt(n);
    } catch (error) {
      signal.throwIfAborted();
      const exhausted = policy.maxRetries < 0 || (policy.maxRetries > 0 && n >= policy.maxRetries);
      if (exhausted || !isTransient(error)) throw error;
      const wait = Math.min(interval, policy.intervalMax);
      onRetry(error, wait);
      await sleep(wait * 1000, undefined, { signal });
      interval += policy.intervalStep;
    }
  }
}
