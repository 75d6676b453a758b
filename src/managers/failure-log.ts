import { messageOf } from '../errors.js';
import type { Logger } from '../log.js';

/** A failure that goes on unchanged is logged again this often (so a long outage stays visible). */
const REPEAT_MS = 10 * 60_000;

/**
 * The log of something tried again every round (a batch status poll, condor_q): one warning when
 * it starts failing, another when the failure changes or has lasted `repeatMs` more, and one line
 * when it works again. A broken `squeue` polled every few seconds must show, but not flood the log.
 */
export class RepeatedFailureLog {
  readonly #log: Logger;
  readonly #what: string;
  readonly #repeatMs: number;
  #message: string | undefined;
  #loggedAt = 0;
  #failures = 0;

  /** `what` names the attempt in messages ("status poll" → "status poll failed; …"). */
  constructor(log: Logger, what: string, repeatMs = REPEAT_MS) {
    this.#log = log;
    this.#what = what;
    this.#repeatMs = repeatMs;
  }

  failed(error: unknown): void {
    const message = messageOf(error);
    this.#failures++;
    const now = Date.now();
    if (message === this.#message && now - this.#loggedAt < this.#repeatMs) return;
    this.#message = message;
    this.#loggedAt = now;
    this.#log.warn({ err: message, failures: this.#failures }, `${this.#what} failed; trying again next round`);
  }

  succeeded(): void {
    if (this.#failures === 0) return;
    this.#log.info({ failures: this.#failures }, `${this.#what} works again`);
    this.#failures = 0;
    this.#message = undefined;
  }
}
