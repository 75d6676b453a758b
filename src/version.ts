/**
 * The Pulsar protocol version magnetar speaks. Galaxy parses it as a PEP 440 version and changes
 * its behaviour below 0.14.999 (PROTOCOL §2.1), so it names the upstream release we match.
 */
export const PULSAR_COMPAT_VERSION = '0.15.16';
