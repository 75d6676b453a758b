/**
 * Relay mode's settings (`message_queue_url = http(s)://…`, RELAY.md "Server config keys"): the
 * relay's origin, one of the two auth forms, the topic prefix and the long-poll timeout. The URL,
 * the password and the credentials file's tokens are secrets: messages name keys, never values.
 */
import path from 'node:path';
import { ConfigError } from '../errors.js';
import type { AppOptions } from './schema.js';
import { ENVIRONMENT, type LoadContext, type Setting } from './setting.js';
import type { RelayConfig } from './types.js';

/** True for `http(s)://…`: relay mode rather than AMQP. */
export function isRelayUrl(url: string): boolean {
  return /^https?:\/\//i.test(url.trim());
}

/** Hosts plain `http://` may reach without `PULSAR_RELAY_ALLOW_INSECURE` (this machine). */
function isLoopback(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function truthy(value: string | undefined): boolean {
  return value !== undefined && /^(?:1|true|yes|on)$/i.test(value.trim());
}

export function relayConfig(options: AppOptions, settings: ReadonlyMap<string, Setting>, configDir: string, ctx: LoadContext): RelayConfig {
  const where = (key: string): [string, string] => {
    const setting = settings.get(key);
    return [setting?.file ?? ENVIRONMENT, setting?.key ?? key];
  };
  const fail = (key: string, message: string): ConfigError => new ConfigError(...where(key), message);
  const raw = (options.message_queue_url ?? '').trim();
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw fail('message_queue_url', 'not a valid http(s):// relay URL (the value is not shown)');
  }
  if (url.hostname === '') throw fail('message_queue_url', 'the relay URL names no host');
  if (url.username !== '' || url.password !== '') throw fail('message_queue_url', 'the relay URL must not hold credentials: use message_queue_username/password or message_queue_credentials_file');
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') throw fail('message_queue_url', 'the relay URL is an origin only: http(s)://host[:port], without a path or query');
  if (url.protocol === 'http:' && !isLoopback(url.hostname) && !truthy(ctx.env['PULSAR_RELAY_ALLOW_INSECURE'])) {
    throw fail('message_queue_url', `plain http:// to ${url.hostname} would send the relay password and tokens in clear: use https://, or set PULSAR_RELAY_ALLOW_INSECURE=1`);
  }
  const credentialsFile = options.message_queue_credentials_file === undefined ? undefined : path.resolve(configDir, options.message_queue_credentials_file);
  const username = options.message_queue_username;
  const password = options.message_queue_password;
  if (credentialsFile === undefined) {
    if (username === undefined || password === undefined) {
      throw fail(username === undefined ? 'message_queue_username' : 'message_queue_password', 'relay mode needs message_queue_username and message_queue_password, or message_queue_credentials_file');
    }
  } else if (username !== undefined || password !== undefined) {
    const [file, key] = where(username !== undefined ? 'message_queue_username' : 'message_queue_password');
    ctx.warnings.push(`${file}: ${key}: ignored: message_queue_credentials_file is used for the relay`);
  }
  return {
    url: url.origin,
    username: credentialsFile === undefined ? username : undefined,
    password: credentialsFile === undefined ? password : undefined,
    credentialsFile,
    topicPrefix: options.relay_topic_prefix,
    longPollTimeout: options.relay_long_poll_timeout,
    publishCapabilities: options.message_queue_publish_capabilities,
    consume: options.message_queue_consume,
    publish: options.message_queue_publish,
    outboxDrainInterval: options.status_outbox_drain_interval,
  };
}
