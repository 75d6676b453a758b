import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config/index.js';
import { ConfigError } from '../../src/errors.js';
import { mqConfig } from '../helpers/mq-client.js';

async function load(t: ExecutionContext, yaml: string, files: Record<string, string> = {}) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'magnetar-mqconfig-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'app.yml'), yaml);
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
  return { dir, result: loadConfig({ cwd: dir, env: {}, configFile: 'app.yml' }) };
}

test('message_queue_url amqp: the front door settings with upstream defaults (durable, no acks, 30 s, 5 s drain) and a 60 s heartbeat', async (t) => {
  const { dir, result } = await load(t, 'message_queue_url: amqp://u:p@rabbit:5672//\n');
  const { config, warnings } = await result;
  t.deepEqual(warnings, []);
  // The test servers' settings are the defaults but for two fast timers.
  t.deepEqual(config.app.messageQueue, mqConfig('amqp://u:p@rabbit:5672//', { reconnectMaxDelay: 30, outboxDrainInterval: 5 }));
  t.is(config.app.persistenceDirectory, path.join(dir, 'files/persisted_data'));
});

test('amqp_* options: retry policy, TLS files relative to the config directory, cert_reqs spellings, prefix', async (t) => {
  const { dir, result } = await load(
    t,
    [
      'message_queue_url: amqps://rabbit/',
      'amqp_key_prefix: galaxy1',
      'amqp_acknowledge: true',
      'amqp_ack_republish_time: 5',
      'amqp_durable: false',
      'amqp_heartbeat: 0',
      'amqp_publish_retry: true',
      'amqp_publish_retry_max_retries: 10',
      'amqp_publish_retry_interval_max: 60',
      'amqp_connect_ssl_ca_certs: ca.pem',
      'amqp_connect_ssl_certfile: /etc/c.pem',
      'amqp_connect_ssl_keyfile: k.pem',
      'amqp_connect_ssl_cert_reqs: CERT_NONE',
      'amqp_consumer_timeout: 0.2',
      'message_queue_consume: false',
      'status_outbox_drain_interval: 0.5',
      '',
    ].join('\n'),
  );
  const mq = (await result).config.app.messageQueue;
  t.is(mq?.keyPrefix, 'galaxy1');
  t.true(mq?.acknowledge);
  t.false(mq?.durable);
  t.false(mq?.consume);
  t.is(mq?.heartbeat, 0);
  t.is(mq?.ackRepublishTime, 5);
  t.deepEqual(mq?.publishRetry, { maxRetries: 10, intervalStart: 1, intervalStep: 2, intervalMax: 60 });
  t.deepEqual(mq?.tls, { caCerts: path.join(dir, 'ca.pem'), certFile: '/etc/c.pem', keyFile: path.join(dir, 'k.pem'), certReqs: 'cert_none' });
  t.is(mq?.outboxDrainInterval, 0.5);
});

test('relay URLs select relay mode, not AMQP (test/relay/config.test.ts); a bad scheme or URL is refused without echoing it', async (t) => {
  const relay = await (await load(t, 'message_queue_url: https://relay.example.org\nmessage_queue_username: u\nmessage_queue_password: p\n')).result;
  t.is(relay.config.app.messageQueue, undefined);
  t.is(relay.config.app.relay?.url, 'https://relay.example.org');
  for (const url of ['redis://u:s3cret@x/', 'amqp://u:s3cret@[bad/', 'amqp:///no-host']) {
    const error = await t.throwsAsync((await load(t, `message_queue_url: "${url}"\n`)).result, { instanceOf: ConfigError });
    t.regex(error?.message ?? '', /message_queue_url/);
    t.false(error?.message.includes('s3cret'), error?.message);
  }
});

test('message-queue mode needs persistence_directory; public mode over the message queue is accepted (test/mq/public.test.ts)', async (t) => {
  const none = await t.throwsAsync((await load(t, 'message_queue_url: amqp://h/\npersistence_directory: __none__\n')).result, { instanceOf: ConfigError });
  t.regex(none?.message ?? '', /persistence_directory/);
  const { result } = await load(t, 'message_queue_url: amqp://h/\ntool_config_files: tools.xml\n', { 'tools.xml': '<toolbox/>' });
  const pub = await result;
  t.truthy(pub.config.app.messageQueue);
  t.is(pub.config.app.toolConfigFiles.length, 1);
});
