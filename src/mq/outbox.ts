/** SKELETON: the persisted outbox (PROTOCOL §11.4); filled in by the next commits. */
export {};
