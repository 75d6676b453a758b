import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config/index.js';
import { ConfigError } from '../../src/errors.js';
import { relayTopic } from '../../src/mq/relay.js';

async function load(t: ExecutionContext, yaml: string, env: Record<string, string> = {}, files: Record<string, string> = {}) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'magnetar-relayconfig-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'app.yml'), yaml);
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
  return { dir, result: loadConfig({ cwd: dir, env, configFile: 'app.yml' }) };
}

test('relay mode: defaults (no prefix, 30 s polls, capabilities on), the origin kept without a trailing slash', async (t) => {
  const { result } = await load(t, 'message_queue_url: https://relay.example.org/\nmessage_queue_username: pulsar\nmessage_queue_password: s3cret-pw\n');
  const { config, warnings } = await result;
  t.deepEqual(warnings, []);
  t.is(config.app.messageQueue, undefined);
  t.deepEqual(config.app.relay, {
    url: 'https://relay.example.org',
    username: 'pulsar',
    password: 's3cret-pw',
    credentialsFile: undefined,
    topicPrefix: '',
    longPollTimeout: 30,
    publishCapabilities: true,
    consume: true,
    publish: true,
    outboxDrainInterval: 5,
  });
});

test('relay keys: credentials file relative to the config directory (password keys then ignored, warned), prefix, timeout, capabilities off', async (t) => {
  const { dir, result } = await load(
    t,
    [
      'message_queue_url: https://relay.example.org:8443',
      'message_queue_credentials_file: relay.json',
      'message_queue_username: pulsar',
      'relay_topic_prefix: site-a',
      'relay_long_poll_timeout: 60',
      'message_queue_publish_capabilities: false',
      '',
    ].join('\n'),
  );
  const { config, warnings } = await result;
  t.like(config.app.relay, { url: 'https://relay.example.org:8443', credentialsFile: path.join(dir, 'relay.json'), username: undefined, topicPrefix: 'site-a', longPollTimeout: 60, publishCapabilities: false });
  t.true(warnings.some((w) => /message_queue_username: ignored/.test(w)));
});

test('refused: plain http to another host without PULSAR_RELAY_ALLOW_INSECURE, no auth, fractional or out-of-range timeouts, bad prefixes, paths, credentials in the URL; never echoing secrets', async (t) => {
  const auth = 'message_queue_username: u\nmessage_queue_password: s3cret-pw\n';
  const refused: [string, RegExp][] = [
    [`message_queue_url: http://relay.example.org\n${auth}`, /PULSAR_RELAY_ALLOW_INSECURE/],
    ['message_queue_url: https://relay.example.org\nmessage_queue_username: u\n', /message_queue_password/],
    ['message_queue_url: https://relay.example.org\n', /message_queue_username/],
    [`message_queue_url: https://relay.example.org\nrelay_long_poll_timeout: 1.5\n${auth}`, /relay_long_poll_timeout/],
    [`message_queue_url: https://relay.example.org\nrelay_long_poll_timeout: 61\n${auth}`, /relay_long_poll_timeout/],
    [`message_queue_url: https://relay.example.org\nrelay_topic_prefix: a.b\n${auth}`, /relay_topic_prefix/],
    [`message_queue_url: https://relay.example.org/relay\n${auth}`, /origin only/],
    [`message_queue_url: "https://u:s3cret-pw@relay.example.org"\n`, /must not hold credentials/],
    [`message_queue_url: https://relay.example.org\npersistence_directory: __none__\n${auth}`, /persistence_directory/],
  ];
  for (const [yaml, reason] of refused) {
    const error = await t.throwsAsync((await load(t, yaml)).result, { instanceOf: ConfigError }, yaml);
    t.regex(error?.message ?? '', reason, yaml);
    t.false(error?.message.includes('s3cret-pw'), error?.message);
  }
  // Allowed: loopback over http, and another host with the environment's consent.
  for (const url of ['http://127.0.0.1:9000', 'http://localhost', 'http://[::1]:8000']) {
    t.is((await (await load(t, `message_queue_url: "${url}"\n${auth}`)).result).config.app.relay?.url, url.replace(/\/$/, ''));
  }
  t.is((await (await load(t, `message_queue_url: http://relay.example.org\n${auth}`, { PULSAR_RELAY_ALLOW_INSECURE: '1' })).result).config.app.relay?.url, 'http://relay.example.org');
});

test('public mode over the relay loads (its setups pass the toolbox authorizer: test/relay/public.test.ts)', async (t) => {
  const yaml = 'message_queue_url: https://relay.example.org\nmessage_queue_username: u\nmessage_queue_password: p\ntool_config_files: tools.xml\n';
  const { config } = await (await load(t, yaml, {}, { 'tools.xml': '<toolbox/>' })).result;
  t.true(config.app.toolConfigFiles.length > 0);
  t.not(config.app.relay, undefined);
});

test('topic names: prefix and manager suffix as upstream (none for _default_)', (t) => {
  t.is(relayTopic('', 'job_setup', '_default_'), 'job_setup');
  t.is(relayTopic('site', 'job_setup', '_default_'), 'site_job_setup');
  t.is(relayTopic('', 'job_status_update', 'gpu'), 'job_status_update_gpu');
  t.is(relayTopic('site', 'pulsar_capabilities', 'gpu'), 'site_pulsar_capabilities_gpu');
});
