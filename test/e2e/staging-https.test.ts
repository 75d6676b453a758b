/**
 * Stage-in from https files endpoints, through a real `magnetar serve` process that trusts the
 * endpoint's certificate the way an administrator makes it trust a site CA (NODE_EXTRA_CA_CERTS).
 * The certificate is checked: an untrusted one, or one for another name, fails the job before
 * anything reaches the job directory, and the job's command never runs.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { generate } from 'selfsigned';
import { qs, request, waitForJob } from '../helpers/client.js';
import { serverRoot, spawnServer } from '../helpers/process.js';

const KEY = 'c0ffee';

interface TlsEndpoint {
  /** The URL Galaxy's client would build for `galaxyPath` (the job key in the query). */
  url(host: string, galaxyPath: string): string;
  readonly requests: string[];
  readonly certPem: string;
}

/** An https job-files endpoint on 127.0.0.1 with a self-signed certificate for `dnsName`; bodies go out chunked, in two writes. */
async function tlsEndpoint(t: { teardown(fn: () => Promise<void>): void }, dnsName: string, files: ReadonlyMap<string, Buffer>): Promise<TlsEndpoint> {
  const pems = await generate([{ name: 'commonName', value: dnsName }], {
    keyType: 'rsa',
    keySize: 2048,
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 2 as const, value: dnsName }] },
    ],
  });
  const requests: string[] = [];
  const server = https.createServer({ key: pems.private, cert: pems.cert }, (req, res) => {
    const u = new URL(req.url ?? '/', 'https://x');
    const galaxyPath = u.searchParams.get('path') ?? '';
    requests.push(galaxyPath);
    const body = files.get(galaxyPath);
    if (u.searchParams.get('job_key') !== KEY || body === undefined) {
      res.writeHead(404).end('no');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const half = body.length >> 1;
    res.write(body.subarray(0, half), () => res.end(body.subarray(half)));
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: (host, galaxyPath) => `https://${host}:${port}/api/jobs/1/files?job_key=${KEY}&path=${encodeURIComponent(galaxyPath)}&file_type=input`,
    requests,
    certPem: pems.cert,
  };
}

async function submit(base: string, id: string, url: string, galaxyPath: string): Promise<string> {
  const setup = [{ name: 'in.dat', type: 'input', action: { path: galaxyPath, source: { path: galaxyPath, object_store_ref: null }, action_type: 'remote_transfer', url } }];
  const s = await request(base, 'POST', `/jobs?${qs({ job_id: id })}`);
  if (s.status !== 200) throw new Error(s.text);
  const remoteStaging = { setup, action_mapper: { default_action: 'remote_transfer', files_endpoint: null, paths: [] }, client_outputs: {} };
  const command = 'sha256sum ../inputs/in.dat | cut -c1-64 > ../outputs/sum && touch ../outputs/ran';
  return (await request(base, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: JSON.stringify(remoteStaging) })}`)).text;
}

test('https stage-in: a trusted certificate for the host name is fetched; an untrusted one and one for another name fail the job with nothing staged or run', async (t) => {
  const body = randomBytes(3 * 1024 * 1024 + 17);
  const files = new Map([['/g/in.dat', body]]);
  const good = await tlsEndpoint(t, 'localhost', files);
  const untrusted = await tlsEndpoint(t, 'localhost', files);
  const { root, ini } = await serverRoot(t, '[manager:_default_]\ntype = queued_python\n');
  const caFile = path.join(root, 'site-ca.pem');
  // The server trusts `good`'s certificate as a site CA; `untrusted`'s is self-signed and unknown.
  await fs.writeFile(caFile, good.certPem);
  const server = await spawnServer(ini, { NODE_EXTRA_CA_CERTS: caFile });
  t.teardown(async () => server.kill('SIGKILL'));

  t.is(await submit(server.url, 'ok', good.url('localhost', '/g/in.dat'), '/g/in.dat'), 'OK');
  const done = await waitForJob(server.url, 'ok');
  t.is(done.status, 'complete', done.stderr);
  const sum = await request(server.url, 'GET', `/jobs/ok/files?${qs({ job_id: 'ok', name: 'sum', type: 'output' })}`);
  t.is(sum.text.trim(), createHash('sha256').update(body).digest('hex'));

  const cases: [string, string, RegExp][] = [
    ['untrusted', untrusted.url('localhost', '/g/in.dat'), /self[- ]signed|unable to verify|certificate/i],
    // `good`'s certificate names localhost, not 127.0.0.1.
    ['wrong-name', good.url('127.0.0.1', '/g/in.dat'), /altnames|does not match|IP: 127\.0\.0\.1/i],
  ];
  for (const [id, url, reason] of cases) {
    t.is(await submit(server.url, id, url, '/g/in.dat'), 'OK');
    const doc = await waitForJob(server.url, id);
    t.is(doc.status, 'failed', id);
    t.regex(doc.stderr ?? '', reason, id);
    const inputs: string[] = await fs.readdir(path.join(root, 'staging', id, 'inputs')).catch(() => []);
    t.deepEqual(inputs, [], `${id}: nothing staged, not even a partial file`);
    const outputs: string[] = await fs.readdir(path.join(root, 'staging', id, 'outputs')).catch(() => []);
    t.false(outputs.includes('ran'), `${id}: the command did not run`);
  }
  t.deepEqual(untrusted.requests, [], 'the untrusted endpoint never saw a request (the handshake failed first)');
  t.deepEqual(good.requests, ['/g/in.dat'], 'nothing was sent to the endpoint under the wrong name');
});
