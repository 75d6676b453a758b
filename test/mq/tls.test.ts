import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { MqClient, mqConfig } from '../helpers/mq-client.js';
import { freePort } from '../helpers/process.js';
import { Broker, brokerTest } from '../helpers/rabbitmq.js';
import { makeRoot, managerConfig, startTestServer } from '../helpers/server.js';
import type { MessageQueueConfig } from '../../src/config/index.js';

const test = brokerTest();
const run = promisify(execFile);

interface Pki {
  readonly dir: string;
  readonly ca: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate, all made by openssl here. */
async function makePki(): Promise<Pki> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-amqps-'));
  const f = (name: string): string => path.join(dir, name);
  const ossl = async (...args: string[]): Promise<void> => {
    await run('openssl', args, { cwd: dir });
  };
  await ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=magnetar test CA', '-keyout', f('ca.key'), '-out', f('ca.pem'));
  for (const [name, subject, ext] of [
    ['server', '/CN=127.0.0.1', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
    ['client', '/CN=magnetar', 'extendedKeyUsage=clientAuth'],
  ] as const) {
    await ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', subject, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`));
    await fs.writeFile(f(`${name}.ext`), `${ext}\n`);
    await ossl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f(`${name}.ext`), '-out', f(`${name}.pem`));
  }
  return { dir, ca: f('ca.pem'), clientCert: f('client.pem'), clientKey: f('client.key') };
}

let broker: Broker | undefined;
let pki: Pki | undefined;
let tlsPort = 0;
test.before(async () => {
  pki = await makePki();
  tlsPort = await freePort();
  const d = pki.dir;
  broker = await Broker.start({
    config: [
      `listeners.ssl.default = 127.0.0.1:${tlsPort}`,
      `ssl_options.cacertfile = ${d}/ca.pem`,
      `ssl_options.certfile = ${d}/server.pem`,
      `ssl_options.keyfile = ${d}/server.key`,
      'ssl_options.verify = verify_peer',
      'ssl_options.fail_if_no_peer_cert = true',
    ],
  });
});
test.after.always(async () => {
  await broker?.close();
  if (pki !== undefined) await fs.rm(pki.dir, { recursive: true, force: true });
});

function amqps(overrides: Partial<MessageQueueConfig['tls']>): MessageQueueConfig {
  if (pki === undefined) throw new Error('no PKI');
  return mqConfig(`amqps://guest:guest@127.0.0.1:${tlsPort}/`, {
    keyPrefix: 'tls',
    tls: { caCerts: pki.ca, certFile: pki.clientCert, keyFile: pki.clientKey, certReqs: 'cert_required', ...overrides },
  });
}

test.serial('amqps with the CA, a client certificate and key: a job runs through the TLS listener', async (t) => {
  if (broker === undefined) throw new Error('no broker');
  const server = await startTestServer({ app: { messageQueue: amqps({}) }, managers: (root) => [managerConfig(root)] });
  t.teardown(async () => server.stop());
  const client = await MqClient.connect(broker.url, { keyPrefix: 'tls' });
  t.teardown(async () => client.close());
  await client.setup('8001', 'true');
  t.is((await client.waitForTerminal('8001')).status, 'complete');
});

test.serial('amqps: an untrusted broker certificate, or no client certificate, stops startup with one line naming message_queue_url', async (t) => {
  const root = await makeRoot();
  t.teardown(async () => fs.rm(root, { recursive: true, force: true }));
  for (const tls of [{ caCerts: undefined }, { certFile: undefined, keyFile: undefined }]) {
    const error = await t.throwsAsync(startTestServer({ root, app: { messageQueue: amqps(tls) }, managers: (r) => [managerConfig(r)] }));
    t.regex(error?.message ?? '', /^message_queue_url: cannot connect to the broker at amqps:\/\/guest:\*\*\*@127\.0\.0\.1/);
  }
});

test.serial('amqps: cert_reqs = cert_none accepts a broker certificate it cannot verify', async (t) => {
  const server = await startTestServer({ app: { messageQueue: amqps({ caCerts: undefined, certReqs: 'cert_none' }) }, managers: (root) => [managerConfig(root)] });
  t.teardown(async () => server.stop());
  t.true(server.logLines.some((l) => l.includes('connected to the broker')));
});
