/**
 * The contract between the message-queue front doors (AMQP now, the relay later) and the status
 * feed that turns job state changes into status updates (PROTOCOL §11.2, §11.4).
 *
 * Every state change of a job is written to a persisted outbox before anything is published, and
 * leaves it only once the transport confirms it. The entry's `id` is fixed when the entry is
 * written, so a transport can use it as the message id, the ack protocol's `acknowledge_uuid` or a
 * relay `Idempotency-Key`: a republished entry is the same message to its receiver.
 */

/** One status update waiting in the outbox. */
export interface OutboxEntry {
  /** 32 lowercase hex characters, fixed when the entry is written. */
  readonly id: string;
  /** Position in the outbox (FIFO across all jobs of one manager); never reused. */
  readonly seq: number;
  readonly jobId: string;
  /** The wire status (PROTOCOL §5.2) the payload reports. */
  readonly status: string;
  /**
   * True for complete, failed, cancelled and lost: at most one such entry per job (incarnation) is
   * ever written unsolicited. An answer to a status request (`requested`) may repeat it.
   */
  readonly terminal: boolean;
  /** True when the entry answers a status request rather than reporting a state change. */
  readonly requested?: boolean;
  /** The status document (PROTOCOL §2.6) as published: the short form, or the full one when terminal. */
  readonly payload: Readonly<Record<string, unknown>>;
  /** When the entry was written (ms since the epoch). */
  readonly ts: number;
}

/**
 * A transport's publishing side. `publish` resolves only once the broker (or relay) has taken the
 * entry for good (a publisher confirm, a 2xx); it rejects when that is not known. The feed then
 * keeps the entry and offers it again, in order, when `ready` says the transport is back.
 */
export interface StatusPublisher {
  /** True while the transport can publish (connected, channel open). */
  readonly ready: boolean;
  publish(entry: OutboxEntry): Promise<void>;
}
